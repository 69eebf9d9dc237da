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
