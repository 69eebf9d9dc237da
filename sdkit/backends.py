"""Backend registry: backends are plug-ins registered under the entry-point group `sdkit.backends`.

Nothing here imports a framework; a backend's module is imported only when it is asked for.
"""

from __future__ import annotations

import importlib.util
import platform
from importlib.metadata import entry_points

from .errors import BackendError
from .interfaces import Backend


def names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="sdkit.backends"))


def get(name: str) -> type[Backend]:
    """The backend class registered as `name` ("auto": mlx on Apple silicon when installed, else torch)."""
    if name == "auto":
        name = _auto()
    found = {ep.name: ep for ep in entry_points(group="sdkit.backends")}
    if name not in found:
        valid = ", ".join(["auto", *sorted(found)])
        raise BackendError(f"backend {name!r} is not known; use one of: {valid}")
    try:
        cls = found[name].load()
    except ImportError as e:
        raise BackendError(f"backend {name!r} needs {e.name or 'a missing package'}: "
                           f"pip install 'sdkit-diffusion[{name}]'") from None
    if not cls.is_available():
        raise BackendError(f"backend {name!r} is installed but cannot run on this machine")
    return cls


def _auto() -> str:
    apple_silicon = platform.system() == "Darwin" and platform.machine() == "arm64"
    if apple_silicon and importlib.util.find_spec("mlx") is not None:
        return "mlx"
    if importlib.util.find_spec("torch") is not None:
        return "torch"
    raise BackendError("no backend installed: pip install 'sdkit-diffusion[torch]' (or [mlx] on Apple silicon)")
