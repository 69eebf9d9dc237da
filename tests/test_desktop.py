"""The desktop window with a tiny real model (pytest-qt, offscreen): generate, watch, cancel, errors,
restoring settings from PNGs, the token counter, persistence, and the scripted mode."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported: no display needed

import dataclasses  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

pytest.importorskip("PySide6")
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

import sdkit  # noqa: E402
from sdkit_desktop import main_window  # noqa: E402
from sdkit_desktop.main_window import MainWindow  # noqa: E402
from sdkit_desktop.session import model_samplers  # noqa: E402
from sdkit.config import SchedulerConfig  # noqa: E402

TIMEOUT = 120_000  # ms; a tiny model takes well under a second per generation


class CountingLoad:
    """sdkit.load, counting calls: the loaded model must stay in memory between generations."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, **kw):
        self.calls.append(model)
        return sdkit.load(model, **kw)


@pytest.fixture
def load():
    return CountingLoad()


@pytest.fixture
def window(qtbot, tmp_path, load):
    w = MainWindow(store=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), persist=False,
                   load=load)
    qtbot.addWidget(w)
    w.show()
    return w


def fill(window, model, prompt="a red fox", steps=2, size=64, seed=7):
    window.picker.model.setCurrentText(str(model))
    window.picker.backend.setCurrentText("torch")
    window.picker.device.setCurrentText("cpu")
    window.prompt.set_text(prompt)
    window.form.steps.setValue(steps)
    window.form.width_box.setValue(size)
    window.form.height_box.setValue(size)
    window.form.seed.setText(str(seed))
    window.form.seed_lock.setChecked(True)


def generate(qtbot, window, outcome=""):
    """Click Generate and wait until the window has shown the outcome: "" (images), "cancelled" or an error."""
    with qtbot.waitSignal(window.ended, timeout=TIMEOUT) as blocker:
        window.generate_button.click()
    message, = blocker.args
    assert message == outcome if outcome != "failed" else message not in ("", "cancelled"), message
    return message


def test_generate_shows_image_in_gallery_with_metadata_and_saves_it(qtbot, window, sd1_folder, load, tmp_path,
                                                                   monkeypatch):
    fill(window, sd1_folder, seed=7)
    steps, previews = [], []
    window.worker.progress.connect(lambda step, total, elapsed: steps.append((step, total)))
    window.worker.preview.connect(previews.append)
    assert window.cancel_button.isEnabled() is False
    generate(qtbot, window)

    assert window.gallery.count() == 1 and window.gallery.currentRow() == 0
    result = window.session.results[0]
    assert result.image.size == (64, 64)
    assert result.params["seed"] == 7 and result.params["prompt"] == "a red fox" and result.params["steps"] == 2
    assert "Seed: 7" in result.image.info["parameters"]
    assert steps and steps[-1][0] == steps[-1][1]  # one report per UNet evaluation, up to the total
    # throttled to ~10 a second, the last step's always shown
    assert 1 <= len(previews) <= len(steps) and previews[0].shape == (8, 8, 3) and previews[0].dtype == np.uint8
    assert not window.view.pixmap().isNull() and window.view.pixmap().width() >= 256
    assert window.generate_button.isEnabled() and not window.cancel_button.isEnabled()
    assert window.status.text().startswith("Done: 1 image(s)")
    assert window.session.recent == [str(sd1_folder)]

    path = tmp_path / "out.png"
    monkeypatch.setattr(main_window.QFileDialog, "getSaveFileName", lambda *a: (str(path), "PNG (*.png)"))
    window.save_selected()
    saved = sdkit.read_parameters(path)
    assert saved["seed"] == 7 and saved["prompt"] == "a red fox"
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(result.image))

    generate(qtbot, window)  # same model: no reload
    assert load.calls == [str(sd1_folder)] and window.gallery.count() == 2


@pytest.mark.parametrize("interval, expected", [(0.0, [1, 2, 3, 4, 5]), (3600.0, [1, 5])])
def test_previews_are_throttled(qtbot, window, sd1_folder, monkeypatch, interval, expected):
    """A preview syncs the device: at most one per PREVIEW_INTERVAL, plus the last step's."""
    from sdkit_desktop import worker

    monkeypatch.setattr(worker, "PREVIEW_INTERVAL", interval)
    fill(window, sd1_folder, steps=5)
    shown, step = [], [0]
    window.worker.progress.connect(lambda s, total, elapsed: step.__setitem__(0, s), Qt.ConnectionType.DirectConnection)
    window.worker.preview.connect(lambda rgb: shown.append(step[0]), Qt.ConnectionType.DirectConnection)
    generate(qtbot, window)
    assert shown == expected


def test_unlocked_seed_is_random_and_shown(qtbot, window, sd1_folder):
    fill(window, sd1_folder)
    window.form.seed_lock.setChecked(False)
    window.form.num_images.setValue(2)
    generate(qtbot, window)
    shown = int(window.form.seed.text())
    assert [r.params["seed"] for r in window.session.results] == [shown, shown + 1]


def test_cancel_button_stops_generation_and_app_keeps_working(qtbot, window, sd1_folder, load):
    fill(window, sd1_folder, steps=200)
    steps = []
    window.worker.progress.connect(lambda step, total, elapsed: steps.append(step))
    def click_cancel_at_step_two(step):  # in the GUI thread, as a person's click
        if step == 2:
            window.cancel_button.click()

    window.progress.valueChanged.connect(click_cancel_at_step_two)
    generate(qtbot, window, "cancelled")
    window.progress.valueChanged.disconnect(click_cancel_at_step_two)
    assert 2 <= max(steps) < 200 and window.gallery.count() == 0
    assert window.status.text() == "Cancelled" and window.generate_button.isEnabled()

    window.form.steps.setValue(2)
    generate(qtbot, window)
    assert window.gallery.count() == 1 and len(load.calls) == 1


def test_cancel_takes_effect_within_one_step(qtbot, window, sd1_folder):
    fill(window, sd1_folder, steps=50)
    steps = []

    def on_progress(step, total, elapsed):  # runs in the worker thread, inside the sampler callback
        steps.append(step)
        if step == 3:
            window.worker.cancel()

    window.worker.progress.connect(on_progress, Qt.ConnectionType.DirectConnection)
    generate(qtbot, window, "cancelled")
    assert steps == [1, 2, 3]


def test_bad_model_shows_error_and_app_stays_usable(qtbot, window, sd1_folder, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    fill(window, bad)
    message = generate(qtbot, window, "failed")
    assert "broken.safetensors" in message and "\n" not in message
    assert window.error.isVisible() and window.error.text() == message
    assert window.generate_button.isEnabled() and window.gallery.count() == 0

    fill(window, sd1_folder)  # changing the model reloads it in the worker
    generate(qtbot, window)
    assert not window.error.isVisible() and window.gallery.count() == 1


def test_bad_size_is_reported_in_the_window(qtbot, window, sd1_folder):
    fill(window, sd1_folder)
    window.form.width_box.setValue(100)  # typed without leaving the box: not yet snapped to a multiple of 8
    message = generate(qtbot, window, "failed")
    assert message == "width 100 is not a multiple of 8; use 96 or 104" and window.error.isVisible()


def test_load_button_loads_and_applies_model_size(qtbot, window, sd1_folder, load):
    fill(window, sd1_folder, size=128)
    # the window's signal, not the worker's: that one is emitted in the worker thread before the window has applied
    # the model, and pytest-qt's blocker would then run (and stop its timer) in the worker thread
    with qtbot.waitSignal(window.model_loaded, timeout=TIMEOUT) as blocker:
        window.picker.load_button.click()
    info, = blocker.args
    assert info.family == "sd1" and info.backend == "torch cpu float32"
    assert (window.form.height_box.value(), window.form.width_box.value()) == info.default_size
    assert window.form.preset.currentText() == "{1} × {0}".format(*info.default_size)
    assert "torch cpu float32" in window.picker.info.text() and window.generate_button.isEnabled()


def items(box):
    return [box.itemText(i) for i in range(box.count())]


def drop(window, path):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)


def test_dropping_an_automatic1111_png_restores_its_settings(window, tmp_path):
    text = ("a castle on a hill, (masterpiece:1.2)\nNegative prompt: fog, blurry\nSteps: 23, Sampler: Euler a, "
            "CFG scale: 6.5, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (512, 768)).save(path, pnginfo=info)
    drop(window, path)

    s = window.form.settings(window.session.settings)
    assert window.prompt.text() == "a castle on a hill, (masterpiece:1.2)"
    assert window.negative.text() == "fog, blurry"
    assert (s.steps, s.sampler, s.guidance_scale, s.seed, s.seed_locked) == (23, "euler_a", 6.5, 1234567890, True)
    assert (s.width, s.height) == (512, 768)
    assert "a1111.png" in window.status.text() and "v1-5-pruned-emaonly" in window.status.text()


def test_dropping_an_sdkit_png_restores_settings_and_plain_images_become_init(qtbot, window, sd1_folder, tmp_path):
    fill(window, sd1_folder, prompt="a lighthouse", seed=99)
    window.negative.set_text("rain")
    window.form.guidance.setValue(3.0)
    generate(qtbot, window)
    path = tmp_path / "made.png"
    sdkit.save(window.session.results[0].image, path)

    window.prompt.set_text("something else")
    window.negative.set_text("")
    window.form.seed.setText("1")
    drop(window, path)
    s = window.form.settings(window.session.settings)
    assert (window.prompt.text(), window.negative.text(), s.seed, s.guidance_scale) == ("a lighthouse", "rain", 99, 3.0)
    assert window.picker.model.currentText() == str(sd1_folder)

    plain = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(plain)
    drop(window, plain)
    assert window.form.init_image == str(plain) and window.form.strength.isEnabled()
    window.form.strength.setValue(50)
    window.form.steps.setValue(4)
    generate(qtbot, window)
    assert window.session.results[-1].params["strength"] == 0.5


def test_use_these_settings_restores_the_selected_image(qtbot, window, sd1_folder):
    fill(window, sd1_folder, prompt="first", seed=11)
    generate(qtbot, window)
    fill(window, sd1_folder, prompt="second", steps=3, seed=12)
    generate(qtbot, window)
    window.gallery.setCurrentRow(0)
    window.use_button.click()
    s = window.form.settings(window.session.settings)
    assert (window.prompt.text(), s.steps, s.seed) == ("first", 2, 11)


def test_token_counter_shows_chunks(window):
    """A1111's counter: tokens used / tokens the 75-token chunks hold; LoRA tags are not text."""
    window.prompt.set_text("a photo of a cat")
    assert window.prompt.counter.text() == "5/75 tokens"
    window.prompt.set_text("cat " * 80 + "<lora:detail:0.5>")
    assert window.prompt.counter.text() == "80/150 tokens, 2 chunks"
    window.negative.set_text("")
    assert window.negative.counter.text() == "0/75 tokens"


def test_settings_and_model_persist_between_runs(qtbot, tmp_path):
    store = QSettings(str(tmp_path / "persist.ini"), QSettings.Format.IniFormat)
    first = MainWindow(store=store)
    qtbot.addWidget(first)
    first.show()
    first.picker.model.setCurrentText("org/some-model")
    first.prompt.set_text("kept prompt")
    first.form.steps.setValue(17)
    first.picker.refiner.setCurrentText("org/some-refiner")
    first.form.refiner_start.setValue(0.65)
    first.form.hires_mode.setCurrentIndex(first.form.hires_mode.findData(True))
    first.resize(780, 720)  # within the offscreen screen (800x800): restoreGeometry keeps windows on it
    first.close()

    second = MainWindow(store=QSettings(str(tmp_path / "persist.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(second)
    second.show()
    assert second.picker.model.currentText() == "org/some-model"
    assert second.prompt.text() == "kept prompt" and second.form.steps.value() == 17
    assert second.picker.choice().refiner == "org/some-refiner" and second.form.refiner_start.value() == 0.65
    assert second.form.hires_mode.currentText() == "Resize to"
    assert (second.width(), second.height()) == (780, 720)


def test_unreadable_saved_settings_are_ignored(qtbot, tmp_path):
    store = QSettings(str(tmp_path / "bad.ini"), QSettings.Format.IniFormat)
    store.setValue("model", '{"model": "m", "colour": "red"}')
    store.sync()
    window = MainWindow(store=store)
    qtbot.addWidget(window)
    assert "ignored" in window.status.text() and window.picker.model.currentText() == ""


def run_app(*args, tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "sdkit_desktop", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_scripted_mode_generates_and_grabs_the_window(sd1_folder, tmp_path):
    shot = tmp_path / "shot.png"
    run = run_app("--model", sd1_folder, "--prompt", "a red fox", "--steps", 2, "--width", 64, "--height", 64,
                  "--seed", 3, "--backend", "torch", "--device", "cpu", "--generate", "--screenshot", shot, "--quit",
                  tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    with Image.open(shot) as im:
        assert im.width >= 1100 and im.height >= 750


def test_scripted_mode_fails_with_a_message(tmp_path):
    run = run_app("--model", tmp_path / "missing.safetensors", "--prompt", "x", "--generate", "--quit",
                  tmp_path=tmp_path)
    assert run.returncode == 1 and "missing.safetensors" in run.stderr


def test_scripted_mode_takes_a_refiner_and_its_switch_point(qtbot, window, sdxl_folder, refiner_folder, capsys):
    """--refiner and --refiner-start fill the Generate tab's Refiner box and Refiner switch at (as the scripted
    mode does before it generates): the picture is the one generate(refiner=, refiner_start=) makes; usage
    mistakes exit 2 naming the option."""
    from sdkit_desktop import app

    app.apply_args(window, app.parse_args([
        "--model", str(sdxl_folder), "--refiner", str(refiner_folder), "--refiner-start", "0.5", "--prompt",
        "a red fox", "--steps", "4", "--width", "64", "--height", "64", "--seed", "7", "--backend", "torch",
        "--device", "cpu", "--generate", "--quit"]))
    generate(qtbot, window)
    result, = window.session.results
    assert (result.params["Refiner"], result.params["refiner_start"]) == ("tiny-sdxl-refiner", 0.5)
    base, refiner = (sdkit.load(m, backend="torch", device="cpu") for m in (sdxl_folder, refiner_folder))
    expected = base.generate("a red fox", width=64, height=64, steps=4, seed=7, refiner=refiner, refiner_start=0.5,
                             sampler=result.params["sampler"], schedule=result.params.get("schedule"))[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))

    for argv, message in ((["--refiner", "r"], "--refiner needs --model"),
                          (["--model", "m", "--refiner-start", "0.5"], "--refiner-start is where the refiner takes "
                                                                       "over: add --refiner"),
                          (["--model", "m", "--refiner", "r", "--refiner-start", "1"], "--refiner-start must be in "
                                                                                       "[0.01, 0.99]")):
        with pytest.raises(SystemExit) as exit_:
            app.parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_dropped_files_that_are_refused_never_become_the_init_image(window, tmp_path, sd1_folder):
    """A pickle, an image whose record sdkit refuses and a file that is no image show an error; a LoRA becomes a
    tag, a VAE the VAE; none of them the init image or the model."""
    from safetensors.numpy import save_file

    window.picker.model.setCurrentText(str(sd1_folder))
    (tmp_path / "model.ckpt").write_bytes(b"not opened")
    drop(window, tmp_path / "model.ckpt")
    assert window.error.isVisible() and "pickles" in window.error.text()
    info = PngImagePlugin.PngInfo()
    info.add_text("Dream", '"a cat" -s 20')  # InvokeAI 2.x, which sdkit refuses
    Image.new("RGB", (64, 64)).save(tmp_path / "invoke.png", pnginfo=info)
    drop(window, tmp_path / "invoke.png")
    assert window.error.isVisible() and "InvokeAI 2.x" in window.error.text()
    (tmp_path / "broken.png").write_bytes(b"garbage")
    drop(window, tmp_path / "broken.png")
    assert window.error.isVisible() and "cannot be read as an image" in window.error.text()
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8), np.float32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": np.ones((), np.float32)},
              str(tmp_path / "detail.safetensors"))
    window.prompt.set_text("a fox")
    window.prompt.edit.moveCursor(window.prompt.edit.textCursor().MoveOperation.End)
    drop(window, tmp_path / "detail.safetensors")
    assert window.prompt.text() == "a fox, <lora:detail:1>"
    vae = sd1_folder / "vae" / "diffusion_pytorch_model.safetensors"
    drop(window, vae)
    assert window.picker.choice().vae == str(vae)
    assert window.form.init_image is None and window.picker.model.currentText() == str(sd1_folder)


def test_browser_inserts_lora_tags_and_embeddings_with_their_weight(window, tmp_path, monkeypatch):
    for folder, name in (("loras", "detail"), ("embeddings", "EasyNegative")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.safetensors").write_bytes(b"")
    monkeypatch.setenv("SDKIT_LORA_DIRS", str(tmp_path / "loras"))
    monkeypatch.setenv("SDKIT_EMBEDDING_DIRS", str(tmp_path / "embeddings"))
    browser = window.networks
    browser.refresh()
    assert [browser.lists[i].item(0).text() for i in (0, 1)] == ["detail", "EasyNegative"]
    window.prompt.set_text("")
    browser.weight.setValue(0.6)
    browser.lists[0].setCurrentRow(0)
    browser._insert()
    assert window.prompt.text() == "<lora:detail:0.6>"
    browser.tabs.setCurrentIndex(1)
    browser.lists[1].setCurrentRow(0)
    browser.target.setCurrentIndex(1)
    browser.weight.setValue(1.0)
    browser._insert()
    assert window.negative.text() == "EasyNegative"


def test_vae_picker_and_clip_skip_reach_generate_and_come_back_from_a_png(qtbot, window, sd1_folder, tmp_path,
                                                                          monkeypatch):
    """The picked VAE and clip skip make the picture (and its record); dropping that PNG restores both, the VAE
    found by name in $SDKIT_VAE_DIRS; an explicit empty negative prompt stays "", not None."""
    import shutil

    vaes = tmp_path / "vaes"
    vaes.mkdir()
    vae = Path(shutil.copy(sd1_folder / "vae" / "diffusion_pytorch_model.safetensors", vaes / "my-vae.safetensors"))
    fill(window, sd1_folder, prompt="a fox")
    window.picker.set_vae(str(vae))
    window.form.clip_skip.setValue(2)
    generate(qtbot, window)
    params = window.session.results[0].params
    assert (params["clip_skip"], params["VAE"]) == (2, "my-vae.safetensors")
    assert window.picker.info.text().endswith(" · VAE my-vae.safetensors")
    text = window.session.results[0].image.info["parameters"].replace("a fox\n", "a fox\nNegative prompt: \n")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(tmp_path / "made.png", pnginfo=info)

    window.picker.set_vae(None)
    window.form.clip_skip.setValue(1)
    window.negative.set_text("rain")
    monkeypatch.setenv("SDKIT_VAE_DIRS", str(vaes))
    drop(window, tmp_path / "made.png")
    assert window.picker.choice().vae == str(vae) and window.form.clip_skip.value() == 2
    window._sync_session()
    assert window.session.job()[1]["negative_prompt"] == ""
    monkeypatch.delenv("SDKIT_VAE_DIRS")
    drop(window, tmp_path / "made.png")
    assert window.picker.choice().vae is None and "my-vae.safetensors" in window.status.text()


def test_inpaint_mode_paints_a_mask_and_inpaints(qtbot, window, sd1_inpaint_folder, tmp_path, monkeypatch):
    """Brush a stroke over the init image, undo / invert / clear, then generate: the picture is inpainted
    (outside the blurred mask the init image's bytes); Extend canvas outpaints."""
    from PySide6.QtTest import QTest

    init = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    init.save(tmp_path / "init.png")
    fill(window, sd1_inpaint_folder)
    editor = window.mask_editor
    assert not editor.isEnabled()
    window.form.set_init_image(str(tmp_path / "init.png"))
    assert editor.isEnabled() and editor.mask.is_empty
    canvas = editor.canvas
    r = canvas.target()
    at = lambda x, y: QPointF(r.x() + x * r.width() / 64, r.y() + y * r.height() / 64).toPoint()
    editor.size.setValue(16)
    QTest.mousePress(canvas, Qt.LeftButton, pos=at(20, 32))
    QTest.mouseMove(canvas, at(44, 32))
    QTest.mouseRelease(canvas, Qt.LeftButton, pos=at(44, 32))
    drawn = np.asarray(editor.mask.image).copy()
    assert drawn[32, 24:40].min() == 255 and drawn[5, 5] == 0
    editor.invert_button.click()
    assert np.asarray(editor.mask.image)[5, 5] == 255
    editor.undo_button.click()
    assert np.array_equal(np.asarray(editor.mask.image), drawn)

    editor.blur.setValue(2)
    generate(qtbot, window)
    out = window.session.results[-1].image
    assert out.size == (64, 64) and "Mask blur: 2" in out.info["parameters"]
    monkeypatch.setattr(main_window.QFileDialog, "getSaveFileName", lambda *a: (str(tmp_path / "o.png"), "PNG"))
    window.save_selected()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.mask.png")), drawn)
    far = np.ones((64, 64), bool)
    far[12:53, 4:61] = False  # the stroke (8 px around the line) plus the blur's reach
    assert np.array_equal(np.asarray(out)[far], np.asarray(init)[far])

    editor.extend_buttons[2].click()  # 64 more pixels on the right
    assert "64 px right" in editor.margins.text()
    generate(qtbot, window)
    wide = window.session.results[-1].image
    assert wide.size == (128, 64) and np.array_equal(np.asarray(wide)[:, :56], np.asarray(init)[:, :56])


def test_sampler_combo_shows_a1111_names_and_the_schedule_combo_only_what_it_takes(window):
    form = window.form
    shown = [form.sampler.itemText(i) for i in range(form.sampler.count())]
    assert {"DPM++ 2M SDE", "Euler a", "DPM++ 2M", "DDIM", "UniPC", "DEIS"} <= set(shown) and "dpmpp_2m_sde" not in shown
    form.sampler.setCurrentIndex(shown.index("DPM++ 2M SDE"))
    schedules = [form.schedule.itemText(i) for i in range(form.schedule.count())]
    assert schedules == ["Uniform (the model's own)", "SGM Uniform", "Karras", "Exponential", "Beta"]
    form.schedule.setCurrentIndex(schedules.index("Karras"))
    kw = form.settings(window.session.settings).generate_kwargs()
    assert (kw["sampler"], kw["schedule"]) == ("dpmpp_2m_sde", "karras")
    form.sampler.setCurrentIndex(shown.index("Euler"))  # takes Karras too: kept
    assert form.schedule.currentText() == "Karras"
    form.sampler.setCurrentIndex(shown.index("DDIM"))  # spacings only: back to the model's own
    assert [form.schedule.itemData(i) for i in range(form.schedule.count())] == [None, "trailing"]
    assert form.settings(window.session.settings).schedule is None and form.schedule.isEnabled()
    form.sampler.setCurrentIndex(shown.index("LCM"))
    assert form.schedule.count() == 1 and not form.schedule.isEnabled()


def test_dropping_a_png_restores_sampler_schedule_and_hires_fix(window, tmp_path):
    text = ("a fox\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 64x64, "
            "Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Lanczos")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(tmp_path / "hires.png", pnginfo=info)
    drop(window, tmp_path / "hires.png")
    form = window.form
    assert (form.sampler.currentText(), form.schedule.currentText()) == ("DPM++ 2M SDE", "Karras")
    assert form.hires.isChecked() and form.hires_scale.isEnabled()
    assert (form.hires_scale.value(), form.hires_steps.value(), form.hires_denoising.value()) == (1.5, 3, 0.45)
    assert form.hires_upscaler.currentText() == "Lanczos"
    kw = form.settings(window.session.settings).generate_kwargs()
    assert (kw["sampler"], kw["schedule"], kw["hires_scale"], kw["hires_upscaler"]) == (
        "dpmpp_2m_sde", "karras", 1.5, "lanczos")

    info = PngImagePlugin.PngInfo()  # no hires keys, no schedule: both off
    info.add_text("parameters", "a fox\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 64x64")
    Image.new("RGB", (64, 64)).save(tmp_path / "plain.png", pnginfo=info)
    drop(window, tmp_path / "plain.png")
    assert not form.hires.isChecked() and not form.hires_scale.isEnabled()
    assert (form.sampler.currentText(), form.schedule.currentData()) == ("DDIM", None)
    assert not form.eta.isEnabled()

    info = PngImagePlugin.PngInfo()  # TCD's eta: its own control, enabled with TCD only
    info.add_text("parameters", "a fox\nSteps: 4, Sampler: TCD, CFG scale: 1, Seed: 5, Size: 64x64, Eta: 0.8")
    Image.new("RGB", (64, 64)).save(tmp_path / "tcd.png", pnginfo=info)
    drop(window, tmp_path / "tcd.png")
    assert form.sampler.currentText() == "TCD" and form.eta.isEnabled() and form.eta.value() == 0.8
    assert form.settings(window.session.settings).generate_kwargs()["eta"] == 0.8

    info = PngImagePlugin.PngInfo()  # A1111's "Resize to": its own mode, the scale hidden
    info.add_text("parameters", "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, "
                  "Denoising strength: 0.5, Hires resize: 96x80, Hires steps: 2, Hires upscaler: Latent")
    Image.new("RGB", (64, 64)).save(tmp_path / "resize.png", pnginfo=info)
    drop(window, tmp_path / "resize.png")
    assert form.hires.isChecked() and form.hires_mode.currentText() == "Resize to"
    assert (form.hires_width.value(), form.hires_height.value()) == (96, 80) and form.hires_scale.isHidden()
    kw = form.settings(window.session.settings).generate_kwargs()
    assert (kw["hires_resize"], "hires_scale" in kw) == ((80, 96), False)


def test_generate_with_a_schedule_and_hires_fix(qtbot, window, sd1_folder):
    fill(window, sd1_folder, steps=2, size=64)
    form = window.form
    form.sampler.setCurrentIndex(form.sampler.findData("euler"))
    form.schedule.setCurrentIndex(form.schedule.findData("karras"))
    form.hires.setChecked(True)
    form.hires_scale.setValue(1.5)
    form.hires_steps.setValue(1)
    generate(qtbot, window)
    result = window.session.results[0]
    assert result.image.size == (96, 96)  # 64 x 1.5
    p = result.params
    assert (p["sampler"], p["schedule"], p["hires_scale"], p["hires_steps"]) == ("euler", "karras", 1.5, 1)
    assert "Schedule type: Karras" in result.image.info["parameters"]
    assert window.gallery.item(0).toolTip() == "seed 7 · 2 steps · Euler Karras"


def test_an_edm_model_offers_only_the_samplers_and_schedules_it_takes(window):
    """Playground v2.5's scheduler config: euler, dpmpp_2m, dpmpp_2m_sde with karras or exponential levels (what
    sdkit.samplers.edm runs); another model brings every sampler back, the chosen one kept."""
    path = Path(sdkit.samplers.__file__).parents[1] / "data" / "schedulers" / "playground-v2.5-scheduler_config.json"
    edm = model_samplers(SchedulerConfig.from_diffusers(json.loads(path.read_text())))
    form = window.form
    form.sampler.setCurrentIndex(form.sampler.findData("ddim"))
    form.set_samplers(edm)
    assert [form.sampler.itemData(i) for i in range(form.sampler.count())] == ["euler", "dpmpp_2m", "dpmpp_2m_sde"]
    assert form.sampler.currentData() == "euler"  # ddim does not run EDM models
    assert [form.schedule.itemData(i) for i in range(form.schedule.count())] == ["karras", "exponential"]
    form.sampler.setCurrentIndex(form.sampler.findData("dpmpp_2m_sde"))
    form.schedule.setCurrentIndex(form.schedule.findData("exponential"))
    form.set_samplers(model_samplers(None))
    assert form.sampler.count() == len(sdkit.SAMPLERS)
    assert (form.sampler.currentData(), form.schedule.currentData()) == ("dpmpp_2m_sde", "exponential")


def test_refiner_generates_as_sdkit_and_comes_back_from_a_png(qtbot, window, sdxl_folder, refiner_folder, load,
                                                              tmp_path):
    """The Refiner box and Refiner switch at make the picture generate(refiner=, refiner_start=) makes on that
    seed, the refiner loaded once and kept; dropping that PNG restores both (the refiner found by its name), an
    image naming a refiner that cannot be found says so, and an SD1 model takes none."""
    fill(window, sdxl_folder, steps=4, size=64)
    window.form.sampler.setCurrentIndex(window.form.sampler.findData("euler"))
    assert not window.form.refiner_start.isEnabled()  # no refiner chosen
    window.picker.refiner.setCurrentText(str(refiner_folder))
    assert window.form.refiner_start.isEnabled()
    window.form.refiner_start.setValue(0.5)
    generate(qtbot, window)
    generate(qtbot, window)  # the same model and refiner: nothing reloads
    assert load.calls == [str(sdxl_folder), str(refiner_folder)]
    result = window.session.results[1]
    base, refiner = (sdkit.load(m, backend="torch", device="cpu") for m in (sdxl_folder, refiner_folder))
    kw = dict(width=64, height=64, steps=4, sampler="euler", schedule="karras", seed=7, refiner=refiner)
    expected = base.generate("a red fox", refiner_start=0.5, **kw)[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    assert (result.params["Refiner"], result.params["refiner_start"]) == ("tiny-sdxl-refiner", 0.5)
    assert window.picker.info.text().endswith(" · refiner tiny-sdxl-refiner")
    sdkit.save(result.image, tmp_path / "refined.png")
    # the refiner is a recent refiner, not a recent model, and stays so in the next session
    window._save()
    again = MainWindow(store=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(again)
    for w in (window, again):
        assert items(w.picker.model) == [str(sdxl_folder)] and items(w.picker.refiner) == ["none", str(refiner_folder)]

    window.picker.set_refiner(None)
    window.form.refiner_start.setValue(0.8)
    drop(window, tmp_path / "refined.png")
    assert window.picker.choice().refiner == str(refiner_folder) and window.form.refiner_start.value() == 0.5
    text = result.image.info["parameters"].replace("tiny-sdxl-refiner", "lost-refiner")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(tmp_path / "lost.png", pnginfo=info)
    drop(window, tmp_path / "lost.png")
    assert window.picker.choice().refiner is None and "Refiner 'lost-refiner' is not" in window.status.text()

    window._on_loaded(dataclasses.replace(window.worker.info, family="sd1"))  # SD1 and SD2 take no refiner
    window.picker.set_refiner(str(refiner_folder))
    assert not window.picker.refiner.isEnabled() and window.picker.choice().refiner is None
    assert not window.form.refiner_start.isEnabled()
