"""The output folder: images written atomically, and manifest.jsonl, the record of what is done.

A unit (one image of a row) is done once its manifest line is flushed and fsynced, which happens only after
its PNG is fully written and renamed into place. So after any crash a unit is either done (line and file) or
not (no line; at most a stale file, rewritten with the same name and seed on the rerun). Failed units get a
line with `error`; a rerun drops those lines and tries them again, so each unit ends with exactly one line.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

from . import storage
from .rows import Unit

MANIFEST = "manifest.jsonl"
LOCK = ".lock"
STATE = "batch.json"  # the salt seedless rows draw their seeds from, so a resumed batch draws the same ones


def image_name(unit: Unit) -> str:
    return f"{unit.row:05d}-{unit.params['seed']}.png"


def write_png(out: str, name: str, image: Image.Image) -> str:
    """Write `image` (with its parameters text) as out/name (a folder or a URL), atomically and durably; its
    sha256 (hex)."""
    info = PngImagePlugin.PngInfo()
    if image.info.get("parameters"):
        info.add_text("parameters", image.info["parameters"])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    if storage.is_url(out):
        storage.put(out, name, data)
    else:
        _write_atomic(Path(out) / name, data)
    return hashlib.sha256(data).hexdigest()


class Manifest:
    """manifest.jsonl in the output folder `out`: which units are done, and appending one line per finished
    unit. For a URL, the driver's copy is in storage.local_folder(out), uploaded as it grows."""

    def __init__(self, out: str | Path):
        self.url = str(out) if storage.is_url(out) else None
        self.folder = storage.local_folder(self.url) if self.url else Path(out)
        self.path = self.folder / MANIFEST
        self.folder.mkdir(parents=True, exist_ok=True)
        self._uploaded = 0.0
        self._lock = open(self.folder / LOCK, "a")
        try:  # one driver per folder: two would both make the rows neither has recorded yet
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ValueError(f"{self.folder}: another sdkit-batch is writing there; wait for it or use another "
                             "output folder") from None
        for stale in self.folder.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        if self.url and not self.path.exists():  # resumed on another machine than the one that began it
            for name in (STATE, MANIFEST):
                data = storage.get(self.url, name)
                if data is not None:
                    _write_atomic(self.folder / name, data)
        self.salt = self._salt()
        self.done: dict[tuple[int, int], dict] = {}
        self._kept: list[str] = []  # the done lines, as read
        if self.path.exists():
            for text in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(text)
                except json.JSONDecodeError:  # a line torn by a crash: its unit is not done
                    continue
                if not entry.get("error"):
                    self.done[(entry["row"], entry["copy"])] = entry
                    self._kept.append(text)
        self._file = None

    def start(self, units: list[Unit]) -> list[Unit]:
        """The units still to make. ValueError, before anything changes, when the done lines are not this
        batch's (a row of another input, or other arguments)."""
        ours = {u.key: u for u in units}
        for key, entry in self.done.items():
            unit = ours.get(key)
            if unit is None or entry["parameters"] != _jsonable(unit.params):
                raise ValueError(f"{self.path} records another batch (its row {key[0]} differs from "
                                 f"{unit.source if unit else 'any row of this input'}); use another output folder")
        # failed and torn lines go: their units are made again and get a new line
        _write_atomic(self.path, "".join(t + "\n" for t in self._kept).encode())
        return [u for u in units if u.key not in self.done]

    def append(self, unit: Unit, result: dict) -> dict:
        """Record a finished unit (result: file, sha256, seconds, worker, or error); flushed and fsynced."""
        entry = {"row": unit.row, "copy": unit.copy, "source": unit.source, "parameters": _jsonable(unit.params),
                 "seed_drawn": unit.seed_drawn, "file": None, "sha256": None, "seconds": None, "worker": None,
                 "error": None} | result
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if not entry["error"]:
            self.done[unit.key] = entry
        if self.url and time.monotonic() - self._uploaded > storage.UPLOAD_EVERY:
            self._upload()
        return entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.url:
                self._upload()
        self._lock.close()  # releases the lock

    def _upload(self) -> None:
        storage.put(self.url, MANIFEST, self.path.read_bytes())
        self._uploaded = time.monotonic()

    def _salt(self) -> int:
        state = self.folder / STATE
        if state.exists():
            return json.loads(state.read_text())["salt"]
        salt = secrets.randbits(32)
        _write_atomic(state, json.dumps({"salt": salt}).encode())
        if self.url:
            storage.put(self.url, STATE, state.read_bytes())
        return salt


def _write_atomic(path: Path, data: bytes) -> None:
    """tmp file in the same folder, fsync, rename: readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temp file behind
        os.unlink(tmp)
        raise


def _jsonable(params: dict) -> dict:
    """As the manifest holds them (tuples as lists, at any depth), to compare with what it holds."""
    return json.loads(json.dumps(params))
