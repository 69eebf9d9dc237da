"""Euler, Euler ancestral and Heun on the k-diffusion ODE dx/dsigma = (x - x0) / sigma (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", arXiv:2206.00364), as in k-diffusion's
sampling.py and diffusers' Euler/EulerAncestral/HeunDiscreteScheduler."""

from __future__ import annotations

import math

import numpy as np

from ..config import SchedulerConfig
from .prediction import denoise
from .hook import report, report_inner
from .schedules import SIGMA_SCHEDULES, Plan, alphas_cumprod, sigma_to_t, spaced_timesteps, to_sigma


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """The discrete schedule of diffusers' Euler/Heun/LMS schedulers: float32 timesteps ("linspace" by
    default, unrounded), their sigmas interpolated linearly in t, then 0. A sigma `schedule` (karras, ...)
    respaces the levels between those sigmas' ends and reads their (fractional) timesteps back."""
    spacing = config.timestep_spacing or "linspace"
    t = spaced_timesteps(spacing, steps, config, exact_linspace=True).astype(np.float32).astype(np.float64)
    table = to_sigma(alphas_cumprod(config, finite=True))
    sigmas = np.interp(t, np.arange(len(table)), table)
    if schedule in SIGMA_SCHEDULES:
        sigmas = SIGMA_SCHEDULES[schedule](sigmas[-1], sigmas[0], steps)
        t = sigma_to_t(sigmas, np.log(table)).astype(np.float32).astype(np.float64)
    sigmas = np.append(sigmas, 0.0).astype(np.float32).astype(np.float64)  # diffusers' table is float32: at
    # sigma ~ 2e4 (cosine ᾱ) its rounding moves the result by 1e-5
    # diffusers scales the initial noise by sqrt(sigma_max^2 + 1) under "leading" spacing
    init = sigmas[0] if spacing in ("linspace", "trailing") else math.sqrt(sigmas[0] ** 2 + 1)
    t = t[start:]
    if name == "heun":  # t_s, then every later t twice: the previous step's correction, then its own start
        t = np.append(t[:1], np.repeat(t[1:], 2))
    return Plan(name, config.prediction_type, t, sigmas, start_sigma=float(sigmas[start]),
                init_noise_sigma=float(init), variance_preserving=False, start=start)


def euler(plan: Plan, model, x, noise, hook=None):
    """Euler's method (Karras et al. 2022, Algorithm 2 without churn)."""
    sigmas = plan.sigmas.tolist()
    for i, t in enumerate(plan.timesteps, plan.start):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(model, x, sigma, float(t), plan.prediction_type)
        x = x + (x - x0) / sigma * (sigma_next - sigma)
        x = report(hook, i - plan.start, x, sigma_next, x0)
    return x


def euler_ancestral(plan: Plan, model, x, noise, hook=None):
    """Euler ancestral (k-diffusion's sample_euler_ancestral, eta = 1): an Euler step down to sigma_down, then
    fresh noise of std sigma_up, so that sigma_down^2 + sigma_up^2 = sigma_next^2."""
    sigmas = plan.sigmas.tolist()
    for i, t in enumerate(plan.timesteps, plan.start):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x0 = denoise(model, x, sigma, float(t), plan.prediction_type)
        x = x + (x - x0) / sigma * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise() * sigma_up
        x = report(hook, i - plan.start, x, sigma_next, x0)
    return x


def heun(plan: Plan, model, x, noise, hook=None):
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 without churn); the step to sigma = 0 is Euler."""
    kind, t, sigmas = plan.prediction_type, plan.timesteps, plan.sigmas.tolist()
    for j, i in enumerate(range(plan.start, len(sigmas) - 1)):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(model, x, sigma, float(t[2 * j]), kind)
        d = (x - x0) / sigma
        if sigma_next == 0:
            x = report(hook, j, x + d * (sigma_next - sigma), sigma_next, x0)
            continue
        x_next = report_inner(hook, x + d * (sigma_next - sigma), sigma_next)
        d_next = (x_next - denoise(model, x_next, sigma_next, float(t[2 * j + 1]), kind)) / sigma_next
        x = report(hook, j, x + (d + d_next) / 2 * (sigma_next - sigma), sigma_next, x0)
    return x
