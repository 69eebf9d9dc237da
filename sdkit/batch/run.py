"""sdkit.batch(): rows in, images and manifest.jsonl out, resumable, on local devices or a Ray cluster."""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import rows as rows_, storage
from .manifest import Manifest
from .rows import Unit


@dataclass
class Summary:
    total: int  # units (images) in the batch
    skipped: int  # done before this run (resumed)
    done: int = 0  # made by this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (FILE:LINE, error)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.skipped + self.done == self.total

    def __str__(self) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        text = (f"{self.done} images made, {self.skipped} already done, {len(self.failed)} failed, of {self.total}"
                f" in {self.seconds:.1f} s ({rate:.2f} images/s)")
        lines = [f"  {source}: {error}" for source, error in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more (see manifest.jsonl)")
        return "\n".join([text, *lines])


def batch(rows: str | Path | list[dict], out: str | Path, model: str | Path | None = None, *,
          params: dict | None = None, repeat: int = 1, devices: list[str] | None = None, ray: str | None = None,
          cpus_per_worker: int | None = None, backend: str = "auto", dtype: str | None = None,
          progress: bool = True) -> Summary:
    """Generate an image per row (`repeat` per row, seeds seed, seed + 1, ...) into the folder `out`.

    rows: a .txt (one prompt per line), .csv or .jsonl file whose columns are generate()'s arguments (and
    `model`), or a list of such dicts. params: defaults for every row. model: the default model.
    devices: local workers, one per device (default: one per CUDA GPU, else one on the fastest device, which
    on a CPU uses all cores).
    ray: "auto" or "HOST:PORT" to run one worker per GPU (or per node, or per `cpus_per_worker` CPUs) of a Ray
    cluster; `out` must then be a folder every node can write, or an fsspec URL (s3://...; see storage.py).
    Rerunning with the same rows and `out` resumes: done images are kept, failed and unfinished ones are made.
    Bad rows raise rows.RowsError (all of them listed) before any work; a row that fails at run time (a
    missing model, an unreadable init image) is recorded in manifest.jsonl and the Summary, and the rest go on.
    """
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    table = rows_.read(rows, params, None if model is None else str(model))
    missing = [source for source, _, p in table if "model" not in p]
    if missing:
        raise rows_.RowsError(f"{len(missing)} rows without a model ({', '.join(missing[:5])}"
                              f"{', ...' if len(missing) > 5 else ''}): give the default model (-m) or a model column")
    out = str(out) if storage.is_url(out) else str(Path(out).absolute())
    manifest = Manifest(out)
    units = rows_.units(table, repeat, manifest.salt)
    try:
        todo = manifest.start(units)
    except ValueError:
        manifest.close()
        raise
    summary = Summary(total=len(units), skipped=len(units) - len(todo))
    bar = _bar(summary, progress)
    start = time.perf_counter()

    def on_result(unit: Unit, result: dict) -> None:
        entry = manifest.append(unit, result)
        if entry["error"]:
            summary.failed.append((unit.source, entry["error"]))
            bar.set_postfix(failed=len(summary.failed))
        else:
            summary.done += 1
        bar.update(1)

    try:
        with _interruptible() as stop:
            if todo and ray is not None:
                from . import cluster
                cluster.run(todo, out, on_result, stop, address=ray, backend=backend, dtype=dtype,
                            cpus_per_worker=cpus_per_worker)
            elif todo:
                from . import local
                local.run(todo, out, on_result, stop, devices=devices, backend=backend, dtype=dtype)
    finally:
        summary.seconds = time.perf_counter() - start
        bar.close()
        manifest.close()
    if stop.is_set():
        raise KeyboardInterrupt
    return summary


@contextmanager
def _interruptible():
    """An Event set by Ctrl-C (SIGINT), which the runners check between steps: an interrupt then never lands
    inside torch or Ray, where it could pass for a row's failure. A second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _bar(summary: Summary, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=summary.total, initial=summary.skipped, unit="img", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
