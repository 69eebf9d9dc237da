"""SDXL's micro-conditioning: the sizes, crop and aesthetic score the UNet is told about besides the text.

SDXL was trained with each picture's original size, the top-left corner of its crop and the size it was
trained at (the refiner: the original size, the crop and an aesthetic score instead of the target size) as
"time ids", embedded like the timestep (Podell et al. 2023, section 2.2). Telling the UNet a small original
size asks for the look of an upscaled small picture; a crop offset for a cropped one.

Defaults and meanings are diffusers' (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline): sizes
are (height, width), the crop (top, left); original and target size default to the image's size, the crop
to (0, 0), the aesthetic score to 6.0 and the negative one to 2.5. Each negative_* value conditions the
unconditional (negative-prompt) half of classifier-free guidance and defaults to its positive counterpart
(diffusers' text-to-image pipeline does so for the three together: given one negative size alone, it ignores
it).
"""

from __future__ import annotations

import math

import numpy as np

from .families import count_time_ids

NAMES = ("original_size", "crops_coords_top_left", "target_size", "aesthetic_score")
ARGUMENTS = NAMES + tuple(f"negative_{n}" for n in NAMES)  # generate()'s keyword arguments


def resolve(time_ids: tuple[str, ...], height: int, width: int, given: dict) -> dict:
    """generate()'s micro-conditioning arguments (None: the default) -> every value the model's time ids
    hold, positive and negative_. ValueError for a value the model does not take, or a malformed one."""
    for name, value in given.items():
        if value is not None and name.removeprefix("negative_") not in time_ids:
            takes = f"takes {', '.join(time_ids)}" if time_ids else "has no micro-conditioning (SDXL models do)"
            raise ValueError(f"{name}: this model {takes}")
    defaults = {"original_size": (height, width), "crops_coords_top_left": (0, 0), "target_size": (height, width),
                "aesthetic_score": 6.0}
    out = {}
    for name in time_ids:
        out[name] = _check(name, given.get(name), defaults[name])
        negative = 2.5 if name == "aesthetic_score" else out[name]
        out[f"negative_{name}"] = _check(f"negative_{name}", given.get(f"negative_{name}"), negative)
    return out


def to_write(values: dict, time_ids: tuple[str, ...], height: int, width: int) -> dict:
    """The values an image's metadata must carry for resolve() to give `values` back: positive ones that differ
    from their defaults, negative ones that differ from what they default to given the positive ones."""
    plain = resolve(time_ids, height, width, {})
    given = resolve(time_ids, height, width, {name: values[name] for name in time_ids})
    return {k: v for k, v in values.items() if v != (given[k] if k.startswith("negative_") else plain[k])}


def time_ids(values: dict, time_ids: tuple[str, ...], negative: bool) -> np.ndarray:
    """The UNet's time ids, (N,) float32 with N = 6 (base) or 5 (refiner), in the order it was trained with."""
    row = []
    for name in time_ids:
        value = values[f"negative_{name}" if negative else name]
        row += list(value) if isinstance(value, tuple) else [value]
    assert len(row) == count_time_ids(time_ids)
    return np.array(row, np.float32)


def _check(name: str, value, default):
    if value is None:
        return default
    if name.endswith("aesthetic_score"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    what = "(top, left), each >= 0" if name.endswith("crops_coords_top_left") else "(height, width), each >= 1"
    low = 0 if name.endswith("crops_coords_top_left") else 1
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low for v in value)):
        raise ValueError(f"{name} must be two integers {what}, got {value!r}")
    return int(value[0]), int(value[1])
