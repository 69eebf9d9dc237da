"""The main window: lays out the widgets, keeps the Session in step with them, and talks to the worker."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import sdkit
from PySide6.QtCore import QSettings, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (QFileDialog, QGroupBox, QHBoxLayout, QLabel, QMainWindow, QProgressBar,
                               QPushButton, QTabWidget, QVBoxLayout, QWidget)
from sdkit import identify
from sdkit.checkpoint import PICKLES, read_header
from sdkit.cli import stored_vae
from sdkit.conditioning import token_usage
from sdkit.families import VAE_PREFIX
from sdkit.image_metadata import NoParameters
from sdkit.metadata import A1111_SCHEDULES
from sdkit.samplers.registry import SAMPLERS as SAMPLER_RECORDS
from sdkit.tokenizer import Tokenizer

from .download import cached_bytes, human_bytes
from .session import ModelChoice, Session, Settings, model_samplers, size_presets
from .widgets.column import controls_column
from .widgets.gallery import Gallery, ImageView, to_qimage
from .widgets.mask_editor import MaskEditor
from .widgets.model_picker import ModelPicker
from .widgets.networks import NetworkBrowser
from .widgets.prompt import PromptEdit
from .widgets.settings_panel import SettingsPanel
from .widgets.train_panel import TrainPanel
from .worker import Loaded, Worker

DEFAULT_SIZE = (1200, 800)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


class MainWindow(QMainWindow):
    """`store`: where settings persist (the user's QSettings by default). `persist=False` neither restores
    nor saves them (scripted runs). `load`: how the worker loads models (sdkit.load)."""

    ended = Signal(str)  # a generation ended, after the window showed it: "" when done, else why not
    model_loaded = Signal(object)  # Loaded, after the window applied it (emitted in the GUI thread, unlike the worker's)
    trained = Signal(str, str)  # a training run ended, after the Train panel showed it: outcome, message

    def __init__(self, store: QSettings | None = None, persist: bool = True, load=sdkit.load):
        super().__init__()
        self.setWindowTitle("sdkit")
        self.session = Session()
        self.store = store if store is not None else QSettings("sdkit", "sdkit-desktop")
        self.persist = persist
        self.busy = False
        self._apply_native_size = False  # after an explicit Load, switch the form to the model's size
        self._loaded: ModelChoice | None = None
        self._downloading: str | None = None  # a Hub repo id while it may be downloading
        self._elapsed = 0.0
        self._mask = None  # the running generation's inpainting mask

        clip_l = Tokenizer.bundled("clip-l")  # counts for SD1 and SDXL until a model is loaded
        self._plain_usage = lambda text: token_usage(text, clip_l)
        self.picker = ModelPicker()
        self.prompt = PromptEdit("Prompt: what the picture shows", self._plain_usage)
        self.negative = PromptEdit("Negative prompt: what to avoid", self._plain_usage)
        self.networks = NetworkBrowser()
        self.form = SettingsPanel(model_samplers(None))  # all of them until a model is loaded
        self.mask_editor = MaskEditor()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Ctrl+Enter")
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.view = ImageView()
        self.error = QLabel(wordWrap=True, visible=False)
        self.error.setStyleSheet("background: #fdecea; color: #8e1b10; padding: 6px; border-radius: 4px")
        self.progress = QProgressBar(textVisible=True)
        self.progress.setFormat("")
        self.status = QLabel("Choose a model, write a prompt, press Generate.")
        self.gallery = Gallery()
        self.save_button, self.copy_button = QPushButton("Save PNG…"), QPushButton("Copy")
        self.use_button = QPushButton("Use these settings")
        self.train_panel = TrainPanel()
        self._layout()

        self.thread = QThread(self)
        self.worker = Worker(load)
        self.worker.moveToThread(self.thread)
        self.thread.start()
        self.download_timer = QTimer(self, interval=500)
        self._connect()
        self.setAcceptDrops(True)
        self.resize(*DEFAULT_SIZE)
        self._set_busy(False)
        if persist:
            self._restore()
        self._show_train_model()

    def _layout(self) -> None:
        left = QVBoxLayout()
        for title, widget in (("Model", self.picker), ("Prompt", self.prompt), ("Negative prompt", self.negative),
                              ("LoRAs and embeddings", self.networks), ("Settings", self.form),
                              ("Inpaint (paint what to repaint over the init image)", self.mask_editor)):
            box = QGroupBox(title)
            QVBoxLayout(box).addWidget(widget)
            left.addWidget(box)
        scroll = controls_column(left, self.generate_button, self.cancel_button)

        actions = QHBoxLayout()
        for b in (self.save_button, self.copy_button, self.use_button):
            actions.addWidget(b)
        actions.addStretch()
        right = QVBoxLayout()
        right.addWidget(self.error)
        right.addWidget(self.view, 1)
        right.addWidget(self.progress)
        right.addWidget(self.status)
        right.addWidget(self.gallery)
        right.addLayout(actions)

        central = QWidget()
        row = QHBoxLayout(central)
        row.addWidget(scroll)
        row.addLayout(right, 1)
        self.tabs = QTabWidget()
        self.tabs.addTab(central, "Generate")
        self.tabs.addTab(self.train_panel, "Train")
        self.setCentralWidget(self.tabs)

    def _connect(self) -> None:
        self.picker.load_clicked.connect(self.load_model)
        self.picker.refiner_toggled.connect(self.form.refiner_start.setEnabled)
        self.form.refiner_start.setEnabled(self.picker.refiner_path() is not None)
        self.networks.insert.connect(lambda text, negative: (self.negative if negative else self.prompt).insert(text))
        self.form.init_changed.connect(self.mask_editor.set_image)
        self.generate_button.clicked.connect(self.generate)
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.gallery.chosen.connect(lambda i: self.view.show_image(to_qimage(self.session.results[i].image)))
        self.save_button.clicked.connect(self.save_selected)
        self.copy_button.clicked.connect(self.copy_selected)
        self.use_button.clicked.connect(self.use_selected)
        self.download_timer.timeout.connect(self._show_download)
        self.tabs.currentChanged.connect(self._show_train_model)
        self.train_panel.start_clicked.connect(self.train)
        self.train_panel.cancel_clicked.connect(self.cancel)
        w = self.worker
        w.status.connect(self.status.setText)
        w.loaded.connect(self._on_loaded)
        w.progress.connect(self._on_progress)
        w.preview.connect(self._on_preview)
        w.finished.connect(self._on_finished)
        w.cancelled.connect(self._on_cancelled)
        w.failed.connect(self._on_failed)
        w.train_progress.connect(self.train_panel.show_progress)
        w.train_sample.connect(self.train_panel.add_sample)
        w.train_ended.connect(self._on_train_ended)

    # Actions.

    def load_model(self) -> None:
        choice = self.picker.choice()
        if choice is None:
            self.show_error("Type a model: a .safetensors file, a diffusers folder or a Hub repo id")
            return
        self._apply_native_size = True
        self._start(choice)
        self.worker.load(choice)

    def generate(self) -> None:
        if self.busy:
            return
        self._sync_session()
        try:
            choice, kwargs = self.session.job()
        except ValueError as e:
            self.show_error(str(e))
            return
        self.form.set_settings(self.session.settings)  # shows the seed this run uses
        self._apply_native_size = False
        self._start(choice)
        self._mask = kwargs.get("mask_image")
        self.worker.generate(choice, kwargs)

    def train(self) -> None:
        """Start the Train panel's run on the Generate tab's model, backend, device and precision."""
        if self.busy:
            return
        choice = self.picker.choice()
        try:
            if choice is None:
                raise ValueError("Model: choose the model to train in the Generate tab's Model box")
            kwargs = self.train_panel.kwargs()
        except ValueError as e:
            self.train_panel.show_error(str(e))
            return
        self.train_panel.started(kwargs)
        self._set_busy(True)
        # The worker drops its Pipeline to train; the counters' Pipeline.token_usage would keep it in memory
        self.prompt.set_counter(self._plain_usage)
        self.negative.set_counter(self._plain_usage)
        self.worker.train(dict(kwargs, model=choice.model, backend=choice.backend, device=choice.device,
                               dtype=choice.dtype, vae=choice.vae))

    def cancel(self) -> None:
        self.worker.cancel()
        self.status.setText("Cancelling…")
        if self.train_panel.running:
            self.train_panel.status.setText("Cancelling: saving a resumable state after this step…"
                                            if self.train_panel.stepped else "Cancelling…")

    def selected(self) -> int | None:
        row = self.gallery.currentRow()
        return row if 0 <= row < len(self.session.results) else None

    def save_selected(self) -> None:
        if (i := self.selected()) is None:
            return
        params = self.session.results[i].params
        path, _ = QFileDialog.getSaveFileName(self, "Save image", f"sdkit-{params.get('seed', i)}.png", "PNG (*.png)")
        if path:
            result = self.session.results[i]
            sdkit.save(result.image, path)
            if result.mask is not None:  # where sdkit-gen --from finds it
                result.mask.save(Path(path).with_name(Path(path).stem + ".mask.png"))
            self.status.setText(f"Saved {path}")

    def copy_selected(self) -> None:
        if (i := self.selected()) is not None:
            QGuiApplication.clipboard().setImage(to_qimage(self.session.results[i].image))
            self.status.setText("Image copied to the clipboard")

    def use_selected(self) -> None:
        if (i := self.selected()) is not None:
            self.restore_parameters(self.session.results[i].params, "the selected image")

    def restore_parameters(self, params: dict, source: str) -> None:
        """Put an image's recorded settings into every field (the model too, when it is one used before)."""
        self._sync_session()
        self.session.settings = self.session.settings.with_parameters(params, tuple(self.form.samplers))
        self._show_settings(self.session.settings)
        name = params.get("model")
        model = self.session.model_named(name)
        if model:
            self.picker.model.setCurrentText(model)
        note = f" (made with {name}, not among your recent models)" if name and not model else ""
        vae, notes = None, []
        if "VAE" in params:
            try:
                vae, notes = stored_vae(params, self.picker.model.currentText())
            except ValueError as e:  # $SDKIT_VAE_DIRS names a folder that is not there
                notes = [str(e)]
        self.picker.set_vae(vae)
        refiner = None
        if params.get("Refiner"):
            refiner = self.session.refiner_named(params["Refiner"], self.picker.model.currentText())
            if refiner is None:
                notes.append(f"Refiner {params['Refiner']!r} is not among your recent models nor next to the model: "
                             "choose it in the Refiner box")
        self.picker.set_refiner(refiner)
        self.status.setText(f"Settings restored from {source}{note}" + "".join(f"; {n}" for n in notes))

    def open_path(self, path: Path) -> None:
        """A dropped file: a checkpoint becomes the model, a VAE the VAE, a LoRA or an embedding a tag in the
        prompt, a PNG with settings restores them, an image without any becomes the init image. Anything else
        (a pickle, an image whose metadata sdkit refuses, a file that is no image) is an error, never the init
        image."""
        self.error.hide()
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            self._open_safetensors(path)
        elif path.is_dir():
            self.picker.model.setCurrentText(str(path))
            self.status.setText(f"Model set to {path.name}; press Load or Generate")
        elif suffix in PICKLES:
            self.show_error(f"{path.name}: {suffix} files are Python pickles, which can run code when opened; sdkit "
                            "never opens them. Use the .safetensors release")
        elif suffix in IMAGE_SUFFIXES:
            try:
                params = sdkit.read_parameters(path)
            except NoParameters:
                self.form.set_init_image(str(path))
                self.status.setText(f"Init image: {path.name} (image to image; set the strength)")
            except ValueError as e:  # another tool's record sdkit refuses, or not an image
                self.show_error(str(e))
            else:
                self.restore_parameters(params, path.name)
        else:
            self.show_error(f"{path.name}: drop a .safetensors checkpoint, VAE, LoRA or embedding, a model folder, "
                            "or a PNG/JPEG/WEBP image")

    def _open_safetensors(self, path: Path) -> None:
        try:
            keys = list(read_header(path))
        except sdkit.CheckpointError as e:
            self.show_error(str(e))
            return
        kind = identify.foreign(keys)
        vae = identify.lone_component(keys) == "a VAE on its own" or all(k.startswith(VAE_PREFIX) for k in keys)
        if keys and vae:
            self.picker.set_vae(str(path))
            self.status.setText(f"VAE set to {path.name}; press Load or Generate")
        elif kind and kind[0] == "a LoRA":
            self.prompt.insert(f"<lora:{path.stem}:1>")
            self.status.setText(f"LoRA tag for {path.name} added to the prompt")
        elif kind and kind[0] == "a textual-inversion embedding":
            self.prompt.insert(path.stem)
            self.status.setText(f"Embedding {path.stem} added to the prompt (its folder must be an embedding folder)")
        elif kind:
            self.show_error(f"{path.name}: this is {kind[0]}; {kind[1]}")
        else:
            self.picker.model.setCurrentText(str(path))
            self.status.setText(f"Model set to {path.name}; press Load or Generate")

    def show_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.show()

    # Worker signals.

    @Slot(object)
    def _on_loaded(self, info: Loaded) -> None:
        self._loaded = info.choice
        if info.refiner:  # by the name image metadata writes, for dropped PNGs
            self.session.remember(info.choice.refiner, info.refiner, refiner=True)
        self.session.remember(info.choice.model, info.name)
        self.picker.set_recent(self.session.recent, self.session.refiners)
        self.picker.set_family(info.family)
        vae = f" · VAE {Path(info.choice.vae).name}" if info.choice.vae else ""
        vae += f" · refiner {info.refiner}" if info.refiner else ""
        self.picker.info.setText(f"{info.name} · {info.family.upper()} · {info.default_size[1]}×"
                                 f"{info.default_size[0]} · {info.backend}{vae}")
        self.form.set_presets(size_presets(info.family, info.default_size))
        self.form.set_samplers(info.samplers)
        self.prompt.set_counter(info.usage)
        self.negative.set_counter(info.usage)
        if self._apply_native_size:
            h, w = info.default_size
            self.form.width_box.setValue(w)
            self.form.height_box.setValue(h)
            self.status.setText(f"Loaded {info.name}")
            self._set_busy(False)
        self.model_loaded.emit(info)

    @Slot(object)
    def _on_preview(self, rgb) -> None:
        self.view.show_image(to_qimage(rgb))

    @Slot(int, int, float)
    def _on_progress(self, step: int, total: int, elapsed: float) -> None:
        self._elapsed = elapsed
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        self.progress.setFormat(f"step {step}/{total} · {elapsed:.1f} s · {step / max(elapsed, 1e-9):.2f} it/s")

    @Slot(list)
    def _on_finished(self, images: list) -> None:
        params = [sdkit.read_parameters(im) for im in images]
        first = len(self.session.results)
        self.session.add_results(images, params, self._mask)
        for im, p in zip(images, params):
            self.gallery.add(im, f"seed {p.get('seed')} · {p.get('steps')} steps · {sampler_label(p)}")
        self.gallery.setCurrentRow(first)
        self.status.setText(f"Done: {len(images)} image(s) in {self._elapsed:.1f} s")
        self._set_busy(False)
        self.ended.emit("")

    @Slot()
    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled")
        i = self.selected()
        self.view.show_image(to_qimage(self.session.results[i].image) if i is not None else None)
        self._set_busy(False)
        self.ended.emit("cancelled")

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.show_error(message)
        self.status.setText("Failed")
        self._set_busy(False)
        self.ended.emit(message)

    @Slot(str, str)
    def _on_train_ended(self, outcome: str, message: str) -> None:
        self.train_panel.ended(outcome, message)
        self.status.setText(f"Training {outcome}")
        self._set_busy(False)
        self.trained.emit(outcome, message)

    # State.

    def _start(self, choice: ModelChoice) -> None:
        self.error.hide()
        self.progress.setRange(0, 0)  # busy until the first step reports
        self.progress.setFormat("")
        self._downloading = choice.model if choice.is_hub_id and choice.base != (
            self._loaded and self._loaded.base) else None
        self._set_busy(True)

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.generate_button.setEnabled(not busy)
        self.picker.load_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.train_panel.set_busy(busy)
        if busy and self._downloading:
            self.download_timer.start()
        else:
            self.download_timer.stop()
        if not busy:
            self.progress.setRange(0, max(1, self.progress.maximum()))

    def _show_download(self) -> None:
        if self.progress.maximum() == 0:  # still loading: no step reported yet
            self.status.setText(f"Downloading {self._downloading}: {human_bytes(cached_bytes(self._downloading))} "
                                "so far (the model is cached for next time)")

    def _show_train_model(self) -> None:
        choice = self.picker.choice()
        if choice is None:
            self.train_panel.model_info.setText("Choose the model to train in the Generate tab's Model box")
            return
        where = " ".join(filter(None, (choice.backend, choice.device)))
        vae = f" with the VAE {Path(choice.vae).name}" if choice.vae else ""
        self.train_panel.model_info.setText(f"Trains {choice.model}{vae} on {where} in {choice.dtype or 'float32'} "
                                            "(the Generate tab's model)")

    def _sync_session(self) -> None:
        """Read the form into the session. An empty negative box is no negative prompt, unless it shows an image's
        explicit empty one."""
        explicit_empty = self.session.settings.negative_prompt == ""
        negative = self.negative.text() or ("" if explicit_empty else None)
        s = dataclasses.replace(self.session.settings, prompt=self.prompt.text(), negative_prompt=negative)
        self.session.settings = self.mask_editor.settings(self.form.settings(s))
        self.session.mask = self.mask_editor.mask
        self.session.model = self.picker.choice()

    def _show_settings(self, s: Settings) -> None:
        self.prompt.set_text(s.prompt)
        self.negative.set_text(s.negative_prompt or "")
        self.form.set_settings(s)

    # Persistence and window events.

    def _restore(self) -> None:
        if geometry := self.store.value("geometry"):
            self.restoreGeometry(geometry)
        try:
            recent, names = json.loads(self.store.value("recent", "[]")), json.loads(self.store.value("names", "{}"))
            refiners = json.loads(self.store.value("refiners", "[]"))
            model = json.loads(self.store.value("model", "null"))
            settings = Settings.from_dict(json.loads(self.store.value("settings", "{}")))
            choice = ModelChoice(**model) if model else None
        except (TypeError, ValueError) as e:  # written by hand or by another version: start afresh
            self.status.setText(f"Saved settings in {self.store.fileName()} ignored: {e}")
            return
        self.session.recent, self.session.refiners, self.session.names = recent, refiners, names
        self.session.settings = settings
        self.picker.set_recent(recent, refiners)
        if choice:
            self.picker.set_choice(choice)
        self._show_settings(settings)

    def _save(self) -> None:
        self._sync_session()
        self.store.setValue("geometry", self.saveGeometry())
        self.store.setValue("recent", json.dumps(self.session.recent))
        self.store.setValue("refiners", json.dumps(self.session.refiners))
        self.store.setValue("names", json.dumps(self.session.names))
        self.store.setValue("settings", json.dumps(self.session.settings.to_dict()))
        if self.session.model is not None:
            self.store.setValue("model", json.dumps(dataclasses.asdict(self.session.model)))
        self.store.sync()

    def closeEvent(self, event) -> None:
        if self.persist:
            self._save()
        self.worker.cancel()
        self.thread.quit()
        self.thread.wait()
        super().closeEvent(event)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        urls = [u for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_path(Path(urls[0].toLocalFile()))
            event.acceptProposedAction()


def sampler_label(params: dict) -> str:
    """An image's sampler and schedule by A1111's names ("DPM++ 2M SDE Karras"), as the form shows them."""
    sampler = SAMPLER_RECORDS.get(params.get("sampler"))
    if sampler is None:
        return str(params.get("Sampler", params.get("sampler")))
    schedule = params.get("schedule")
    return sampler.a1111 + (f" {A1111_SCHEDULES[schedule]}" if schedule else "")
