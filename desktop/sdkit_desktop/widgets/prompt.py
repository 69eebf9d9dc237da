"""A prompt box with the n/75 token counter that warns before CLIP cuts the text."""

from __future__ import annotations

from typing import Callable

from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget

LIMIT = 75  # CLIP's 77 positions minus the start and end tokens


class PromptEdit(QWidget):
    def __init__(self, placeholder: str, count: Callable[[str], int], parent: QWidget | None = None):
        super().__init__(parent)
        self._count = count
        self.edit = QPlainTextEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setTabChangesFocus(True)
        self.edit.setFixedHeight(self.edit.fontMetrics().lineSpacing() * 4 + 12)
        self.counter = QLabel()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.edit)
        layout.addWidget(self.counter)
        self.edit.textChanged.connect(self._update_counter)
        self._update_counter()

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)

    def set_counter(self, count: Callable[[str], int]) -> None:
        """Count with another tokenizer (the loaded model's)."""
        self._count = count
        self._update_counter()

    def _update_counter(self) -> None:
        n = self._count(self.text())
        if n > LIMIT:
            self.counter.setText(f"{n}/{LIMIT} tokens: the text after token {LIMIT} will be cut")
            self.counter.setStyleSheet("color: #c0392b; font-weight: bold")
        else:
            self.counter.setText(f"{n}/{LIMIT} tokens")
            self.counter.setStyleSheet("color: palette(mid)")
