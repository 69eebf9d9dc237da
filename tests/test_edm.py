"""EDM models (Playground v2.5): sdkit's samplers on EDM noise levels against diffusers' EDM schedulers, the
whole pipeline against diffusers' StableDiffusionXLPipeline (folder and single file), and the loader."""

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import schedulers as oracles

from sdkit import samplers
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
