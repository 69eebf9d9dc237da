"""The SDXL base + refiner ensemble (diffusers' "ensemble of expert denoisers"; A1111's "Refiner").

The base runs the first share of the steps, to denoising_end = refiner_start, and hands its still noisy latents
to the refiner, which runs the rest from denoising_start = refiner_start with the same sampler, schedule and
steps count, as StableDiffusionXLPipeline(denoising_end=s) -> StableDiffusionXLImg2ImgPipeline(denoising_start=s)
does; the refiner's VAE decodes. Stochastic samplers: the refiner continues each image's numpy generator after
the base's draws, so with the base as its own refiner a first-order sampler gives the one-pass picture.
"""

from __future__ import annotations

import secrets

import numpy as np

from .adapters import lora

MICRO = ("original_size", "crops_coords_top_left", "target_size", "aesthetic_score")


def generate(base, refiner, start: float, kwargs: dict):
    """base.generate(**kwargs) with `refiner` (a Pipeline) denoising from `start` (in (0, 1)) on."""
    from .pipeline import Pipeline, Stage, _check_int  # here: pipeline imports this module

    if not isinstance(refiner, Pipeline):
        raise ValueError(f"refiner must be an sdkit Pipeline (sdkit.load), got {type(refiner).__name__}")
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 < start < 1:
        raise ValueError(f"refiner_start must be a number in (0, 1), got {start!r}")
    for name in ("init_image", "init_latents", "mask_image"):
        if kwargs[name] is not None:
            raise ValueError(f"refiner is a text-to-image ensemble; it takes no {name}")
    if refiner.checkpoint.vae.latent_channels != base.checkpoint.vae.latent_channels:
        raise ValueError(f"refiner {refiner.checkpoint.name!r} has {refiner.checkpoint.vae.latent_channels} latent "
                         f"channels, the model {base.checkpoint.vae.latent_channels}; use a refiner of its family")
    kw = dict(kwargs)
    if kw["seed"] is None:
        kw["seed"] = secrets.randbits(32)
    _check_int("seed", kw["seed"], minimum=0)
    _check_int("num_images", kw["num_images"], minimum=1)
    output, hook, callback = kw.pop("output"), kw.pop("hook"), kw.pop("callback")
    del kw["init_latents"]
    rngs = [np.random.default_rng(kw["seed"] + i) for i in range(kw["num_images"])]
    micro = {k: kw.pop(k) for k in [*MICRO, *(f"negative_{m}" for m in MICRO)]}
    base_micro, refiner_micro = _split_micro(micro, base.checkpoint.time_ids, refiner.checkpoint.time_ids)
    unset = dict.fromkeys(micro)  # what a model does not take is None for it
    height, width = base.default_size
    width, height = kw["width"] or width, kw["height"] or height
    done = 0  # the callback counts both models' UNet evaluations

    def base_callback(step, total, x):
        nonlocal done
        done = step
        return None if callback is None else callback(step, total, x)

    def handoff(x: np.ndarray):
        """The base's latents at `start` (numpy (B, C, h, w)) -> the refiner's final ones (its backend's array),
        the refiner (whose VAE decodes) and what the image's metadata adds."""
        # the base's LoRAs are not the refiner's: their tags leave the refiner's prompt
        refined = refiner._generate(Stage(rngs=rngs, denoising_start=start),
                                    **(kw | dict(prompt=lora.tags(kw["prompt"])[0], width=width, height=height,
                                                 loras=None) | unset | refiner_micro),
                                    init_latents=x, output="latent", hook=hook,
                                    callback=callback and (lambda i, n, y: callback(done + i, done + n, y)))
        given = {k: v for k, v in refiner_micro.items() if v is not None and k not in base_micro}  # aesthetic
        return refiner.backend.asarray(refined), refiner, {"Refiner": refiner.checkpoint.name, "refiner_start": start,
                                                           **given}

    return base._generate(Stage(rngs=rngs, denoising_end=start, handoff=handoff), **(kw | unset | base_micro),
                          output=output, hook=hook, callback=base_callback, init_latents=None)


def _split_micro(micro: dict, base_ids: tuple[str, ...], refiner_ids: tuple[str, ...]) -> tuple[dict, dict]:
    """generate()'s micro-conditioning arguments -> the base's and the refiner's (SDXL's base takes sizes, the
    refiner sizes but no target size, and an aesthetic score); ValueError for one neither takes."""
    for name, value in micro.items():
        if value is not None and name.removeprefix("negative_") not in base_ids + refiner_ids:
            raise ValueError(f"{name}: neither the model nor its refiner takes it")
    pick = lambda ids: {k: v for k, v in micro.items() if k.removeprefix("negative_") in ids}
    return pick(base_ids), pick(refiner_ids)
