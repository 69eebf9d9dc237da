"""Hires fix: AUTOMATIC1111's two-pass text-to-image (modules/processing.py, sample_hr_pass).

The first pass is an ordinary text-to-image at width x height. Its latents are upscaled to hires_scale times
that size ("latent": bilinear on the latents, A1111's "Latent"; "lanczos": decode, PIL Lanczos, encode), then
image-to-image at hires_denoising refines them. As in A1111 (hires steps given, so img2img_fix_steps applies),
the second pass runs exactly hires_steps steps: the last ones of a schedule of int(hires_steps / denoising).
Its noise continues each image's numpy generator after the first pass's draws, so one seed is one picture on
every backend.
"""

from __future__ import annotations

import secrets

import numpy as np
from PIL import Image

from . import images

UPSCALERS = ("latent", "lanczos")  # A1111's "Latent" and "Lanczos"


def generate(pipe, kwargs: dict, scale: float, steps: int | None, denoising: float, upscaler: str):
    """pipe.generate(**kwargs) with hires fix; kwargs are generate()'s other arguments."""
    from .pipeline import Stage, _check_int  # here: pipeline imports this module

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 <= scale <= 16:
        raise ValueError(f"hires_scale must be a number in [1, 16], got {scale!r}")
    if steps is not None and steps != 0:
        _check_int("hires_steps", steps, minimum=1)
    if isinstance(denoising, bool) or not isinstance(denoising, (int, float)) or not 0 < denoising <= 1:
        raise ValueError(f"hires_denoising must be in (0, 1], got {denoising!r}")
    if upscaler not in UPSCALERS:
        raise ValueError(f"hires_upscaler must be one of {', '.join(map(repr, UPSCALERS))}, got {upscaler!r}")
    kw = dict(kwargs)
    if kw["seed"] is None:
        kw["seed"] = secrets.randbits(32)
    _check_int("seed", kw["seed"], minimum=0)
    _check_int("num_images", kw["num_images"], minimum=1)
    height, width = pipe.default_size
    width, height = kw["width"] or width, kw["height"] or height
    output, hook, callback = kw.pop("output"), kw.pop("hook"), kw.pop("callback")
    del kw["init_latents"]
    rngs = [np.random.default_rng(kw["seed"] + i) for i in range(kw["num_images"])]

    # First pass: the latents (Latent) or the decoded images (Lanczos) at width x height
    done = 0  # the callback counts the UNet evaluations of both passes

    def first_pass(step, total, x):
        nonlocal done
        done = step
        return None if callback is None else callback(step, total, x)

    first = pipe._generate(Stage(rngs=rngs), **kw, output="latent" if upscaler == "latent" else "pil", hook=hook,
                           callback=first_pass, init_latents=None)
    # A1111's hr_upscale_to_x = int(width * scale); the latents are resized to its // 8
    W, H = int(width * scale) // 8 * 8, int(height * scale) // 8 * 8
    if upscaler == "latent":
        x0 = upscale_latents(first, H // 8, W // 8)
    else:
        pixels = np.stack([images.to_model_input(im.resize((W, H), Image.LANCZOS), W, H) for im in first])
        x0 = pipe.backend.numpy(pipe.vae.encode(pixels))  # (B, C, H/8, W/8), the posterior mean

    # Second pass: image-to-image from those latents, running exactly `hires_steps` steps
    run = steps or kw["steps"] or pipe.checkpoint.recommended.steps
    total = int(run / min(denoising, 0.999))
    parameters = {"width": width, "height": height, "steps": kw["steps"] or pipe.checkpoint.recommended.steps,
                  "hires_scale": scale, "hires_steps": steps or None, "hires_denoising": denoising,
                  "hires_upscaler": upscaler}
    return pipe._generate(Stage(rngs=rngs, parameters=parameters),
                          **(kw | dict(width=W, height=H, steps=total, strength=min(1.0, (run + 0.5) / total))),
                          init_latents=x0, output=output, hook=hook,
                          callback=callback and (lambda step, total, x: callback(done + step, done + total, x)))


def upscale_latents(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, C, h0, w0) -> (B, C, h, w) bilinear, as torch's interpolate(mode="bilinear", align_corners=False,
    antialias=False): A1111's "Latent" upscaler."""
    def taps(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)  # torch clamps below at 0
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, fy = taps(x.shape[2], h)
    x0, x1, fx = taps(x.shape[3], w)
    rows = x[:, :, y0] * (1 - fy)[:, None] + x[:, :, y1] * fy[:, None]  # (B, C, h, w0)
    return (rows[..., x0] * (1 - fx) + rows[..., x1] * fx).astype(np.float32)
