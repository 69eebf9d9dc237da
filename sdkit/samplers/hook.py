"""The per-step hook: how the loop shows each step to its caller (previews, inpainting's blend, a second pass)."""

from __future__ import annotations


def report(hook, step: int, x, sigma: float, denoised):
    """hook(step, x, sigma, denoised) after step `step` (0-based): x, now at noise level sigma (0 after the
    last step), in the plan's convention (plan.variance_preserving), and the step's clean estimate x0.
    An array the hook returns replaces x, so inpainting can blend the kept region back in."""
    if hook is None:
        return x
    out = hook(step, x, sigma, denoised)
    return x if out is None else out


def report_inner(hook, x, sigma: float):
    """hook.inner(x, sigma), where the hook has that method, after each model evaluation that does not end a
    step (Heun's predictor, DPM2's midpoint, PNDM's Runge-Kutta stages and its opening step's first try).
    sigma: the level diffusers' scheduler noises to after that scheduler.step call. Its array replaces x: the
    4-channel inpainting blend runs after every evaluation, as diffusers' pipelines blend after every
    scheduler.step; previews, which see whole steps only, have no `inner`."""
    inner = getattr(hook, "inner", None)
    return x if inner is None else inner(x, sigma)
