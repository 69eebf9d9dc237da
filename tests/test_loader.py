"""Checkpoints as they are found in the wild: odd single-file layouts, what files say about themselves (modelspec
metadata, marker tensors, names), the SDXL refiner, float8 weights, and one-line refusals of everything else.

Each odd layout is built cheaply from the session fixtures by renaming keys (fixtures.relayout), and must give
the very weights of the diffusers folder it came from.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from fixtures import relayout, to_single_file
from safetensors.torch import load_file, save_file
from test_checkpoint import assert_one_line_error, assert_same_weights

from sdkit.checkpoint import open_checkpoint
from sdkit.errors import CheckpointError
from sdkit.families import BASE_TIME_IDS, ORDINARY, RECIPES, REFINER_TIME_IDS, time_ids
from sdkit.weights import read_tensors

VAE, UNET = "first_stage_model.", "model.diffusion_model."


def assert_same_model(a, b):
    """Same weights, text encoders and configs (but the native size, which single files infer)."""
    assert_same_weights(a, b)
    assert a.text_encoders == b.text_encoders and a.time_ids == b.time_ids
    assert dataclasses.replace(a.unet, sample_size=0) == dataclasses.replace(b.unet, sample_size=0)
    assert dataclasses.replace(a.vae, sample_size=0) == dataclasses.replace(b.vae, sample_size=0)


# ---- the SDXL refiner ----

def test_refiner_folder_and_single_file(refiner_folder, refiner_single_file):
    """One OpenCLIP-bigG tower with its projection, 5 time ids embedded 32 wide (read off the shapes)."""
    folder, single = open_checkpoint(refiner_folder), open_checkpoint(refiner_single_file)
    assert_same_model(folder, single)
    for ckpt in folder, single:
        assert (ckpt.family, ckpt.time_ids, ckpt.text_encoder_names) == ("sdxl", REFINER_TIME_IDS, ("text_encoder_2",))
        assert ckpt.unet.addition_time_embed_dim == 32 and not ckpt.force_zeros_for_empty_prompt
    assert folder.tokenizers == (refiner_folder / "tokenizer_2",) and single.tokenizers == ("openclip",)
    assert single.default_size == (1024, 1024) and single.vae.scaling_factor == 0.13025


def test_sdxl_base_time_ids_from_shapes(sdxl_single_file):
    ckpt = open_checkpoint(sdxl_single_file)
    assert ckpt.time_ids == BASE_TIME_IDS and ckpt.unet.addition_time_embed_dim == 256


@pytest.mark.parametrize("width, dim, expected", [
    (6 * 256, None, (BASE_TIME_IDS, 256)), (5 * 256, None, (REFINER_TIME_IDS, 256)),
    (6 * 44, None, (BASE_TIME_IDS, 44)), (5 * 32, None, (REFINER_TIME_IDS, 32)),
    (1920, None, None),  # 6 x 320 or 5 x 384: ambiguous
    (1536, 256, (BASE_TIME_IDS, 256)), (1536, 128, None), (7 * 256, None, None)])
def test_time_ids(width, dim, expected):
    assert time_ids(width, dim) == expected


# ---- what a file says about itself ----

@pytest.mark.parametrize("filename, metadata, extra, prediction, size, zsnr", [
    ("tiny.safetensors", {"modelspec.prediction_type": "v"}, {}, "v_prediction", 1024, False),
    ("tiny.safetensors", {"modelspec.predict_key": "v"}, {}, "v_prediction", 1024, False),  # ComfyUI writes this
    ("tiny.safetensors", {}, {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, "v_prediction", 1024, True),
    ("noob.safetensors", {"modelspec.prediction_type": "epsilon"}, {"v_pred": torch.zeros(0)}, "epsilon", 1024, False),
    ("tiny.safetensors", {"modelspec.resolution": "768x768"}, {}, "epsilon", 768, False),
])
def test_sdxl_metadata_and_markers(sdxl_single_file, tmp_path, filename, metadata, extra, prediction, size, zsnr):
    """NoobAI-XL v-pred style files: modelspec.prediction_type first, then the v_pred / ztsnr markers."""
    path = relayout(sdxl_single_file, tmp_path / filename, extra=extra, metadata=metadata)
    ckpt = open_checkpoint(path)
    assert (ckpt.scheduler.prediction_type, ckpt.default_size[0], ckpt.scheduler.rescale_betas_zero_snr) == \
        (prediction, size, zsnr)
    assert open_checkpoint(path, prediction="epsilon").scheduler.prediction_type == "epsilon"


@pytest.mark.parametrize("filename, metadata, prediction, size", [
    ("v2-1_512-ema-pruned.safetensors", {"modelspec.architecture": "stable-diffusion-v2-768-v"}, "v_prediction", 768),
    ("tiny-sd2-768-v.safetensors", {"modelspec.architecture": "stable-diffusion-v2-512"}, "epsilon", 512),
    ("tiny-sd2-768-v.safetensors", {"modelspec.prediction_type": "epsilon"}, "epsilon", 512),  # SD2 epsilon: 512
    # metadata written for another family (a merge's leftovers) is ignored: the file name rule decides
    ("tiny-sd2-768-v.safetensors", {"modelspec.architecture": "stable-diffusion-v1"}, "v_prediction", 768),
])
def test_sd2_metadata_before_the_file_name_rule(sd2v_single_file, tmp_path, filename, metadata, prediction, size):
    ckpt = open_checkpoint(relayout(sd2v_single_file, tmp_path / filename, metadata=metadata))
    assert (ckpt.scheduler.prediction_type, ckpt.default_size[0]) == (prediction, size)


def test_unknown_prediction_type(sd1_single_file, tmp_path):
    path = relayout(sd1_single_file, tmp_path / "odd.safetensors", metadata={"modelspec.prediction_type": "flow"})
    assert "prediction='epsilon' or 'v'" in assert_one_line_error("'flow'", open_checkpoint, path)
    assert open_checkpoint(path, prediction="v").scheduler.prediction_type == "v_prediction"


# ---- single-file layouts ----

def test_sd2_written_by_diffusers_keeps_all_its_layers(sd2v_folder, tmp_path):
    """diffusers' converter writes the 23 blocks its SD2 text encoder has, and no text_projection."""
    path = to_single_file(sd2v_folder, tmp_path / "converted.safetensors", "sd2v", openclip_tail=False)
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in load_file(path)
    assert not any(k.endswith("text_projection") for k in load_file(path))
    assert_same_model(open_checkpoint(sd2v_folder), open_checkpoint(path))


def test_sd2_in_sgm_layout_is_sd_turbo(sd2v_single_file, sd2v_folder, tmp_path):
    """Stability's generative-models layout (sd_turbo.safetensors): OpenCLIP under conditioner.embedders.0.model,
    SGM's denoiser.sigmas beside it: SD-Turbo (epsilon, 512 px, its recipe, trailing timesteps)."""
    sigmas = {"denoiser.sigmas": torch.linspace(0.03, 14.6, 1000)}
    rename = lambda k: k.replace("cond_stage_model.model.", "conditioner.embedders.0.model.")
    turbo = open_checkpoint(relayout(sd2v_single_file, tmp_path / "sd_turbo.safetensors", rename, extra=sigmas))
    assert_same_model(open_checkpoint(sd2v_folder), turbo)
    assert (turbo.family, turbo.scheduler.prediction_type, turbo.default_size) == ("sd2", "epsilon", (512, 512))
    assert turbo.recommended == RECIPES["sd-turbo"] and turbo.scheduler.timestep_spacing == "trailing"
    plain = open_checkpoint(relayout(sd2v_single_file, tmp_path / "sgm-768-v.safetensors", rename))
    assert (plain.scheduler.prediction_type, plain.recommended) == ("v_prediction", ORDINARY)


def test_trainer_leftovers(sd1_single_file, sd1_folder, tmp_path):
    extra = {"denoiser.sigmas": torch.ones(1000), "lvlb_weights": torch.ones(1000), "logvar": torch.zeros(1000),
             "scale_factor": torch.tensor(0.18215), "model_ema.decay": torch.tensor(0.9999),
             "first_stage_model.loss.logvar": torch.zeros(()),
             "first_stage_model.loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}
    path = relayout(sd1_single_file, tmp_path / "trained.safetensors", extra=extra)
    assert_same_weights(open_checkpoint(sd1_folder), open_checkpoint(path))


def test_diffusers_named_vae_inside_a_single_file(sd1_single_file, sd1_folder, tmp_path):
    """Some merging tools write the VAE under first_stage_model. in diffusers' names (old attention names,
    1x1 conv attention weights included)."""
    vae = {}
    for key, x in load_file(sd1_folder / "vae" / "diffusion_pytorch_model.safetensors").items():
        if ".attentions.0.to_q." in key:
            key, x = key.replace("to_q", "query"), x[:, :, None, None] if x.ndim == 2 else x
        vae[VAE + key] = x
    path = relayout(sd1_single_file, tmp_path / "diffusers-vae.safetensors", keep=lambda k: not k.startswith(VAE),
                    extra=vae)
    assert VAE + "decoder.mid_block.attentions.0.query.weight" in load_file(path)
    assert_same_model(open_checkpoint(sd1_folder), open_checkpoint(path))


@pytest.mark.parametrize("rename", [lambda k: "state_dict." + k,
                                    lambda k: k.replace(UNET, "model.diffusion_model._orig_mod.")])
def test_state_dict_and_orig_mod_prefixes(sdxl_single_file, sdxl_folder, tmp_path, rename):
    path = relayout(sdxl_single_file, tmp_path / "prefixed.safetensors", rename)
    ckpt = open_checkpoint(path)
    assert_same_model(open_checkpoint(sdxl_folder), ckpt)
    stored = load_file(path).keys()
    assert all(ref.key in stored for ref in ckpt.weights["unet"].values())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ema_only_files(request, tmp_path, family):
    """The UNet only as LDM's EMA copy: model_ema.diffusion_modelinput_blocks00weight (LitEma drops the dots)."""
    single = request.getfixturevalue(f"{family}_single_file")
    flat = lambda k: "model_ema." + k.removeprefix("model.").replace(".", "") if k.startswith(UNET) else k
    path = relayout(single, tmp_path / "ema-only.safetensors", flat,
                    keep=lambda k: not k.startswith("model_ema.diffusion_model"))
    assert not any(k.startswith(UNET) for k in load_file(path))
    assert "model_ema.diffusion_modeloutput_blocks20conv2weight" not in load_file(path)  # one level per block
    assert_same_model(open_checkpoint(request.getfixturevalue(f"{family}_folder")), open_checkpoint(path))


@pytest.mark.parametrize("name", [
    "input_blocks.11.1.transformer_blocks.0.attn1.to_q.weight", "output_blocks.2.1.conv.bias",
    "output_blocks.11.0.skip_connection.weight", "label_emb.0.2.weight", "middle_block.1.proj_in.weight",
    "input_blocks.7.1.transformer_blocks.9.ff.net.0.proj.bias", "input_blocks.3.0.op.weight",
    "output_blocks.5.1.transformer_blocks.1.norm3.weight", "time_embed.2.bias", "out.0.weight"])
def test_ema_names_of_real_unets(name):
    """SD1.5 / SDXL names beyond the tiny models': two-digit block numbers, attn1, norm3, ff.net.0.proj."""
    from sdkit.ldm import _unflatten_ema

    flat = "model_ema.diffusion_model" + name.replace(".", "")
    assert _unflatten_ema("x.safetensors", flat) == UNET + name


# ---- float8 ----

@pytest.fixture(scope="module")
def float8_file(sd1_single_file, tmp_path_factory):
    """The UNet in float8 e4m3 and the VAE in e5m2 (as ComfyUI's fp8 checkpoints hold them)."""
    def convert(key, x):
        if not x.is_floating_point() or x.ndim < 2:
            return x
        float8 = torch.float8_e4m3fn if key.startswith(UNET) else torch.float8_e5m2 if key.startswith(VAE) else None
        return x.to(float8) if float8 else x
    return relayout(sd1_single_file, tmp_path_factory.mktemp("fp8") / "fp8.safetensors", convert=convert)


@pytest.mark.parametrize("dtype, torch_dtype", [("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)])
def test_float8_table_is_torchs(dtype, torch_dtype):
    from sdkit.weights import float8_table

    every_byte = torch.arange(256, dtype=torch.uint8).view(torch_dtype).float().numpy()
    np.testing.assert_array_equal(float8_table(dtype).astype(np.float32), every_byte)  # NaNs, infinities included


def test_float8_read_as_numbers(float8_file):
    mx = pytest.importorskip("mlx.core")
    from sdkit_mlx.loading import read

    ckpt = open_checkpoint(float8_file)
    assert {r.dtype for r in ckpt.weights["unet"].values()} >= {"F8_E4M3"}
    assert {r.dtype for r in ckpt.weights["vae"].values()} >= {"F8_E5M2"}
    for component in ("unet", "vae", "text_encoder"):
        torch_values = {k: v.float().numpy() for k, v in read_tensors(ckpt.weights[component], "pt")}
        mlx_values = dict(read(ckpt.weights[component]))
        assert torch_values.keys() == mlx_values.keys()
        for name, x in torch_values.items():
            assert x.std() > 0 or x.size < 2, name
            np.testing.assert_array_equal(np.array(mlx_values[name].astype(mx.float32)), x, err_msg=name)


def test_float8_checkpoint_makes_the_same_picture_on_both_backends(float8_file):
    """End to end: float8 weights read as numbers by MLX (raw bytes would make noise) and by torch give the
    same picture (within 3/255)."""
    pytest.importorskip("mlx.core")
    import sdkit

    kw = dict(width=64, height=64, steps=3, sampler="euler", seed=3)
    images = [np.asarray(sdkit.load(path, backend=backend, device="cpu", dtype="float32").generate("a fox", **kw)[0],
                         np.int16) for path, backend in ((float8_file, "torch"), (float8_file, "mlx"))]
    assert images[0].std() > 5 and np.abs(images[0] - images[1]).max() <= 3


# ---- refusals: one line naming what the file is ----

def _tiny(tmp_path, keys, name="file.safetensors"):
    path = tmp_path / name
    save_file({k: torch.zeros(2, 2) for k in keys}, path)
    return path


@pytest.mark.parametrize("keys, what", [
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
      "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "a LoRA"),
    (["unet.down_blocks.0.attentions.0.to_q.lora_A.weight", "unet.down_blocks.0.attentions.0.to_q.lora_B.weight"],
     "a LoRA"),  # PEFT / diffusers
    (["lora_unet_input_blocks_1_1_proj_in.hada_w1_a", "lora_unet_input_blocks_1_1_proj_in.hada_w1_b",
      "lora_unet_input_blocks_1_1_proj_in.lokr_w1"], "a LoRA"),  # LyCORIS
    (["emb_params"], "a textual-inversion embedding"),
    (["clip_l", "clip_g"], "a textual-inversion embedding"),
    (["string_to_param.*", "string_to_token.*"], "a textual-inversion embedding"),
    (["encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight"],
     "a VAE on its own"),
    (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight"], "a UNet on its own"),
    (["input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight", "out.2.weight"], "a UNet on its own"),
    (["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight", "time_embedding.linear_1.weight"],
     "a UNet on its own"),
    (["control_model.input_blocks.0.0.weight", "control_model.input_hint_block.0.weight"], "a ControlNet"),
    (["controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight"], "a ControlNet"),
    (["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale", "first_stage_model.decoder.conv_in.weight"],
     "Flux"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "Flux"),
    (["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"], "Stable Diffusion 3"),
    (["text_model.encoder.layers.0.mlp.fc1.weight", "text_model.final_layer_norm.weight"], "a text encoder on its own"),
    (["edm_vpred.sigma_max", "edm_vpred.sigma_min", "model.diffusion_model.input_blocks.0.0.weight"],
     "an EDM v-prediction model"),  # Playground's edm_mean / edm_std load: test_edm
    (["something.else.weight"], "not a Stable Diffusion checkpoint; none of its 1 tensors"),
])
def test_what_is_not_a_checkpoint_is_named(tmp_path, keys, what):
    path = _tiny(tmp_path, keys)
    message = assert_one_line_error(what, open_checkpoint, path)
    assert str(path) in message


def test_incomplete_and_inpainting_checkpoints(sd1_single_file, tmp_path):
    no_vae = relayout(sd1_single_file, tmp_path / "no-vae.safetensors", keep=lambda k: not k.startswith(VAE))
    assert_one_line_error("this checkpoint has no VAE .*noVAE.*; pass one", open_checkpoint, no_vae)  # test_vae
    no_text = relayout(sd1_single_file, tmp_path / "no-text.safetensors",
                       keep=lambda k: not k.startswith("cond_stage_model."))
    assert_one_line_error("it has no text encoder$", open_checkpoint, no_text)
    nine = lambda k, x: torch.cat([x] * 3, 1)[:, :9] if k == UNET + "input_blocks.0.0.weight" else x  # 9 channels in
    inpaint = relayout(sd1_single_file, tmp_path / "inpainting.safetensors", convert=nine)
    assert open_checkpoint(inpaint).unet.in_channels == 9  # SD1.5-inpainting's layout loads
    eight = lambda k, x: nine(k, x)[:, :8] if k == UNET + "input_blocks.0.0.weight" else x
    pix2pix = relayout(sd1_single_file, tmp_path / "pix2pix.safetensors", convert=eight)
    assert_one_line_error("an InstructPix2Pix model .* 8 input channels", open_checkpoint, pix2pix)


@pytest.mark.parametrize("class_name, what", [
    ("FluxPipeline", "a FluxPipeline folder \\(Flux\\)"),
    ("StableDiffusion3Pipeline", "Stable Diffusion 3"),
    ("StableDiffusionControlNetPipeline", "a ControlNet pipeline"),
])
def test_folders_of_other_pipelines(sd1_folder, tmp_path, class_name, what):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "transformer": ["x", "y"]}))
    assert str(folder) in assert_one_line_error(what, open_checkpoint, folder)


def test_component_and_unsupported_unet_folders(sd1_folder, tmp_path):
    assert_one_line_error("one component \\(a VAE, AutoencoderKL\\)", open_checkpoint, sd1_folder / "vae")
    for change, what in (({"in_channels": 8}, "InstructPix2Pix .* 8 input channels"),
                         ({"time_cond_proj_dim": 256}, "guidance scale as an input")):
        folder = shutil.copytree(sd1_folder, tmp_path / what[:8])
        config = json.loads((folder / "unet" / "config.json").read_text())
        (folder / "unet" / "config.json").write_text(json.dumps({**config, **change}))
        assert_one_line_error(what, open_checkpoint, folder)


# ---- few-step recipes ----

@pytest.mark.parametrize("name, recipe", [
    ("tiny-sdxl.safetensors", ORDINARY),
    ("sdxl_lightning_4step.safetensors", dataclasses.replace(RECIPES["lightning"], steps=4)),
    ("dreamshaperXL_lightningDPMSDE-8steps.safetensors", dataclasses.replace(RECIPES["lightning"], steps=8)),
    ("sd_xl_turbo_1.0_fp16.safetensors", RECIPES["sdxl-turbo"]),
    ("Hyper-SDXL-8steps.safetensors", dataclasses.replace(RECIPES["hyper"], steps=8)),
    ("hyperrealism_v3.safetensors", ORDINARY),  # a word that only starts with "hyper"
    ("juggernaut_lcm.safetensors", RECIPES["lcm"]),
])
def test_recipes_from_file_names(sdxl_single_file, tmp_path, name, recipe):
    path = tmp_path / name
    path.symlink_to(sdxl_single_file)
    ckpt = open_checkpoint(path)
    assert ckpt.recommended == recipe
    assert ckpt.default_size == (1024, 1024)  # a name alone does not make SDXL-Turbo's 512: merges make 1024
    assert ckpt.scheduler.timestep_spacing == (recipe.schedule or "leading")


def test_recipe_from_metadata_comes_first(sdxl_single_file, tmp_path):
    metadata = {"modelspec.architecture": "stable-diffusion-xl-v1-lightning", "modelspec.title": "x"}
    path = relayout(sdxl_single_file, tmp_path / "sd_xl_turbo.safetensors", metadata=metadata)
    assert open_checkpoint(path).recommended.name == "SDXL-Lightning"


@pytest.mark.parametrize("config, recipe", [
    ({"_class_name": "LCMScheduler"}, RECIPES["lcm"]),
    ({"_class_name": "TCDScheduler"}, RECIPES["tcd"]),
    ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"},
     dataclasses.replace(RECIPES["sd-turbo"], name="Turbo")),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"},
     dataclasses.replace(RECIPES["sd-turbo"], name="Turbo", sampler="euler")),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True},
     ORDINARY),  # zero-terminal-SNR fine-tunes use trailing timesteps at ordinary step counts
    ({"_class_name": "PNDMScheduler"}, ORDINARY),
])
def test_recipes_from_scheduler_configs(sd1_folder, tmp_path, config, recipe):
    folder = shutil.copytree(sd1_folder, tmp_path / "copy")
    published = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**published, **config}))
    ckpt = open_checkpoint(folder)
    assert ckpt.recommended == recipe
    assert ckpt.scheduler.rescale_betas_zero_snr == bool(config.get("rescale_betas_zero_snr"))



@pytest.mark.parametrize("family, drop", [
    *(("sd1", d) for d in (r"input_blocks\.0\.0\.weight", r"\.out\.2\.weight", r"attn2\.to_k\.weight",
                           r"proj_in\.weight", r"input_blocks\.1\.0\.out_layers\.3\.weight", r"position_embedding",
                           r"encoder\.layers\.0\.mlp\.fc1\.weight", r"encoder\.conv_in\.weight",
                           r"post_quant_conv\.weight", r"decoder\.conv_out\.weight", r"encoder\.down\.",
                           r"encoder\.down\.0\.block\.0\.conv1\.weight", r"input_blocks\.[1-9]",
                           r"output_blocks\.\d+\.1\.")),
    *(("sd2v", d) for d in (r"token_embedding", r"positional_embedding", r"\.resblocks\.",
                            r"resblocks\.0\.mlp\.c_fc\.weight")),
    *(("sdxl", d) for d in (r"label_emb\.0\.0\.weight", r"text_projection", r"conditioner\.embedders\.1\.")),
])
def test_broken_files_raise_one_line_sdkit_errors(request, tmp_path, family, drop):
    """Whatever is missing, open_checkpoint says so in one line (never a KeyError, StopIteration or IndexError);
    what it lets through, the backend's shape check names."""
    import re

    single = request.getfixturevalue(f"{family}_single_file")
    path = relayout(single, tmp_path / "broken.safetensors", keep=lambda k: not re.search(drop, k))
    assert len(load_file(path)) < len(load_file(single))
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    from sdkit_torch import TorchBackend

    backend = TorchBackend(device="cpu", dtype="float32")
    for component, weights in ckpt.weights.items():
        build = {"unet": lambda: backend.unet(ckpt.unet, weights), "vae": lambda: backend.vae(ckpt.vae, weights)}.get(
            component, lambda: backend.text_encoder(ckpt.text_encoders[ckpt.text_encoder_names.index(component)],
                                                    weights))
        try:
            build()
        except CheckpointError as e:
            assert "\n" not in str(e)
