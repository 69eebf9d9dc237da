"""Local runner: one worker per device in this process (a thread each), results handed to the driver in order
of completion. By default the backend's `devices()` (torch: every CUDA GPU, else the fastest device; a
backend without it: its default device); on a CPU one worker uses all cores. One device runs inline."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable

from .. import backends
from ..errors import Cancelled
from .dispenser import Dispenser
from .rows import Unit
from .worker import Worker


def run(units: list[Unit], out: str, on_result: Callable[[Unit, dict], None], stop: threading.Event, *,
        devices: Iterable[str] | None = None, backend: str = "auto", dtype: str | None = None) -> None:
    """Until every unit is done or `stop` is set (then the images being made are cancelled within a step)."""
    devices = list(devices or _default_devices(backend))
    todo = Dispenser(units, len(devices))  # grouped: a worker reuses its loaded pipeline
    if len(devices) == 1:
        worker = Worker(out, backend, devices[0], dtype)
        while not stop.is_set() and (unit := todo.next(0)) is not None:
            try:
                on_result(unit, worker.run(unit, stop))
            except Cancelled:
                return
        return

    results: queue.Queue = queue.Queue()

    def loop(i: int) -> None:
        try:
            worker = Worker(out, backend, devices[i], dtype)
            while not stop.is_set() and (unit := todo.next(i)) is not None:
                results.put((unit, worker.run(unit, stop)))
        except Cancelled:
            pass
        finally:
            results.put(None)  # this thread is finished

    threads = [threading.Thread(target=loop, args=(i,), daemon=True, name=f"sdkit-batch {d}")
               for i, d in enumerate(devices)]
    for t in threads:
        t.start()
    running = len(threads)
    while running:
        item = results.get()
        if item is None:
            running -= 1
        else:
            on_result(*item)


def _default_devices(backend: str) -> list[str | None]:
    cls = backends.get(backend)
    return cls.devices() if hasattr(cls, "devices") else [None]
