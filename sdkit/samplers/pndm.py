"""PNDM / PLMS: Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (arXiv:2202.09778).

A linear multistep method (Adams-Bashforth, up to 4th order) on the model output, transferred along the
schedule with the paper's eq. 9; warmed up either by pseudo Runge-Kutta steps (PRK, 4 evaluations each) or,
with skip_prk_steps, by one Heun-like step, as diffusers' PNDMScheduler does.
"""

from __future__ import annotations

import numpy as np

from ..config import SchedulerConfig
from . import prediction
from .ddim import final_sigma
from .hook import report, report_inner
from .schedules import Plan, alphas_cumprod, spaced_timesteps, to_sigma

PRK_STEPS = 3  # pseudo Runge-Kutta steps before the multistep ones when skip_prk_steps is false


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """diffusers' PNDMScheduler timesteps and, per evaluation, the [from, to] noise levels its step() uses and
    the level of the next evaluation's timestep, which x is then taken to be at (the last: `to`).

    Image-to-image slices the evaluations like diffusers, whose step counter restarts at 0 there: the warm-up
    then runs on the later timesteps (and PRK keeps reading its transfer start from the unsliced list)."""
    skip_prk = bool(config.skip_prk_steps)  # diffusers' default: False
    if not skip_prk and steps < PRK_STEPS + 1:
        raise ValueError(f"sampler pndm: steps must be >= {PRK_STEPS + 1} when the scheduler config's "
                         f"skip_prk_steps is false (its Runge-Kutta warm-up), got {steps}")
    t_train = config.num_train_timesteps
    ratio, half = t_train // steps, t_train // steps // 2
    t = spaced_timesteps(config.timestep_spacing or "leading", steps, config)[::-1].astype(np.int64)  # ascending
    if skip_prk:
        prk = np.zeros(0, np.int64)
        plms = np.concatenate([t[:-1], t[-2:-1], t[-1:]])[::-1]  # the opening step evaluates twice
    else:
        prk = np.repeat(t[-4:], 2) + np.tile([0, half], 4)  # each of the top 3 steps and its midpoint
        prk = np.repeat(prk[:-1], 2)[1:-1][::-1]  # (12,) start, mid, mid, end per step
        plms = t[:-3][::-1]
    evaluations = np.concatenate([prk, plms])[start:]

    pairs = []  # (from, to) timesteps of each evaluation's transfer, as diffusers' step() computes them
    for c, tc in enumerate(evaluations):
        if c < len(prk):
            pairs.append((prk[c // 4 * 4], tc - (0 if c % 2 else half)))
        elif c == 1:
            pairs.append((tc + ratio, tc))  # the opening step, redone with the averaged output
        else:
            pairs.append((tc, tc - ratio))
    pairs = np.array(pairs, np.int64).reshape(-1, 2)
    ac = alphas_cumprod(config)
    sigmas = np.where(pairs >= 0, to_sigma(ac[pairs.clip(0)]), final_sigma(config, False, ac))  # (E, 2)
    # `to`, except where image-to-image's slicing shifts the warm-up: there diffusers' inpainting re-noises to
    # the next timestep (add_noise(timesteps[i + 1])) and the next evaluation takes x as at that timestep
    after = np.append(to_sigma(ac[evaluations[1:]]), sigmas[-1, 1])
    sigmas = np.concatenate([sigmas, after[:, None]], axis=1)  # (E, 3)
    return Plan("pndm", config.prediction_type, evaluations.astype(np.float64), sigmas,
                start_sigma=float(to_sigma(ac[evaluations[0]])),
                init_noise_sigma=1.0, variance_preserving=True, warmup=min(len(prk), len(evaluations)))


def transfer(x, out, sigma: float, sigma_prev: float, kind: str):
    """Eq. 9: x_t -> x_prev along the schedule, given the (combined) model output at t."""
    e = prediction.eps(out, x, sigma, kind)
    a, a_prev = 1 / (1 + sigma * sigma), 1 / (1 + sigma_prev * sigma_prev)  # ᾱ
    denom = a * (1 - a_prev) ** 0.5 + (a * (1 - a) * a_prev) ** 0.5
    return x * (a_prev / a) ** 0.5 - e * ((a_prev - a) / denom)


def sample(plan: Plan, model, x, noise, hook=None):
    """PRK warm-up (plan.warmup evaluations), then PLMS: eps' = (55 e_0 - 59 e_-1 + 37 e_-2 - 9 e_-3) / 24.
    The hook sees each completed step: every 4th PRK evaluation, and not the opening PLMS step's first try;
    its `inner` (hook.report_inner) the other evaluations."""
    kind = plan.prediction_type
    ets = []  # model outputs at the start of each step, newest last
    step = 0
    for c, (t, (sigma, sigma_prev, after)) in enumerate(zip(plan.timesteps, plan.sigmas.tolist())):
        out = model(x, float(t))
        x0 = prediction.x0(out, x, sigma, kind) if hook is not None else None
        if c < plan.warmup:  # Runge-Kutta: every evaluation transfers from the step's start x_start
            k = c % 4
            if k == 0:
                x_start, rk = x, out / 6
                ets.append(out)
            elif k < 3:
                rk = rk + out / 3
            else:
                out = rk + out / 6
            x = transfer(x_start, out, sigma, sigma_prev, kind)
            if k == 3:
                x, step = report(hook, step, x, after, x0), step + 1
            else:
                x = report_inner(hook, x, after)
            continue
        if c == 1:  # second evaluation of the opening step: average the two outputs (Heun)
            out, x = (out + ets[-1]) / 2, x_start
        else:
            ets = ets[-3:] + [out]
            if len(ets) == 1:
                x_start = x
            elif len(ets) == 2:
                out = (ets[-1] * 3 - ets[-2]) / 2
            elif len(ets) == 3:
                out = (ets[-1] * 23 - ets[-2] * 16 + ets[-3] * 5) / 12
            else:
                out = (ets[-1] * 55 - ets[-2] * 59 + ets[-3] * 37 - ets[-4] * 9) / 24
        x = transfer(x, out, sigma, sigma_prev, kind)
        if c == 0 and plan.warmup == 0 and plan.num_evaluations > 1:  # the opening step's first try
            x = report_inner(hook, x, after)
        else:
            x, step = report(hook, step, x, after, x0), step + 1
    return x
