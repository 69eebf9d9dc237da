"""DEIS: Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (arXiv:2204.13902),
the multistep rhoAB solver in log rho as diffusers' DEISMultistepScheduler runs it (solver_order 2 by default).

In the variance-exploding coordinates y = x / alpha, rho = s / alpha (sdkit's sigma), the probability-flow ODE is
dy / drho = eps. Each step integrates over rho the polynomial in log rho through the last `order` eps
predictions (Adams-Bashforth in log rho): y_next = y + sum_k eps_k * integral of the k-th Lagrange basis.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..config import SchedulerConfig
from . import prediction
from .dpmpp import multistep_plan
from .hook import report
from .schedules import SIGMA_SCHEDULES, Plan, alphas_cumprod, to_sigma


def plan(name: str, config: SchedulerConfig, steps: int, start: int, schedule: str | None) -> Plan:
    """DPM-Solver's timesteps and levels, but the last step ends where diffusers' DEIS ends it: at the level of
    t = 0 (not 0), or on a sigma schedule at its own last level again (that step leaves x as it is)."""
    p = multistep_plan(name, config, steps, start, schedule)
    final = p.sigmas[-2] if schedule in SIGMA_SCHEDULES else to_sigma(alphas_cumprod(config, finite=True)[0])
    return dataclasses.replace(p, sigmas=np.append(p.sigmas[:-1], final))


def deis(plan: Plan, model, x, noise, hook=None, order: int = 2):
    """y_next = y + sum_k c_k eps_k, c_k = integral from rho to rho_next of L_k(log r) dr, L_k the Lagrange
    basis on the log rho of the last `order` evaluations. The order rises from 1 one step at a time; with fewer
    than 15 steps the last step is first order (DDIM) and the one before it at most second order."""
    sigmas = plan.sigmas.tolist()
    n = len(sigmas) - 1
    epss = []  # (sigma, eps) of past evaluations, newest last
    for j, t in enumerate(plan.timesteps):
        i = plan.start + j
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        out = model(x, float(t))
        x0 = prediction.x0(out, x, sigma, plan.prediction_type)
        epss = (epss + [(sigma, prediction.eps(out, x, sigma, plan.prediction_type))])[-order:]
        k = min(len(epss), n - i) if n < 15 else len(epss)  # diffusers' lower_order_final
        y = x / prediction.alpha_s(sigma)[0]
        nodes = [math.log(s) for s, _ in epss[-k:]]
        for m, (_, e) in enumerate(epss[-k:]):
            y = y + e * basis_integral(nodes, m, sigma, sigma_next)
        x = y * prediction.alpha_s(sigma_next)[0]
        x = report(hook, j, x, sigma_next, x0)
    return x


def basis_integral(nodes: list[float], m: int, rho: float, rho_next: float) -> float:
    """integral from rho to rho_next of L_m(log r) dr, L_m the Lagrange polynomial that is 1 at nodes[m] and 0 at
    the other nodes. With u = log r, the integral of u^d dr is F_d(r) = r sum_j (-1)^j d! / (d - j)! u^(d - j)."""
    others = nodes[:m] + nodes[m + 1:]
    poly = np.atleast_1d(np.poly(others)) / np.prod([nodes[m] - o for o in others])  # in u, highest power first

    def antiderivative(r: float) -> float:
        u, total = math.log(r), 0.0
        for power, c in enumerate(poly[::-1]):  # c u^power
            total += c * sum((-1) ** j * math.perm(power, j) * u ** (power - j) for j in range(power + 1))
        return r * total

    return antiderivative(rho_next) - antiderivative(rho)
