"""The MLX backend: Apple silicon's GPU (Metal) or the CPU, in float32, float16 or bfloat16.

Model files are plain mlx.nn (clip.py, unet.py, vae.py), NHWC inside; this module picks the device and dtype
and wraps each model in the numpy-at-the-edges, NCHW-latents interface of sdkit.interfaces.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from sdkit.config import TextEncoderConfig, UNetConfig, VAEConfig
from sdkit.errors import BackendError
from sdkit.interfaces import Weights
from sdkit.memory import host_available

from .clip import CLIPTextModel
from .loading import check, load
from .patching import Patcher
from .unet import FUSED_HEAD_SIZES, UNet2DConditionModel
from .vae import AutoencoderKL

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
# Below this much unified memory (8 GiB Macs) the text encoders are read for each call and freed after it,
# so SD2's 0.7 GB tower is not resident while the UNet and VAE run; re-reading it costs well under a second.
LOW_MEMORY_BYTES = 12 * 2**30


class MLXBackend:
    name = "mlx"

    def __init__(self, device: str | None = None, dtype: str | None = None, *, compile: bool = False,
                 low_memory: bool | None = None):
        """compile: mx.compile the UNet on the CPU too (on the GPU it always is);
        low_memory: free the text encoders between calls (None: when the GPU has under 12 GiB)."""
        available = ["gpu", "cpu"] if mx.is_available(mx.gpu) else ["cpu"]
        device = available[0] if device is None else device
        if device not in available:
            raise BackendError(f"device {device!r} is not available to the mlx backend here; "
                               f"use one of: {', '.join(available)}")
        if dtype is None:
            dtype = "float16" if device == "gpu" else "float32"
        if dtype not in DTYPES:
            raise BackendError(f"dtype {dtype!r} is not supported by the mlx backend; use one of: {', '.join(DTYPES)}")
        self.device = device
        self.dtype = dtype
        self.mx_device = mx.gpu if device == "gpu" else mx.cpu
        self.mx_dtype = DTYPES[dtype]
        self.compile = compile or device == "gpu"
        self.low_memory = _memory_is_tight(device) if low_memory is None else low_memory
        # Padding a head up to a fused kernel's size pays only where that kernel exists (Metal), not on the CPU.
        self.fused_sizes = FUSED_HEAD_SIZES if device == "gpu" else ()

    def __repr__(self) -> str:
        return f"MLXBackend(device={self.device!r}, dtype={self.dtype!r})"

    @classmethod
    def is_available(cls) -> bool:
        return True  # mlx imported; its CPU always works

    def text_encoder(self, config: TextEncoderConfig, weights: Weights) -> TextEncoder:
        build = lambda: self._load(lambda: CLIPTextModel(config), weights, "text encoder", self.mx_dtype)
        if self.low_memory:
            check(CLIPTextModel(config), weights, "text encoder")  # a mismatch fails now, not at the first prompt
        return TextEncoder(build, self.mx_device, resident=not self.low_memory)

    def unet(self, config: UNetConfig, weights: Weights) -> UNet:
        model = self._load(lambda: UNet2DConditionModel(config, self.fused_sizes), weights, "unet", self.mx_dtype)
        return UNet(model, self.mx_device, compiled=self.compile)

    def vae(self, config: VAEConfig, weights: Weights) -> VAE:
        # Half precision first: SD1/SD2's VAEs decode fine in float16, SDXL's overflows and VAE falls back to
        # float32 at the first non-finite result (config.force_upcast is set for both, so it cannot tell them apart).
        return VAE(lambda d: self._load(lambda: AutoencoderKL(config), weights, "vae", d), self.mx_dtype,
                   self.mx_device)

    def trainer(self, checkpoint, plan):
        """A trainer for sdkit.train (sdkit.train.plan says what it does)."""
        from .train import Trainer
        return Trainer(checkpoint, plan, self.mx_device, self.mx_dtype)

    def asarray(self, x: np.ndarray) -> mx.array:
        return mx.array(np.asarray(x, dtype=np.float32))

    def numpy(self, x: mx.array) -> np.ndarray:
        return np.array(x.astype(mx.float32))

    def memory_available(self) -> int:
        if self.device == "gpu":  # unified memory: what Metal recommends for one process, less what is in use
            info = mx.device_info(mx.gpu)
            return info["max_recommended_working_set_size"] - mx.get_active_memory()
        return host_available()

    def attention_holds_scores(self, head_size: int) -> bool:
        # the fused Metal kernel (heads padded up to FUSED_HEAD_SIZES) works in blocks; MLX's fallback does not
        return not any(head_size <= s for s in self.fused_sizes)

    def _load(self, build, weights: Weights, component: str, dtype: mx.Dtype):
        with mx.stream(self.mx_device):  # the layout and dtype conversions run on the chosen device
            return load(build, weights, component, dtype)


class TextEncoder:
    """Token ids -> context. Resident, or (low memory) read for each call and freed after it."""

    def __init__(self, build: Callable[[], CLIPTextModel], device: mx.Device, resident: bool):
        self.patcher = Patcher()
        self.build = lambda: self.patcher.applied(build())
        self.device = device
        self.model = self.build() if resident else None

    def patch(self, patches) -> None:
        """LoRA patches ({weight name: sdkit.adapters.lora.Patch}) in place of the previous ones; {}: none."""
        with mx.stream(self.device):
            self.patcher.set(self.model, patches)

    def __call__(self, ids: np.ndarray, layer: int = -1, final_norm: bool = True,
                 extra: np.ndarray | None = None) -> tuple[mx.array, mx.array | None]:
        with mx.stream(self.device):
            model = self.model or self.build()
            if extra is not None:
                extra = mx.array(np.asarray(extra, dtype=np.float32)).astype(model.final_layer_norm.weight.dtype)
            context, pooled = model(mx.array(ids, dtype=mx.int32), layer, final_norm, extra)
            out = context.astype(mx.float32), None if pooled is None else pooled.astype(mx.float32)
            mx.eval(out)
        if self.model is None:
            del model
            mx.clear_cache()  # hand the freed weights' buffers back rather than keep them cached
        return out


class UNet:
    """NCHW float32 latents in and out; NHWC in the compute dtype inside."""

    def __init__(self, model: UNet2DConditionModel, device: mx.Device, compiled: bool):
        self.model = model
        self.device = device
        self.dtype = model.conv_in.weight.dtype
        self.compiled = compiled
        self._attention_chunk = 0
        # compiled: one graph per input shape (fixed within a generate call), in which MLX fuses the
        # elementwise chains (GroupNorm, SiLU, GEGLU, residual adds) into single Metal kernels; the weights
        # are captured as the constants they are. On the CPU it runs a C++ compiler at first use for no
        # measurable gain, so the backend compiles on the GPU unless asked (compile=True).
        self.forward = mx.compile(self._forward) if compiled else self._forward
        self.patcher = Patcher()

    def patch(self, patches) -> None:
        """LoRA patches ({weight name: sdkit.adapters.lora.Patch}) in place of the previous ones; {}: none."""
        with mx.stream(self.device):
            self.patcher.set(self.model, patches)
        if self.forward is not self._forward:  # a compiled graph holds the weights it saw as constants
            self.forward = mx.compile(self._forward)

    def __call__(self, x: mx.array, t: float, context: mx.array, added: dict[str, mx.array] | None = None,
                 concat: mx.array | None = None) -> mx.array:
        with mx.stream(self.device):
            if concat is not None:
                x = mx.concatenate([x, concat], axis=1)  # (B, C + C', h, w)
            out = self.forward(x, mx.array(t, dtype=mx.float32), context, added)
            # One evaluation per step: the lazy graph never spans steps, and the sampler's arithmetic on
            # this output joins the next step's evaluation.
            mx.eval(out)
        return out

    @property
    def attention_chunk(self) -> int:
        return self._attention_chunk

    @attention_chunk.setter
    def attention_chunk(self, rows: int) -> None:
        if rows == self._attention_chunk:
            return
        self._attention_chunk = rows
        for name, module in self.model.named_modules():
            if name.endswith("attn1"):  # self attention; cross attention's scores are only (T, 77)
                module.chunk = rows
        # chunks are evaluated one by one, which a compiled graph cannot do; it would also keep the old chunking
        self.forward = mx.compile(self._forward) if self.compiled and not rows else self._forward

    def _forward(self, x: mx.array, t: mx.array, context: mx.array, added: dict[str, mx.array] | None) -> mx.array:
        k = context.shape[0] // x.shape[0]  # conditionings per image: 2 with classifier-free guidance
        x = mx.tile(x, (k, 1, 1, 1)).transpose(0, 2, 3, 1).astype(self.dtype)  # (k*B, h, w, C): one batched call
        t = mx.broadcast_to(t, (x.shape[0],))
        y = self.model(x, t, context.astype(self.dtype), added)
        return y.astype(mx.float32).transpose(0, 3, 1, 2)  # (k*B, C, h, w)


class VAE:
    """Runs in `dtype`; a non-finite result in half precision is redone in float32, and the float32
    model (read again from the weights) replaces the half one for later calls: no black images."""

    def __init__(self, load_in: Callable[[mx.Dtype], AutoencoderKL], dtype: mx.Dtype, device: mx.Device):
        self.load_in = load_in
        self.dtype = dtype
        self.device = device
        self.model = load_in(dtype)

    def encode(self, images: np.ndarray) -> mx.array:
        with mx.stream(self.device):
            x = mx.array(np.asarray(images, dtype=np.float32)).transpose(0, 2, 3, 1)  # (B, H, W, 3)
            z = self._run(AutoencoderKL.encode, x)
            return z.transpose(0, 3, 1, 2)  # (B, 4, h, w)

    def decode(self, latents: mx.array) -> np.ndarray:
        with mx.stream(self.device):
            x = self._run(AutoencoderKL.decode, latents.transpose(0, 2, 3, 1))  # (B, H, W, 3)
            x = mx.round(mx.clip(x / 2 + 0.5, 0, 1) * 255)  # float32, as the interface specifies
            return np.array(x.astype(mx.uint8))

    def _run(self, method: Callable[[AutoencoderKL, mx.array], mx.array], x: mx.array) -> mx.array:
        y = method(self.model, x.astype(self.dtype)).astype(mx.float32)
        mx.eval(y)
        if self.dtype != mx.float32 and not mx.isfinite(y).all().item():
            self.model = None  # free the half-precision weights before reading the float32 ones
            self.dtype, self.model = mx.float32, self.load_in(mx.float32)
            y = method(self.model, x.astype(mx.float32))
            mx.eval(y)
        return y


def _memory_is_tight(device: str) -> bool:
    if device != "gpu":
        return False
    return mx.device_info().get("memory_size", LOW_MEMORY_BYTES) < LOW_MEMORY_BYTES
