"""Weights -> a module built on the meta device: a strict dictionary match, each tensor cast once."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from sdkit.interfaces import Weights
from sdkit.weights import check_shapes, read_tensors

M = TypeVar("M", bound=nn.Module)


def load(build: Callable[[], M], weights: Weights, component: str, device: torch.device, dtype: torch.dtype) -> M:
    """Build a module without allocating it, check names and shapes against `weights`, then read each
    tensor and move it to `device` in `dtype` in one step (no second full copy of the weights)."""
    with torch.device("meta"):
        module = build()
    check_shapes({name: tuple(t.shape) for name, t in module.state_dict().items()}, weights, component)
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in read_tensors(weights, "pt")}
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False).eval()

