"""Samplers: one backend-neutral implementation each, equal to diffusers' schedulers.

    p = plan("dpmpp_2m_karras", checkpoint.scheduler, steps=30)     # float64 tables, once per call
    x = noise * p.init_noise_sigma                                  # or add_noise(p, x0, noise) for img2img
    x = sample(p, model, x, noise)   # model(x_in, t) -> raw UNet output (eps or v) after guidance

Samplers touch x only with + - * / and Python floats, so x may be a torch, mlx or numpy array.
"""

from __future__ import annotations

from ..config import SchedulerConfig
from . import ddim, dpmpp, euler, lms, pndm, unipc
from .prediction import KINDS
from .schedules import Plan

NAMES = ("ddim", "pndm", "euler", "euler_a", "heun", "lms", "dpmpp_2m", "dpmpp_2m_karras", "unipc")
ALIASES = {"plms": "pndm"}

_SAMPLE = {"ddim": ddim.sample, "pndm": pndm.sample, "euler": euler.euler, "euler_a": euler.euler_ancestral,
           "heun": euler.heun, "lms": lms.lms, "dpmpp_2m": dpmpp.dpmpp_2m, "dpmpp_2m_karras": dpmpp.dpmpp_2m,
           "unipc": unipc.unipc}

__all__ = ["NAMES", "Plan", "add_noise", "canonical_name", "plan", "sample"]


def canonical_name(name: str) -> str:
    """The canonical sampler name ("plms" -> "pndm"); ValueError listing the valid names otherwise."""
    name = ALIASES.get(name, name)
    if name not in NAMES:
        raise ValueError(f"sampler {name!r} is unknown; use one of: {', '.join(NAMES)} (or plms = pndm)")
    return name


def plan(name: str, config: SchedulerConfig, steps: int, strength: float = 1.0) -> Plan:
    """The tables for `steps` steps of sampler `name` on the model's noise schedule `config`.

    strength < 1 is image-to-image as diffusers' StableDiffusionImg2ImgPipeline does it: only the last
    int(steps * strength) steps run."""
    name = canonical_name(name)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= config.num_train_timesteps:
        raise ValueError(f"steps must be an integer in [1, {config.num_train_timesteps}], got {steps!r}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if config.prediction_type not in KINDS:
        raise ValueError(f"scheduler config: prediction_type {config.prediction_type!r} is not supported; "
                         f"use one of {KINDS}")
    start = steps - min(int(steps * strength), steps)
    if start >= steps:
        raise ValueError(f"strength {strength} is too low for {steps} steps: int(steps * strength) = 0 steps "
                         f"would run; use strength >= {1 / steps:.3g} or more steps")
    if name == "ddim":
        return ddim.plan(config, steps, start)
    if name == "pndm":
        return pndm.plan(config, steps, start)
    if name in ("dpmpp_2m", "dpmpp_2m_karras", "unipc"):
        return dpmpp.multistep_plan(name, config, steps, start, karras=name == "dpmpp_2m_karras")
    return euler.plan(name, config, steps, start)


def add_noise(plan: Plan, x0, noise):
    """The image-to-image start: x0 noised to the plan's first noise level (diffusers' scheduler.add_noise)."""
    sigma = plan.start_sigma
    if plan.variance_preserving:  # sqrt(ᾱ) x0 + sqrt(1 - ᾱ) noise
        alpha = 1 / (sigma * sigma + 1) ** 0.5
        return x0 * alpha + noise * (sigma * alpha)
    return x0 + noise * sigma


def sample(plan: Plan, model, x, noise):
    """Run the sampler: plan.num_evaluations calls model(x_in, t: float) -> raw model output (eps or v, as the
    config's prediction_type says, guidance applied); noise() -> standard-normal array like x (euler_a)."""
    return _SAMPLE[plan.sampler](plan, model, x, noise)
