"""The worker: a QObject living in a QThread that loads models, generates and trains, reporting through signals.

The GUI thread never waits on it. It holds the loaded Pipeline and SDXL refiner between generations and reloads
each only when the requested ModelChoice changes it; a training run drops both first (sdkit.train loads its own
copy) and the next generation loads them again. Cancel is a threading.Event the sampler callback polls after
every UNet evaluation, so it takes effect within one step even though the worker's event loop is busy; sdkit.train's
should_stop polls it between the images it first encodes (nothing is written then) and after every training step
(a cancelled run saves its resumable state, as Ctrl-C does).
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import sdkit
from PySide6.QtCore import QObject, Signal, Slot

from .preview import latents_to_rgb
from .session import ModelChoice, model_samplers

PREVIEW_INTERVAL = 0.1  # seconds between live previews: ~10 a second at most


@dataclass(frozen=True)
class Loaded:
    """What the window needs to know about the loaded model."""

    choice: ModelChoice
    name: str
    family: str
    default_size: tuple[int, int]  # (height, width)
    backend: str  # resolved name, device, dtype, e.g. "torch cpu float32"
    usage: Callable[[str], tuple[int, int]]  # the token counter: Pipeline.token_usage
    samplers: dict[str, tuple[str | None, ...]]  # sampler -> the schedules it takes (EDM models: a few)
    refiner: str | None = None  # the loaded refiner's name (as image metadata writes it)


class Worker(QObject):
    status = Signal(str)  # what it is doing now, for the status line
    loaded = Signal(object)  # Loaded
    progress = Signal(int, int, float)  # step, total, seconds since generation started
    preview = Signal(object)  # (h, w, 3) uint8
    finished = Signal(list)  # list[PIL.Image.Image], each with info["parameters"]
    cancelled = Signal()
    failed = Signal(str)  # one line for the window
    train_progress = Signal(int, int, float, float)  # step, total, loss, steps per second
    train_sample = Signal(int, str)  # step, path of a sample image it wrote
    train_ended = Signal(str, str)  # "done" / "cancelled" / "failed", and a line saying what was written or why

    _load_requested = Signal(object)
    _generate_requested = Signal(object, dict)
    _train_requested = Signal(dict)

    def __init__(self, load: Callable[..., sdkit.Pipeline] = sdkit.load):
        super().__init__()
        self._load = load
        self._cancel = threading.Event()
        self.pipe: sdkit.Pipeline | None = None
        self.info: Loaded | None = None  # about self.pipe
        self.refiner: sdkit.Pipeline | None = None  # the choice's SDXL refiner, kept loaded as the model is
        self._refiner_key: tuple | None = None  # (refiner, backend, device, dtype) it was loaded for
        self._load_requested.connect(self._on_load)
        self._generate_requested.connect(self._on_generate)
        self._train_requested.connect(self._on_train)

    # Called from the GUI thread.

    def load(self, choice: ModelChoice) -> None:
        self._load_requested.emit(choice)

    def generate(self, choice: ModelChoice, kwargs: dict) -> None:
        self._cancel.clear()
        self._generate_requested.emit(choice, kwargs)

    def train(self, kwargs: dict) -> None:
        """sdkit.train(**kwargs) in the worker thread, after dropping the loaded Pipeline and refiner."""
        self._cancel.clear()
        self._train_requested.emit(kwargs)

    def cancel(self) -> None:
        self._cancel.set()

    # Run in the worker thread.

    @Slot(object)
    def _on_load(self, choice: ModelChoice) -> None:
        try:
            self._ensure_loaded(choice)
        except Exception as e:
            self.failed.emit(describe(e))
        else:
            self.loaded.emit(self.info)

    @Slot(object, dict)
    def _on_generate(self, choice: ModelChoice, kwargs: dict) -> None:
        try:
            if self._ensure_loaded(choice):
                self.loaded.emit(self.info)
            if self._cancel.is_set():
                self.cancelled.emit()
                return
            self.status.emit("Generating…")
            refiner = {"refiner": self.refiner} if self.refiner else {}
            images = self.pipe.generate(**kwargs, **refiner, callback=self._callback(time.perf_counter()))
        except sdkit.Cancelled:
            self.cancelled.emit()
        except Exception as e:
            self.failed.emit(describe(e))
        else:
            self.finished.emit(images)

    @Slot(dict)
    def _on_train(self, kwargs: dict) -> None:
        start = None  # (time, step) of the first report: the steps' rate leaves out the caching before them

        def callback(step: int, total: int, loss: float, images: list[str]) -> None:
            nonlocal start
            now = time.perf_counter()
            start = start or (now, step)
            rate = (step - start[1]) / (now - start[0]) if step > start[1] else 0.0
            self.train_progress.emit(step, total, loss, rate)
            for path in images:
                self.train_sample.emit(step, path)

        self.pipe = self.info = self.refiner = self._refiner_key = None
        gc.collect()  # the generating model's memory is free before training loads its copy
        try:
            record = sdkit.train(**kwargs, progress=False, callback=callback, should_stop=self._cancel.is_set)
        except sdkit.Cancelled as e:
            self.train_ended.emit("cancelled", str(e))
        except Exception as e:
            self.train_ended.emit("failed", describe(e))
        else:
            self.train_ended.emit("done", f"Wrote {record.outputs[0]} ({len(record.losses)} steps, final loss "
                                          f"{record.losses[-1]:.4f})")

    def _ensure_loaded(self, choice: ModelChoice) -> bool:
        """Load `choice`'s model, then its refiner, unless loaded; True when either loaded."""
        loaded = self._ensure_model(choice.base)
        if choice.refiner and self.pipe.checkpoint.family != "sdxl":
            raise ValueError(f"Refiner: {self.pipe.checkpoint.name} is {self.pipe.checkpoint.family.upper()}; only "
                             "SDXL models take a refiner (choose none)")
        key = (choice.refiner, choice.backend, choice.device, choice.dtype)
        if key != self._refiner_key:
            self.refiner = self._refiner_key = None
            gc.collect()
            if choice.refiner:
                what = "Downloading refiner {} from the Hub and loading it…" if ModelChoice(
                    choice.refiner).is_hub_id else "Loading refiner {}…"
                self.status.emit(what.format(choice.refiner))
                b = self.pipe.backend  # the base's backend, device and dtype: the latents pass from one to the other
                self.refiner = self._load(choice.refiner, backend=b.name, device=b.device, dtype=b.dtype)
            self._refiner_key = key
            loaded = True
        self.info = dataclasses.replace(self.info, choice=choice,
                                        refiner=self.refiner.checkpoint.name if self.refiner else None)
        return loaded

    def _ensure_model(self, choice: ModelChoice) -> bool:
        """Load `choice` (no refiner) unless it is the loaded model; True when it loaded."""
        if self.pipe is not None and choice == self.info.choice.base:
            return False
        self.pipe = self.info = None
        gc.collect()  # free the old model's memory before the new one arrives
        what = "Downloading {} from the Hub and loading it…" if choice.is_hub_id else "Loading {}…"
        self.status.emit(what.format(choice.model))
        vae = {"vae": choice.vae} if choice.vae else {}
        self.pipe = self._load(choice.model, backend=choice.backend, device=choice.device, dtype=choice.dtype, **vae)
        b = self.pipe.backend
        self.info = Loaded(choice, self.pipe.checkpoint.name, self.pipe.checkpoint.family, self.pipe.default_size,
                           f"{b.name} {b.device} {b.dtype}", self.pipe.token_usage,
                           model_samplers(self.pipe.checkpoint.scheduler))
        return True

    def _callback(self, start: float):
        family = self.pipe.checkpoint.family
        to_numpy = self.pipe.backend.numpy
        last = -PREVIEW_INTERVAL  # when the last preview was made

        def callback(step: int, total: int, latents) -> bool:
            nonlocal last
            now = time.perf_counter()
            self.progress.emit(step, total, now - start)
            # A preview copies latents to the host, which waits for the device (a CUDA graph or Metal queue stalls
            # there): at most one per PREVIEW_INTERVAL, and always the last step's
            if now - last >= PREVIEW_INTERVAL or step == total:
                self.preview.emit(latents_to_rgb(to_numpy(latents[0:1])[0], family))
                last = now
            return not self._cancel.is_set()

        return callback


def describe(e: BaseException) -> str:
    """An exception as one line a person can act on."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, MemoryError) or "out of memory" in text.lower():
        return f"Out of memory: use a smaller size, fewer images or float16 ({text})"
    if isinstance(e, (sdkit.SdkitError, ValueError, OSError)):
        return text
    traceback.print_exception(e)  # a bug, not a user error: keep the details for a report
    return f"{type(e).__name__}: {text}"
