"""Batch input: a .txt, .csv or .jsonl file (or a list of dicts) -> validated rows of generate() arguments.

Rows are numbered by their line in the file, 1-based (a CSV header is line 1, so its first data row is row 2);
a list's rows are numbered from 1. Every bad row is found before any work starts and reported in one error.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import micro_conditioning
from ..pipeline import Pipeline

# generate()'s arguments a row may set, plus the model it runs on; callback / latents / num_images / hook /
# output are the runner's (one PIL image per unit of work, so each is named and resumed alone); init_latents
# (an array) is not a row's.
_RUNNER = ("self", "callback", "latents", "num_images", "hook", "output", "init_latents")
COLUMNS = tuple(k for k in inspect.signature(Pipeline.generate).parameters if k not in _RUNNER) + ("model",)
# Types by name; a column not named here is text.
_INT = {"seed", "steps", "width", "height", "clip_skip", "mask_blur", "inpaint_padding", "hires_steps"}
_FLOAT = {"guidance_scale", "guidance_rescale", "eta", "strength", "aesthetic_score", "negative_aesthetic_score",
          "hires_scale", "hires_denoising"}
_PAIR = {n for n in micro_conditioning.ARGUMENTS if not n.endswith("aesthetic_score")} | {"hires_resize"}
# (height, width), (top, left)
_BOOL = {"composite"}
_LORAS = {"loras"}  # {file or name: weight or [text-encoder weight, UNet weight]}; in a CSV cell as JSON
_PATH = {"init_image", "mask_image"}  # relative to the input file's folder
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class RowsError(ValueError):
    """The input has bad rows; the message lists each as FILE:LINE: what is wrong."""


class _Unreadable(str):
    """What is wrong with a line that did not parse, in place of its values."""


@dataclass(frozen=True)
class Unit:
    """One image to make: a row's arguments with its seed (row `row`, copy `copy` of --repeat)."""

    row: int
    copy: int
    source: str  # FILE:LINE, for messages
    params: dict = field(hash=False)  # generate()'s keyword arguments + "model"; seed always set
    seed_drawn: bool = False  # the row had no seed: one was drawn for it

    @property
    def key(self) -> tuple[int, int]:
        return self.row, self.copy

    @property
    def group(self) -> tuple:
        """Units of one group reuse a loaded pipeline and its compiled graphs."""
        p = self.params
        return str(p.get("model")), p.get("width"), p.get("height")


def read(rows: str | Path | list[dict], defaults: dict | None = None,
         model: str | None = None) -> list[tuple[str, int, dict]]:
    """(FILE:LINE, line, arguments) for each row: the file's values over `defaults` (--param), converted to
    generate()'s types; RowsError listing every bad row."""
    cwd = base = Path.cwd()  # paths made absolute: workers on other nodes have another working folder
    if isinstance(rows, (str, Path)):
        path = Path(rows)
        base = path.parent.absolute()
        raw = _read_file(path)
    else:
        raw = [(f"rows[{i}]", i + 1, r) for i, r in enumerate(rows)]
    errors, out = [], []
    try:
        given = {"model": model} if model is not None else {}
        defaults = _convert(given | (defaults or {}), cwd)
    except ValueError as e:
        errors.append(f"--param {e}")
        defaults = {}
    for source, line, values in raw:
        if isinstance(values, _Unreadable):
            errors.append(f"{source}: {values}")
            continue
        try:
            params = defaults | _convert(values, base)
        except ValueError as e:
            errors.append(f"{source}: {e}")
            continue
        if not isinstance(params.get("prompt"), str):
            errors.append(f"{source}: no prompt")
            continue
        out.append((source, line, params))
    if errors:
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        valid = f" (columns: {', '.join(COLUMNS)})" if any("unknown column" in e for e in errors) else ""
        raise RowsError(f"{len(errors)} bad row{'s' * (len(errors) > 1)}: " + "; ".join(shown) + valid)
    if not out:
        raise RowsError(f"{rows if isinstance(rows, (str, Path)) else 'rows'}: no rows")
    return out


def units(rows: list[tuple[str, int, dict]], repeat: int = 1, salt: int | None = None) -> list[Unit]:
    """`repeat` units per row, seeds seed, seed + 1, ... (as generate()'s num_images); a seedless row's seed is
    drawn from `salt` (kept with the output, so a resumed batch draws the same seeds)."""
    salt = secrets.randbits(32) if salt is None else salt
    out = []
    for source, line, params in rows:
        drawn = params.get("seed") is None
        base = _drawn_seed(salt, line) if drawn else params["seed"]
        for copy in range(repeat):
            out.append(Unit(line, copy, source, params | {"seed": base + copy}, drawn))
    return out


def parse_param(text: str) -> tuple[str, object]:
    """--param key=value -> (key, value), the value read as JSON when it parses (7, 7.5, [1024, 1024]), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param {text!r}: use KEY=VALUE, e.g. steps=20")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _read_file(path: Path) -> list[tuple[str, int, dict | _Unreadable]]:
    """(FILE:LINE, line, values or a parse error) per non-empty line."""
    if path.suffix.lower() not in (".txt", ".csv", ".jsonl"):
        raise RowsError(f"{path}: use a .txt (one prompt per line), .csv or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise RowsError(f"{path} cannot be read: {e}") from None
    name, out = path.name, []
    if path.suffix.lower() == ".txt":
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                out.append((f"{name}:{i}", i, {"prompt": line.strip()}))
    elif path.suffix.lower() == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
                if not isinstance(values, dict):
                    values = _Unreadable(f"a JSON object is needed, got {type(values).__name__}")
            except json.JSONDecodeError as e:
                values = _Unreadable(f"not JSON ({e.msg} at column {e.colno})")
            out.append((f"{name}:{i}", i, values))
    else:
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if not header:
            raise RowsError(f"{path}: empty; line 1 must name the columns (prompt, seed, ...)")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in COLUMNS]
        if unknown:  # reported once, at the header; the rows are checked without those columns
            out.append((f"{name}:1", 1, _Unreadable(f"unknown column {unknown[0]!r}")))
        for cells in reader:
            i = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                out.append((f"{name}:{i}", i, _Unreadable(f"{len(cells)} cells, the header has {len(header)} "
                                                          "columns")))
                continue
            # an empty cell is no value: the default applies
            out.append((f"{name}:{i}", i, {h: c for h, c in zip(header, cells) if c.strip() and h not in unknown}))
    return out


def _convert(values: dict, base: Path) -> dict:
    """A row's values -> generate()'s types; ValueError naming the first bad column."""
    unknown = [k for k in values if k not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown column {unknown[0]!r}")
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        try:
            out[key] = _typed(key, value, base)
        except (TypeError, ValueError):  # json.JSONDecodeError included
            raise ValueError(f"{key} {value!r} is not {_KIND[_kind(key)]}") from None
    return out


_KIND = {"int": "an integer", "float": "a number", "pair": "a pair like 1024x768 (WxH) or [768, 1024]",
         "bool": "true or false", "loras": 'an object like {"name": 0.8} or {"name": [0.5, 1.0]}', "str": "text"}


def _kind(key: str) -> str:
    for kind, names in (("int", _INT), ("float", _FLOAT), ("pair", _PAIR), ("bool", _BOOL), ("loras", _LORAS)):
        if key in names:
            return kind
    return "str"


def _loras(value, base: Path) -> dict:
    """{file or name: weight | [te, unet]}: a file next to the input made absolute, pairs as tuples."""
    if not isinstance(value, dict):
        raise TypeError
    out = {}
    for name, weight in value.items():
        if isinstance(weight, (list, tuple)) and len(weight) == 2:
            weight = tuple(float(w) for w in weight)
        elif isinstance(weight, (int, float)) and not isinstance(weight, bool):
            weight = float(weight)
        else:
            raise TypeError
        out[str(base / name) if (base / name).exists() else name] = weight
    return out


def _typed(key: str, value, base: Path):
    kind = _kind(key)
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        value = float(value)
        if math.isnan(value):
            raise ValueError
        return value
    if kind == "bool":
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError
        return bool(value)
    if kind == "loras":
        return _loras(json.loads(value) if isinstance(value, str) else value, base)
    if kind == "pair":  # "WxH" ("LEFTxTOP") as sdkit's metadata writes it, or generate()'s [height, width]
        parts = value.lower().split("x")[::-1] if isinstance(value, str) else value
        if not isinstance(parts, (list, tuple)) or len(parts) != 2:
            raise ValueError
        return tuple(int(p) for p in parts)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError
    if key in _PATH:
        return str(base / value)
    if key == "model" and (base / value).exists():  # a model file next to the input; else a Hub id or a path
        return str(base / value)
    return value


def _drawn_seed(salt: int, line: int) -> int:
    """A seedless row's seed: random per batch (salt), the same on every resume of it."""
    return int(np.random.default_rng([salt, line]).integers(0, 2**32 - 2**16))
