"""Components whose weights are cheap to read again are kept in memory one at a time.

On the CPU, a weight stored in the compute dtype is read zero-copy: the tensor is the safetensors file's pages
(mmap), and page faults bring them in. Building such a module again costs ~0.1 s plus those faults (SD1.5's
float32 UNet: 0.3 s in all, against 2.3 s for one step at 256x256), while the OS page cache keeps the file.
So generate() holds the text encoder, then the UNet, then the VAE, and its peak memory is the UNet's weights
and activations instead of all three components' weights at once. Components that had to be converted (other
dtypes, other devices) stay built: reading them again would mean converting them again.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


class Residency:
    """The one evictable component built at present."""

    def __init__(self):
        self.current: Lazy | None = None


class Lazy:
    """A component's module, built now (so a load error surfaces at load time) and built again on use after
    another evictable component took its place. residency None: never evicted."""

    def __init__(self, build: Callable[[], nn.Module], residency: Residency | None):
        self.build = build
        self.residency = residency
        self.evictable = residency  # set aside while pinned
        self.module: nn.Module | None = build()
        self._take_place()

    def pin(self, pinned: bool) -> None:
        """Keep the module built (a LoRA-patched one: building it again would mean patching it again at every
        call), or let it be evicted again."""
        r = self.evictable
        if r is not None and pinned and r.current is self:
            r.current = None
        self.residency = None if pinned else r

    def get(self) -> nn.Module:
        self._take_place()  # first, so the component it evicts is freed before this one is built
        if self.module is None:
            self.module = self.build()
        return self.module

    def drop(self) -> None:
        self.module = None

    def _take_place(self) -> None:
        r = self.residency
        if r is None or r.current is self:
            return
        if r.current is not None:
            r.current.drop()
        r.current = self
