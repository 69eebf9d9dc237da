"""Training data: a folder of images with same-stem .txt captions (kohya's layout), aspect-ratio buckets, batches.

Layouts read (kohya sd-scripts' DreamBooth-style folders):
- images directly in the folder, each with `name.txt` (or `name.caption`) beside it: repeats 1;
- `N_words/` subfolders: every image in them is seen N times per epoch; an image without a caption file is
  captioned with `words` (kohya's class/instance tokens), e.g. `10_sks dog/`.
An image with neither a caption file nor a folder caption is an error naming it (or gets `caption`, if given).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
REPEATS = re.compile(r"^(\d+)_(.*)$")  # kohya's "10_sks dog"


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str
    repeats: int = 1
    prior: bool = False  # a DreamBooth class (regularisation) image


def scan(folder: str | Path, caption: str | None = None, prior: bool = False) -> list[Example]:
    """Every image under `folder` (top level and kohya `N_name` subfolders) with its caption and repeats.
    caption: for images without a caption file (a DreamBooth instance or class prompt)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data {str(folder)!r} is not a folder; give a folder of images with .txt captions")
    examples = _images(folder, 1, caption, prior)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = REPEATS.match(sub.name)
        if m is None:
            continue  # kohya ignores other folders too (e.g. a sample/ or log/ folder beside the data)
        examples += _images(sub, int(m.group(1)), caption or m.group(2).strip() or None, prior)
    if not examples:
        raise ValueError(f"data {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) at its top "
                         f"level or in N_name subfolders")
    return examples


def _images(folder: Path, repeats: int, default: str | None, prior: bool) -> list[Example]:
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        text = next((f.read_text(encoding="utf-8").strip() for f in (path.with_suffix(".txt"),
                     path.with_suffix(".caption")) if f.exists()), default)
        if text is None:
            raise ValueError(f"{path}: no caption; add {path.with_suffix('.txt').name} beside it, name its folder "
                             f"N_caption (kohya), or pass an instance prompt")
        out.append(Example(path, text, repeats, prior))
    return out


def buckets(resolution: int, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) sizes of about resolution**2 pixels, sides multiples of `step`, aspect at most
    max_ratio: the square first (kohya's bucketing with its defaults)."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    w = step
    while w <= resolution * max_ratio:
        h = (area // w) // step * step
        if h >= step and max(w / h, h / w) <= max_ratio:
            sizes |= {(w, h), (h, w)}
        w += step
    return sorted(sizes, key=lambda s: (s != (resolution, resolution), abs(math.log(s[0] / s[1])), s))


def nearest_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (in log ratio; ties go to the larger area)."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image scaled to cover `size` (width, height), centre-cropped to it: (3, H, W) float32 in [-1, 1]."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = ImageOps.fit(im, size, Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        w, h = ImageOps.exif_transpose(im).size
    return w, h


def epoch_batches(bucket_of: list[tuple[int, int]], repeats: list[int], batch_size: int,
                  rng: np.random.Generator) -> list[list[int]]:
    """One epoch: each example index `repeats` times, shuffled, cut into batches of one bucket each (the last
    batch of a bucket may be smaller), the batches shuffled."""
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, (b, n) in enumerate(zip(bucket_of, repeats)):
        by_bucket.setdefault(b, []).extend([i] * n)
    batches = []
    for b in sorted(by_bucket):
        idx = [by_bucket[b][j] for j in rng.permutation(len(by_bucket[b]))]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]
