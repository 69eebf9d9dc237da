"""The Train panel: a data folder (its images as thumbnails with their captions, listed by sdkit.train.data as
training reads them; the thumbnails load in other threads and fill in as they arrive), the method and its main
options (DreamBooth class images and prior weight, LoRA rank and alpha), steps, learning rate, resolution, seed,
output, sample prompt; Start and Cancel; the run's progress, live loss curve and sample images. The window
supplies the model (and its VAE) and runs it."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QLocale, QSize, Signal, Slot
from PySide6.QtGui import QDoubleValidator, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QLabel, QLineEdit, QListView, QListWidget, QListWidgetItem, QProgressBar,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)
from sdkit.train import METHODS
from sdkit.train import data as dataset

from .column import controls_column
from .gallery import Gallery, ImageView, to_qimage
from .loss_plot import LossPlot
from .thumbnails import Thumbnails

THUMB = 80
DEFAULT_LR = {"textual_inversion": "5e-3", "finetune": "1e-5"}  # else 1e-4: sdkit.train's defaults
METHOD_NOTES = {
    "lora": "A LoRA (kohya's .safetensors) on the UNet's attention layers",
    "dreambooth": "A LoRA taught one subject: uncaptioned images get the instance prompt",
    "textual_inversion": "A new word (A1111 embedding .safetensors) learnt from the captions",
    "finetune": "The whole UNet; the output is a diffusers folder",
}


class TrainPanel(QWidget):
    start_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.running = False
        self.stepped = False  # the run has reported a step (before that it is encoding its data)
        self.examples: list[dataset.Example] = []
        self._suggested = ""  # the output scan() filled in, replaced when the method changes

        self.model_info = QLabel(wordWrap=True)
        self.folder = QLineEdit(placeholderText="a folder of images with same-stem .txt captions")
        self.folder.setToolTip("kohya's layout: name.png + name.txt, and N_words/ subfolders whose images are seen "
                               "N times per epoch (captioned `words` when they have no .txt)")
        browse = QPushButton("Folder…")
        self.images = QListWidget(viewMode=QListView.ViewMode.IconMode, movement=QListView.Movement.Static,
                                  resizeMode=QListView.ResizeMode.Adjust, wordWrap=True)
        self.images.setIconSize(QSize(THUMB, THUMB))
        self.images.setGridSize(QSize(THUMB + 40, THUMB + 40))
        self.images.setFixedHeight(2 * THUMB + 100)
        self.data_info = QLabel(wordWrap=True)
        self.thumbnails = Thumbnails(THUMB)

        self.method = QComboBox()
        self.method.addItems(METHODS)
        self.method_note = QLabel(wordWrap=True)
        self.rank = QSpinBox(minimum=1, maximum=256, value=16)
        self.rank.setToolTip("LoRA rank: larger learns more and makes a larger file")
        self.alpha = QDoubleSpinBox(minimum=0, maximum=1024, decimals=1, specialValueText="the rank")
        self.alpha.setToolTip("LoRA alpha: the update is scaled by alpha / rank (kohya's ss_network_alpha)")
        self.instance_prompt = QLineEdit(placeholderText="a photo of sks dog")
        self.instance_prompt.setToolTip("The caption of images without a .txt (DreamBooth)")
        self.class_folder = QLineEdit(placeholderText="optional: images of the class, for prior preservation")
        self.class_folder.setToolTip("DreamBooth prior preservation: pictures of the subject's class (other dogs for "
                                     "your dog) keep the model's idea of the class while it learns the subject")
        self.class_prompt = QLineEdit(placeholderText="a photo of a dog")
        self.class_prompt.setToolTip("The caption of class images without a .txt")
        self.prior_weight = QDoubleSpinBox(minimum=0, maximum=10, singleStep=0.1, value=1.0)
        self.prior_weight.setToolTip("How much the class images' loss counts against the subject's")
        self.token = QLineEdit(placeholderText="the output file's name")
        self.token.setToolTip("The new word prompts will use; captions without it get it in front")
        self.init_word = QLineEdit("*")
        self.init_word.setToolTip("A word close to the concept (person, style, cat): the new word starts from it")
        self.steps = QSpinBox(minimum=1, maximum=1_000_000, value=1000)
        self.learning_rate = QLineEdit()
        rate = QDoubleValidator(0.0, 1.0, 10)
        rate.setLocale(QLocale.c())  # 1e-4 and 0.0001 in any locale, as float() reads them
        self.learning_rate.setValidator(rate)
        self.resolution = QSpinBox(minimum=0, maximum=4096, singleStep=64, specialValueText="the model's")
        self.resolution.setToolTip("Images are fitted to buckets of about resolution² pixels (the model's native "
                                   "size by default: 512 for SD1, 1024 for SDXL)")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1)
        self.seed.setToolTip("Fixes the data order, noise and timesteps: the same seed gives the same run")
        self.out = QLineEdit(placeholderText="where the result goes (log.jsonl and samples/ beside it)")
        save_as = QPushButton("Save as…")
        self.resume = QCheckBox("Resume from the saved state")
        self.resume.setToolTip("A cancelled run saved OUT.state.safetensors: continue it exactly where it stopped")
        self.sample_prompt = QLineEdit(placeholderText="a sample prompt (optional)")
        self.sample_every = QSpinBox(minimum=0, maximum=1_000_000, value=100, specialValueText="never")
        self.sample_every.setToolTip("Generate the sample prompt (fixed seed) every N steps, into samples/")

        self.start_button, self.cancel_button = QPushButton("Start training"), QPushButton("Cancel", enabled=False)
        self.error = QLabel(wordWrap=True, visible=False)
        self.error.setStyleSheet("background: #fdecea; color: #8e1b10; padding: 6px; border-radius: 4px")
        self.progress = QProgressBar(textVisible=True)
        self.progress.setFormat("")
        self.status = QLabel("Choose a data folder and an output, press Start.", wordWrap=True)
        self.plot = LossPlot()
        self.sample_view = ImageView()
        self.sample_view.setText("Sample images appear here")
        self.samples = Gallery()
        self.sample_paths: list[str] = []
        self._layout(browse, save_as)

        browse.clicked.connect(self._browse_folder)
        save_as.clicked.connect(self._browse_out)
        self.folder.editingFinished.connect(self.scan)
        self.instance_prompt.editingFinished.connect(self.scan)
        self.thumbnails.loaded.connect(self._thumbnail_loaded)
        self.destroyed.connect(self.thumbnails.stop)  # a job loading thousands ends with the panel
        self.method.currentTextChanged.connect(self._method_changed)
        self.out.textChanged.connect(self._out_changed)
        self.start_button.clicked.connect(self.start_clicked)
        self.cancel_button.clicked.connect(self.cancel_clicked)
        self.samples.chosen.connect(lambda i: self.sample_view.show_image(to_qimage(open_rgb(self.sample_paths[i]))))
        self._method_changed(self.method.currentText())
        self._out_changed("")

    def _layout(self, browse: QPushButton, save_as: QPushButton) -> None:
        data = QGroupBox("Data")
        box = QVBoxLayout(data)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        box.addLayout(row)
        box.addWidget(self.images)
        box.addWidget(self.data_info)

        options = QGroupBox("Method")
        self.form = QFormLayout(options)
        self.form.addRow("Method", self.method)
        self.form.addRow(self.method_note)
        self.form.addRow("Rank", self.rank)
        self.form.addRow("Alpha", self.alpha)
        self.form.addRow("Instance prompt", self.instance_prompt)
        self.form.addRow("Class images", self.class_folder)
        self.form.addRow("Class prompt", self.class_prompt)
        self.form.addRow("Prior weight", self.prior_weight)
        self.form.addRow("Word", self.token)
        self.form.addRow("Init word", self.init_word)
        self.form.addRow("Steps", self.steps)
        self.form.addRow("Learning rate", self.learning_rate)
        self.form.addRow("Resolution", self.resolution)
        self.form.addRow("Seed", self.seed)
        out = QHBoxLayout()
        out.addWidget(self.out, 1)
        out.addWidget(save_as)
        self.form.addRow("Output", out)
        self.form.addRow(self.resume)
        self.form.addRow("Sample prompt", self.sample_prompt)
        self.form.addRow("Sample every", self.sample_every)

        left = QVBoxLayout()
        for w in (self.model_info, data, options):
            left.addWidget(w)
        scroll = controls_column(left, self.start_button, self.cancel_button)

        right = QVBoxLayout()
        for w, stretch in ((self.error, 0), (self.progress, 0), (self.status, 0), (self.plot, 1),
                           (self.sample_view, 1), (self.samples, 0)):
            right.addWidget(w, stretch)
        row = QHBoxLayout(self)
        row.addWidget(scroll)
        row.addLayout(right, 1)

    # The form.

    def scan(self) -> None:
        """List the data folder's images as training will read them (captions, repeats); their thumbnails load
        in other threads and fill in as they arrive."""
        folder = self.folder.text().strip()
        try:
            examples = dataset.scan(folder, self._instance_prompt()) if folder else []
            problem = ""
        except ValueError as e:
            examples, problem = [], str(e)
        if not (examples and examples == self.examples):  # else listed already (Start scans again): keep them
            self._list(examples)
        if not examples:
            self.data_info.setText(problem)
            return
        per_epoch = sum(e.repeats for e in examples)
        self.data_info.setText(f"{len(examples)} images, {per_epoch} per epoch")
        if self.out.text().strip() in ("", self._suggested):
            self._suggested = str(default_output(Path(folder), self.method.currentText()))
            self.out.setText(self._suggested)

    def _list(self, examples: list[dataset.Example]) -> None:
        """Show the images' captions now and their thumbnails as they load (a newer listing drops older ones)."""
        self.images.clear()
        self.examples = examples
        self.thumbnails.stop()
        for e in examples:
            repeats = f"{e.repeats}× " if e.repeats > 1 else ""
            item = QListWidgetItem(repeats + e.caption)
            item.setToolTip(f"{e.path}\n{e.caption}" + (f"\nseen {e.repeats} times per epoch" if repeats else ""))
            self.images.addItem(item)
        if examples:
            self.thumbnails.load([e.path for e in examples])

    @Slot(int, int, QImage)
    def _thumbnail_loaded(self, generation: int, row: int, image: QImage) -> None:
        if generation == self.thumbnails.generation:  # else it belongs to a folder no longer shown
            self.images.item(row).setIcon(QIcon(QPixmap.fromImage(image)))

    def kwargs(self) -> dict:
        """sdkit.train's arguments from the form (the window adds the model); ValueError names what is missing."""
        self.scan()
        if not self.examples:
            raise ValueError(self.data_info.text() or "Data: choose a folder of images with .txt captions")
        out = self.out.text().strip()
        if not out:
            raise ValueError("Output: choose where the result goes")
        method = self.method.currentText()
        kw = dict(data=self.folder.text().strip(), method=method, out=out, steps=self.steps.value(),
                  resume=self.resume.isChecked() and self.resume.isEnabled(), seed=self.seed.value())
        if resolution := self.resolution.value():
            if resolution % 64:  # the buckets' sides are multiples of 64
                raise ValueError(f"Resolution: {resolution} is not a multiple of 64; use one like 512 or 1024")
            kw["resolution"] = resolution
        if rate := self.learning_rate.text().strip():
            try:
                kw["learning_rate"] = float(rate)
            except ValueError:
                raise ValueError(f"Learning rate: {rate!r} is not a number; write one like 1e-4") from None
        if method in ("lora", "dreambooth"):
            kw["rank"] = self.rank.value()
            if self.alpha.value():
                kw["alpha"] = self.alpha.value()
        if method == "dreambooth" and self._instance_prompt():
            kw["instance_prompt"] = self._instance_prompt()
        if method == "dreambooth" and (classes := self.class_folder.text().strip()):
            prompt = self.class_prompt.text().strip() or None
            try:
                dataset.scan(classes, prompt, prior=True)
            except ValueError as e:
                raise ValueError(f"Class images: {e}") from None
            kw.update(class_data=classes, class_prompt=prompt, prior_loss_weight=self.prior_weight.value())
        if method == "textual_inversion":
            kw["init_word"] = self.init_word.text().strip() or "*"
            if self.token.text().strip():
                kw["token"] = self.token.text().strip()
        if self.sample_prompt.text().strip() and self.sample_every.value():
            kw.update(sample_prompts=[self.sample_prompt.text().strip()], sample_every=self.sample_every.value())
        return kw

    def _instance_prompt(self) -> str | None:
        text = self.instance_prompt.text().strip()
        return text if self.method.currentText() == "dreambooth" and text else None

    def _method_changed(self, method: str) -> None:
        self.method_note.setText(METHOD_NOTES[method])
        lora, dreambooth, ti = ("lora", "dreambooth"), ("dreambooth",), ("textual_inversion",)
        for widget, methods in ((self.rank, lora), (self.alpha, lora), (self.instance_prompt, dreambooth),
                                (self.class_folder, dreambooth), (self.class_prompt, dreambooth),
                                (self.prior_weight, dreambooth), (self.token, ti), (self.init_word, ti)):
            self.form.setRowVisible(widget, method in methods)
        self.learning_rate.setPlaceholderText(DEFAULT_LR.get(method, "1e-4"))
        self.scan()

    def _out_changed(self, text: str) -> None:
        state = Path(text.strip() + ".state.safetensors")
        self.resume.setEnabled(bool(text.strip()) and state.is_file())

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training images (with .txt captions)")
        if path:
            self.folder.setText(path)
            self.scan()

    def _browse_out(self) -> None:
        if self.method.currentText() == "finetune":
            path = QFileDialog.getExistingDirectory(self, "Folder for the fine-tuned model")
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Save the result as", self.out.text(),
                                                  "safetensors (*.safetensors)")
        if path:
            self.out.setText(path)

    # A run.

    def show_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.show()

    def set_busy(self, busy: bool) -> None:
        """The worker is busy (training here, or generating): Start waits; Cancel is for a run of ours."""
        self.start_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and self.running)

    def started(self, kwargs: dict) -> None:
        """A run of sdkit.train(**kwargs) begins; a resumed one's plot starts with the steps already logged."""
        self.running, self.stepped = True, False
        self.error.hide()
        self.plot.reset(kwargs["steps"])
        log = Path(kwargs["out"]).parent / "log.jsonl"
        if kwargs["resume"] and log.is_file():
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                self.plot.add(entry["step"], entry["loss"])
        self.progress.setRange(0, 0)  # busy until the first step reports
        self.progress.setFormat("")
        self.status.setText("Preparing: encoding the images and captions once…")

    def show_progress(self, step: int, total: int, loss: float, rate: float) -> None:
        self.stepped = True
        self.plot.add(step, loss)
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        speed = f"{rate:.2f} it/s" if rate else "… it/s"
        self.progress.setFormat(f"step {step}/{total} · loss {loss:.4f} · {speed}")

    def add_sample(self, step: int, path: str) -> None:
        self.sample_paths.append(path)
        self.samples.add(open_rgb(path), f"step {step} · {Path(path).name}")
        self.samples.setCurrentRow(self.samples.count() - 1)

    def ended(self, outcome: str, message: str) -> None:
        self.running = False
        self.progress.setRange(0, max(1, self.progress.maximum()))
        if outcome == "failed":
            self.show_error(message)
        self.status.setText({"done": "Done: ", "cancelled": "Cancelled: "}.get(outcome, "Failed") + (
            message if outcome != "failed" else ""))
        self._out_changed(self.out.text())
        if outcome != "cancelled" or self.stepped:  # cancelled while encoding: the saved state (if any) is as it was
            self.resume.setChecked(outcome == "cancelled")


def open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def default_output(folder: Path, method: str) -> Path:
    """A folder of its own beside the data (log.jsonl and samples/ go beside the output), named after it."""
    name = folder.resolve().name
    return folder.resolve().parent / f"{name}-{method}" / (name if method == "finetune" else f"{name}.safetensors")
