"""Weights -> a module built on the meta device: a strict dictionary match, each tensor cast once."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from sdkit.errors import CheckpointError
from sdkit.interfaces import Weights
from sdkit.weights import read_tensors

M = TypeVar("M", bound=nn.Module)
SHOW = 3  # names listed per kind of mismatch


def load(build: Callable[[], M], weights: Weights, component: str, device: torch.device, dtype: torch.dtype) -> M:
    """Build a module without allocating it, check names and shapes against `weights`, then read each
    tensor and move it to `device` in `dtype` in one step (no second full copy of the weights)."""
    with torch.device("meta"):
        module = build()
    check(module, weights, component)
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in read_tensors(weights, "pt")}
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def check(module: nn.Module, weights: Weights, component: str) -> None:
    """One CheckpointError naming every kind of mismatch between the module and the weights."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    misshaped = [f"{name} {tuple(weights[name].shape)} vs {shape}" for name, shape in expected.items()
                 if name in weights and tuple(weights[name].shape) != shape]
    problems = [f"{len(names)} {kind} ({', '.join(names[:SHOW])}{', ...' if len(names) > SHOW else ''})"
                for kind, names in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped, file vs model", misshaped)) if names]
    if problems:
        files = sorted({str(ref.file) for ref in weights.values()}) or ["no files"]
        raise CheckpointError(f"{component} weights in {', '.join(files)} do not match the model: "
                              + "; ".join(problems))
