"""Exponential moving average of the trained weights (Polyak & Juditsky 1992), as diffusers' EMAModel keeps it
with its defaults (no warmup power, update_after_step=0): after optimizer step n (1-based)

    ema <- d_n * ema + (1 - d_n) * weights,   d_1 = 0 (a copy),  d_n = min(decay, n / (n + 9))

so a short run is not held at the starting weights. The output is written from the average; the run itself
(and its sample images) uses the trained weights."""

from __future__ import annotations


def decay(n: int, target: float) -> float:
    """d_n for the n-th update (1-based) towards `target` (e.g. 0.9999)."""
    return 0.0 if n <= 1 else min(target, n / (n + 9))
