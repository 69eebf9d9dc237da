"""Classifier-free guidance (Ho & Salimans 2022) and its rescale (Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", arXiv:2305.08891, Algorithm 2). Backend-neutral: + - * / and
mean/sum over axes, which torch, mlx and numpy arrays share."""

from __future__ import annotations


def guide(uncond, cond, scale: float):
    """uncond + scale (cond - uncond)."""
    return uncond + (cond - uncond) * scale


def rescale(guided, cond, phi: float):
    """Pull the guided output's per-image standard deviation back towards the conditional one's, by phi:
    phi guided std(cond) / std(guided) + (1 - phi) guided (diffusers' rescale_noise_cfg)."""
    if phi == 0:
        return guided
    ratio = _std(cond) / _std(guided)  # (B, 1, 1, 1)
    return guided * (ratio * phi + (1 - phi))


def _std(x):
    """Per image over (C, h, w), with Bessel's correction as torch.std."""
    axes = tuple(range(1, len(x.shape)))
    n = 1
    for size in x.shape[1:]:
        n *= size
    d = x - x.mean(axis=axes, keepdims=True)
    return ((d * d).sum(axis=axes, keepdims=True) / (n - 1)) ** 0.5
