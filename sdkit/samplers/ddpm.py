"""DDPM: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239), ancestral sampling of the
posterior q(x_prev | x_t, x0) (eq. 6-7) with the "fixed_small" variance, on spaced timesteps, as diffusers'
DDPMScheduler runs it."""

from __future__ import annotations

import numpy as np

from ..config import SchedulerConfig
from . import prediction
from .hook import report
from .schedules import Plan, alphas_cumprod, spaced_timesteps, to_sigma


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """Timesteps spaced as the config says ("leading" by default), [from, to] levels per step: each step goes to
    the next timestep, the last to the clean sample."""
    t = spaced_timesteps(config.timestep_spacing or "leading", steps, config).astype(np.int64)
    sigmas = to_sigma(alphas_cumprod(config)[t])
    sigmas = np.stack([sigmas, np.append(sigmas[1:], 0.0)], axis=1)[start:]  # (E, 2)
    return Plan(name, config.prediction_type, t[start:].astype(np.float64), sigmas,
                start_sigma=float(sigmas[0, 0]), init_noise_sigma=1.0, variance_preserving=True)


def ddpm(plan: Plan, model, x, noise, hook=None):
    """x_prev = mean(x_t, x0) + sqrt(beta~) z: mean = sqrt(ᾱ_prev) beta / (1 - ᾱ) x0 + sqrt(alpha) (1 - ᾱ_prev)
    / (1 - ᾱ) x_t with alpha = ᾱ / ᾱ_prev, beta = 1 - alpha; beta~ = (1 - ᾱ_prev) / (1 - ᾱ) beta; no noise
    into the clean sample."""
    for i, (t, (sigma, sigma_prev)) in enumerate(zip(plan.timesteps.tolist(), plan.sigmas.tolist())):
        x0 = prediction.x0(model(x, t), x, sigma, plan.prediction_type)
        a, a_prev = prediction.alpha_s(sigma)[0] ** 2, prediction.alpha_s(sigma_prev)[0] ** 2  # ᾱ
        alpha = a / a_prev
        beta = 1 - alpha
        x = x0 * (a_prev**0.5 * beta / (1 - a)) + x * (alpha**0.5 * (1 - a_prev) / (1 - a))
        if t > 0:
            x = x + noise() * max((1 - a_prev) / (1 - a) * beta, 1e-20) ** 0.5
        x = report(hook, i, x, sigma_prev, x0)
    return x
