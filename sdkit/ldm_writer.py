"""Canonical (diffusers) weights -> an original single-file checkpoint, the inverse of sdkit.ldm: what A1111,
ComfyUI, Forge and diffusers' from_single_file load.

    UNet           model.diffusion_model.*  through ldm.unet_blocks (the reader's own block map) read backwards
    VAE            first_stage_model.*      through ldm.vae_blocks (the reader's map) read backwards,
                                            mid.attn_1 as 1x1 convolutions
    text encoders  where families.LAYOUTS puts the family's towers: CLIP under `transformer.text_model.`,
                   OpenCLIP with q/k/v fused into in_proj and text_projection stored as OpenCLIP's (width, P)
    about itself   modelspec.* metadata and ComfyUI's v_pred / ztsnr markers (sdkit.modelspec): without them a
                   reader guesses the prediction type (A1111 and ComfyUI from the weights, sdkit from the name)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from . import ldm, modelspec
from .checkpoint import Checkpoint
from .families import LAYOUTS, UNET_PREFIX, VAE_PREFIX
from .weights import read_tensors


def write(path: Path, ckpt: Checkpoint, replaced: dict[str, dict[str, np.ndarray]],
          metadata: dict[str, str] | None = None) -> None:
    """Write `ckpt`'s weights, with `replaced` (component -> canonical name -> array, torch layout) instead of
    the stored ones, as one .safetensors file in the LDM layout."""
    weights = {c: {**dict(read_tensors(w, "numpy")), **replaced.get(c, {})} for c, w in ckpt.weights.items()}
    tensors = unet(weights["unet"], ckpt.unet) | vae(weights["vae"], ckpt.vae)
    layout = next((lay for lay in LAYOUTS if lay.family == ckpt.family
                   and [t.component for t in lay.towers] == list(ckpt.text_encoder_names)), None)
    if layout is None:
        raise ValueError(f"{ckpt.name}: no single-file layout holds a {ckpt.family} model with text encoders "
                         f"{', '.join(ckpt.text_encoder_names)}; write a diffusers folder instead")
    for tower in layout.towers:
        convert = clip if tower.kind == "clip" else openclip
        tensors |= {tower.prefix + k: v for k, v in convert(weights[tower.component]).items()}
    spec, markers = modelspec.checkpoint(ckpt, path.stem)
    save_file({k: np.ascontiguousarray(v) for k, v in (tensors | markers).items()}, str(path),
              metadata={"format": "pt", **spec, **(metadata or {})})


def unet(weights: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    attn = ["CrossAttn" in t for t in config.down_block_types]
    inverse = {canonical: stored for stored, canonical in ldm.unet_blocks(attn, config.layers_per_block).items()}
    resnet = {v: k for k, v in ldm.RESNET.items()}
    out = {}
    for name, w in weights.items():
        prefix = ldm.block_prefix(name, inverse)
        rest = name[len(prefix):]
        if ".resnets." in prefix:
            layer = rest.rsplit(".", 1)[0]
            rest = resnet[layer] + rest[len(layer):]
        out[UNET_PREFIX + inverse[prefix] + rest] = w
    return out


def vae(weights: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    inverse = {canonical: stored for stored, canonical in
               ldm.vae_blocks(len(config.block_out_channels), config.layers_per_block).items()}
    out = {}
    for name, w in weights.items():
        prefix = ldm.block_prefix(name, inverse)
        key = inverse[prefix] + name[len(prefix):].replace(*reversed(ldm.SHORTCUT))
        if ".mid.attn_1." in key and w.ndim == 2:
            w = w[:, :, None, None]  # LDM's AttnBlock uses 1x1 convolutions
        out[VAE_PREFIX + key] = w
    return out


def clip(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"text_model." + k: v for k, v in weights.items()}


def openclip(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    layer = {v: k for k, v in ldm.OPENCLIP_LAYER.items()}
    out = {"token_embedding.weight": weights["embeddings.token_embedding.weight"],
           "positional_embedding": weights["embeddings.position_embedding.weight"]}
    for name, w in weights.items():
        if name == "text_projection.weight":
            out["text_projection"] = w.T  # OpenCLIP computes x @ P
        elif name.startswith("final_layer_norm."):
            out["ln_final." + name.removeprefix("final_layer_norm.")] = w
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)", name):
            block, rest = f"transformer.resblocks.{m[1]}.", m[2]
            if m2 := re.fullmatch(r"self_attn\.q_proj\.(weight|bias)", rest):
                out[f"{block}attn.in_proj_{m2[1]}"] = np.concatenate(
                    [weights[f"encoder.layers.{m[1]}.self_attn.{p}.{m2[1]}"] for p in ("q_proj", "k_proj", "v_proj")])
            elif part := next((p for p in layer if rest.startswith(p)), None):
                out[block + layer[part] + rest[len(part):]] = w
    return out
