"""Linear layers on x86 CPUs through oneDNN's inner product rather than F.linear's matmul.

Measured on a 2-core AVX-512 CPU, the UNet's projections at 512x512: float32 1.1-1.35x faster (MKL's sgemm
reaches ~140 GFLOP/s there, oneDNN ~200), bfloat16 1.05-1.1x, and a GELU rides along as a post-op instead of a
pass over memory of its own (the feed-forward gate: float32 64 -> 46 ms). Elsewhere, under torch.compile (inductor
picks its own CPU kernels) and when gradients are recorded (the oneDNN op has no backward for the weights), this is
F.linear. bfloat16 on a CPU without it (where oneDNN cannot create the primitive) computes in float32: cpu_bf16.py.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_bf16
from .autograd import needs_grad

# The op is inductor's own (not a public API): look it up rather than assume this torch has it
ONEDNN = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False):
    """F.linear(x, weight, bias), then the exact (erf) GELU when `gelu`."""
    if cpu_bf16.emulated(x):
        return linear(x.float(), weight.float(), None if bias is None else bias.float(), gelu).to(x.dtype)
    if (ONEDNN and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and not torch.compiler.is_compiling() and not needs_grad(x, weight, bias)):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
