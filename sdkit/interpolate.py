"""torch.nn.functional.interpolate's resizes in numpy (align_corners=False, size given), so that hires fix's latent
upscalers (A1111's shared.latent_upscale_modes) give one result on every backend.

Each mode is separable: a (n_out, n_in) weight matrix per axis, built as ATen's CPU kernels pick their taps
(aten/src/ATen/native/UpSample.h and cpu/UpSampleKernel.cpp).
"""

from __future__ import annotations

import numpy as np

MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")
CUBIC_A = -0.75  # bicubic's Keys coefficient; antialiased bicubic uses PIL's -0.5


def resize(x: np.ndarray, h: int, w: int, mode: str = "bilinear", antialias: bool = False) -> np.ndarray:
    """(B, C, h0, w0) -> (B, C, h, w), as interpolate(x, size=(h, w), mode=mode, antialias=antialias)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if antialias and mode not in ("bilinear", "bicubic"):
        raise ValueError(f"antialias takes mode bilinear or bicubic, not {mode!r}")
    rows, cols = weights(x.shape[2], h, mode, antialias), weights(x.shape[3], w, mode, antialias)
    return np.einsum("oi,bcij,pj->bcop", rows, x.astype(np.float64), cols).astype(np.float32)


def weights(n_in: int, n_out: int, mode: str, antialias: bool = False) -> np.ndarray:
    """The (n_out, n_in) matrix taking one axis of n_in samples to n_out."""
    out, m = np.arange(n_out), np.zeros((n_out, n_in))
    scale = np.float32(n_in) / np.float32(n_out)  # ATen's scale: float(input_size) / output_size, in float32
    if mode == "nearest":  # floorf(dst * scale), in float32; ATen copies or halves the exact 1x and 2x
        src = out if n_out == n_in else out // 2 if n_out == 2 * n_in else np.floor(out.astype(np.float32) * scale)
        m[out, np.minimum(src.astype(np.int64), n_in - 1)] = 1
    elif mode == "nearest-exact":  # floorf((dst + 0.5) * scale): pixel centres, as PIL and scikit-image
        m[out, np.minimum(np.floor((out + 0.5) * np.float64(scale)).astype(np.int64), n_in - 1)] = 1
    elif antialias:  # ATen's _compute_index_ranges_weights: a filter stretched by the scale when shrinking
        support = (1.0 if mode == "bilinear" else 2.0) * max(float(scale), 1.0)
        stretch = 1 / float(scale) if scale >= 1 else 1.0
        for i in out:
            centre = float(scale) * (i + 0.5)
            lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
            taps = _aa_filter(mode, (np.arange(lo, hi) - centre + 0.5) * stretch)
            m[i, lo:hi] = taps / taps.sum() if taps.sum() else taps
    elif mode == "bilinear":
        src = np.maximum(float(scale) * (out + 0.5) - 0.5, 0.0)  # clamped below at 0
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1, t = np.minimum(i0 + 1, n_in - 1), src - i0
        np.add.at(m, (out, i0), 1 - t)
        np.add.at(m, (out, i1), t)
    else:  # bicubic: four taps around floor(src), indices clamped to the edge (upsample_get_value_bounded)
        src = float(scale) * (out + 0.5) - 0.5
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        t = np.clip(src - i0, 0, 1)
        coefficients = (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))
        for k, c in enumerate(coefficients):
            np.add.at(m, (out, np.clip(i0 - 1 + k, 0, n_in - 1)), c)
    return m


def _cubic(x: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel at distance |x| (< 2)."""
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a)


def _aa_filter(mode: str, x: np.ndarray) -> np.ndarray:
    if mode == "bilinear":
        return np.maximum(0.0, 1 - np.abs(x))
    x = np.abs(x)
    return np.where(x < 2, _cubic(x, -0.5), 0.0)
