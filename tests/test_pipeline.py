"""generate(): seeds, batches, callbacks, cancellation and argument checking (torch backend, tiny model)."""

import numpy as np
import pytest

import sdkit
from sdkit.samplers import NAMES


@pytest.fixture(scope="module")
def pipe(sd1_folder):
    return sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_auto_backend_and_defaults(sd1_folder):
    pipe = sdkit.load(sd1_folder)  # backend="auto": torch here (no Apple silicon); float32 on CPU
    assert (pipe.backend.name, pipe.backend.dtype) == ("torch", "float32")
    assert pipe.default_size == (pipe.checkpoint.unet.sample_size * 8,) * 2
    image, = pipe.generate("a cat", steps=2)
    assert image.size == pipe.default_size[::-1]


def test_batch_image_regenerates_alone_and_records_seed(pipe):
    a, b = pipe.generate("a cat", width=64, height=64, steps=3, sampler="euler_a", seed=40, num_images=2)
    again, = pipe.generate("a cat", width=64, height=64, steps=3, sampler="euler_a", seed=41)
    # Same noise, same steps; only BLAS blocking differs between a batch of 2 and of 1 (float rounding).
    assert np.abs(pixels(b) - pixels(again)).max() <= 1
    assert not np.array_equal(pixels(a), pixels(b))
    assert "Seed: 40" in a.info["parameters"] and "Seed: 41" in b.info["parameters"]


def test_random_seed_is_recorded_and_reproducible(pipe):
    image, = pipe.generate("a cat", width=64, height=64, steps=2, sampler="ddim")
    seed = sdkit.read_parameters(image)["seed"]
    again, = pipe.generate("a cat", width=64, height=64, steps=2, sampler="ddim", seed=seed)
    assert np.array_equal(pixels(image), pixels(again))


@pytest.mark.parametrize("sampler,evaluations", [("pndm", 5), ("heun", 7), ("ddim", 4), ("dpmpp_2m_karras", 4)])
def test_callback_once_per_unet_evaluation(pipe, sampler, evaluations):
    calls = []
    pipe.generate("a cat", width=64, height=64, steps=4, sampler=sampler, seed=1,
                  callback=lambda step, total, latents: calls.append((step, total, tuple(latents.shape))))
    assert calls == [(i + 1, evaluations, (1, 4, 8, 8)) for i in range(evaluations)]


def test_latent_output_and_hook(pipe):
    """output="latent": the latents the VAE would decode, numpy (B, C, h, w); the hook sees each step's
    backend array and can replace it (a hook that keeps x changes nothing)."""
    kw = dict(width=64, height=48, steps=3, sampler="euler", seed=3, num_images=2)
    latents = pipe.generate("a cat", output="latent", **kw)
    assert isinstance(latents, np.ndarray) and latents.shape == (2, 4, 6, 8) and latents.dtype == np.float32
    seen = []
    again = pipe.generate("a cat", output="latent", hook=lambda i, x, sigma, x0: seen.append((i, sigma)) or x, **kw)
    assert np.array_equal(latents, again) and [i for i, _ in seen] == [0, 1, 2] and seen[-1][1] == 0
    zeroed = pipe.generate("a cat", output="latent", hook=lambda i, x, sigma, x0: x * 0, **kw)
    assert not zeroed.any()
    image, = pipe.generate("a cat", **{**kw, "num_images": 1})
    decoded = pipe.vae.decode(pipe.backend.asarray(latents[:1]))  # (1, H, W, 3) uint8
    assert np.abs(pixels(image) - decoded[0].astype(np.int16)).max() <= 1
    with pytest.raises(ValueError, match="output must be 'pil' or 'latent', got 'np'"):
        pipe.generate("a cat", output="np", **kw)


def test_cancel_within_one_evaluation_and_pipeline_keeps_working(pipe):
    calls = []

    def cancel_at_two(step, total, latents):
        calls.append(step)
        return step < 2

    with pytest.raises(sdkit.Cancelled):
        pipe.generate("a cat", width=64, height=64, steps=10, seed=1, callback=cancel_at_two)
    assert calls == [1, 2]
    with pytest.raises(KeyError):
        pipe.generate("a cat", width=64, height=64, steps=10, seed=1, callback=lambda *a: {}["boom"])
    assert len(pipe.generate("a cat", width=64, height=64, steps=2, seed=1)) == 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(width=100), "width 100 is not a multiple of 8; use 96 or 104"),
    (dict(height=60), "height 60 is not a multiple of 8; use 56 or 64"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(steps=2.5), "steps must be an integer >= 1"),
    (dict(strength=0.0, init_image="INIT"), "strength must be in (0, 1]"),
    (dict(strength=1.5, init_image="INIT"), "strength must be in (0, 1]"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a number >= 0"),
    (dict(guidance_scale=-1), "guidance_scale must be a number >= 0"),
    (dict(sampler="dpm_fast"), "ddim"),
    (dict(num_images=0), "num_images must be an integer >= 1"),
    (dict(width=65536, height=65536), "use a smaller size"),
    (dict(latents=np.zeros((1, 4, 4, 4), np.float32)), "latents must have shape (1, 4, 8, 8)"),
    (dict(init_image="/no/such/picture.png"), "cannot be read as an image"),
])
def test_bad_input_is_one_clear_value_error(pipe, kwargs, message, tmp_path):
    if kwargs.get("init_image") == "INIT":
        from PIL import Image
        kwargs["init_image"] = Image.new("RGB", (64, 64))
    kwargs = {"width": 64, "height": 64, "steps": 2, **kwargs}
    with pytest.raises(ValueError) as e:
        pipe.generate("a cat", **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    if kwargs.get("sampler") == "dpm_fast":
        assert all(name in str(e.value) for name in NAMES)
    assert len(pipe.generate("a cat", width=64, height=64, steps=1, seed=3)) == 1  # still usable


def test_img2img_default_size_is_init_size_rounded_down(pipe):
    from PIL import Image
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    image, = pipe.generate("a cat", init_image=init, steps=4, strength=0.5, seed=2)
    assert image.size == (88, 64)
    assert "Denoising strength: 0.5" in image.info["parameters"]


def test_strength_too_low_for_steps(pipe):
    from PIL import Image
    with pytest.raises(ValueError, match="strength"):
        pipe.generate("a cat", init_image=Image.new("RGB", (64, 64)), steps=2, strength=0.2)
