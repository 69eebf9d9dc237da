"""Which unit a worker makes next: grouped by model and size, so pipelines and compiled graphs are reused."""

from __future__ import annotations

import threading

from .rows import Unit


class Dispenser:
    """Hands out units to `workers` workers (safe from several threads): a worker keeps to the group it ran
    last, else takes a group no other worker is on (each model loaded by as few workers as possible), else the
    next unit in group order."""

    def __init__(self, units: list[Unit], workers: int):
        self.todo = sorted(units, key=lambda u: u.group)
        self.last: list[tuple | None] = [None] * workers  # the group each worker ran last
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.todo)

    def next(self, worker: int) -> Unit | None:
        with self._lock:
            if not self.todo:
                return None
            others = {g for j, g in enumerate(self.last) if j != worker}
            unit = next((u for u in self.todo if u.group == self.last[worker]), None) or \
                next((u for u in self.todo if u.group not in others), self.todo[0])
            self.todo.remove(unit)
            self.last[worker] = unit.group
            return unit
