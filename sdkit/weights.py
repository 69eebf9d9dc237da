"""Reading canonical weights out of safetensors files, in whichever framework a backend works with."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from safetensors import safe_open

from .interfaces import Array, Weights


def read_tensors(weights: Weights, framework: str) -> Iterator[tuple[str, Array]]:
    """Yield (canonical name, tensor) for every weight, read with safetensors' `framework`
    ("pt", "mlx", "numpy"), one file open at a time, with each TensorRef's transform applied."""
    by_file = defaultdict(list)
    for name, ref in weights.items():
        by_file[ref.file].append((name, ref))
    for file, refs in by_file.items():
        with safe_open(str(file), framework=framework) as f:
            for name, ref in refs:
                x = f.get_tensor(ref.key)
                yield name, ref.transform(x) if ref.transform else x
