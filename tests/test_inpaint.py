"""Inpainting on the host (sdkit.inpaint): masks, blur, the "only masked" crop, composite, outpaint canvas."""

import numpy as np
import pytest
from PIL import Image

from sdkit import inpaint


def picture(h=64, w=80, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def rect_mask(h=64, w=80, box=(30, 20, 50, 30), value=255):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = value
    return Image.fromarray(m)


def test_grey_levels_binarised_as_diffusers():
    """grey / 255 < 0.5 -> keep, else repaint: 127 keeps, 128 repaints."""
    m = np.array([[0, 127, 128, 255]], np.uint8)
    assert inpaint.binarize(Image.fromarray(m)).tolist() == [[[0, 0, 1, 1]]]


def test_all_black_mask_is_one_line_error(tmp_path):
    path = tmp_path / "mask.png"
    rect_mask(value=127).save(path)
    with pytest.raises(ValueError, match="mask_image is all black"):
        inpaint.prepare(picture(), path, 80, 64, 4, "whole", 32)
    with pytest.raises(ValueError, match="cannot be read"):
        inpaint.prepare(picture(), tmp_path / "missing.png", 80, 64, 4, "whole", 32)
    with pytest.raises(ValueError, match="inpaint_area must be one of"):
        inpaint.prepare(picture(), rect_mask(), 80, 64, 4, "only masked", 32)


def test_mask_any_size_resized_as_the_image():
    """A mask at half the image's size covers the same region; latents take pixel (8i, 8j)."""
    job = inpaint.prepare(picture(), rect_mask(32, 40, (15, 10, 25, 15)), 80, 64, 0, "whole", 32)
    assert job.mask.shape == (1, 64, 80)
    ys, xs = np.nonzero(job.mask[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 29, 30, 49)
    assert job.latent_mask(8).shape == (1, 8, 10)
    assert np.array_equal(job.latent_mask(8)[0], job.mask[0, ::8, ::8])
    # masked pixels are 0 (mid-grey) in [-1, 1], the others the image's
    assert np.all(job.masked_pixels[:, job.mask[0] == 1] == 0)
    assert np.array_equal(job.masked_pixels[:, job.mask[0] == 0], job.pixels[:, job.mask[0] == 0])


def test_blur_is_a1111s_gaussian():
    """Kernel 2 * int(2.5 sigma + 0.5) + 1, normalised, edges reflected without repeating the edge pixel."""
    m = np.zeros((40, 40), np.uint8)
    m[20, 20] = 255
    got = np.asarray(inpaint.blur(Image.fromarray(m), 2.0)).astype(np.float64)
    x = np.arange(-5, 6)
    k = np.exp(-x ** 2 / 8.0)
    k /= k.sum()
    expected = np.zeros((40, 40))
    expected[15:26, 15:26] = 255 * np.outer(k, k)
    assert np.abs(got - expected).max() <= 0.5 + 1e-9
    assert inpaint.blur(Image.fromarray(m), 0) is not None and np.array_equal(
        np.asarray(inpaint.blur(Image.fromarray(m), 0)), m)


def test_composite_keeps_the_input_bytes_outside_the_blurred_mask():
    image = picture()
    job = inpaint.prepare(image, rect_mask(box=(30, 10, 70, 50)), 80, 64, 4, "whole", 32)
    out = inpaint.finish(job, Image.new("RGB", (80, 64), (255, 0, 0)), composite=True)
    outside = np.asarray(job.blurred) == 0
    assert outside.sum() > 1000
    assert np.array_equal(np.asarray(out)[outside], np.asarray(image)[outside])
    inside = np.asarray(job.blurred) == 255
    assert inside.any() and np.all(np.asarray(out)[inside] == (255, 0, 0))
    raw = inpaint.finish(job, Image.new("RGB", (80, 64), (255, 0, 0)), composite=False)
    assert np.all(np.asarray(raw) == (255, 0, 0))


def test_only_masked_crops_the_box_as_a1111():
    """Box of the blurred mask + padding, grown to the generation size's ratio, moved back inside the image."""
    image = picture()
    job = inpaint.prepare(image, rect_mask(), 64, 64, 0, "masked", 8)
    # mask x 30..49, y 20..29 -> (22, 12, 58, 38): 36 x 26, grown to 36 x 36 about its centre
    assert job.box == (22, 7, 58, 43)
    assert job.pixels.shape == (3, 64, 64)
    assert inpaint.expand_to_ratio((0, 50, 30, 64), 32, 32, 80, 64) == (0, 34, 30, 64)
    out = inpaint.finish(job, Image.new("RGB", (64, 64), (0, 0, 255)), composite=True)
    assert out.size == image.size
    a, b = np.asarray(out), np.asarray(image)
    assert np.array_equal(a[np.asarray(job.blurred) == 0], b[np.asarray(job.blurred) == 0])
    assert np.all(a[20:30, 30:50] == (0, 0, 255))


def test_outpaint_canvas():
    image = picture(40, 48)
    canvas, mask = inpaint.outpaint_canvas(image, 16, 0, 8, 24, mask_blur=4, seed=1)
    assert canvas.size == (48 + 24, 40 + 24)
    c, m = np.asarray(canvas), np.asarray(mask)
    assert np.array_equal(c[:40, 16:64], np.asarray(image))  # the original at (left, top)
    assert np.all(m[40:] == 255) and np.all(m[:, :16] == 255) and np.all(m[:, 64:] == 255)
    assert np.all(m[:36, 20:60] == 0)  # the kept part: less a 4-pixel band along the grown edges
    assert np.all(m[36:40] == 255) and np.all(m[:, 16:20] == 255) and np.all(m[:, 60:64] == 255)
    for bad, message in (({"right": 100}, "right 100 is not a multiple of 8; use 96 or 104"),
                         ({}, "all 0"), ({"top": -8}, "top must be an integer")):
        sides = dict(left=0, top=0, right=0, bottom=0) | bad
        with pytest.raises(ValueError, match=message):
            inpaint.outpaint_canvas(image, **sides, mask_blur=4, seed=1)
    # the pre-fill noise is the seed's: one seed, one canvas; another seed, another
    again, other = (np.asarray(inpaint.outpaint_canvas(image, 16, 0, 8, 24, 4, seed)[0]) for seed in (1, 2))
    assert np.array_equal(again, c) and not np.array_equal(other[40:], c[40:])
    assert np.array_equal(other[:40, 16:64], c[:40, 16:64])


# ---- end to end on a tiny inpainting model (torch); parity with diffusers is in test_parity_inpaint.py ----

def test_generate_composites_and_checks_before_any_step(sd1_inpaint_folder, tmp_path, monkeypatch):
    import sdkit
    from sdkit import cli

    pipe = sdkit.load(sd1_inpaint_folder, backend="torch", device="cpu", dtype="float32")
    image = picture()
    steps = []
    with pytest.raises(ValueError, match="mask_image is all black"):
        pipe.generate("a cat", init_image=image, mask_image=rect_mask(value=100), steps=2,
                      callback=lambda *a: steps.append(a))
    assert steps == []
    with pytest.raises(ValueError, match="mask_image needs init_image"):
        pipe.generate("a cat", mask_image=rect_mask(), steps=2)
    out, = pipe.generate("a cat", init_image=image, mask_image=rect_mask(box=(30, 10, 70, 50)), steps=2, seed=1)
    blurred = np.asarray(inpaint.blur(rect_mask(box=(30, 10, 70, 50)).convert("L"), 4))
    assert out.size == image.size
    assert np.array_equal(np.asarray(out)[blurred == 0], np.asarray(image)[blurred == 0])
    assert np.abs(np.asarray(out, np.int16)[blurred == 255] - np.asarray(image, np.int16)[blurred == 255]).max() > 30
    assert "Denoising strength: 1, Mask blur: 4" in out.info["parameters"]

    masked, = pipe.generate("a cat", init_image=image, mask_image=rect_mask(), inpaint_area="masked",
                            inpaint_padding=8, width=32, height=32, steps=2, seed=1)
    assert masked.size == image.size and "Inpaint area: Only masked" in masked.info["parameters"]

    wide, = sdkit.outpaint(pipe, image, right=16, bottom=8, prompt="a cat", steps=2, seed=1, mask_blur=2)
    assert wide.size == (96, 72)
    canvas, mask = inpaint.outpaint_canvas(image, 0, 0, 16, 8, mask_blur=2, seed=1)  # the call's seed's canvas
    same, = pipe.generate("a cat", init_image=canvas, mask_image=mask, steps=2, seed=1, mask_blur=2)
    assert np.array_equal(np.asarray(wide), np.asarray(same))
    assert np.array_equal(np.asarray(wide)[:56, :70], np.asarray(image)[:56, :70])  # the far side of the seam

    # sdkit-gen: --mask, the mask saved beside the output, and --from finding it
    image.save(tmp_path / "photo.png")
    rect_mask().save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    common = ["-m", str(sd1_inpaint_folder), "--steps", "2", "--backend", "torch", "--device", "cpu", "-s", "3"]
    assert cli.main(["a cat", *common, "-i", "photo.png", "--mask", "mask.png", "--mask-blur", "2",
                     "--inpaint-area", "masked", "-W", "32", "-H", "32", "-o", "out.png"]) == 0
    assert np.array_equal(np.asarray(Image.open("out.mask.png")), np.asarray(rect_mask()))
    stored = sdkit.read_parameters("out.png")
    assert (stored["mask_blur"], stored["inpaint_area"], stored["inpaint_padding"]) == (2, "masked", 32)
    assert cli.main(["--from", "out.png", *common, "-i", "photo.png", "-o", "again.png"]) == 0
    assert np.array_equal(np.asarray(Image.open("again.png")), np.asarray(Image.open("out.png")))
    assert cli.main(["a cat", *common, "-i", "photo.png", "--outpaint", "0,0,16,0", "-o", "wide.png"]) == 0
    assert Image.open("wide.png").size == (96, 64) and Image.open("wide.mask.png").size == (96, 64)
    with pytest.raises(SystemExit):
        cli.main(["a cat", *common, "-i", "photo.png", "--outpaint", "0,0,12,0"])
