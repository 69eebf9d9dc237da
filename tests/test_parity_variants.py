"""Model variants end to end, on both backends, against diffusers: the SDXL refiner's image-to-image
(StableDiffusionXLImg2ImgPipeline: one OpenCLIP-bigG encoder, aesthetic-score time ids), SDXL micro-conditioning
with non-default sizes and crops (StableDiffusionXLPipeline), and a few-step recipe taken from the checkpoint
(SD-Turbo style: Euler ancestral on trailing timesteps, 1 step, no guidance).

Images within 3/255, and the latents the UNet sees at its last evaluation within 1e-4: a wrongly weighted
condition that the tiny models' pictures would hide shows there.
"""

import json
import shutil

import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as img2img_module
from fixtures import diffusers_pipeline, img2img_like_sdkit
from PIL import Image
from test_parity_torch import NEGATIVE, PROMPT, SEED, assert_close, draw, seeded_noise

import sdkit
from sdkit.pipeline import _steps_running

BACKENDS = ["torch", pytest.param("mlx", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("mlx"), reason="mlx is not installed"))]
STEPS = 4
MICRO = dict(original_size=(96, 128), crops_coords_top_left=(8, 16), target_size=(40, 56),
             negative_original_size=(32, 32), negative_crops_coords_top_left=(0, 8), negative_target_size=(64, 64))
REFINER = dict(aesthetic_score=7.5, negative_aesthetic_score=1.5, original_size=(80, 96), crops_coords_top_left=(4, 0),
               negative_original_size=(40, 48), negative_crops_coords_top_left=(0, 0))


@pytest.fixture(scope="module")
def load():
    """sdkit.load, once per (model, backend) in this module."""
    cache = {}

    def load(folder, backend="torch"):
        if (folder, backend) not in cache:
            cache[folder, backend] = sdkit.load(folder, backend=backend, device="cpu", dtype="float32")
        return cache[folder, backend]
    return load


def last_unet_input(theirs):
    """Record the sample diffusers' UNet gets at each call (its [uncond, cond] batch: the first half)."""
    seen = []
    theirs.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].chunk(2)[0].numpy().copy()))
    return seen


def ours_with_last_input(pipe, prompt, negative, **kw):
    seen = []
    images = pipe.generate(prompt, negative, callback=lambda step, total, x: seen.append(pipe.backend.numpy(x)), **kw)
    return images, seen[-1]


@pytest.fixture(scope="module")
def refiner_reference(refiner_folder):
    """diffusers' refiner image-to-image (posterior mean, sdkit's noise), once for both backends."""
    theirs = diffusers_pipeline(refiner_folder)
    init = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    shape = (4, 48 // 8, 64 // 8)
    noise = draw(seeded_noise(SEED, 1, shape), shape)
    with pytest.MonkeyPatch.context() as mp:
        img2img_like_sdkit(mp, img2img_module, noise)
        seen = last_unet_input(theirs)
        default = theirs(PROMPT, image=init, strength=0.75, num_inference_steps=STEPS, guidance_scale=7.5).images
        default_latents = seen[-1]
        custom = theirs(PROMPT, image=init, negative_prompt=NEGATIVE, strength=0.75, num_inference_steps=STEPS,
                        guidance_scale=7.5, **REFINER).images
    return init, (default, default_latents), (custom, seen[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_refiner_img2img(refiner_folder, refiner_reference, load, backend):
    """Default aesthetic scores (6.0 / 2.5) and "" encoded for no negative prompt (the refiner does not zero it),
    then every micro-conditioning value set."""
    ours = load(refiner_folder, backend)
    init, (default, default_latents), (custom, custom_latents) = refiner_reference
    kw = dict(init_image=init, strength=0.75, steps=STEPS, sampler="euler", seed=SEED)
    got, latents = ours_with_last_input(ours, PROMPT, None, **kw)
    assert_close(got, default)
    np.testing.assert_allclose(latents, default_latents, atol=1e-4)
    got, latents = ours_with_last_input(ours, PROMPT, NEGATIVE, **kw, **REFINER)
    assert_close(got, custom)
    np.testing.assert_allclose(latents, custom_latents, atol=1e-4)
    assert np.abs(latents - default_latents).max() > 1e-2  # the conditioning changed something
    params = sdkit.read_parameters(got[0])
    assert {k: params[k] for k in REFINER} == REFINER


@pytest.fixture(scope="module")
def micro_reference(sdxl_folder):
    theirs = diffusers_pipeline(sdxl_folder)
    shape = (4, 48 // 8, 64 // 8)
    seen = last_unet_input(theirs)
    images = theirs(PROMPT, negative_prompt=NEGATIVE, width=64, height=48, num_inference_steps=STEPS,
                    guidance_scale=7.5, latents=draw(seeded_noise(SEED, 1, shape), shape), **MICRO).images
    return images, seen[-1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdxl_micro_conditioning(sdxl_folder, micro_reference, load, backend):
    ours = load(sdxl_folder, backend)
    expected, expected_latents = micro_reference
    got, latents = ours_with_last_input(ours, PROMPT, NEGATIVE, width=64, height=48, steps=STEPS, sampler="euler",
                                        seed=SEED, **MICRO)
    assert_close(got, expected)
    np.testing.assert_allclose(latents, expected_latents, atol=1e-4)
    text = got[0].info["parameters"]
    assert ("Original size: 128x96, Crop offset: 16x8, Target size: 56x40, Negative original size: 32x32, "
            "Negative crop offset: 8x0, Negative target size: 64x64") in text
    params = sdkit.read_parameters(got[0])
    assert {k: params[k] for k in MICRO} == MICRO


def test_micro_conditioning_defaults_and_errors(sdxl_folder, sd1_folder, refiner_folder, load):
    """Defaults are the image size, (0, 0) and the positive values: written nowhere; wrong arguments are refused
    before any work."""
    xl = load(sdxl_folder)
    kw = dict(width=64, height=48, steps=2, sampler="euler", seed=SEED, guidance_scale=1.0)
    plain, = xl.generate(PROMPT, **kw)
    same, = xl.generate(PROMPT, original_size=(48, 64), target_size=(48, 64), crops_coords_top_left=(0, 0), **kw)
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    assert not any(key in same.info["parameters"] for key in ("Original size", "Crop offset", "Target size"))
    for bad, match in (({"original_size": (0, 64)}, "original_size must be two integers \\(height, width\\)"),
                       ({"crops_coords_top_left": (-1, 0)}, "crops_coords_top_left must be two integers"),
                       ({"aesthetic_score": 6.0}, "aesthetic_score: this model takes original_size"),
                       ({"target_size": "64x64"}, "target_size must be two integers")):
        with pytest.raises(ValueError, match=match):
            xl.generate(PROMPT, **kw, **bad)
    with pytest.raises(ValueError, match="original_size: this model has no micro-conditioning"):
        load(sd1_folder).generate(PROMPT, original_size=(64, 64), **kw)
    with pytest.raises(ValueError, match="target_size: this model takes original_size, crops_coords_top_left, "
                                         "aesthetic_score"):
        load(refiner_folder).generate(PROMPT, target_size=(64, 64), **kw)


@pytest.fixture(scope="module")
def turbo_folder(sd1_folder, tmp_path_factory):
    """sd1_folder with SD-Turbo's published scheduler config: Euler ancestral on trailing timesteps."""
    folder = shutil.copytree(sd1_folder, tmp_path_factory.mktemp("turbo") / "tiny-turbo")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config |= {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return folder


def test_few_step_recipe_is_generates_defaults(turbo_folder, load):
    """No steps / guidance / sampler given: the checkpoint's recipe (1 step, no guidance, euler_a on trailing
    timesteps), as diffusers runs SD-Turbo's card."""
    ours, theirs = load(turbo_folder), diffusers_pipeline(turbo_folder)
    shape = (4, 8, 8)
    expected = theirs(PROMPT, width=64, height=64, num_inference_steps=1, guidance_scale=0.0,
                      latents=draw(seeded_noise(SEED, 1, shape), shape)).images
    calls = []
    got = ours.generate(PROMPT, width=64, height=64, seed=SEED, callback=lambda *a: calls.append(a))
    assert_close(got, expected)
    assert len(calls) == 1
    assert "Steps: 1, Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 0," in got[0].info["parameters"]
    # image-to-image runs the recipe's one step too (diffusers' card: steps * strength >= 1)
    calls.clear()
    got, = ours.generate(PROMPT, init_image=got[0], strength=0.5, seed=SEED, callback=lambda *a: calls.append(a))
    assert len(calls) == 1 and "Steps: 2," in got.info["parameters"]


@pytest.mark.parametrize("steps, strength, expected", [(1, 0.8, 2), (1, 0.5, 2), (4, 0.5, 8), (4, 0.3, 14),
                                                      (2, 1.0, 2), (1, 0.01, 100)])
def test_steps_running(steps, strength, expected):
    assert _steps_running(steps, strength) == expected and int(expected * strength) >= steps
