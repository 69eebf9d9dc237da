"""Weights -> an mlx.nn module: a strict dictionary match, each tensor put in MLX's layout and dtype once."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, TypeVar

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from sdkit.errors import CheckpointError
from sdkit.interfaces import Weights

M = TypeVar("M", bound=nn.Module)
SHOW = 3  # names listed per kind of mismatch


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


def mlx_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """A stored (PyTorch layout) shape as the module's parameter of `ndim` dimensions holds it."""
    if len(shape) == 4 and ndim == 4:
        return shape[0], shape[2], shape[3], shape[1]  # conv (O, I, kH, kW) -> (O, kH, kW, I)
    if len(shape) == 4 and ndim == 2 and shape[2:] == (1, 1):
        return shape[:2]  # a 1x1 conv is a Linear over the channels of an NHWC map
    return tuple(shape)


def to_mlx_layout(x: mx.array, like: mx.array) -> mx.array:
    if x.ndim == 4 and like.ndim == 4:
        return x.transpose(0, 2, 3, 1)
    if x.ndim == 4 and like.ndim == 2:
        return x.reshape(x.shape[:2])
    return x


def check(module: nn.Module, weights: Weights, component: str) -> dict[str, mx.array]:
    """The module's parameters by name, or one CheckpointError naming every kind of mismatch."""
    expected = dict(tree_flatten(module.parameters()))
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    misshaped = [f"{name} {tuple(weights[name].shape)} vs {_stored_shape(p.shape, len(weights[name].shape))}"
                 for name, p in expected.items()
                 if name in weights and mlx_shape(tuple(weights[name].shape), p.ndim) != tuple(p.shape)]
    problems = [f"{len(names)} {kind} ({', '.join(names[:SHOW])}{', ...' if len(names) > SHOW else ''})"
                for kind, names in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped, file vs model", misshaped)) if names]
    if problems:
        files = sorted({str(ref.file) for ref in weights.values()}) or ["no files"]
        raise CheckpointError(f"{component} weights in {', '.join(files)} do not match the model: "
                              + "; ".join(problems))
    return expected


def _stored_shape(shape: tuple[int, ...], stored_ndim: int) -> tuple[int, ...]:
    """A parameter's shape in the file's (PyTorch) layout, for error messages."""
    if len(shape) == 4:
        return shape[0], shape[3], shape[1], shape[2]
    if len(shape) == 2 and stored_ndim == 4:
        return (*shape, 1, 1)
    return tuple(shape)
