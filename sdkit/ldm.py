"""Original single-file checkpoints (CompVis / Stability LDM layout) -> canonical diffusers names and configs.

A single file carries no config, so each component's config is read off its tensor shapes:

    model.diffusion_model.*              UNet (openaimodel.UNetModel: input_blocks / middle_block / output_blocks)
    first_stage_model.*                  VAE (encoder.down.i.block.j, mid.attn_1 as 1x1 convs, decoder.up reversed;
                                         or already in diffusers' names, as some merging tools write it)
    cond_stage_model.transformer.*       SD1 text encoder: a transformers CLIPTextModel (with or without 'text_model.')
    cond_stage_model.model.*             SD2 text encoder: OpenCLIP (fused in_proj q/k/v, resblocks, ln_final)
    conditioner.embedders.{0,1}.*        SDXL: CLIP-L as in SD1, then OpenCLIP bigG with its text_projection;
                                         the refiner and SD2 in Stability's SGM layout (sd_turbo): OpenCLIP at 0
    (see sdkit.families.LAYOUTS)

Before conversion the keys are normalised (`read`): `state_dict.` and torch.compile's `_orig_mod.` are dropped,
and a file whose UNet exists only as LDM's EMA copy (`model_ema.diffusion_modelinput_blocks00weight`: LitEma
drops the dots) gets its dotted names back.

Rules that are not in the shapes: text heads are 64 wide; SD1's UNet has 8 heads per level, SD2's and SDXL's
heads are 64 wide; SD2 uses upcast attention and its text encoder's penultimate layer (so the last resblock and
text_projection of an original file are dropped, which makes it equal to a diffusers SD2 text_encoder). How
wide SDXL embeds each of its size/crop/score time ids is read off the UNet with the pooled text width
(sdkit.families.time_ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .config import TextEncoderConfig, UNetConfig, VAEConfig
from .errors import CheckpointError
from .families import TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX, Family, Layout, LAYOUTS
from .interfaces import TensorRef, Weights

Header = dict[str, tuple[str, tuple[int, ...]]]  # key -> (dtype, shape)

# Tensors real files carry that no module uses: DDPM buffers (LDM's DDPM class), EMA bookkeeping and the EMA
# copy beside the weights, SGM's denoiser sigmas (sd_turbo), the latent scale factor and log-variance buffers
# of some trainers, a VAE's training loss (LPIPS, discriminator; A1111 skips `loss*` too), CLIP's position_ids
# and logit_scale, and ComfyUI's v_pred / ztsnr markers (read as markers, not weights).
LEFTOVER = re.compile(r"betas|alphas_cumprod(_prev)?|sqrt_\w+|log_one_minus_\w+|posterior_\w+|lvlb_weights|logvar"
                      r"|scale_factor|model_ema\..+|denoiser\.(log_)?sigmas|v_pred|ztsnr|(first_stage_model\.)?loss\..+"
                      r"|(.*\.)?position_ids|(.*\.)?logit_scale")


@dataclass
class SingleFile:
    """A single file's tensors under normalised names, and where each one is stored."""

    path: Path
    header: Header  # normalised key -> (dtype, shape)
    stored: dict[str, str]  # normalised key -> its key in the file

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.header)


def read(path: Path, header: Header) -> SingleFile:
    """Normalise a file's keys: no `state_dict.` prefix, no `_orig_mod.` segments, and an EMA-only UNet
    under its dotted names (when the file has no other UNet weights)."""
    stored = {re.sub(r"(^|\.)_orig_mod\.", r"\1", k.removeprefix("state_dict.")): k for k in header}
    if not any(k.startswith(UNET_PREFIX) for k in stored):
        ema = {k: v for k, v in stored.items() if k.startswith("model_ema.diffusion_model")}
        stored = {k: v for k, v in stored.items() if k not in ema}
        stored |= {_unflatten_ema(path, k): v for k, v in ema.items()}
    return SingleFile(path, {k: header[v] for k, v in stored.items()}, stored)


# LitEma stores `diffusion_model.input_blocks.0.0.weight` as `diffusion_modelinput_blocks00weight`. The dots come
# back by reading the name as a sequence of openaimodel's module names and numbers.
_EMA_TOKEN = re.compile(r"diffusion_model|time_embed|label_emb|input_blocks|middle_block|output_blocks|out_layers"
                        r"|in_layers|emb_layers|skip_connection|transformer_blocks|proj_in|proj_out|to_out|to_[qkv]"
                        r"|attn[12]|norm[123]?|ff|net|proj|op|conv|out|weight|bias|\d+")


def _unflatten_ema(path: Path, key: str) -> str:
    flat, tokens = key.removeprefix("model_ema."), []
    pos = 0
    while pos < len(flat):
        m = _EMA_TOKEN.match(flat, pos)
        if m is None:
            raise CheckpointError(f"{path}: cannot read the EMA weight name {key!r} (its UNet is stored only as "
                                  "LDM's EMA copy, with the dots of its names dropped)")
        token, pos = m[0], m.end()
        if token.isdigit():  # a block index then a one-digit position in that block, else single digits
            tokens += [token[:-1], token[-1]] if tokens[-1] in ("input_blocks", "output_blocks") else list(token)
        else:
            tokens.append(token)
    return "model." + ".".join(tokens)


def layout(file: SingleFile) -> Layout | None:
    """Which family and text-encoder layout a file holds (sdkit.families.LAYOUTS), None if none fits."""
    xl = file.has(UNET_PREFIX + "label_emb.")  # SDXL's text_time conditioning
    towers = {p for p in (t.prefix for lay in LAYOUTS for t in lay.towers) if file.has(p)}
    for candidate in LAYOUTS:
        if all(t.prefix in towers for t in candidate.towers) and (candidate.family == "sdxl") == xl:
            return candidate
    return None


def has_text_encoder(file: SingleFile) -> bool:
    return any(file.has(p) for p in TEXT_PREFIXES)


class Converter:
    """Collects canonical TensorRefs for one component and the file keys it could not map."""

    def __init__(self, file: SingleFile, prefix: str):
        self.file, self.prefix = file, prefix
        self.keys = {k[len(prefix):]: k for k in file.header  # suffix -> full key
                     if k.startswith(prefix) and not LEFTOVER.fullmatch(k)}
        self.weights: Weights = {}
        self.unexpected: list[str] = []

    def shape(self, key: str) -> tuple[int, ...]:
        return self.file.header[self.prefix + key][1]

    def add(self, name: str, key: str, shape=None, transform=None) -> None:
        dtype, stored = self.file.header[self.prefix + key]
        self.weights[name] = TensorRef(self.file.path, self.file.stored[self.prefix + key], tuple(shape or stored),
                                       dtype, transform)

    def skip(self, key: str) -> None:
        self.unexpected.append(self.file.stored[self.prefix + key])


# ---- UNet ----

RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
          "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut"}
UNET_TOP = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
            "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out.",
            "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2."}


def unet_levels(keys) -> list[dict]:
    """Walk input_blocks 1.. : resnets (with an optional attention at .1) until a downsampler (.0.op)
    closes a level. -> [{"blocks": [input block index, ...], "attn": bool, "depth": transformer blocks}]"""
    indices = sorted({int(k.split(".")[1]) for k in keys if k.startswith("input_blocks.")} - {0})
    levels, current = [], []
    for i in indices:
        if f"input_blocks.{i}.0.op.weight" in keys:
            levels.append(current)
            current = []
        else:
            current.append(i)
    levels.append(current)
    out = []
    for blocks in levels:
        attention = re.compile(rf"input_blocks\.{blocks[0]}\.1\.transformer_blocks\.(\d+)\.")
        depth = {m[1] for k in keys if (m := attention.match(k))}
        out.append({"blocks": blocks, "attn": bool(depth), "depth": len(depth) or 1})
    return out


def unet_blocks(attn: list[bool], per: int) -> dict[str, str]:
    """LDM prefix -> canonical prefix of every block of a UNet whose levels have `per` resnets each and
    attention where `attn` says (the checkpoint reader's map; LoRA files name layers either way)."""
    n = len(attn)
    blocks = dict(UNET_TOP)
    for i in range(n):
        for j in range(per):
            b = (per + 1) * i + 1 + j  # input block 0 is conv_in; each level ends in a downsampler block
            blocks[f"input_blocks.{b}.0."] = f"down_blocks.{i}.resnets.{j}."
            blocks[f"input_blocks.{b}.1."] = f"down_blocks.{i}.attentions.{j}."
        if i < n - 1:
            blocks[f"input_blocks.{(per + 1) * (i + 1)}.0.op."] = f"down_blocks.{i}.downsamplers.0.conv."
        # up block i mirrors down level n-1-i and has one resnet more; its upsampler follows the last one
        for j in range(per + 1):
            blocks[f"output_blocks.{(per + 1) * i + j}.0."] = f"up_blocks.{i}.resnets.{j}."
            blocks[f"output_blocks.{(per + 1) * i + j}.1."] = f"up_blocks.{i}.attentions.{j}."
        if i < n - 1:
            upsampler = f"output_blocks.{(per + 1) * i + per}.{2 if attn[n - 1 - i] else 1}."
            blocks[upsampler] = f"up_blocks.{i}.upsamplers.0."
    blocks |= {"middle_block.0.": "mid_block.resnets.0.", "middle_block.1.": "mid_block.attentions.0.",
               "middle_block.2.": "mid_block.resnets.1."}
    return blocks


def unet(file: SingleFile, family: Family, sample_size: int,
         time_id_width: int | None) -> tuple[UNetConfig, Weights, list[str]]:
    """time_id_width: how wide SDXL embeds each time id (see families.time_ids); None for SD1 and SD2."""
    c = Converter(file, UNET_PREFIX)
    keys = c.keys
    levels = unet_levels(keys)
    n, per = len(levels), len(levels[0]["blocks"])
    if any(len(level["blocks"]) != per for level in levels):
        raise CheckpointError(f"{file.path}: UNet levels have different numbers of resnets "
                              f"{[len(level['blocks']) for level in levels]}; not a Stable Diffusion UNet")
    channels = tuple(c.shape(f"input_blocks.{level['blocks'][0]}.0.out_layers.3.weight")[0] for level in levels)
    attn = [level["attn"] for level in levels]

    blocks = unet_blocks(attn, per)

    for key in keys:
        parts = key.split(".")
        prefix = next((p for p in (".".join(parts[:k]) + "." for k in (4, 3, 2)) if p in blocks), None)
        if prefix is None:
            c.skip(key)
            continue
        name, rest = blocks[prefix], key[len(prefix):]
        if ".resnets." in name:
            layer = next((r for r in RESNET if rest.startswith(r + ".")), None)
            if layer is None:
                c.skip(key)
                continue
            rest = RESNET[layer] + rest[len(layer):]
        c.add(name + rest, key)

    context = next(c.shape(k)[1] for k in keys if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in keys if k.endswith(".proj_in.weight"))
    xl = "label_emb.0.0.weight" in keys
    config = UNetConfig(
        in_channels=c.shape("input_blocks.0.0.weight")[1],
        out_channels=c.shape("out.2.weight")[0],
        block_out_channels=channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=per,
        transformer_layers_per_block=tuple(level["depth"] for level in levels),
        num_heads=(family.unet_heads,) * n if family.unet_heads else tuple(ch // 64 for ch in channels),
        cross_attention_dim=context,
        use_linear_projection=len(c.shape(proj_in)) == 2,
        upcast_attention=family.upcast_attention,
        sample_size=sample_size,
        addition_embed_type="text_time" if xl else None,
        addition_time_embed_dim=time_id_width if xl else None,
        projection_class_embeddings_input_dim=c.shape("label_emb.0.0.weight")[1] if xl else None,
    )
    return config, c.weights, c.unexpected


# ---- VAE ----

SHORTCUT = ("nin_shortcut.", "conv_shortcut.")  # a resnet's 1x1 shortcut convolution: LDM's name, diffusers'


def vae_blocks(n: int, per: int) -> dict[str, str]:
    """LDM prefix -> canonical prefix of every block of a VAE with `n` levels of `per` encoder resnets (the
    checkpoint reader's map; the single-file writer reads it backwards). decoder.up is numbered from the bottom
    (up.{n-1} runs first), diffusers' up_blocks from the top; each decoder level has one resnet more."""
    blocks = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for side in ("encoder", "decoder"):
        blocks |= {f"{side}.conv_in.": f"{side}.conv_in.", f"{side}.conv_out.": f"{side}.conv_out.",
                   f"{side}.norm_out.": f"{side}.conv_norm_out.",
                   f"{side}.mid.block_1.": f"{side}.mid_block.resnets.0.",
                   f"{side}.mid.block_2.": f"{side}.mid_block.resnets.1.",
                   f"{side}.mid.attn_1.norm.": f"{side}.mid_block.attentions.0.group_norm.",
                   f"{side}.mid.attn_1.proj_out.": f"{side}.mid_block.attentions.0.to_out.0."}
        blocks |= {f"{side}.mid.attn_1.{p}.": f"{side}.mid_block.attentions.0.to_{p}." for p in "qkv"}
    for i in range(n):
        blocks |= {f"encoder.down.{i}.block.{j}.": f"encoder.down_blocks.{i}.resnets.{j}." for j in range(per)}
        blocks |= {f"decoder.up.{n - 1 - i}.block.{j}.": f"decoder.up_blocks.{i}.resnets.{j}." for j in range(per + 1)}
        if i < n - 1:
            blocks[f"encoder.down.{i}.downsample."] = f"encoder.down_blocks.{i}.downsamplers.0."
            blocks[f"decoder.up.{n - 1 - i}.upsample."] = f"decoder.up_blocks.{i}.upsamplers.0."
    return blocks


def block_prefix(name: str, blocks) -> str | None:
    """The longest dotted prefix of `name` that `blocks` holds, None if none."""
    parts = name.split(".")
    return next((p for p in (".".join(parts[:k]) + "." for k in range(len(parts) - 1, 0, -1)) if p in blocks), None)


def vae(file: SingleFile, scaling_factor: float, sample_size: int,
        prefix: str = VAE_PREFIX) -> tuple[VAEConfig, Weights, list[str]]:
    """prefix: where the VAE's tensors are; "" for a VAE file on its own (vae-ft-mse-840000, sdxl_vae)."""
    c = Converter(file, prefix)
    keys = c.keys
    if any(k.startswith("encoder.down_blocks.") for k in keys):  # already in diffusers' names
        return _diffusers_vae(c, scaling_factor, sample_size)
    n = 1 + max((int(k.split(".")[2]) for k in keys if k.startswith("encoder.down.")), default=-1)
    if n == 0:
        raise CheckpointError(f"{file.path}: its VAE ({prefix}*) has no encoder.down.* blocks")
    per = len({k.split(".")[4] for k in keys if k.startswith("encoder.down.0.block.")})
    blocks = vae_blocks(n, per)
    for key in keys:
        block = block_prefix(key, blocks)
        if block is None:
            c.skip(key)
        else:
            _add_vae(c, blocks[block] + key[len(block):].replace(*SHORTCUT), key)

    config = VAEConfig(
        in_channels=c.shape("encoder.conv_in.weight")[1],
        out_channels=c.shape("decoder.conv_out.weight")[0],
        latent_channels=c.shape("post_quant_conv.weight")[0],
        block_out_channels=tuple(c.shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(n)),
        layers_per_block=per,
        scaling_factor=scaling_factor,
        sample_size=sample_size,
    )
    return config, c.weights, c.unexpected


OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_vae_name(key: str) -> str:
    """A diffusers AutoencoderKL key -> today's name: old diffusers called the mid attention's projections
    query / key / value / proj_attn."""
    m = re.fullmatch(r"(.+\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)", key)
    return f"{m[1]}{OLD_VAE_ATTENTION[m[2]]}.{m[3]}" if m else key


def _diffusers_vae(c: Converter, scaling_factor: float, sample_size: int) -> tuple[VAEConfig, Weights, list[str]]:
    """A VAE stored in diffusers' names: under first_stage_model. (some merging tools write it so), or on its own
    (a diffusers VAE's weights file, renamed)."""
    for key in c.keys:
        _add_vae(c, diffusers_vae_name(key), key)
    n = len({k.split(".")[2] for k in c.keys if k.startswith("encoder.down_blocks.")})  # >= 1: how it was told
    config = VAEConfig(
        in_channels=c.shape("encoder.conv_in.weight")[1],
        out_channels=c.shape("decoder.conv_out.weight")[0],
        latent_channels=c.shape("post_quant_conv.weight")[0],
        block_out_channels=tuple(c.shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(n)),
        layers_per_block=len({k.split(".")[4] for k in c.keys if k.startswith("encoder.down_blocks.0.resnets.")}),
        scaling_factor=scaling_factor,
        sample_size=sample_size,
    )
    return config, c.weights, c.unexpected


def _add_vae(c: Converter, name: str, key: str) -> None:
    if ".attentions.0.to_" in name and len(c.shape(key)) == 4:  # LDM's 1x1 conv -> linear
        c.add(name, key, c.shape(key)[:2], lambda x: x[:, :, 0, 0])
    else:
        c.add(name, key)


# ---- text encoders ----

CLIP_NAMES = re.compile(r"(embeddings\.(token|position)_embedding|encoder\.layers\.\d+|final_layer_norm)\.")


def clip(file: SingleFile, prefix: str) -> tuple[TextEncoderConfig, Weights, list[str]]:
    """transformers' CLIPTextModel saved under `prefix`: already canonical once 'text_model.' is dropped."""
    c = Converter(file, prefix)
    for key in c.keys:
        name = key.removeprefix("text_model.")
        if CLIP_NAMES.match(name):
            c.add(name, key)
        else:
            c.skip(key)
    return _text_config(c.weights, "quick_gelu"), c.weights, c.unexpected


OPENCLIP_LAYER = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
                  "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}


def openclip(file: SingleFile, prefix: str, family: Family) -> tuple[TextEncoderConfig, Weights, list[str]]:
    """OpenCLIP's text tower -> CLIPTextModel names.

    A family that conditions on a penultimate layer (SD2: family.text_layers = 23 of ViT-H's 24) has its
    text_projection dropped, and its last resblock when the file holds the whole tower (Stability's files: a
    text_projection, or more blocks than the family uses). Files written by diffusers' converter hold exactly
    the 23 blocks diffusers' SD2 text_encoder has, and keep them all."""
    c = Converter(file, prefix)
    width = c.shape("token_embedding.weight")[1]
    layers = 1 + max((int(k.split(".")[2]) for k in c.keys if k.startswith("transformer.resblocks.")), default=-1)
    if layers == 0:
        raise CheckpointError(f"{file.path}: its text encoder ({prefix}*) has no transformer.resblocks.*")
    used = family.text_layers
    projection = used is None and "text_projection" in c.keys
    if used is not None and (layers > used or ("text_projection" in c.keys and layers != used)):
        layers -= 1
    for key in c.keys:
        if key == "token_embedding.weight":
            c.add("embeddings.token_embedding.weight", key)
        elif key == "positional_embedding":
            c.add("embeddings.position_embedding.weight", key)
        elif key.startswith("ln_final."):
            c.add("final_layer_norm." + key.removeprefix("ln_final."), key)
        elif key == "text_projection":  # (width, projection): OpenCLIP computes x @ P, a Linear stores P.T
            if projection:
                c.add("text_projection.weight", key, c.shape(key)[::-1], lambda x: x.T)
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)", key):
            i, rest = int(m[1]), m[2]
            if i >= layers:
                continue
            layer = f"encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):  # (3 * width, ...): q, k, v stacked
                kind = rest.rsplit("_", 1)[1]
                for j, p in enumerate(("q_proj", "k_proj", "v_proj")):
                    rows = slice(j * width, (j + 1) * width)
                    c.add(f"{layer}self_attn.{p}.{kind}", key, (width, *c.shape(key)[1:]), lambda x, r=rows: x[r])
            elif part := next((p for p in OPENCLIP_LAYER if rest.startswith(p)), None):
                c.add(layer + OPENCLIP_LAYER[part] + rest[len(part):], key)
            else:
                c.skip(key)
        else:
            c.skip(key)
    return _text_config(c.weights, "gelu"), c.weights, c.unexpected


def _text_config(weights: Weights, act: str) -> TextEncoderConfig:
    vocab, width = weights["embeddings.token_embedding.weight"].shape
    return TextEncoderConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=weights["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_layers=len({k.split(".")[2] for k in weights if k.startswith("encoder.layers.")}),
        num_heads=width // 64,
        max_length=weights["embeddings.position_embedding.weight"].shape[0],
        hidden_act=act,
        projection_dim=weights["text_projection.weight"].shape[0] if "text_projection.weight" in weights else None,
    )
