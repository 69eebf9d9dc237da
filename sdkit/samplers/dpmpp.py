"""DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models" (arXiv:2211.01095), Algorithm 2, on the variance-preserving sample as diffusers'
DPMSolverMultistepScheduler runs it (first order on the first and the last step)."""

from __future__ import annotations

import math

import numpy as np

from ..config import SchedulerConfig
from . import prediction
from .hook import report
from .schedules import SIGMA_SCHEDULES, Plan, alphas_cumprod, sigma_to_t, spaced_timesteps, to_sigma


def multistep_plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """The schedule of diffusers' multistep solvers (DPM-Solver, UniPC): integer timesteps, "linspace" over
    steps + 1 points without the last by default; a sigma `schedule` (karras, ...) spans the whole training
    range and takes the timesteps of its levels, rounded for karras, truncated otherwise (diffusers' int64 cast)."""
    table = to_sigma(alphas_cumprod(config, finite=True))
    if schedule in SIGMA_SCHEDULES:
        sigmas = SIGMA_SCHEDULES[schedule](table[0], table[-1], steps)
        t = sigma_to_t(sigmas, np.log(table))
        # diffusers rounds karras timesteps (DPM-Solver not for squaredcos_cap_v2), its int64 cast truncates others
        rounded = schedule == "karras" and (name in ("unipc", "deis") or config.beta_schedule != "squaredcos_cap_v2")
        t = t.round() if rounded else np.floor(t)
    else:
        spacing = config.timestep_spacing or "linspace"
        t = spaced_timesteps(spacing, steps, config) if spacing == "trailing" else \
            spaced_timesteps(spacing, steps + 1, config)[:-1]
        sigmas = np.interp(t, np.arange(len(table)), table)
    sigmas = np.append(sigmas, 0.0)
    return Plan(name, config.prediction_type, t[start:], sigmas, start_sigma=float(sigmas[start]),
                init_noise_sigma=1.0, variance_preserving=True, start=start)


def dpmpp_2m(plan: Plan, model, x, noise, hook=None):
    """x_next = (s_next / s) x - alpha_next (e^-h - 1) D, h = lambda_next - lambda, lambda = log(alpha / s),
    D = x0 + (x0 - x0_prev) / (2 r) with r = h_prev / h (first order: D = x0)."""
    sigmas = plan.sigmas.tolist()
    x0_prev = None
    for i, t in enumerate(plan.timesteps, plan.start):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = prediction.x0(model(x, float(t)), x, sigma, plan.prediction_type)
        if sigma_next == 0:  # lambda = inf: the (last) step lands on the prediction
            x = report(hook, i - plan.start, x0, 0.0, x0)
            continue
        (alpha, s), (alpha_next, s_next) = prediction.alpha_s(sigma), prediction.alpha_s(sigma_next)
        h = math.log(sigma / sigma_next)  # lambda = log(alpha / s) = -log(sigma)
        d = x0
        if x0_prev is not None:
            r = math.log(sigmas[i - 1] / sigma) / h
            d = x0 + (x0 - x0_prev) * (1 / (2 * r))
        x = x * (s_next / s) - d * (alpha_next * math.expm1(-h))
        x = report(hook, i - plan.start, x, sigma_next, x0)
        x0_prev = x0
    return x


def dpmpp_sde(plan: Plan, model, x, noise, hook=None, order: int = 2):
    """SDE-DPM-Solver++(2M) and (3M) (Lu et al. 2022, appendix; k-diffusion's sample_dpmpp_2m_sde and
    _3m_sde) as diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++") runs them:
    x_next = (s_next / s) e^-h x + alpha_next (1 - e^-2h) D + s_next sqrt(1 - e^-2h) z, with fresh noise z at
    every step. Orders rise from 1 one step at a time; the last step is first order (it lands on x0), and
    with fewer than 15 steps the one before it at most second order."""
    sigmas = plan.sigmas.tolist()
    n = len(sigmas) - 1
    x0s = []  # x0 predictions, newest last
    for j, t in enumerate(plan.timesteps):
        i = plan.start + j
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = prediction.x0(model(x, float(t)), x, sigma, plan.prediction_type)
        x0s = x0s[-(order - 1):] + [x0] if order > 1 else [x0]
        if sigma_next == 0:  # lambda = inf: the step lands on the prediction
            x = report(hook, j, x0, 0.0, x0)
            continue
        (alpha, s), (alpha_next, s_next) = prediction.alpha_s(sigma), prediction.alpha_s(sigma_next)
        h = math.log(sigma / sigma_next)  # lambda_next - lambda
        k = min(len(x0s), 2 if n < 15 and i == n - 2 else order)  # the order of this step
        e = -math.expm1(-2 * h)  # 1 - e^-2h
        d = x0
        if k >= 2:
            r0 = math.log(sigmas[i - 1] / sigma) / h
            d1_0 = (x0 - x0s[-2]) * (1 / r0)
            if k == 2:  # midpoint: D = D0 + D1 / 2
                d = x0 + d1_0 * 0.5
            else:
                r1 = math.log(sigmas[i - 2] / sigmas[i - 1]) / h
                d1_1 = (x0s[-2] - x0s[-3]) * (1 / r1)
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) * (1 / (r0 + r1))
                d = x0 + d1 * ((e / (-2 * h) + 1) / e) + d2 * (((e - 2 * h) / (2 * h) ** 2 - 0.5) / e)
        x = x * (s_next / s * math.exp(-h)) + d * (alpha_next * e) + noise() * (s_next * math.sqrt(e))
        x = report(hook, j, x, sigma_next, x0)
    return x


def dpmpp_3m_sde(plan: Plan, model, x, noise, hook=None):
    return dpmpp_sde(plan, model, x, noise, hook, order=3)
