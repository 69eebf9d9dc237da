"""Reading canonical weights out of safetensors files, in whichever framework a backend works with."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from safetensors import safe_open

from .errors import CheckpointError
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


def check_shapes(expected: dict[str, tuple[int, ...]], weights: Weights, component: str, show: int = 3) -> None:
    """One CheckpointError naming every missing, unexpected and mis-shaped tensor of `component`.

    `expected` maps a module's parameter names to their shapes in the stored (canonical, PyTorch) layout."""
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    misshaped = [f"{name} {weights[name].shape} vs {shape}" for name, shape in expected.items()
                 if name in weights and tuple(weights[name].shape) != tuple(shape)]
    problems = [f"{len(names)} {kind} ({', '.join(names[:show])}{', ...' if len(names) > show else ''})"
                for kind, names in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped, file vs model", misshaped)) if names]
    if problems:
        files = sorted({str(ref.file) for ref in weights.values()}) or ["no files"]
        raise CheckpointError(f"{component} weights in {', '.join(files)} do not match the model: "
                              + "; ".join(problems))
