"""Facts about each model family, in one place: the checkpoint reader, the pipeline and the desktop app read
them here instead of keeping rules of their own.

    sd1    Stable Diffusion 1.x: CLIP ViT-L/14, 512 px
    sd2    Stable Diffusion 2.x: OpenCLIP ViT-H/14 (its penultimate layer), 512 px (epsilon) or 768 px (v)
    sdxl   Stable Diffusion XL: CLIP ViT-L + OpenCLIP bigG, 1024 px, size/crop micro-conditioning;
           the refiner: OpenCLIP bigG alone, aesthetic-score micro-conditioning

Single files carry no configs; what their tensors cannot tell comes from here (scheduler, VAE scaling, sizes,
tokenizers), from the file's `__metadata__` (modelspec.*) and marker tensors (`v_pred`, `ztsnr`; `edm_mean` and
`edm_std`: an EDM model, Playground v2.5, see PLAYGROUND), or, last,
from its name. Few-step models (Turbo, Lightning, Hyper-SD, LCM) get their published recipe as generate()'s
defaults: see RECIPES and `recipe_from_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    scheduler: str  # the published scheduler config bundled in sdkit/data/schedulers (single files)
    scaling_factor: float  # VAE latents are multiplied by this before the UNet sees them
    native: dict[str, int]  # pixels per side the base model was trained at, by prediction type
    # Which text encoder hidden state the UNet is conditioned on (TextEncoder's layer / final_norm).
    text_layer: dict
    # Whether A1111's clip skip moves that layer. SDXL's stays put whatever clip_skip says, as in A1111 by default
    # (its sdxl_clip_l_skip option off): SDXL is trained on the penultimate layer, which clip skip 2 names anyway.
    clip_skip: bool
    # OpenCLIP resblocks the family uses, None: all. SD2 conditions on the penultimate of ViT-H's 24, so its
    # original files carry one block (and a text_projection) that diffusers' 23-layer text encoder lacks.
    text_layers: int | None
    unet_heads: int | None  # heads per UNet level, None: 64-wide heads (as many as channels // 64)
    upcast_attention: bool  # SD2: attention scores in float32
    buckets: tuple[tuple[int, int], ...] = ()  # (width, height) training buckets, native square first

    def native_size(self, prediction: str) -> int:
        return self.native.get(prediction, self.native["epsilon"])


FAMILIES = {
    "sd1": Family("sd1", scheduler="sd15-scheduler_config.json", scaling_factor=0.18215, native={"epsilon": 512},
                  text_layer={}, clip_skip=True, text_layers=None, unet_heads=8, upcast_attention=False),
    "sd2": Family("sd2", scheduler="sd21-768v-scheduler_config.json", scaling_factor=0.18215,
                  native={"epsilon": 512, "v_prediction": 768}, text_layer={}, clip_skip=True, text_layers=23,
                  unet_heads=None, upcast_attention=True),
    # SDXL, as diffusers: both encoders' penultimate layer without the final LayerNorm. It was trained on
    # buckets of ~1024x1024 pixels (its paper, appendix I); these are the common ones.
    "sdxl": Family("sdxl", scheduler="sdxl-base-scheduler_config.json", scaling_factor=0.13025,
                   native={"epsilon": 1024}, text_layer=dict(layer=-2, final_norm=False), clip_skip=False,
                   text_layers=None, unet_heads=None, upcast_attention=False,
                   buckets=((1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344),
                            (1344, 768))),
}


# ---- single-file layouts ----

@dataclass(frozen=True)
class TextTower:
    component: str  # "text_encoder" | "text_encoder_2": the diffusers folder's name for it
    prefix: str  # where a single file keeps it
    kind: str  # "clip" (transformers' CLIPTextModel names) | "openclip" (OpenCLIP's text tower)
    tokenizer: str  # bundled tokenizer (sdkit/data/tokenizers)


@dataclass(frozen=True)
class Layout:
    """One way a single file of a family holds its text encoders."""

    family: str
    towers: tuple[TextTower, ...]
    name: str  # for messages
    # with no negative prompt, the uncond conditioning is zeros (not the encoding of ""): SDXL base
    force_zeros_for_empty_prompt: bool = False
    # what a file in this layout is when Stability's generative-models trainer left its `denoiser.sigmas` in it
    # (SD2: sd_turbo.safetensors, as SwarmUI tells it)
    sgm_architecture: str | None = None


CLIP_L = "clip-l"
OPENCLIP = "openclip"
# Tried in order; the first whose text towers are all present and whose family matches the UNet wins. The
# refiner and SD2 in Stability's newer (SGM) layout share a prefix: the UNet's SDXL conditioning tells them apart.
LAYOUTS = (
    Layout("sdxl", (TextTower("text_encoder", "conditioner.embedders.0.transformer.", "clip", CLIP_L),
                    TextTower("text_encoder_2", "conditioner.embedders.1.model.", "openclip", OPENCLIP)),
           "SDXL", force_zeros_for_empty_prompt=True),
    Layout("sdxl", (TextTower("text_encoder_2", "conditioner.embedders.0.model.", "openclip", OPENCLIP),),
           "SDXL refiner"),
    Layout("sd2", (TextTower("text_encoder", "conditioner.embedders.0.model.", "openclip", OPENCLIP),),
           "SD 2.x (SGM layout)", sgm_architecture="stable-diffusion-v2-turbo"),
    Layout("sd2", (TextTower("text_encoder", "cond_stage_model.model.", "openclip", OPENCLIP),), "SD 2.x"),
    Layout("sd1", (TextTower("text_encoder", "cond_stage_model.transformer.", "clip", CLIP_L),), "SD 1.x"),
)
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."


# ---- micro-conditioning (SDXL's time ids) ----

# Each name is one or two numbers of the ids the UNet's add_embedding takes, (height, width) / (top, left).
BASE_TIME_IDS = ("original_size", "crops_coords_top_left", "target_size")  # 6 numbers
REFINER_TIME_IDS = ("original_size", "crops_coords_top_left", "aesthetic_score")  # 5 numbers
TIME_ID_WIDTH = 256  # what SDXL base and refiner embed each id with (their addition_time_embed_dim)


def count_time_ids(names: tuple[str, ...]) -> int:
    return sum(1 if name == "aesthetic_score" else 2 for name in names)


# ---- markers: what a file says about itself besides its weights ----

# ComfyUI's convention: empty tensors that mark a v-prediction model and a zero-terminal-SNR schedule.
V_PRED, ZTSNR = "v_pred", "ztsnr"
# modelspec.prediction_type (the SAI model spec, kohya) or modelspec.predict_key (ComfyUI) -> prediction type
PREDICTION_NAMES = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
                    "v-prediction": "v_prediction"}
# modelspec.architecture (ModelSpec ids as kohya, ComfyUI and SwarmUI write them) -> (family, prediction, side)
ARCHITECTURES = {
    "stable-diffusion-v1": ("sd1", None, 512),
    "stable-diffusion-v2-512": ("sd2", "epsilon", 512),
    "stable-diffusion-v2-768-v": ("sd2", "v_prediction", 768),
    "stable-diffusion-v2-turbo": ("sd2", "epsilon", 512),
    "stable-diffusion-xl-v1-base": ("sdxl", None, 1024),
    "stable-diffusion-xl-v0_9-base": ("sdxl", None, 1024),
    "stable-diffusion-xl-v1-refiner": ("sdxl", None, 1024),
    "stable-diffusion-xl-v0_9-refiner": ("sdxl", None, 1024),
}


# ---- EDM models ----

@dataclass(frozen=True)
class EDM:
    """An SDXL UNet trained in EDM's formulation (sdkit.samplers.edm) on latents normalised per channel, as its
    single file says by two marker tensors: the channel statistics, (1, C, 1, 1), beside SDXL's keys (ComfyUI's
    model_detection and diffusers' from_single_file read them so). The rest is its published folder's."""

    name: str
    markers: tuple[str, str]  # the latents' mean and std
    scheduler: str  # the published scheduler config, bundled in sdkit/data/schedulers
    scaling_factor: float  # of its VAE config


# playgroundai/playground-v2.5-1024px-aesthetic: EDMDPMSolverMultistepScheduler (sigma 0.002..80, sigma_data 0.5,
# karras, epsilon), VAE scaling factor 0.5 (diffusers' PLAYGROUND_VAE_SCALING_FACTOR, ComfyUI's
# latent_formats.SDXL_Playground_2_5)
PLAYGROUND = EDM("Playground v2.5", ("edm_mean", "edm_std"), "playground-v2.5-scheduler_config.json", 0.5)


# ---- few-step recipes ----

@dataclass(frozen=True)
class Recipe:
    """generate()'s defaults for a model: what its card recommends. sampler and schedule are names, as
    generate() takes them; schedule None: the checkpoint's own timestep spacing."""

    name: str  # "" for ordinary models
    sampler: str
    steps: int
    guidance_scale: float
    schedule: str | None = None


ORDINARY = Recipe("", "dpmpp_2m_karras", 30, 7.5)
# From each model's card: SD-Turbo / SDXL-Turbo (stabilityai: 1 step, no guidance, Euler ancestral on trailing
# timesteps, at 512 px: a name alone does not set the size, as community "turbo" merges of SDXL make 1024 px),
# SDXL-Lightning (ByteDance: Euler, trailing, no guidance, as many steps as the file's name says), Hyper-SD
# (ByteDance: DDIM, trailing, no guidance), LCM (LCMScheduler, 4 steps, guidance off or up to 2).
RECIPES = {
    "sd-turbo": Recipe("SD-Turbo", "euler_a", 1, 0.0, "trailing"),
    "sdxl-turbo": Recipe("SDXL-Turbo", "euler_a", 1, 0.0, "trailing"),
    "lightning": Recipe("SDXL-Lightning", "euler", 4, 0.0, "trailing"),
    "hyper": Recipe("Hyper-SD", "ddim", 4, 0.0, "trailing"),
    "lcm": Recipe("LCM", "lcm", 4, 1.0),
    "tcd": Recipe("TCD", "tcd", 4, 0.0),
}
_RECIPE_WORDS = re.compile(r"(?<![a-z])(turbo|lightning|lcm|hyper(?![a-z]))")
_STEPS = re.compile(r"(\d+)[-_ ]?steps?")


def recipe_from_name(text: str, family: str) -> Recipe | None:
    """The recipe a few-step model's name (a modelspec.architecture or a file name) says it needs: a word
    starting "turbo", "lightning" or "lcm", or the word "hyper", with "4step" / "8-steps" setting the steps."""
    text = text.lower().replace("_", "-")
    m = _RECIPE_WORDS.search(text)
    if m is None:
        return None
    key = {"turbo": "sdxl-turbo" if family == "sdxl" else "sd-turbo"}.get(m[1], m[1])
    recipe = RECIPES[key]
    steps = _STEPS.search(text)
    if steps and key in ("lightning", "hyper", "lcm") and 1 <= int(steps[1]) <= 50:
        return Recipe(recipe.name, recipe.sampler, int(steps[1]), recipe.guidance_scale, recipe.schedule)
    return recipe


def recipe_from_scheduler(d: dict) -> Recipe | None:
    """The recipe a diffusers scheduler config implies: LCMScheduler, TCDScheduler, or an Euler scheduler on
    trailing timesteps without a zero-terminal-SNR schedule (SD-Turbo and SDXL-Turbo publish these)."""
    cls = d.get("_class_name")
    if cls == "LCMScheduler":
        return RECIPES["lcm"]
    if cls == "TCDScheduler":
        return RECIPES["tcd"]
    if (cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")
            and d.get("timestep_spacing") == "trailing" and not d.get("rescale_betas_zero_snr")):
        turbo = RECIPES["sd-turbo"]
        return Recipe("Turbo", "euler_a" if "Ancestral" in cls else "euler", turbo.steps, turbo.guidance_scale,
                      turbo.schedule)
    return None


def time_ids(width: int, dim: int | None = None) -> tuple[tuple[str, ...], int] | None:
    """What an SDXL UNet's micro-conditioning is, from `width`: its add_embedding's input minus the pooled
    text width. 6 numbers (base: sizes and crop) or 5 (refiner: aesthetic score for the target size), each
    embedded `dim` wide. dim None (single files, which do not say): the count that leaves an even width
    (sinusoidal embeddings are), TIME_ID_WIDTH where both would. None when nothing fits."""
    fits = []
    for names in (BASE_TIME_IDS, REFINER_TIME_IDS):
        n = count_time_ids(names)
        if dim is not None and width == n * dim or dim is None and width % n == 0 and width // n % 2 == 0:
            fits.append((names, width // n))
    if len(fits) > 1:
        fits = [f for f in fits if f[1] == TIME_ID_WIDTH]
    return fits[0] if len(fits) == 1 else None
