"""Inpainting and outpainting on the host (numpy and PIL): masks, the "only masked" crop, the composite, the
outpaint canvas. The pipeline runs the model; this module decides what it sees and how the result is pasted.

Conventions (diffusers' inpainting pipelines and AUTOMATIC1111's img2img):
- White repaints, black keeps. A mask of any size is resized to the image's size first (Lanczos, as images).
- The model sees the BINARISED mask (diffusers' VaeImageProcessor do_binarize: grey / 255 < 0.5 -> 0, else 1,
  i.e. grey >= 128 repaints), resized to the generation size before binarising, and downsampled to latents by
  picking pixel (8i, 8j) as torch's nearest interpolation does. The masked image is the image with repainted
  pixels set to 0 in [-1, 1] (mid-grey).
- `mask_blur` (A1111's: a Gaussian of that sigma on the mask, kernel 2 * int(2.5 sigma + 0.5) + 1 as cv2 is
  given it) blurs only the COMPOSITING mask. A1111 also feeds round(blurred) to the latent mask; sdkit follows
  diffusers there instead (the binarised, unblurred mask), so the model's region does not depend on the blur.
- The composite is a plain paste through the blurred mask at the input's resolution: wherever the blurred mask
  is 0 the result holds the input's bytes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import images

AREAS = ("whole", "masked")


@dataclass(frozen=True)
class Job:
    """What one inpainting call generates from, and what it pastes the result into."""

    pixels: np.ndarray  # (3, H, W) float32 in [-1, 1]: the image (or the crop) at the generation size
    mask: np.ndarray  # (1, H, W) float32 in {0, 1}: 1 repaints (binarised, unblurred)
    original: Image.Image  # the input image (RGB), what the composite pastes into
    blurred: Image.Image  # "L", the input's size: the compositing mask
    box: tuple[int, int, int, int] | None  # "masked" area: the crop (x1, y1, x2, y2) in the input, else None

    @property
    def masked_pixels(self) -> np.ndarray:
        """(3, H, W): the image with the repainted pixels at 0 (diffusers' init_image * (mask < 0.5))."""
        return self.pixels * (self.mask < 0.5)

    def latent_mask(self, scale: int) -> np.ndarray:
        """(1, H/f, W/f): the mask at latent resolution, pixel (f*i, f*j) as torch's nearest resize picks it."""
        return np.ascontiguousarray(self.mask[:, ::scale, ::scale])


def open_mask(mask: Image.Image | str | Path, size: tuple[int, int]) -> Image.Image:
    """A PIL image or path -> "L" at `size` (width, height); ValueError naming it if unreadable or all black."""
    if not isinstance(mask, Image.Image):
        try:
            with Image.open(mask) as im:
                mask = im.copy()
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"mask_image {str(mask)!r} cannot be read as an image: {e}") from None
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        mask = mask.convert("RGBA").convert("RGB")  # drop alpha: the grey level is what counts, as in diffusers
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, resample=Image.LANCZOS)
    if np.asarray(mask).max() < 128:
        raise ValueError("mask_image is all black (no pixel >= 128): nothing to repaint; white marks what to repaint")
    return mask


def binarize(mask: Image.Image) -> np.ndarray:
    """"L" image -> (1, H, W) float32 in {0, 1}, as diffusers' do_binarize (value / 255 < 0.5 -> 0, else 1)."""
    return (np.asarray(mask, dtype=np.float32)[None] / 255.0 >= 0.5).astype(np.float32)


def blur(mask: Image.Image, sigma: int) -> Image.Image:
    """A1111's mask blur: a separable Gaussian of standard deviation `sigma` pixels, kernel 2 * int(2.5 sigma +
    0.5) + 1 wide, edges reflected (cv2's default border), rounded back to uint8. sigma 0: the mask itself."""
    if sigma <= 0:
        return mask
    radius = int(2.5 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-offsets ** 2 / (2 * sigma * sigma))
    kernel /= kernel.sum()
    m = np.asarray(mask, dtype=np.float64)  # (H, W)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        # np.pad's "reflect" does not repeat the edge pixel: cv2's BORDER_REFLECT_101; wider than the image,
        # "symmetric" keeps it defined (tiny images only)
        p = np.pad(m, pad, mode="reflect" if m.shape[axis] > radius else "symmetric")
        m = sum(w * np.take(p, np.arange(i, i + m.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return Image.fromarray(np.clip(np.rint(m), 0, 255).astype(np.uint8))


def check_blur(mask_blur) -> None:
    if isinstance(mask_blur, bool) or not isinstance(mask_blur, (int, np.integer)) or not 0 <= mask_blur <= 256:
        raise ValueError(f"mask_blur must be an integer number of pixels in [0, 256], got {mask_blur!r}")


def crop_region(mask: np.ndarray, padding: int) -> tuple[int, int, int, int] | None:
    """A1111's masking.get_crop_region: the box (x1, y1, x2, y2) of the mask's nonzero pixels grown by
    `padding` on every side, within the image; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    return (max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0),
            min(int(xs.max()) + 1 + padding, w), min(int(ys.max()) + 1 + padding, h))


def expand_to_ratio(box: tuple[int, int, int, int], width: int, height: int,
                    image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """A1111's masking.expand_crop_region: grow the box's short side to the generation size's aspect ratio,
    shifted back inside the image where it runs over."""
    x1, y1, x2, y2 = box

    def grow(a1, a2, want, limit):
        diff = int(want - (a2 - a1))
        a1, a2 = a1 - diff // 2, a2 + diff - diff // 2
        if a2 >= limit:
            a1, a2 = a1 - (a2 - limit), limit
        if a1 < 0:
            a1, a2 = 0, a2 - a1
        return a1, min(a2, limit)

    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = grow(y1, y2, (x2 - x1) * height / width, image_h)
    else:
        x1, x2 = grow(x1, x2, (y2 - y1) * width / height, image_w)
    return x1, y1, x2, y2


def prepare(image: Image.Image, mask_image: Image.Image | str | Path, width: int, height: int, mask_blur: int,
            inpaint_area: str, padding: int) -> Job:
    """The generation's inputs for inpainting `image` (RGB) where `mask_image` is white, at width x height.

    inpaint_area "whole": the whole image, resized to the generation size. "masked" (A1111's "only masked"):
    the blurred mask's box grown by `padding` pixels and to the generation size's aspect ratio, cropped and
    scaled to width x height; `finish` scales the result back into the box."""
    if inpaint_area not in AREAS:
        raise ValueError(f"inpaint_area must be one of {', '.join(map(repr, AREAS))}, got {inpaint_area!r}")
    check_blur(mask_blur)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"inpaint_padding must be an integer >= 0, got {padding!r}")
    mask = open_mask(mask_image, image.size)
    blurred = blur(mask, mask_blur)
    box, part = None, image
    if inpaint_area == "masked":
        box = expand_to_ratio(crop_region(np.asarray(blurred), padding), width, height, *image.size)
        part, mask = image.crop(box), mask.crop(box)
    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    return Job(images.to_model_input(part, width, height), binarize(mask), image, blurred, box)


def finish(job: Job, generated: Image.Image, composite: bool) -> Image.Image:
    """The generated picture pasted back: into the crop's box ("masked" area, at the input's size), then through
    the blurred mask over the input when `composite`. Keeps `generated`'s metadata (info)."""
    info = dict(generated.info)
    base = job.original
    if job.box is None and generated.size != base.size:
        base = base.resize(generated.size, resample=Image.LANCZOS)  # the composite is at the generation size
    out = generated
    if job.box is not None:
        x1, y1, x2, y2 = job.box
        out = base.copy()
        out.paste(generated.resize((x2 - x1, y2 - y1), resample=Image.LANCZOS), (x1, y1))
    if composite:
        blurred = job.blurred if job.blurred.size == out.size else job.blurred.resize(out.size, Image.LANCZOS)
        out = Image.composite(out, base, blurred)
    out.info.update(info)
    return out


SIDES = ("left", "top", "right", "bottom")
PREFILL_NOISE = 24.0  # standard deviation, in 0..255 levels, of the noise over the stretched edges
PREFILL_STREAM = 0x0F11  # keys the pre-fill's generator apart from the latent noise's default_rng(seed)


def outpaint_canvas(image: Image.Image, left: int, top: int, right: int, bottom: int, mask_blur: int,
                    seed: int) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask) for outpainting: the image at (left, top) of a canvas grown by the given pixels
    (multiples of 8), the new area pre-filled with the image's edge pixels stretched outwards plus noise (so the
    model starts from the colours it must continue, not black), and a mask that is white over the new area and
    over a band of the old image `mask_blur` pixels wide along each grown edge, so the seam itself is repainted.
    The noise comes from the generation's `seed` (a generator keyed by it apart from the latent noise's): one
    seed, one canvas. A batch shares the canvas of its first seed, as it shares the init image."""
    check_blur(mask_blur)
    grow = dict(zip(SIDES, (left, top, right, bottom)))
    for side, n in grow.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"outpaint: {side} must be an integer number of pixels >= 0, got {n!r}")
        if n % 8:
            raise ValueError(f"outpaint: {side} {n} is not a multiple of 8; use {n - n % 8} or {n - n % 8 + 8}")
    if not any(grow.values()):
        raise ValueError("outpaint: left, top, right and bottom are all 0; give the pixels to add on a side")
    rgb = np.asarray(image.convert("RGB"))  # (h, w, 3)
    h, w = rgb.shape[:2]
    canvas = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), mode="edge").astype(np.float32)  # (H, W, 3)
    new = np.ones(canvas.shape[:2], dtype=bool)  # (H, W): the added area
    new[top:top + h, left:left + w] = False
    noise = np.random.default_rng([PREFILL_STREAM, seed]).normal(0.0, PREFILL_NOISE, canvas.shape).astype(np.float32)
    canvas[new] += noise[new]
    canvas = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    canvas[~new] = rgb.reshape(-1, 3)  # the original's bytes, untouched by the rounding above

    band = mask_blur
    keep = [top + (band if top else 0), left + (band if left else 0),
            top + h - (band if bottom else 0), left + w - (band if right else 0)]  # y1, x1, y2, x2
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    if keep[2] > keep[0] and keep[3] > keep[1]:
        mask[keep[0]:keep[2], keep[1]:keep[3]] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)


def outpaint(pipe, image: Image.Image | str | Path, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0,
             prompt: str = "", **generate_kwargs) -> list[Image.Image]:
    """Extend `image` by the given pixels on each side (multiples of 8) and inpaint the new area with
    pipe.generate (ordinary and inpainting checkpoints alike); the original sits at (left, top) of each result.
    generate_kwargs: generate()'s, e.g. mask_blur (default 4), steps, seed (also the pre-fill noise's; None:
    random, chosen here); width / height default to the canvas size."""
    for name in ("init_image", "mask_image"):
        if name in generate_kwargs:
            raise ValueError(f"outpaint: {name} is made from `image` and the sides; do not pass it")
    if generate_kwargs.get("seed") is None:
        generate_kwargs["seed"] = secrets.randbits(32)  # as generate() would: the canvas takes it too
    canvas, mask = outpaint_canvas(images.open_image(image), left, top, right, bottom,
                                   generate_kwargs.get("mask_blur", 4), generate_kwargs["seed"])
    return pipe.generate(prompt, init_image=canvas, mask_image=mask, **generate_kwargs)


def blend(noised, mask, last: int):
    """The sampler hook of ordinary (4-channel) checkpoints, as diffusers' 4-channel inpainting: after every
    model evaluation the kept region (mask 0) is put back as the image's latents noised to the sampler's level,
    `noised(sigma)`, and after step `last` (0-based) as the clean latents, `noised(0)` (DDIM's last step may
    land at ᾱ_0 < 1); the repainted region (mask 1) is the sampler's. mask: (1, 1, h, w) backend array in
    {0, 1}. The hook blends after each step; its `inner` after the evaluations inside a step (Heun's
    predictor, DPM2's midpoint, PNDM's warm-up: samplers.hook.report_inner), which diffusers blends too."""
    def inner(x, sigma):
        kept = noised(sigma)
        return kept + (x - kept) * mask

    def hook(step, x, sigma, denoised):
        return inner(x, 0.0 if step == last else sigma)

    hook.inner = inner
    return hook
