"""Reading canonical weights out of safetensors files, in whichever framework a backend works with."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import safe_open

from .errors import CheckpointError
from .interfaces import Array, TensorRef, Weights


# Bytes read per opening of a file. safetensors maps the whole file and its tensors are views of the mapping, so
# every page read stays resident until the last view of that opening is gone. Opening afresh every 256 MiB
# lets a loader that converts each tensor (another dtype or device) free what it has converted: peak = the
# converted weights + 256 MiB, not + the whole file (SD1.5 read as bfloat16, 256x256: peak RSS 5.4 -> 2.6 GB).
# Views kept as they are (zero-copy loads) keep their own opening's mapping alive.
OPEN_BYTES = 256 * 2**20

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT8 = ("F8_E4M3", "F8_E5M2")


def read_tensors(weights: Weights, framework: str) -> Iterator[tuple[str, Array]]:
    """Yield (canonical name, tensor) for every weight, read with safetensors' `framework`
    ("pt", "mlx", "numpy"), file by file, with each TensorRef's transform applied."""
    by_file = defaultdict(list)
    for name, ref in weights.items():
        by_file[ref.file].append((name, ref))
    for file, refs in by_file.items():
        for chunk in _chunks(refs, OPEN_BYTES):
            with safe_open(str(file), framework=framework) as f:
                for name, ref in chunk:
                    x = f.get_tensor(ref.key)
                    yield name, ref.transform(x) if ref.transform else x


def _chunks(refs: list[tuple[str, TensorRef]], limit: int) -> Iterator[list[tuple[str, TensorRef]]]:
    """Consecutive runs of refs holding about `limit` bytes each (at least one ref)."""
    chunk, size = [], 0
    for name, ref in refs:
        chunk.append((name, ref))
        size += math.prod(ref.shape) * ITEMSIZE.get(ref.dtype, 4)
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


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


def float8_table(dtype: str) -> np.ndarray:
    """(256,) float16: the value of each byte of a float8 tensor. Every float8 number is a float16 one, so
    decoding through this table is exact. F8_E4M3 is torch's float8_e4m3fn (no infinities, NaN at S.1111.111,
    448 the largest); F8_E5M2 is float16 with its low byte cut off."""
    b = np.arange(256, dtype=np.uint16)
    if dtype == "F8_E5M2":
        return (b << 8).view(np.float16)
    if dtype != "F8_E4M3":
        raise ValueError(f"{dtype!r} is not a float8 dtype; use one of {FLOAT8}")
    sign = np.where(b & 0x80, -1.0, 1.0)
    exponent, mantissa = (b >> 3) & 0xF, (b & 0x7).astype(np.float64)
    normal = (1 + mantissa / 8) * 2.0 ** (exponent.astype(np.float64) - 7)
    value = np.where(exponent == 0, mantissa / 8 * 2.0**-6, normal)  # exponent 0: subnormal
    value = np.where((b & 0x7F) == 0x7F, np.nan, value)
    return (sign * value).astype(np.float16)


def read_raw(file: Path, keys) -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray]]:
    """(key, safetensors dtype, shape, bytes as a uint8 array) for each of `keys`, from a memory map: for
    readers whose own safetensors loader lacks a dtype (MLX has no float8)."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(file, np.uint8, "r", offset=8 + n)
    for key in keys:
        entry = header[key]
        begin, end = entry["data_offsets"]
        yield key, entry["dtype"], tuple(entry["shape"]), data[begin:end]


def read_values(file: Path, key: str) -> tuple[float, ...]:
    """A small float tensor's values, flattened, read when a checkpoint is opened (Playground's edm_mean)."""
    (_, dtype, _, raw), = read_raw(file, [key])
    if dtype == "BF16":  # the upper half of a float32
        return tuple((np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).tolist())
    if dtype not in ("F64", "F32", "F16"):
        raise CheckpointError(f"{file}: tensor {key!r} is {dtype}; a float tensor (F32, F16, BF16) was expected")
    return tuple(np.frombuffer(raw, {"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype]).tolist())
