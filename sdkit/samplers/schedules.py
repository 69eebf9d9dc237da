"""Noise schedules as float64 numpy tables: betas, alphas_cumprod (ᾱ), timestep spacing, sigma <-> t, Karras.

One convention throughout: a noise level is the variance-exploding sigma = sqrt((1 - ᾱ) / ᾱ) of k-diffusion, so
x = x0 + sigma * eps; the variance-preserving sample the UNet sees is x / sqrt(sigma^2 + 1).
Spacing and rounding follow diffusers' set_timesteps exactly, so the UNet gets the timesteps it gets there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import SchedulerConfig

SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class Plan:
    """Everything one sampling run needs, computed once: which sampler, and the tables it walks."""

    sampler: str  # canonical name
    prediction_type: str  # "epsilon" | "v_prediction" | "sample" (x0, an EDM model preconditioned): what the
    # model outputs
    timesteps: np.ndarray  # (E,) the t the UNet gets at each of its E evaluations, in order
    # Noise levels. ddim: (E, 2) [from, to] per evaluation; pndm: (E, 3) [from, to, the next evaluation's]. The
    # k-diffusion family (euler, euler_a, heun, lms, dpmpp_*, unipc): (N + 1,) levels of the whole N-step
    # schedule, the last 0; the run starts at `start`.
    sigmas: np.ndarray
    start_sigma: float  # noise level of the first evaluation: where image-to-image noises the image to
    init_noise_sigma: float  # text-to-image starts from standard noise times this
    variance_preserving: bool  # the sampler's x is sqrt(ᾱ) x0 + sqrt(1 - ᾱ) eps, else x0 + sigma eps
    start: int = 0  # image-to-image: steps of `sigmas` skipped (k-diffusion family)
    warmup: int = 0  # pndm: pseudo Runge-Kutta evaluations before the linear multistep ones
    sigma_data: float | None = None  # an EDM model's (sdkit.samplers.edm): timesteps are c_noise, not t

    @property
    def num_evaluations(self) -> int:
        return len(self.timesteps)


def alphas_cumprod(config: SchedulerConfig, finite: bool = False) -> np.ndarray:
    """ᾱ_t = prod_{s<=t} (1 - beta_s), (num_train_timesteps,). A zero-terminal-SNR schedule (Lin et al. 2024,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv:2305.08891, Algorithm 1) ends at
    ᾱ = 0, pure noise; `finite` puts 2^-24 there instead, as diffusers does for samplers that need a finite
    sigma (Euler, DPM-Solver, UniPC: sigma_max = 4096)."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, np.float64)
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n) ** 2
    elif config.beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, cosine ᾱ
        alpha_bar = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        t = np.arange(n) / n
        betas = np.minimum(1 - alpha_bar(t + 1 / n) / alpha_bar(t), 0.999)
    else:
        raise ValueError(f"scheduler config: beta_schedule {config.beta_schedule!r} is not supported; "
                         "use 'linear', 'scaled_linear' or 'squaredcos_cap_v2'")
    ac = np.cumprod(1 - betas)
    if config.rescale_betas_zero_snr:  # shift and scale sqrt(ᾱ) so that it ends at 0 and keeps its start
        root = np.sqrt(ac)
        root = (root - root[-1]) * (root[0] / (root[0] - root[-1]))
        ac = np.cumprod(np.concatenate([root[:1] ** 2, root[1:] ** 2 / root[:-1] ** 2]))  # via betas, as diffusers
        if finite:
            ac[-1] = 2**-24
    return ac


def to_sigma(alpha_cumprod):
    """ᾱ -> the variance-exploding noise level sqrt((1 - ᾱ) / ᾱ); ᾱ = 0 (zero terminal SNR) -> inf."""
    with np.errstate(divide="ignore"):
        return np.sqrt((1 - alpha_cumprod) / alpha_cumprod)


def spaced_timesteps(spacing: str, n: int, config: SchedulerConfig, *, exact_linspace: bool = False) -> np.ndarray:
    """n training timesteps, descending. "leading": k * (T // n) + steps_offset; "trailing": ending at T - 1;
    "linspace": n points from 0 to T - 1, rounded unless `exact_linspace` (Euler-family schedulers keep them
    fractional, as float32)."""
    t_train = config.num_train_timesteps
    if spacing == "linspace":
        t = np.linspace(0, t_train - 1, n)
        t = t.astype(np.float32) if exact_linspace else t.round()
    elif spacing == "leading":
        t = np.arange(n) * (t_train // n) + config.steps_offset
    elif spacing == "trailing":
        t = (np.round(np.arange(t_train, 0, -t_train / n)) - 1)[::-1]
    else:
        raise ValueError(f"scheduler config: timestep_spacing {spacing!r} is not supported; use one of {SPACINGS}")
    return t[::-1].astype(np.float64)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps of noise levels, by linear interpolation in log sigma (k-diffusion's DiscreteSchedule)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return low + w


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 (arXiv:2206.00364) eq. 5: n levels evenly spaced in sigma^(1/rho), descending."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """n levels evenly spaced in log sigma, descending (k-diffusion's get_sigmas_exponential without the 0)."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Lee et al. 2024, "Beta Sampling is All You Need" (arXiv:2407.12173): levels at the quantiles of a
    Beta(a, b) distribution of 1 - linspace(0, 1, n), so steps crowd at both ends of the schedule."""
    return np.array([sigma_min + beta_ppf(1 - u, a, b) * (sigma_max - sigma_min) for u in np.linspace(0, 1, n)])


SIGMA_SCHEDULES = {"karras": karras_sigmas, "exponential": exponential_sigmas, "beta": beta_sigmas}


def beta_ppf(q: float, a: float, b: float) -> float:
    """The Beta(a, b) quantile function (scipy.stats.beta.ppf), by bisection on the regularised incomplete beta
    function I_x(a, b): 100 halvings of [0, 1] reach float64 resolution."""
    if q <= 0 or q >= 1:
        return float(q > 0)
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _betainc(a, b, mid) < q else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz; Numerical Recipes' betacf), with the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-16:
            break
    return math.exp(log_front) * f / a
