"""EDM models (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
arXiv:2206.00364, section 5 and table 1; Playground v2.5): a network F preconditioned around continuous noise
levels sigma in [sigma_min, sigma_max] instead of a table of training timesteps,

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),   x = x0 + sigma eps
    c_in = 1 / sqrt(sigma^2 + sigma_data^2)     c_noise = log(sigma) / 4
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)     c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    (c_out negated for v-prediction), as diffusers' EDM schedulers' precondition_inputs / _noise / _outputs.

Wrapped by `precondition`, such a model predicts x0 ("sample") on the variance-preserving sample every sampler
calls its model with, so the samplers that walk a list of noise levels run on EDM's unchanged. REFERENCES: those
that equal a diffusers EDM scheduler.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import SchedulerConfig
from .prediction import alpha_s
from .schedules import Plan, exponential_sigmas, karras_sigmas

# sampler -> (the diffusers scheduler it equals on an EDM model, extra from_config arguments)
REFERENCES = {
    "euler": ("EDMEulerScheduler", {}),
    "dpmpp_2m": ("EDMDPMSolverMultistepScheduler", {}),
    "dpmpp_2m_sde": ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
}
SCHEDULES = ("karras", "exponential")  # the EDM schedulers' sigma_schedule options


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """The levels of diffusers' EDM schedulers: `steps` levels from sigma_max down to sigma_min, evenly spaced
    in sigma^(1/rho) ("karras") or log sigma ("exponential"; schedule None: the config's sigma_schedule), then
    0 (final_sigmas_type "zero") or sigma_min; the UNet gets c_noise of each."""
    if name not in REFERENCES:
        raise ValueError(f"sampler {name} does not run EDM models (Playground v2.5); use one of "
                         f"{', '.join(REFERENCES)}")
    schedule = schedule or config.sigma_schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} does not apply to EDM models (Playground v2.5), whose noise levels "
                         f"are continuous; use one of {', '.join(SCHEDULES)} or None")
    if schedule == "karras":
        sigmas = karras_sigmas(config.sigma_min, config.sigma_max, steps, config.rho)
    else:
        sigmas = exponential_sigmas(config.sigma_min, config.sigma_max, steps)
    last = 0.0 if config.final_sigmas_type == "zero" else config.sigma_min
    sigmas = np.append(sigmas.astype(np.float32), np.float32(last)).astype(np.float64)  # diffusers' are float32
    t = np.log(sigmas[:-1]) / 4  # c_noise
    # diffusers starts from noise * sqrt(sigma_max^2 + 1) (its EDM schedulers' init_noise_sigma), not sigma_max;
    # the multistep solvers (variance preserving here) see that divided by sqrt(sigma^2 + 1) at the first level
    vp = name != "euler"
    init = math.sqrt(config.sigma_max**2 + 1) * (alpha_s(sigmas[0])[0] if vp else 1.0)
    return Plan(name, config.prediction_type, t[start:], sigmas, start_sigma=float(sigmas[start]),
                init_noise_sigma=init, variance_preserving=vp, start=start, sigma_data=config.sigma_data)


def precondition(model, plan: Plan):
    """model(x_in, t) -> F (the network's raw output, guidance applied) as a model of the variance-preserving
    sample z = x / sqrt(sigma^2 + 1) at the level whose c_noise is t, returning D, the clean sample x0."""
    levels = dict(zip(plan.timesteps.tolist(), plan.sigmas[plan.start:].tolist()))
    sd2 = plan.sigma_data**2
    sign = -1.0 if plan.prediction_type == "v_prediction" else 1.0

    def denoiser(z, t: float):
        sigma = levels[t]
        to_x = math.sqrt(sigma * sigma + 1)  # z -> x = x0 + sigma eps
        c_in, c_skip = 1 / math.sqrt(sigma * sigma + sd2), sd2 / (sigma * sigma + sd2)
        c_out = sign * sigma * plan.sigma_data / math.sqrt(sigma * sigma + sd2)
        return z * (to_x * c_skip) + model(z * (to_x * c_in), t) * c_out

    return denoiser
