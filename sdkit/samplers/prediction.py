"""Reading the model output: eps (Ho et al. 2020), v = alpha eps - s x0 (Salimans & Ho 2022, "Progressive
Distillation") or x0 itself ("sample": an EDM model after sdkit.samplers.edm.precondition) -> the clean image
x0 or the noise eps.

z is the variance-preserving sample z = alpha x0 + s eps at noise level sigma (alpha = 1 / sqrt(sigma^2 + 1),
s = sigma alpha): the UNet's input. Arrays meet only Python floats, so this runs on any backend.
"""

from __future__ import annotations

import math

KINDS = ("epsilon", "v_prediction")


def alpha_s(sigma: float) -> tuple[float, float]:
    """Variance-preserving coefficients (alpha, s) of the noise level sigma: z = alpha x0 + s eps."""
    if sigma == math.inf:  # zero terminal SNR: pure noise
        return 0.0, 1.0
    alpha = 1 / math.sqrt(sigma * sigma + 1)
    return alpha, sigma * alpha


def x0(out, z, sigma: float, kind: str):
    """The model's estimate of the clean sample."""
    alpha, s = alpha_s(sigma)
    if kind == "epsilon":
        return (z - out * s) / alpha
    if kind == "v_prediction":
        return z * alpha - out * s
    if kind == "sample":
        return out
    raise ValueError(f"scheduler config: prediction_type {kind!r} is not supported; use one of {KINDS}")


def eps(out, z, sigma: float, kind: str):
    """The model's estimate of the noise."""
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        alpha, s = alpha_s(sigma)
        return z * s + out * alpha
    if kind == "sample":
        alpha, s = alpha_s(sigma)
        return (z - out * alpha) / s
    raise ValueError(f"scheduler config: prediction_type {kind!r} is not supported; use one of {KINDS}")


def denoise(model, x, sigma: float, t: float, kind: str):
    """x0 from a k-diffusion (variance-exploding) sample x = x0 + sigma eps: the UNet sees x / sqrt(sigma^2 + 1)."""
    z = x * alpha_s(sigma)[0]
    return x0(model(z, t), z, sigma, kind)
