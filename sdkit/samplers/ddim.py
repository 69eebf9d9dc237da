"""DDIM: Song et al. 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502), deterministic (eta = 0)."""

from __future__ import annotations

import numpy as np

from ..config import SchedulerConfig
from . import prediction
from .hook import report
from .schedules import Plan, alphas_cumprod, spaced_timesteps, to_sigma


def final_sigma(config: SchedulerConfig, set_alpha_to_one: bool, ac: np.ndarray) -> float:
    """Where a step below t = 0 lands: clean (ᾱ = 1) or ᾱ_0, as the config's set_alpha_to_one says."""
    one = set_alpha_to_one if config.set_alpha_to_one is None else config.set_alpha_to_one
    return 0.0 if one else float(to_sigma(ac[0]))


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """diffusers' DDIMScheduler: "leading" spacing and ᾱ = 1 after the last step unless the config says otherwise.
    Each step goes from t to t - T // steps, whatever the spacing."""
    ac = alphas_cumprod(config)
    t = spaced_timesteps(config.timestep_spacing or "leading", steps, config).astype(np.int64)
    prev = t - config.num_train_timesteps // steps
    sigma_prev = np.where(prev >= 0, to_sigma(ac[prev.clip(0)]), final_sigma(config, True, ac))
    sigmas = np.stack([to_sigma(ac[t]), sigma_prev], axis=1)[start:]  # (E, 2) [from, to]
    return Plan("ddim", config.prediction_type, t[start:].astype(np.float64), sigmas,
                start_sigma=float(sigmas[0, 0]), init_noise_sigma=1.0, variance_preserving=True)


def sample(plan: Plan, model, x, noise, hook=None):
    """x_prev = sqrt(ᾱ_prev) x0 + sqrt(1 - ᾱ_prev) eps (eq. 12 with sigma_t = 0)."""
    for i, (t, (sigma, sigma_prev)) in enumerate(zip(plan.timesteps, plan.sigmas.tolist())):
        out = model(x, float(t))
        alpha_prev, s_prev = prediction.alpha_s(sigma_prev)
        x0 = prediction.x0(out, x, sigma, plan.prediction_type)
        x = x0 * alpha_prev + prediction.eps(out, x, sigma, plan.prediction_type) * s_prev
        x = report(hook, i, x, sigma_prev, x0)
    return x
