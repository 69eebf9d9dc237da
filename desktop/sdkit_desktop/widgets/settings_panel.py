"""The generation settings form: size, steps, guidance, sampler and schedule, clip skip, seed, batch, the
image-to-image input, hires fix and where the refiner takes over."""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QSlider, QSpinBox, QToolButton, QWidget)
from sdkit.hires import UPSCALERS
from sdkit.samplers.registry import SAMPLERS, SCHEDULES

from ..session import Settings, snap8

CUSTOM = "Custom"
# schedule -> its label: A1111's "Schedule type" names, as image metadata writes them
SCHEDULE_LABELS = {schedule: a1111 for schedule, (a1111, _) in SCHEDULES.items()}
SCHEDULE_LABELS[None] = "Uniform (the model's own)"


class SettingsPanel(QWidget):
    init_changed = Signal(object)  # the init image's path, or None

    def __init__(self, samplers: dict[str, tuple[str | None, ...]], parent: QWidget | None = None):
        super().__init__(parent)
        self.samplers = samplers  # sampler -> the schedules it takes on the loaded model (session.model_samplers)
        self.preset = QComboBox()
        self.preset.addItem(CUSTOM)
        self.preset.activated.connect(self._apply_preset)
        self.width_box, self.height_box = self._size_box("Width"), self._size_box("Height")
        size = QHBoxLayout()
        for w in (self.width_box, QLabel("×"), self.height_box):
            size.addWidget(w)

        self.steps = QSpinBox(minimum=1, maximum=500)
        self.guidance = QDoubleSpinBox(minimum=0.0, maximum=30.0, singleStep=0.5, decimals=1)
        self.guidance.setToolTip("Classifier-free guidance: how closely to follow the prompt (1 or less: off)")
        self.sampler = QComboBox()  # A1111's names shown, sdkit's as item data
        self._fill_samplers()
        self.schedule = QComboBox()  # the chosen sampler's schedules only
        self.schedule.setToolTip("How the steps are spaced; Uniform: the model's own (its scheduler config's)")
        self.sampler.currentIndexChanged.connect(lambda: self._show_schedules(self.schedule.currentData()))
        self.eta = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.eta.setToolTip("TCD's gamma: the share of each step re-noised (0: deterministic; 0.3 its default)")
        self.sampler.currentIndexChanged.connect(lambda: self.eta.setEnabled(self.sampler.currentData() == "tcd"))
        self.num_images = QSpinBox(minimum=1, maximum=16)
        self.clip_skip = QSpinBox(minimum=1, maximum=12)
        self.clip_skip.setToolTip("A1111's clip skip: 1 the text encoder's last layer, 2 the penultimate (anime "
                                  "models' habit); SD1/SD2 only, SDXL ignores it as A1111 does")

        self.seed = QLineEdit()
        self.seed.setValidator(QRegularExpressionValidator(r"\d{0,10}"))
        self.seed.textEdited.connect(lambda: self.seed_lock.setChecked(True))  # a typed seed is meant to stay
        self.seed_lock = QToolButton(checkable=True, text="Random")
        self.seed_lock.toggled.connect(lambda on: self.seed_lock.setText("Locked" if on else "Random"))
        self.seed_lock.setToolTip("Locked: reuse this seed. Unlocked: a new random seed for every generation.")
        seed = QHBoxLayout()
        seed.addWidget(self.seed)
        seed.addWidget(self.seed_lock)

        self.init_label = QLabel("none (text to image)")
        self.init_label.setWordWrap(True)
        self.init_image: str | None = None
        open_init, clear_init = QPushButton("Open…"), QPushButton("Clear")
        open_init.clicked.connect(self._open_init)
        clear_init.clicked.connect(lambda: self.set_init_image(None))
        init = QHBoxLayout()
        init.addWidget(self.init_label, 1)
        init.addWidget(open_init)
        init.addWidget(clear_init)
        self.strength = QSlider(Qt.Orientation.Horizontal, minimum=1, maximum=100)
        self.strength_label = QLabel()
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v / 100:.2f}"))
        strength = QHBoxLayout()
        strength.addWidget(self.strength, 1)
        strength.addWidget(self.strength_label)

        self.hires = QCheckBox("Hires fix")
        self.hires.setToolTip("A1111's hires fix (text to image only): generate at the size above, upscale, then "
                              "image-to-image at the larger size")
        self.hires_mode = QComboBox()  # A1111's "Upscale by" / "Resize to"
        self.hires_mode.addItem("Upscale by", False)
        self.hires_mode.addItem("Resize to", True)
        self.hires_mode.setToolTip("Resize to: that size, the first pass's aspect kept and the overflow cropped; a "
                                   "side left at auto follows the other")
        self.hires_scale = QDoubleSpinBox(minimum=1.0, maximum=16.0, singleStep=0.25, decimals=2, prefix="× ")
        self.hires_width, self.hires_height = (QSpinBox(minimum=0, maximum=4096, singleStep=8, suffix=" px",
                                                        specialValueText="auto") for _ in range(2))
        for box in (self.hires_width, self.hires_height):
            box.editingFinished.connect(lambda box=box: box.setValue(box.value() and snap8(box.value())))
        self.hires_x = QLabel("×")
        self.hires_mode.currentIndexChanged.connect(self._enable_hires)
        self.hires_steps = QSpinBox(minimum=0, maximum=500, specialValueText="as Steps")
        self.hires_denoising = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.hires_upscaler = QComboBox()
        for upscaler, (a1111, *_) in UPSCALERS.items():
            self.hires_upscaler.addItem(a1111, upscaler)  # A1111's "Latent", "Latent (bicubic)", ..., "Lanczos"
        self.hires_fields = (self.hires_mode, self.hires_steps, self.hires_denoising, self.hires_upscaler)
        self.hires.toggled.connect(self._enable_hires)
        hires = QHBoxLayout()
        for w in (self.hires, self.hires_upscaler):
            hires.addWidget(w)
        hires_size = QHBoxLayout()
        for w in (self.hires_mode, self.hires_scale, self.hires_width, self.hires_x, self.hires_height):
            hires_size.addWidget(w)
        hires_pass = QHBoxLayout()
        for w in (QLabel("Steps"), self.hires_steps, QLabel("Denoising"), self.hires_denoising):
            hires_pass.addWidget(w)

        self.refiner_start = QDoubleSpinBox(minimum=0.01, maximum=0.99, singleStep=0.05, decimals=2)
        self.refiner_start.setToolTip("A1111's Refiner switch at: the share of the schedule the model denoises "
                                      "before the refiner (chosen in the Model box) takes over")

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Size", self.preset)
        form.addRow("", size)
        form.addRow("Steps", self.steps)
        form.addRow("Guidance", self.guidance)
        form.addRow("Sampler", self.sampler)
        form.addRow("Schedule", self.schedule)
        form.addRow("Eta", self.eta)
        form.addRow("Clip skip", self.clip_skip)
        form.addRow("Seed", seed)
        form.addRow("Images", self.num_images)
        form.addRow("Init image", init)
        form.addRow("Strength", strength)
        form.addRow("Hires", hires)
        form.addRow("", hires_size)
        form.addRow("", hires_pass)
        form.addRow("Refiner switch at", self.refiner_start)
        self.set_settings(Settings())

    def settings(self, base: Settings) -> Settings:
        """`base` with the fields this form shows."""
        seed = int(self.seed.text() or 0)
        return dataclasses.replace(
            base, width=self.width_box.value(), height=self.height_box.value(), steps=self.steps.value(),
            guidance_scale=self.guidance.value(), sampler=self.sampler.currentData(),
            schedule=self.schedule.currentData(), eta=self.eta.value(), seed=seed,
            seed_locked=self.seed_lock.isChecked(),
            num_images=self.num_images.value(), init_image=self.init_image, strength=self.strength.value() / 100,
            clip_skip=self.clip_skip.value(), hires=self.hires.isChecked(), hires_scale=self.hires_scale.value(),
            hires_resize=self.hires_mode.currentData(), hires_width=self.hires_width.value(),
            hires_height=self.hires_height.value(), refiner_start=self.refiner_start.value(),
            hires_steps=self.hires_steps.value(), hires_denoising=self.hires_denoising.value(),
            hires_upscaler=self.hires_upscaler.currentData())

    def set_settings(self, s: Settings) -> None:
        self.width_box.setValue(s.width)
        self.height_box.setValue(s.height)
        self._match_preset()
        self.steps.setValue(s.steps)
        self.guidance.setValue(s.guidance_scale)
        self.sampler.setCurrentIndex(max(0, self.sampler.findData(s.sampler)))
        self._show_schedules(s.schedule)
        self.eta.setValue(s.eta)
        self.eta.setEnabled(s.sampler == "tcd")
        self.clip_skip.setValue(s.clip_skip)
        self.seed.setText(str(s.seed))
        self.seed_lock.setChecked(s.seed_locked)
        self.num_images.setValue(s.num_images)
        self.set_init_image(s.init_image)
        self.strength.setValue(round(s.strength * 100))
        self.hires.setChecked(s.hires)
        self.hires_scale.setValue(s.hires_scale)
        self.hires_mode.setCurrentIndex(int(s.hires_resize))
        self.hires_width.setValue(s.hires_width)
        self.hires_height.setValue(s.hires_height)
        self.hires_steps.setValue(s.hires_steps)
        self.hires_denoising.setValue(s.hires_denoising)
        self.hires_upscaler.setCurrentIndex(max(0, self.hires_upscaler.findData(s.hires_upscaler)))
        self._enable_hires()
        self.refiner_start.setValue(s.refiner_start)

    def set_samplers(self, samplers: dict[str, tuple[str | None, ...]]) -> None:
        """Offer only what the loaded model takes; the chosen sampler and schedule stay when it takes them."""
        sampler, schedule = self.sampler.currentData(), self.schedule.currentData()
        self.samplers = samplers
        self.sampler.blockSignals(True)
        self._fill_samplers()
        self.sampler.setCurrentIndex(max(0, self.sampler.findData(sampler)))
        self.sampler.blockSignals(False)
        self._show_schedules(schedule)
        self.eta.setEnabled(self.sampler.currentData() == "tcd")

    def _fill_samplers(self) -> None:
        self.sampler.clear()
        for name in self.samplers:
            self.sampler.addItem(SAMPLERS[name].a1111, name)

    def set_presets(self, presets: list[tuple[int, int]]) -> None:
        """Size presets (width, height) for the loaded model's family."""
        self.preset.clear()
        for w, h in presets:
            self.preset.addItem(f"{w} × {h}", f"{w}x{h}")
        self.preset.addItem(CUSTOM)
        self._match_preset()

    def set_init_image(self, path: str | None) -> None:
        changed = path != self.init_image
        self.init_image = path
        if changed:
            self.init_changed.emit(path)
        self.init_label.setText(path or "none (text to image)")
        self.strength.setEnabled(path is not None)
        self.hires.setEnabled(path is None)  # hires fix is a text-to-image pass
        self._enable_hires()

    def _enable_hires(self) -> None:
        on = self.hires.isEnabled() and self.hires.isChecked()
        for w in self.hires_fields:
            w.setEnabled(on)
        resize = self.hires_mode.currentData()
        self.hires_scale.setEnabled(on and not resize)
        self.hires_scale.setHidden(resize)
        for w in (self.hires_width, self.hires_x, self.hires_height):
            w.setEnabled(on and resize)
            w.setHidden(not resize)

    def _show_schedules(self, keep: str | None) -> None:
        """The chosen sampler's schedules, `keep` selected when it takes it, else the model's own."""
        schedules = self.samplers[self.sampler.currentData()]
        self.schedule.blockSignals(True)
        self.schedule.clear()
        for schedule in schedules:
            self.schedule.addItem(SCHEDULE_LABELS[schedule], schedule)
        self.schedule.setCurrentIndex(schedules.index(keep) if keep in schedules else 0)
        self.schedule.blockSignals(False)
        self.schedule.setEnabled(len(schedules) > 1)

    def _size_box(self, name: str) -> QSpinBox:
        box = QSpinBox(minimum=8, maximum=4096, singleStep=8, suffix=" px")
        box.setToolTip(f"{name} in pixels, a multiple of 8")
        box.editingFinished.connect(lambda: box.setValue(snap8(box.value())))
        box.valueChanged.connect(self._match_preset)
        return box

    def _apply_preset(self) -> None:
        size = self.preset.currentData()
        if size:
            w, h = map(int, size.split("x"))
            self.width_box.setValue(w)
            self.height_box.setValue(h)

    def _match_preset(self) -> None:
        i = self.preset.findData(f"{self.width_box.value()}x{self.height_box.value()}")
        self.preset.setCurrentIndex(i if i >= 0 else self.preset.count() - 1)

    def _open_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an init image", "", "Images (*.png *.jpg *.jpeg *.webp)")
        if path:
            self.set_init_image(path)
