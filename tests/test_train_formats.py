"""What training writes, checked against what the real tools write and read (cited per test): kohya sd-scripts'
LoRA metadata and hashes, the SAI model spec, ComfyUI's checkpoint markers."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from sdkit import ldm_writer
from sdkit.checkpoint import open_checkpoint
from sdkit.train import formats
from sdkit.train.data import Example

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


def test_lora_metadata_holds_kohyas_keys_and_values(sd2v_folder, sdxl_folder, sd1_single_file, tmp_path):
    """The ss_* values as kohya's train_network.py computes them: images x repeats, folders with their repeats,
    tag counts per folder (train_util.py set_tag_frequency: comma-separated, stripped, lowercased, once per
    caption), sd_v2_v for a v-prediction SD2 (model_util.get_model_version_str_for_sd1_sd2), no
    ss_network_args without LoCon; modelspec.* as sai_model_spec.build_metadata gives a LoRA."""
    examples = [Example(tmp_path / "data" / "0.png", "sks cube, Red,  photo", 1),
                Example(tmp_path / "data" / "3_sks cube" / "0.png", "sks cube, blue", 3),
                Example(tmp_path / "data" / "3_sks cube" / "1.png", "sks cube", 3),
                Example(tmp_path / "class" / "0.png", "cube", 1, prior=True)]
    meta = formats.lora_metadata(open_checkpoint(sd2v_folder), 8, 4.0, False, True, 100, 1e-4, 768, examples, 7,
                                 "my_lora")
    assert all(isinstance(v, str) for v in meta.values())
    assert {k: meta[k] for k in ("ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_v2",
                                 "ss_num_train_images", "ss_num_reg_images", "ss_resolution",
                                 "ss_network_train_unet_only", "ss_steps")} == {
        "ss_network_dim": "8", "ss_network_alpha": "4.0", "ss_base_model_version": "sd_v2_v", "ss_v2": "True",
        "ss_num_train_images": "7", "ss_num_reg_images": "1", "ss_resolution": "(768, 768)",
        "ss_network_train_unet_only": "False", "ss_steps": "100"}
    assert json.loads(meta["ss_dataset_dirs"]) == {"data": {"n_repeats": 1, "img_count": 1},
                                                   "3_sks cube": {"n_repeats": 3, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"class": {"n_repeats": 1, "img_count": 1}}
    assert json.loads(meta["ss_tag_frequency"]) == {"data": {"sks cube": 1, "red": 1, "photo": 1},
                                                    "3_sks cube": {"sks cube": 2, "blue": 1}, "class": {"cube": 1}}
    assert "ss_network_args" not in meta
    assert (meta["modelspec.architecture"], meta["modelspec.implementation"], meta["modelspec.resolution"],
            meta["modelspec.prediction_type"], meta["modelspec.title"]) == (
        "stable-diffusion-v2-768-v/lora", "diffusers", "768x768", "v", "my_lora")
    xl = formats.lora_metadata(open_checkpoint(sdxl_folder), 4, 4.0, True, False, 10, 1e-4, 1024, examples[:1], 0,
                               "x")
    assert (xl["ss_base_model_version"], xl["ss_v2"], xl["modelspec.architecture"]) == (
        "sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora")
    assert xl["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"  # LDM names
    assert json.loads(xl["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4.0"}
    assert (meta["ss_sd_model_name"], xl["ss_sd_model_name"]) == (sd2v_folder.name, sdxl_folder.name)
    one = formats.lora_metadata(open_checkpoint(sd1_single_file), 4, 4.0, False, False, 1, 1e-4, 64, examples, 0, "o")
    assert (one["ss_sd_model_name"], one["ss_base_model_version"]) == (sd1_single_file.name, "sd_v1")  # with suffix


def test_addnet_hashes_are_sd_scripts_own():
    """sshs_model_hash / sshs_legacy_hash computed as sd-scripts' train_util.precalculate_safetensors_hashes does
    (torch serialisation with the ss_* metadata only), on a file past the legacy hash's 1 MiB offset."""
    import hashlib
    import io

    import safetensors.torch
    import torch
    rng = np.random.default_rng(0)
    tensors = {"lora_unet_a.lora_down.weight": rng.standard_normal((4, 70000), np.float32),
               "lora_unet_a.lora_up.weight": rng.standard_normal((70000, 4), np.float32),
               "lora_unet_a.alpha": np.array(2.0, np.float32)}
    meta = {"ss_network_dim": "4", "ss_output_name": "a", "modelspec.title": "a", "modelspec.date": "2026-01-01"}
    b = io.BytesIO(safetensors.torch.save({k: torch.from_numpy(v) for k, v in tensors.items()},
                                          {k: v for k, v in meta.items() if k.startswith("ss_")}))
    b.seek(int.from_bytes(b.read(8), "little") + 8)
    model_hash = hashlib.sha256(b.read()).hexdigest()
    b.seek(0x100000)
    legacy = hashlib.sha256(b.read(0x10000)).hexdigest()[:8]
    assert formats.addnet_hashes(tensors, meta) == {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy}


def test_trained_lora_carries_the_hash_a1111_computes(sd1_folder, tmp_path):
    """A1111's addnet hash of the written file (modules/hashes.py addnet_hash_safetensors: sha256 after the
    header) equals the file's sshs_model_hash, which A1111 and Civitai take as the LoRA's hash."""
    import hashlib

    import sdkit
    data = tmp_path / "data" / "2_sks cube"
    data.mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(data / "0.png")
    out = tmp_path / "l.safetensors"
    sdkit.train(sd1_folder, tmp_path / "data", method="lora", out=out, steps=1, rank=2, backend="torch",
                progress=False)
    raw = out.read_bytes()
    meta, _ = header(out)
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()
    assert json.loads(meta["ss_tag_frequency"]) == {"2_sks cube": {"sks cube": 1}}
    assert meta["ss_num_train_images"] == "2"


def test_sdxl_embedding_is_clip_l_and_clip_g_as_a1111_reads_it(sdxl_folder, tmp_path):
    """An SDXL embedding holds exactly clip_l (the first encoder's width) and clip_g (the second's), one row per
    vector (A1111 textual_inversion.py create_embedding_from_data; ComfyUI sd1_clip.py load_embed by key)."""
    import sdkit
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(data / "0.png")
    (data / "0.txt").write_text("a photo of shinything")
    out = tmp_path / "shinything.safetensors"
    sdkit.train(sdxl_folder, data, method="textual_inversion", out=out, steps=1, vectors=2, init_word="cube",
                backend="torch", progress=False, resolution=64)
    ckpt = open_checkpoint(sdxl_folder)
    meta, _ = header(out)
    with safe_open(str(out), "np") as f:
        shapes = {k: f.get_tensor(k).shape for k in f.keys()}
    assert shapes == {"clip_l": (2, ckpt.text_encoders[0].hidden_size),
                      "clip_g": (2, ckpt.text_encoders[1].hidden_size)}
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
