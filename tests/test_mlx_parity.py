"""End-to-end parity of the MLX backend (float32, CPU): against diffusers' pipelines for every sampler, SD1-like
and SD2-v-like tiny models, text-to-image and image-to-image; against the torch backend for the same seed
(ancestral sampling and batches included, since noise comes from the core). Images within 3/255."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module
from fixtures import SCHEDULERS, diffusers_pipeline, img2img_like_sdkit, step_noise_like_sdkit
from PIL import Image

import sdkit

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'sdkit-diffusion[mlx]')")

PROMPT, NEGATIVE = "a red fox in the snow, photo", "blurry, text"
STEPS, SEED = 5, 4321
MODELS = ["sd1_folder", "sd2v_folder"]


@pytest.fixture(scope="module", params=MODELS)
def folder(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def mlx_pipe(folder):
    return sdkit.load(folder, backend="mlx", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def torch_pipe(folder):
    return sdkit.load(folder, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def diffusers_pipe(folder):
    return diffusers_pipeline(folder)


@pytest.fixture(scope="module")
def published_scheduler(diffusers_pipe):
    """The folder's scheduler config: each test's scheduler starts from it, not from the previous test's
    (whose extras, such as use_karras_sigmas, from_config would carry over)."""
    return diffusers_pipe.scheduler.config


# the samplers of sdkit's first release, and of the later ones one stochastic (MLX runs on the CPU here, slowly;
# the samplers' arithmetic is the same code on every backend)
FIRST = ["ddim", "pndm", "euler", "euler_a", "heun", "lms", "dpmpp_2m", "dpmpp_2m_karras", "unipc"]


def draw(rngs: list[np.random.Generator], shape: tuple) -> torch.Tensor:
    """sdkit's documented noise: image i draws from numpy's default_rng(seed + i), one draw per image."""
    return torch.from_numpy(np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs]))


def use_scheduler(pipe, config, name: str):
    cls, extra = SCHEDULERS[name]
    pipe.scheduler = cls.from_config(config, **extra)


def max_difference(ours: list[Image.Image], theirs: list[Image.Image]) -> int:
    assert len(ours) == len(theirs)
    worst = 0
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        assert a.shape == b.shape
        assert b.std() > 5, "reference image is flat: the comparison would prove nothing"
        worst = max(worst, int(np.abs(a - b).max()))
    return worst


def init_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("sampler", [*FIRST, "dpmpp_2m_sde"])
def test_txt2img_matches_diffusers(mlx_pipe, diffusers_pipe, published_scheduler, sampler, monkeypatch):
    use_scheduler(diffusers_pipe, published_scheduler, sampler)
    width, height = 64, 48
    negative = NEGATIVE if sampler in ("pndm", "heun", "dpmpp_2m_karras") else None
    shape = (4, height // 8, width // 8)
    rngs = [np.random.default_rng(SEED)]
    latents = draw(rngs, shape)
    # stochastic samplers: diffusers' per-step noise continues the image's own generator, as in sdkit
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = diffusers_pipe(PROMPT, negative_prompt=negative, width=width, height=height,
                              num_inference_steps=STEPS, guidance_scale=7.5, latents=latents).images
    got = mlx_pipe.generate(PROMPT, negative, width=width, height=height, steps=STEPS, sampler=sampler, seed=SEED)
    assert max_difference(got, expected) <= 3


@pytest.mark.parametrize("sampler", FIRST)
def test_img2img_matches_diffusers(mlx_pipe, diffusers_pipe, published_scheduler, sampler, monkeypatch):
    use_scheduler(diffusers_pipe, published_scheduler, sampler)
    img2img = StableDiffusionImg2ImgPipeline(**diffusers_pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    strength, negative = 0.7, (NEGATIVE if sampler in ("ddim", "euler", "lms", "unipc") else None)
    rngs = [np.random.default_rng(SEED)]
    noise = draw(rngs, (4, 6, 8))
    img2img_like_sdkit(monkeypatch, img2img_module, noise)
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))
    expected = img2img(PROMPT, image=init_image(), negative_prompt=negative, strength=strength,
                       num_inference_steps=STEPS, guidance_scale=7.5).images
    got = mlx_pipe.generate(PROMPT, negative, init_image=init_image(), strength=strength, steps=STEPS,
                            sampler=sampler, seed=SEED)
    assert got[0].size == (64, 48)
    assert max_difference(got, expected) <= 3


@pytest.mark.parametrize("init", [None, "image"], ids=["txt2img", "img2img"])
def test_same_seed_same_pictures_as_torch(mlx_pipe, torch_pipe, init):
    """A batch of two with the ancestral sampler: every draw comes from the core's numpy generators."""
    kw = dict(steps=STEPS, sampler="euler_a", seed=SEED, num_images=2)
    if init is None:
        kw.update(width=64, height=64)
    else:
        kw.update(init_image=init_image(), strength=0.8)
    ours, theirs = mlx_pipe.generate(PROMPT, NEGATIVE, **kw), torch_pipe.generate(PROMPT, NEGATIVE, **kw)
    assert max_difference(ours, theirs) <= 3
    assert not np.array_equal(np.asarray(ours[0]), np.asarray(ours[1]))  # seed + i: two different pictures
    assert ours[1].info["parameters"] == theirs[1].info["parameters"]
    # image 1 of the batch, regenerated alone from its own seed
    alone = mlx_pipe.generate(PROMPT, NEGATIVE, **{**kw, "seed": SEED + 1, "num_images": 1})
    assert max_difference(alone, ours[1:]) <= 1


def test_single_file_matches_folder(mlx_pipe, folder, request):
    """The original single-file layout (SD2: OpenCLIP's fused in_proj through TensorRef transforms) loads
    into the same MLX modules: the same picture as the folder."""
    family = "sd2v" if "sd2" in folder.name else "sd1"
    single = sdkit.load(request.getfixturevalue(f"{family}_single_file"), backend="mlx", device="cpu")
    kw = dict(width=64, height=64, steps=4, sampler="ddim", seed=SEED)
    assert max_difference(single.generate(PROMPT, **kw), mlx_pipe.generate(PROMPT, **kw)) == 0


def test_callback_sees_mlx_latents_and_can_cancel(mlx_pipe):
    seen = []

    def callback(step, total, latents):
        seen.append((step, total, type(latents), latents.shape))
        return step < 2

    with pytest.raises(sdkit.Cancelled):
        mlx_pipe.generate(PROMPT, width=64, height=48, steps=STEPS, sampler="euler", seed=SEED, callback=callback)
    assert seen == [(1, STEPS, mx.array, (1, 4, 6, 8)), (2, STEPS, mx.array, (1, 4, 6, 8))]


def test_float16_fp16_files(sd1_fp16_folder):
    """float16 weights (the fp16 variant files) on MLX: finite, not black, near the float32 picture."""
    kw = dict(width=64, height=64, steps=STEPS, sampler="dpmpp_2m", seed=SEED)
    half = sdkit.load(sd1_fp16_folder, backend="mlx", device="cpu", dtype="float16")
    assert half.backend.dtype == "float16" and half.unet.dtype == mx.float16 and half.vae.dtype == mx.float16
    full = sdkit.load(sd1_fp16_folder, backend="mlx", device="cpu", dtype="float32")
    image, = half.generate(PROMPT, **kw)
    assert np.asarray(image).std() > 5
    assert max_difference([image], full.generate(PROMPT, **kw)) <= 3
