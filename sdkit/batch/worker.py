"""A worker: one device, the pipeline it last loaded, and one unit of work at a time.

The same class runs in the driver's process (local runs) and as a Ray actor (`ray.remote(Worker)`), so a
unit makes the same pixels wherever it runs: each is one generate() call with its own seed, as if made alone.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from ..errors import Cancelled
from .manifest import image_name, write_png
from .rows import Unit


class Worker:
    def __init__(self, out: str, backend: str = "auto", device: str | None = None, dtype: str | None = None):
        self.out = out  # a folder or an fsspec URL
        self.backend, self.device, self.dtype = backend, device, dtype
        self.name = f"{socket.gethostname()}:{os.getpid()}:{device or 'auto'}"  # host:pid:device, for the manifest
        self.model: str | None = None
        self.pipe = None  # the pipeline of self.model
        self.failed: dict[str, str] = {}  # model -> why it cannot be loaded (each is tried once)

    def run(self, unit: Unit, stop: threading.Event | None = None) -> dict:
        """Make and write one image; the manifest fields (file, sha256, seconds, worker) or its error.
        `stop` set: sdkit.Cancelled within a step (the unit is not done, nor failed)."""
        start = time.perf_counter()
        params = dict(unit.params)
        model = params.pop("model")
        go_on = None if stop is None else lambda step, total, latents: not stop.is_set()
        try:
            pipe = self._pipeline(model)
            image, = pipe.generate(**params, callback=go_on)
            name = image_name(unit)
            sha = write_png(self.out, name, image)
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - one row's failure is recorded; the batch goes on
            return {"error": _message(e), "worker": self.name, "seconds": round(time.perf_counter() - start, 3)}
        return {"file": name, "sha256": sha, "seconds": round(time.perf_counter() - start, 3), "worker": self.name}

    def _pipeline(self, model: str):
        if model in self.failed:
            raise ValueError(self.failed[model])
        if model != self.model:
            import sdkit
            self.pipe = self.model = None  # free the previous model before loading the next
            try:
                self.pipe = sdkit.load(model, backend=self.backend, device=self.device, dtype=self.dtype)
                self.name = f"{socket.gethostname()}:{os.getpid()}:{self.pipe.backend.device}"
            except Exception as e:  # noqa: BLE001
                self.failed[model] = f"model {model!r}: {_message(e)}"
                raise ValueError(self.failed[model]) from None
            self.model = model
        return self.pipe


def _message(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ValueError, OSError)) or type(error).__module__.startswith("sdkit"):
        return text
    return f"{type(error).__name__}: {text}"
