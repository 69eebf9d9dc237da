"""LCM: Luo et al. 2023, "Latent Consistency Models" (arXiv:2310.04378), multistep consistency sampling
(Algorithm 3) as diffusers' LCMScheduler runs it: each step maps x_t to the consistency function's clean
estimate, then noises it afresh to the next timestep. TCD: Zheng et al. 2024, "Trajectory Consistency
Distillation" (arXiv:2402.19159), strategic stochastic sampling as diffusers' TCDScheduler runs it."""

from __future__ import annotations

import math

import numpy as np

from ..config import SchedulerConfig
from . import prediction
from .ddim import final_sigma
from .hook import report
from .schedules import Plan, alphas_cumprod, to_sigma

ORIGINAL_STEPS = 50  # the distillation's timestep grid (LCMScheduler's original_inference_steps)
SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0  # the consistency function's boundary condition


def _grid(name: str, config: SchedulerConfig, steps: int) -> np.ndarray:
    """`steps` timesteps picked evenly from the distillation's 50 (999, 979, ... 19)."""
    if steps > ORIGINAL_STEPS:
        raise ValueError(f"sampler {name}: steps must be <= {ORIGINAL_STEPS} (the timesteps it was distilled on), "
                         f"got {steps}")
    k = config.num_train_timesteps // ORIGINAL_STEPS
    grid = (np.arange(1, ORIGINAL_STEPS + 1) * k - 1)[::-1]  # 999 ... 19
    return grid[np.floor(np.linspace(0, len(grid), steps, endpoint=False)).astype(np.int64)]


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """LCM: [from, to] levels per step; the last step's `to` is unused (it returns the clean estimate)."""
    t = _grid(name, config, steps)
    ac = alphas_cumprod(config)
    sigmas = to_sigma(ac[t])
    sigmas = np.stack([sigmas, np.append(sigmas[1:], final_sigma(config, True, ac))], axis=1)[start:]  # (E, 2)
    return Plan(name, config.prediction_type, t[start:].astype(np.float64), sigmas,
                start_sigma=float(sigmas[0, 0]), init_noise_sigma=1.0, variance_preserving=True)


TCD_ETA = 0.3  # TCDScheduler's default gamma: the share of each step re-noised


def tcd_plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None,
             eta: float = TCD_ETA) -> Plan:
    """TCD: [from, to, s] levels per step, s = floor((1 - eta) to) the timestep the step first lands on; the
    last step goes to t = 0."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    t = _grid(name, config, steps)
    t_next = np.append(t[1:], 0)
    ac = alphas_cumprod(config)
    s = np.floor((1 - eta) * t_next).astype(np.int64)
    sigmas = np.stack([to_sigma(ac[t]), to_sigma(ac[t_next]), to_sigma(ac[s])], axis=1)[start:]  # (E, 3)
    return Plan(name, config.prediction_type, t[start:].astype(np.float64), sigmas,
                start_sigma=float(sigmas[0, 0]), init_noise_sigma=1.0, variance_preserving=True)


def boundary(t: float) -> tuple[float, float]:
    """c_skip, c_out of the consistency function f(x, t) = c_skip x + c_out x0(x, t) (c_skip(0) = 1)."""
    scaled = t * TIMESTEP_SCALING
    return SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2), scaled / math.sqrt(scaled**2 + SIGMA_DATA**2)


def lcm(plan: Plan, model, x, noise, hook=None):
    """x_next = sqrt(ᾱ_next) f(x_t, t) + sqrt(1 - ᾱ_next) z with fresh noise z; the last step returns f."""
    last = plan.num_evaluations - 1
    for i, (t, (sigma, sigma_next)) in enumerate(zip(plan.timesteps.tolist(), plan.sigmas.tolist())):
        x0 = prediction.x0(model(x, t), x, sigma, plan.prediction_type)
        c_skip, c_out = boundary(t)
        denoised = x0 * c_out + x * c_skip
        if i == last:
            x = report(hook, i, denoised, 0.0, denoised)
            continue
        alpha_next, s_next = prediction.alpha_s(sigma_next)
        x = report(hook, i, denoised * alpha_next + noise() * s_next, sigma_next, denoised)
    return x


def tcd(plan: Plan, model, x, noise, hook=None):
    """x_s = sqrt(ᾱ_s) x0 + sqrt(1 - ᾱ_s) eps (DDIM to s, below the next timestep), then back up to it with
    fresh noise: x_next = sqrt(ᾱ_next / ᾱ_s) x_s + sqrt(1 - ᾱ_next / ᾱ_s) z; the last step stops at x_s."""
    last = plan.num_evaluations - 1
    for i, (t, (sigma, sigma_next, sigma_s)) in enumerate(zip(plan.timesteps.tolist(), plan.sigmas.tolist())):
        out = model(x, t)
        kind = plan.prediction_type
        x0, eps = prediction.x0(out, x, sigma, kind), prediction.eps(out, x, sigma, kind)
        alpha_s, s_s = prediction.alpha_s(sigma_s)
        x_s = x0 * alpha_s + eps * s_s
        if i == last or sigma_s == sigma_next:  # eta = 0: no noise (diffusers draws none either)
            x = report(hook, i, x_s, sigma_s, x0)
            continue
        ratio = (prediction.alpha_s(sigma_next)[0] / alpha_s) ** 2  # ᾱ_next / ᾱ_s
        x = report(hook, i, x_s * ratio**0.5 + noise() * (1 - ratio) ** 0.5, sigma_next, x0)
    return x
