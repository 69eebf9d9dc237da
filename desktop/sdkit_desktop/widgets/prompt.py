"""A prompt box with A1111's token counter: "80/150 tokens" once a prompt takes two 75-token chunks."""

from __future__ import annotations

import re
from typing import Callable

from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget

CHUNK = 75  # CLIP's 77 positions minus the start and end tokens
Usage = Callable[[str], "tuple[int, int]"]  # text -> (tokens used, tokens its chunks hold): Pipeline.token_usage's
TAGS = re.compile(r"<(lora|lyco|hypernet):[^>]*>")  # applied, not encoded: not counted


class PromptEdit(QWidget):
    def __init__(self, placeholder: str, usage: Usage, parent: QWidget | None = None):
        super().__init__(parent)
        self._usage = usage
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

    def insert(self, text: str) -> None:
        """Insert at the cursor, with a ", " before it when it follows other text (as A1111's extra networks do)."""
        cursor = self.edit.textCursor()
        before = self.text()[: cursor.position()].rstrip()
        if before and not before.endswith(","):
            text = ", " + text
        elif before:
            text = " " + text
        cursor.insertText(text)
        self.edit.setTextCursor(cursor)

    def set_counter(self, usage: Usage) -> None:
        """Count with another model's tokenizer and embeddings (the loaded one's)."""
        self._usage = usage
        self._update_counter()

    def _update_counter(self) -> None:
        used, capacity = self._usage(TAGS.sub("", self.text()))
        chunks = capacity // CHUNK
        self.counter.setText(f"{used}/{capacity} tokens" + (f", {chunks} chunks" if chunks > 1 else ""))
        self.counter.setToolTip("Prompts longer than 75 tokens are encoded in chunks of 75, as A1111 does")
        self.counter.setStyleSheet("color: palette(mid)")
