"""Local runner: one worker per device in this process (a thread each), results handed to the driver in order
of completion. One device (the default: the fastest one present; on a CPU it uses all cores) runs inline."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable

from .rows import Unit
from .worker import Worker


def run(units: list[Unit], out: str, on_result: Callable[[Unit, dict], None], *, devices: Iterable[str | None],
        backend: str = "auto", dtype: str | None = None) -> None:
    devices = list(devices) or [None]
    todo = sorted(units, key=lambda u: u.group)  # a group reuses its loaded pipeline
    if len(devices) == 1:
        worker = Worker(out, backend, devices[0], dtype)
        for unit in todo:
            on_result(unit, worker.run(unit))
        return

    work: queue.Queue[Unit] = queue.Queue()
    for unit in todo:
        work.put(unit)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def loop(device: str | None) -> None:
        try:
            worker = Worker(out, backend, device, dtype)
            while not stop.is_set():
                try:
                    unit = work.get_nowait()
                except queue.Empty:
                    break
                results.put((unit, worker.run(unit)))
        finally:
            results.put(None)  # this thread is finished

    threads = [threading.Thread(target=loop, args=(d,), daemon=True, name=f"sdkit-batch {d}") for d in devices]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            item = results.get()
            if item is None:
                running -= 1
            else:
                on_result(*item)
    finally:  # Ctrl-C: the threads finish the image they are making (written, not recorded: redone on resume)
        stop.set()
