"""Inpainting parity: sdkit's torch backend against diffusers' StableDiffusion(XL)InpaintPipeline on the same
tiny random 9-channel inpainting models, noise and mask, composite=False: final latents within 1e-4 (of
their largest value), images
within 3/255. diffusers samples the VAE posterior; it is made to take the mean, as sdkit does
(fixtures.img2img_like_sdkit)."""

import dataclasses

import numpy as np
import pytest
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as sd_inpaint_module
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_inpaint as xl_inpaint_module
from fixtures import SCHEDULERS, img2img_like_sdkit, step_noise_like_sdkit
from PIL import Image
from test_parity_torch import NEGATIVE, PROMPT, SEED, assert_close, draw, seeded_noise

import sdkit
from sdkit import pipeline as sdkit_pipeline

STEPS = 5
W, H = 64, 48


def init_and_mask(w=W, h=H):
    init = Image.fromarray(np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8))
    mask = np.zeros((h, w), np.uint8)
    mask[10:34, 20:52] = 255
    mask[30:40, 5:15] = 140  # grey >= 128: repainted
    mask[0:8, 0:16] = 100  # grey < 128: kept
    return init, Image.fromarray(mask)


def capture_latents(monkeypatch) -> list:
    """sdkit's final latents, as they go to the VAE decoder."""
    seen, real = [], sdkit_pipeline.tiling.decode
    monkeypatch.setattr(sdkit_pipeline.tiling, "decode",
                        lambda vae, cfg, x, *a: seen.append(x) or real(vae, cfg, x, *a))
    return seen


def run_both(ours, theirs, module, monkeypatch, sampler, strength, negative, n=1, **kw):
    cls, extra = SCHEDULERS[sampler]
    theirs.scheduler = cls.from_config(theirs.original_scheduler_config, **extra)
    init, mask = init_and_mask()
    shape = (4, H // 8, W // 8)
    rngs = seeded_noise(SEED, n, shape)
    noise = draw(rngs, shape)
    img2img_like_sdkit(monkeypatch, module, noise)
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))  # each image's generator continues
    args = dict(prompt=PROMPT, image=init, mask_image=mask, negative_prompt=negative, strength=strength,
                width=W, height=H, num_inference_steps=STEPS, guidance_scale=7.5, num_images_per_prompt=n, **kw)
    expected_latents = theirs(**args, output_type="latent").images
    img2img_like_sdkit(monkeypatch, module, draw(seeded_noise(SEED, n, shape), shape))
    rngs[:] = seeded_noise(SEED, n, shape)
    draw(rngs, shape)  # the initial draw, so euler_a's per-step noise continues the generators again
    expected = theirs(**args).images
    seen = capture_latents(monkeypatch)
    got = ours.generate(PROMPT, negative, init_image=init, mask_image=mask, strength=strength, steps=STEPS,
                        sampler=sampler, seed=SEED, num_images=n, composite=False)
    mine, theirs_latents = ours.backend.numpy(seen[-1]), expected_latents.numpy()
    # relative to the latents' scale: a tiny random UNet's latents reach ~50, where float32 keeps ~1e-5
    difference = np.abs(mine - theirs_latents).max() / max(1.0, np.abs(theirs_latents).max())
    assert difference < 1e-4, f"latents differ by {difference} of their largest value"
    assert_close(got, expected)
    return got


@pytest.fixture(scope="module")
def sd1(sd1_inpaint_folder):
    ours = sdkit.load(sd1_inpaint_folder, backend="torch", device="cpu", dtype="float32")
    theirs = StableDiffusionInpaintPipeline.from_pretrained(sd1_inpaint_folder, safety_checker=None,
                                                            requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.original_scheduler_config = theirs.scheduler.config
    return ours, theirs


@pytest.mark.parametrize("sampler, strength, negative, n", [
    ("euler", 1.0, None, 1), ("ddim", 0.75, NEGATIVE, 1), ("dpmpp_2m_karras", 1.0, NEGATIVE, 2),
    ("euler_a", 0.8, None, 2), ("pndm", 1.0, None, 1)])
def test_sd1_inpainting_model(sd1, monkeypatch, sampler, strength, negative, n):
    ours, theirs = sd1
    got = run_both(ours, theirs, sd_inpaint_module, monkeypatch, sampler, strength, negative, n)
    assert "Mask blur: 4" in got[0].info["parameters"]


@pytest.mark.parametrize("model", ["sd2v_inpaint_folder", "sd2v_folder"])
def test_sd2(request, model, monkeypatch):
    """SD 2 (v-prediction, as SD2-768 fine-tunes): the 9-channel UNet, and an ordinary model's latent blending."""
    folder = request.getfixturevalue(model)
    ours = sdkit.load(folder, backend="torch", device="cpu", dtype="float32")
    theirs = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.original_scheduler_config = theirs.scheduler.config
    for sampler, strength, negative in (("euler", 1.0, None), ("ddim", 0.7, NEGATIVE)):
        run_both(ours, theirs, sd_inpaint_module, monkeypatch, sampler, strength, negative)


@pytest.mark.parametrize("model", ["sdxl_inpaint_folder", "sdxl_folder"])
def test_sdxl(request, model, monkeypatch):
    """SDXL inpainting 0.1's 9-channel UNet, and an ordinary SDXL model's latent blending (6 time ids)."""
    folder = request.getfixturevalue(model)
    ours = sdkit.load(folder, backend="torch", device="cpu", dtype="float32")
    theirs = StableDiffusionXLInpaintPipeline.from_pretrained(folder, add_watermarker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.original_scheduler_config = theirs.scheduler.config
    for sampler, strength, negative in (("euler", 1.0, None), ("dpmpp_2m", 0.7, NEGATIVE)):
        run_both(ours, theirs, xl_inpaint_module, monkeypatch, sampler, strength, negative)


@pytest.fixture(scope="module")
def sd1_ordinary(sd1_folder):
    ours = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")
    theirs = StableDiffusionInpaintPipeline.from_pretrained(sd1_folder, safety_checker=None,
                                                            requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.original_scheduler_config = theirs.scheduler.config
    return ours, theirs


@pytest.mark.parametrize("sampler, strength, negative, n", [
    ("euler", 1.0, None, 1), ("ddim", 0.75, NEGATIVE, 1), ("dpmpp_2m", 1.0, NEGATIVE, 2), ("euler_a", 0.8, None, 2),
    ("lms", 0.9, None, 1), ("unipc", 1.0, NEGATIVE, 1), ("heun", 1.0, None, 1), ("dpm2", 0.8, NEGATIVE, 1),
    ("dpm2_a", 1.0, None, 2), ("pndm", 0.8, NEGATIVE, 1)])
def test_sd1_ordinary_model_blends_latents(sd1_ordinary, monkeypatch, sampler, strength, negative, n):
    """4-channel checkpoints: after every model evaluation (diffusers' scheduler.step), inner ones included
    (Heun's predictor, DPM2's midpoint, PNDM's Runge-Kutta stages), the kept region is the image's latents
    noised to the level diffusers' scheduler gives the next one."""
    ours, theirs = sd1_ordinary
    run_both(ours, theirs, sd_inpaint_module, monkeypatch, sampler, strength, negative, n)


def test_sd1_ordinary_model_blends_inside_pndm_runge_kutta_warmup(sd1_ordinary, monkeypatch):
    """PNDM with skip_prk_steps false: its 12 pseudo Runge-Kutta evaluations are each blended, as diffusers does,
    also where image-to-image slices the warm-up (the kept region noised to the next evaluation's timestep)."""
    ours, theirs = sd1_ordinary
    checkpoint = ours.checkpoint
    monkeypatch.setattr(ours, "checkpoint", dataclasses.replace(
        checkpoint, scheduler=dataclasses.replace(checkpoint.scheduler, skip_prk_steps=False)))
    monkeypatch.setattr(theirs, "original_scheduler_config", {**theirs.scheduler.config, "skip_prk_steps": False})
    for strength in (1.0, 0.6):
        run_both(ours, theirs, sd_inpaint_module, monkeypatch, "pndm", strength, None)


def test_every_sampler_ends_on_the_image_latents_outside_the_mask(sd1_ordinary, monkeypatch):
    """Every registered sampler (those without a diffusers comparison above too) blends on 4-channel models."""
    ours, _ = sd1_ordinary
    init, mask = init_and_mask()
    image = ours.backend.numpy(ours.vae.encode(sdkit.images.to_model_input(init, W, H)[None]))
    keep = np.asarray(mask)[::8, ::8] < 128  # the latent mask: pixel (8i, 8j)
    assert keep.any() and (~keep).any()
    seen = capture_latents(monkeypatch)
    for sampler in sdkit.SAMPLERS:
        ours.generate(PROMPT, init_image=init, mask_image=mask, steps=4, sampler=sampler, seed=SEED)
        final = ours.backend.numpy(seen[-1])
        assert np.abs(final - image)[:, :, keep].max() < 1e-5, sampler
        assert np.abs(final - image)[:, :, ~keep].max() > 0.1, sampler


def test_single_file_inpainting_model(sd1_inpaint_folder, sd1_inpaint_single_file):
    """SD1.5-inpainting's LDM single-file layout gives the folder's picture."""
    init, mask = init_and_mask()
    kw = dict(init_image=init, mask_image=mask, width=W, height=H, steps=3, sampler="euler", seed=SEED)
    a, = sdkit.load(sd1_inpaint_folder, backend="torch", device="cpu", dtype="float32").generate(PROMPT, **kw)
    b, = sdkit.load(sd1_inpaint_single_file, backend="torch", device="cpu", dtype="float32").generate(PROMPT, **kw)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("model, sampler", [("sd1_inpaint_folder", "dpmpp_2m"), ("sd1_folder", "heun")])
def test_mlx_equals_torch(request, model, sampler, monkeypatch):
    """The MLX backend's inpainting (mask and masked-image latents concatenated inside its UNet; the 4-channel
    blend on MLX arrays, Heun's predictor included) gives torch's latents and picture, only-masked area and
    composite included."""
    pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'sdkit-diffusion[mlx]')")
    sd1_inpaint_folder = request.getfixturevalue(model)
    init, mask = init_and_mask()
    kw = dict(init_image=init, mask_image=mask, width=32, height=32, steps=3, sampler=sampler, seed=SEED,
              num_images=2, inpaint_area="masked", inpaint_padding=4)
    results = {}
    for backend in ("torch", "mlx"):
        pipe = sdkit.load(sd1_inpaint_folder, backend=backend, device="cpu", dtype="float32")
        seen = capture_latents(monkeypatch)
        results[backend] = pipe.generate(PROMPT, NEGATIVE, **kw), pipe.backend.numpy(seen[-1])
    (ours, mine), (theirs, torch_latents) = results["mlx"], results["torch"]
    assert np.abs(mine - torch_latents).max() / np.abs(torch_latents).max() < 1e-4
    assert ours[0].size == init.size
    assert_close(ours, theirs)
