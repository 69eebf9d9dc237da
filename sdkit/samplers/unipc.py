"""UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models" (arXiv:2302.04867): the 2nd-order data-prediction UniP predictor with the UniC corrector, B(h) = e^h - 1
("bh2"), as diffusers' UniPCMultistepScheduler runs it (first order on the first and the last step)."""

from __future__ import annotations

import math

from . import prediction
from .hook import report
from .schedules import Plan


def _lambda(sigma: float) -> float:
    return -math.log(sigma)  # log(alpha / s), the half log-SNR


def unipc(plan: Plan, model, x, noise, hook=None):
    """Each evaluation at x_i first corrects x_i (UniC, reusing that evaluation), then predicts x_{i+1} (UniP).

    With hh = -(lambda_next - lambda) and B = e^hh - 1, both start from the DPM-Solver++ first-order step
    x_ = (s_next / s) x - alpha_next B m0 and subtract alpha_next B sum_k rho_k D_k, where D_k are divided
    differences of past x0 predictions (UniP: rho = 1/2 at order 2) and, for UniC, of the new one, with rho
    solving the order conditions R rho = b (eq. 8-9 of the paper)."""
    sigmas = plan.sigmas.tolist()
    ms = []  # x0 predictions, newest last
    x_last, order = None, 1  # the sample the last prediction started from, and its order
    for j, t in enumerate(plan.timesteps):
        i = plan.start + j
        m = prediction.x0(model(x, float(t)), x, sigmas[i], plan.prediction_type)
        if x_last is not None:  # UniC: x_i = corrected transfer of x_{i-1} using m at the predicted x_i
            x_, c = _transfer(x_last, ms[-1], sigmas[i - 1], sigmas[i])
            if order == 1:
                x = x_ - (m - ms[-1]) * (c * 0.5)
            else:
                rk = (_lambda(sigmas[i - 2]) - _lambda(sigmas[i - 1])) / (_lambda(sigmas[i]) - _lambda(sigmas[i - 1]))
                rho_1, rho_t = _corrector_weights(sigmas[i - 1], sigmas[i], rk)
                x = x_ - ((ms[-2] - ms[-1]) * (rho_1 / rk) + (m - ms[-1]) * rho_t) * c
        ms = ms[-1:] + [m]
        # order 2 once there is a past prediction, but 1 on the last step
        order = 1 if j == 0 or i == len(sigmas) - 2 else 2
        x_last = x
        if sigmas[i + 1] == 0:  # lambda = inf: the step lands on the prediction
            x = report(hook, j, m, 0.0, m)
            continue
        x, c = _transfer(x, m, sigmas[i], sigmas[i + 1])
        if order == 2:  # UniP-2: rho = 1/2
            rk = (_lambda(sigmas[i - 1]) - _lambda(sigmas[i])) / (_lambda(sigmas[i + 1]) - _lambda(sigmas[i]))
            x = x - (ms[-2] - m) * (c * 0.5 / rk)
        x = report(hook, j, x, sigmas[i + 1], m)
    return x


def _transfer(x, m, sigma: float, sigma_next: float):
    """The first-order step x_ = (s_next / s) x - alpha_next B m and the factor c = alpha_next B of the
    higher-order terms, B = e^hh - 1, hh = lambda - lambda_next."""
    (alpha, s), (alpha_next, s_next) = prediction.alpha_s(sigma), prediction.alpha_s(sigma_next)
    c = alpha_next * math.expm1(_lambda(sigma) - _lambda(sigma_next))
    return x * (s_next / s) - m * c, c


def _corrector_weights(sigma: float, sigma_next: float, rk: float) -> tuple[float, float]:
    """UniC-2 weights: solve [[1, 1], [rk, 1]] rho = b, b_k = k! hh phi_{k+1}(hh) / B, with the phi functions
    phi_2(h) = (e^h - 1 - h) / h^2, phi_3(h) = (e^h - 1 - h - h^2 / 2) / h^3."""
    hh = _lambda(sigma) - _lambda(sigma_next)
    b = math.expm1(hh)
    hh_phi_2 = b / hh - 1
    hh_phi_3 = hh_phi_2 / hh - 0.5
    b1, b2 = hh_phi_2 / b, 2 * hh_phi_3 / b
    rho_1 = (b1 - b2) / (1 - rk)
    return rho_1, b1 - rho_1
