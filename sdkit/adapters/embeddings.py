"""Textual-inversion embeddings (Gal et al. 2022): vectors that stand in for a word in the prompt.

Files, as AUTOMATIC1111 reads them (modules/textual_inversion/textual_inversion.py), safetensors only:
- A1111's: one tensor `emb_params` (n, C); SDXL ones `clip_l` (n, 768) and `clip_g` (n, 1280), one per encoder.
- diffusers' `learned_embeds.safetensors`: {token: (C,) or (n, C)}.
Any file holding one tensor is read as that tensor's n vectors, whatever its key. As in A1111 the trigger is
the file's stem ("EasyNegative.safetensors" -> the word EasyNegative), matched on its CLIP tokens, so
case-insensitively; a diffusers file's own token name is not used. `.pt` / `.bin` embeddings are Python
pickles and are never opened.

Embeddings are found by stem directly inside each configured folder (the first folder holding a name wins)
and read when a prompt names them; files changed on disk are read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import PICKLES, read_header
from ..errors import CheckpointError
from ..tokenizer import Tokenizer

ENV = "SDKIT_EMBEDDING_DIRS"
SUFFIX = ".safetensors"
SDXL_KEYS = ("clip_l", "clip_g")  # SDXL's first (CLIP ViT-L) and second (OpenCLIP bigG) text encoder
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # BF16 widened to float32 by hand


@dataclass(frozen=True)
class Embedding:
    name: str  # the trigger word: the file's stem
    path: Path
    vectors: dict[str | None, np.ndarray]  # None -> (n, C) of a one-tensor file; SDXL_KEYS -> (n, C) each

    def __len__(self) -> int:
        """Vectors, each taking one token position."""
        return len(next(iter(self.vectors.values())))

    def for_encoder(self, key: str | None, width: int) -> np.ndarray:
        """The (n, width) float32 vectors for the text encoder `key` names (None: a model with one text
        encoder); CheckpointError saying why they do not fit it."""
        if key not in self.vectors:
            if key is None:
                raise CheckpointError(f"embedding {self.path.name} is an SDXL one (clip_l, clip_g); this model "
                                      "has one text encoder")
            raise CheckpointError(f"embedding {self.path.name} holds one tensor; SDXL takes clip_l and clip_g")
        v = self.vectors[key]
        if v.shape[1] != width:
            raise CheckpointError(f"embedding {self.path.name} is {v.shape[1]} wide, this model's text encoder "
                                  f"{width}: it was made for another model family")
        return v


def read_embedding(path: str | Path) -> Embedding:
    """An embedding file -> Embedding; CheckpointError for pickles and files that hold no embedding."""
    path = Path(path)
    if path.suffix.lower() in PICKLES:
        raise CheckpointError(f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code when "
                              "loaded; sdkit never opens them. Use the embedding's .safetensors file")
    header = read_header(path)
    if all(k in header for k in SDXL_KEYS):
        keys = {k: k for k in SDXL_KEYS}
    elif len(header) == 1:
        keys = {None: next(iter(header))}
    else:
        raise CheckpointError(f"{path}: holds {len(header)} tensors ({', '.join(list(header)[:3])}); an embedding "
                              "has one (A1111's emb_params, a diffusers token) or SDXL's clip_l and clip_g")
    for stored in keys.values():
        dtype, shape = header[stored]
        if dtype not in _NUMPY or len(shape) not in (1, 2) or 0 in shape:
            raise CheckpointError(f"{path}: tensor {stored!r} is {dtype} {list(shape)}; embedding vectors are "
                                  "floating point, (n, width) or (width,)")
    arrays = _read_arrays(path, set(keys.values()))
    vectors = {k: arrays[stored].reshape(-1, header[stored][1][-1]) for k, stored in keys.items()}
    if len({len(v) for v in vectors.values()}) > 1:
        raise CheckpointError(f"{path}: clip_l has {len(vectors['clip_l'])} vectors but clip_g "
                              f"{len(vectors['clip_g'])}; the two must match")
    return Embedding(path.stem, path, vectors)


def short_hash(path: str | Path) -> str:
    """What A1111 writes in "TI hashes": the first 12 hex digits of the file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:12]


def folders(dirs: str | os.PathLike | Sequence[str | os.PathLike] | None, env: str = ENV,
            what: str = "embedding_dirs") -> tuple[Path, ...]:
    """`dirs` (one folder or several), or when None the os.pathsep-separated list in `env`; ValueError naming
    a folder that is not there."""
    source = what
    if dirs is None:
        dirs, source = [d for d in os.environ.get(env, "").split(os.pathsep) if d], env
    elif isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    out = []
    for d in dirs:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise ValueError(f"{source}: {str(d)!r} is not a folder")
        out.append(path)
    return tuple(out)


def adapter_files(dirs: Sequence[Path]) -> dict[str, Path]:
    """stem -> file of the adapter files (embeddings, LoRAs) in `dirs`: the first folder holding a stem wins, a
    .safetensors file over a pickle of the same stem (which is listed so that using it can be refused by name)."""
    found: dict[str, Path] = {}
    for folder in dirs:
        here: dict[str, Path] = {}
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            suffix = os.path.splitext(entry.name)[1].lower()
            if suffix not in (SUFFIX, *PICKLES) or entry.name.startswith(".") or not entry.is_file():
                continue  # another kind of file, or a hidden one (macOS's ._name AppleDouble companions)
            stem = entry.name[: -len(suffix)]
            if stem not in here or suffix == SUFFIX:
                here[stem] = Path(entry.path)
        for stem, path in here.items():
            found.setdefault(stem, path)
    return found


class Embeddings:
    """The embedding files of some folders, by stem; each read when first used, and again when it changes."""

    def __init__(self, dirs: Sequence[Path] = ()):
        self.dirs = tuple(Path(d) for d in dirs)
        self._read: dict[Path, tuple[tuple[int, int], Embedding | CheckpointError]] = {}
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        self._triggers: dict[Tokenizer, tuple[tuple[tuple[str, Path], ...], dict]] = {}

    def __repr__(self) -> str:
        return f"Embeddings({[str(d) for d in self.dirs]})"

    def files(self) -> dict[str, Path]:
        """stem -> file, listed afresh (adapter_files)."""
        return adapter_files(self.dirs)

    def get(self, path: Path) -> Embedding:
        """The embedding in `path` (one of files()), read once per version of the file; CheckpointError if
        it cannot be used."""
        stamp = _stamp(path)
        cached = self._read.get(path)
        if cached is None or cached[0] != stamp:
            try:
                result = read_embedding(path)
            except CheckpointError as e:
                result = e
            self._read[path] = cached = (stamp, result)
        if isinstance(cached[1], CheckpointError):
            raise cached[1]
        return cached[1]

    def short_hash(self, path: Path) -> str:
        stamp = _stamp(path)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != stamp:
            self._hashes[path] = cached = (stamp, short_hash(path))
        return cached[1]

    def triggers(self, tokenizer: Tokenizer) -> dict[int, list[tuple[tuple[int, ...], Path]]]:
        """A1111's lookup: first token id -> [(token ids of a stem, its file)], longest first. Rebuilt only
        when the folders' files change."""
        files = tuple(self.files().items())
        cached = self._triggers.get(tokenizer)
        if cached is not None and cached[0] == files:
            return cached[1]
        lookup: dict[int, list] = {}
        for (stem, path), ids in zip(files, tokenizer.encode_batch([stem for stem, _ in files])):
            if ids and not any(known == tuple(ids) for known, _ in lookup.get(ids[0], [])):
                lookup.setdefault(ids[0], []).append((tuple(ids), path))
        for candidates in lookup.values():
            candidates.sort(key=lambda c: -len(c[0]))
        self._triggers[tokenizer] = (files, lookup)
        return lookup


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _read_arrays(path: Path, keys: set[str]) -> dict[str, np.ndarray]:
    """The named tensors of a safetensors file (header already validated) as float32 numpy arrays."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        start = 8 + n
        out = {}
        for key in keys:
            entry = header[key]
            begin, end = entry["data_offsets"]
            f.seek(start + begin)
            a = np.frombuffer(f.read(end - begin), dtype=_NUMPY[entry["dtype"]])
            if entry["dtype"] == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            out[key] = a.astype(np.float32).reshape(entry["shape"])
    return out
