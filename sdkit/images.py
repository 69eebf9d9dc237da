"""Pictures in and out of the pipeline: init images to [-1, 1] arrays, uint8 arrays to PIL images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def open_image(image: Image.Image | str | Path) -> Image.Image:
    """A PIL image or a path -> an RGB PIL image (ValueError naming the file if it cannot be read)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"init_image {str(image)!r} cannot be read as an image: {e}") from None


def default_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) of an init image rounded down to multiples of 8, as diffusers' image processor does."""
    return image.height - image.height % 8, image.width - image.width % 8


def to_model_input(image: Image.Image, width: int, height: int) -> np.ndarray:
    """RGB image -> (3, H, W) float32 in [-1, 1]; resized with Lanczos (diffusers' default) when needed."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    x = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    return (x * 2.0 - 1.0).transpose(2, 0, 1)


def to_pil(pixels: np.ndarray, parameters: str) -> Image.Image:
    """(H, W, 3) uint8 -> PIL image carrying its generation parameters in info["parameters"]."""
    image = Image.fromarray(pixels)
    image.info["parameters"] = parameters
    return image
