"""A cheap latent -> RGB projection for the live preview: one 4x3 matrix instead of the VAE decoder."""

from __future__ import annotations

import numpy as np

# Least-squares fits of VAE-decoded RGB on the 4 latent channels, the factors AUTOMATIC1111's
# "Approx cheap" preview uses (sd_vae_approx.py). Rows: latent channels; columns: R, G, B.
_SD = np.array([[0.298, 0.207, 0.208],
                [0.187, 0.286, 0.173],
                [-0.158, 0.189, 0.264],
                [-0.184, -0.271, -0.473]], dtype=np.float32)
_SDXL = np.array([[0.3448, 0.4168, 0.4395],
                  [-0.1953, -0.0290, 0.0250],
                  [0.1074, 0.0886, -0.0163],
                  [-0.3730, -0.2499, -0.2088]], dtype=np.float32)


def latents_to_rgb(latents: np.ndarray, family: str = "sd1") -> np.ndarray:
    """latents (C, h, w) float32 -> (h, w, 3) uint8.

    The sampler's x carries noise of std sigma on top of the image (sigma ~ 15 at the first step), so x is
    scaled down to unit std first: early steps then show noise, late steps the picture."""
    x = latents.astype(np.float32)
    x = x / max(1.0, float(x.std()))
    if x.shape[0] != 4:  # an unknown latent space: show its first channel in grey
        x = np.repeat(x[:1], 3, axis=0).transpose(1, 2, 0)
    else:
        x = np.einsum("chw,cr->hwr", x, _SDXL if family == "sdxl" else _SD)  # (h, w, 3)
    return (np.clip((x + 1) / 2, 0, 1) * 255).round().astype(np.uint8)
