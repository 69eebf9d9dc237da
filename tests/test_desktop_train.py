"""The desktop Train panel with a tiny real model (pytest-qt, offscreen): the data folder as training reads it, a
run that writes its output, plots its loss and shows its samples, and Cancel leaving a state that resumes."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported: no display needed

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

pytest.importorskip("PySide6")
from PySide6.QtCore import QSettings, QThreadPool  # noqa: E402

from sdkit_desktop.main_window import MainWindow  # noqa: E402

TIMEOUT = 120_000  # ms

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def window(qtbot, tmp_path):
    w = MainWindow(store=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), persist=False)
    qtbot.addWidget(w)
    w.show()
    return w


@pytest.fixture
def photos(tmp_path):
    """Two captioned images and a kohya `3_sks cube` folder with an uncaptioned one."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "3_sks cube").mkdir(parents=True)
    for path, caption in ((folder / "0.png", "a photo of a red cube"), (folder / "1.png", "a photo of a blue ball"),
                          (folder / "3_sks cube" / "2.png", None)):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        if caption:
            path.with_suffix(".txt").write_text(caption)
    return folder


def fill(window, model, photos, out, steps, sample_every=0):
    window.picker.model.setCurrentText(str(model))
    window.picker.backend.setCurrentText("torch")
    window.picker.device.setCurrentText("cpu")
    panel = window.train_panel
    panel.folder.setText(str(photos))
    panel.scan()
    panel.method.setCurrentText("lora")
    panel.rank.setValue(2)
    panel.steps.setValue(steps)
    panel.learning_rate.setText("0.001")
    panel.out.setText(str(out))
    panel.sample_prompt.setText("a photo of a red cube")
    panel.sample_every.setValue(sample_every)


def run(qtbot, window, outcome="done", during=None):
    with qtbot.waitSignal(window.trained, timeout=TIMEOUT) as blocker:
        window.train_panel.start_button.click()
        if during:
            during()
    assert blocker.args[0] == outcome, blocker.args
    return blocker.args[1]


def logged(out):
    return [json.loads(line) for line in (out.parent / "log.jsonl").read_text().splitlines()]


def test_panel_lists_data_trains_plots_loss_and_shows_samples(qtbot, window, sd1_folder, photos, tmp_path):
    out = tmp_path / "run" / "cube.safetensors"
    fill(window, sd1_folder, photos, out, steps=4, sample_every=2)
    panel = window.train_panel
    # the folder as sdkit.train.data reads it: captions, and the repeat folder's name as its image's caption
    assert [panel.images.item(i).text() for i in range(panel.images.count())] == [
        "a photo of a red cube", "a photo of a blue ball", "3× sks cube"]
    qtbot.waitUntil(lambda: all(not panel.images.item(i).icon().isNull() for i in range(3)), timeout=TIMEOUT)
    assert panel.data_info.text() == "3 images, 5 per epoch"

    message = run(qtbot, window)
    assert out.exists() and message.startswith(f"Wrote {out}")
    # the plot holds each step's loss as the run logged it
    assert panel.plot.steps == [1, 2, 3, 4]
    assert panel.plot.losses == pytest.approx([d["loss"] for d in logged(out)], rel=1e-6)
    assert panel.progress.format().startswith("step 4/4 · loss ") and "it/s" in panel.progress.format()
    assert panel.sample_paths == [str(out.parent / "samples" / f"step00000{s}-0.png") for s in (2, 4)]
    assert panel.samples.count() == 2 and not panel.sample_view.pixmap().isNull()
    assert window.generate_button.isEnabled() and panel.start_button.isEnabled()
    assert not panel.cancel_button.isEnabled()


def test_cancel_stops_early_and_start_again_resumes(qtbot, window, sd1_folder, photos, tmp_path):
    out = tmp_path / "run" / "cube.safetensors"
    fill(window, sd1_folder, photos, out, steps=40)
    panel = window.train_panel

    def cancel_after_first_step():
        qtbot.waitUntil(lambda: len(panel.plot.losses) > 0, timeout=TIMEOUT)
        assert panel.cancel_button.isEnabled() and not window.generate_button.isEnabled()
        panel.cancel_button.click()

    message = run(qtbot, window, "cancelled", during=cancel_after_first_step)
    done = len(logged(out))
    assert 1 <= done < 40 and message.startswith(f"interrupted at step {done + 1} of 40: state saved")
    assert out.exists() and out.with_name(out.name + ".state.safetensors").exists()
    assert panel.resume.isEnabled() and panel.resume.isChecked()  # Start again continues it

    run(qtbot, window)
    assert [d["step"] for d in logged(out)] == list(range(1, 41))
    assert panel.plot.steps == list(range(1, 41))  # the log's steps, then the resumed run's
    assert panel.plot.losses == pytest.approx([d["loss"] for d in logged(out)], rel=1e-6)
    assert not panel.plot.grab().isNull()


def test_start_names_what_is_missing(qtbot, window, photos):
    window.train_panel.start_button.click()
    assert window.train_panel.error.text() == "Model: choose the model to train in the Generate tab's Model box"
    window.picker.model.setCurrentText("some/model")
    window.train_panel.start_button.click()
    assert window.train_panel.error.text() == "Data: choose a folder of images with .txt captions"
    window.train_panel.folder.setText(str(photos / "missing"))
    window.train_panel.start_button.click()
    assert "is not a folder" in window.train_panel.error.text()
    window.train_panel.folder.setText(str(photos))
    window.train_panel.learning_rate.setText("1e-")  # the validator lets a number being typed through
    window.train_panel.start_button.click()
    assert window.train_panel.error.text() == "Learning rate: '1e-' is not a number; write one like 1e-4"
    assert window.train_panel.start_button.isEnabled() and not window.busy


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_callback_stop_resumes_as_the_uninterrupted_run(sd1_folder, photos, tmp_path, backend):
    """The panel's Cancel is sdkit.train's callback returning False: it stops after that step with the state a
    resume continues exactly from (same losses and LoRA as one run)."""
    import sdkit
    from safetensors.numpy import load_file

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    options = dict(method="lora", steps=3, rank=2, learning_rate=1e-2, backend=backend, seed=3, progress=False,
                   caption_dropout=0.3)
    whole = sdkit.train(sd1_folder, photos, out=tmp_path / "a" / "l.safetensors", **options)
    seen = []

    def stop_at_2(step, total, loss, samples):
        seen.append((step, total, loss, samples))
        return step < 2

    out = tmp_path / "b" / "l.safetensors"
    with pytest.raises(sdkit.Cancelled, match="interrupted at step 3 of 3"):
        sdkit.train(sd1_folder, photos, out=out, callback=stop_at_2, **options)
    assert seen == [(1, 3, whole.losses[0], []), (2, 3, whole.losses[1], [])]
    resumed = sdkit.train(sd1_folder, photos, out=out, resume=True, **options)
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    a, b = load_file(str(tmp_path / "a" / "l.safetensors")), load_file(str(out))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_thumbnails_load_off_the_gui_thread_and_stale_ones_are_dropped(qtbot, window, photos, tmp_path,
                                                                       monkeypatch, request):
    """The captions list at once; the thumbnails come from another thread as they load, so a slow folder leaves
    the window responsive; a folder chosen meanwhile never shows the previous folder's thumbnails."""
    import threading

    from sdkit_desktop.widgets import thumbnails

    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (0, 0, 255)).save(other / f"{i}.png")
        (other / f"{i}.txt").write_text(f"blue {i}")
    release, threads, first = threading.Event(), set(), []
    request.addfinalizer(release.set)  # never leave a pool thread waiting
    real = thumbnails.thumbnail

    def slow(path, size):
        threads.add(threading.current_thread())
        if photos in path.parents:  # the first folder's wait for the test
            first.append(path)
            assert release.wait(TIMEOUT / 1000)
        return real(path, size)

    monkeypatch.setattr(thumbnails, "thumbnail", slow)
    panel = window.train_panel
    panel.folder.setText(str(photos))
    panel.scan()  # returns while its first thumbnail is still loading
    assert panel.images.count() == 3 and panel.images.item(0).icon().isNull()
    qtbot.waitUntil(lambda: bool(first), timeout=TIMEOUT)
    panel.folder.setText(str(other))
    panel.scan()
    qtbot.waitUntil(lambda: all(not panel.images.item(i).icon().isNull() for i in range(3)), timeout=TIMEOUT)
    release.set()  # the first folder's job sends its first thumbnail after the second folder's: dropped
    assert QThreadPool.globalInstance().waitForDone(TIMEOUT)
    qtbot.wait(100)  # its queued result reaches the panel
    assert len(first) == 1  # and it stopped there
    assert [panel.images.item(i).text() for i in range(3)] == ["blue 0", "blue 1", "blue 2"]
    for i in range(3):  # blue, as the folder shown: none of the first folder's random pictures
        pixel = panel.images.item(i).icon().pixmap(16, 16).toImage().pixelColor(8, 8)
        assert (pixel.red(), pixel.green(), pixel.blue()) == (0, 0, 255)
    assert threading.main_thread() not in threads


def test_cancel_while_encoding_writes_nothing_and_start_again_trains(qtbot, window, sd1_folder, photos, tmp_path,
                                                                     monkeypatch):
    """Cancel during the first encoding of the images (before any step): the run ends cancelled with nothing
    written, Resume stays off, and Start again trains; the panel passes the Generate tab's VAE and its seed,
    resolution and alpha to sdkit.train."""
    import sdkit
    from sdkit.train import loop

    from test_vae import _autoencoder

    out = tmp_path / "run" / "cube.safetensors"
    fill(window, sd1_folder, photos, out, steps=2)
    panel = window.train_panel
    vae = _autoencoder(tmp_path / "other-vae", seed=5)
    window.picker.set_vae(str(vae))
    panel.seed.setValue(7)
    panel.resolution.setValue(64)
    panel.alpha.setValue(1.0)
    cancelled, calls, real_load, real_train = window.worker._cancel, [], loop.dataset.load_image, sdkit.train

    def load_image(*a):  # the first image waits for Cancel
        calls.append(a)
        assert cancelled.wait(TIMEOUT / 1000)
        return real_load(*a)

    monkeypatch.setattr(loop.dataset, "load_image", load_image)
    seen = []
    monkeypatch.setattr(sdkit, "train", lambda *a, **kw: seen.append(kw) or real_train(*a, **kw))

    def cancel_while_encoding():
        qtbot.waitUntil(lambda: bool(calls), timeout=TIMEOUT)
        assert panel.cancel_button.isEnabled() and not panel.stepped
        panel.cancel_button.click()
        assert panel.status.text() == "Cancelling…"

    message = run(qtbot, window, "cancelled", during=cancel_while_encoding)
    assert len(calls) == 1 and "nothing was written" in message
    assert not out.parent.exists() and not panel.resume.isChecked()
    assert {k: seen[0][k] for k in ("vae", "seed", "resolution", "alpha")} == dict(vae=str(vae), seed=7,
                                                                                  resolution=64, alpha=1.0)
    monkeypatch.setattr(loop.dataset, "load_image", real_load)
    run(qtbot, window)
    assert out.exists() and [d["step"] for d in logged(out)] == [1, 2]


def test_dreambooth_class_images_and_lora_options_reach_sdkit_train(window, photos, tmp_path):
    """The DreamBooth rows (class images, their prompt, prior weight) show for DreamBooth only and become
    sdkit.train's class_data / class_prompt / prior_loss_weight; a class folder training would refuse is an error
    naming the field; alpha 0 shows as "the rank" and is left to sdkit.train's default."""
    panel = window.train_panel
    panel.folder.setText(str(photos))
    panel.out.setText(str(tmp_path / "out.safetensors"))
    panel.method.setCurrentText("lora")
    assert panel.form.isRowVisible(panel.alpha) and not panel.form.isRowVisible(panel.class_folder)
    assert "alpha" not in panel.kwargs() and panel.alpha.text() == "the rank"
    panel.method.setCurrentText("dreambooth")
    assert panel.form.isRowVisible(panel.class_folder) and panel.form.isRowVisible(panel.prior_weight)
    dogs = tmp_path / "dogs"
    dogs.mkdir()
    Image.new("RGB", (64, 64)).save(dogs / "0.png")
    panel.class_folder.setText(str(dogs))
    with pytest.raises(ValueError, match=r"^Class images: .*0\.png: no caption"):
        panel.kwargs()
    panel.class_prompt.setText("a photo of a dog")
    panel.prior_weight.setValue(0.5)
    panel.alpha.setValue(4)
    kw = panel.kwargs()
    assert {k: kw[k] for k in ("class_data", "class_prompt", "prior_loss_weight", "alpha", "seed")} == dict(
        class_data=str(dogs), class_prompt="a photo of a dog", prior_loss_weight=0.5, alpha=4.0, seed=0)
    assert "resolution" not in kw  # the model's
    panel.resolution.setValue(500)
    with pytest.raises(ValueError, match="^Resolution: 500 is not a multiple of 64"):
        panel.kwargs()
    panel.resolution.setValue(0)
    panel.method.setCurrentText("textual_inversion")
    assert "class_data" not in panel.kwargs() and "alpha" not in panel.kwargs()


def test_cancel_during_a_sample_image_stops_at_its_next_step_and_resumes(qtbot, window, sd1_folder, photos,
                                                                          tmp_path, monkeypatch):
    """Cancel while a sample image is being made (sdkit.train's default 20 sampler steps): the image stops at its
    next sampler step and is never written, the run stops after that training step with a state Start resumes."""
    from sdkit.pipeline import Pipeline

    out = tmp_path / "run" / "cube.safetensors"
    fill(window, sd1_folder, photos, out, steps=4, sample_every=2)
    panel = window.train_panel
    cancelled, seen, real_generate = window.worker._cancel, [], Pipeline.generate

    def generate(self, *a, callback=None, **kw):  # the first sample waits for Cancel after its first step
        def counted(step, total, x):
            seen.append(step)
            if len(seen) == 1:
                assert cancelled.wait(TIMEOUT / 1000)
            return True if callback is None else callback(step, total, x)
        return real_generate(self, *a, callback=counted, **kw)

    monkeypatch.setattr(Pipeline, "generate", generate)

    def cancel_during_sample():
        qtbot.waitUntil(lambda: bool(seen), timeout=TIMEOUT)
        panel.cancel_button.click()

    message = run(qtbot, window, "cancelled", during=cancel_during_sample)
    assert seen == [1]  # stopped at the sampler's next step, not after its 20
    assert message.startswith("interrupted at step 3 of 4: state saved")
    assert [d["step"] for d in logged(out)] == [1, 2]
    assert list((out.parent / "samples").glob("*")) == [] and panel.sample_paths == []
    assert panel.resume.isChecked()

    monkeypatch.setattr(Pipeline, "generate", real_generate)
    run(qtbot, window)
    assert [d["step"] for d in logged(out)] == [1, 2, 3, 4]
    assert panel.sample_paths == [str(out.parent / "samples" / "step000004-0.png")]


def test_training_releases_the_generating_model_and_generate_reloads_it(qtbot, window, sd1_folder, photos,
                                                                        tmp_path, monkeypatch):
    """The worker's Pipeline (and everything holding it: the token counters) is freed while training runs; the
    next Generate loads the model again and makes the same picture as before."""
    import gc
    import weakref

    import sdkit

    def generate():
        with qtbot.waitSignal(window.ended, timeout=TIMEOUT) as blocker:
            window.generate_button.click()
        assert blocker.args == [""]
        return np.asarray(window.session.results[-1].image)

    out = tmp_path / "run" / "cube.safetensors"
    fill(window, sd1_folder, photos, out, steps=1)
    window.prompt.set_text("a red fox")
    window.form.steps.setValue(2)
    window.form.width_box.setValue(64)
    window.form.height_box.setValue(64)
    window.form.seed.setText("7")
    window.form.seed_lock.setChecked(True)
    before = generate()
    pipe = weakref.ref(window.worker.pipe)
    real_train, alive = sdkit.train, []

    def train(*a, **kw):  # in the worker thread, as training starts
        gc.collect()
        alive.append((window.worker.pipe, pipe()))
        return real_train(*a, **kw)

    monkeypatch.setattr(sdkit, "train", train)
    run(qtbot, window)
    assert alive == [(None, None)]
    assert window.prompt.counter.text() == "3/75 tokens"  # counted with the bundled tokenizer meanwhile
    assert np.array_equal(generate(), before) and window.worker.pipe is not None
