"""Which model, on which backend and device: a path or Hub repo id (with recent ones), the VAE (the model's own,
or a file from $SDKIT_VAE_DIRS, any file, folder or Hub id), an SDXL refiner (none, or a file, folder or Hub id),
and a Load button."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QGridLayout, QHBoxLayout, QLabel, QPushButton,
                               QSizePolicy, QWidget)

from ..session import BACKENDS, DEVICES, DTYPES, ModelChoice, vae_files

DEFAULT = "default"
OWN_VAE = "the model's own"
NO_REFINER = "none"


class ModelPicker(QWidget):
    load_clicked = Signal()
    refiner_toggled = Signal(bool)  # whether a refiner is chosen (and the shown model can take one)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.model.lineEdit().setPlaceholderText("a .safetensors file, a folder, or a Hub repo id")
        self.model.setToolTip("A single-file checkpoint, a diffusers folder, or a Hugging Face Hub repo id such as "
                              "stable-diffusion-v1-5/stable-diffusion-v1-5 (downloaded once, then cached)")
        open_file, open_folder = QPushButton("File…"), QPushButton("Folder…")
        open_file.clicked.connect(self._open_file)
        open_folder.clicked.connect(self._open_folder)

        self.backend = QComboBox()
        self.backend.addItems(BACKENDS)
        self.device = QComboBox()
        self.device.setEditable(True)  # e.g. "cuda:1"
        self.dtype = QComboBox()
        self.dtype.addItems([DEFAULT, *DTYPES])
        self.backend.currentTextChanged.connect(self._fill_devices)
        self._fill_devices(self.backend.currentText())
        self.vae = QComboBox()
        self.vae.setEditable(True)
        self.vae.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.vae.setToolTip("A VAE replacing the model's: a .safetensors file (vae-ft-mse-840000, sdxl_vae, ...), "
                            "a diffusers folder or a Hub repo id; listed: the files in $SDKIT_VAE_DIRS")
        self.set_vaes(vae_files())
        open_vae = QPushButton("File…")
        open_vae.clicked.connect(self._open_vae)
        self.refiner = QComboBox()
        self.refiner.setEditable(True)
        self.refiner.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.refiner.setToolTip("SDXL only: a refiner (stable-diffusion-xl-refiner-1.0: a file, folder or Hub id) "
                                "that denoises the last part of the schedule, from Refiner switch at on")
        self.refiner.addItem(NO_REFINER)
        self.refiner.currentTextChanged.connect(lambda: self.refiner_toggled.emit(self.refiner_path() is not None))
        self.open_refiner = QPushButton("File…")
        self.open_refiner.clicked.connect(self._open_refiner)
        self.model.currentTextChanged.connect(lambda: self._enable_refiner(True))  # its family: known once loaded
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_clicked)
        self.info = QLabel("No model loaded")
        self.info.setWordWrap(True)

        row = QHBoxLayout()
        row.addWidget(self.model)
        row.addWidget(open_file)
        row.addWidget(open_folder)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addLayout(row, 0, 0, 1, 4)
        for col, (label, box) in enumerate((("Backend", self.backend), ("Device", self.device),
                                            ("Precision", self.dtype))):
            grid.addWidget(QLabel(label), 1, col)
            grid.addWidget(box, 2, col)
        grid.addWidget(self.load_button, 2, 3)
        vae = QHBoxLayout()
        vae.addWidget(QLabel("VAE"))
        vae.addWidget(self.vae, 1)
        vae.addWidget(open_vae)
        grid.addLayout(vae, 3, 0, 1, 4)
        refiner = QHBoxLayout()
        refiner.addWidget(QLabel("Refiner"))
        refiner.addWidget(self.refiner, 1)
        refiner.addWidget(self.open_refiner)
        grid.addLayout(refiner, 4, 0, 1, 4)
        grid.addWidget(self.info, 5, 0, 1, 4)

    def choice(self) -> ModelChoice | None:
        model = self.model.currentText().strip()
        if not model:
            return None
        pick = lambda box: None if box.currentText() == DEFAULT else box.currentText()
        vae = self.vae.currentText().strip()
        return ModelChoice(model, self.backend.currentText(), pick(self.device), pick(self.dtype),
                           None if vae in ("", OWN_VAE) else vae, self.refiner_path())

    def refiner_path(self) -> str | None:
        """The chosen refiner; None when none is, or when the loaded model is no SDXL model."""
        refiner = self.refiner.currentText().strip()
        return None if refiner in ("", NO_REFINER) or not self.refiner.isEnabled() else refiner

    def set_choice(self, choice: ModelChoice) -> None:
        self.model.setCurrentText(choice.model)
        self.backend.setCurrentText(choice.backend)
        self.device.setCurrentText(choice.device or DEFAULT)
        self.dtype.setCurrentText(choice.dtype or DEFAULT)
        self.set_vae(choice.vae)
        self.set_refiner(choice.refiner)

    def set_refiner(self, refiner: str | None) -> None:
        self.refiner.setCurrentText(refiner or NO_REFINER)

    def set_family(self, family: str) -> None:
        """The loaded model's family: only SDXL takes a refiner."""
        self._enable_refiner(family == "sdxl")

    def _enable_refiner(self, on: bool) -> None:
        for w in (self.refiner, self.open_refiner):
            w.setEnabled(on)
        self.refiner_toggled.emit(self.refiner_path() is not None)

    def set_vae(self, vae: str | None) -> None:
        """None: the model's own."""
        self.vae.setCurrentText(vae or OWN_VAE)

    def set_vaes(self, files: list[str]) -> None:
        current = self.vae.currentText()
        self.vae.clear()
        self.vae.addItems([OWN_VAE, *files])
        self.vae.setCurrentText(current or OWN_VAE)

    def set_recent(self, models: list[str], refiners: list[str]) -> None:
        """The recent models into the Model box, the recent refiners into the Refiner box."""
        for box, items in ((self.model, models), (self.refiner, [NO_REFINER, *refiners])):
            current = box.currentText()
            box.clear()
            box.addItems(items)
            box.setCurrentText(current)

    def _fill_devices(self, backend: str) -> None:
        self.device.clear()
        self.device.addItems([DEFAULT, *DEVICES[backend]])
        self.device.setToolTip("default: the fastest device present (CUDA > MPS > CPU for torch, the GPU for MLX)")

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.model.setCurrentText(path)

    def _open_vae(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a VAE", "", "VAE files (*.safetensors)")
        if path:
            self.vae.setCurrentText(path)

    def _open_refiner(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an SDXL refiner", "", "Checkpoints (*.safetensors)")
        if path:
            self.refiner.setCurrentText(path)

    def _open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a diffusers model folder")
        if path:
            self.model.setCurrentText(path)
