"""Pictures on screen: the large view (live preview or a chosen result) and the strip of this session's thumbnails."""

from __future__ import annotations

import numpy as np
from PIL import Image
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QLabel, QListView, QListWidget, QListWidgetItem, QSizePolicy, QWidget

THUMB = 96
MIN_VIEW = 256


def to_qimage(image: Image.Image | np.ndarray) -> QImage:
    """An RGB PIL image or (h, w, 3) uint8 array -> a QImage that owns its pixels."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ImageView(QLabel):
    """Shows one picture as large as the space allows, keeping its aspect ratio (tiny models' 64-pixel
    images included: small pictures are scaled up, smoothly)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(MIN_VIEW, MIN_VIEW)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setStyleSheet("background: palette(base); border: 1px solid palette(mid)")
        self._image: QImage | None = None
        self.setText("Your images appear here")

    def show_image(self, image: QImage | None) -> None:
        self._image = image
        self._rescale()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._image is None:
            self.setPixmap(QPixmap())
            return
        size = self.contentsRect().size() - QSize(4, 4)
        pixmap = QPixmap.fromImage(self._image)
        self.setPixmap(pixmap.scaled(size, Qt.AspectRatioMode.KeepAspectRatio,
                                     Qt.TransformationMode.SmoothTransformation))


class Gallery(QListWidget):
    """Thumbnails of the session's results, newest last; `chosen(index)` when one is selected."""

    chosen = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setMovement(QListView.Movement.Static)
        self.setFixedHeight(THUMB + 40)
        self.currentRowChanged.connect(lambda row: row >= 0 and self.chosen.emit(row))

    def add(self, image: Image.Image, tooltip: str) -> None:
        thumb = QPixmap.fromImage(to_qimage(image)).scaled(
            THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        item = QListWidgetItem(QIcon(thumb), "")
        item.setToolTip(tooltip)
        item.setSizeHint(QSize(THUMB + 8, THUMB + 8))
        self.addItem(item)
