"""Memory options for small machines, and the estimates that choose them for each generate() call.

- VAE slicing: decode one image of the batch at a time. Exact.
- VAE tiling: decode (and, for image-to-image, encode) in overlapping tiles of the size the VAE was trained at,
  blended linearly (sdkit.tiling). The peak stops growing with the image; the price is that each tile sees only
  its own part of the picture (its own GroupNorm statistics and mid-block attention), which the blend hides.
- Attention chunking: the UNet's self attention over `attention_chunk` query rows at a time. Exact up to float
  rounding; it saves memory only where the backend holds the (T, T) score matrix (torch on MPS, MLX for heads
  without a fused kernel), never with fused kernels (torch SDPA on CPU and CUDA, MLX's Metal kernel). MLX
  evaluates the chunks one by one, outside mx.compile: slower, which is why auto chunks only when it must.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

from .config import UNetConfig, VAEConfig

# Peak working memory per pixel above the resident weights, float32, measured with bench/memory_per_pixel.py:
# SD1.5's VAE (block_out_channels 128..512, 2 layers per block) and UNet (320..1280) with random weights, one call
# at two sizes, the slope between them (so fixed costs drop out). torch on the CPU, the process's peak RSS at
# 256x256 and 512x512: decode 3633 bytes per output pixel, encode 3084 per input pixel, UNet 1021 per image pixel
# at batch 2 (= 32672 per latent pixel and batch row). torch on an H100, max_memory_allocated at 512x512 and
# 1024x1024: decode 4885, encode 3601, UNet 32128 (16128 in float16). The larger of each is used. Activations are
# widest in the first block, so the figures scale with its channel count (and the UNet's with its dtype).
DECODE_BYTES = 4885  # per output pixel, for a VAE with 128 channels at full resolution
ENCODE_BYTES = 3601  # per input pixel
UNET_BYTES = 32672  # per latent pixel and batch row, for a UNet with 320 channels at the top level, float32

# The VAE is costed in float32: a half-precision VAE redoes a call in float32 when it overflows (SDXL's does).
VAE_ITEMSIZE = 4

# (slicing, tiling) from cheapest in time and exactness to cheapest in memory
VAE_LADDER = ((False, False), (True, False), (False, True), (True, True))


@dataclass(frozen=True)
class Memory:
    """What sdkit may do to fit a call into memory. None: decide per call from the size, the batch and the
    device's free memory (the default); False / 0: never; True / N: always."""

    vae_slicing: bool | None = None
    vae_tiling: bool | None = None
    attention_chunk: int | None = None  # query rows per step of self attention; 0: all at once

    def __post_init__(self):
        for name in ("vae_slicing", "vae_tiling"):
            value = getattr(self, name)
            if not (value is None or isinstance(value, bool)):
                raise ValueError(f"{name} must be True, False or None (auto), got {value!r}")
        c = self.attention_chunk
        if not (c is None or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)):
            raise ValueError(f"attention_chunk must be None (auto), 0 (off) or a number of query rows >= 1, "
                             f"got {c!r}")


@dataclass(frozen=True)
class Workload:
    """One generate() call, in the terms the estimates need."""

    unet: UNetConfig
    vae: VAEConfig
    images: int  # batch size B
    rows: int  # UNet batch rows: 2B with classifier-free guidance, else B
    height: int  # pixels
    width: int
    itemsize: int  # bytes per value in the UNet's dtype
    encode: bool  # image-to-image: the VAE also encodes the init image (once)
    holds_scores: Callable[[int], bool]  # Backend.attention_holds_scores: head size -> (T, S) matrix in memory?


def unet_bytes(w: Workload, chunk: int) -> int:
    """Peak of one UNet call: activations, plus the score matrices of the largest self attention where the
    backend holds them, `chunk` query rows at a time (0: all)."""
    cfg, f = w.unet, w.vae.scale
    h, wd = w.height // f, w.width // f
    activations = UNET_BYTES * cfg.block_out_channels[0] / 320 * w.itemsize / 4 * w.rows * h * wd
    scores = 0
    for level, kind in enumerate(cfg.down_block_types):  # the up path attends at the same sizes
        heads = cfg.num_heads[level]
        if kind.startswith("CrossAttn") and w.holds_scores(cfg.block_out_channels[level] // heads):
            tokens = math.ceil(h / 2 ** level) * math.ceil(wd / 2 ** level)  # stride-2 convs round up
            scores = max(scores, w.rows * heads * min(chunk or tokens, tokens) * tokens)
    itemsize = 4 if cfg.upcast_attention else w.itemsize
    return int(activations + 2 * scores * itemsize)  # the scores and their softmax are alive together


def vae_bytes(w: Workload, slicing: bool, tiling: bool) -> int:
    """Peak of the VAE: the decode (of one image when slicing, of a tile when tiling) or the image-to-image
    encode, whichever is larger; with the mid-block attention's scores where the backend holds them."""
    cfg = w.vae
    side = cfg.sample_size  # a tile's side in pixels
    h, wd = (min(w.height, side), min(w.width, side)) if tiling else (w.height, w.width)
    tokens = (h // cfg.scale) * (wd // cfg.scale)
    scores = 2 * tokens * tokens * VAE_ITEMSIZE if w.holds_scores(cfg.block_out_channels[-1]) else 0
    per_image = lambda per_pixel: per_pixel * cfg.block_out_channels[0] / 128 * h * wd + scores
    decode = (1 if slicing else w.images) * per_image(DECODE_BYTES)
    if tiling:
        decode += w.images * w.height * w.width * 3 * 4  # the float32 sum the tiles are blended into
    encode = per_image(ENCODE_BYTES) if w.encode else 0
    return int(max(decode, encode))


def choose(options: Memory, w: Workload, available: int) -> Memory:
    """`options` with each None decided for `w` in `available` bytes: the VAE whole if it fits, else sliced
    (exact), else tiled; attention whole unless its scores do not fit, else in the largest power-of-two
    chunk that does. Raises ValueError, one line, when nothing the options allow fits."""
    ladder = [(s, t) for s, t in VAE_LADDER if options.vae_slicing in (None, s) and options.vae_tiling in (None, t)]
    slicing, tiling = next((st for st in ladder if vae_bytes(w, *st) <= available), ladder[-1])
    chunks = [options.attention_chunk] if options.attention_chunk is not None else _chunks(w)
    chunk = next((c for c in chunks if unet_bytes(w, c) <= available), chunks[-1])
    need = max(vae_bytes(w, slicing, tiling), unet_bytes(w, chunk))
    if need > available:
        # what the options forbid: slicing, tiling, or (a fixed chunk) smaller chunks
        fixed = options.vae_slicing is False or options.vae_tiling is False or options.attention_chunk is not None
        how = f"with {options}" if fixed else "even with every memory option on"
        raise ValueError(f"{w.width}x{w.height} x {w.images} image(s) needs about {_size(need)} {how}, more than "
                         f"the {_size(available)} available; use a smaller size or fewer images"
                         + (", or leave the memory options to sdkit (None)" if fixed else ""))
    return Memory(slicing, tiling, chunk)


def host_available() -> int:
    """Bytes of RAM a new allocation can get without swapping: MemAvailable (Linux), else the free pages, else
    all physical memory (macOS reports neither)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = "SC_AVPHYS_PAGES" if "SC_AVPHYS_PAGES" in os.sysconf_names else "SC_PHYS_PAGES"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages)


def _chunks(w: Workload) -> list[int]:
    """Auto's attention chunks, most to least memory: none, then powers of two below the top level's tokens."""
    tokens = (w.height // w.vae.scale) * (w.width // w.vae.scale)
    return [0] + [2 ** i for i in reversed(range(max(tokens - 1, 1).bit_length()))]


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{math.ceil(n / 2**20)} MiB"
