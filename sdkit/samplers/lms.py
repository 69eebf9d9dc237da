"""LMS: the linear multistep method (4th-order Adams-Bashforth in sigma) of k-diffusion's sample_lms, as
diffusers' LMSDiscreteScheduler runs it. Its weights integrate Lagrange polynomials exactly, in numpy."""

from __future__ import annotations

import numpy as np
from numpy.polynomial import polynomial as P

from .hook import report
from .prediction import denoise

ORDER = 4


def coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """Weights of the derivatives at sigmas[i], sigmas[i-1], ... for the step sigmas[i] -> sigmas[i+1]:
    the integral over that step of each one's Lagrange basis polynomial through those `order` levels."""
    nodes = sigmas[i - np.arange(order)]
    weights = []
    for j in range(order):
        others = np.delete(nodes, j)
        basis = P.polyfromroots(others) / np.prod(nodes[j] - others)
        antiderivative = P.polyint(basis)
        weights.append(float(P.polyval(sigmas[i + 1], antiderivative) - P.polyval(sigmas[i], antiderivative)))
    return weights


def lms(plan, model, x, noise, hook=None):
    """x_next = x + sum_j w_j d_{i-j}, d = (x - x0) / sigma, over up to 4 past derivatives.

    Like diffusers, the order grows with the position in the whole schedule, also when image-to-image
    starts late (the weights then reach back to levels not visited, and only the ones visited are used)."""
    derivatives = []  # newest first
    sigmas = plan.sigmas.tolist()
    for i, t in enumerate(plan.timesteps, plan.start):
        x0 = denoise(model, x, sigmas[i], float(t), plan.prediction_type)
        derivatives = [(x - x0) / sigmas[i]] + derivatives[: ORDER - 1]
        for w, d in zip(coefficients(plan.sigmas, i, min(i + 1, ORDER)), derivatives):
            x = x + d * w
        x = report(hook, i - plan.start, x, sigmas[i + 1], x0)
    return x
