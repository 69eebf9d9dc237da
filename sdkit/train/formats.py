"""What training writes, in the formats other tools read.

- LoRA, by default kohya sd-scripts' format (networks/lora.py; what A1111, ComfyUI, Forge and Civitai load): per adapted
  module `lora_unet_<diffusers path with _>` (SDXL: LDM's path, as kohya's SDXL UNet names it; text encoders:
  `lora_te_`, SDXL `lora_te1_` / `lora_te2_`, then transformers' path `text_model_encoder_layers_...`) with
  `.lora_down.weight` (r, in[, kh, kw]), `.lora_up.weight` (out, r[, 1, 1]) and `.alpha` (scalar); the delta
  is up @ down * alpha / r. Metadata: the `ss_*` keys sd-scripts writes, its `sshs_*` hashes and `modelspec.*`.
  On request PEFT's / diffusers' format (save_peft).
- Textual inversion, A1111's .safetensors: `emb_params` (n, C); SDXL `clip_l` and `clip_g`.
- Full fine-tune: a single-file checkpoint (sdkit.ldm_writer) or a diffusers folder (sdkit.diffusers_writer).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save, save_file

from .. import diffusers_writer, ldm_writer, modelspec
from ..checkpoint import Checkpoint
from ..families import UNET_PREFIX
from .data import Example

# Linear / 1x1-conv layers inside the UNet's transformers (kohya's default LoRA targets)
UNET_ATTENTION = re.compile(r"\.attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\."
                            r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))$")
# LoCon (kohya's conv_dim) adds every Linear / Conv2d of the resnets and resamplers: their convolutions and the
# resnets' timestep projection (sd-scripts' ResnetBlock2D time_emb_proj; SDXL's emb_layers.1)
UNET_CONV = re.compile(r"\.(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|downsamplers\.0\.conv"
                       r"|upsamplers\.0\.conv)$")
TEXT = re.compile(r"^encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$")
TEXT_PREFIX = {("text_encoder",): "lora_te", ("text_encoder", "text_encoder_2"): "lora_te1"}
BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


@dataclass(frozen=True)
class Target:
    component: str  # "unet", "text_encoder", "text_encoder_2"
    module: str  # canonical module path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    shape: tuple[int, ...]  # its weight's (torch layout): (out, in) or (out, in, kh, kw)


def lora_targets(ckpt: Checkpoint, conv: bool = False, text_encoder: bool = False,
                 pattern: str | None = None) -> list[Target]:
    """The modules a LoRA adapts: the UNet transformers' projections (and with `conv` its convolutions: LoCon),
    the text encoders' attention and MLP (with `text_encoder`); `pattern`, a regular expression searched in
    'component.module', narrows them."""
    out = []
    for component, weights in ckpt.weights.items():
        if component == "unet":
            rules = [UNET_ATTENTION] + ([UNET_CONV] if conv else [])
        elif component.startswith("text_encoder") and text_encoder:
            rules = [TEXT]
        else:
            continue
        for name, ref in weights.items():
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and any(r.search(module) for r in rules) and (
                    pattern is None or re.search(pattern, f"{component}.{module}")):
                out.append(Target(component, module, tuple(ref.shape)))
    if not out:
        raise ValueError(f"lora: no layer of this {ckpt.family} model matches target {pattern!r}")
    return out


def lora_init(targets: list[Target], rank: int,
              rng: np.random.Generator) -> dict[Target, tuple[np.ndarray, np.ndarray]]:
    """kohya's (and PEFT's) initialisation: down ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's kaiming_uniform,
    a=sqrt(5)), up = 0, so training starts from the base model exactly. Drawn by numpy: same on every backend."""
    out = {}
    for t in targets:
        fan_in = int(np.prod(t.shape[1:]))
        down = rng.uniform(-1, 1, (rank, *t.shape[1:])).astype(np.float32) / np.float32(np.sqrt(fan_in))
        up = np.zeros((t.shape[0], rank, *([1, 1] if len(t.shape) == 4 else [])), np.float32)
        out[t] = down, up
    return out


def kohya_names(ckpt: Checkpoint, targets: list[Target]) -> dict[Target, str]:
    """Each target's kohya module name: the module path with `.` -> `_` after `lora_unet_` / `lora_te*_text_model_`.
    kohya's SD1 / SD2 UNet uses diffusers' paths, its SDXL UNet LDM's (library/sdxl_original_unet.py:
    `input_blocks_4_1_transformer_blocks_0_attn1_to_q`, resnets' `in_layers_2`, ...), read off sdkit.ldm_writer."""
    ldm = {}
    if ckpt.family == "sdxl":
        stored = ldm_writer.unet({f"{t.module}.weight": t.module for t in targets if t.component == "unet"}, ckpt.unet)
        ldm = {module: name.removeprefix(UNET_PREFIX).removesuffix(".weight") for name, module in stored.items()}
    prefix = TEXT_PREFIX.get(tuple(ckpt.text_encoder_names), "lora_te")
    out = {}
    for t in targets:
        if t.component == "unet":
            out[t] = "lora_unet_" + ldm.get(t.module, t.module).replace(".", "_")
        else:
            out[t] = ("lora_te2" if t.component == "text_encoder_2" else prefix) + "_text_model_" + \
                t.module.replace(".", "_")
    return out


def save_lora(path: Path, ckpt: Checkpoint, lora: dict[Target, tuple[np.ndarray, np.ndarray]],
              alpha: float, metadata: dict[str, str]) -> None:
    tensors = {}
    names = kohya_names(ckpt, list(lora))
    for t, (down, up) in lora.items():
        key = names[t]
        tensors[f"{key}.lora_down.weight"] = np.ascontiguousarray(down, np.float32)
        tensors[f"{key}.lora_up.weight"] = np.ascontiguousarray(up, np.float32)
        tensors[f"{key}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path), metadata=metadata | addnet_hashes(tensors, metadata))


def addnet_hashes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> dict[str, str]:
    """sshs_model_hash and sshs_legacy_hash as sd-scripts precomputes them (library/train_util.py
    precalculate_safetensors_hashes; A1111 shows sshs_model_hash as the LoRA's hash, or computes the same): of the
    file serialised with its ss_* metadata only, the sha256 of the bytes after the header, and the first 8 hex
    digits of the sha256 of the 64 KiB at 1 MiB."""
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                {k: v for k, v in metadata.items() if k.startswith("ss_")})
    body = 8 + int.from_bytes(data[:8], "little")  # an 8-byte header length, then the JSON header
    return {"sshs_model_hash": hashlib.sha256(data[body:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def save_peft(path: Path, lora: dict[Target, tuple[np.ndarray, np.ndarray]], alpha: float) -> None:
    """diffusers' / PEFT's LoRA file (what `save_lora_weights` writes): `<component>.<module>.lora_A.weight` (down)
    and `.lora_B.weight` (up); it has no alpha, so alpha / rank is folded into lora_B."""
    tensors = {}
    for t, (down, up) in lora.items():
        key = f"{t.component}.{t.module}" if t.component == "unet" else f"{t.component}.text_model.{t.module}"
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(down, np.float32)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(up * np.float32(alpha / down.shape[0]), np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})


def lora_metadata(ckpt: Checkpoint, rank: int, alpha: float, conv: bool, text_encoder: bool, steps: int,
                  learning_rate: float, resolution: int, examples: list[Example], seed: int,
                  name: str) -> dict[str, str]:
    """The ss_* keys kohya sd-scripts writes (train_network.py; all strings), which A1111 and Civitai show (A1111
    its tags from ss_tag_frequency), and the model spec kohya adds (library/sai_model_spec.py)."""
    v = ckpt.scheduler.prediction_type == "v_prediction"
    train = [e for e in examples if not e.prior]
    now = str(time.time())
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_train_unet_only": str(not text_encoder),
        # model_util.get_model_version_str_for_sd1_sd2 (sd_v1 / sd_v2, "_v" for v-prediction); SDXL's constant
        "ss_base_model_version": BASE_VERSION[ckpt.family] + ("_v" if v and ckpt.family != "sdxl" else ""),
        "ss_v2": str(ckpt.family == "sd2"),
        "ss_sd_model_name": ckpt.path.name if ckpt.path.is_file() else ckpt.name,  # kohya: a file's basename
        "ss_training_started_at": now,
        "ss_training_finished_at": now,
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_learning_rate": str(learning_rate),
        "ss_resolution": f"({resolution}, {resolution})",  # str() of kohya's (width, height) tuple
        "ss_num_train_images": str(sum(e.repeats for e in train)),  # images x repeats
        "ss_num_reg_images": str(len(examples) - len(train)),
        "ss_dataset_dirs": json.dumps(_dirs(train)),
        "ss_reg_dataset_dirs": json.dumps(_dirs([e for e in examples if e.prior])),
        "ss_tag_frequency": json.dumps(tag_frequency(examples)),
        "ss_seed": str(seed),
        "ss_output_name": name,
        "ss_training_comment": "trained with sdkit",
    }
    if conv:  # kohya writes ss_network_args only when given; its values are the command line's strings
        meta["ss_network_args"] = json.dumps({"conv_dim": str(rank), "conv_alpha": str(alpha)})
    # kohya's implementation: LDM / SGM names for its SDXL LoRAs, diffusers' for SD1 / SD2 (kohya_names)
    implementation = modelspec.SGM if ckpt.family == "sdxl" else modelspec.DIFFUSERS
    return meta | modelspec.metadata(ckpt, name, (resolution, resolution), "lora", implementation)


def tag_frequency(examples: list[Example]) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per image folder, how many captions hold each comma-separated tag (lowercased)."""
    out: dict[str, dict[str, int]] = {}
    for e in examples:
        counts = out.setdefault(e.path.parent.name, {})
        for tag in filter(None, (t.strip().lower() for t in e.caption.split(","))):
            counts[tag] = counts.get(tag, 0) + 1
    return out


def _dirs(examples: list[Example]) -> dict[str, dict[str, int]]:
    """kohya's ss_dataset_dirs: per image folder, its repeats and number of images."""
    out: dict[str, dict[str, int]] = {}
    for e in examples:
        d = out.setdefault(e.path.parent.name, {"n_repeats": e.repeats, "img_count": 0})
        d["img_count"] += 1
    return out


def lora_delta(down: np.ndarray, up: np.ndarray, alpha: float) -> np.ndarray:
    """The weight delta a kohya LoRA module adds: up @ down * alpha / rank, in the weight's shape."""
    rank = down.shape[0]
    d = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (d * (alpha / rank)).reshape(up.shape[0], *down.shape[1:]).astype(np.float32)


def save_embedding(path: Path, vectors: dict[str, np.ndarray], family: str,
                   metadata: dict[str, str] | None = None) -> None:
    """vectors: per text encoder (n, C). A1111's layout: `emb_params`, or SDXL's `clip_l` / `clip_g`, and nothing
    else (A1111's create_embedding_from_data takes a file of one tensor, or clip_g and clip_l, as an embedding);
    metadata: the model spec kohya gives its embeddings (train_textual_inversion.py)."""
    if family == "sdxl":
        tensors = {"clip_l": vectors["text_encoder"], "clip_g": vectors["text_encoder_2"]}
    else:
        tensors = {"emb_params": vectors["text_encoder"]}
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path), metadata=metadata)


def save_finetune(path: Path, ckpt: Checkpoint, trained: dict[str, dict[str, np.ndarray]]) -> None:
    """trained: component ("unet", "text_encoder", ...) -> canonical name -> array. `path` ending in .safetensors:
    one LDM-layout file (sdkit.ldm_writer); otherwise a diffusers folder (sdkit.diffusers_writer), from a folder
    or a single-file model alike."""
    trained = {c: {k: v for k, v in w.items() if k in ckpt.weights[c]} for c, w in trained.items()}
    (ldm_writer if path.suffix == ".safetensors" else diffusers_writer).write(path, ckpt, trained)
