"""The live loss curve of a training run, drawn with QPainter: each step's loss faint, its moving average
(the trend a noisy per-step loss hides) solid; the x axis spans the run's steps, the y axis the losses so far."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

SMOOTHING = 0.9  # exponential moving average, as TensorBoard's slider
MARGIN = 8


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.total = 0  # the run's step count: the x axis spans it from the start
        self.setMinimumSize(240, 140)
        self.setToolTip("Each step's loss (faint) and its moving average (solid)")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def reset(self, total: int) -> None:
        self.steps, self.losses, self.total = [], [], total
        self.update()

    def add(self, step: int, loss: float) -> None:
        """A step's loss; steps from `step` on already plotted (a resume's log beyond its state) are dropped."""
        while self.steps and self.steps[-1] >= step:
            self.steps.pop()
            self.losses.pop()
        self.steps.append(step)
        self.losses.append(loss)
        self.update()

    def smoothed(self) -> list[float]:
        out, avg = [], None
        for loss in self.losses:
            avg = loss if avg is None else SMOOTHING * avg + (1 - SMOOTHING) * loss
            out.append(avg)
        return out

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text_h = p.fontMetrics().height()
        frame = QRectF(self.rect()).adjusted(MARGIN, MARGIN + text_h, -MARGIN, -MARGIN - text_h)
        p.fillRect(self.rect(), self.palette().base())
        p.setPen(self.palette().mid().color())
        p.drawRect(frame)
        p.setPen(self.palette().text().color())
        if not self.losses:
            p.drawText(frame, Qt.AlignmentFlag.AlignCenter, "The loss appears here as training runs")
            return
        lo, hi = min(self.losses), max(self.losses)
        first, last = min(self.steps[0], 1), max(self.total, self.steps[-1], 2)
        span = (hi - lo) or 1.0

        def at(step: int, loss: float) -> QPointF:
            return QPointF(frame.left() + frame.width() * (step - first) / (last - first),
                           frame.bottom() - frame.height() * (loss - lo) / span)

        p.drawText(QRectF(MARGIN, 0, frame.width(), text_h + MARGIN), Qt.AlignmentFlag.AlignBottom,
                   f"loss {self.losses[-1]:.4g} · {lo:.4g} to {hi:.4g}")
        below = QRectF(MARGIN, frame.bottom(), frame.width(), text_h)
        p.drawText(below, Qt.AlignmentFlag.AlignLeft, f"step {first}")
        p.drawText(below, Qt.AlignmentFlag.AlignRight, f"step {last}")
        for values, color, width in ((self.losses, QColor(70, 130, 220, 90), 1.0),
                                     (self.smoothed(), QColor(30, 90, 200), 2.0)):
            path = QPainterPath(at(self.steps[0], values[0]))
            for step, loss in zip(self.steps[1:], values[1:]):
                path.lineTo(at(step, loss))
            p.setPen(QPen(color, width))
            p.drawPath(path)
        p.drawEllipse(at(self.steps[-1], self.smoothed()[-1]), 2.5, 2.5)
