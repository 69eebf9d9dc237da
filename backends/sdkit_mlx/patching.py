"""LoRA patches on a live module: patched weights replace the originals, which are kept (MLX arrays are
immutable, so keeping the array is keeping the exact base weight) and put back to restore."""

from __future__ import annotations

from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from sdkit.adapters.lora import Patch

from .loading import to_mlx_layout


class Patcher:
    def __init__(self):
        self.patches: dict[str, Patch] = {}  # the set in force: applied now, and at every rebuild of the module
        self.saved: dict[str, mx.array] = {}  # originals of the weights patched in the built module

    def set(self, module: nn.Module | None, patches: Mapping[str, Patch]) -> None:
        """Make `patches` the set in force; module None: not built now (the next build applies it)."""
        if module is not None and self.saved:
            module.load_weights(list(self.saved.items()), strict=False)
        self.saved = {}
        self.patches = dict(patches)
        if module is not None:
            self.applied(module)

    def applied(self, module: nn.Module) -> nn.Module:
        """Patch a freshly built (base) module with the set in force; returns it."""
        self.saved = {}
        params = dict(tree_flatten(module.parameters()))
        new = []
        for name, patch in self.patches.items():
            p = params[name]
            self.saved[name] = p
            base = p.astype(mx.float32)
            stored = None
            if patch.needs_base:  # back to PyTorch's layout: (O, kh, kw, I) -> (O, I, kh, kw)
                stored = np.array(base.transpose(0, 3, 1, 2) if base.ndim == 4 else base)
                stored = stored.reshape(patch.parts[0][0].shape)
            delta = to_mlx_layout(mx.array(patch(stored)), p)
            new.append((name, (base + delta).astype(p.dtype)))
        if new:
            mx.eval([x for _, x in new])
            module.load_weights(new, strict=False)
        return module
