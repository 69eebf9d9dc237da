"""Text-to-image and image-to-image: the loop that ties tokenizer, text encoder, sampler, UNet and VAE together.

Everything here is backend-neutral. Initial noise comes from numpy so one seed means one picture on every
backend; the backend's arrays are touched only through the sampler's + - * / and batch slicing.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import images, metadata, micro_conditioning, samplers, tiling
from .checkpoint import Checkpoint
from .families import FAMILIES
from .errors import Cancelled
from .interfaces import Array, Backend
from .memory import Memory, Workload, choose
from .tokenizer import Tokenizer

Callback = Callable[[int, int, Array], "bool | None"]

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Request:
    """One validated generate() call."""

    prompt: str
    negative_prompt: str | None  # None: none given (SDXL then zeros the uncond conditioning)
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    seed: int
    num_images: int
    strength: float | None  # None: text-to-image
    micro: dict  # SDXL micro-conditioning: every value the UNet's time ids hold (sdkit.micro_conditioning)
    micro_set: dict  # those that differ from their defaults (written into the image's metadata)


class Pipeline:
    """A loaded model on one backend. Build it with `sdkit.load`."""

    def __init__(self, checkpoint: Checkpoint, backend: Backend, memory: Memory = Memory()):
        self.checkpoint = checkpoint
        self.backend = backend
        self.memory = memory  # what generate() may do to fit; each None is decided per call (sdkit.Memory)
        self.tokenizers = [_load_tokenizer(t) for t in checkpoint.tokenizers]
        self.text_encoders = [backend.text_encoder(cfg, checkpoint.weights[name])
                              for cfg, name in zip(checkpoint.text_encoders, checkpoint.text_encoder_names)]
        self.unet = backend.unet(checkpoint.unet, checkpoint.weights["unet"])
        self.vae = backend.vae(checkpoint.vae, checkpoint.weights["vae"])

    def __repr__(self) -> str:
        b = self.backend
        return f"Pipeline({self.checkpoint.name!r}, {self.checkpoint.family}, {b.name} {b.device} {b.dtype})"

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at: UNet sample_size x VAE scale."""
        return self.checkpoint.default_size

    def generate(self, prompt: str, negative_prompt: str | None = None, *, width: int | None = None,
                 height: int | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 sampler: str | None = None, seed: int | None = None, num_images: int = 1,
                 init_image: Image.Image | str | Path | None = None, strength: float = 0.8,
                 latents: np.ndarray | None = None, callback: Callback | None = None,
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] | None = None,
                 target_size: tuple[int, int] | None = None, aesthetic_score: float | None = None,
                 negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] | None = None,
                 negative_target_size: tuple[int, int] | None = None,
                 negative_aesthetic_score: float | None = None) -> list[Image.Image]:
        """Generate `num_images` images; image i uses seed + i, so any one can be regenerated alone.

        steps, guidance_scale, sampler: None is the model's recommendation (`checkpoint.recommended`: a
        few-step model's recipe, else 30, 7.5 and dpmpp_2m_karras).
        original_size ... negative_aesthetic_score: SDXL's micro-conditioning (sdkit.micro_conditioning).
        `callback(step, total, latents)` runs after each UNet evaluation (`latents`: the backend array the
        UNet saw); returning False raises sdkit.Cancelled, and an exception it raises propagates.
        """
        init = images.open_image(init_image) if init_image is not None else None
        if init is not None and width is None and height is None:
            height, width = images.default_size(init)
        micro = dict(original_size=original_size, crops_coords_top_left=crops_coords_top_left,
                     target_size=target_size, aesthetic_score=aesthetic_score,
                     negative_original_size=negative_original_size,
                     negative_crops_coords_top_left=negative_crops_coords_top_left,
                     negative_target_size=negative_target_size, negative_aesthetic_score=negative_aesthetic_score)
        req = self._request(prompt, negative_prompt, width, height, steps, guidance_scale, sampler, seed,
                            num_images, strength if init is not None else None, micro)
        mem = self._fit(req, encode=init is not None)
        plan = samplers.plan(req.sampler, self.checkpoint.scheduler, req.steps, req.strength or 1.0)
        f = self.checkpoint.vae.scale
        shape = (self.checkpoint.unet.in_channels, req.height // f, req.width // f)  # per image (C, h, w)

        rngs = [np.random.default_rng(req.seed + i) for i in range(req.num_images)]
        noise0 = _draw_noise(rngs, shape) if latents is None else _check_latents(latents, req.num_images, shape)
        context, added = self._encode_prompts(req)

        if init is None:
            x = self.backend.asarray(noise0) * plan.init_noise_sigma
        else:
            pixels = images.to_model_input(init, req.width, req.height)  # (3, H, W)
            x0 = tiling.encode(self.vae, self.backend, self.checkpoint.vae, pixels[None], mem.vae_tiling)
            x = samplers.add_noise(plan, x0, self.backend.asarray(noise0))  # (1, C, h, w) broadcast to (B, ...)

        self.unet.attention_chunk = mem.attention_chunk
        model = self._guided_model(context, added, req, plan.num_evaluations, callback)
        noise = lambda: self.backend.asarray(_draw_noise(rngs, shape))  # euler_a's per-step noise
        x = samplers.sample(plan, model, x, noise)

        pixels = tiling.decode(self.vae, self.checkpoint.vae, x, mem.vae_slicing, mem.vae_tiling)  # (B, H, W, 3)
        return [images.to_pil(p, metadata.format_parameters(self._parameters(req, i))) for i, p in enumerate(pixels)]

    def _request(self, prompt, negative_prompt, width, height, steps, guidance_scale, sampler, seed,
                 num_images, strength, micro) -> Request:
        default_h, default_w = self.default_size
        width = default_w if width is None else width
        height = default_h if height is None else height
        for name, value in (("width", width), ("height", height)):
            _check_int(name, value, minimum=8)
            if value % 8:
                lo = value - value % 8
                raise ValueError(f"{name} {value} is not a multiple of 8; use {lo or 8} or {lo + 8}")
        if strength is not None and not (isinstance(strength, (int, float)) and 0 < strength <= 1):
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        recipe = self.checkpoint.recommended
        if steps is None:
            steps = recipe.steps
            if recipe.name and strength is not None:  # a few-step model runs its steps on the image, too
                steps = _steps_running(recipe.steps, strength)
        guidance_scale = recipe.guidance_scale if guidance_scale is None else guidance_scale
        if sampler is None:
            sampler = recipe.sampler
            if samplers.ALIASES.get(sampler, sampler) not in samplers.NAMES:
                raise ValueError(f"{self.checkpoint.name} is a {recipe.name} model, whose recipe samples with "
                                 f"{sampler!r}, which this sdkit lacks; pass sampler= (one of "
                                 f"{', '.join(samplers.NAMES)})")
        _check_int("steps", steps, minimum=1)
        _check_int("num_images", num_images, minimum=1)
        if not isinstance(guidance_scale, (int, float)) or math.isnan(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        if seed is None:
            seed = secrets.randbits(32)
        _check_int("seed", seed, minimum=0)
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
        ids = self.checkpoint.time_ids
        values = micro_conditioning.resolve(ids, height, width, micro)
        return Request(prompt, negative_prompt, width, height, steps, float(guidance_scale),
                       samplers.canonical_name(sampler), seed, num_images, strength, values,
                       micro_conditioning.to_write(values, ids, height, width))

    def _fit(self, req: Request, encode: bool) -> Memory:
        """self.memory with each None decided for this call from the device's free memory; ValueError when
        the call cannot fit even so."""
        if not isinstance(self.memory, Memory):
            raise ValueError(f"pipe.memory must be an sdkit.Memory, got {type(self.memory).__name__}")
        rows = req.num_images * (2 if req.guidance_scale > 1 else 1)
        work = Workload(self.checkpoint.unet, self.checkpoint.vae, req.num_images, rows, req.height, req.width,
                        _ITEMSIZE[self.backend.dtype], encode, self.backend.attention_holds_scores)
        return choose(self.memory, work, self.backend.memory_available())

    def _encode_prompts(self, req: Request) -> tuple[Array, dict[str, Array] | None]:
        """Token ids -> context (k*B, 77, C) and the UNet's `added` conditioning (SDXL; else None), rows
        [uncond] * B + [cond] * B with guidance (k = 2), else [cond] * B."""
        b, guided = req.num_images, req.guidance_scale > 1
        zero_uncond = guided and req.negative_prompt is None and self.checkpoint.force_zeros_for_empty_prompt
        texts = [req.prompt] * b
        if guided and not zero_uncond:
            texts = [req.negative_prompt or ""] * b + texts
        layer = FAMILIES[self.checkpoint.family].text_layer
        encoded = [enc(tok(texts), **layer) for tok, enc in zip(self.tokenizers, self.text_encoders)]
        if self.checkpoint.unet.addition_embed_type != "text_time":
            (context, _), = encoded  # SD1, SD2: one encoder; the context stays on the device
            return context, None

        # SDXL. Text is encoded once per generate(), so this host round trip stays out of the sampling loop.
        context = np.concatenate([self.backend.numpy(c) for c, _ in encoded], axis=-1)  # (n, 77, 768 + 1280)
        pooled = self.backend.numpy(encoded[-1][1])  # (n, P): the second encoder's projected EOS state
        if zero_uncond:
            context = np.concatenate([np.zeros_like(context), context])  # (2B, 77, C)
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        # micro-conditioning (sizes, crop, aesthetic score): the uncond rows get the negative values
        ids = self.checkpoint.time_ids
        rows = [micro_conditioning.time_ids(req.micro, ids, negative=True)] * (b if guided else 0)
        time_ids = np.stack(rows + [micro_conditioning.time_ids(req.micro, ids, negative=False)] * b)  # (k*B, 5|6)
        added = {"text_embeds": self.backend.asarray(pooled), "time_ids": self.backend.asarray(time_ids)}
        return self.backend.asarray(context), added

    def _guided_model(self, context: Array, added: dict[str, Array] | None, req: Request, total: int,
                      callback: Callback | None):
        """The sampler's model: one batched UNet call on [uncond, cond], then classifier-free guidance."""
        g, b = req.guidance_scale, req.num_images
        step = 0

        def model(x: Array, t: float) -> Array:
            nonlocal step
            out = self.unet(x, t, context, added)
            if g > 1:
                uncond, cond = out[:b], out[b:]
                out = uncond + (cond - uncond) * g
            step += 1
            if callback is not None and callback(step, total, x) is False:
                raise Cancelled(f"cancelled at step {step} of {total}")
            return out

        return model

    def _parameters(self, req: Request, i: int) -> dict:
        params = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps, sampler=req.sampler,
                      guidance_scale=req.guidance_scale, seed=req.seed + i, width=req.width, height=req.height,
                      model=self.checkpoint.name)
        if req.strength is not None:
            params["strength"] = req.strength
        return params | req.micro_set


def _steps_running(steps: int, strength: float) -> int:
    """The fewest steps of which image-to-image at `strength` runs `steps` (it runs int(n * strength))."""
    n = max(steps, math.ceil(steps / strength))
    while int(n * strength) < steps:
        n += 1
    return n


def _load_tokenizer(spec: Path | str) -> Tokenizer:
    return Tokenizer.bundled(spec) if isinstance(spec, str) else Tokenizer.from_dir(spec)


def _draw_noise(rngs: list[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """One standard-normal draw per image from that image's own generator: (B, C, h, w) float32.
    The initial noise is the first draw; euler_a's per-step noise continues the same generators."""
    return np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])


def _check_latents(latents: np.ndarray, num_images: int, shape: tuple[int, ...]) -> np.ndarray:
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape != (num_images, *shape):
        raise ValueError(f"latents must have shape {(num_images, *shape)} (num_images, C, H/8, W/8), "
                         f"got {latents.shape}")
    return latents


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
