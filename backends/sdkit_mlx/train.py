"""Training on the MLX backend: mx.value_and_grad over a module's trainable parameters (LoRA layers around the
targeted ones, new embedding rows, or the whole UNet), AdamW from mlx.optimizers with torch's bias correction, so
the same seed and data give torch's loss curve. A bfloat16 / float16 fine-tune is mixed precision (Micikevicius et
al. 2018): float32 master weights, a forward and backward in the run's dtype. Latents are NCHW at the boundary,
NHWC inside."""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from sdkit.checkpoint import Checkpoint
from sdkit.train import ema
from sdkit.train.plan import Batch, Plan
from sdkit.train.scaling import LossScale

from .clip import CLIPTextModel
from .loading import load
from .unet import BasicTransformerBlock, ResnetBlock2D, UNet2DConditionModel


class LoRA(nn.Module):
    """base(x) + up(down(x)) * alpha / rank (Hu et al. 2021) around a frozen Linear or Conv2d; down and up in
    float32 whatever the base's dtype. down / up come in torch's layout (sdkit.train.formats.lora_init)."""

    def __init__(self, base: nn.Module, down: np.ndarray, up: np.ndarray, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / down.shape[0]
        r = down.shape[0]
        if isinstance(base, nn.Conv2d):
            _, kh, kw, c_in = base.weight.shape
            self.down = nn.Conv2d(c_in, r, (kh, kw), stride=base.stride, padding=base.padding, bias=False)
            self.up = nn.Linear(r, base.weight.shape[0], bias=False)  # the 1x1 conv, over NHWC channels
            self.down.weight = mx.array(down.transpose(0, 2, 3, 1))  # (r, kh, kw, in)
        else:
            self.down = nn.Linear(base.weight.shape[1], r, bias=False)
            self.up = nn.Linear(r, base.weight.shape[0], bias=False)
            self.down.weight = mx.array(down.reshape(r, -1))
        self.up.weight = mx.array(up.reshape(up.shape[0], r))

    def __call__(self, x: mx.array) -> mx.array:
        return self.base(x) + (self.up(self.down(x.astype(mx.float32))) * self.scale).astype(x.dtype)


class Vectors(nn.Module):
    """New embedding rows per text encoder (textual inversion): encoder name -> (n, C)."""

    def __init__(self, rows: dict[str, mx.array]):
        super().__init__()
        for name, v in rows.items():
            setattr(self, name, v)


class Trained(nn.Module):
    """Everything the loss reads, in one module so value_and_grad differentiates its unfrozen part."""

    def __init__(self, unet: nn.Module, text: dict[str, nn.Module], embeddings: Vectors):
        super().__init__()
        self.unet = unet
        self.text = text
        self.embeddings = embeddings


class Trainer:
    def __init__(self, ckpt: Checkpoint, plan: Plan, device: mx.Device, dtype: mx.Dtype):
        self.plan, self.device, self.dtype = plan, device, dtype
        self.shapes = {name: ref.shape for name, ref in ckpt.weights["unet"].items()}
        with mx.stream(device):
            unet = load(lambda: UNet2DConditionModel(ckpt.unet), ckpt.weights["unet"], "unet",
                        mx.float32 if plan.finetune else dtype)
            text = {}
            if plan.text_trained:
                for config, name in zip(ckpt.text_encoders, ckpt.text_encoder_names):
                    text[name] = load(lambda: CLIPTextModel(config), ckpt.weights[name], "text encoder",
                                      mx.float32 if plan.text_finetune else dtype)
            embeddings = {name: text[name].embeddings.token_embedding.weight[mx.array(rows)].astype(mx.float32)
                          for name, rows in (plan.embeddings or {}).items()}
            self.model = Trained(unet, text, Vectors(embeddings))
            self.model.freeze()
            if plan.finetune:
                unet.unfreeze()
            for model in text.values() if plan.text_finetune else ():
                model.unfreeze()
            if embeddings:
                self.model.embeddings.unfreeze()
            modules = {"unet": unet, **text}
            self.lora = {}
            for target, (down, up) in (plan.lora or {}).items():
                *path, leaf = target.module.split(".")
                owner = modules[target.component]
                for part in path:
                    owner = owner[int(part)] if isinstance(owner, list) else getattr(owner, part)
                base = owner[int(leaf)] if isinstance(owner, list) else getattr(owner, leaf)
                wrapped = LoRA(base, down, up, plan.alpha)
                wrapped.base.freeze()
                if isinstance(owner, list):
                    owner[int(leaf)] = wrapped
                else:
                    setattr(owner, leaf, wrapped)
                self.lora[target] = wrapped
            if plan.gradient_checkpointing:
                _checkpoint_blocks(unet)
            self.model.train()
            self.ema = tree_map(lambda p: p.astype(mx.float32), self.model.trainable_parameters()) \
                if plan.ema_decay else None
            mx.eval(self.model.parameters(), self.ema)
        self.updates = 0  # optimizer steps taken: the EMA's n
        self.scaler = LossScale() if plan.loss_scaling else None
        self.optimizer = optim.AdamW(plan.learning_rate, betas=list(plan.betas), eps=plan.eps,
                                     weight_decay=plan.weight_decay, bias_correction=True)
        # what trains whole is float32 (half-precision AdamW updates vanish); its forward runs in the run's dtype
        self.mixed = plan.finetune and dtype != mx.float32
        self.grad = mx.value_and_grad(self._loss_of)
        self.sum = None  # accumulated gradients

    def _loss_of(self, params: dict, *args):
        """The loss as a function of the trainable parameters: mixed precision casts them to the run's dtype once
        per step (not per layer call); the cast's gradient brings theirs back to float32."""
        self.model.update(tree_map(lambda p: p.astype(self.dtype), params) if self.mixed else params)
        return self._loss(self.model, *args)

    def _loss(self, model: Trained, x, t, target, w, context, pooled, ids, time_ids, scale):
        if context is None:
            contexts = []
            for name, encoder in model.text.items():
                c, pooled = encoder(ids[name], extra=model.embeddings.get(name), **self.plan.text_layer)
                contexts.append(c)
            context = mx.concatenate(contexts, axis=-1)
        added = None if time_ids is None else {"text_embeds": pooled.astype(self.dtype), "time_ids": time_ids}
        pred = model.unet(x.astype(model.unet.conv_in.weight.dtype), t, context.astype(self.dtype), added)
        per_sample = mx.square(pred.astype(mx.float32) - target).mean(axis=(1, 2, 3))  # (B,)
        return (per_sample * w).mean() * scale

    def accumulate(self, batch: Batch, scale: float) -> float:
        nhwc = lambda a: mx.array(a.transpose(0, 2, 3, 1))
        arr = lambda a: None if a is None else mx.array(a)
        with mx.stream(self.device):
            ids = None if batch.ids is None else {k: mx.array(v.astype(np.int32)) for k, v in batch.ids.items()}
            loss_scale = self.scaler.scale if self.scaler else 1.0
            masters = self.model.trainable_parameters()
            try:
                loss, grads = self.grad(masters, nhwc(batch.noisy), mx.array(batch.t), nhwc(batch.target),
                                        mx.array(batch.weights), arr(batch.context), arr(batch.pooled), ids,
                                        arr(batch.time_ids), mx.array(loss_scale, mx.float32))
            finally:
                self.model.update(masters)  # the module held the traced (and cast) copies
            grads = tree_map(lambda g: g * scale, grads)
            self.sum = grads if self.sum is None else tree_map(mx.add, self.sum, grads)
            mx.eval(loss, self.sum)
        return loss.item() / loss_scale

    def step(self, lr: float) -> bool:
        grads, self.sum = self.sum, None
        with mx.stream(self.device):
            if self.scaler is not None:
                scale = self.scaler.scale
                finite = all(mx.isfinite(g).all().item() for _, g in tree_flatten(grads))
                if not self.scaler.update(finite):
                    return False
                grads = tree_map(lambda g: g / scale, grads)
            self.optimizer.learning_rate = lr
            self.optimizer.update(self.model, grads)
            self.updates += 1
            if self.ema is not None:
                d = ema.decay(self.updates, self.plan.ema_decay)
                self.ema = tree_map(lambda e, p: d * e + (1 - d) * p.astype(mx.float32), self.ema,
                                    self.model.trainable_parameters())
            mx.eval(self.model.parameters(), self.optimizer.state, self.ema)
        return True

    @contextmanager
    def averaged(self):
        """The EMA weights in place of the trained ones, for writing the output."""
        if self.ema is None:
            yield
            return
        trained = self.model.trainable_parameters()
        self.model.update(self.ema)
        try:
            yield
        finally:
            self.model.update(trained)

    def attach(self, pipe) -> None:
        """Make `pipe` (an sdkit Pipeline on this backend) generate with the UNet being trained (uncompiled, as
        mx.compile would capture today's weights as constants), and with the text encoders being trained
        (fine-tuned, or with their LoRA layers) when the text side trains."""
        pipe.unet.model = self.model.unet
        pipe.unet.dtype = self.model.unet.conv_in.weight.dtype
        pipe.unet.forward = pipe.unet._forward
        for name, encoder in zip(pipe.checkpoint.text_encoder_names, pipe.text_encoders):
            if name in self.model.text:
                encoder.model = self.model.text[name]

    def lora_weights(self) -> dict:
        out = {}
        for t, m in self.lora.items():
            down, up = np.array(m.down.weight), np.array(m.up.weight)
            if down.ndim == 4:
                down = down.transpose(0, 3, 1, 2)  # (r, in, kh, kw)
            elif len(t.shape) == 4:
                down = down.reshape(down.shape[0], *t.shape[1:])
            out[t] = down, up[:, :, None, None] if len(t.shape) == 4 else up
        return out

    def embedding_vectors(self) -> dict[str, np.ndarray]:
        return {name: np.array(v) for name, v in self.model.embeddings.items()}

    def unet_weights(self) -> dict[str, np.ndarray]:
        """torch layout: convs (O, I, kh, kw); 1x1 convs the UNet runs as Linear keep their stored 4-D shape."""
        out = {}
        for name, w in tree_flatten(self.model.unet.parameters()):
            a = np.array(w.astype(mx.float32))
            out[name] = (a.transpose(0, 3, 1, 2) if a.ndim == 4 else a).reshape(self.shapes[name])
        return out

    def text_weights(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: {k: np.array(w.astype(mx.float32)) for k, w in tree_flatten(model.parameters())}
                for name, model in self.model.text.items()} if self.plan.text_finetune else {}

    def state(self) -> dict[str, np.ndarray]:
        out = {f"param.{k}": np.array(v) for k, v in tree_flatten(self.model.trainable_parameters())}
        out |= {f"adam.{k}": np.array(v) for k, v in tree_flatten(self.optimizer.state)}
        out |= {f"ema.{k}": np.array(v) for k, v in tree_flatten(self.ema or {})}
        out["updates"] = np.array(self.updates)
        if self.scaler is not None:
            out["loss_scale"] = np.array([self.scaler.scale, self.scaler.good_steps])
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        params = [(k.removeprefix("param."), mx.array(v)) for k, v in state.items() if k.startswith("param.")]
        self.model.update(tree_unflatten(params))
        self.optimizer.state = tree_unflatten([(k.removeprefix("adam."), mx.array(v))
                                               for k, v in state.items() if k.startswith("adam.")])
        if self.ema is not None:
            self.ema = tree_unflatten([(k.removeprefix("ema."), mx.array(v)) for k, v in state.items()
                                       if k.startswith("ema.")])
        self.updates = int(state.get("updates", np.zeros(1)).reshape(-1)[0])  # older states have none
        if self.scaler is not None:
            self.scaler.scale, self.scaler.good_steps = float(state["loss_scale"][0]), int(state["loss_scale"][1])


def _checkpoint_blocks(unet: nn.Module) -> None:
    """Gradient checkpointing (mx.checkpoint): resnets and transformer blocks keep only their inputs and recompute
    their activations in the backward pass. Each block's class becomes a subclass whose call is checkpointed, so
    parameter names stay as they are."""
    for _, module in unet.named_modules():
        if type(module) in (ResnetBlock2D, BasicTransformerBlock):
            module.__class__ = _CHECKPOINTED[type(module)]


def _checkpointed(cls: type) -> type:
    def __call__(self, *args):
        return nn.utils.checkpoint(self, lambda *a: cls.__call__(self, *a))(*args)
    return type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": __call__})


_CHECKPOINTED = {cls: _checkpointed(cls) for cls in (ResnetBlock2D, BasicTransformerBlock)}
