"""A1111's file hashes for image metadata: `Model hash` and `VAE hash` are "AutoV2", the first 10 hex digits of
the sha256 of the whole file (Civitai looks models up by it).

Hashing a 2-7 GB checkpoint takes seconds, so each file's sha256 is computed once and kept in a JSON cache,
$SDKIT_CACHE_DIR/hashes.json (default $XDG_CACHE_HOME/sdkit or ~/.cache/sdkit), keyed by the absolute path and
valid while the file's size and modification time are unchanged (A1111's cache.json keeps sha256 and mtime).
`sdkit.load` starts hashing a file it has not seen in a background thread (hashlib and file reads release the
GIL), so the first image does not wait for it and generate() timings stay free of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

AUTOV2 = 10  # hex digits A1111 writes of a model's or VAE's sha256

_known: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256): this process's share of the cache
_running: dict[str, threading.Thread] = {}  # path -> the thread hashing it (start)
_lock = threading.Lock()  # one hashing (and cache update) at a time


def cache_file() -> Path:
    if os.environ.get("SDKIT_CACHE_DIR"):
        return Path(os.environ["SDKIT_CACHE_DIR"]) / "hashes.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdkit" / "hashes.json"


def start(path: str | Path) -> None:
    """Hash a file in a background thread (a daemon: it never holds up the interpreter's exit); sha256() waits
    for it."""
    key = str(Path(path).resolve())
    if key not in _running or not _running[key].is_alive():
        _running[key] = threading.Thread(target=_quietly, args=(key,), name=f"sdkit hash {key}", daemon=True)
        _running[key].start()


def _quietly(path: str) -> None:
    try:
        sha256(path)
    except OSError:  # gone or unreadable: parameters() says nothing of it, sha256() would raise it
        pass


def sha256(path: str | Path) -> str:
    """The file's sha256 (hex), from the cache when the file has not changed since it was hashed."""
    path = Path(path).resolve()
    with _lock:
        return _sha256(path)


def _sha256(path: Path) -> str:
    stat, key = path.stat(), str(path)
    if key not in _known:
        entry = _read_cache().get(key)
        if isinstance(entry, dict) and {"size", "mtime_ns", "sha256"} <= entry.keys():
            _known[key] = entry["size"], entry["mtime_ns"], entry["sha256"]
    size, mtime, digest = _known.get(key, (None, None, None))
    if (size, mtime) != (stat.st_size, stat.st_mtime_ns):
        digest = _compute(path)
        _known[key] = stat.st_size, stat.st_mtime_ns, digest
        _write_cache(key, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    return digest


def autov2(path: str | Path) -> str:
    """A1111's `Model hash` / `VAE hash` of a file."""
    return sha256(path)[:AUTOV2]


def _compute(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: hash again (and rewrite it)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    """Add one entry, atomically (other processes may be writing too: the last one wins, nothing is corrupt).
    A cache that cannot be written (read-only home) only costs hashing again next time."""
    file = cache_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache() | {key: entry}
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".tmp", dir=file.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, file)
    except OSError:
        pass


def parameters(checkpoint) -> dict[str, str]:
    """A1111's `Model hash`, `VAE hash` and `VAE` (the VAE's file name, written only when one replaces the
    checkpoint's, as A1111 does) for an sdkit.Checkpoint; folders and Hub repos have no hash."""
    out = {"Model hash": autov2(checkpoint.path)} if checkpoint.path.is_file() else {}
    if checkpoint.vae_name:
        if checkpoint.vae_file.is_file():
            out["VAE hash"] = autov2(checkpoint.vae_file)
        out["VAE"] = checkpoint.vae_name
    return out


def start_for(checkpoint) -> None:
    """Start hashing what parameters() will need: the checkpoint's file and the VAE's (folders have no hash)."""
    for file in (checkpoint.path, checkpoint.vae_file):
        if file is not None and file.is_file():
            start(file)
