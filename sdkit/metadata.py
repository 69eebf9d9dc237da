"""Generation parameters as AUTOMATIC1111 writes them into a PNG's "parameters" text chunk.

    a lighthouse at dawn, oil painting
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, Version: sdkit 0.1.0

Civitai, A1111's "PNG Info", ComfyUI's loaders and image browsers read this text, so sdkit writes it and
reads it back into generate()'s keyword names. An explicit empty negative prompt is written as an empty
"Negative prompt: " line, which A1111 reads as its (only) empty negative prompt; no line means None.
Other tools' formats become the same three parts (Infotext) in sdkit.image_metadata.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from PIL import Image, PngImagePlugin

from .hires import UPSCALERS
from .samplers.registry import SAMPLERS, SCHEDULES, resolve

# Our sampler name -> A1111's "Sampler", our schedule -> A1111's "Schedule type" (both from the sampler registry).
A1111_SAMPLERS = {name: s.a1111 for name, s in SAMPLERS.items()}
A1111_SCHEDULES = {schedule: a1111 for schedule, (a1111, _) in SCHEDULES.items()}
_FROM_A1111 = {a1111.lower(): name for name, a1111 in A1111_SAMPLERS.items()}
_SCHEDULE_FROM_A1111 = {a1111.lower(): schedule for schedule, a1111 in A1111_SCHEDULES.items()}

# A1111 key -> (generate() keyword, type). "Size", "Sampler" and "Schedule type" are handled apart.
_KEYS = {
    "Steps": ("steps", int),
    "CFG scale": ("guidance_scale", float),
    "Seed": ("seed", int),
    "Denoising strength": ("strength", float),
    "Model": ("model", str),
    "Clip skip": ("clip_skip", int),
    "Mask blur": ("mask_blur", int),
    "Masked area padding": ("inpaint_padding", int),  # A1111 1.6+; sdkit writes the older key the issue names
    "CFG rescale": ("guidance_rescale", float),  # sdkit's key (A1111 has no CFG rescale of its own)
    "Refiner switch at": ("refiner_start", float),  # with "Refiner: NAME" (a model name, left to the caller)
}
# The older key has a comma, which A1111's pair pattern cannot read: read as the newer one
OLD_PADDING = "Only masked padding, pixels:"
# inpaint_area -> A1111's "Inpaint area" (which A1111 writes for "Only masked" only)
INPAINT_AREAS = {"whole": "Whole picture", "masked": "Only masked"}
# SDXL micro-conditioning, which A1111, Forge and ComfyUI do not write: sdkit's own keys, sizes as "WxH" like Size,
# the crop as "LEFTxTOP" (x, y), each written only when it differs from its default.
_KEYS |= {"Aesthetic score": ("aesthetic_score", float),
          "Negative aesthetic score": ("negative_aesthetic_score", float)}
_PAIRS = {"Original size": "original_size", "Crop offset": "crops_coords_top_left", "Target size": "target_size",
          "Negative original size": "negative_original_size",
          "Negative crop offset": "negative_crops_coords_top_left", "Negative target size": "negative_target_size"}
_OURS = {"prompt", "negative_prompt", "sampler", "schedule", "eta", "width", "height", "inpaint_area",
         "hires_scale", "hires_resize", "hires_steps", "hires_denoising", "hires_upscaler",
         *(k for k, _ in _KEYS.values()), *_PAIRS.values()}
# With any of these, "Denoising strength" is the hires-fix pass's, not an image-to-image strength.
HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "First pass size")
# A1111's hires keys generate() takes (sdkit.hires); "Hires upscaler" only for upscalers sdkit has
_HIRES = {"Hires upscale": ("hires_scale", float), "Hires steps": ("hires_steps", int),
          "Denoising strength": ("hires_denoising", float)}
_UPSCALERS = {a1111.lower(): ours for ours, (a1111, *_) in UPSCALERS.items()}  # A1111's "Hires upscaler" -> ours
_UPSCALERS["none"] = "lanczos"  # A1111's images.resize_image: no upscaler is a PIL Lanczos resize

# One `Key: value` pair of the last line; a value is a JSON-quoted string or runs to the next comma (A1111's re_param).
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def format_parameters(params: dict) -> str:
    """generate()'s parameters -> A1111 "parameters" text. Keys other than ours (e.g. "Clip skip") are kept."""
    from . import __version__  # here, not at the top: sdkit/__init__.py imports this module

    lines = [params.get("prompt", "")]
    if params.get("negative_prompt") is not None:  # "" too: an empty line, unlike None (SDXL encodes them apart)
        lines.append(f"Negative prompt: {params['negative_prompt']}")

    pairs = {}
    if "steps" in params:
        pairs["Steps"] = params["steps"]
    if "sampler" in params:  # the schedule always written: A1111 1.9+ reads none as its sampler's "Automatic"
        sampler, schedule = resolve(params["sampler"], params.get("schedule"))
        pairs["Sampler"], pairs["Schedule type"] = sampler.a1111, A1111_SCHEDULES[schedule]
    if "guidance_scale" in params:
        pairs["CFG scale"] = params["guidance_scale"]
    if "seed" in params:
        pairs["Seed"] = params["seed"]
    if "width" in params and "height" in params:
        pairs["Size"] = f"{params['width']}x{params['height']}"
    if params.get("Model hash"):  # A1111's order: Model hash, Model, VAE hash, VAE
        pairs["Model hash"] = params["Model hash"]
    if params.get("model"):
        pairs["Model"] = params["model"]
    for key in ("VAE hash", "VAE"):
        if params.get(key):
            pairs[key] = params[key]
    if params.get("strength") is not None:
        pairs["Denoising strength"] = params["strength"]
    if params.get("hires_scale") is not None or params.get("hires_resize") is not None:  # A1111's order
        pairs["Denoising strength"] = params.get("hires_denoising", 0.7)
        if params.get("hires_resize") is not None:  # (height, width) -> "WxH"
            pairs["Hires resize"] = f"{params['hires_resize'][1]}x{params['hires_resize'][0]}"
        else:
            pairs["Hires upscale"] = params["hires_scale"]
        if params.get("hires_steps"):
            pairs["Hires steps"] = params["hires_steps"]
        pairs["Hires upscaler"] = UPSCALERS[params.get("hires_upscaler", "latent")][0]
    if params.get("Refiner"):  # A1111's pair: the refiner's model name and where it took over
        pairs["Refiner"], pairs["Refiner switch at"] = params["Refiner"], params.get("refiner_start", 0.8)
    if params.get("mask_blur") is not None:
        pairs["Mask blur"] = params["mask_blur"]
    if params.get("inpaint_area") == "masked":
        pairs["Inpaint area"] = INPAINT_AREAS["masked"]
        pairs[OLD_PADDING[:-1]] = params.get("inpaint_padding", 32)
    for key, name in _PAIRS.items():  # (height, width) / (top, left) -> "WxH" / "LEFTxTOP"
        if params.get(name) is not None:
            pairs[key] = f"{params[name][1]}x{params[name][0]}"
    for key in ("Aesthetic score", "Negative aesthetic score"):
        if params.get(_KEYS[key][0]) is not None:
            pairs[key] = params[_KEYS[key][0]]
    if (params.get("clip_skip") or 1) > 1:  # A1111 writes it only when not the default
        pairs["Clip skip"] = params["clip_skip"]
    if params.get("guidance_rescale"):
        pairs["CFG rescale"] = params["guidance_rescale"]
    if params.get("eta") is not None:  # A1111's key for its samplers' eta (ancestral, and TCD's in its forks)
        pairs["Eta"] = params["eta"]
    pairs |= {k: v for k, v in params.items()
              if k not in _OURS and k not in pairs and k != "Version" and v is not None}  # A1111 skips None
    pairs["Version"] = f"sdkit {__version__}"

    lines.append(", ".join(f"{k}: {_quote(_text(v))}" for k, v in pairs.items()))
    return "\n".join(lines)


class Infotext(NamedTuple):
    """Generation parameters in A1111's three parts, whichever tool wrote them."""

    prompt: str
    negative_prompt: str | None  # None: no "Negative prompt:" line at all
    settings: dict[str, str]  # the last line's `Key: value` pairs under A1111's names, unquoted


def split_infotext(text: str) -> Infotext:
    """A1111's reading of its text: the last line holds the `Key: value` pairs only if it has at least three of
    them; the lines before it are the prompt, up to a line starting with "Negative prompt:". Every line is
    stripped, as A1111 does, so indented text and Windows line ends read alike."""
    *lines, last = text.strip().replace(OLD_PADDING, "Masked area padding:").split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines, last = [*lines, last], ""

    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line.removeprefix("Negative prompt:").strip()
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    return Infotext(prompt, negative if in_negative else None, {k: _unquote(v) for k, v in _PAIR.findall(last)})


def parse_parameters(text: str) -> dict:
    """A1111 "parameters" text -> generate()'s keywords; keys sdkit cannot use stay under their A1111 names."""
    return to_keywords(split_infotext(text))


def to_keywords(info: Infotext) -> dict:
    """An Infotext -> generate()'s keywords for what sdkit understands; other settings stay under their names.

    Hires fix ("Hires ..." keys, or "First pass size" before A1111's late-2022 rework): width and height are the
    first pass's size, as A1111 restores them; "Hires upscale", "Hires resize" ("WxH"), "Hires steps" and
    "Denoising strength" become hires_scale, hires_resize ((height, width)), hires_steps and hires_denoising (the
    hires pass's strength, not an image-to-image one), and "Hires upscaler" hires_upscaler when sdkit has it
    ("Latent", its five other "Latent (...)" modes, "Lanczos"; others stay under A1111's name).
    "Eta" is eta with the tcd sampler only (A1111 writes it for its ancestral samplers' eta, which sdkit lacks).
    """
    params = {"prompt": info.prompt}
    if info.negative_prompt is not None:  # no line: generate()'s default None (which SDXL encodes as zeros)
        params["negative_prompt"] = info.negative_prompt

    raw = _old_hires_fix(info.settings)
    hires = any(k in raw for k in HIRES_KEYS)
    found = _sampler(raw["Sampler"], raw.get("Schedule type")) if "Sampler" in raw else None
    for key, value in raw.items():
        if hires and key in _HIRES:
            name, kind = _HIRES[key]
            try:
                params[name] = kind(value)
            except ValueError:
                params[key] = value
        elif hires and key == "Hires upscaler" and value.strip().lower() in _UPSCALERS:
            params["hires_upscaler"] = _UPSCALERS[value.strip().lower()]
        elif hires and key == "Hires resize" and (m := _SIZE.match(value)):
            params["hires_resize"] = (int(m[2]), int(m[1]))
        elif key in _KEYS:
            name, kind = _KEYS[key]
            try:
                params[name] = kind(value)
            except ValueError:
                params[key] = value  # unreadable: kept as found, so a caller can name it
        elif key == "Size" and (m := _SIZE.match(value)):
            params["width"], params["height"] = int(m[1]), int(m[2])
        elif key == "Eta" and found and found[0] == "tcd":  # tcd's eta; others' (A1111's ancestral) stay "Eta"
            try:
                params["eta"] = float(value)
            except ValueError:
                params[key] = value
        elif key == "Inpaint area" and value in INPAINT_AREAS.values():
            params["inpaint_area"] = next(k for k, v in INPAINT_AREAS.items() if v == value)
        elif key in _PAIRS and (m := _SIZE.match(value)):
            params[_PAIRS[key]] = (int(m[2]), int(m[1]))
        elif key not in ("Sampler", "Schedule type"):
            params[key] = value

    if "Sampler" in raw:
        if found:
            params["sampler"] = found[0]
            if found[1] is not None:
                params["schedule"] = found[1]
        else:  # a sampler sdkit lacks: kept under A1111's keys
            params["Sampler"] = raw["Sampler"]
            if "Schedule type" in raw:
                params["Schedule type"] = raw["Schedule type"]
    return params


def _old_hires_fix(settings: dict[str, str]) -> dict[str, str]:
    """A1111's restore_old_hires_fix_params: before its hires-fix rework "Size" was the final size and "First pass
    size" the first pass's (0x0: chosen for about 512x512 pixels). Rewritten as today's keys: Size is the first
    pass, Hires resize the final size."""
    first, size = _SIZE.match(settings.get("First pass size", "")), _SIZE.match(settings.get("Size", ""))
    if not first or not size:
        return settings
    w, h, fw, fh = int(size[1]), int(size[2]), int(first[1]), int(first[2])
    if not fw or not fh:  # A1111's old_hires_fix_first_pass_dimensions
        scale = math.sqrt(512 * 512 / (w * h))
        fw, fh = math.ceil(scale * w / 64) * 64, math.ceil(scale * h / 64) * 64
    rest = {k: v for k, v in settings.items() if k != "First pass size"}
    return {**rest, "Size": f"{fw}x{fh}", "Hires resize": f"{w}x{h}"}


def save(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as a PNG carrying its image.info["parameters"]; atomic: no half-written file, ever.

    Latin-1 text goes into a tEXt chunk, anything else into an iTXt chunk (UTF-8), as A1111 does via PIL.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{str(path)!r}: sdkit writes PNG files; use a name ending in .png")
    info = PngImagePlugin.PngInfo()
    if image.info.get("parameters"):
        info.add_text("parameters", image.info["parameters"])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temp file behind
        os.unlink(tmp)
        raise
    return path


def _sampler(name: str, schedule: str | None) -> tuple[str, str | None] | None:
    """A1111 sampler + schedule type -> (our sampler, our schedule), or None if sdkit has no such pair.
    No schedule type: written before A1111 1.9, whose names carried the schedule ("DPM++ 2M Karras") and meant
    the uniform one otherwise; "Automatic" (1.9+): the schedule A1111 picks for that sampler."""
    name, schedule = name.strip().lower(), schedule and schedule.strip().lower()
    for suffix in (" karras", " exponential"):
        if name.endswith(suffix) and schedule in (None, "automatic"):
            name, schedule = name.removesuffix(suffix), suffix.strip()
    if name not in _FROM_A1111:
        return None
    sampler = SAMPLERS[_FROM_A1111[name]]
    if schedule in (None, "automatic"):
        return sampler.name, None if schedule is None else sampler.a1111_automatic
    if schedule not in _SCHEDULE_FROM_A1111 or _SCHEDULE_FROM_A1111[schedule] not in sampler.schedules:
        return None
    return sampler.name, _SCHEDULE_FROM_A1111[schedule]


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # A1111 writes "CFG scale: 7", not 7.0
    return str(value)


def _quote(text: str) -> str:
    """A1111's quoting: values with a comma, colon or newline (or a leading quote) become JSON strings."""
    if not any(c in text for c in ",:\n") and not text.startswith('"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text
