"""End-to-end parity: sdkit's torch backend against diffusers' pipelines on identical weights and noise.

Every deterministic sampler, an SD1-like and an SD2-v-like tiny model, text-to-image and image-to-image,
non-square sizes, with and without a negative prompt: images within 3/255.
SDKIT_TEST_DEVICE=cuda runs the same comparisons on a GPU (float32 on both sides, TF32 convolutions off).
"""

import dataclasses
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module
from fixtures import SCHEDULERS, img2img_like_sdkit, step_noise_like_sdkit
from PIL import Image

import sdkit

# diffusers' pipelines pass eta=0.0 to any scheduler that takes it; sdkit's tcd defaults to TCD's own 0.3
ETA = {"tcd": {"eta": 0.3}}
PROMPT, NEGATIVE = "a red fox in the snow, photo", "blurry, text"
STEPS, SEED = 6, 1234
MODELS = ["sd1_folder", "sd2v_folder"]
DEVICE = os.environ.get("SDKIT_TEST_DEVICE", "cpu")
torch.backends.cudnn.allow_tf32 = False  # on CUDA both sides then convolve in true float32


@pytest.fixture(scope="module", params=MODELS)
def pipes(request):
    folder = request.getfixturevalue(request.param)
    ours = sdkit.load(folder, backend="torch", device=DEVICE, dtype="float32")
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.to(DEVICE)
    theirs.set_progress_bar_config(disable=True)
    theirs.original_scheduler_config = theirs.scheduler.config
    return ours, theirs


def seeded_noise(seed: int, n: int, shape: tuple) -> list[np.random.Generator]:
    """sdkit's documented derivation: image i draws from numpy's default_rng(seed + i)."""
    return [np.random.default_rng(seed + i) for i in range(n)]


def draw(rngs, shape) -> torch.Tensor:
    return torch.from_numpy(np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])).to(DEVICE)


def use_scheduler(theirs, name):
    """The model's own scheduler config each time: a config saved by another class carries its extras along."""
    cls, extra = SCHEDULERS[name]
    theirs.scheduler = cls.from_config(theirs.original_scheduler_config, **extra)


def assert_close(ours: list[Image.Image], theirs: list[Image.Image]):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        assert a.shape == b.shape
        assert b.std() > 5, "reference image is flat: the comparison would prove nothing"
        assert np.abs(a - b).max() <= 3, f"max pixel difference {np.abs(a - b).max()}/255"


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_txt2img(pipes, sampler, monkeypatch):
    ours, theirs = pipes
    use_scheduler(theirs, sampler)
    width, height, n = 72, 48, 2
    negative = NEGATIVE if sampler in ("ddim", "euler", "lms", "unipc") else None
    shape = (4, height // 8, width // 8)
    rngs = seeded_noise(SEED, n, shape)
    latents = draw(rngs, shape)
    # stochastic samplers: diffusers' per-step noise continues each image's own generator, as in sdkit
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = theirs(PROMPT, negative_prompt=negative, width=width, height=height, num_inference_steps=STEPS,
                      guidance_scale=7.5, num_images_per_prompt=n, latents=latents, **ETA.get(sampler, {})).images
    got = ours.generate(PROMPT, negative, width=width, height=height, steps=STEPS, sampler=sampler, seed=SEED,
                        num_images=n)
    assert_close(got, expected)


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_img2img(pipes, sampler, monkeypatch):
    ours, theirs = pipes
    use_scheduler(theirs, sampler)
    img2img = StableDiffusionImg2ImgPipeline(**theirs.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    init = Image.fromarray(np.random.default_rng(7).integers(0, 256, (56, 64, 3), dtype=np.uint8))
    strength, negative = 0.6, (NEGATIVE if sampler in ("pndm", "heun", "dpmpp_2m") else None)
    shape = (4, 56 // 8, 64 // 8)
    rngs = seeded_noise(SEED, 1, shape)
    noise = draw(rngs, shape)
    img2img_like_sdkit(monkeypatch, img2img_module, noise)
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = img2img(PROMPT, image=init, negative_prompt=negative, strength=strength, num_inference_steps=STEPS,
                       guidance_scale=7.5, **ETA.get(sampler, {})).images
    got = ours.generate(PROMPT, negative, init_image=init, strength=strength, steps=STEPS, sampler=sampler,
                        seed=SEED)
    assert got[0].size == (64, 56)
    assert_close(got, expected)


def test_latents_argument_and_no_guidance(pipes):
    """`latents` replaces the seeded noise exactly like diffusers' argument; guidance <= 1 means cond only."""
    ours, theirs = pipes
    use_scheduler(theirs, "euler")
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    expected = theirs(PROMPT, width=64, height=64, num_inference_steps=4, guidance_scale=1.0,
                      latents=torch.from_numpy(latents)).images
    got = ours.generate(PROMPT, width=64, height=64, steps=4, sampler="euler", guidance_scale=1.0, latents=latents)
    assert_close(got, expected)


@pytest.mark.parametrize("family", ["sd1", "sd2v"])
def test_single_file_matches_folder(request, family):
    """The original single-file layout gives diffusers' image of the same weights as a folder."""
    folder = request.getfixturevalue(f"{family}_folder")
    single = request.getfixturevalue(f"{family}_single_file")
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
    theirs.to(DEVICE)
    ours = sdkit.load(single, backend="torch", device=DEVICE, dtype="float32")
    shape = (4, 8, 8)
    latents = draw(seeded_noise(SEED, 1, shape), shape)
    expected = theirs(PROMPT, width=64, height=64, num_inference_steps=5, latents=latents).images
    got = ours.generate(PROMPT, width=64, height=64, steps=5, sampler="ddim", seed=SEED)
    assert_close(got, expected)


def test_zero_terminal_snr_and_guidance_rescale(pipes, monkeypatch):
    """A v-prediction model on a zero-terminal-SNR schedule with trailing timesteps and CFG rescale 0.7, the
    recipe of such fine-tunes: latents within 1e-4 of diffusers' (pictures within 3/255)."""
    ours, theirs = pipes
    if ours.checkpoint.scheduler.prediction_type != "v_prediction":
        pytest.skip("the recipe of v-prediction models")
    scheduler = dataclasses.replace(ours.checkpoint.scheduler, rescale_betas_zero_snr=True)
    monkeypatch.setattr(ours, "checkpoint", dataclasses.replace(ours.checkpoint, scheduler=scheduler))
    theirs.scheduler = DDIMScheduler.from_config(theirs.original_scheduler_config, rescale_betas_zero_snr=True,
                                                 timestep_spacing="trailing")
    shape = (4, 48 // 8, 64 // 8)
    latents = draw(seeded_noise(SEED, 1, shape), shape)
    kw = dict(width=64, height=48, guidance_scale=7.5, guidance_rescale=0.7)
    expected = theirs(PROMPT, num_inference_steps=STEPS, latents=latents, output_type="latent", **kw).images
    got = ours.generate(PROMPT, steps=STEPS, sampler="ddim", schedule="trailing", seed=SEED, output="latent", **kw)
    expected = expected.cpu().numpy()
    assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()
    plain = ours.generate(PROMPT, steps=STEPS, sampler="ddim", schedule="trailing", seed=SEED, output="latent",
                          **{**kw, "guidance_rescale": 0.0})
    assert np.abs(plain - got).max() > 1e-2  # the rescale is not lost in the tolerance
    assert_close(ours.generate(PROMPT, steps=STEPS, sampler="ddim", schedule="trailing", seed=SEED, **kw),
                 theirs(PROMPT, num_inference_steps=STEPS, latents=latents, **kw).images)


def test_deis_latents_on_a_sigma_schedule(pipes):
    """deis with karras levels (its last step repeats the last level) against diffusers' DEISMultistepScheduler:
    latents within 1e-5 of their largest value (the parametrized tests above compare its pictures on the default
    schedule). That is float32 rounding of two UNet implementations, amplified by the guidance: with the same
    levels euler is as far off (2.6e-6 of ~44 at guidance 7.5 on an AVX2 CPU, 7e-7 at 1.5)."""
    ours, theirs = pipes
    cls, extra = SCHEDULERS["deis"]
    theirs.scheduler = cls.from_config(theirs.original_scheduler_config, **extra, use_karras_sigmas=True)
    shape = (4, 48 // 8, 64 // 8)
    latents = draw(seeded_noise(SEED, 1, shape), shape)
    kw = dict(width=64, height=48, guidance_scale=7.5)
    expected = theirs(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, latents=latents,
                      output_type="latent", **kw).images
    got = ours.generate(PROMPT, NEGATIVE, steps=STEPS, sampler="deis", schedule="karras", seed=SEED, output="latent",
                        **kw)
    expected = expected.cpu().numpy()
    assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()
