"""DPM-Solver-2 (Lu et al. 2022, "DPM-Solver", arXiv:2206.00927) on the k-diffusion ODE dx/dsigma = (x - x0) / sigma,
as k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral and diffusers' KDPM2(Ancestral)DiscreteScheduler run it:
an Euler half step to the geometric midpoint of two noise levels, then the whole step with the slope there.
Two model evaluations per step, except the last, which is Euler down to sigma = 0."""

from __future__ import annotations

import numpy as np

from ..config import SchedulerConfig
from .hook import report, report_inner
from .prediction import denoise
from .schedules import SIGMA_SCHEDULES, Plan, alphas_cumprod, spaced_timesteps, to_sigma


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sqrt(a b), the geometric mean, rounded to float32 as diffusers keeps it (diffusers' float32
    exp(lerp(log a, log b, 1/2)) is within one float32 ulp of it); 0 where either is 0."""
    return np.sqrt(a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)


def levels(sigmas: np.ndarray, ancestral: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N + 1,) levels (the last 0) -> per step k: the midpoint level (float32), the level the step goes down to and
    the noise std added after it. DPM2: midpoint sqrt(s_k s_k+1), down s_k+1, up 0. DPM2 a: the Euler-ancestral
    split of s_k+1 into sigma_down^2 + sigma_up^2, midpoint sqrt(s_k sigma_down) (= s_k+1)."""
    s = sigmas.astype(np.float32).astype(np.float64)
    s_next = np.append(s[1:], 0.0)
    if not ancestral:
        return _midpoint(s_next, s), s_next, np.zeros_like(s)
    # diffusers and k-diffusion take sigma_down = sqrt(s_next^2 - sigma_up^2), which cancels: in float32 its error
    # is ~ulp (s / s_next)^2 (1.5 % for SD's 14.6 -> 0.029), so the midpoint's timestep moved with the CPU. Exactly,
    # with sigma_up^2 = s_next^2 (s^2 - s_next^2) / s^2, it is s_next^2 / s; s - s_next is exact (Sterbenz).
    with np.errstate(invalid="ignore", divide="ignore"):  # the (unused) level after 0
        up = s_next * np.sqrt((s - s_next) * (s + s_next)) / s
        down = s_next**2 / s
    up[-1] = down[-1] = 0
    mid = _midpoint(s, down)
    mid[-2:] = 0  # the last step is Euler to 0
    return mid, down, up


def _sigma_to_t(sigma: np.ndarray, log_table: np.ndarray) -> np.ndarray:
    """Fractional timesteps of noise levels by linear interpolation in log sigma, with diffusers' arithmetic
    (float32 log of a float32 level, t = (1 - w) low + w high) so that the UNet gets the very same t."""
    log_sigma = np.log(np.maximum(sigma, np.float32(1e-10)))
    low = np.clip(np.searchsorted(log_table, log_sigma.astype(np.float64), side="right") - 1, 0, len(log_table) - 2)
    w = np.clip((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """diffusers' KDPM2 schedule: Euler's levels (float32 "linspace" timesteps by default; a sigma `schedule`
    respaces them, karras timesteps rounded), and the UNet evaluated at t_k, then at the midpoint's t, per step."""
    spacing = config.timestep_spacing or "linspace"
    t = spaced_timesteps(spacing, steps, config, exact_linspace=True).astype(np.float32)
    table = to_sigma(alphas_cumprod(config, finite=True))
    log_table = np.log(table)
    sigmas = np.interp(t, np.arange(len(table)), table)
    if schedule in SIGMA_SCHEDULES:
        sigmas = SIGMA_SCHEDULES[schedule](sigmas[-1], sigmas[0], steps)
        t = _sigma_to_t(sigmas, log_table)
        t = t.round() if schedule == "karras" else t  # float64 here, as in diffusers
    sigmas = np.append(sigmas, 0.0).astype(np.float32)
    mid = levels(sigmas, name == "dpm2_a")[0]
    t_mid = _sigma_to_t(mid, log_table).astype(t.dtype)
    # (2 (N - start) - 1,) t_start, then per later step the previous step's midpoint and its own start
    t = np.append(t[start:start + 1], np.stack([t_mid[start:steps - 1], t[start + 1:]], axis=-1).reshape(-1))
    init = sigmas[0] if spacing in ("linspace", "trailing") else np.sqrt(np.float64(sigmas[0]) ** 2 + 1)
    return Plan(name, config.prediction_type, t.astype(np.float64), sigmas.astype(np.float64),
                start_sigma=float(sigmas[start]), init_noise_sigma=float(init), variance_preserving=False,
                start=start)


def dpm2(plan: Plan, model, x, noise, hook=None, ancestral: bool = False):
    """x_mid = x + d (sigma_mid - sigma), d = (x - x0) / sigma; x_next = x + d_mid (sigma_down - sigma), plus
    sigma_up fresh noise (ancestral). The last step: x_next = x0."""
    kind, t, sigmas = plan.prediction_type, plan.timesteps, plan.sigmas
    mid, down, up = (a.tolist() for a in levels(sigmas, ancestral))
    sigmas = sigmas.tolist()
    for j, i in enumerate(range(plan.start, len(sigmas) - 1)):
        sigma = sigmas[i]
        x0 = denoise(model, x, sigma, float(t[2 * j]), kind)
        d = (x - x0) / sigma
        if mid[i] == 0:
            x = report(hook, j, x + d * (0.0 - sigma), sigmas[i + 1], x0)
            continue
        # diffusers re-noises an inpainting's kept region to the step's end level here, not to the midpoint's
        x_mid = report_inner(hook, x + d * (mid[i] - sigma), sigmas[i + 1])
        d_mid = (x_mid - denoise(model, x_mid, mid[i], float(t[2 * j + 1]), kind)) / mid[i]
        x = x + d_mid * (down[i] - sigma)
        if ancestral:
            x = x + noise() * up[i]
        x = report(hook, j, x, sigmas[i + 1], x0)
    return x


def dpm2_ancestral(plan: Plan, model, x, noise, hook=None):
    return dpm2(plan, model, x, noise, hook, ancestral=True)
