"""The PyTorch backend: CUDA, MPS or CPU, in float32, float16 or bfloat16.

Model files are plain torch.nn (clip.py, unet.py, vae.py); this module picks the device and dtype and wraps
each model in the numpy-at-the-edges interface of sdkit.interfaces.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sdkit.config import TextEncoderConfig, UNetConfig, VAEConfig
from sdkit.errors import BackendError
from sdkit.interfaces import Weights
from sdkit.memory import host_available

from .clip import CLIPTextModel
from .cuda_graph import CUDAGraphed
from .loading import load
from .patching import Patcher
from .residency import Lazy, Residency
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STORED = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}  # safetensors' names


class TorchBackend:
    name = "torch"

    def __init__(self, device: str | None = None, dtype: str | None = None, *, compile: bool = False):
        """compile: run the UNet through torch.compile (on CUDA with CUDA graphs): each new image size
        pays a one-off compilation (about a minute) at its first step, later steps run faster.
        Without it, CUDA still replays the eager UNet as a CUDA graph (cuda_graph.py)."""
        self.torch_device = _resolve_device(device)
        if dtype is None:
            dtype = "float16" if self.torch_device.type in ("cuda", "mps") else "float32"
        if dtype not in DTYPES:
            raise BackendError(f"dtype {dtype!r} is not supported by the torch backend; "
                               f"use one of: {', '.join(DTYPES)}")
        self.device = str(self.torch_device)
        self.dtype = dtype
        self.torch_dtype = DTYPES[dtype]
        self.compile = compile
        # NHWC: cuDNN's tensor-core convolutions read it natively (SD1.5 UNet, float16 512x512 on an H200: 7%
        # faster); oneDNN's CPU convolutions are faster in it at the VAE's large feature maps (256x256 decode:
        # 4.04 -> 3.59 s) but slower at the UNet's small ones (2.72 -> 3.67 s per step at 256x256).
        kind = self.torch_device.type
        self.unet_format = torch.channels_last if kind == "cuda" else torch.contiguous_format
        self.vae_format = torch.channels_last if kind in ("cuda", "cpu") else torch.contiguous_format
        self.residency = Residency()

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device!r}, dtype={self.dtype!r}, compile={self.compile})"

    @classmethod
    def is_available(cls) -> bool:
        return True  # torch imported; the CPU always works

    @classmethod
    def devices(cls) -> list[str]:
        """The devices sdkit.batch runs a worker on by default: every CUDA GPU, else the fastest device."""
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or [str(_resolve_device(None))]

    def text_encoder(self, config: TextEncoderConfig, weights: Weights) -> TextEncoder:
        build = lambda: load(lambda: CLIPTextModel(config), weights, "text encoder", self.torch_device,
                             self.torch_dtype)
        patcher = Patcher()
        return TextEncoder(Lazy(lambda: patcher.applied(build()), self._residency(weights)), self.torch_device,
                           patcher)

    def unet(self, config: UNetConfig, weights: Weights) -> UNet:
        # CUDA's fused SDPA kernels already do the softmax in float32; elsewhere half precision needs the upcast
        upcast = config.upcast_attention and self.torch_dtype != torch.float32 and self.torch_device.type != "cuda"
        build = lambda: load(lambda: UNet2DConditionModel(config, upcast), weights, "unet", self.torch_device,
                             self.torch_dtype).to(memory_format=self.unet_format)
        # a compiled UNet is one module for good (so is CUDA's graphed one, and _residency says so for CUDA)
        return UNet(build, None if self.compile else self._residency(weights), self.compile)

    def vae(self, config: VAEConfig, weights: Weights) -> VAE:
        # Half precision first: SD1/SD2's VAEs decode fine in float16, SDXL's overflows and VAE falls back to
        # float32 at the first non-finite result (config.force_upcast is set for both, so it cannot tell them apart).
        load_in = lambda dtype: load(lambda: AutoencoderKL(config), weights, "vae", self.torch_device,
                                     dtype).to(memory_format=self.vae_format)
        return VAE(load_in, self.torch_dtype, self.torch_device, self._residency(weights))

    def trainer(self, checkpoint, plan):
        """A trainer for sdkit.train (sdkit.train.plan says what it does)."""
        from .train import Trainer
        if self.residency.current is not None:  # the last component built for caching (text encoder, VAE)
            self.residency.current.drop()
        return Trainer(checkpoint, plan, self.torch_device, self.torch_dtype)

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=self.torch_device)

    def numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def memory_available(self) -> int:
        if self.torch_device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.torch_device)
            # blocks torch has cached count as used for the driver, but are free for torch's next tensors
            return free + torch.cuda.memory_reserved(self.torch_device) - torch.cuda.memory_allocated(self.torch_device)
        if self.torch_device.type == "mps":
            return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
        return host_available()

    def _residency(self, weights: Weights) -> Residency | None:
        """Evictable (residency.py) where every weight is read zero-copy: CPU, stored in the compute dtype."""
        zero_copy = self.torch_device.type == "cpu" and all(
            ref.dtype == STORED[self.torch_dtype] for ref in weights.values())
        return self.residency if zero_copy else None

    def attention_holds_scores(self, head_size: int) -> bool:
        # SDPA's flash / memory-efficient kernels on the CPU and CUDA take any head size; MPS materialises
        return self.torch_device.type == "mps"


class TextEncoder:
    def __init__(self, lazy: Lazy, device: torch.device, patcher: Patcher):
        self.lazy = lazy
        self.device = device
        self.patcher = patcher

    def patch(self, patches) -> None:
        """LoRA patches ({weight name: sdkit.adapters.lora.Patch}) in place of the previous ones; {}: none.
        A patched module stays built (residency.py), so later calls with the same LoRAs patch nothing."""
        self.patcher.set(self.lazy.module, patches)
        self.lazy.pin(bool(patches))

    @property
    def model(self) -> CLIPTextModel:
        return self.lazy.get()

    @torch.inference_mode()
    def __call__(self, ids: np.ndarray, layer: int = -1, final_norm: bool = True,
                 extra: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.model
        ids = torch.as_tensor(ids, dtype=torch.int64, device=self.device)
        if extra is not None:
            extra = torch.as_tensor(extra, device=self.device).to(model.embeddings.token_embedding.weight.dtype)
        context, pooled = model(ids, layer, final_norm, extra)
        return context.float(), None if pooled is None else pooled.float()


class UNet:
    def __init__(self, build: Callable[[], UNet2DConditionModel], residency: Residency | None, compile: bool):
        self._attention_chunk = 0
        self.patcher = Patcher()
        self.lazy = Lazy(lambda: self.patcher.applied(_set_attention_chunk(build(), self._attention_chunk)),
                         residency)
        model = self.lazy.module
        self.dtype = model.conv_in.weight.dtype
        if compile:
            self.forward = _compile(model)
        elif model.conv_in.weight.device.type == "cuda":
            self.forward = CUDAGraphed(model)
        else:
            self.forward = None  # the module itself, which may be built again (residency.py)

    @property
    def model(self) -> UNet2DConditionModel:
        return self.lazy.get()

    def patch(self, patches) -> None:
        """LoRA patches ({weight name: sdkit.adapters.lora.Patch}) in place of the previous ones; {}: none.
        In place, so a CUDA graph or compiled graph reads the patched weights; a patched module stays built
        (residency.py), so later calls with the same LoRAs patch nothing."""
        self.patcher.set(self.lazy.module, patches)
        self.lazy.pin(bool(patches))

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: float, context: torch.Tensor,
                 added: dict[str, torch.Tensor] | None = None, concat: torch.Tensor | None = None) -> torch.Tensor:
        k = context.shape[0] // x.shape[0]  # conditionings per image: 2 with classifier-free guidance
        if concat is not None:
            x = torch.cat([x, concat], dim=1)  # (B, C + C', h, w)
        x = x.to(self.dtype).repeat(k, 1, 1, 1)  # (k*B, C, h, w): one batched call
        t = torch.full((x.shape[0],), float(t), device=x.device)  # (k*B,): a fill, no host sync
        forward = self.model if self.forward is None else self.forward
        return forward(x, t, context.to(self.dtype), added).float()

    @property
    def attention_chunk(self) -> int:
        return self._attention_chunk

    @attention_chunk.setter
    def attention_chunk(self, rows: int) -> None:
        if rows == self._attention_chunk:
            return
        self._attention_chunk = rows
        if self.lazy.module is not None:
            _set_attention_chunk(self.lazy.module, rows)
        if isinstance(self.forward, CUDAGraphed):
            self.forward.key = None  # the captured graph holds the old chunking: record again


def _set_attention_chunk(model: UNet2DConditionModel, rows: int) -> UNet2DConditionModel:
    for name, module in model.named_modules():
        if name.endswith("attn1"):  # self attention; cross attention's scores are only (T, 77)
            module.chunk = rows
    return model


def _compile(model: UNet2DConditionModel):
    """One static-shape graph per image size. On CUDA its kernels are replayed as one CUDA graph per step
    ("reduce-overhead"), so the loop is free of per-kernel launch costs and host syncs."""
    mode = "reduce-overhead" if model.conv_in.weight.device.type == "cuda" else None
    return torch.compile(model, mode=mode, fullgraph=True, dynamic=False)


class VAE:
    """Runs in `dtype`; a non-finite result in half precision is redone in float32, and the float32
    model (read again from the weights) replaces the half one for later calls."""

    def __init__(self, load_in: Callable[[torch.dtype], AutoencoderKL], dtype: torch.dtype, device: torch.device,
                 residency: Residency | None):
        self.dtype = dtype
        self.device = device
        self.lazy = Lazy(lambda: load_in(self.dtype), residency)

    @property
    def model(self) -> AutoencoderKL:
        return self.lazy.get()

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        return self._run(AutoencoderKL.encode, x)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        x = self._run(AutoencoderKL.decode, latents)
        x = ((x / 2 + 0.5).clamp(0, 1) * 255).round()  # float32, as the interface specifies
        return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, H, W, 3)

    def _run(self, method: Callable[[AutoencoderKL, torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        y = method(self.model, x.to(self.dtype)).float()
        if self.dtype != torch.float32 and not torch.isfinite(y).all():
            self.lazy.drop()  # free the half-precision weights before reading the float32 ones
            self.dtype = torch.float32
            y = method(self.model, x.float())
        return y


def _resolve_device(name: str | None) -> torch.device:
    available = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] \
        + (["mps"] if torch.backends.mps.is_available() else [])
    if name is None:
        return torch.device(available[1] if len(available) > 1 else "cpu")  # cuda:0 > mps > cpu
    unavailable = BackendError(f"device {name!r} is not available to the torch backend here; "
                               f"use one of: {', '.join(available)}")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise unavailable from None
    if device.type == "cpu":
        device = torch.device("cpu")  # "cpu:0" is the one CPU device
    elif device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if str(device) not in available:
        raise unavailable
    return device
