"""The scrolling column of controls on the left of each tab (Generate, Train)."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QPushButton, QScrollArea, QVBoxLayout, QWidget

WIDTH = 430  # px: the forms' labels and fields without a horizontal scroll bar


def controls_column(left: QVBoxLayout, start: QPushButton, cancel: QPushButton) -> QScrollArea:
    """`left`'s widgets, then the start (two thirds) and cancel (one third) buttons, top-aligned in a fixed-width
    column that scrolls when the window is short."""
    buttons = QHBoxLayout()
    buttons.addWidget(start, 2)
    buttons.addWidget(cancel, 1)
    left.addLayout(buttons)
    left.addStretch()
    panel = QWidget()
    panel.setLayout(left)
    scroll = QScrollArea(widgetResizable=True)
    scroll.setWidget(panel)
    scroll.setFixedWidth(WIDTH)
    return scroll
