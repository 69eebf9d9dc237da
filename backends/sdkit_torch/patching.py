"""LoRA patches on a live module: each delta added to its weight in place (a CUDA graph or torch.compile keeps
reading the same storage), the touched weights' originals kept so that restoring gives the exact base weights."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from sdkit.adapters.lora import Patch


class Patcher:
    def __init__(self):
        self.patches: dict[str, Patch] = {}  # the set in force: applied now, and at every rebuild of the module
        self.saved: dict[str, torch.Tensor] = {}  # originals of the weights patched in the built module

    def set(self, module: nn.Module | None, patches: Mapping[str, Patch]) -> None:
        """Make `patches` the set in force; module None: not built now (the next build applies it)."""
        if module is not None:
            self._restore(module)
        self.patches = dict(patches)
        if module is not None:
            self.applied(module)

    @torch.inference_mode()  # a module built under inference mode holds inference tensors
    def applied(self, module: nn.Module) -> nn.Module:
        """Patch a freshly built (base) module with the set in force; returns it."""
        self.saved = {}
        params = dict(module.named_parameters())
        for name, patch in self.patches.items():
            p = params[name]
            self.saved[name] = p.detach().clone()
            base = self.saved[name].float()
            delta = torch.from_numpy(patch(base.cpu().numpy() if patch.needs_base else None)).to(p.device)
            if p.dtype == torch.float32:
                p.add_(delta)
            else:
                p.copy_(base + delta)  # summed in float32, rounded once to p's dtype
        return module

    @torch.inference_mode()  # a module built under inference mode holds inference tensors
    def _restore(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        for name, original in self.saved.items():
            params[name].copy_(original)
        self.saved = {}
