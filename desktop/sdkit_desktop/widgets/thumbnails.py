"""Thumbnails loaded off the GUI thread: decoding a folder of thousands of photos there would freeze the window.

Each load() is one job in Qt's global thread pool that emits `loaded(generation, row, QImage)` per image, in
order, as it goes (QImage, not QPixmap: only QImage may be made outside the GUI thread). A newer load() or stop()
ends the older job at its next image; results it had already sent carry its generation for the receiver to drop.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QImage

from .gallery import to_qimage


class Thumbnails(QObject):
    loaded = Signal(int, int, QImage)  # generation, row, thumbnail

    def __init__(self, size: int):
        super().__init__()  # no parent: a running job keeps it alive after its receiver is gone
        self.size = size
        self.generation = 0

    def load(self, paths: list[Path]) -> int:
        """Start loading `paths`' thumbnails; the generation their results carry."""
        self.generation += 1
        QThreadPool.globalInstance().start(partial(self._run, self.generation, list(paths)))
        return self.generation

    def stop(self) -> None:
        self.generation += 1

    def _run(self, generation: int, paths: list[Path]) -> None:
        for row, path in enumerate(paths):
            if generation != self.generation:
                return  # a newer folder (or none) is shown
            try:
                image = thumbnail(path, self.size)
            except OSError:  # unreadable: the item keeps no icon, training names the file
                continue
            self.loaded.emit(generation, row, image)


def thumbnail(path: Path, size: int) -> QImage:
    with Image.open(path) as im:
        im.thumbnail((size, size))  # JPEGs decode at a fraction of their size (Pillow's draft mode)
        return to_qimage(im)
