"""Weights -> an mlx.nn module: a strict dictionary match, each tensor put in MLX's layout and dtype once."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, TypeVar

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from sdkit.interfaces import Weights
from sdkit.weights import check_shapes

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
    return module.load_weights(converted, strict=True)


def read(weights: Weights):
    """Yield (canonical name, stored tensor with its TensorRef.transform applied).

    mx.load rather than safetensors' "mlx" framework: that one goes through numpy, which has no bfloat16
    and copies each tensor once more; mx.load maps the file lazily, reading a tensor only when evaluated
    (so a single-file checkpoint costs only the component asked for)."""
    by_file = defaultdict(list)
    for name, ref in weights.items():
        by_file[ref.file].append((name, ref))
    for file, refs in by_file.items():
        stored = mx.load(str(file), format="safetensors")
        uses = Counter(ref.key for _, ref in refs)  # OpenCLIP's in_proj is q, k and v: three uses of one key
        for name, ref in refs:
            x = stored[ref.key]
            uses[ref.key] -= 1
            if not uses[ref.key]:
                del stored[ref.key]  # an evaluated array stays in memory while anything refers to it
            yield name, ref.transform(x) if ref.transform else x


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
