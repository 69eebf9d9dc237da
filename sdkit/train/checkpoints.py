"""Resumable training state in one .safetensors file: the trainer's tensors (trained weights, AdamW moments)
plus, as metadata, the step, numpy's generator state and the rest of the epoch's batch order, so a resumed run
continues exactly as the uninterrupted one would have."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def save(path: Path, trainer, step: int, rng_state: dict, queue: list[list[int]]) -> None:
    tensors = {k: np.ascontiguousarray(v) for k, v in trainer.state().items()}
    meta = {"step": str(step), "rng": json.dumps(rng_state), "queue": json.dumps(queue)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # a Ctrl-C while writing leaves the previous state whole


def load(path: Path, trainer, rng: np.random.Generator) -> tuple[int, list[list[int]]]:
    """Restore the trainer and `rng`; -> (steps done, batches left in the epoch)."""
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    trainer.load_state(tensors)
    rng.bit_generator.state = json.loads(meta["rng"])
    return int(meta["step"]), json.loads(meta["queue"])
