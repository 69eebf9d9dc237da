"""Training on the torch backend: autograd through sdkit's own modules (their fast paths give way, autograd.py),
LoRA layers wrapped around the targeted ones, AdamW from torch.optim. The core (sdkit.train) draws the data,
noise and timesteps and says what to train (sdkit.train.plan.Plan); this file owns gradients and the optimizer."""

from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sdkit.checkpoint import Checkpoint
from sdkit.train import ema
from sdkit.train.plan import Batch, Plan
from sdkit.train.scaling import LossScale

from .clip import CLIPTextModel
from .loading import load
from .unet import BasicTransformerBlock, ResnetBlock2D, UNet2DConditionModel


class LoRA(nn.Module):
    """base(x) + up(down(x)) * alpha / rank (Hu et al. 2021) around a frozen Linear or Conv2d; down and up kept in
    float32 whatever the base's dtype."""

    def __init__(self, base: nn.Module, down: np.ndarray, up: np.ndarray, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / down.shape[0]
        if isinstance(base, nn.Conv2d):
            self.padding = base.padding  # Downsample2D reads its conv's padding (LoCon wraps that conv)
            self.down = nn.Conv2d(base.in_channels, down.shape[0], base.kernel_size, base.stride, base.padding,
                                  bias=False, device=base.weight.device)
            self.up = nn.Conv2d(down.shape[0], base.out_channels, 1, bias=False, device=base.weight.device)
        else:
            # Linear, or a Linear standing in for a stored 1x1 conv: the (r, in, 1, 1) weights flatten
            self.down = nn.Linear(base.in_features, down.shape[0], bias=False, device=base.weight.device)
            self.up = nn.Linear(down.shape[0], base.out_features, bias=False, device=base.weight.device)
        with torch.no_grad():
            self.down.weight.copy_(torch.from_numpy(down).reshape(self.down.weight.shape))
            self.up.weight.copy_(torch.from_numpy(up).reshape(self.up.weight.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in a half-precision model the low-rank product runs in x's dtype (as under autocast), from float32
        # masters: the casts are no-ops in float32 and send float32 gradients back
        down, up, w = self.down.weight.to(x.dtype), self.up.weight.to(x.dtype), self.base.weight
        if isinstance(self.base, nn.Linear) and x.dtype == w.dtype and not w.requires_grad:
            return _LoRALinear.apply(x, w, self.base.bias, down, up, self.scale)
        if isinstance(self.base, nn.Conv2d):
            h = F.conv2d(x, down, None, self.down.stride, self.down.padding)
            return self.base(x) + F.conv2d(h, up) * self.scale
        return self.base(x) + F.linear(F.linear(x, down), up) * self.scale


class _LoRALinear(torch.autograd.Function):
    """x W^T + b + scale (x A^T) B^T for a frozen W, as two GEMMs accumulating into one output: no separate scale
    and add passes over the (N, out) activations, and in backward the input's two gradient paths accumulate
    in one GEMM (4 fewer elementwise passes per layer than base(x) + up(down(x)) * scale). Saves x and the
    rank-wide x A^T, as autograd would; W's gradient is never computed (the caller checks it is frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, down, up, scale):
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        h = x2 @ down.t()  # (N, r)
        y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()  # (N, out)
        y.addmm_(h, up.t(), alpha=scale)
        ctx.save_for_backward(x2, h, weight, down, up)
        ctx.scale, ctx.shape = scale, x.shape
        return y.view(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, gy):
        x2, h, weight, down, up = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1])  # (N, out)
        gh = (gy2 @ up).mul_(ctx.scale)  # (N, r)
        gx = (gy2 @ weight).addmm_(gh, down).view(ctx.shape) if ctx.needs_input_grad[0] else None
        gbias = gy2.sum(0) if ctx.needs_input_grad[2] else None
        return gx, None, gbias, gh.t() @ x2, torch.mm(gy2.t(), h).mul_(ctx.scale), None


class Trainer:
    def __init__(self, ckpt: Checkpoint, plan: Plan, device: torch.device, dtype: torch.dtype):
        self.plan, self.device, self.dtype = plan, device, dtype
        self.malloc = _MallocPhases(device)
        self.malloc.forward()  # the trainer's own long-lived buffers too
        # what trains whole is loaded (and kept) in float32: half-precision Adam updates vanish
        self.unet = load(lambda: UNet2DConditionModel(ckpt.unet), ckpt.weights["unet"], "unet", device,
                         torch.float32 if plan.finetune else dtype)
        self.text = {}
        if plan.text_trained:  # context computed each step, through trainable parts
            for config, name in zip(ckpt.text_encoders, ckpt.text_encoder_names):
                self.text[name] = load(lambda: CLIPTextModel(config), ckpt.weights[name], "text encoder", device,
                                       torch.float32 if plan.text_finetune else dtype)
        modules = {"unet": self.unet, **self.text}
        self.lora = {}
        for target, (down, up) in (plan.lora or {}).items():
            parent, _, leaf = target.module.rpartition(".")
            owner = modules[target.component].get_submodule(parent)
            wrapped = LoRA(owner.get_submodule(leaf), down, up, plan.alpha)
            if isinstance(owner, nn.ModuleList):
                owner[int(leaf)] = wrapped
            else:
                setattr(owner, leaf, wrapped)
            self.lora[target] = wrapped
        self.embeddings = {}
        for name, rows in (plan.embeddings or {}).items():
            table = self.text[name].embeddings.token_embedding.weight
            self.embeddings[name] = nn.Parameter(table[torch.as_tensor(rows, device=device)].detach().float().clone())
        params = [p for m in self.lora.values() for p in (m.down.weight, m.up.weight)]
        params += list(self.embeddings.values())
        if plan.finetune:
            for p in self.unet.parameters():
                p.data = p.data.clone()  # loaded weights may be read-only views of the file
            params += list(self.unet.parameters())
        for model in self.text.values() if plan.text_finetune else ():
            for p in model.parameters():
                p.data = p.data.clone()
            params += list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        self.params = params
        # foreach: each AdamW op once over all tensors, not once per tensor (256 LoRA tensors on SD1.5's attention)
        self.optimizer = torch.optim.AdamW(params, lr=plan.learning_rate, betas=plan.betas, eps=plan.eps,
                                           weight_decay=plan.weight_decay, foreach=True)
        self.ema = [p.detach().float().clone() for p in params] if plan.ema_decay else None
        self.updates = 0  # optimizer steps taken: the EMA's n
        self.scaler = LossScale() if plan.loss_scaling else None
        if plan.gradient_checkpointing:
            _checkpoint_blocks(self.unet)
        self.unet.train()

    def accumulate(self, batch: Batch, scale: float) -> float:
        """Forward and backward one micro-batch; gradients add up until step(). -> its (weighted) loss."""
        t = lambda a: torch.as_tensor(a, device=self.device)
        self.malloc.forward()
        dtype = self.unet.conv_in.weight.dtype  # float32 when fine-tuning: then autocast runs it in self.dtype
        with torch.autocast(self.device.type, self.dtype, enabled=dtype != self.dtype):
            context, pooled = (t(batch.context), None if batch.pooled is None else t(batch.pooled)) \
                if batch.context is not None else self._encode(batch.ids)
            added = None
            if batch.time_ids is not None:
                added = {"text_embeds": pooled.to(dtype), "time_ids": t(batch.time_ids)}
            pred = self.unet(t(batch.noisy).to(dtype), t(batch.t).float(), context.to(dtype), added).float()
        per_sample = (pred - t(batch.target)).square().mean(dim=(1, 2, 3))  # (B,)
        loss = (per_sample * t(batch.weights)).mean()
        self.malloc.backward()
        (loss * (scale * (self.scaler.scale if self.scaler else 1.0))).backward()
        return float(loss.detach())

    def _encode(self, ids: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        contexts, pooled = [], None
        for name, model in self.text.items():
            extra = self.embeddings.get(name)
            c, pooled = model(torch.as_tensor(ids[name], device=self.device), extra=extra, **self.plan.text_layer)
            contexts.append(c)
        return torch.cat(contexts, dim=-1), pooled

    def step(self, lr: float) -> bool:
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.scaler is not None:  # unscaled and checked in one pass, read back once (GradScaler's kernel)
            found_inf = torch.zeros(1, device=self.device)
            inv_scale = torch.full((1,), 1 / self.scaler.scale, device=self.device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
            if not self.scaler.update(not found_inf.item()):
                self.optimizer.zero_grad(set_to_none=True)
                return False
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params],
                                     1 - ema.decay(self.updates, self.plan.ema_decay))
        return True

    @contextmanager
    def averaged(self):
        """The EMA weights in place of the trained ones (swapped, not copied), for writing the output."""
        if self.ema is None:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            p.data, self.ema[i] = self.ema[i], p.data

    def attach(self, pipe) -> None:
        """Make `pipe` (an sdkit Pipeline on this backend) generate with the UNet being trained, and with the text
        encoders being trained (fine-tuned, or with their LoRA layers) when the text side trains."""
        from .residency import Lazy
        pipe.unet.forward = self.unet
        pipe.unet.dtype = self.unet.conv_in.weight.dtype
        for name, encoder in zip(pipe.checkpoint.text_encoder_names, pipe.text_encoders):
            if name in self.text:
                encoder.lazy = Lazy(lambda model=self.text[name]: model, None)  # never evicted nor rebuilt

    def lora_weights(self) -> dict:
        return {t: (_np(m.down.weight, t.shape), _np(m.up.weight, t.shape, up=True)) for t, m in self.lora.items()}

    def embedding_vectors(self) -> dict[str, np.ndarray]:
        return {name: p.detach().float().cpu().numpy() for name, p in self.embeddings.items()}

    def unet_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().float().cpu().numpy() for k, v in self.unet.state_dict().items()}

    def text_weights(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
                for name, model in self.text.items()} if self.plan.text_finetune else {}

    def state(self) -> dict[str, np.ndarray]:
        """Trained tensors and AdamW's moments, flat, for a resumable checkpoint."""
        out = {f"param.{i}": p.detach().float().cpu().numpy() for i, p in enumerate(self.params)}
        for i, p in enumerate(self.params):
            s = self.optimizer.state.get(p)
            if s:
                out[f"adam.{i}.m"] = s["exp_avg"].cpu().numpy()
                out[f"adam.{i}.v"] = s["exp_avg_sq"].cpu().numpy()
                out[f"adam.{i}.step"] = np.array(float(s["step"]))
            if self.ema is not None:
                out[f"ema.{i}"] = self.ema[i].cpu().numpy()
        out["updates"] = np.array(self.updates)
        if self.scaler is not None:
            out["loss_scale"] = np.array([self.scaler.scale, self.scaler.good_steps])
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(torch.from_numpy(state[f"param.{i}"]))
                if f"adam.{i}.m" in state:
                    self.optimizer.state[p] = {
                        "exp_avg": torch.from_numpy(state[f"adam.{i}.m"]).to(p.device),
                        "exp_avg_sq": torch.from_numpy(state[f"adam.{i}.v"]).to(p.device),
                        "step": torch.tensor(float(state[f"adam.{i}.step"].reshape(-1)[0]))}
                if self.ema is not None:
                    self.ema[i] = torch.from_numpy(state[f"ema.{i}"]).to(p.device)
        self.updates = int(state.get("updates", np.zeros(1)).reshape(-1)[0])  # older states have none
        if self.scaler is not None:
            self.scaler.scale, self.scaler.good_steps = float(state["loss_scale"][0]), int(state["loss_scale"][1])


def _np(w: torch.Tensor, shape: tuple[int, ...], up: bool = False) -> np.ndarray:
    """A LoRA weight in kohya's layout: (r, in[, kh, kw]) / (out, r[, 1, 1]) for a conv target."""
    a = w.detach().float().cpu().numpy()
    if len(shape) == 4 and a.ndim == 2:
        a = a[:, :, None, None] if up else a.reshape(a.shape[0], *shape[1:])
    return a


class _MallocPhases:
    """Where glibc puts a CPU training step's large buffers. By default its mmap threshold climbs to the largest
    block freed so far (up to 32 MB), so a step's activations come from the heap; the ones saved for backward
    live from the forward to the backward pass, and the holes they leave between the forward's temporaries are a
    poor fit for the backward's gradient buffers, so the heap keeps growing: ~140 MB of an SD1.5 LoRA step's peak
    RSS at 256x256. During the forward pass buffers from 256 KB get their own mappings, returned to the system as
    backward frees them; the backward pass's short-lived buffers reuse the heap (a fixed threshold everywhere
    would cost page faults on every fresh buffer: 0.6 s of a 4.4 s step; this split 0.3 s). BENCHMARKS.md has the
    figures. Process-wide; left at 32 MB afterwards (glibc cannot go back to its moving threshold)."""

    M_MMAP_THRESHOLD = -3  # mallopt's parameter number
    FORWARD, BACKWARD = 256 * 1024, 32 * 1024 * 1024  # bytes

    def __init__(self, device: torch.device):
        libc = ctypes.CDLL(None) if device.type == "cpu" and sys.platform.startswith("linux") else None
        self.mallopt = getattr(libc, "mallopt", None)  # None off Linux and on musl

    def forward(self) -> None:
        if self.mallopt is not None:
            self.mallopt(self.M_MMAP_THRESHOLD, self.FORWARD)

    def backward(self) -> None:
        if self.mallopt is not None:
            self.mallopt(self.M_MMAP_THRESHOLD, self.BACKWARD)


def _checkpoint_blocks(unet: nn.Module) -> None:
    """Gradient checkpointing: resnets and transformer blocks recompute their activations in the backward pass
    instead of holding them (about half the activation memory for a third more compute)."""
    for module in unet.modules():
        if isinstance(module, (ResnetBlock2D, BasicTransformerBlock)):
            forward = module.forward
            # no RNG to replay (the UNet has no dropout)
            module.forward = lambda *a, _f=forward: checkpoint(_f, *a, use_reentrant=False, preserve_rng_state=False)
