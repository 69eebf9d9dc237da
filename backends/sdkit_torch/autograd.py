"""When the inference-only fast paths (cpu_attention, oneDNN linear, in-place GEGLU, the VAE's cached upsampling
kernel) must give way to plain differentiable torch: gradients are being recorded and one of the inputs wants
them. Those kernels would otherwise detach their outputs, drop weight gradients or overwrite saved tensors."""

from __future__ import annotations

import torch


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
