"""What a .safetensors file is when it is not a checkpoint sdkit can load, so that `load` refuses it in one line
naming it ("a LoRA", "Flux", "a VAE on its own") instead of listing the tensors it could not map.

Read from the tensor names only (diffusers' CHECKPOINT_KEY_NAMES, ComfyUI's model_detection and SwarmUI's
model class sorter recognise these files by the same keys).
"""

from __future__ import annotations

import re

from .families import UNET_PREFIX

NOT_SD = "sdkit runs Stable Diffusion 1.x, 2.x and XL checkpoints"
# Adapters hold nothing but their own tensors: kohya / LyCORIS (lora_unet_*, lora_te*_*: lora_down, hada_w1_a,
# lokr_w1, alpha), PEFT and diffusers (lora_A / lora_B, lora.down), DoRA scales.
LORA = re.compile(r"(^|[._])lora[._]|\.(hada|lokr)_|\.oft_|\.dora_scale$|\.alpha$")
# (what the file is, a pattern some key matches, what to do instead); the first that matches wins. Keys are
# normalised first (no state_dict. / _orig_mod.), and may carry ComfyUI's model.diffusion_model. prefix.
KINDS = (
    ("a ControlNet", r"^(control_model\.|controlnet_|input_hint_block\.|lora_controlnet$)",
     "sdkit does not run ControlNets yet"),
    ("Flux", r"(^|\.)(double_blocks|single_blocks|single_transformer_blocks)\.\d", NOT_SD),
    ("Stable Diffusion 3", r"(^|\.)joint_blocks\.\d|^context_embedder\.weight$", NOT_SD),
    ("Stable Cascade", r"(^|\.)(clip_txt_mapper|clf\.1)\.weight$|^vquantizer\.", NOT_SD),
    ("Stable Video Diffusion", r"\.time_stack\.", NOT_SD),
    # EDM with latent statistics (edm_mean, edm_std: Playground v2.5) loads; EDM v-prediction does not yet
    ("an EDM v-prediction model (CosXL)", r"^edm_vpred\.sigma_(max|min)$",
     "sdkit runs EDM models with edm_mean / edm_std (Playground v2.5), not EDM v-prediction yet"),
    ("SD 2 depth-to-image", r"^depth_model\.", NOT_SD),
    ("an unCLIP model", r"^(embedder|noise_augmentor)\.", NOT_SD),
)
# Textual-inversion embeddings hold nothing else: A1111's (string_to_param / emb_params), SDXL's (clip_l,
# clip_g), and single-vector files named after their token.
EMBEDDING = re.compile(r"emb_params|clip_[lg]|string_to_(param|token)\..+|<[^>]+>|\*")
# Input channels of a UNet other than 4 -> what it is
# (9: inpainting models, which sdkit runs: latents + mask + masked-image latents)
UNET_INPUTS = {8: "an InstructPix2Pix model (its UNet takes 8 input channels), which sdkit does not run",
               7: "an upscaling model (its UNet takes 7 input channels), which sdkit does not run",
               5: "a depth-to-image model (its UNet takes 5 input channels), which sdkit does not run"}
# Components on their own: LDM and diffusers names, with and without the checkpoint's prefixes
LONE_UNET = re.compile(r"(model\.)?diffusion_model\.|(input_blocks|middle_block|output_blocks|time_embed|out|label_emb"
                       r"|down_blocks|up_blocks|mid_block|time_embedding|conv_in|conv_out|conv_norm_out"
                       r"|add_embedding)\.")
LONE_VAE = re.compile(r"(first_stage_model\.|vae\.)?(encoder|decoder|quant_conv|post_quant_conv|loss)\.")
LONE_TEXT = re.compile(r"(text_model|cond_stage_model|conditioner|transformer|text_projection|logit_scale"
                       r"|token_embedding|positional_embedding|ln_final)\b")


def foreign(keys) -> tuple[str, str] | None:
    """(what the file is, what to do instead) for a file that is no Stable Diffusion checkpoint, else None."""
    keys = list(keys)
    if keys and all(EMBEDDING.fullmatch(k) for k in keys):
        return "a textual-inversion embedding", "an embedding is used with a checkpoint, not loaded as one"
    if keys and all(LORA.search(k) for k in keys):
        return "a LoRA", "a LoRA is applied to a checkpoint, not loaded as one"
    bare = [k.removeprefix(UNET_PREFIX) for k in keys]
    for what, pattern, instead in KINDS:
        if any(re.search(pattern, k) for k in bare):
            return what, instead
    return None


def lone_component(keys) -> str | None:
    """What a file holding one component only is ("a VAE on its own"), else None."""
    keys = [k for k in keys if not re.fullmatch(r"model_ema\..+|\w+", k)]  # no EMA bookkeeping, buffers
    for what, pattern in (("a UNet on its own", LONE_UNET), ("a VAE on its own", LONE_VAE),
                          ("a text encoder on its own", LONE_TEXT)):
        if keys and all(pattern.match(k) for k in keys):
            return what
    return None


def missing_parts(has_unet: bool, has_vae: bool, has_text: bool) -> str:
    """"it has no VAE", "it has no UNet and no text encoder" ..."""
    missing = [what for what, present in (("UNet", has_unet), ("VAE", has_vae), ("text encoder", has_text))
               if not present]
    return "it has no " + " and no ".join(missing)

