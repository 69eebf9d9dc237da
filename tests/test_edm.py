"""EDM models (Playground v2.5): sdkit's samplers on EDM noise levels against diffusers' EDM schedulers, the
whole pipeline against diffusers' StableDiffusionXLPipeline (folder and single file), and the loader."""

import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, schedulers as oracles
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as img2img_module
from fixtures import diffusers_pipeline, img2img_like_sdkit, relayout, to_single_file
from PIL import Image

import sdkit
from sdkit import samplers
from sdkit.checkpoint import open_checkpoint
from sdkit.config import SchedulerConfig
from sdkit.samplers import edm

PLAYGROUND = json.loads((Path(samplers.__file__).parents[1] / "data" / "schedulers"
                         / "playground-v2.5-scheduler_config.json").read_text())
SHAPE = (2, 4, 3, 3)


def fake_unet(x, t: float):
    """A smooth stand-in for the guided UNet output, nonlinear in x and t (t = c_noise in [-1.6, 1.1])."""
    sin = torch.sin if torch.is_tensor(x) else np.sin
    return x * 0.8 + sin(x * 1.7 + t) * 0.3


def step_noise(seed: int):
    rng = np.random.default_rng(seed + 1000)
    return lambda: rng.standard_normal(SHAPE)


def run_diffusers(name, config, steps, strength, x0, noise, seed):
    """diffusers' StableDiffusionXL(Img2Img)Pipeline loop on its EDM scheduler, float64 where it lets us."""
    cls, extra = edm.REFERENCES[name]
    scheduler = getattr(oracles, cls).from_config(config, **extra)
    scheduler.set_timesteps(steps)
    scheduler.sigmas = scheduler.sigmas.double()
    timesteps = scheduler.timesteps
    x0, noise = torch.from_numpy(x0), torch.from_numpy(noise)
    if strength < 1:
        t_start = steps - min(int(steps * strength), steps)
        timesteps = timesteps[t_start:]
        scheduler.set_begin_index(t_start)
        x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(len(x0)))
    else:
        x = noise * scheduler.init_noise_sigma
    draw = step_noise(seed)
    with mock.patch.object(sys.modules[type(scheduler).__module__], "randn_tensor",
                           lambda *a, **kw: torch.from_numpy(draw())):
        for t in timesteps:
            out = fake_unet(scheduler.scale_model_input(x, t), float(t))
            x = scheduler.step(out, t, x).prev_sample
    return x.double().numpy(), [float(t) for t in timesteps]


def run_sdkit(name, config, steps, strength, x0, noise, seed, schedule=None):
    p = samplers.plan(name, SchedulerConfig.from_diffusers(config), steps, strength, schedule)
    seen = []

    def model(x, t):
        seen.append(t)
        return fake_unet(x, t)

    x = noise * p.init_noise_sigma if strength == 1 else samplers.add_noise(p, x0, noise)
    x = samplers.sample(p, model, x, step_noise(seed))
    if p.variance_preserving:  # diffusers' EDM solvers run on x = x0 + sigma eps
        x = x / samplers.prediction.alpha_s(p.sigmas[-1])[0]
    return x, seen


@pytest.mark.parametrize("name", list(edm.REFERENCES))
def test_samplers_match_diffusers_edm_schedulers(name):
    """Every EDM sampler, karras and exponential, epsilon and v, text-to-image and image-to-image."""
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    for steps, strength, schedule, prediction in [(1, 1.0, "karras", "epsilon"), (6, 1.0, "karras", "epsilon"),
                                                  (6, 0.5, "karras", "v_prediction"), (5, 1.0, "exponential",
                                                                                      "epsilon"),
                                                  (20, 0.75, "exponential", "v_prediction")]:
        config = dict(PLAYGROUND, sigma_schedule=schedule, prediction_type=prediction)
        theirs, their_t = run_diffusers(name, config, steps, strength, x0, noise, 0)
        ours, our_t = run_sdkit(name, config, steps, strength, x0, noise, 0)
        np.testing.assert_allclose(our_t, their_t, rtol=0, atol=1e-6)
        error = np.abs(ours - theirs).max() / np.abs(theirs).max()
        assert error < 1e-5, f"{steps} steps, strength {strength}, {schedule}, {prediction}: {error:.2e}"
        # the schedule may also be given by name, overriding the config's
        other = dict(config, sigma_schedule="karras" if schedule == "exponential" else "exponential")
        assert np.array_equal(run_sdkit(name, other, steps, strength, x0, noise, 0, schedule)[0], ours)


def test_edm_plan_errors_name_the_valid_choices():
    config = SchedulerConfig.from_diffusers(PLAYGROUND)
    with pytest.raises(ValueError, match="sampler ddim does not run EDM models.*euler, dpmpp_2m, dpmpp_2m_sde"):
        samplers.plan("ddim", config, 10)
    with pytest.raises(ValueError, match="schedule 'trailing' does not apply to EDM models.*karras, exponential"):
        samplers.plan("euler", config, 10, schedule="trailing")
    with pytest.raises(ValueError, match="denoising_start / denoising_end"):
        samplers.plan("euler", config, 10, denoising_end=0.8)
    assert not SchedulerConfig.from_diffusers({"_class_name": "EulerDiscreteScheduler", "sigma_min": None}).edm


# ---- the whole pipeline against diffusers' StableDiffusionXLPipeline ----

# Playground v2.5's published VAE statistics (its vae/config.json)
LATENTS_MEAN, LATENTS_STD = [-1.6574, 1.886, -1.383, 2.5155], [8.4927, 5.9022, 6.5498, 5.2299]
PROMPT, SEED = "a red fox in the snow", 42


@pytest.fixture(scope="module")
def playground_folder(sdxl_folder, tmp_path_factory):
    """The tiny SDXL model as Playground v2.5's folder: its EDM scheduler config, a VAE with scaling factor 0.5
    and per-channel latents statistics."""
    folder = Path(shutil.copytree(sdxl_folder, tmp_path_factory.mktemp("edm") / "tiny-playground"))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(PLAYGROUND))
    vae = json.loads((folder / "vae" / "config.json").read_text())
    vae |= dict(scaling_factor=0.5, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD)
    (folder / "vae" / "config.json").write_text(json.dumps(vae))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", PLAYGROUND["_class_name"]]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def playground_single_file(playground_folder):
    """Its original single file: SDXL's keys plus edm_mean / edm_std (1, 4, 1, 1), as Playground publishes."""
    stats = {"edm_mean": torch.tensor(LATENTS_MEAN).view(1, 4, 1, 1),
             "edm_std": torch.tensor(LATENTS_STD).view(1, 4, 1, 1)}
    return to_single_file(playground_folder, playground_folder.parent / "tiny-playground.safetensors", "sdxl",
                          extra=stats)


@pytest.fixture(scope="module")
def ours(playground_folder):
    return sdkit.load(playground_folder, backend="torch", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def theirs(playground_folder):
    pipe = diffusers_pipeline(playground_folder)
    assert type(pipe.scheduler).__name__ == "EDMDPMSolverMultistepScheduler"
    pipe.original_scheduler_config = pipe.scheduler.config
    return pipe


def noise(shape, n=1):
    return torch.from_numpy(np.stack([np.random.default_rng(SEED + i).standard_normal(shape, dtype=np.float32)
                                      for i in range(n)]))


def assert_images_close(ours, expected):
    for a, b in zip(ours, expected):
        a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
        assert b.std() > 5, "reference image is flat: the comparison would prove nothing"
        assert np.abs(a - b).max() <= 3, f"max pixel difference {np.abs(a - b).max()}/255"


def check_txt2img(ours, theirs, sampler, monkeypatch, n=1):
    """One run each: the final latents (diffusers' last step callback, sdkit's last hook call) within 1e-4,
    the pictures within 3/255."""
    cls, extra = edm.REFERENCES[sampler]
    theirs.scheduler = getattr(oracles, cls).from_config(theirs.original_scheduler_config, **extra)
    shape = (4, 48 // 8, 64 // 8)
    rngs = [np.random.default_rng(SEED + i) for i in range(n)]
    draw = lambda shape: torch.from_numpy(np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs]))
    latents = draw(shape)
    monkeypatch.setattr(sys.modules[type(theirs.scheduler).__module__], "randn_tensor",
                        lambda shape, *a, **kw: draw(tuple(shape)[1:]))  # stochastic: each image's own stream
    last = {}
    kw = dict(width=64, height=48, guidance_scale=5.0)
    expected = theirs(PROMPT, num_inference_steps=4, latents=latents, num_images_per_prompt=n, **kw,
                      callback_on_step_end=lambda pipe, i, t, out: last.update(theirs=out["latents"].numpy()) or out
                      ).images
    hook = lambda step, x, sigma, denoised: last.update(ours=ours.backend.numpy(x))
    got = ours.generate(PROMPT, steps=4, sampler=sampler, seed=SEED, num_images=n, **kw, hook=hook)
    assert np.abs(last["ours"] - last["theirs"]).max() < 1e-4, \
        f"latents differ by {np.abs(last['ours'] - last['theirs']).max():.2e}"
    assert_images_close(got, expected)


@pytest.mark.parametrize("sampler", list(edm.REFERENCES))
def test_folder_txt2img_matches_diffusers(ours, theirs, sampler, monkeypatch):
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in ours.generate(PROMPT, steps=1, width=64, height=48)[0].info[
        "parameters"]  # the default sampler on the model's own (karras) levels, and the picture says so
    check_txt2img(ours, theirs, sampler, monkeypatch, n=2 if sampler == "dpmpp_2m_sde" else 1)


def test_folder_img2img_matches_diffusers(ours, theirs, monkeypatch):
    """The image is encoded as (mean - latents_mean) * 0.5 / latents_std, noised to an EDM level, sampled."""
    theirs.scheduler = oracles.EDMEulerScheduler.from_config(theirs.original_scheduler_config)
    img2img = StableDiffusionXLImg2ImgPipeline(**theirs.components, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    init = Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    img2img_like_sdkit(monkeypatch, img2img_module, noise((4, 6, 8)))
    kw, last = dict(strength=0.6, guidance_scale=5.0), {}
    expected = img2img(PROMPT, image=init, num_inference_steps=5, **kw,
                       callback_on_step_end=lambda pipe, i, t, out: last.update(theirs=out["latents"].numpy()) or out
                       ).images
    hook = lambda step, x, sigma, denoised: last.update(ours=ours.backend.numpy(x))
    got = ours.generate(PROMPT, init_image=init, steps=5, sampler="euler", seed=SEED, hook=hook, **kw)
    assert np.abs(last["ours"] - last["theirs"]).max() < 1e-4, \
        f"latents differ by {np.abs(last['ours'] - last['theirs']).max():.2e}"
    assert_images_close(got, expected)


def test_single_file_matches_folder(playground_single_file, theirs, monkeypatch):
    """edm_mean / edm_std make the single file an EDM model with the folder's scheduler and VAE statistics."""
    ours = sdkit.load(playground_single_file, backend="torch", device="cpu", dtype="float32")
    assert ours.checkpoint.scheduler == SchedulerConfig.from_diffusers(PLAYGROUND)
    assert ours.checkpoint.vae.latents_mean == pytest.approx(LATENTS_MEAN)
    assert ours.checkpoint.vae.scaling_factor == 0.5
    check_txt2img(ours, theirs, "dpmpp_2m", monkeypatch)


def test_mlx_matches_diffusers(playground_folder, theirs, monkeypatch):
    """MLX's VAE normalises the latents too (single files differ only in loading, which is the core's)."""
    pytest.importorskip("mlx.core", reason="mlx is not installed")
    check_txt2img(sdkit.load(playground_folder, backend="mlx", device="cpu", dtype="float32"), theirs, "euler",
                  monkeypatch)


def test_half_marked_files_and_vae_replacement(playground_single_file, playground_folder, sdxl_single_file, tmp_path):
    """One marker alone is no EDM model: refused in one line. A VAE given with vae= keeps the checkpoint's
    latents statistics, as it keeps its scaling factor."""
    half = relayout(playground_single_file, tmp_path / "half.safetensors", keep=lambda k: k != "edm_std")
    with pytest.raises(sdkit.CheckpointError, match="unexpected tensors edm_mean"):
        open_checkpoint(half)
    ckpt = open_checkpoint(playground_folder, vae=sdxl_single_file)
    assert ckpt.vae.latents_std == tuple(LATENTS_STD) and ckpt.vae.scaling_factor == 0.5
    assert not open_checkpoint(sdxl_single_file).scheduler.edm
