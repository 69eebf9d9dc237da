"""End-to-end SDXL parity of the MLX backend (float32, CPU): against diffusers' StableDiffusionXL(Img2Img)Pipeline
on the tiny SDXL fixture (two text encoders, penultimate contexts, pooled text and size/crop time ids), and against
the torch backend for the same seed. Images within 3/255.

MLX on the CPU is slow, so a handful of samplers covers the sampler families (the torch suite runs them all);
negative prompts None (zeroed by force_zeros_for_empty_prompt), "" (encoded) and a text; non-square sizes.
"""

import numpy as np
import pytest
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as img2img_module
from fixtures import diffusers_pipeline, img2img_like_sdkit, step_noise_like_sdkit
from PIL import Image
from test_parity_torch import NEGATIVE, PROMPT, SEED, assert_close, draw, seeded_noise, use_scheduler

import sdkit

pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'sdkit-diffusion[mlx]')")

STEPS = 5
TXT2IMG = {"ddim": "", "euler": NEGATIVE, "heun": None, "dpmpp_2m_karras": None, "unipc": ""}  # sampler: negative


@pytest.fixture(scope="module")
def pipes(sdxl_folder):
    ours = sdkit.load(sdxl_folder, backend="mlx", device="cpu", dtype="float32")
    theirs = diffusers_pipeline(sdxl_folder)
    theirs.original_scheduler_config = theirs.scheduler.config
    return ours, theirs


@pytest.mark.parametrize("sampler", list(TXT2IMG))
def test_txt2img(pipes, sampler):
    ours, theirs = pipes
    use_scheduler(theirs, sampler)
    width, height, n = 64, 48, 2 if sampler == "dpmpp_2m_karras" else 1
    shape = (4, height // 8, width // 8)
    latents = draw(seeded_noise(SEED, n, shape), shape)
    expected = theirs(PROMPT, negative_prompt=TXT2IMG[sampler], width=width, height=height,
                      num_inference_steps=STEPS, guidance_scale=7.5, num_images_per_prompt=n, latents=latents).images
    got = ours.generate(PROMPT, TXT2IMG[sampler], width=width, height=height, steps=STEPS, sampler=sampler,
                        seed=SEED, num_images=n)
    assert_close(got, expected)


@pytest.mark.parametrize("sampler,negative", [("euler", None), ("dpmpp_2m", NEGATIVE)])
def test_img2img(pipes, sampler, negative, monkeypatch):
    ours, theirs = pipes
    use_scheduler(theirs, sampler)
    img2img = StableDiffusionXLImg2ImgPipeline(**theirs.components, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    init = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    shape = (4, 40 // 8, 64 // 8)
    noise = draw(seeded_noise(SEED, 1, shape), shape)
    img2img_like_sdkit(monkeypatch, img2img_module, noise)
    expected = img2img(PROMPT, image=init, negative_prompt=negative, strength=0.6, num_inference_steps=STEPS,
                       guidance_scale=7.5).images
    got = ours.generate(PROMPT, negative, init_image=init, strength=0.6, steps=STEPS, sampler=sampler, seed=SEED)
    assert got[0].size == (64, 40)
    assert_close(got, expected)


def test_euler_a_matches_diffusers(pipes, monkeypatch):
    """Ancestral sampling: diffusers' per-step noise is the continuation of each image's own generator."""
    ours, theirs = pipes
    use_scheduler(theirs, "euler_a")
    shape = (4, 6, 8)
    rngs = seeded_noise(SEED, 1, shape)
    latents = draw(rngs, shape)
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = theirs(PROMPT, width=64, height=48, num_inference_steps=STEPS, guidance_scale=7.5,
                      latents=latents).images
    assert_close(ours.generate(PROMPT, width=64, height=48, steps=STEPS, sampler="euler_a", seed=SEED), expected)


def test_same_seed_same_pictures_as_torch(pipes, sdxl_folder):
    """A batch of two with the ancestral sampler: every draw comes from the core's numpy generators."""
    ours, _ = pipes
    torch_pipe = sdkit.load(sdxl_folder, backend="torch", device="cpu", dtype="float32")
    kw = dict(width=64, height=48, steps=STEPS, sampler="euler_a", seed=SEED, num_images=2)
    got, expected = ours.generate(PROMPT, NEGATIVE, **kw), torch_pipe.generate(PROMPT, NEGATIVE, **kw)
    assert_close(got, expected)
    assert not np.array_equal(np.asarray(got[0]), np.asarray(got[1]))  # seed + i: two different pictures
    assert got[1].info["parameters"] == expected[1].info["parameters"]


def test_single_file_matches_folder(pipes, sdxl_single_file):
    """The original single file (OpenCLIP fused qkv, transposed text_projection) loads into the same MLX
    modules: the very same picture as the folder."""
    ours, _ = pipes
    single = sdkit.load(sdxl_single_file, backend="mlx", device="cpu", dtype="float32")
    kw = dict(width=64, height=48, steps=4, sampler="ddim", seed=SEED)
    a, = single.generate(PROMPT, **kw)
    b, = ours.generate(PROMPT, **kw)
    assert np.asarray(b).std() > 5
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_no_negative_prompt_is_not_the_empty_one(pipes):
    """force_zeros_for_empty_prompt: None zeros the uncond conditioning, "" encodes the empty prompt."""
    ours, _ = pipes
    kw = dict(width=64, height=64, steps=3, sampler="euler", seed=SEED)
    none, = ours.generate(PROMPT, None, **kw)
    empty, = ours.generate(PROMPT, "", **kw)
    assert np.abs(np.asarray(none, np.int16) - np.asarray(empty, np.int16)).max() > 3
    assert "Negative prompt" not in none.info["parameters"]
