"""Weights -> an mlx.nn module: a strict dictionary match, each tensor put in MLX's layout and dtype once."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, TypeVar

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from sdkit.checkpoint import read_header
from sdkit.interfaces import Weights
from sdkit.weights import FLOAT8, check_shapes, float8_table, read_raw

M = TypeVar("M", bound=nn.Module)


def load(build: Callable[[], M], weights: Weights, component: str, dtype: mx.Dtype) -> M:
    """Build a module, check names and shapes against `weights`, then read each tensor, convert it and
    evaluate it before the next: the module's random init is lazy and never computed, and at most one
    stored tensor is in memory beside the converted weights (no second copy of the model)."""
    module = build()
    expected = check(module, weights, component)
    converted = []
    for name, x in read(weights):
        x = mx.contiguous(to_mlx_layout(x, expected[name]).astype(dtype))
        mx.eval(x)
        converted.append((name, x))
    return module.load_weights(converted, strict=True).eval()  # inference; training calls .train()


def read(weights: Weights):
    """Yield (canonical name, stored tensor with its TensorRef.transform applied).

    mx.load rather than safetensors' "mlx" framework: that one goes through numpy, which has no bfloat16
    and copies each tensor once more; mx.load maps the file lazily, reading a tensor only when evaluated
    (so a single-file checkpoint costs only the component asked for). mx.load reads float8 as raw bytes, or
    not at all (F8_E5M2), so files holding float8 tensors are read through numpy and decoded to float16."""
    by_file = defaultdict(list)
    for name, ref in weights.items():
        by_file[ref.file].append((name, ref))
    for file, refs in by_file.items():
        float8 = any(dtype in FLOAT8 for dtype, _ in read_header(file).values())
        keys = {ref.key for _, ref in refs}
        stored = _NumpyReader(file, keys) if float8 else mx.load(str(file), format="safetensors")
        uses = Counter(ref.key for _, ref in refs)  # OpenCLIP's in_proj is q, k and v: three uses of one key
        for name, ref in refs:
            x = stored[ref.key]
            uses[ref.key] -= 1
            if not uses[ref.key]:
                del stored[ref.key]  # an evaluated array stays in memory while anything refers to it
            yield name, ref.transform(x) if ref.transform else x


class _NumpyReader(dict):
    """key -> mx.array, each read from the file's memory map when first asked for."""

    def __init__(self, file, keys):
        super().__init__()
        self.raw = {key: (dtype, shape, data) for key, dtype, shape, data in read_raw(file, keys)}

    def __missing__(self, key):
        dtype, shape, data = self.raw.pop(key)
        if dtype in FLOAT8:
            x = mx.array(float8_table(dtype)[data].reshape(shape))
        elif dtype == "BF16":
            x = mx.array(data.view(np.uint16).reshape(shape)).view(mx.bfloat16)
        else:
            x = mx.array(data.view(_NUMPY[dtype]).reshape(shape))
        self[key] = x
        return x


_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def to_mlx_layout(x: mx.array, like: mx.array) -> mx.array:
    if x.ndim == 4 and like.ndim == 4:
        return x.transpose(0, 2, 3, 1)
    if x.ndim == 4 and like.ndim == 2:
        return x.reshape(x.shape[:2])
    return x


def check(module: nn.Module, weights: Weights, component: str) -> dict[str, mx.array]:
    """The module's parameters by name, or one CheckpointError naming every kind of mismatch."""
    expected = dict(tree_flatten(module.parameters()))
    check_shapes({name: _stored_shape(p.shape, len(weights[name].shape)) if name in weights else tuple(p.shape)
                  for name, p in expected.items()}, weights, component)
    return expected


def _stored_shape(shape: tuple[int, ...], stored_ndim: int) -> tuple[int, ...]:
    """A parameter's shape in the file's (PyTorch) layout: conv (O, kH, kW, I) -> (O, I, kH, kW), and a
    Linear standing in for a stored 1x1 conv -> (O, I, 1, 1)."""
    if len(shape) == 4:
        return shape[0], shape[3], shape[1], shape[2]
    if len(shape) == 2 and stored_ndim == 4:
        return (*shape, 1, 1)
    return tuple(shape)
