"""Frozen model configs. Field meanings follow diffusers' config.json files; `from_diffusers` reads them.

Single-file checkpoints carry no config: `sdkit.checkpoint` infers these from tensor shapes instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _pick(cls, d: dict, **renames) -> dict:
    """The keys of `d` that are fields of `cls` (after `renames`: config key -> field name)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in d.items():
        key = renames.get(key, key)
        if key in fields:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP text transformer: ViT-L/14 (SD1, quick_gelu) or OpenCLIP ViT-H/14, bigG (SD2, SDXL; gelu)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_length: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None  # set when the weights carry text_projection (SDXL's second encoder)

    @classmethod
    def from_diffusers(cls, d: dict, has_projection: bool = False) -> TextEncoderConfig:
        kw = _pick(cls, d, num_hidden_layers="num_layers", num_attention_heads="num_heads",
                   max_position_embeddings="max_length")
        kw["projection_dim"] = d.get("projection_dim", kw.get("hidden_size")) if has_projection else None
        return cls(**kw)


@dataclass(frozen=True)
class UNetConfig:
    """The UNet2DConditionModel topologies of SD 1.x, 2.x and XL."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: tuple[int, ...] = (8, 8, 8, 8)  # per down block; head size = channels // heads
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    sample_size: int = 64
    # SDXL micro-conditioning ("text_time"): pooled text + time ids added to the timestep embedding
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None

    @classmethod
    def from_diffusers(cls, d: dict) -> UNetConfig:
        kw = _pick(cls, d)
        n = len(kw.get("block_out_channels", cls.block_out_channels))
        # diffusers' legacy naming: `attention_head_dim` holds the number of heads unless
        # `num_attention_heads` is given (UNet2DConditionModel: num_attention_heads or attention_head_dim).
        heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)
        kw["num_heads"] = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * n
        layers = d.get("transformer_layers_per_block", 1)
        kw["transformer_layers_per_block"] = tuple(layers) if isinstance(layers, (list, tuple)) else (layers,) * n
        return cls(**kw)


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL: KL-regularised autoencoder with `scale` = 2 ** (levels - 1) pixels per latent."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = True
    sample_size: int = 512
    # Playground v2.5: latents are normalised per channel, (z - mean) * scaling_factor / std, before the UNet
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    @property
    def scale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: dict) -> VAEConfig:
        return cls(**_pick(cls, d))


@dataclass(frozen=True)
class SchedulerConfig:
    """The noise schedule a model was trained with (a diffusers scheduler_config.json).

    None means "the config is silent": each sampler then uses its diffusers class default.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction"
    timestep_spacing: str | None = None  # "leading" | "trailing" | "linspace"
    steps_offset: int = 0
    set_alpha_to_one: bool | None = None
    skip_prk_steps: bool | None = None
    rescale_betas_zero_snr: bool = False  # zero terminal SNR (Lin et al. 2023): the last ᾱ is rescaled to 0
    # EDM (Karras et al. 2022; diffusers' EDM*Scheduler, Playground v2.5): continuous noise levels in
    # [sigma_min, sigma_max] instead of the betas above; sigma_data None: not an EDM model
    sigma_data: float | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_schedule: str = "karras"  # "karras" | "exponential"
    rho: float = 7.0
    final_sigmas_type: str = "zero"  # "zero" | "sigma_min": the level the last step lands on

    @property
    def edm(self) -> bool:
        return self.sigma_data is not None

    @classmethod
    def from_diffusers(cls, d: dict) -> SchedulerConfig:
        kw = {k: v for k, v in _pick(cls, d).items() if v is not None or k == "trained_betas"}
        if not str(d.get("_class_name", "")).startswith("EDM"):  # other schedulers' sigma_min etc. mean else
            kw = {k: v for k, v in kw.items() if k not in EDM_FIELDS}
        else:
            kw.setdefault("sigma_data", 0.5)
        return cls(**kw)


EDM_FIELDS = ("sigma_data", "sigma_min", "sigma_max", "sigma_schedule", "rho", "final_sigmas_type")
