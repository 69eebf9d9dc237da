"""Canonical weights -> a diffusers folder (what from_pretrained, ComfyUI's diffusers loader and sdkit read), the
counterpart of sdkit.ldm_writer.

From a diffusers folder, the source's files are copied and the replaced components' weights written over
theirs. From a single file, which carries no configs, every file is written from the configs sdkit read off its
tensors (sdkit.ldm) and the family's bundled scheduler and tokenizers:

    model_index.json                 the pipeline class and its components (the refiner: text_encoder_2 only)
    scheduler/scheduler_config.json  the family's published config with the checkpoint's prediction and spacing
    tokenizer*/                      CLIP's vocab.json + merges.txt and the bundled special tokens
    text_encoder*/                   transformers' CLIPTextConfig; weights under `text_model.` (SDXL's second
                                     encoder: CLIPTextModelWithProjection, text_projection beside it)
    unet/, vae/                      diffusers' configs; canonical names are diffusers' own
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from .checkpoint import DATA, TEXT_COMPONENTS, Checkpoint
from .config import EDM_FIELDS
from .families import FAMILIES, PLAYGROUND
from .tokenizer import bpe_vocab
from .weights import read_tensors

VERSION = "0.30.0"  # the diffusers release whose config keys these are (written as `_diffusers_version`)
WEIGHT_FILE = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}  # else transformers' "model"


def check_target(path: Path, ckpt: Checkpoint) -> None:
    """Refuse an output folder whose replacement would destroy something else: the model's own folder (or one
    holding it), or a folder with anything but a diffusers model in it (a typo'd `out` must not wipe a directory)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"out: {path} exists and is not a folder; give a new folder name, or a .safetensors file")
    if ckpt.path.resolve().is_relative_to(path.resolve()):
        raise ValueError(f"out: {path} holds the model being trained ({ckpt.path}); write the result elsewhere")
    if any(path.iterdir()) and not (path / "model_index.json").is_file():
        raise ValueError(f"out: {path} is a folder with other files in it (no model_index.json), which writing a "
                         "diffusers model would delete; give a new or empty folder")


def write(path: Path, ckpt: Checkpoint, replaced: dict[str, dict[str, np.ndarray]]) -> None:
    """Write `ckpt` as a diffusers folder at `path` (replacing a diffusers model there, see check_target), with
    `replaced` (component -> canonical name -> array, torch layout) instead of the stored weights."""
    check_target(path, ckpt)
    if path.exists():
        shutil.rmtree(path)
    if ckpt.path.is_dir():
        # a VAE given with vae= replaces the folder's: written like a trained component
        rewritten = set(replaced) | ({"vae"} if ckpt.vae_file is not None else set())
        stale = lambda folder, names: [n for n in names if Path(folder).name in rewritten
                                       and n.startswith(WEIGHT_FILE.get(Path(folder).name, "model"))]
        shutil.copytree(ckpt.path, path, ignore=stale)  # the rewritten weights' files (shards, variants) left out
        for component in rewritten:
            _weights(path, component, ckpt, replaced.get(component, {}))
        if ckpt.vae_file is not None:
            _json(path / "vae" / "config.json", vae_config(ckpt.vae))
        return
    path.mkdir(parents=True)
    _json(path / "model_index.json", model_index(ckpt))
    _json(path / "scheduler" / "scheduler_config.json", scheduler_config(ckpt))
    for name, config, tokenizer in zip(ckpt.text_encoder_names, ckpt.text_encoders, ckpt.tokenizers):
        _tokenizer(path / TEXT_COMPONENTS[name], tokenizer)
        _json(path / name / "config.json", text_config(config))
    _json(path / "unet" / "config.json", unet_config(ckpt.unet))
    _json(path / "vae" / "config.json", vae_config(ckpt.vae))
    for component in ("unet", "vae", *ckpt.text_encoder_names):
        _weights(path, component, ckpt, replaced.get(component, {}))


def model_index(ckpt: Checkpoint) -> dict:
    xl, inpaint = ckpt.family == "sdxl", ckpt.unet.in_channels == 9
    refiner = xl and "text_encoder" not in ckpt.text_encoder_names
    cls = ("StableDiffusionXL" if xl else "StableDiffusion") + (
        "InpaintPipeline" if inpaint else "Img2ImgPipeline" if refiner else "Pipeline")
    scheduler = json.loads((DATA / "schedulers" / _scheduler_file(ckpt)).read_text())["_class_name"]
    index = {"_class_name": cls, "_diffusers_version": VERSION, "scheduler": ["diffusers", scheduler],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for name, tokenizer in TEXT_COMPONENTS.items():
        if name in ckpt.text_encoder_names:
            model = "CLIPTextModelWithProjection" if name == "text_encoder_2" else "CLIPTextModel"
            index |= {name: ["transformers", model], tokenizer: ["transformers", "CLIPTokenizer"]}
        elif xl:
            index |= {name: [None, None], tokenizer: [None, None]}
    if xl:
        index["force_zeros_for_empty_prompt"] = ckpt.force_zeros_for_empty_prompt
        if "aesthetic_score" in ckpt.time_ids:  # the refiner's (only image-to-image pipelines take the key)
            index["requires_aesthetics_score"] = True
    else:
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    return index


def scheduler_config(ckpt: Checkpoint) -> dict:
    """The family's published scheduler config (the one sdkit read the single file with), updated with what
    the checkpoint's differs in (prediction type, timestep spacing, zero terminal SNR)."""
    d = json.loads((DATA / "schedulers" / _scheduler_file(ckpt)).read_text())
    for key, value in dataclasses.asdict(ckpt.scheduler).items():
        if key in EDM_FIELDS and not ckpt.scheduler.edm:
            continue
        d[key] = list(value) if isinstance(value, tuple) else value
    return {k: v for k, v in d.items() if v is not None or k == "trained_betas"}


def _scheduler_file(ckpt) -> str:
    return (PLAYGROUND if ckpt.scheduler.edm else FAMILIES[ckpt.family]).scheduler


def text_config(c) -> dict:
    """transformers' CLIPTextConfig. bos / eos / pad ids are the published SD configs' (eos 2: the pooled output
    is read at the highest id, <|endoftext|>, as those models were trained)."""
    d = {"architectures": ["CLIPTextModelWithProjection" if c.projection_dim else "CLIPTextModel"],
         "model_type": "clip_text_model", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
         "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
         "num_attention_heads": c.num_heads, "max_position_embeddings": c.max_length, "hidden_act": c.hidden_act,
         "layer_norm_eps": c.layer_norm_eps, "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02,
         "initializer_factor": 1.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
         "torch_dtype": "float32"}
    if c.projection_dim:
        d["projection_dim"] = c.projection_dim
    return d


def unet_config(c) -> dict:
    """diffusers' UNet2DConditionModel config. `attention_head_dim` holds the number of heads (diffusers' legacy
    naming, which every SD config uses: UNet2DConditionModel refuses num_attention_heads)."""
    d = {"_class_name": "UNet2DConditionModel", "_diffusers_version": VERSION, "act_fn": "silu",
         "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
         "attention_head_dim": list(c.num_heads)}
    for f in dataclasses.fields(c):
        if f.name != "num_heads":
            value = getattr(c, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
    return d


def vae_config(c) -> dict:
    n = len(c.block_out_channels)
    d = {"_class_name": "AutoencoderKL", "_diffusers_version": VERSION, "act_fn": "silu",
         "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if value is not None:
            d[f.name] = list(value) if isinstance(value, tuple) else value
    return d


def _tokenizer(folder: Path, tokenizer: Path | str) -> None:
    """A tokenizer folder as the Hub publishes SD's: from a folder, its files; from a bundled name ("clip-l",
    "openclip"), CLIP's vocabulary and merges with that tokenizer's special tokens."""
    if isinstance(tokenizer, Path):
        shutil.copytree(tokenizer, folder)
        return
    folder.mkdir(parents=True)
    vocab, merges = bpe_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # transformers' CLIPTokenizer skips the first line (the version header)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(DATA / "tokenizers" / tokenizer / file, folder / file)


def _weights(path: Path, component: str, ckpt, replaced: dict[str, np.ndarray]) -> None:
    """One component's weights under diffusers' / transformers' names, as one .safetensors file."""
    weights = {**dict(read_tensors(ckpt.weights[component], "numpy")), **replaced}
    if component.startswith("text_encoder"):  # transformers' CLIPTextModel keys; the projection sits beside it
        weights = {k if k.startswith("text_projection.") else f"text_model.{k}": v for k, v in weights.items()}
    file = path / component / f"{WEIGHT_FILE.get(component, 'model')}.safetensors"
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(file), metadata={"format": "pt"})


def _json(file: Path, d: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(d, indent=2) + "\n")
