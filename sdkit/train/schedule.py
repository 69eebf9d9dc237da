"""Learning rate per optimizer step: linear warmup, then constant or cosine decay to zero (diffusers' and
kohya's `constant_with_warmup` and `cosine`)."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, total: int, base: float, warmup: int = 0, kind: str = "constant") -> float:
    """The rate for optimizer step `step` (0-based) of `total`."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr_schedule {kind!r} is not known; use one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    if kind == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))
