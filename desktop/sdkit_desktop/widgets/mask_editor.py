"""Inpaint mode: the init image with its mask drawn over it, the brush and eraser, Extend canvas."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import (QCheckBox, QGridLayout, QHBoxLayout, QLabel, QPushButton, QRadioButton, QSpinBox,
                               QVBoxLayout, QWidget)

from ..mask import EXTEND_STEP, Mask
from ..session import Settings
from .gallery import to_qimage

OVERLAY = (255, 40, 40, 140)  # RGBA of a fully masked pixel: translucent red


class MaskCanvas(QWidget):
    """The init image scaled to fit, the mask over it; a drag paints a stroke in image coordinates."""

    stroked = Signal()

    def __init__(self, editor: MaskEditor):
        super().__init__()
        self.editor = editor
        self.image: QImage | None = None
        self.points: list[tuple[float, float]] = []  # the stroke being drawn
        self.setMinimumHeight(200)

    def target(self) -> QRectF:
        """Where the image is drawn: scaled to fit, centred."""
        w, h = self.image.width(), self.image.height()
        scale = min(self.width() / w, self.height() / h)
        return QRectF((self.width() - w * scale) / 2, (self.height() - h * scale) / 2, w * scale, h * scale)

    def to_image(self, pos: QPointF) -> tuple[float, float]:
        r = self.target()
        scale = self.image.width() / r.width()
        return (pos.x() - r.x()) * scale, (pos.y() - r.y()) * scale

    def paintEvent(self, event) -> None:
        if self.image is None:
            return
        painter = QPainter(self)
        r = self.target()
        painter.drawImage(r, self.image)
        painter.drawImage(r, _overlay(self.editor.mask.image))
        if self.points:  # the stroke in progress, in the overlay's colour
            scale = r.width() / self.image.width()
            pen = QPen(QColor(*OVERLAY), self.editor.size.value() * scale, Qt.SolidLine, Qt.RoundCap, Qt.RoundJoin)
            painter.setPen(pen)
            pts = [QPointF(r.x() + x * scale, r.y() + y * scale) for x, y in self.points]
            painter.drawPolyline(pts) if len(pts) > 1 else painter.drawPoint(pts[0])

    def mousePressEvent(self, event) -> None:
        if self.image is not None and event.button() == Qt.LeftButton:
            self.points = [self.to_image(event.position())]
            self.update()

    def mouseMoveEvent(self, event) -> None:
        if self.points:
            self.points.append(self.to_image(event.position()))
            self.update()

    def mouseReleaseEvent(self, event) -> None:
        if self.points:
            self.editor.mask.stroke(self.points, self.editor.size.value(), erase=self.editor.eraser.isChecked())
            self.points = []
            self.update()
            self.stroked.emit()


class MaskEditor(QWidget):
    """Brush / eraser with a size, Clear, Invert, Undo; Extend canvas on each side; mask blur and area."""

    def __init__(self):
        super().__init__()
        self.mask: Mask | None = None
        self.canvas = MaskCanvas(self)
        self.brush, self.eraser = QRadioButton("Brush", checked=True), QRadioButton("Eraser")
        self.size = QSpinBox(minimum=1, maximum=1024, value=32, suffix=" px")
        self.size.setToolTip("brush and eraser width in image pixels")
        self.clear_button, self.invert_button = QPushButton("Clear"), QPushButton("Invert")
        self.undo_button = QPushButton("Undo")
        self.extend_buttons = [QPushButton(f"{arrow} {EXTEND_STEP}") for arrow in ("←", "↑", "→", "↓")]
        self.margins = QLabel()
        self.blur = QSpinBox(minimum=0, maximum=256, value=4, suffix=" px")
        self.blur.setToolTip("blur of the mask the result is pasted through")
        self.only_masked = QCheckBox("Only masked")
        self.only_masked.setToolTip("generate the mask's box (plus padding) at the chosen size, paste it back")
        self.padding = QSpinBox(minimum=0, maximum=1024, value=32, suffix=" px")

        tools = QHBoxLayout()
        for w in (self.brush, self.eraser, self.size, self.clear_button, self.invert_button, self.undo_button):
            tools.addWidget(w)
        extend = QGridLayout()
        extend.addWidget(QLabel("Extend canvas"), 0, 0)
        for i, b in enumerate(self.extend_buttons):
            extend.addWidget(b, 0, i + 1)
            b.clicked.connect(lambda _=False, side=i: self._grow(side))
        extend.addWidget(self.margins, 1, 0, 1, 5)
        options = QHBoxLayout()
        for w in (QLabel("Mask blur"), self.blur, self.only_masked, QLabel("padding"), self.padding):
            options.addWidget(w)
        column = QVBoxLayout(self)
        column.addWidget(self.canvas, 1)
        column.addLayout(tools)
        column.addLayout(extend)
        column.addLayout(options)

        self.clear_button.clicked.connect(lambda: self._change(self.mask.clear))
        self.invert_button.clicked.connect(lambda: self._change(self.mask.invert))
        self.undo_button.clicked.connect(lambda: self._change(self.mask.undo))
        self.canvas.stroked.connect(self._show)
        self.set_image(None)

    def set_image(self, path: str | None) -> None:
        """A new init image: a fresh, empty mask of its size (None: no image, nothing to draw on)."""
        image = None
        if path:
            try:
                with Image.open(path) as im:
                    image = im.convert("RGB")
            except OSError:
                image = None
        self.mask = Mask(image.size) if image is not None else None
        self.canvas.image = to_qimage(image) if image is not None else None
        self.setEnabled(image is not None)
        self._show()

    def settings(self, s: Settings) -> Settings:
        """`s` with the inpainting options shown here."""
        return dataclasses.replace(s, mask_blur=self.blur.value(), inpaint_padding=self.padding.value(),
                                   inpaint_area="masked" if self.only_masked.isChecked() else "whole")

    def _grow(self, side: int) -> None:
        self.mask.grow(side)
        self._show()

    def _change(self, action) -> None:
        action()
        self._show()

    def _show(self) -> None:
        m = self.mask
        sides = [f"{n} px {side}" for n, side in zip(m.extend, ("left", "top", "right", "bottom")) if n] if m else []
        self.margins.setText("outpainting: adds " + ", ".join(sides) if sides else "")
        self.canvas.update()


def _overlay(mask: Image.Image) -> QImage:
    """"L" mask -> a translucent red RGBA image, alpha proportional to the mask."""
    a = np.asarray(mask, dtype=np.uint16)
    rgba = np.empty((*a.shape, 4), np.uint8)
    rgba[..., :3] = OVERLAY[:3]
    rgba[..., 3] = (a * OVERLAY[3] // 255).astype(np.uint8)
    return QImage(rgba.tobytes(), a.shape[1], a.shape[0], a.shape[1] * 4, QImage.Format_RGBA8888).copy()
