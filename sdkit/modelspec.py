"""What a written file says about itself besides its weights: the SAI model spec (`modelspec.*` metadata) as kohya
sd-scripts writes it (library/sai_model_spec.py build_metadata) and ComfyUI's checkpoint markers (comfy_extras/
nodes_model_merging.py save_checkpoint). sdkit.checkpoint reads both back (its family, prediction and size).

    modelspec.architecture    stable-diffusion-v1, -v2-512, -v2-768-v, -xl-v1-base, -xl-v1-refiner; an adapter
                              adds "/lora" or "/textual-inversion"
    modelspec.prediction_type "epsilon" or "v" (kohya); ComfyUI writes the same as modelspec.predict_key
    modelspec.resolution      "<width>x<height>" the model (or adapter) was trained at
    v_pred, ztsnr             empty tensors in a v-prediction checkpoint (ztsnr: zero terminal SNR): the only
                              place ComfyUI's SDXL reads the prediction type from
"""

from __future__ import annotations

import datetime
import time

import numpy as np

from .checkpoint import Checkpoint
from .families import V_PRED, ZTSNR

SPEC_VERSION = "1.0.1"  # kohya's sai_model_spec BASE_METADATA
SGM = "https://github.com/Stability-AI/generative-models"  # kohya's IMPL_STABILITY_AI: LDM / SGM key names
DIFFUSERS = "diffusers"  # kohya's IMPL_DIFFUSERS: diffusers' key names (its SD1 / SD2 LoRAs)


def architecture(ckpt: Checkpoint) -> str:
    v = ckpt.scheduler.prediction_type == "v_prediction"
    if ckpt.family == "sdxl":
        return "stable-diffusion-xl-v1-" + ("base" if "text_encoder" in ckpt.text_encoder_names else "refiner")
    if ckpt.family == "sd2":
        return "stable-diffusion-v2-768-v" if v else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"


def metadata(ckpt: Checkpoint, title: str, resolution: tuple[int, int] | None = None, adapter: str | None = None,
             implementation: str = SGM) -> dict[str, str]:
    """modelspec.* of a checkpoint (adapter None) or of a "lora" / "textual-inversion" trained on `ckpt`;
    resolution (width, height), default the model's own."""
    height, width = ckpt.default_size
    width, height = resolution or (width, height)
    return {"modelspec.sai_model_spec": SPEC_VERSION,
            "modelspec.architecture": architecture(ckpt) + (f"/{adapter}" if adapter else ""),
            "modelspec.implementation": implementation,
            "modelspec.title": title,
            "modelspec.resolution": f"{width}x{height}",
            "modelspec.date": datetime.datetime.fromtimestamp(int(time.time())).isoformat(),
            "modelspec.prediction_type": "v" if ckpt.scheduler.prediction_type == "v_prediction" else "epsilon"}


def checkpoint(ckpt: Checkpoint, title: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, marker tensors) of a single-file checkpoint of `ckpt`, as kohya and ComfyUI write them. An EDM
    model (Playground) is neither epsilon nor v: it gets no prediction type."""
    meta = metadata(ckpt, title)
    if ckpt.scheduler.edm:
        del meta["modelspec.prediction_type"]
        return meta, {}
    meta["modelspec.predict_key"] = meta["modelspec.prediction_type"]
    markers = {}
    if ckpt.scheduler.prediction_type == "v_prediction":
        markers[V_PRED] = np.zeros(0, np.float32)
        if ckpt.scheduler.rescale_betas_zero_snr:
            markers[ZTSNR] = np.zeros(0, np.float32)
    return meta, markers
