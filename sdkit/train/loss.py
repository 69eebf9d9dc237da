"""What the UNet is trained to predict and how each sample's error is weighted (backend-neutral, numpy).

Forward process (Ho et al. 2020): x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps. Targets: eps, or the velocity
v = sqrt(ᾱ_t) eps - sqrt(1 - ᾱ_t) x0 (Salimans & Ho 2022) for v-prediction models (SD 2.x 768).
Min-SNR-gamma (Hang et al. 2023): weight each sample's MSE by min(SNR_t, gamma) / SNR_t (eps) or
min(SNR_t, gamma) / (SNR_t + 1) (v), with SNR_t = ᾱ_t / (1 - ᾱ_t).
"""

from __future__ import annotations

import numpy as np


def noisy_and_target(x0: np.ndarray, noise: np.ndarray, t: np.ndarray, alphas_cumprod: np.ndarray,
                     prediction: str) -> tuple[np.ndarray, np.ndarray]:
    """x0, noise (B, C, h, w), t (B,) -> x_t and the target, (B, C, h, w) float32 each."""
    a = alphas_cumprod[t][:, None, None, None]  # (B, 1, 1, 1) float64
    s, c = np.sqrt(a), np.sqrt(1 - a)
    noisy = s * x0 + c * noise
    target = noise if prediction == "epsilon" else s * noise - c * x0
    return noisy.astype(np.float32), target.astype(np.float32)


def weights(t: np.ndarray, alphas_cumprod: np.ndarray, prediction: str, min_snr_gamma: float | None) -> np.ndarray:
    """(B,) float32 per-sample loss weights: 1 without min-SNR."""
    if not min_snr_gamma:
        return np.ones(len(t), np.float32)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    w = np.minimum(snr, min_snr_gamma) / (snr if prediction == "epsilon" else snr + 1)
    return w.astype(np.float32)
