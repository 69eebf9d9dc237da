"""The LoRA and embedding browser: the .safetensors files of $SDKIT_LORA_DIRS and $SDKIT_EMBEDDING_DIRS, put into
the prompt or the negative prompt as A1111's tags (<lora:NAME:W>, an embedding's NAME or (NAME:W)) with a weight."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QHBoxLayout, QListWidget, QListWidgetItem, QPushButton,
                               QTabWidget, QVBoxLayout, QWidget)

from ..session import embedding_text, lora_tag, network_files

KINDS = (("LoRAs", "SDKIT_LORA_DIRS", lora_tag), ("Embeddings", "SDKIT_EMBEDDING_DIRS", embedding_text))


class NetworkBrowser(QWidget):
    insert = Signal(str, bool)  # text, into the negative prompt

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.tabs = QTabWidget()
        self.lists: list[QListWidget] = []
        for title, env, _ in KINDS:
            files = QListWidget()
            files.setToolTip(f"The .safetensors files in ${env} (os.pathsep-separated folders); double-click to "
                             "insert")
            files.itemDoubleClicked.connect(lambda _item: self._insert())
            self.lists.append(files)
            self.tabs.addTab(files, title)
        self.weight = QDoubleSpinBox(minimum=-5.0, maximum=5.0, singleStep=0.05, decimals=2, value=1.0)
        self.weight.setToolTip("LoRA: its strength (negative values invert it); embedding: its emphasis")
        self.target = QComboBox()
        self.target.addItems(["into the prompt", "into the negative prompt"])
        insert, refresh = QPushButton("Insert"), QPushButton("Refresh")
        insert.clicked.connect(self._insert)
        refresh.clicked.connect(self.refresh)
        row = QHBoxLayout()
        for w in (self.weight, self.target, insert, refresh):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        layout.addLayout(row)
        self.tabs.setFixedHeight(140)
        self.refresh()

    def refresh(self) -> None:
        """List the folders' files afresh."""
        for files, (_, env, _) in zip(self.lists, KINDS):
            files.clear()
            for name, path in network_files(env).items():
                item = QListWidgetItem(name)
                item.setToolTip(path)
                item.setData(Qt.ItemDataRole.UserRole, name)
                files.addItem(item)

    def _insert(self) -> None:
        i = self.tabs.currentIndex()
        item = self.lists[i].currentItem()
        if item is not None:
            text = KINDS[i][2](item.data(Qt.ItemDataRole.UserRole), self.weight.value())
            self.insert.emit(text, self.target.currentIndex() == 1)
