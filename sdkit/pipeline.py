"""Text-to-image and image-to-image: the loop that ties tokenizer, text encoder, sampler, UNet and VAE together.

Everything here is backend-neutral. Initial noise comes from numpy so one seed means one picture on every
backend; the backend's arrays are touched only through the sampler's + - * / and batch slicing.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import conditioning, hashes, hires, images, inpaint, metadata, micro_conditioning, refiner as ensemble, \
    samplers, tiling
from .adapters import lora
from .samplers import guidance, lcm
from .adapters.embeddings import SDXL_KEYS, Embeddings
from .checkpoint import Checkpoint
from .families import FAMILIES
from .errors import Cancelled
from .interfaces import Array, Backend
from .memory import Memory, Workload, choose
from .tokenizer import Tokenizer

Callback = Callable[[int, int, Array], "bool | None"]
Hook = Callable[[int, Array, float, Array], "Array | None"]

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
IMG2IMG_STRENGTH = 0.8  # generate()'s strength with init_image and no mask (1.0 with a mask)


@dataclass(frozen=True)
class Request:
    """One validated generate() call."""

    prompt: str
    negative_prompt: str | None  # None: none given (SDXL then zeros the uncond conditioning)
    width: int
    height: int
    steps: int
    guidance_scale: float
    guidance_rescale: float  # 0: none
    sampler: str  # canonical name
    schedule: str | None  # None: the checkpoint's own timestep spacing
    seed: int
    num_images: int
    strength: float | None  # None: text-to-image
    micro: dict  # SDXL micro-conditioning: every value the UNet's time ids hold (sdkit.micro_conditioning)
    micro_set: dict  # those that differ from their defaults (written into the image's metadata)
    clip_skip: int  # A1111's: 1 the last layer, 2 the penultimate, ...
    prompt_syntax: str  # "a1111" | "plain"
    loras: tuple[tuple[str, Path, float, float], ...] = ()  # (name, file, text-encoder weight, UNet weight)
    eta: float | None = None  # tcd's; None: its default


# generate()'s arguments for two passes (hires fix, a refiner); the others are each pass's
TWO_PASS = ("hires_scale", "hires_resize", "hires_steps", "hires_denoising", "hires_upscaler", "refiner",
            "refiner_start")


@dataclass(frozen=True)
class Stage:
    """One pass of a two-pass generate() (sdkit.hires, sdkit.refiner); Stage() is a whole one-pass generate()."""

    rngs: list[np.random.Generator] | None = None  # each image's generator, continued from the first pass
    denoising_start: float | None = None  # a refiner's share of the schedule: from here (latents handed over)...
    denoising_end: float | None = None  # ... or to here, then `handoff`
    handoff: Callable | None = None  # numpy latents -> (final latents, the Pipeline that decodes, metadata it adds)
    parameters: dict = field(default_factory=dict)  # metadata the first pass decides (hires fix: its size)


class Pipeline:
    """A loaded model on one backend. Build it with `sdkit.load`."""

    def __init__(self, checkpoint: Checkpoint, backend: Backend, memory: Memory = Memory(),
                 embeddings: Embeddings | None = None, loras: lora.Library | None = None):
        self.checkpoint = checkpoint
        self.backend = backend
        self.memory = memory  # what generate() may do to fit; each None is decided per call (sdkit.Memory)
        self.embeddings = embeddings or Embeddings()  # textual-inversion files, triggered by their names
        self.loras = loras or lora.Library()  # LoRA files, by name
        self._lora_targets: lora.Targets | None = None
        self._lora_set: tuple = ()  # the LoRAs the components are patched with now: ((file, stamp, weights), ...)
        self.tokenizers = [_load_tokenizer(t) for t in checkpoint.tokenizers]
        self.text_encoders = [backend.text_encoder(cfg, checkpoint.weights[name])
                              for cfg, name in zip(checkpoint.text_encoders, checkpoint.text_encoder_names)]
        # which of an SDXL embedding file's tensors each encoder takes (the refiner has the second encoder only)
        keys = [dict(zip(("text_encoder", "text_encoder_2"), SDXL_KEYS))[name] if checkpoint.family == "sdxl"
                else None for name in checkpoint.text_encoder_names]
        self.towers = [conditioning.Tower(*t) for t in zip(self.tokenizers, self.text_encoders,
                                                               checkpoint.text_encoders, keys)]
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
                 guidance_rescale: float = 0.0,
                 sampler: str | None = None, schedule: str | None = None, eta: float | None = None,
                 seed: int | None = None, num_images: int = 1,
                 init_image: Image.Image | str | Path | None = None, strength: float | None = None,
                 latents: np.ndarray | None = None, callback: Callback | None = None,
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] | None = None,
                 target_size: tuple[int, int] | None = None, aesthetic_score: float | None = None,
                 negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] | None = None,
                 negative_target_size: tuple[int, int] | None = None,
                 negative_aesthetic_score: float | None = None,
                 clip_skip: int | None = None, prompt_syntax: str = "a1111",
                 loras: dict | None = None, mask_image: Image.Image | str | Path | None = None, mask_blur: int = 4,
                 inpaint_area: str = "whole", inpaint_padding: int = 32, composite: bool = True,
                 hook: Hook | None = None, output: str = "pil", init_latents: np.ndarray | None = None,
                 hires_scale: float | None = None, hires_resize: tuple[int, int] | None = None,
                 hires_steps: int | None = None, hires_denoising: float = 0.7, hires_upscaler: str = "latent",
                 refiner: Pipeline | None = None, refiner_start: float = 0.8) -> list[Image.Image] | np.ndarray:
        """Generate `num_images` images; image i uses seed + i, so any one can be regenerated alone.

        steps, guidance_scale, sampler: None is the model's recommendation (`checkpoint.recommended`: a
        few-step model's recipe, else 30, 7.5 and dpmpp_2m_karras = dpmpp_2m with schedule "karras").
        schedule: None (the checkpoint's own timestep spacing), "trailing", "karras", "exponential" or "beta";
        which ones a sampler takes: sdkit.samplers.SAMPLERS[name].schedules. A zero-terminal-SNR model
        (rescale_betas_zero_snr, a `ztsnr` marker) samples on its own schedule automatically.
        eta: the tcd sampler's stochasticity (gamma in its paper) in [0, 1]; None: 0.3, its default.
        guidance_rescale: CFG rescale in [0, 1] (diffusers' rescale_noise_cfg; 0.7 for v-prediction fine-tunes
        on zero-terminal-SNR schedules, as their cards say).
        original_size ... negative_aesthetic_score: SDXL's micro-conditioning (sdkit.micro_conditioning).
        `callback(step, total, latents)` runs after each UNet evaluation (`latents`: the backend array the
        UNet saw); returning False raises sdkit.Cancelled, and an exception it raises propagates.
        `clip_skip`: A1111's (1 or None: the last text-encoder layer, 2: the penultimate, ...; no effect on
        SDXL, as in A1111). `prompt_syntax`: "a1111" (weights, BREAK) or "plain".
        `loras`: {file or name in pipe.loras' folders: weight, or (text-encoder weight, UNet weight)}, for this
        call only; `<lora:NAME:W>` / `<lora:NAME:W_TE:W_UNET>` tags in the prompt do the same and are removed
        from the text before it is encoded (they stay in the image's metadata, as A1111 writes them).
        `strength`: with init_image, how much to change it (default 0.8; 1.0 with a mask: the masked region
        starts from pure noise).
        `mask_image` (with init_image): inpaint where it is white (sdkit.inpaint); `mask_blur` pixels of blur on
        the compositing mask; `inpaint_area` "whole" or "masked" (A1111's "only masked": the mask's box plus
        `inpaint_padding` pixels generated at width x height and pasted back); `composite`: paste the result over
        the input through the blurred mask, so pixels outside it keep the input's bytes (False: the raw decode).
        `hook(step, x, sigma, denoised)` runs after each sampler step (sdkit.samplers.hook.report): x the
        latents (backend array, (B, C, h, w)) at noise level sigma, denoised their clean estimate; an array it
        returns replaces x. `output="latent"` returns the final latents, before the VAE, as numpy (B, C, h, w).
        `init_latents` (numpy (B, C, h, w)): image-to-image from latents instead of init_image (at `strength`).
        `hires_scale`: A1111's hires fix (sdkit.hires): this text-to-image at width x height, upscaled by
        `hires_upscaler` ("latent", "latent_antialiased", "latent_bicubic", "latent_bicubic_antialiased",
        "latent_nearest", "latent_nearest_exact" or "lanczos") to hires_scale times the size, then image-to-image
        at `hires_denoising` for `hires_steps` steps (None or 0: `steps`); `callback` counts both passes on.
        `hires_resize` (height, width) instead of hires_scale: A1111's "Hires resize" to that size (0 for one
        side: from the other by the aspect; both: the first pass's aspect kept and the overflow cropped).
        `refiner` (an SDXL refiner's Pipeline): this model denoises to `refiner_start` of the schedule, the refiner
        the rest with the same sampler and steps (sdkit.refiner, diffusers' denoising_end/denoising_start
        ensemble); its VAE decodes; micro-conditioning goes to whichever model takes it.
        """
        kwargs = {k: v for k, v in locals().items() if k not in ("self", *TWO_PASS)}  # one pass's arguments
        if refiner is not None:
            if hires_scale is not None or hires_resize is not None:
                raise ValueError("refiner is a text-to-image ensemble; it takes no hires fix")
            return ensemble.generate(self, refiner, refiner_start, kwargs)
        if hires_scale is not None or hires_resize is not None:
            if init_image is not None or init_latents is not None:
                raise ValueError("hires fix is A1111's two-pass text-to-image; it takes no init_image or "
                                 "init_latents")
            return hires.generate(self, kwargs, hires_scale, hires_resize, hires_steps, hires_denoising,
                                  hires_upscaler)
        return self._generate(Stage(), **kwargs)

    def _generate(self, stage: Stage, prompt, negative_prompt, *, width, height, steps, guidance_scale,
                  guidance_rescale, sampler, schedule, eta, seed, num_images, init_image, strength, latents, callback,
                  original_size, crops_coords_top_left, target_size, aesthetic_score, negative_original_size,
                  negative_crops_coords_top_left, negative_target_size, negative_aesthetic_score, clip_skip,
                  prompt_syntax, loras, mask_image, mask_blur, inpaint_area, inpaint_padding, composite, hook, output,
                  init_latents) -> list[Image.Image] | np.ndarray:
        """One pass of generate() (its arguments but the two-pass ones), as `stage` says: Stage() a whole one."""
        if output not in ("pil", "latent"):
            raise ValueError(f"output must be 'pil' or 'latent', got {output!r}")
        init = images.open_image(init_image) if init_image is not None else None
        if mask_image is not None and init is None:
            raise ValueError("mask_image needs init_image: the picture whose white-masked part is repainted")
        if init is not None and init_latents is not None:
            raise ValueError("give init_image or init_latents, not both")
        if strength is None:
            strength = 1.0 if mask_image is not None else IMG2IMG_STRENGTH
        if init is not None and width is None and height is None:
            height, width = images.default_size(init)
        micro = dict(original_size=original_size, crops_coords_top_left=crops_coords_top_left,
                     target_size=target_size, aesthetic_score=aesthetic_score,
                     negative_original_size=negative_original_size,
                     negative_crops_coords_top_left=negative_crops_coords_top_left,
                     negative_target_size=negative_target_size, negative_aesthetic_score=negative_aesthetic_score)
        req = self._request(prompt, negative_prompt, width, height, steps, guidance_scale, guidance_rescale,
                            sampler, schedule, seed, num_images,
                            strength if init is not None or init_latents is not None else None, micro,
                            clip_skip, prompt_syntax, loras, eta)
        job = None if mask_image is None else inpaint.prepare(init, mask_image, req.width, req.height, mask_blur,
                                                              inpaint_area, inpaint_padding)
        mem = self._fit(req, encode=init is not None)
        plan = samplers.plan(req.sampler, self.checkpoint.scheduler, req.steps, req.strength or 1.0, req.schedule,
                             req.eta, stage.denoising_start, stage.denoising_end)
        f = self.checkpoint.vae.scale
        shape = (self.checkpoint.vae.latent_channels, req.height // f, req.width // f)  # per image (C, h, w)

        # hires fix's second pass and a refiner continue the first pass's generators
        rngs = stage.rngs or [np.random.default_rng(req.seed + i) for i in range(req.num_images)]
        if stage.denoising_start is not None:  # the latents handed over are as noisy as the plan starts: no noise
            noise0 = None
        else:
            noise0 = _draw_noise(rngs, shape) if latents is None else _check_latents(latents, req.num_images, shape)
        self._patch(req.loras)
        context, added, used = self._encode_prompts(req)

        encode = lambda pixels: tiling.encode(self.vae, self.backend, self.checkpoint.vae, pixels[None],
                                              mem.vae_tiling)  # (3, H, W) -> (1, C, h, w)
        concat = None
        if job is not None and self.inpainting:  # the UNet's extra inputs: the mask and the masked image's latents
            masked = self.backend.numpy(encode(job.masked_pixels))  # (1, C, h, w)
            extra = np.concatenate([job.latent_mask(f)[None], masked], axis=1)  # (1, 1 + C, h, w)
            concat = self.backend.asarray(np.repeat(extra, req.num_images, axis=0))
        x0 = None
        if init_latents is not None:
            x0 = self.backend.asarray(_check_latents(init_latents, req.num_images, shape, "init_latents"))
        elif init is not None and (job is None or req.strength < 1 or not self.inpainting):
            x0 = encode(images.to_model_input(init, req.width, req.height) if job is None else job.pixels)
        if noise0 is None:
            x = x0
        elif x0 is None or (job is not None and req.strength == 1):  # pure noise (diffusers' is_strength_max)
            x = self.backend.asarray(noise0) * plan.init_noise_sigma
        else:
            x = samplers.add_noise(plan, x0, self.backend.asarray(noise0))  # (1, C, h, w) broadcast to (B, ...)
        if job is not None and not self.inpainting:  # ordinary checkpoint: the kept region is blended back
            noise_b, mask = self.backend.asarray(noise0), self.backend.asarray(job.latent_mask(f)[None])
            runs = min(int(req.steps * (req.strength or 1.0)), req.steps)  # steps the plan runs (samplers.plan)
            noised = lambda sigma: samplers.add_noise(plan, x0, noise_b, sigma)
            hook = _chain(inpaint.blend(noised, mask, last=runs - 1), hook)

        self.unet.attention_chunk = mem.attention_chunk
        model = self._guided_model(context, added, req, plan.num_evaluations, callback, concat)
        noise = lambda: self.backend.asarray(_draw_noise(rngs, shape))  # euler_a's per-step noise
        x = samplers.sample(plan, model, x, noise, hook)
        decoder, added_parameters = self, {}
        if stage.handoff is not None:  # a refiner denoises the rest and decodes (sdkit.refiner)
            x, decoder, added_parameters = stage.handoff(self.backend.numpy(x))
        if output == "latent":
            return decoder.backend.numpy(x)

        pixels = tiling.decode(decoder.vae, decoder.checkpoint.vae, x, mem.vae_slicing, mem.vae_tiling)  # (B, H, W, 3)
        inpainting = {} if job is None else dict(mask_blur=mask_blur, inpaint_area=inpaint_area,
                                                  inpaint_padding=inpaint_padding)
        inpainting |= stage.parameters | added_parameters  # hires: the first pass's size
        out = [images.to_pil(p, metadata.format_parameters(self._parameters(req, i, used) | inpainting))
               for i, p in enumerate(pixels)]
        return out if job is None else [inpaint.finish(job, image, composite) for image in out]

    @property
    def inpainting(self) -> bool:
        """An inpainting checkpoint: its UNet takes the mask and the masked image's latents after the latents."""
        return self.checkpoint.unet.in_channels > self.checkpoint.vae.latent_channels

    def token_usage(self, text: str, prompt_syntax: str = "a1111") -> tuple[int, int]:
        """A1111's token counter for `text`: (tokens used, tokens its chunks hold), e.g. (80, 150); BREAK and
        this pipeline's embeddings (one token per vector) counted, <lora:...> tags not."""
        find = conditioning.matcher(self.towers[0], self.embeddings)
        return conditioning.token_usage(lora.tags(text)[0], self.tokenizers[0], prompt_syntax, find)

    def _request(self, prompt, negative_prompt, width, height, steps, guidance_scale, guidance_rescale, sampler,
                 schedule, seed, num_images, strength, micro, clip_skip, prompt_syntax, loras=None,
                 eta=None) -> Request:
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
            if samplers.ALIASES.get(sampler, (sampler,))[0] not in samplers.NAMES:
                raise ValueError(f"{self.checkpoint.name} is a {recipe.name} model, whose recipe samples with "
                                 f"{sampler!r}, which this sdkit lacks; pass sampler= (one of "
                                 f"{', '.join(samplers.NAMES)})")
        _check_int("steps", steps, minimum=1)
        _check_int("num_images", num_images, minimum=1)
        if not isinstance(guidance_scale, (int, float)) or math.isnan(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        if not isinstance(guidance_rescale, (int, float)) or not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be a number in [0, 1], got {guidance_rescale!r}")
        if seed is None:
            seed = secrets.randbits(32)
        _check_int("seed", seed, minimum=0)
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
        clip_skip = 1 if clip_skip is None else clip_skip
        layers = min(cfg.num_layers for cfg in self.checkpoint.text_encoders)
        _check_int("clip_skip", clip_skip, minimum=1)
        if clip_skip > layers:
            raise ValueError(f"clip_skip {clip_skip} is more than this model's text encoder has layers ({layers})")
        conditioning.check_syntax(prompt_syntax)
        if loras is not None and not isinstance(loras, dict):
            raise ValueError(f"loras must be a dict {{file or name: weight}}, got {type(loras).__name__}")
        wanted = [(str(k), *lora.parse_weight(w, f"loras[{str(k)!r}]")) for k, w in (loras or {}).items()]
        wanted += lora.tags(prompt)[1]
        found = tuple((lora.name_of(key), self.loras.resolve(key), w_te, w_unet) for key, w_te, w_unet in wanted)
        ids = self.checkpoint.time_ids
        values = micro_conditioning.resolve(ids, height, width, micro)
        sampler, schedule = samplers.resolve(sampler, schedule)
        if schedule is None and self.checkpoint.scheduler.timestep_spacing == "trailing":
            schedule = "trailing"  # the same timesteps, named so in the image's metadata
        if schedule is None and self.checkpoint.scheduler.edm:
            schedule = self.checkpoint.scheduler.sigma_schedule  # an EDM model's own levels ("karras"), named so
        return Request(prompt, negative_prompt, width, height, steps, float(guidance_scale), float(guidance_rescale),
                       sampler.name, schedule, seed, num_images, strength, values,
                       micro_conditioning.to_write(values, ids, height, width), int(clip_skip), prompt_syntax,
                       found, eta)

    def _fit(self, req: Request, encode: bool) -> Memory:
        """self.memory with each None decided for this call from the device's free memory; ValueError when
        the call cannot fit even so."""
        if not isinstance(self.memory, Memory):
            raise ValueError(f"pipe.memory must be an sdkit.Memory, got {type(self.memory).__name__}")
        rows = req.num_images * (2 if req.guidance_scale > 1 else 1)
        work = Workload(self.checkpoint.unet, self.checkpoint.vae, req.num_images, rows, req.height, req.width,
                        _ITEMSIZE[self.backend.dtype], encode, self.backend.attention_holds_scores)
        return choose(self.memory, work, self.backend.memory_available())

    def _encode_prompts(self, req: Request) -> tuple[Array, dict[str, Array] | None, dict[str, str]]:
        """Prompts -> context (k*B, 77*n, C), the UNet's `added` conditioning (SDXL; else None) and the
        embeddings used (name -> short hash); rows [uncond] * B + [cond] * B with guidance (k = 2), else
        [cond] * B. Text is encoded once per generate(), so the host round trip stays out of the loop."""
        b, guided = req.num_images, req.guidance_scale > 1
        zero_uncond = guided and req.negative_prompt is None and self.checkpoint.force_zeros_for_empty_prompt
        prompt = lora.tags(req.prompt)[0]  # without its <lora:...> tags
        texts = [req.negative_prompt or "", prompt] if guided and not zero_uncond else [prompt]
        enc = conditioning.encode(texts, self.towers, self.backend.numpy, prompt_syntax=req.prompt_syntax,
                                  embeddings=self.embeddings, **_text_layer(self.checkpoint.family, req.clip_skip))
        contexts, pooled = conditioning.common_length(enc.contexts), enc.pooled  # per text (77*n, C), (P,)
        if zero_uncond:  # SDXL without a negative prompt: zeros, not the encoding of ""
            contexts, pooled = [np.zeros_like(contexts[0]), *contexts], [np.zeros_like(pooled[0]), *pooled]
        context = np.repeat(np.stack(contexts), b, axis=0)  # (k*B, 77*n, C)
        used = {**enc.embeddings[-1], **enc.embeddings[0]}  # the prompt's first, then the negative's (as A1111)
        if self.checkpoint.unet.addition_embed_type != "text_time":
            return self.backend.asarray(context), None, used

        # SDXL: the second encoder's projected EOS state, and micro-conditioning (sizes, crop, aesthetic score):
        # the uncond rows get the negative values
        ids = self.checkpoint.time_ids
        rows = [micro_conditioning.time_ids(req.micro, ids, negative=True)] * (b if guided else 0)
        time_ids = np.stack(rows + [micro_conditioning.time_ids(req.micro, ids, negative=False)] * b)  # (k*B, 5|6)
        added = {"text_embeds": self.backend.asarray(np.repeat(np.stack(pooled), b, axis=0)),
                 "time_ids": self.backend.asarray(time_ids)}
        return self.backend.asarray(context), added, used

    def _patch(self, loras: tuple[tuple[str, Path, float, float], ...]) -> None:
        """Patch the text encoders and UNet with `loras` (restoring the base weights first), unless they are
        patched with exactly these already."""
        wanted = tuple((path, lora.stamp(path), w_te, w_unet) for _, path, w_te, w_unet in loras)
        if wanted == self._lora_set:
            return
        if self._lora_targets is None:
            self._lora_targets = lora.Targets.of(self.checkpoint.family, self.checkpoint.weights,
                                                 self.checkpoint.unet)
        active = [(self.loras.get(path, self._lora_targets), w_te, w_unet) for path, _, w_te, w_unet in wanted]
        by_component = lora.patches(active)
        self._lora_set = ()  # a failure half way leaves an unknown mix: patch afresh next time
        for name, encoder in zip(self.checkpoint.text_encoder_names, self.text_encoders):
            encoder.patch(by_component.get(name, {}))
        self.unet.patch(by_component.get("unet", {}))
        self._lora_set = wanted

    def _guided_model(self, context: Array, added: dict[str, Array] | None, req: Request, total: int,
                      callback: Callback | None, concat: Array | None = None):
        """The sampler's model: one batched UNet call on [uncond, cond], then classifier-free guidance."""
        g, b = req.guidance_scale, req.num_images
        step = 0

        def model(x: Array, t: float) -> Array:
            nonlocal step
            out = self.unet(x, t, context, added, concat)
            if g > 1:
                uncond, cond = out[:b], out[b:]
                out = guidance.rescale(guidance.guide(uncond, cond, g), cond, req.guidance_rescale)
            step += 1
            if callback is not None and callback(step, total, x) is False:
                raise Cancelled(f"cancelled at step {step} of {total}")
            return out

        return model

    def _parameters(self, req: Request, i: int, embeddings: dict[str, str]) -> dict:
        params = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, steps=req.steps, sampler=req.sampler,
                      schedule=req.schedule, guidance_scale=req.guidance_scale, seed=req.seed + i, width=req.width,
                      height=req.height,
                      model=self.checkpoint.name)
        if req.strength is not None:
            params["strength"] = req.strength
        if req.clip_skip > 1:
            params["clip_skip"] = req.clip_skip
        if req.sampler == "tcd":  # written always: other tools' default eta is not tcd's (A1111's ancestral 1.0)
            params["eta"] = lcm.TCD_ETA if req.eta is None else req.eta
        if req.guidance_rescale and req.guidance_scale > 1:  # it acts only with guidance
            params["guidance_rescale"] = req.guidance_rescale
        if req.loras:  # tags for those given as loras=, so that the prompt stored says them all (as A1111's)
            tagged = {name for name, *_ in lora.tags(req.prompt)[1]}
            params["prompt"] = req.prompt + "".join(lora.format_tag(name, w_te, w_unet) for name, _, w_te, w_unet
                                                    in req.loras if name not in tagged)
            params["Lora hashes"] = ", ".join(f"{re.sub('[:,]', '', name)}: {self.loras.short_hash(path)}"
                                              for name, path in dict((n, p) for n, p, *_ in req.loras).items())
        if embeddings:  # as A1111 writes them: names without ':' or ','
            params["TI hashes"] = ", ".join(f"{re.sub('[:,]', '', name)}: {h}" for name, h in embeddings.items())
        return params | hashes.parameters(self.checkpoint) | req.micro_set


def _chain(first: Hook, then: Hook | None) -> Hook:
    """One hook running `first`, then `then` on what `first` returned."""
    if then is None:
        return first

    def hook(step, x, sigma, denoised):
        x = first(step, x, sigma, denoised)
        out = then(step, x, sigma, denoised)
        return x if out is None else out

    hook.inner = getattr(first, "inner", None)  # inside a step only `first` blends (samplers.hook.report_inner)
    return hook


def _steps_running(steps: int, strength: float) -> int:
    """The fewest steps of which image-to-image at `strength` runs `steps` (it runs int(n * strength))."""
    n = max(steps, math.ceil(steps / strength))
    while int(n * strength) < steps:
        n += 1
    return n


def _text_layer(family: str, clip_skip: int) -> dict:
    """TextEncoder's layer / final_norm for a family and A1111's clip_skip (1: the last layer, through the
    final LayerNorm as A1111 applies it after skipping)."""
    if not FAMILIES[family].clip_skip:
        return FAMILIES[family].text_layer
    return dict(layer=-clip_skip, final_norm=True)


def _load_tokenizer(spec: Path | str) -> Tokenizer:
    return Tokenizer.bundled(spec) if isinstance(spec, str) else Tokenizer.from_dir(spec)


def _draw_noise(rngs: list[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """One standard-normal draw per image from that image's own generator: (B, C, h, w) float32.
    The initial noise is the first draw; euler_a's per-step noise continues the same generators."""
    return np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])


def _check_latents(latents: np.ndarray, num_images: int, shape: tuple[int, ...], name: str = "latents") -> np.ndarray:
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape != (num_images, *shape):
        raise ValueError(f"{name} must have shape {(num_images, *shape)} (num_images, C, H/8, W/8), "
                         f"got {latents.shape}")
    return latents


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
