"""End-to-end SDXL parity: sdkit's torch backend against diffusers' StableDiffusionXL(Img2Img)Pipeline on a tiny
random SDXL-shaped model (two text encoders, pooled text and size/crop micro-conditioning): images within 3/255.

Every deterministic sampler for text-to-image, a few for image-to-image; negative prompts None (zeroed by
force_zeros_for_empty_prompt), "" (encoded) and a text; non-square sizes, so a swapped (height, width) shows.
"""

import json
import shutil

import numpy as np
import pytest
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as img2img_module
from fixtures import diffusers_pipeline, img2img_like_sdkit, step_noise_like_sdkit
from PIL import Image
from test_parity_torch import NEGATIVE, PROMPT, SCHEDULERS, SEED, assert_close, draw, seeded_noise, use_scheduler

import sdkit

STEPS = 5
NEGATIVES = {"ddim": "", "euler": NEGATIVE, "heun": NEGATIVE, "unipc": ""}  # the others: None


@pytest.fixture(scope="module")
def pipes(sdxl_folder):
    ours = sdkit.load(sdxl_folder, backend="torch", device="cpu", dtype="float32")
    theirs = diffusers_pipeline(sdxl_folder)
    theirs.original_scheduler_config = theirs.scheduler.config
    return ours, theirs


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_txt2img(pipes, sampler, monkeypatch):
    ours, theirs = pipes
    use_scheduler(theirs, sampler)
    width, height, n = 64, 48, 2 if sampler in ("euler_a", "dpmpp_2m_karras") else 1
    negative = NEGATIVES.get(sampler)
    shape = (4, height // 8, width // 8)
    rngs = seeded_noise(SEED, n, shape)
    latents = draw(rngs, shape)
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = theirs(PROMPT, negative_prompt=negative, width=width, height=height, num_inference_steps=STEPS,
                      guidance_scale=7.5, num_images_per_prompt=n, latents=latents).images
    got = ours.generate(PROMPT, negative, width=width, height=height, steps=STEPS, sampler=sampler, seed=SEED,
                        num_images=n)
    assert_close(got, expected)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_img2img(pipes, sampler, monkeypatch):
    ours, theirs = pipes
    use_scheduler(theirs, sampler)
    img2img = StableDiffusionXLImg2ImgPipeline(**theirs.components, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    init = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    negative = NEGATIVES.get(sampler)
    shape = (4, 40 // 8, 64 // 8)
    noise = draw(seeded_noise(SEED, 1, shape), shape)
    img2img_like_sdkit(monkeypatch, img2img_module, noise)
    expected = img2img(PROMPT, image=init, negative_prompt=negative, strength=0.6, num_inference_steps=STEPS,
                       guidance_scale=7.5).images
    got = ours.generate(PROMPT, negative, init_image=init, strength=0.6, steps=STEPS, sampler=sampler, seed=SEED)
    assert got[0].size == (64, 40)
    assert_close(got, expected)


def test_no_negative_prompt_is_not_the_empty_one(pipes, tmp_path):
    """force_zeros_for_empty_prompt: None zeros the uncond conditioning, "" encodes the empty prompt."""
    ours, _ = pipes
    kw = dict(width=64, height=64, steps=3, sampler="euler", seed=SEED)
    none, = ours.generate(PROMPT, None, **kw)
    empty, = ours.generate(PROMPT, "", **kw)
    assert np.abs(np.asarray(none, np.int16) - np.asarray(empty, np.int16)).max() > 3
    assert "Negative prompt" not in none.info["parameters"]
    # Each survives a save and re-read: None stays absent (generate()'s default), and regenerating from the file
    # saved with "" gives the same picture.
    assert "negative_prompt" not in sdkit.read_parameters(sdkit.save(none, tmp_path / "none.png"))
    stored = sdkit.read_parameters(sdkit.save(empty, tmp_path / "empty.png"))
    again, = ours.generate(**{k: v for k, v in stored.items() if k not in ("model", "Version")})
    assert stored["negative_prompt"] == "" and np.array_equal(np.asarray(again), np.asarray(empty))
    with pytest.raises(ValueError, match="negative_prompt must be a string or None, got list"):
        ours.generate(PROMPT, [""], **kw)


def test_turbo_like_trailing_spacing_no_guidance_default_size(sdxl_folder, tmp_path, monkeypatch):
    """SDXL-Turbo's setup: trailing timesteps, guidance 0 (no uncond batch), a smaller sample_size, a
    model_index.json without force_zeros_for_empty_prompt (default True); default size = sample_size x 8."""
    folder = shutil.copytree(sdxl_folder, tmp_path / "tiny-sdxl-turbo")
    for file, changes in ((folder / "scheduler" / "scheduler_config.json", {"timestep_spacing": "trailing"}),
                          (folder / "unet" / "config.json", {"sample_size": 6})):
        file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))
    index = json.loads((folder / "model_index.json").read_text())
    del index["force_zeros_for_empty_prompt"]
    (folder / "model_index.json").write_text(json.dumps(index))
    ours = sdkit.load(folder, backend="torch", device="cpu", dtype="float32")
    assert ours.default_size == (48, 48) and ours.checkpoint.force_zeros_for_empty_prompt
    theirs = diffusers_pipeline(folder)
    theirs.scheduler = EulerAncestralDiscreteScheduler.from_config(theirs.scheduler.config)
    rngs = seeded_noise(SEED, 1, (4, 6, 6))
    latents = draw(rngs, (4, 6, 6))
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = theirs(PROMPT, num_inference_steps=2, guidance_scale=0.0, latents=latents).images
    got = ours.generate(PROMPT, steps=2, sampler="euler_a", guidance_scale=0.0, seed=SEED)
    assert got[0].size == (48, 48)
    assert_close(got, expected)


def test_flag_false_encodes_the_empty_prompt(sdxl_folder, tmp_path):
    """A model_index.json with force_zeros_for_empty_prompt false (as the refiner's): None is encoded as ""."""
    folder = shutil.copytree(sdxl_folder, tmp_path / "tiny-sdxl-no-zeros")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    ours = sdkit.load(folder, backend="torch", device="cpu", dtype="float32")
    assert not ours.checkpoint.force_zeros_for_empty_prompt
    theirs = diffusers_pipeline(folder)
    theirs.original_scheduler_config = theirs.scheduler.config
    use_scheduler(theirs, "euler")
    latents = draw(seeded_noise(SEED, 1, (4, 8, 8)), (4, 8, 8))
    expected = theirs(PROMPT, width=64, height=64, num_inference_steps=3, guidance_scale=5.0, latents=latents).images
    got = ours.generate(PROMPT, width=64, height=64, steps=3, sampler="euler", guidance_scale=5.0, seed=SEED)
    assert_close(got, expected)


def test_single_file_matches_folder(pipes, sdxl_single_file):
    """The original single file (OpenCLIP with fused qkv and a transposed text_projection) gives diffusers'
    image of the same weights as a folder."""
    _, theirs = pipes
    use_scheduler(theirs, "ddim")
    ours = sdkit.load(sdxl_single_file, backend="torch", device="cpu", dtype="float32")
    latents = draw(seeded_noise(SEED, 1, (4, 6, 8)), (4, 6, 8))
    expected = theirs(PROMPT, width=64, height=48, num_inference_steps=STEPS, guidance_scale=7.5,
                      latents=latents).images
    got = ours.generate(PROMPT, width=64, height=48, steps=STEPS, sampler="ddim", seed=SEED)
    assert_close(got, expected)



def test_parameters_read_back_regenerate_the_image(pipes):
    """No negative prompt is written as no line and read back as None, so SDXL's zero uncond survives."""
    ours, _ = pipes
    image, = ours.generate(PROMPT, width=64, height=48, steps=3, sampler="euler", seed=SEED)
    params = sdkit.read_parameters(image)
    assert "negative_prompt" not in params
    params = {k: params[k] for k in ("prompt", "width", "height", "steps", "sampler", "seed", "guidance_scale")}
    again, = ours.generate(**params)
    assert np.array_equal(np.asarray(image), np.asarray(again))
