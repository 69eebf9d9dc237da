"""What training writes, checked against what the real tools write and read (cited per test): kohya sd-scripts'
LoRA metadata and hashes, the SAI model spec, ComfyUI's checkpoint markers."""

import dataclasses

import numpy as np
import pytest
from safetensors import safe_open

from sdkit import ldm_writer
from sdkit.checkpoint import open_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def header(path):
    with safe_open(str(path), "np") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys() if "." not in k}


@pytest.mark.parametrize("family,prediction,zsnr,architecture", [
    ("sd2", "epsilon", False, "stable-diffusion-v2-512"),
    ("sd2", "v_prediction", False, "stable-diffusion-v2-768-v"),
    ("sdxl", "v_prediction", True, "stable-diffusion-xl-v1-base"),
    ("sdxl", "epsilon", False, "stable-diffusion-xl-v1-base")])
def test_single_file_says_its_prediction_as_kohya_and_comfyui_write_it(
        sd2v_folder, sdxl_folder, tmp_path, family, prediction, zsnr, architecture):
    """A single-file fine-tune keeps its prediction type and schedule: modelspec.* as kohya's sai_model_spec
    writes it, ComfyUI's modelspec.predict_key and its empty v_pred / ztsnr tensors (comfy_extras/
    nodes_model_merging.py save_checkpoint; comfy/supported_models.py SDXL.model_type reads only the tensors).
    sdkit reads it back the same, whatever the file's name (an SD2 file not named 512 would otherwise be v)."""
    source = open_checkpoint(sd2v_folder if family == "sd2" else sdxl_folder)
    source = dataclasses.replace(source, scheduler=dataclasses.replace(
        source.scheduler, prediction_type=prediction, rescale_betas_zero_snr=zsnr))
    path = tmp_path / "finetuned.safetensors"
    ldm_writer.write(path, source, {})
    meta, markers = header(path)
    v = prediction == "v_prediction"
    side = source.default_size[0]
    assert {k: meta[k] for k in meta if k.startswith("modelspec.") and k != "modelspec.date"} == {
        "modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": "finetuned", "modelspec.resolution": f"{side}x{side}",
        "modelspec.prediction_type": "v" if v else "epsilon", "modelspec.predict_key": "v" if v else "epsilon"}
    assert sorted(markers) == sorted(["v_pred"] * v + ["ztsnr"] * zsnr)
    assert all(m.shape == (0,) and m.dtype == np.float32 for m in markers.values())  # torch.tensor([])
    back = open_checkpoint(path)
    assert (back.scheduler.prediction_type, back.scheduler.rescale_betas_zero_snr, back.default_size) == (
        prediction, zsnr, source.default_size)
