"""Timesteps and noise for each training step, drawn by numpy from the run's generator: the same seed gives the
same draws on every backend, so torch and MLX runs on the same data agree step by step."""

from __future__ import annotations

import numpy as np


def draw(rng: np.random.Generator, shape: tuple[int, ...], num_train_timesteps: int,
         noise_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """-> t (B,) int64 uniform in [0, num_train_timesteps), noise (B, C, h, w) float32 standard normal, plus
    noise_offset x a per-channel constant (Guttenberg 2023, "Diffusion with offset noise": lets the model learn
    very dark and very bright images)."""
    B, C = shape[:2]
    t = rng.integers(0, num_train_timesteps, B)
    noise = rng.standard_normal(shape, dtype=np.float32)
    if noise_offset:
        noise += np.float32(noise_offset) * rng.standard_normal((B, C, 1, 1), dtype=np.float32)
    return t, noise
