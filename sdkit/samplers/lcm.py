"""LCM: Luo et al. 2023, "Latent Consistency Models" (arXiv:2310.04378), multistep consistency sampling
(Algorithm 3) as diffusers' LCMScheduler runs it: each step maps x_t to the consistency function's clean
estimate, then noises it afresh to the next timestep."""

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


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """`steps` timesteps picked evenly from the distillation's 50 (999, 979, ... 19), [from, to] levels per
    step; the last step's `to` is unused (it returns the clean estimate)."""
    if steps > ORIGINAL_STEPS:
        raise ValueError(f"sampler {name}: steps must be <= {ORIGINAL_STEPS} (the timesteps it was distilled on), "
                         f"got {steps}")
    k = config.num_train_timesteps // ORIGINAL_STEPS
    grid = (np.arange(1, ORIGINAL_STEPS + 1) * k - 1)[::-1]  # 999 ... 19
    t = grid[np.floor(np.linspace(0, len(grid), steps, endpoint=False)).astype(np.int64)]
    ac = alphas_cumprod(config)
    sigmas = to_sigma(ac[t])
    sigmas = np.stack([sigmas, np.append(sigmas[1:], final_sigma(config, True, ac))], axis=1)[start:]  # (E, 2)
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
