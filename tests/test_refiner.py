"""The SDXL base + refiner ensemble against diffusers' StableDiffusionXLPipeline(denoising_end=s) ->
StableDiffusionXLImg2ImgPipeline(denoising_start=s) on the tiny SDXL base and refiner fixtures: latents within
1e-4, images within 3/255; MLX against torch; the stochastic noise continuing each image's generator; metadata.
"""

import numpy as np
import pytest
from fixtures import diffusers_pipeline, step_noise_like_sdkit
from test_parity_torch import NEGATIVE, PROMPT, SEED, assert_close, draw, seeded_noise, use_scheduler

import sdkit

STEPS, START = 6, 0.7
WIDTH, HEIGHT = 64, 48
SHAPE = (4, HEIGHT // 8, WIDTH // 8)


@pytest.fixture(scope="module")
def base(sdxl_folder):
    return sdkit.load(sdxl_folder, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def refiner(refiner_folder):
    return sdkit.load(refiner_folder, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def theirs(sdxl_folder, refiner_folder):
    pipes = diffusers_pipeline(sdxl_folder), diffusers_pipeline(refiner_folder)
    for p in pipes:
        p.original_scheduler_config = p.scheduler.config
    return pipes


@pytest.mark.parametrize("sampler,negative,n", [("euler", None, 2), ("dpmpp_2m", NEGATIVE, 1),
                                                ("euler_a", NEGATIVE, 1)])
def test_ensemble_as_diffusers(base, refiner, theirs, sampler, negative, n, monkeypatch):
    their_base, their_refiner = theirs
    use_scheduler(their_base, sampler)
    use_scheduler(their_refiner, sampler)
    rngs = seeded_noise(SEED, n, SHAPE)
    latents = draw(rngs, SHAPE)
    step_noise_like_sdkit(monkeypatch, lambda s: draw(rngs, s[1:]))  # the refiner's steps continue them
    handed = their_base(PROMPT, negative_prompt=negative, width=WIDTH, height=HEIGHT, num_inference_steps=STEPS,
                        guidance_scale=7.5, num_images_per_prompt=n, latents=latents, denoising_end=START,
                        output_type="latent").images
    score = {"aesthetic_score": 7.0} if sampler == "euler_a" else {}  # the refiner's; the base takes none
    kw = dict(negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=7.5, denoising_start=START, **score)
    states = [r.bit_generator.state for r in rngs]  # at the hand-over: diffusers' refiner runs twice
    expected = their_refiner([PROMPT] * n, image=handed, output_type="latent", **kw).images.numpy()
    ours = dict(width=WIDTH, height=HEIGHT, steps=STEPS, sampler=sampler, seed=SEED, num_images=n, refiner=refiner,
                refiner_start=START, **score)
    got = base.generate(PROMPT, negative, output="latent", **ours)
    assert np.abs(got - expected).max() < 1e-4

    images = base.generate(PROMPT, negative, **ours)
    for r, state in zip(rngs, states):
        r.bit_generator.state = state
    assert_close(images, their_refiner([PROMPT] * n, image=handed, **kw).images)  # the refiner's VAE decodes


def test_refiner_as_its_own_base_is_one_pass(base):
    """With the base as its own refiner a first-order sampler, stochastic too, gives the one-pass latents: the
    hand-over neither re-noises nor restarts the generators."""
    kw = dict(width=WIDTH, height=HEIGHT, steps=STEPS, seed=SEED, output="latent")
    for sampler in ("euler", "euler_a"):
        one = base.generate(PROMPT, sampler=sampler, **kw)
        two = base.generate(PROMPT, sampler=sampler, refiner=base, refiner_start=START, **kw)
        assert np.abs(one - two).max() < 1e-5, sampler


def test_metadata_and_errors(base, refiner, tmp_path):
    calls = []
    image, = base.generate(PROMPT, width=WIDTH, height=HEIGHT, steps=3, sampler="euler", seed=SEED,
                           refiner=refiner, refiner_start=0.6, aesthetic_score=7.0,
                           callback=lambda step, total, x: calls.append((step, total)))
    assert [step for step, _ in calls] == [1, 2, 3] and calls[-1][1] == 3  # both models' evaluations, counted on
    text = image.info["parameters"]
    assert f"Refiner: {refiner.checkpoint.name}, Refiner switch at: 0.6" in text
    params = sdkit.read_parameters(sdkit.save(image, tmp_path / "r.png"))
    assert params["Refiner"] == refiner.checkpoint.name and params["refiner_start"] == 0.6
    assert params["aesthetic_score"] == 7.0  # the refiner's conditioning, restored with it
    with pytest.raises(ValueError, match="refiner_start must be"):
        base.generate(PROMPT, steps=3, refiner=refiner, refiner_start=1.0)
    with pytest.raises(ValueError, match="refiner must be an sdkit Pipeline"):
        base.generate(PROMPT, steps=3, refiner="refiner.safetensors")
    with pytest.raises(ValueError, match="takes no init_latents"):
        base.generate(PROMPT, steps=3, refiner=refiner, init_latents=np.zeros((1, *SHAPE), np.float32))


def test_mlx_equals_torch(base, refiner, sdxl_folder, refiner_folder):
    pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'sdkit-diffusion[mlx]')")
    mlx = dict(backend="mlx", device="cpu", dtype="float32")
    kw = dict(width=WIDTH, height=HEIGHT, steps=4, sampler="dpmpp_2m", seed=SEED, refiner_start=START)
    expected = base.generate(PROMPT, NEGATIVE, refiner=refiner, output="latent", **kw)
    ours = sdkit.load(sdxl_folder, **mlx)
    got = ours.generate(PROMPT, NEGATIVE, refiner=sdkit.load(refiner_folder, **mlx), output="latent", **kw)
    assert np.abs(got - expected).max() < 1e-4
