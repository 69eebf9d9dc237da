"""Where a batch's files go: a local (or shared, mounted) folder, or an fsspec URL (s3://, gs://, ...) when
fsspec and the protocol's package are installed.

A URL's images are uploaded whole by the workers (an object appears complete or not at all); its manifest and
state are kept in a local folder by the driver, which uploads the manifest as it grows and at the end, and
downloads them when a batch is resumed on a machine that does not have them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

UPLOAD_EVERY = 10.0  # seconds between uploads of a URL's growing manifest


def is_url(out: str | Path) -> bool:
    return "://" in str(out) and not str(out).startswith("file://")


def filesystem(url: str):
    """(fsspec filesystem, path) of `url`; ImportError naming what to install."""
    try:
        import fsspec.core
    except ImportError:
        raise ImportError(f"{url}: writing to URLs needs fsspec (pip install fsspec and the protocol's package, "
                          "e.g. s3fs), or use a folder every worker can write") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise ImportError(f"{url}: {e}") from None


def put(url: str, name: str, data: bytes) -> None:
    fs, root = filesystem(url)
    fs.pipe_file(f"{root.rstrip('/')}/{name}", data)


def get(url: str, name: str) -> bytes | None:
    fs, root = filesystem(url)
    path = f"{root.rstrip('/')}/{name}"
    return fs.cat_file(path) if fs.exists(path) else None


def local_folder(url: str) -> Path:
    """The driver's folder for a URL's manifest, state and lock."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdkit" / "batch"
    return cache / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
