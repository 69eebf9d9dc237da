"""Hires fix: AUTOMATIC1111's two-pass text-to-image (modules/processing.py, sample_hr_pass).

The first pass is an ordinary text-to-image at width x height. Its latents are upscaled to hires_scale times
that size, or to hires_resize (A1111's "Hires resize": the first pass's aspect kept, the overflow cropped evenly
off the latents), by a latent upscaler (torch's interpolate on the latents, A1111's "Latent ..." modes) or
"lanczos" (decode, PIL Lanczos, encode), then image-to-image at hires_denoising refines them. As in A1111
(hires steps given, so img2img_fix_steps applies), the second pass runs exactly hires_steps steps: the last
ones of a schedule of int(hires_steps / denoising). Its noise continues each image's numpy generator after the
first pass's draws, so one seed is one picture on every backend.
"""

from __future__ import annotations

import secrets

import numpy as np
from PIL import Image

from . import images, interpolate

# ours -> (A1111's "Hires upscaler", interpolate mode, antialias); A1111's shared.latent_upscale_modes and Lanczos
UPSCALERS = {
    "latent": ("Latent", "bilinear", False),
    "latent_antialiased": ("Latent (antialiased)", "bilinear", True),
    "latent_bicubic": ("Latent (bicubic)", "bicubic", False),
    "latent_bicubic_antialiased": ("Latent (bicubic antialiased)", "bicubic", True),
    "latent_nearest": ("Latent (nearest)", "nearest", False),
    "latent_nearest_exact": ("Latent (nearest-exact)", "nearest-exact", False),
    "lanczos": ("Lanczos", None, False),
}


def generate(pipe, kwargs: dict, scale: float | None, resize: tuple[int, int] | None, steps: int | None,
             denoising: float, upscaler: str):
    """pipe.generate(**kwargs) with hires fix to `scale` times the size or to `resize` ((height, width));
    kwargs are generate()'s other arguments."""
    from .pipeline import Stage, _check_int  # here: pipeline imports this module

    if (scale is None) == (resize is None):
        raise ValueError("hires fix takes hires_scale or hires_resize, not both")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 <= scale <= 16):
        raise ValueError(f"hires_scale must be a number in [1, 16], got {scale!r}")
    if resize is not None:
        if not isinstance(resize, (tuple, list)) or len(resize) != 2:
            raise ValueError(f"hires_resize must be (height, width), got {resize!r}")
        for value in resize:
            _check_int("hires_resize", value, minimum=0)
        if not any(resize):
            raise ValueError("hires_resize (0, 0) resizes to nothing; give a height, a width or both")
    if steps is not None and steps != 0:
        _check_int("hires_steps", steps, minimum=1)
    if isinstance(denoising, bool) or not isinstance(denoising, (int, float)) or not 0 < denoising <= 1:
        raise ValueError(f"hires_denoising must be in (0, 1], got {denoising!r}")
    if upscaler not in UPSCALERS:
        raise ValueError(f"hires_upscaler must be one of {', '.join(map(repr, UPSCALERS))}, got {upscaler!r}")
    mode, antialias = UPSCALERS[upscaler][1:]
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
    (to_h, to_w), (crop_h, crop_w) = target(height, width, scale, resize)
    if to_h // 8 - crop_h < 1 or to_w // 8 - crop_w < 1:
        raise ValueError(f"hires_resize {resize!r} is smaller than 8 pixels on a side at this aspect")

    # First pass: the latents (Latent) or the decoded images (Lanczos) at width x height
    done = 0  # the callback counts the UNet evaluations of both passes

    def first_pass(step, total, x):
        nonlocal done
        done = step
        return None if callback is None else callback(step, total, x)

    first = pipe._generate(Stage(rngs=rngs), **kw, output="pil" if mode is None else "latent", hook=hook,
                           callback=first_pass, init_latents=None)
    # the latents are resized to A1111's hr_upscale_to_x, _y // 8, then cropped to the requested size
    H, W = to_h // 8 * 8, to_w // 8 * 8
    if mode is not None:
        x0 = interpolate.resize(first, H // 8, W // 8, mode, antialias)
    else:
        pixels = np.stack([images.to_model_input(im.resize((W, H), Image.LANCZOS), W, H) for im in first])
        x0 = pipe.backend.numpy(pipe.vae.encode(pixels))  # (B, C, H/8, W/8), the posterior mean
    x0 = x0[:, :, crop_h // 2:x0.shape[2] - (crop_h + 1) // 2, crop_w // 2:x0.shape[3] - (crop_w + 1) // 2]
    H, W = x0.shape[2] * 8, x0.shape[3] * 8

    # Second pass: image-to-image from those latents, running exactly `hires_steps` steps
    run = steps or kw["steps"] or pipe.checkpoint.recommended.steps
    total = int(run / min(denoising, 0.999))
    parameters = {"width": width, "height": height, "steps": kw["steps"] or pipe.checkpoint.recommended.steps,
                  "hires_scale": scale, "hires_resize": resize and tuple(resize), "hires_steps": steps or None,
                  "hires_denoising": denoising, "hires_upscaler": upscaler}
    return pipe._generate(Stage(rngs=rngs, parameters=parameters),
                          **(kw | dict(width=W, height=H, steps=total, strength=min(1.0, (run + 0.5) / total))),
                          init_latents=x0, output=output, hook=hook,
                          callback=callback and (lambda step, total, x: callback(done + step, done + total, x)))


def target(height: int, width: int, scale: float | None, resize: tuple[int, int] | None) -> tuple[tuple, tuple]:
    """A1111's calculate_target_resolution: ((height, width) to upscale to, (rows, columns) of latents to crop).
    A resize with one side 0 takes it from the other by the first pass's aspect; with both, the upscale covers
    the requested size at the first pass's aspect and the latents overflowing it are cropped."""
    if resize is None:
        return (int(height * scale), int(width * scale)), (0, 0)
    rh, rw = resize
    if rh == 0:
        return (rw * height // width, rw), (0, 0)
    if rw == 0:
        return (rh, rh * width // height), (0, 0)
    to = (rw * height // width, rw) if width / height < rw / rh else (rh, rh * width // height)
    return to, ((to[0] - rh) // 8, (to[1] - rw) // 8)
