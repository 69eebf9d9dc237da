"""Opening checkpoints: folder and single-file layouts agree, file variants, the v-prediction rule, errors."""

import dataclasses
import json
import pickle
import shutil
import time

import numpy as np
import pytest
import torch
from fixtures import to_single_file
from safetensors.torch import load_file, save_file

from sdkit.checkpoint import choose_weights, open_checkpoint
from sdkit.errors import CheckpointError
from sdkit.weights import read_tensors


def arrays(weights):
    return dict(read_tensors(weights, "numpy"))


def assert_same_weights(a, b):
    """Same components, canonical names, shapes and values."""
    assert a.weights.keys() == b.weights.keys()
    for component in a.weights:
        wa, wb = a.weights[component], b.weights[component]
        assert wa.keys() == wb.keys(), (component, sorted(wa.keys() ^ wb.keys())[:5])
        xa, xb = arrays(wa), arrays(wb)
        for name in wa:
            assert wa[name].shape == wb[name].shape == xa[name].shape == xb[name].shape, name
            np.testing.assert_array_equal(xa[name], xb[name], err_msg=f"{component}: {name}")


def assert_one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("family", ["sd1", "sd2v", "sdxl"])
def test_single_file_equals_folder(request, family):
    folder = open_checkpoint(request.getfixturevalue(f"{family}_folder"))
    single = open_checkpoint(request.getfixturevalue(f"{family}_single_file"))
    assert folder.family == single.family == family.removesuffix("v")
    assert_same_weights(folder, single)
    assert single.text_encoders == folder.text_encoders
    assert single.scheduler == folder.scheduler
    # sample_size is the one thing shapes cannot tell: single files get their family's (see the next test)
    for field in dataclasses.fields(folder.unet):
        if field.name != "sample_size":
            assert getattr(single.unet, field.name) == getattr(folder.unet, field.name), field.name
    for field in dataclasses.fields(folder.vae):
        if field.name != "sample_size":
            assert getattr(single.vae, field.name) == getattr(folder.vae, field.name), field.name


def test_sd2_single_file_drops_the_unused_last_block(sd2v_single_file, sd2v_folder):
    """The file's OpenCLIP tower has one resblock more than diffusers' SD2 text_encoder, and a projection."""
    keys = load_file(sd2v_single_file).keys()
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in keys
    assert "cond_stage_model.model.text_projection" in keys
    weights = open_checkpoint(sd2v_single_file).weights["text_encoder"]
    assert not any(k.startswith("encoder.layers.2.") or "projection" in k for k in weights)
    # the q/k/v thirds of the fused in_proj equal the folder's separate projections
    folder = arrays(open_checkpoint(sd2v_folder).weights["text_encoder"])
    split = arrays({k: v for k, v in weights.items() if "_proj." in k and "self_attn" in k})
    assert len(split) == 2 * 4 * 2  # 2 layers x (q, k, v, out) x (weight, bias)
    for name, x in split.items():
        np.testing.assert_array_equal(x, folder[name], err_msg=name)


def test_sdxl_projection_sizes_tokenizers_and_negative_flag(sdxl_folder, sdxl_single_file, sd1_folder, tmp_path):
    a, b = open_checkpoint(sdxl_folder), open_checkpoint(sdxl_single_file)
    assert (a.family, a.default_size, a.tokenizers) == ("sdxl", (64, 64), (sdxl_folder / "tokenizer",
                                                                          sdxl_folder / "tokenizer_2"))
    assert (b.family, b.default_size, b.tokenizers) == ("sdxl", (1024, 1024), ("clip-l", "openclip"))
    assert a.vae.scaling_factor == b.vae.scaling_factor == 0.13025 and a.vae.force_upcast and b.vae.force_upcast
    # OpenCLIP stores text_projection as (width, projection) for x @ P; the canonical Linear weight is its transpose
    stored = load_file(sdxl_single_file)["conditioner.embedders.1.model.text_projection"]
    assert stored.shape == (128, 64)
    np.testing.assert_array_equal(arrays(b.weights["text_encoder_2"])["text_projection.weight"], stored.T.numpy())
    # no negative prompt -> zeros: diffusers' default, model_index.json may say otherwise; SD1/SD2 never zero
    assert a.force_zeros_for_empty_prompt and b.force_zeros_for_empty_prompt
    assert not open_checkpoint(sd1_folder).force_zeros_for_empty_prompt
    copy = shutil.copytree(sdxl_folder, tmp_path / "xl")
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    assert not open_checkpoint(copy).force_zeros_for_empty_prompt
    (copy / "model_index.json").unlink()
    assert open_checkpoint(copy).force_zeros_for_empty_prompt


def test_sdxl_time_embedding_must_fit_the_pooled_text(sdxl_folder, tmp_path):
    copy = shutil.copytree(sdxl_folder, tmp_path / "xl")
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**config, "addition_time_embed_dim": 128}))
    assert_one_line_error(r"projection_class_embeddings_input_dim 1600 is not the pooled text width 64 \+ 6 \(base\) "
                          r"or 5 \(refiner\) time ids x addition_time_embed_dim 128", open_checkpoint, copy)


def test_families_sizes_and_tokenizers(sd1_folder, sd2v_folder, sd1_single_file, sd2v_single_file):
    a, b = open_checkpoint(sd1_folder), open_checkpoint(sd2v_folder)
    assert (a.family, a.default_size, a.tokenizers) == ("sd1", (64, 64), (sd1_folder / "tokenizer",))
    assert (b.family, b.default_size, b.scheduler.prediction_type) == ("sd2", (96, 96), "v_prediction")
    c, d = open_checkpoint(sd1_single_file), open_checkpoint(sd2v_single_file)
    assert (c.family, c.default_size, c.tokenizers, c.scheduler.prediction_type) == ("sd1", (512, 512), ("clip-l",),
                                                                                      "epsilon")
    assert (d.family, d.default_size, d.tokenizers, d.scheduler.prediction_type) == ("sd2", (768, 768), ("openclip",),
                                                                                      "v_prediction")
    assert d.unet.upcast_attention and d.unet.use_linear_projection and d.unet.num_heads == (1, 2)
    assert c.unet.num_heads == (8, 8) and not c.unet.use_linear_projection
    assert (c.name, a.name) == ("tiny-sd1", "tiny-sd1")
    assert open_checkpoint(sd1_folder, name="owner/tiny").name == "owner/tiny"


@pytest.mark.parametrize("filename, extra, prediction, size", [
    ("tiny-sd2-768-v.safetensors", {}, "v_prediction", 768),
    ("v2-1_512-ema-pruned.safetensors", {}, "epsilon", 512),
    ("sd21-BASE.safetensors", {}, "epsilon", 512),
    ("v2-1_512-ema-pruned.safetensors", {"v_pred": torch.zeros(0)}, "v_prediction", 512),
])
def test_sd2_prediction_rule(sd2v_folder, tmp_path, filename, extra, prediction, size):
    ckpt = open_checkpoint(to_single_file(sd2v_folder, tmp_path / filename, "sd2v", leftovers=False, extra=extra))
    assert (ckpt.scheduler.prediction_type, ckpt.default_size) == (prediction, (size, size))


def test_prediction_override(sd1_folder, sd1_single_file, sd2v_single_file):
    assert open_checkpoint(sd2v_single_file, prediction="epsilon").scheduler.prediction_type == "epsilon"
    assert open_checkpoint(sd1_single_file, prediction="v").scheduler.prediction_type == "v_prediction"
    assert open_checkpoint(sd1_folder, prediction="v").scheduler.prediction_type == "v_prediction"
    assert open_checkpoint(sd1_folder).scheduler.prediction_type == "epsilon"
    assert_one_line_error("prediction='x'", open_checkpoint, sd1_folder, prediction="x")


def test_fp16_variants(sd1_fp16_folder, sd1_folder, tmp_path):
    fp32, fp16 = open_checkpoint(sd1_fp16_folder), open_checkpoint(sd1_fp16_folder, prefer_fp16=True)
    for component in fp32.weights:
        assert {r.dtype for r in fp32.weights[component].values()} == {"F32"}
        assert {r.dtype for r in fp16.weights[component].values()} == {"F16"}
        assert all(r.file.name.endswith(".fp16.safetensors") for r in fp16.weights[component].values())
    x32, x16 = arrays(fp32.weights["unet"]), arrays(fp16.weights["unet"])
    name = "down_blocks.0.attentions.0.proj_in.weight"
    np.testing.assert_array_equal(x16[name], x32[name].astype(np.float16))
    # only the fp16 files: used even when not preferred
    only16 = shutil.copytree(sd1_fp16_folder, tmp_path / "only16")
    for file in only16.glob("*/*.safetensors"):
        if ".fp16." not in file.name:
            file.unlink()
    assert {r.dtype for r in open_checkpoint(only16).weights["vae"].values()} == {"F16"}


def test_choose_weights():
    names = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
             "diffusion_pytorch_model.non_ema.safetensors", "diffusion_pytorch_model.bin"]
    assert choose_weights(names, False) == "diffusion_pytorch_model.safetensors"
    assert choose_weights(names, True) == "diffusion_pytorch_model.fp16.safetensors"
    assert choose_weights(["model.safetensors.index.fp16.json"], False) == "model.safetensors.index.fp16.json"
    assert choose_weights(["pytorch_model.bin", "config.json"], True) is None


def test_legacy_text_model_prefix(sd1_folder, tmp_path):
    """Folders with and without 'text_model.' in the text encoder's keys (the latter with the int64
    position_ids buffer older transformers saved); SD1 single files likewise."""
    folder = shutil.copytree(sd1_folder, tmp_path / "modern")
    file = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(file)
    assert all(k.startswith("text_model.") for k in tensors)
    tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    save_file({**tensors, "embeddings.position_ids": torch.arange(77)[None]}, file)
    assert_same_weights(open_checkpoint(sd1_folder), open_checkpoint(folder))
    old = to_single_file(sd1_folder, tmp_path / "old.safetensors", "sd1", legacy_prefix=False)
    assert any(k.startswith("cond_stage_model.transformer.encoder.") for k in load_file(old))
    assert_same_weights(open_checkpoint(sd1_folder), open_checkpoint(old))


def test_old_vae_attention_names(sd1_folder, tmp_path):
    """Old diffusers VAEs: query/key/value/proj_attn, some saved as 1x1 conv weights."""
    folder = shutil.copytree(sd1_folder, tmp_path / "old-vae")
    file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    old = {}
    for key, x in load_file(file).items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new}." in key:
                key = key.replace(new, legacy)
                x = x[:, :, None, None] if x.ndim == 2 and legacy in ("query", "proj_attn") else x
        old[key] = x
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in old
    save_file(old, file)
    assert_same_weights(open_checkpoint(sd1_folder), open_checkpoint(folder))


def test_sharded_weights(sd1_folder, tmp_path):
    folder = shutil.copytree(sd1_folder, tmp_path / "sharded")
    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors, weight_map = load_file(file), {}
    keys = sorted(tensors)
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        shard = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, folder / "unet" / shard)
        weight_map |= dict.fromkeys(part, shard)
    file.unlink()
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt = open_checkpoint(folder)
    assert len({r.file for r in ckpt.weights["unet"].values()}) == 2
    assert_same_weights(open_checkpoint(sd1_folder), ckpt)


# ---- errors ----

def _explode():
    raise AssertionError("sdkit unpickled a checkpoint")


class Bomb:
    def __reduce__(self):
        return _explode, ()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickles_are_refused_unopened(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(Bomb()))
    message = assert_one_line_error("pickle", open_checkpoint, path)
    assert str(path) in message and ".safetensors" in message


def test_folder_with_only_pickled_weights(sd1_folder, tmp_path):
    folder = shutil.copytree(sd1_folder, tmp_path / "bin-only")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Bomb()))
    message = assert_one_line_error("pickle", open_checkpoint, folder)
    assert "unet" in message


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize("content, match", [
    (b"", "too short"),
    (b"\x01\x02\x03", "too short"),
    (np.random.default_rng(0).bytes(4096), "header length"),
    ((2**60).to_bytes(8, "little") + b"{}", "header length"),
    ((10).to_bytes(8, "little") + b"not json!!", "not JSON"),
    (_safetensors_bytes({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "past the end"),
    (_safetensors_bytes({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8), "broken"),
])
def test_broken_files(tmp_path, content, match):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    assert str(path) in assert_one_line_error(match, open_checkpoint, path)


def test_truncated_file_fails_fast(sd1_single_file, tmp_path):
    path = tmp_path / "truncated.safetensors"
    data = sd1_single_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    start = time.perf_counter()
    assert str(path) in assert_one_line_error("truncated", open_checkpoint, path)
    assert time.perf_counter() - start < 1


def test_missing_path_and_other_suffix(tmp_path):
    assert_one_line_error("no such file or folder", open_checkpoint, tmp_path / "nope.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error("not a .safetensors file", open_checkpoint, tmp_path / "notes.txt")


@pytest.mark.parametrize("extra", [{"model.diffusion_model.foo.weight": torch.zeros(2)},
                                   {"first_stage_model.encoder.mid.attn_2.q.weight": torch.zeros(2)},
                                   {"cond_stage_model.transformer.text_model.pooler.weight": torch.zeros(2)},
                                   {"some_lora_weight": torch.zeros(2)}])
def test_unexpected_tensor(sd1_folder, tmp_path, extra):
    path = to_single_file(sd1_folder, tmp_path / "extra.safetensors", "sd1", extra=extra)
    message = assert_one_line_error("unexpected tensors", open_checkpoint, path)
    assert next(iter(extra)) in message and str(path) in message


def test_missing_components(sd1_single_file, sd1_folder, tmp_path):
    path = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in load_file(sd1_single_file).items() if not k.startswith("first_stage_model.")}, path)
    assert "VAE" in assert_one_line_error("no a VAE|has no", open_checkpoint, path)
    folder = shutil.copytree(sd1_folder, tmp_path / "no-vae")
    shutil.rmtree(folder / "vae")
    assert "vae/config.json" in assert_one_line_error("missing", open_checkpoint, folder)
    (folder / "vae").mkdir()
    shutil.copy(sd1_folder / "vae" / "config.json", folder / "vae")
    assert_one_line_error("no weights", open_checkpoint, folder)


def test_mismatched_components(sd1_folder, sd2v_folder, tmp_path):
    folder = shutil.copytree(sd1_folder, tmp_path / "mixed")
    shutil.rmtree(folder / "text_encoder")
    shutil.copytree(sd2v_folder / "text_encoder", folder / "text_encoder")
    assert "text_encoder vs unet" in assert_one_line_error("width 128", open_checkpoint, folder)
    folder = shutil.copytree(sd1_folder, tmp_path / "latent8")
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    assert "unet vs vae" in assert_one_line_error("8 latent channels", open_checkpoint, folder)


def test_read_tensors_opens_a_file_afresh_every_few_bytes_and_reads_every_tensor(sd1_folder, monkeypatch):
    """Opening again every OPEN_BYTES lets converted tensors' pages go; what is read must not change."""
    import sdkit.weights

    weights = open_checkpoint(sd1_folder).weights["unet"]
    whole = arrays(weights)
    opened = []
    real_open = sdkit.weights.safe_open
    monkeypatch.setattr(sdkit.weights, "safe_open", lambda *a, **kw: opened.append(a[0]) or real_open(*a, **kw))
    monkeypatch.setattr(sdkit.weights, "OPEN_BYTES", 4096)
    chunked = arrays(weights)
    assert len(opened) > 10 and whole.keys() == chunked.keys()
    for name in whole:
        np.testing.assert_array_equal(whole[name], chunked[name], err_msg=name)
