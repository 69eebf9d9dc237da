"""VAE slicing and tiling (see sdkit.memory): the backend's whole VAE, called on parts of the batch or picture.

Tiles are the size the VAE was trained at (config.sample_size pixels: 64 latents for SD1 and SD2, 128 for SDXL),
overlap by a quarter of that and are spread evenly, so any multiple-of-8 size works and no tile is a sliver.
A tile differs from the same region of the untiled result (zero padding at its borders, its own GroupNorm
statistics and mid-block attention), so across each overlap the output cross-fades linearly from one tile to the
next, with weights 1 - t and t, as diffusers' AutoencoderKL.tiled_decode blends: every pixel's weights sum to one
and no tile ends abruptly.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .config import VAEConfig
from .interfaces import VAE, Array, Backend


def decode(vae: VAE, config: VAEConfig, latents: Array, slicing: bool, tiling: bool) -> np.ndarray:
    """vae.decode(latents): (B, 4, h, w) -> (B, h*f, w*f, 3) uint8, one image at a time when slicing (the same
    result), in blended tiles when tiling."""
    B, _, h, w = latents.shape
    if slicing and B > 1:
        return np.concatenate([decode(vae, config, latents[i:i + 1], False, tiling) for i in range(B)])
    if not tiling:
        return vae.decode(latents)
    f = config.scale
    out = np.zeros((B, h * f, w * f, 3), np.float32)
    for (y0, y1, x0, x1), weight in _tiles(config, h, w, f):
        pixels = vae.decode(latents[:, :, y0:y1, x0:x1])  # (B, (y1 - y0) * f, (x1 - x0) * f, 3) uint8
        out[:, y0 * f:y1 * f, x0 * f:x1 * f] += pixels * weight[:, :, None]
    return np.round(out).astype(np.uint8)


def encode(vae: VAE, backend: Backend, config: VAEConfig, images: np.ndarray, tiling: bool) -> Array:
    """vae.encode(images): (B, 3, H, W) -> (B, 4, H/f, W/f) latents, in blended tiles when tiling (blended on the
    host: the latents are small, and this runs once per call)."""
    if not tiling:
        return vae.encode(images)
    f = config.scale
    B, _, H, W = images.shape
    out = np.zeros((B, config.latent_channels, H // f, W // f), np.float32)
    for (y0, y1, x0, x1), weight in _tiles(config, H // f, W // f, 1):
        latents = backend.numpy(vae.encode(images[:, :, y0 * f:y1 * f, x0 * f:x1 * f]))  # (B, 4, y1 - y0, x1 - x0)
        out[:, :, y0:y1, x0:x1] += latents * weight
    return backend.asarray(out)


def spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of the fewest tiles of at most `tile` that cover `size` with at least `overlap` between
    neighbours, all of one length and evenly spaced."""
    if size <= tile:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))
    length = math.ceil((size + (n - 1) * overlap) / n)
    return [(start, start + length) for start in (round(i * (size - length) / (n - 1)) for i in range(n))]


def ramps(spans: list[tuple[int, int]], scale: int) -> list[np.ndarray]:
    """Each tile's weight along one axis, `scale` values per unit of its span: rising linearly across the
    overlap with the previous tile, falling across the overlap with the next, one in between."""
    weights = []
    for i, (start, stop) in enumerate(spans):
        w = np.ones((stop - start) * scale, np.float32)
        if i > 0:
            n = (spans[i - 1][1] - start) * scale
            w[:n] = _rise(n)
        if i + 1 < len(spans):
            n = (stop - spans[i + 1][0]) * scale
            w[len(w) - n:] = 1 - _rise(n)  # the next tile's rise over the same positions: the two sum to one
        weights.append(w)
    return weights


def _tiles(config: VAEConfig, h: int, w: int, scale: int) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Each tile of an (h, w)-latent picture: its latent box (y0, y1, x0, x1) and its 2-D weight, `scale` values
    per latent along each axis."""
    tile = config.sample_size // config.scale
    ys, xs = spans(h, tile, tile // 4), spans(w, tile, tile // 4)
    for (y0, y1), wy in zip(ys, ramps(ys, scale)):
        for (x0, x1), wx in zip(xs, ramps(xs, scale)):
            yield (y0, y1, x0, x1), np.outer(wy, wx)


def _rise(n: int) -> np.ndarray:
    return ((np.arange(n) + 0.5) / n).astype(np.float32)
