"""The desktop's Qt-free inpainting mask (sdkit_desktop.mask) and how a Session turns it into generate()'s
arguments."""

import numpy as np
from PIL import Image

from sdkit_desktop.mask import Mask
from sdkit_desktop.session import ModelChoice, Session, Settings


def test_brush_eraser_clear_invert_undo():
    m = Mask((40, 30))
    assert m.is_empty and not m.undo()
    m.stroke([(5, 5), (30, 5)], size=4)
    a = np.asarray(m.image)
    assert a[5, 5:31].min() == 255 and a[20].max() == 0
    m.stroke([(15, 5)], size=6, erase=True)
    assert np.asarray(m.image)[5, 15] == 0 and np.asarray(m.image)[5, 25] == 255
    m.invert()
    assert np.asarray(m.image)[20, 20] == 255 and np.asarray(m.image)[5, 25] == 0
    m.clear()
    assert m.is_empty
    assert m.undo() and m.undo() and np.asarray(m.image)[5, 15] == 0  # back to after the eraser
    assert m.undo() and np.array_equal(np.asarray(m.image), a)


def test_session_job_passes_the_mask_or_the_outpaint_canvas(tmp_path):
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "init.png")
    session = Session(Settings(prompt="a cat", seed_locked=True, init_image=str(tmp_path / "init.png"),
                               mask_blur=2), ModelChoice("model"))
    session.mask = Mask((64, 48))
    _, kw = session.job()
    assert "mask_image" not in kw and kw["strength"] == 0.8  # nothing drawn: image to image
    session.mask.stroke([(10, 10), (30, 30)], size=8)
    _, kw = session.job()
    assert np.array_equal(np.asarray(kw["mask_image"]), np.asarray(session.mask.image))
    assert (kw["mask_blur"], kw["inpaint_area"], kw["inpaint_padding"]) == (2, "whole", 32)
    session.mask.grow(2)  # Extend canvas: 64 pixels on the right
    _, kw = session.job()
    assert kw["init_image"].size == (128, 48) and (kw["width"], kw["height"]) == (128, 48)
    assert np.asarray(kw["mask_image"])[:, 70:].min() == 255 and np.asarray(kw["mask_image"])[:, :60].max() == 0
