"""Samplers: one backend-neutral implementation each, equal to diffusers' schedulers.

    p = plan("dpmpp_2m", checkpoint.scheduler, steps=30, schedule="karras")  # float64 tables, once per call
    x = noise * p.init_noise_sigma                                  # or add_noise(p, x0, noise) for img2img
    x = sample(p, model, x, noise)   # model(x_in, t) -> raw UNet output (eps or v) after guidance

Samplers touch x only with + - * / and Python floats, so x may be a torch, mlx or numpy array.
Which samplers exist, their names and schedules: registry.SAMPLERS.
"""

from __future__ import annotations

import dataclasses

from ..config import SchedulerConfig
from . import edm, prediction
from .prediction import KINDS
from .registry import ALIASES, ALL_SCHEDULES, FRACTIONAL, NAMES, SAMPLERS, resolve
from .schedules import Plan

__all__ = ["ALIASES", "ALL_SCHEDULES", "FRACTIONAL", "NAMES", "Plan", "SAMPLERS", "add_noise", "canonical_name", "plan",
           "resolve", "sample"]


def canonical_name(name: str) -> str:
    """The canonical sampler name ("plms" -> "pndm"); ValueError listing the valid names otherwise."""
    return resolve(name)[0].name


def plan(name: str, config: SchedulerConfig, steps: int, strength: float = 1.0, schedule: str | None = None,
         eta: float | None = None, denoising_start: float | None = None,
         denoising_end: float | None = None) -> Plan:
    """The tables for `steps` steps of sampler `name` with `schedule` on the model's noise schedule `config`.

    schedule None keeps the config's timestep spacing; "trailing" overrides it; "karras", "exponential" and
    "beta" respace the noise levels (samplers that take them: registry.SAMPLERS[name].schedules).
    strength < 1 is image-to-image as diffusers' StableDiffusionImg2ImgPipeline does it: only the last
    int(steps * strength) steps run. eta: tcd's share of each step re-noised (None: its default 0.3).
    denoising_start / denoising_end: fractions of the training schedule, as diffusers' SDXL pipelines take them
    (a refiner ensemble or a second pass): start below timestep T (1 - start) from latents already that noisy
    (strength is then ignored), stop before timestep T (1 - end), returning noisy latents. Samplers that walk
    one noise level per evaluation only (FRACTIONAL)."""
    sampler, schedule = resolve(name, schedule)
    if eta is not None and sampler.name != "tcd":
        raise ValueError(f"eta is a setting of sampler tcd, not of {sampler.name}; leave it None")
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
    if schedule == "trailing":
        config = dataclasses.replace(config, timestep_spacing="trailing")
    if config.edm:
        if denoising_start is not None or denoising_end is not None:
            raise ValueError("denoising_start / denoising_end: EDM models (Playground v2.5) do not take them")
        return edm.plan(sampler.name, config, steps, start, schedule)
    if denoising_start is not None:
        start = 0
    p = sampler.plan(sampler.name, config, steps, start, schedule, **({} if eta is None else {"eta": eta}))
    if denoising_start is None and denoising_end is None:
        return p
    if sampler.name not in FRACTIONAL:
        raise ValueError(f"denoising_start / denoising_end: sampler {sampler.name} does not take them; use one of "
                         f"{', '.join(FRACTIONAL)}")
    T = config.num_train_timesteps
    for name, value in (("denoising_start", denoising_start), ("denoising_end", denoising_end)):
        if value is not None and not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    if denoising_start is not None:  # the steps below the cutoff timestep
        start = len(p.timesteps) - int((p.timesteps < round(T - denoising_start * T)).sum())
        if start >= len(p.timesteps):
            raise ValueError(f"denoising_start {denoising_start} leaves no step of {steps}; use a lower one")
        p = dataclasses.replace(p, timesteps=p.timesteps[start:], start=start, start_sigma=float(p.sigmas[start]))
    if denoising_end is not None:  # the steps at or above the cutoff timestep
        n = int((p.timesteps >= round(T - denoising_end * T)).sum())
        if n == 0:
            raise ValueError(f"denoising_end {denoising_end} leaves no step of {steps}; use a higher one")
        p = dataclasses.replace(p, timesteps=p.timesteps[:n])
    return p


def add_noise(plan: Plan, x0, noise, sigma: float | None = None):
    """x0 noised to level sigma in the plan's convention (diffusers' scheduler.add_noise); sigma None: the plan's
    first level, where image-to-image starts. A hook blends with it at the level it is given."""
    sigma = plan.start_sigma if sigma is None else sigma
    if plan.variance_preserving:  # sqrt(ᾱ) x0 + sqrt(1 - ᾱ) noise
        alpha, s = prediction.alpha_s(sigma)
        return x0 * alpha + noise * s
    return x0 + noise * sigma


def sample(plan: Plan, model, x, noise, hook=None):
    """Run the sampler: plan.num_evaluations calls model(x_in, t: float) -> raw model output (eps or v, as the
    config's prediction_type says, guidance applied); noise() -> standard-normal array like x (stochastic
    samplers); hook(step, x, sigma, denoised) after each step, whose returned array replaces x (hook.report), and
    hook.inner(x, sigma), if the hook has it, after each evaluation inside a step (hook.report_inner).
    An EDM plan's model is preconditioned first (sdkit.samplers.edm)."""
    if plan.sigma_data is not None:
        model, plan = edm.precondition(model, plan), dataclasses.replace(plan, prediction_type="sample")
    return SAMPLERS[plan.sampler].sample(plan, model, x, noise, hook)
