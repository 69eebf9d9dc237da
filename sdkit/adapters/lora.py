"""LoRA files (Hu et al. 2021) and their LyCORIS relatives: each a set of weight deltas on named layers.

Formats, detected per tensor name (as kohya sd-scripts, LyCORIS, diffusers and ComfyUI's comfy/lora.py name them):
- kohya sd-scripts: `lora_unet_<module>` / `lora_te_<module>` (SDXL `lora_te1_`, `lora_te2_`), the module path
  with `.` -> `_`, in diffusers' naming (SD1, SD2) or LDM's (`input_blocks_4_1_...`: kohya's SDXL UNet);
  `.lora_down.weight`, `.lora_up.weight`, `.alpha`; conv layers ("LoCon", 1x1 and 3x3, Tucker `.lora_mid`).
- LyCORIS LoHa (`.hada_w1_a` ...) and LoKr (`.lokr_w1` ...), DoRA (`.dora_scale` beside any of them).
- diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.` / `text_encoder_2.`
  prefixes, the older `.lora.down.weight`, `.lora_linear_layer.down.weight` and attention processors'
  `.processor.to_q_lora.down.weight`; PEFT's DoRA `.lora_magnitude_vector`.
A tensor naming no layer of the model is an error naming it: nothing is silently ignored.

Deltas (ComfyUI's comfy/weight_adapter, float32), scaled by alpha / rank (rank: the down factor's rows; no
alpha: 1) and by the user's weight:
- LoRA   dW = up @ down                       (conv: up (O, r, 1, 1), down (r, I, kh, kw) flattened to 2-D)
- LoHa   dW = (w1a @ w1b) * (w2a @ w2b)       (Hadamard product; rank w1b's rows)
- LoKr   dW = kron(w1, w2), w1 = w1a @ w1b when factored (rank: the factored one's; neither: scale 1)
- DoRA   W' = W + weight * (m * (W + s dW) / ||W + s dW|| - W), the norm per output row where m (dora_scale)
  has one value per output, else per input column (LyCORIS' default), s = alpha / rank.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import ldm
from ..checkpoint import PICKLES, read_header, read_metadata
from ..config import UNetConfig
from ..errors import CheckpointError
from ..interfaces import Weights
from .embeddings import _read_arrays, _stamp as stamp, adapter_files, folders

ENV = "SDKIT_LORA_DIRS"
SUFFIX = ".safetensors"
TEXT = ("text_encoder", "text_encoder_2")

# tensor name ending -> its role in a layer. Checked longest first, so ".lora_linear_layer.up.weight" is not
# taken for ".up.weight".
ROLES = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    ".lora_B.weight": "up", ".lora_A.weight": "down",
    ".lora.up.weight": "up", ".lora.down.weight": "down",
    ".lora_linear_layer.up.weight": "up", ".lora_linear_layer.down.weight": "down",
    "_lora.up.weight": "up", "_lora.down.weight": "down",  # attention processors: to_q_lora.up.weight
    ".alpha": "alpha", ".dora_scale": "dora_scale",
    ".lora_magnitude_vector": "dora_scale", ".lora_magnitude_vector.weight": "dora_scale",
    **{f".hada_{n}": f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f".lokr_{n}": f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
}
_ENDINGS = sorted(ROLES, key=len, reverse=True)
KOHYA = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
PROCESSOR = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}  # diffusers' old attn procs
TEXT_PROCESSOR = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass(frozen=True)
class Layer:
    """One layer's adapter in one file: its factors by role, in float32."""

    component: str  # "unet" | "text_encoder" | "text_encoder_2"
    name: str  # canonical weight name, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    shape: tuple[int, ...]  # the model's weight's
    tensors: dict[str, np.ndarray]  # role -> factor

    @property
    def needs_base(self) -> bool:
        """DoRA normalises the patched weight: its delta depends on the base weight."""
        return "dora_scale" in self.tensors

    def delta(self, weight: float, base: np.ndarray | None = None) -> np.ndarray:
        """The change to the layer's weight (its shape, float32) at the user's `weight`; `base`: the
        unpatched weight, float32, where needs_base."""
        if "dora_scale" not in self.tensors:
            return self._scaled_delta(weight)
        merged = base + self._scaled_delta(1.0)
        m = self.tensors["dora_scale"]
        if m.shape[0] == self.shape[0] and m.size == self.shape[0]:  # one magnitude per output row
            norm = np.linalg.norm(merged.reshape(self.shape[0], -1), axis=1).reshape(-1, *[1] * (merged.ndim - 1))
            m = m.reshape(norm.shape)
        else:  # one per input channel (LyCORIS: (1, I) or (1, I, 1, 1)), the norm over all other axes
            axes = tuple(a for a in range(merged.ndim) if a != 1)
            norm = np.sqrt(np.square(merged).sum(axis=axes, keepdims=True))  # (1, I) or (1, I, 1, 1)
            m = m.reshape(norm.shape)
        decomposed = merged * (m / (norm + np.finfo(np.float32).eps))
        return weight * (decomposed - base)

    def _scaled_delta(self, weight: float) -> np.ndarray:
        """weight * alpha / rank * dW, the factors scaled before they are multiplied (one pass over dW)."""
        t = self.tensors
        alpha = float(t["alpha"].reshape(())) if "alpha" in t else None
        if "down" in t:
            down, up = t["down"], t["up"]
            rank = down.shape[0]
            up = up * (weight * (1.0 if alpha is None else alpha / rank))  # the small factor, not dW
            alpha, weight = None, 1.0
            if "mid" in t:  # Tucker: a core mid (r, r, kh, kw) between 1x1 convs up (O, r) and down (r, I)
                dw = np.einsum("bakl,ob,ai->oikl", t["mid"], up.reshape(up.shape[0], -1), down.reshape(rank, -1))
            else:
                dw = up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)  # (O, I * kh * kw)
        elif "hada_w1_a" in t:
            rank = t["hada_w1_b"].shape[0]
            dw = _factor(t, "hada_w1_a", "hada_w1_b", "hada_t1") * _factor(t, "hada_w2_a", "hada_w2_b", "hada_t2")
        elif "lokr_w1" in t or "lokr_w1_a" in t:
            rank = next((t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t), None)
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else _factor(t, "lokr_w2_a", "lokr_w2_b", "lokr_t2")
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]  # (a, b, 1, 1) kron (c, d, kh, kw) -> (a c, b d, kh, kw)
            dw = np.kron(w1, w2)
            if rank is None:
                alpha = None  # unfactored LoKr: alpha does not apply (ComfyUI)
        else:
            raise CheckpointError(f"{self.name}: no LoRA factors")  # _layers ensures there are
        scale = weight * (1.0 if alpha is None or rank is None else alpha / rank)
        if dw.size != int(np.prod(self.shape)):
            raise CheckpointError(f"{self.component} layer {self.name} is {list(self.shape)}, its LoRA delta "
                                  f"{list(dw.shape)}: the LoRA was made for another model")
        dw = dw.reshape(self.shape).astype(np.float32, copy=False)
        return dw if scale == 1.0 else scale * dw


def _factor(t: dict[str, np.ndarray], a: str, b: str, tucker: str) -> np.ndarray:
    """a @ b, or with a Tucker core (r, r, kh, kw): einsum over the core (LyCORIS' conv factorisation)."""
    if tucker in t:
        return np.einsum("ijkl,jr,ip->prkl", t[tucker], t[b], t[a])
    return t[a] @ t[b].reshape(t[b].shape[0], -1)


@dataclass(frozen=True)
class LoRA:
    name: str  # the file's stem
    path: Path
    layers: tuple[Layer, ...]


@dataclass
class Targets:
    """A model's adaptable layers under every name LoRA files use for them: name -> (component, weight name)."""

    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    shapes: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    family: str = ""

    @classmethod
    def of(cls, family: str, weights: Mapping[str, Weights], unet: UNetConfig) -> "Targets":
        """`weights`: component -> its canonical weights (a checkpoint's); `unet` its config (for LDM names)."""
        targets = cls(family=family)
        blocks = ldm.unet_blocks([t.startswith("CrossAttn") for t in unet.down_block_types], unet.layers_per_block)
        to_ldm = sorted(((hf, old) for old, hf in blocks.items()), key=lambda p: -len(p[0]))
        resnet = {new: old for old, new in ldm.RESNET.items()}
        for component, ws in weights.items():
            if component not in ("unet", *TEXT):
                continue
            for weight_name, ref in ws.items():
                if not weight_name.endswith(".weight") or len(ref.shape) < 2:
                    continue  # LoRAs adapt the weights of Linear and Conv layers
                module = weight_name[: -len(".weight")]
                key = (component, weight_name)
                targets.shapes[key] = tuple(ref.shape)
                targets.names[f"{component}.{module}"] = key  # diffusers / PEFT
                kohya = module.replace(".", "_")
                if component == "unet":
                    targets.names[f"lora_unet_{kohya}"] = key
                    old = _ldm_name(module + ".", to_ldm, resnet)
                    if old:
                        targets.names["lora_unet_" + old.rstrip(".").replace(".", "_")] = key
                else:
                    targets.names[f"{component}.text_model.{module}"] = key
                    for prefix in [p for p, c in KOHYA.items() if c == component]:
                        targets.names[f"{prefix}text_model_{kohya}"] = key
                        targets.names[f"{prefix}{kohya}"] = key
        return targets

    def find(self, layer: str) -> tuple[str, str] | None:
        """A file's layer name -> (component, canonical weight name); None when the model has no such layer."""
        if layer in self.names:
            return self.names[layer]
        # diffusers' attention processors: unet.<...>.attn1.processor.to_q(_lora) -> <...>.attn1.to_q
        m = re.fullmatch(r"(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)", layer)
        if m:
            body, proj = m[1], m[2]
            text = body.startswith(("text_encoder.", "text_encoder_2."))
            body = body if body.startswith(("unet.", "text_encoder")) else "unet." + body
            return self.names.get(f"{body}.{(TEXT_PROCESSOR if text else PROCESSOR)[proj]}")
        if not layer.startswith(("unet.", "text_encoder", "lora_")):  # attention-processor files lack "unet."
            return self.names.get("unet." + layer)
        return None


def read_lora(path: str | Path, targets: Targets) -> LoRA:
    """A LoRA file -> its layers on the model `targets` describes; CheckpointError for pickles, and for a
    tensor that names no layer of the model or has no role in a LoRA, naming the tensor and the file."""
    path = Path(path)
    if path.suffix.lower() in PICKLES:
        raise CheckpointError(f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code when "
                              "loaded; sdkit never opens them. Use the LoRA's .safetensors file")
    header = read_header(path)
    grouped: dict[str, dict[str, str]] = {}  # layer -> role -> key
    for key in header:
        ending = next((e for e in _ENDINGS if key.endswith(e)), None)
        if ending is None:
            raise CheckpointError(f"{path}: tensor {key!r} is no LoRA, LoHa, LoKr or DoRA tensor sdkit knows")
        grouped.setdefault(key[: -len(ending)], {})[ROLES[ending]] = key
    layers = []
    arrays = _read_arrays(path, set(header))
    for layer, roles in grouped.items():
        target = targets.find(layer)
        if target is None:
            key = next(iter(roles.values()))
            raise CheckpointError(f"{path}: {key!r} matches no layer of this {targets.family} model (a LoRA for "
                                  "another model family, or a layer sdkit does not name)")
        if not ({"up", "down"} <= roles.keys() or {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= roles.keys()
                or ({"lokr_w1"} & roles.keys() or {"lokr_w1_a", "lokr_w1_b"} <= roles.keys())
                and ({"lokr_w2"} & roles.keys() or {"lokr_w2_a", "lokr_w2_b"} <= roles.keys())):
            raise CheckpointError(f"{path}: layer {layer!r} has only {sorted(roles)}; its factors are incomplete")
        component, name = target
        layers.append(Layer(component, name, targets.shapes[target], {r: arrays[k] for r, k in roles.items()}))
    return LoRA(path.stem, path, tuple(layers))


def parse_weight(value, where: str) -> tuple[float, float]:
    """A user's LoRA weight (w, or (w_te, w_unet)) -> (w_te, w_unet); ValueError naming `where`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return float(value[0]), float(value[1])
    raise ValueError(f"{where}: a LoRA weight is a number or (text_encoder_weight, unet_weight), got {value!r}")


def _ldm_name(module: str, to_ldm: list[tuple[str, str]], resnet: dict[str, str]) -> str | None:
    """A canonical UNet module path (ending in '.') -> LDM's, as kohya's SDXL LoRAs name it; None if none."""
    for hf, old in to_ldm:
        if module.startswith(hf):
            rest = module[len(hf):]
            if ".resnets." in hf:
                layer = next((r for r in resnet if rest.startswith(r + ".")), None)
                if layer is None:
                    return None
                rest = resnet[layer] + rest[len(layer):]
            return old + rest
    return None


class Library:
    """The LoRA files of some folders, by stem, each read once per version of the file and model."""

    def __init__(self, dirs: Sequence[Path] = ()):
        self.dirs = tuple(Path(d) for d in dirs)
        self._read: dict[Path, tuple[tuple, LoRA]] = {}
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}

    def __repr__(self) -> str:
        return f"LoRAs({[str(d) for d in self.dirs]})"

    def files(self) -> dict[str, Path]:
        """stem -> file, listed afresh (adapter_files)."""
        return adapter_files(self.dirs)

    def resolve(self, name_or_path: str | os.PathLike) -> Path:
        """A path to a file, or a name (stem) in the folders; ValueError naming what is there."""
        path = Path(name_or_path).expanduser()
        if path.suffix.lower() in (SUFFIX, *PICKLES) and path.is_file():
            return path
        found = self.files()
        if str(name_or_path) in found:
            return found[str(name_or_path)]
        where = ", ".join(str(d) for d in self.dirs) or f"no lora_dirs (set {ENV} or pass lora_dirs=)"
        raise ValueError(f"LoRA {str(name_or_path)!r} is neither a file nor a name in {where}")

    def get(self, path: Path, targets: Targets) -> LoRA:
        key = (stamp(path), id(targets))
        cached = self._read.get(path)
        if cached is None or cached[0] != key:
            self._read[path] = cached = (key, read_lora(path, targets))
        return cached[1]

    def short_hash(self, path: Path) -> str:
        key = stamp(path)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != key:
            self._hashes[path] = cached = (key, short_hash(path))
        return cached[1]

    def by_hash(self, short: str) -> Path | None:
        """The file in the folders whose short_hash is `short` (hashing each file once per version)."""
        return next((p for p in self.files().values() if p.suffix.lower() == SUFFIX and self.short_hash(p) == short),
                    None)


# A1111's extra-network tags: <lora:NAME>, <lora:NAME:W>, <lora:NAME:W_TE:W_UNET> (or te=W, unet=W); "lyco" is
# its older alias
TAG = re.compile(r"<(?:lora|lyco):([^>]+)>")


def tags(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """A prompt -> (the prompt without its LoRA tags, [(name, text-encoder weight, UNet weight)]); ValueError
    for a weight that is no number."""
    found = []
    for m in TAG.finditer(prompt):
        name, *args = m[1].split(":")
        positional = [a for a in args if "=" not in a]
        named = dict(a.split("=", 1) for a in args if "=" in a)
        try:
            w_te = float(named.get("te", positional[0] if positional else 1))
            w_unet = float(named.get("unet", positional[1] if len(positional) > 1 else w_te))
        except ValueError:
            raise ValueError(f"prompt: LoRA tag {m[0]!r} has a weight that is no number; write <lora:NAME:0.8> or "
                             "<lora:NAME:TE_WEIGHT:UNET_WEIGHT>") from None
        found.append((name.strip(), w_te, w_unet))
    return TAG.sub("", prompt), found


def format_tag(name: str, w_te: float, w_unet: float) -> str:
    return f"<lora:{name}:{w_te:g}>" if w_te == w_unet else f"<lora:{name}:{w_te:g}:{w_unet:g}>"


def name_of(key: str | os.PathLike) -> str:
    """The name a LoRA given as a file or a name goes by: the file's stem, or the name."""
    path = Path(key)
    return path.stem if path.suffix.lower() in (SUFFIX, *PICKLES) else str(key)


def short_hash(path: str | Path) -> str:
    """A1111's LoRA hash (AddNet's): the first 12 hex digits of the sha256 of the tensor data after the
    safetensors header, or the file's own `sshs_model_hash` metadata where it has one (A1111 prefers it)."""
    stored = read_metadata(Path(path)).get("sshs_model_hash")
    if stored:
        return stored[:12]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:12]


def lora_folders(dirs) -> tuple[Path, ...]:
    return folders(dirs, ENV, "lora_dirs")


@dataclass(frozen=True)
class Patch:
    """What a backend adds to one weight: the deltas of every LoRA on that layer at its weight."""

    parts: tuple[tuple[Layer, float], ...]

    @property
    def needs_base(self) -> bool:
        return any(layer.needs_base for layer, _ in self.parts)

    def __call__(self, base: np.ndarray | None) -> np.ndarray:
        """base: the unpatched weight (float32, PyTorch layout) where needs_base, else None -> the delta."""
        return sum(layer.delta(w, base) for layer, w in self.parts)


def patches(active: Sequence[tuple[LoRA, float, float]]) -> dict[str, dict[str, Patch]]:
    """[(LoRA, text-encoder weight, UNet weight)] -> component -> canonical weight name -> Patch."""
    parts: dict[str, dict[str, list]] = {}
    for lora, w_te, w_unet in active:
        for layer in lora.layers:
            w = w_unet if layer.component == "unet" else w_te
            parts.setdefault(layer.component, {}).setdefault(layer.name, []).append((layer, w))
    return {c: {name: Patch(tuple(p)) for name, p in by_name.items()} for c, by_name in parts.items()}
