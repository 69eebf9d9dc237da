"""Tiny random Stable Diffusion checkpoints in the layouts users download, built with diffusers + transformers.

- `build_folder(path, family)`: a diffusers folder as published on the Hub (model_index.json, unet/, vae/,
  text_encoder/ with the legacy 'text_model.' key prefix, tokenizer/ as vocab.json + merges.txt + the two
  special-token files, scheduler/ with the family's published config). family: "sd1", "sd2v", "sdxl" or
  "sdxl_refiner" (SDXL adds text_encoder_2 with its projection and tokenizer_2, "!"-padded, as the Hub
  publishes them; the refiner has only those).
- `to_single_file(folder, path, family)`: the same weights as an ORIGINAL (CompVis / Stability) single file,
  with the leftovers real files carry. The inverse mapping here is written from diffusers'
  scripts/convert_diffusers_to_original_stable_diffusion.py, independently of sdkit's forward mapping.
- `relayout(src, dst, rename, ...)`: another layout of a single file (renamed, dropped or added keys,
  converted tensors, metadata): the odd files found in the wild, built cheaply from the ones above.
- `add_fp16_variants(folder)`: *.fp16.safetensors next to every weight file.
- `diffusers_pipeline(folder)`: the oracle for parity tests (StableDiffusion[XL]Pipeline, the refiner's
  StableDiffusionXLImg2ImgPipeline);
  `img2img_like_sdkit(...)`: its image-to-image made to encode and noise as sdkit does.

Every weight that is constant at init (norm scales and shifts, biases, zero-initialised output layers) is
randomised: a mapping that swapped two of them would otherwise go unnoticed. Seeded, deterministic.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler  # the real one, also without scipy

from sdkit.samplers import ALIASES, SAMPLERS
from sdkit.samplers.registry import SCHEDULES
from sdkit.tokenizer import bpe_vocab


def _reference(name: str):
    s = SAMPLERS[name]
    return {"LMSDiscreteScheduler": LMSDiscreteScheduler}.get(s.reference) or getattr(diffusers, s.reference)


# sdkit sampler name (and alias with its schedule, such as the default dpmpp_2m_karras) -> the diffusers scheduler
# class (and extra from_config arguments) it must reproduce
SCHEDULERS = {name: (_reference(name), s.reference_config) for name, s in SAMPLERS.items()}
SCHEDULERS |= {alias: (_reference(name), {**SAMPLERS[name].reference_config, **SCHEDULES[schedule][1]})
               for alias, (name, schedule) in ALIASES.items() if schedule}

def step_noise_like_sdkit(monkeypatch, draw):
    """Stochastic samplers: diffusers' per-step noise (randn_tensor(shape, ...) in each scheduler's module)
    becomes draw(shape), the continuation of each image's own generator, as in sdkit."""
    for name, s in SAMPLERS.items():
        if s.stochastic:
            monkeypatch.setattr(sys.modules[SCHEDULERS[name][0].__module__], "randn_tensor",
                                lambda shape, *args, **kw: draw(tuple(shape)))


# the published configs, as sdkit bundles them for single files (copies of the Hub repos' files)
DATA = Path(__file__).resolve().parents[1] / "sdkit" / "data"

# SD1: CLIP ViT-L-like text tower (quick_gelu) and a UNet with 8 heads at every level.
# SD2-v: OpenCLIP-like tower (gelu, "!" pad) and a UNet with heads of 64, linear projections, upcast attention.
# SDXL: CLIP-L-like and OpenCLIP-bigG-like towers (the second with a projection; eos_token_id 2 as in the Hub's
# configs, so transformers pools at argmax(ids)), a UNet shaped like SDXL base's (no attention at the top level,
# 64-wide heads, deeper transformers further down, text_time micro-conditioning embedded 256 wide), a VAE with
# SDXL's scaling factor.
FAMILIES = {
    "sd1": dict(
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                  hidden_act="quick_gelu"),
        unet=dict(block_out_channels=(32, 64), attention_head_dim=8),
        scheduler="sd15-scheduler_config.json", tokenizer="clip-l", unet_sample_size=8,
    ),
    "sd2v": dict(
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                  hidden_act="gelu"),
        unet=dict(block_out_channels=(64, 128), attention_head_dim=(1, 2), use_linear_projection=True,
                  upcast_attention=True),
        scheduler="sd21-768v-scheduler_config.json", tokenizer="openclip", unet_sample_size=12,
    ),
    "sdxl": dict(
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1,
                  hidden_act="quick_gelu"),
        text_2=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2,
                    hidden_act="gelu", projection_dim=64, bos_token_id=0, eos_token_id=2),
        unet=dict(block_out_channels=(64, 128), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                  transformer_layers_per_block=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=6 * 256 + 64),
        vae=dict(scaling_factor=0.13025, force_upcast=True),
        scheduler="sdxl-base-scheduler_config.json", tokenizer="clip-l", tokenizer_2="openclip", unet_sample_size=8,
    ),
    # The SDXL refiner: the OpenCLIP-bigG-like tower alone (as text_encoder_2), a UNet conditioned on the pooled
    # text + 5 time ids (sizes, crop, aesthetic score), each embedded 32 wide here (256 in the real one): the
    # loader must read the width off the shapes.
    "sdxl_refiner": dict(
        text_2=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2,
                    hidden_act="gelu", projection_dim=64, bos_token_id=0, eos_token_id=2),
        unet=dict(block_out_channels=(64, 128), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=32,
                  projection_class_embeddings_input_dim=5 * 32 + 64),
        vae=dict(scaling_factor=0.13025, force_upcast=True),
        scheduler="sdxl-base-scheduler_config.json", tokenizer_2="openclip", unet_sample_size=8,
    ),
}

# Inpainting models: the same, with a UNet taking latents + mask + masked-image latents (9 channels), as
# SD1.5-inpainting, SD2-inpainting (a v-prediction one here) and SDXL inpainting 0.1
for _name in ("sd1", "sd2v", "sdxl"):
    FAMILIES[f"{_name}_inpaint"] = {**FAMILIES[_name], "unet": {**FAMILIES[_name]["unet"], "in_channels": 9}}
INPAINT_CLASSES = {"sd1_inpaint": "StableDiffusionInpaintPipeline", "sd2v_inpaint": "StableDiffusionInpaintPipeline",
                   "sdxl_inpaint": "StableDiffusionXLInpaintPipeline"}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.8.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
MODEL_INDEX_REFINER = {  # stabilityai/stable-diffusion-xl-refiner-1.0's
    "_class_name": "StableDiffusionXLImg2ImgPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": False,
    "requires_aesthetics_score": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": [None, None],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": [None, None],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
MODEL_INDEX_XL = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Add noise to every parameter that init left constant (LayerNorm/GroupNorm 1s and 0s, biases,
    zero-initialised output layers)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() > 0 and bool((p == p.flatten()[0]).all()):
                p.add_(0.1 * torch.randn(p.shape, generator=generator))


def build_models(family: str, seed: int = 0):
    """({"text_encoder": ..., "text_encoder_2": ...} as the family has them, unet, vae), seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = FAMILIES[family]
    torch.manual_seed(seed)
    texts = {name: spec[key] for name, key in (("text_encoder", "text"), ("text_encoder_2", "text_2")) if key in spec}
    text_encoders = {name: (CLIPTextModelWithProjection if "projection_dim" in t else CLIPTextModel)(
        CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **t)) for name, t in texts.items()}
    unet = UNet2DConditionModel(**{
        "sample_size": spec["unet_sample_size"], "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": sum(t["hidden_size"] for t in texts.values()), "norm_num_groups": 32, **spec["unet"]})
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=spec["unet_sample_size"] * 8, **spec.get("vae", {}))
    generator = torch.Generator().manual_seed(seed + 1)
    for model in (*text_encoders.values(), unet, vae):
        perturb(model, generator)
        model.eval()
    return text_encoders, unet, vae


def write_tokenizer(path: Path, name: str) -> None:
    """vocab.json + merges.txt + special_tokens_map.json + tokenizer_config.json, as the Hub repos publish."""
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_vocab()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(DATA / "tokenizers" / name / file, path / file)


def build_folder(path: Path, family: str, seed: int = 0) -> Path:
    """A diffusers folder of a tiny random model, laid out as the Hub publishes SD 1.5 / SD 2.1 / SDXL base and
    refiner."""
    spec = FAMILIES[family]
    text_encoders, unet, vae = build_models(family, seed)
    path.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    for name, text_encoder in text_encoders.items():
        text_encoder.save_pretrained(path / name)
        # transformers 5 saves CLIPTextModel without the 'text_model.' prefix that every published folder has
        te_file = path / name / "model.safetensors"
        save_file({k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v.contiguous()
                   for k, v in load_file(te_file).items()}, te_file, metadata={"format": "pt"})
    for name in ("tokenizer", "tokenizer_2"):
        if name in spec:
            write_tokenizer(path / name, spec[name])
    (path / "scheduler").mkdir(exist_ok=True)
    shutil.copy(DATA / "schedulers" / spec["scheduler"], path / "scheduler" / "scheduler_config.json")
    index = {"sdxl": MODEL_INDEX_XL, "sdxl_inpaint": MODEL_INDEX_XL, "sdxl_refiner": MODEL_INDEX_REFINER}.get(
        family, MODEL_INDEX)
    if family in INPAINT_CLASSES:
        index = {**index, "_class_name": INPAINT_CLASSES[family]}
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def add_fp16_variants(folder: Path) -> Path:
    """Write `<name>.fp16.safetensors` next to each component's weight file (the Hub's fp16 variant)."""
    for file in folder.glob("*/*.safetensors"):
        if ".fp16." not in file.name:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(file).items()}
            save_file(tensors, file.with_name(file.name.replace(".safetensors", ".fp16.safetensors")))
    return folder


# ---- diffusers -> original single-file names (convert_diffusers_to_original_stable_diffusion.py) ----

UNET_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
               ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
UNET_TOP = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
            ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
            ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")]


def unet_to_ldm(sd: dict, config) -> dict:
    """UNet2DConditionModel state dict -> `model.diffusion_model.*` names (LDM's openaimodel.UNetModel)."""
    n, per = len(config.block_out_channels), config.layers_per_block
    has_attn = ["CrossAttn" in t for t in config.down_block_types]
    prefixes = []  # (ldm prefix, diffusers prefix)
    for i in range(n):
        for j in range(per):
            prefixes.append((f"input_blocks.{(per + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if has_attn[i]:
                prefixes.append((f"input_blocks.{(per + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            prefixes.append((f"input_blocks.{(per + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        up_attn = has_attn[n - 1 - i]
        for j in range(per + 1):
            prefixes.append((f"output_blocks.{(per + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn:
                prefixes.append((f"output_blocks.{(per + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            prefixes.append((f"output_blocks.{(per + 1) * i + per}.{2 if up_attn else 1}.",
                             f"up_blocks.{i}.upsamplers.0."))
    prefixes += [("middle_block.0.", "mid_block.resnets.0."), ("middle_block.1.", "mid_block.attentions.0."),
                 ("middle_block.2.", "mid_block.resnets.1.")]
    out = {}
    for name, tensor in sd.items():
        ldm = _rename(name, UNET_TOP + prefixes)
        if ".resnets." in name:
            for a, b in UNET_RESNET:
                ldm = ldm.replace(b, a)
        out["model.diffusion_model." + ldm] = tensor
    return out


VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def vae_to_ldm(sd: dict, config) -> dict:
    """AutoencoderKL state dict -> `first_stage_model.*` names, mid attention as 1x1 conv weights."""
    n, per = len(config.block_out_channels), config.layers_per_block
    prefixes = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out")]
    for i in range(n):
        for j in range(per):
            prefixes.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(per + 1):
            prefixes.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            prefixes.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            prefixes.append((f"up.{n - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
    for i in range(2):
        prefixes.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    out = {}
    for name, tensor in sd.items():
        ldm = name
        for a, b in prefixes:
            ldm = ldm.replace(b, a)
        if ".mid_block.attentions.0." in ldm:
            ldm = ldm.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in VAE_ATTN:
                ldm = ldm.replace(b, a)
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]  # LDM's AttnBlock uses 1x1 convolutions
        out["first_stage_model." + ldm] = tensor
    return out


def clip_to_ldm(sd: dict, legacy_prefix: bool = True, prefix: str = "cond_stage_model.transformer.") -> dict:
    """CLIPTextModel state dict -> `prefix` (SD1's FrozenCLIPEmbedder, SDXL's first embedder), with the
    int64 position_ids buffer that files saved by older transformers carry."""
    prefix += "text_model." if legacy_prefix else ""
    out = {prefix + k: v for k, v in sd.items()}
    out[prefix + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


OPENCLIP = [("transformer.resblocks.", "encoder.layers."), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
            (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2."), (".attn.", ".self_attn."),
            ("ln_final.", "final_layer_norm.")]


def sd2_unused(sd: dict, generator: torch.Generator) -> dict:
    """What SD2's OpenCLIP tower carries but does not use: one more (last) resblock and a text_projection."""
    width = sd["embeddings.token_embedding.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    last = {k.replace("layers.0.", f"layers.{layers}."): 0.05 * torch.randn(v.shape, generator=generator)
            for k, v in sd.items() if k.startswith("encoder.layers.0.")}
    return {**sd, **last, "text_projection.weight": 0.05 * torch.randn(width, width, generator=generator)}


def openclip_to_ldm(sd: dict, prefix: str = "cond_stage_model.model.") -> dict:
    """CLIPTextModel[WithProjection] state dict -> an OpenCLIP text tower under `prefix` (SD2's
    FrozenOpenCLIPEmbedder, SDXL's second embedder): fused in_proj q/k/v, logit_scale, and text_projection
    as OpenCLIP stores it, (width, P) for x @ P: the transpose of the Linear weight."""
    out = {prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
           prefix + "logit_scale": torch.tensor(4.6052)}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T
    for name, tensor in sd.items():
        if name.startswith(("embeddings.", "text_projection.")) or ".k_proj." in name or ".v_proj." in name:
            continue
        if ".q_proj." in name:  # (3 * width, width): q, k, v stacked
            tensor = torch.cat([sd[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")])
            name = name.replace("self_attn.q_proj.weight", "attn.in_proj_weight")
            name = name.replace("self_attn.q_proj.bias", "attn.in_proj_bias")
        for a, b in OPENCLIP:
            name = name.replace(b, a)
        out[prefix + name] = tensor
    return out


def ldm_leftovers(generator: torch.Generator) -> dict:
    """What a real LDM training checkpoint carries besides the model: DDPM buffers and EMA bookkeeping."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    out = {
        "betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": betas * (1 - prev) / (1 - alphas_cumprod),
        "posterior_log_variance_clipped": (betas * (1 - prev) / (1 - alphas_cumprod)).clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
        "model_ema.diffusion_modelinput_blocks00weight": torch.randn(8, 4, 3, 3, generator=generator),
        "model_ema.diffusion_modelout2bias": torch.randn(4, generator=generator),
    }
    return {k: v.float() if v.dtype == torch.float64 else v for k, v in out.items()}


def to_single_file(folder: Path, path: Path, family: str, *, legacy_prefix: bool = True,
                   leftovers: bool = True, openclip_tail: bool = True, extra: dict | None = None,
                   metadata: dict | None = None) -> Path:
    """Write the folder's weights as an original single-file checkpoint (SD1: CLIP under
    cond_stage_model.transformer; SD2: OpenCLIP under cond_stage_model.model; SDXL: CLIP under
    conditioner.embedders.0.transformer, OpenCLIP with its projection under conditioner.embedders.1.model;
    the refiner: that OpenCLIP alone under conditioner.embedders.0.model). openclip_tail=False writes SD2's
    tower as diffusers' converter does (no unused last block, no text_projection). `extra` adds raw
    tensors, `metadata` the file's __metadata__."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    generator = torch.Generator().manual_seed(7)
    unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
    vae_cfg = AutoencoderKL.load_config(folder / "vae")
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    text, text_2 = ({k.removeprefix("text_model."): v for k, v in load_file(f / "model.safetensors").items()}
                    if f.is_dir() else None for f in (folder / "text_encoder", folder / "text_encoder_2"))
    tensors = {**unet_to_ldm(unet, SimpleNamespace(**unet_cfg)), **vae_to_ldm(vae, SimpleNamespace(**vae_cfg))}
    if family in ("sdxl", "sdxl_inpaint"):
        tensors |= clip_to_ldm(text, legacy_prefix, prefix="conditioner.embedders.0.transformer.")
        tensors |= openclip_to_ldm(text_2, prefix="conditioner.embedders.1.model.")
    elif family == "sdxl_refiner":
        tensors |= openclip_to_ldm(text_2, prefix="conditioner.embedders.0.model.")
    elif family.startswith("sd2"):
        tensors |= openclip_to_ldm(sd2_unused(text, generator) if openclip_tail else text)
    else:
        tensors |= clip_to_ldm(text, legacy_prefix)
    if leftovers:
        tensors |= ldm_leftovers(generator)
    tensors |= extra or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def relayout(src: Path, dst: Path, rename=lambda key: key, *, keep=lambda key: True, extra: dict | None = None,
             convert=None, metadata: dict | None = None) -> Path:
    """Another layout of a single file, cheaply: each kept key renamed (rename may return None to drop it),
    `convert(key, tensor)` applied to each tensor, `extra` tensors added, `metadata` as its __metadata__."""
    tensors = {}
    for key, x in load_file(src).items():
        new = rename(key) if keep(key) else None
        if new is not None:
            tensors[new] = (convert(key, x) if convert else x).contiguous()
    save_file({**tensors, **(extra or {})}, dst, metadata=metadata)
    return dst


def diffusers_pipeline(folder: Path):
    """diffusers' StableDiffusionPipeline, StableDiffusionXLPipeline or, for the refiner,
    StableDiffusionXLImg2ImgPipeline (both without watermark), for a folder: the oracle of parity tests."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    if not (folder / "text_encoder").is_dir():
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, add_watermarker=False)
    elif (folder / "text_encoder_2").is_dir():
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def img2img_like_sdkit(monkeypatch, img2img_module, noise) -> None:
    """Make diffusers' image-to-image pipeline module (SD's or SDXL's) encode to the VAE posterior's mean, as
    sdkit does (diffusers samples the posterior), and noise the encoded image with `noise`."""
    real_retrieve = img2img_module.retrieve_latents
    monkeypatch.setattr(img2img_module, "retrieve_latents",
                        lambda out, generator=None, sample_mode="sample": real_retrieve(out, sample_mode="argmax"))
    monkeypatch.setattr(img2img_module, "randn_tensor", lambda *a, **kw: noise)


def _rename(name: str, prefixes: list[tuple[str, str]]) -> str:
    """Replace the longest matching diffusers prefix with its LDM counterpart."""
    for ldm, hf in sorted(prefixes, key=lambda p: -len(p[1])):
        if name.startswith(hf):
            return ldm + name[len(hf):]
    raise KeyError(f"no LDM name for {name}")

