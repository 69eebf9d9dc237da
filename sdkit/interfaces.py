"""The boundary between the core and a backend: whole components, not single ops.

Numpy goes in at the edges (token ids, initial noise, init images) and uint8 images come out. In between,
latents are opaque backend arrays ("Array": a torch.Tensor, an mx.array, ...) in NCHW layout and float32,
whatever dtype the backend computes in. Samplers touch them only with + - * / and Python floats, and
slice the batch axis with x[a:b]; VAE slicing and tiling (sdkit.tiling) cut x[a:b] and x[:, :, a:b, c:d].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .config import TextEncoderConfig, UNetConfig, VAEConfig

Array = Any  # a backend's array type


@dataclass(frozen=True)
class TensorRef:
    """One weight, not yet read: where it lives and how to turn the stored tensor into the canonical one.

    `transform` uses only indexing, .reshape and .T, so it works on torch, mlx and numpy arrays alike
    (e.g. the q third of a fused in_proj_weight, or a 1x1 conv weight squeezed to a linear one).
    """

    file: Path
    key: str  # name inside the safetensors file
    shape: tuple[int, ...]  # shape after `transform`
    dtype: str  # safetensors dtype of the stored tensor: "F16", "F32", "BF16"
    transform: Callable[[Array], Array] | None = None


Weights = dict[str, TensorRef]  # canonical (diffusers) name -> where to read it


class TextEncoder(Protocol):
    def __call__(self, ids: np.ndarray, layer: int = -1, final_norm: bool = True,
                 extra: np.ndarray | None = None) -> tuple[Array, Array | None]:
        """ids (B, 77) int64 -> context (B, 77, C) float32, pooled (B, P) float32 or None.

        extra (E, C) float32: textual-inversion vectors; id vocab_size + e embeds as extra[e] (cast to the
        encoder's dtype), in place of a row of the token embedding. None: ids are all in the vocabulary.

        context is the hidden state after encoder layer `layer` (-1 the last, -2 the penultimate), through the
        final LayerNorm when final_norm: SD1 and SD2 use the defaults, SDXL layer=-2, final_norm=False.
        pooled, whatever `layer` and `final_norm`, is text_projection(final LayerNorm of the last layer's
        output at the first EOS) when the encoder has a projection (SDXL's second one), else None."""

    def patch(self, patches: dict[str, Callable[[np.ndarray | None], np.ndarray]]) -> None:
        """Make `patches` (canonical weight name -> sdkit.adapters.lora.Patch: base weight or None -> float32
        delta, PyTorch layout) the LoRA deltas in force, in place of the previous ones; {}: the exact base
        weights again. A compiled or graphed forward must see the patched weights."""


class UNet(Protocol):
    attention_chunk: int
    """Query rows per step of self attention; 0: all at once. Any value gives the same output up to float
    rounding; a chunk holds a (chunk, T) score matrix instead of (T, T) where the attention materialises one."""

    def __call__(self, x: Array, t: float, context: Array, added: dict[str, Array] | None = None,
                 concat: Array | None = None) -> Array:
        """x (B, C, h, w) float32, t a timestep, context (k*B, 77, D) -> model output (k*B, C, h, w) float32.

        When context holds k*B rows (classifier-free guidance: [uncond, cond]), x is repeated k times
        inside, so the k conditionings are one batched UNet call. concat (B, C', h, w) float32: more input
        channels, joined after x's and repeated like x (an inpainting UNet's mask and masked-image latents)."""

    def patch(self, patches: dict[str, Callable[[np.ndarray | None], np.ndarray]]) -> None:
        """Make `patches` (canonical weight name -> sdkit.adapters.lora.Patch: base weight or None -> float32
        delta, PyTorch layout) the LoRA deltas in force, in place of the previous ones; {}: the exact base
        weights again. A compiled or graphed forward must see the patched weights."""


class VAE(Protocol):
    """Whole batches at any size; slicing and tiling are the core's (sdkit.tiling), calling these on parts."""

    def encode(self, images: np.ndarray) -> Array:
        """images (B, 3, H, W) float32 in [-1, 1] -> posterior mean * scaling_factor (B, 4, H/f, W/f) float32."""

    def decode(self, latents: Array) -> np.ndarray:
        """latents (B, 4, h, w) float32 (scaled) -> images (B, h*f, w*f, 3) uint8,
        as round(clip(x / 2 + 0.5, 0, 1) * 255) computed in float32."""


class Backend(Protocol):
    """One framework (torch, mlx, ...) on one device in one dtype. Registered under the entry-point
    group `sdkit.backends`; constructed by `sdkit.load`, which then asks it for the components."""

    name: str
    device: str  # resolved, e.g. "cuda:0", "cpu", "gpu"
    dtype: str  # resolved: "float32" | "float16" | "bfloat16"

    def __init__(self, device: str | None = None, dtype: str | None = None, *, compile: bool = False) -> None:
        """Resolve defaults (fastest device; float16 on GPUs, float32 on CPU) or raise BackendError.
        compile: compile the UNet for the device (slower first step at each size, faster later ones)."""

    @classmethod
    def is_available(cls) -> bool: ...

    def text_encoder(self, config: TextEncoderConfig, weights: Weights) -> TextEncoder: ...

    def unet(self, config: UNetConfig, weights: Weights) -> UNet: ...

    def vae(self, config: VAEConfig, weights: Weights) -> VAE: ...

    def memory_available(self) -> int:
        """Bytes the device can still allocate for activations, with the weights loaded: free memory on a GPU
        (plus what the framework has cached and can reuse), the recommended working set left on Apple GPUs,
        available RAM on a CPU. sdkit.memory chooses slicing, tiling and attention chunks from it."""

    def attention_holds_scores(self, head_size: int) -> bool:
        """Whether attention with heads this wide holds its (T, S) score matrix in memory on this device (no
        fused, memory-efficient kernel for it): only then does attention chunking save memory."""

    def asarray(self, x: np.ndarray) -> Array:
        """A float32 numpy array -> a float32 backend array on the device."""

    def numpy(self, x: Array) -> np.ndarray:
        """A backend array -> float32 numpy (a host sync: never called inside the sampling loop)."""
