"""Samplers against diffusers' schedulers: the same smooth fake UNet driven from the same initial noise by
diffusers' pipeline loop (the oracle, torch float64 where
diffusers lets it) and by sdkit.samplers (numpy float64)."""

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import sys
from unittest import mock
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_lms_discrete
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from fixtures import SCHEDULERS as ORACLES

from sdkit import samplers
from sdkit.config import SchedulerConfig
from sdkit.samplers import deis
from sdkit.samplers.registry import SCHEDULES

CONFIGS = Path(samplers.__file__).parents[1] / "data" / "schedulers"
BASES = {name: json.loads((CONFIGS / f"{name}-scheduler_config.json").read_text())
         for name in ("sd15", "sd21-768v", "sdxl-base")}
# what the config is silent on takes each diffusers class's default (timestep_spacing, set_alpha_to_one,
# skip_prk_steps, steps_offset); clip_sample is pinned off: SD never clips and sdkit does not implement it
SILENT = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}

SHAPE = (2, 4, 3, 3)
MODES = {"txt2img": 1.0, "img2img_0.3": 0.3, "img2img_0.75": 0.75}


class _GaussLegendre:
    """Stand-in for scipy.integrate where scipy is absent: LMS integrates cubics, which 8-point Gauss-Legendre
    quadrature integrates exactly (a different method from sdkit's exact polynomial antiderivatives)."""

    @staticmethod
    def quad(f, a, b, epsrel=None):
        x, w = np.polynomial.legendre.leggauss(8)
        a, b = float(a), float(b)
        return (b - a) / 2 * sum(wi * float(f((b - a) / 2 * xi + (a + b) / 2)) for xi, wi in zip(x, w)), 0.0


@pytest.fixture(autouse=True)
def _lms_quadrature(monkeypatch):
    if not hasattr(scheduling_lms_discrete, "integrate"):
        monkeypatch.setattr(scheduling_lms_discrete, "integrate", _GaussLegendre, raising=False)


def unet(x, t: float):
    """A smooth stand-in for the guided UNet output (eps or v sized), nonlinear in x and t."""
    sin = torch.sin if torch.is_tensor(x) else np.sin
    return x * 0.8 + sin(x * 1.7 + t / 150.0) * 0.3


def config_dict(base: str, **overrides) -> dict:
    d = dict(SILENT) if base == "silent" else dict(BASES[base])
    d.update({k: v for k, v in overrides.items() if v is not None})
    return d


def float64_alphas_cumprod(c) -> torch.Tensor:
    """diffusers' betas (scheduling_ddim.py and betas_for_alpha_bar, rescale_zero_terminal_snr), in float64."""
    n = c.num_train_timesteps
    if c.beta_schedule == "linear":
        betas = torch.linspace(c.beta_start, c.beta_end, n, dtype=torch.float64)
    elif c.beta_schedule == "scaled_linear":
        betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, n, dtype=torch.float64) ** 2
    else:
        alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=torch.float64)
    if getattr(c, "rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1 - betas, 0)


def float64_levels(name):
    """KDPM2Ancestral's set_timesteps takes sigma_down = sqrt(s_next^2 - sigma_up^2), exactly s_next^2 / s, by
    cancellation: its relative error is ~ulp (s / s_next)^2. On its float32 levels that is 1.5 % on SD's last step of 2
    (14.6 -> 0.029), so its midpoint timestep (exactly s_next's) came out 0 or 0.02 with the CPU and library versions
    (749.25037 or 749.25055 at 5 steps), and NaN on cosine betas (s / s_next up to 2.2e5 here). On float64 levels (the
    same float32 values) it is < 1e-5 even there: the oracle is then diffusers' formula, not its rounding."""
    if name != "dpm2_a":
        return contextlib.nullcontext()
    from_numpy = torch.from_numpy
    return mock.patch.object(torch, "from_numpy", lambda a: from_numpy(a.astype(np.float64) if a.dtype == np.float32
                                                                       else a))


def run_diffusers(name, config: dict, steps, strength, x0, noise, seed, schedule=None, **step_kwargs):
    """diffusers' StableDiffusion(Img2Img)Pipeline loop with `unet`; returns latents, timesteps, init sigma."""
    cls, extra = ORACLES[name]
    scheduler = cls.from_config(config, **extra, **SCHEDULES[schedule][1])
    # diffusers' float32 ᾱ is off by up to ~1e-5, and some paths (PRK warm-up in img2img) amplify that: run its
    # logic on a float64 ᾱ, so that the comparison tests the sampler, not the rounding
    finite = float(scheduler.alphas_cumprod[-1]) == 2**-24  # zero terminal SNR, made finite for this sampler
    scheduler.alphas_cumprod = float64_alphas_cumprod(scheduler.config)
    if finite:
        scheduler.alphas_cumprod[-1] = 2**-24
    if getattr(scheduler, "final_alpha_cumprod", 1) != 1:  # ddim, pndm without set_alpha_to_one
        scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    with float64_levels(name):
        scheduler.set_timesteps(steps)
    if torch.is_tensor(getattr(scheduler, "sigmas", None)):  # same float32 values, float64 arithmetic: at
        scheduler.sigmas = scheduler.sigmas.double()  # sigma ~ 2e4 (cosine ᾱ) float32 steps lose 1e-5
    timesteps = scheduler.timesteps
    x0, noise = torch.from_numpy(x0), torch.from_numpy(noise)
    if strength < 1:
        t_start = max(steps - min(int(steps * strength), steps), 0)
        timesteps = timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(len(x0)))
    else:
        x = noise * scheduler.init_noise_sigma
    seen, noise = [], step_noise(seed)
    # stochastic samplers: each step's noise from the stream sdkit gets too (in place of torch's generator)
    with mock.patch.object(sys.modules[cls.__module__], "randn_tensor", lambda *a, **kw: torch.from_numpy(noise()),
                           create=True):
        for t in timesteps:
            seen.append(float(t))
            out = unet(scheduler.scale_model_input(x, t), float(t))
            x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x.double().numpy(), seen, float(scheduler.init_noise_sigma)


def step_noise(seed: int):
    """The per-step noise both sides draw: an endless stream of standard-normal arrays."""
    rng = np.random.default_rng(seed + 1000)
    return lambda: rng.standard_normal(SHAPE)


def run_sdkit(name, config: dict, steps, strength, x0, noise, seed, schedule=None):
    p = samplers.plan(name, SchedulerConfig.from_diffusers(config), steps, strength, schedule)
    seen = []

    def model(x, t):
        assert type(t) is float
        seen.append(t)
        return unet(x, t)

    x = noise * p.init_noise_sigma if strength == 1 else samplers.add_noise(p, x0, noise)
    x = samplers.sample(p, model, x, step_noise(seed))
    assert p.num_evaluations == len(seen) == len(p.timesteps)
    return x, seen, p.init_noise_sigma


def runs(steps_list, modes):
    """(steps, mode) pairs that leave at least one step (the others: test_strength_too_low)."""
    return [(steps, mode) for steps in steps_list for mode in modes if int(steps * MODES[mode]) > 0]


# diffusers computes these samplers' midpoint levels with torch's float32 exp and log, whose rounding differs
# from the exact geometric mean by up to one float32 ulp (1.2e-7 relative): the midpoint's timestep moves by < 1e-4;
# dpm2_a's oracle runs in float64 (float64_levels), and sdkit's float32 midpoint timestep is < 3e-5 from it
FLOAT32_MIDPOINTS = ("dpm2", "dpm2_a")


def check_parity(name, config, steps, strength, seed=0, schedule=None):
    rng = np.random.default_rng(seed)
    x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    ours, our_t, our_init = run_sdkit(name, config, steps, strength, x0, noise, seed, schedule)
    theirs, their_t, their_init = run_diffusers(name, config, steps, strength, x0, noise, seed, schedule)
    if name in FLOAT32_MIDPOINTS:
        np.testing.assert_allclose(our_t, their_t, rtol=0, atol=1e-4)
    else:
        assert our_t == their_t
    assert our_init == pytest.approx(their_init, rel=1e-6)
    assert np.isfinite(ours).all()
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert error < 1e-5, f"relative error {error:.2e}"


@pytest.mark.parametrize("steps,mode", runs([1, 2, 5, 25], MODES))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name", samplers.NAMES)
def test_matches_diffusers(name, base, prediction, steps, mode):
    """SD1.5 (PNDM config, no timestep_spacing), SD2.1-v (DDIM config) and SDXL (Euler config, leading)."""
    check_parity(name, config_dict(base, prediction_type=prediction), steps, MODES[mode])


SCHEDULED = [(name, schedule) for name, s in samplers.SAMPLERS.items() for schedule in s.schedules if schedule]


@pytest.mark.parametrize("steps,mode", runs([1, 4, 25], ["txt2img", "img2img_0.75"]))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name,schedule", SCHEDULED)
def test_schedules_match_diffusers_options(name, schedule, base, prediction, steps, mode):
    """generate(schedule=) equals the diffusers option of that name (timestep_spacing="trailing",
    use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas) on the sampler's scheduler."""
    check_parity(name, config_dict(base, prediction_type=prediction), steps, MODES[mode], seed=steps,
                 schedule=schedule)


ZERO_SNR = [name for name, s in samplers.SAMPLERS.items() if "rescale_betas_zero_snr" in
            inspect.signature(ORACLES[name][0].__init__).parameters]


@pytest.mark.parametrize("steps,mode", runs([1, 4, 25], ["txt2img", "img2img_0.75"]))
@pytest.mark.parametrize("name,schedule", [(name, schedule) for name in ZERO_SNR for schedule in (None, "trailing")
                                           if schedule in samplers.SAMPLERS[name].schedules])  # not karras:
def test_zero_terminal_snr(name, schedule, steps, mode):  # diffusers fails on its repeated t = 999 there
    """rescale_betas_zero_snr (v-prediction fine-tunes, NoobAI-XL): ᾱ ends at 0; trailing timesteps reach it."""
    config = config_dict("sdxl-base", prediction_type="v_prediction", rescale_betas_zero_snr=True)
    check_parity(name, config, steps, MODES[mode], seed=steps, schedule=schedule)


def test_zero_terminal_snr_samplers():
    assert set(ZERO_SNR) >= {"ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "dpmpp_2m_sde"}


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("name,schedule", [(n, s) for n, s in SCHEDULED if s != "trailing"])
def test_sigma_schedules_on_other_beta_schedules(name, schedule, beta_schedule):
    if name in ("dpm2", "dpm2_a") and (schedule, beta_schedule) == ("karras", "squaredcos_cap_v2"):
        pytest.skip("diffusers' KDPM2(Ancestral) starts at the second of its repeated timesteps 999 "
                    "(index_for_timestep), skips a step and runs off its levels: NaN latents (sdkit's are finite)")
    if (name, schedule, beta_schedule) == ("dpm2", "exponential", "squaredcos_cap_v2"):
        pytest.skip("diffusers' float32 midpoint levels at sigma ~ 2e4 (one ulp off) move its result by 1e-4")
    if (name, schedule, beta_schedule) == ("unipc", "karras", "squaredcos_cap_v2"):
        pytest.skip("diffusers' UniPC fails its own assert on the repeated timesteps (999, 999) of this schedule")
    if (name, schedule, beta_schedule) == ("deis", "karras", "squaredcos_cap_v2"):
        pytest.skip("diffusers' DEIS indexes past its sigmas after the repeated timesteps (999, 999) of this schedule")
    check_parity(name, config_dict("silent", beta_schedule=beta_schedule, beta_start=0.0001, beta_end=0.02), 8, 1.0,
                 schedule=schedule)


def test_old_names_are_aliases():
    """dpmpp_2m_karras = dpmpp_2m + karras (still the default recipe), plms = pndm."""
    config = SchedulerConfig.from_diffusers(BASES["sd15"])
    a, b = samplers.plan("dpmpp_2m_karras", config, 9), samplers.plan("dpmpp_2m", config, 9, schedule="karras")
    assert np.array_equal(a.sigmas, b.sigmas) and np.array_equal(a.timesteps, b.timesteps)
    assert samplers.resolve("dpmpp_2m_karras") == (samplers.SAMPLERS["dpmpp_2m"], "karras")
    with pytest.raises(ValueError, match="'dpmpp_2m_karras' means dpmpp_2m with schedule 'karras', not 'beta'"):
        samplers.plan("dpmpp_2m_karras", config, 9, schedule="beta")


def test_schedule_errors_name_the_valid_ones():
    with pytest.raises(ValueError, match="schedule 'karras' is not available for sampler ddim; use one of: "
                                         "None, 'trailing'"):
        samplers.plan("ddim", SchedulerConfig(), 10, schedule="karras")
    with pytest.raises(ValueError, match="schedule 'polyexponential' is unknown; use one of"):
        samplers.plan("euler", SchedulerConfig(), 10, schedule="polyexponential")


def test_beta_quantiles_equal_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    from sdkit.samplers.schedules import beta_ppf
    q = np.linspace(0, 1, 41)
    np.testing.assert_allclose([beta_ppf(x, 0.6, 0.6) for x in q], scipy_stats.beta.ppf(q, 0.6, 0.6), atol=1e-14)


@pytest.mark.parametrize("steps,mode", runs([1, 3, 25], ["txt2img", "img2img_0.75"]))
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", samplers.NAMES)
def test_timestep_spacing_overrides(name, spacing, steps, mode):
    check_parity(name, config_dict("sd15", timestep_spacing=spacing, prediction_type="v_prediction"), steps,
                 MODES[mode], seed=steps)


@pytest.mark.parametrize("steps,mode", runs([4, 6, 25], MODES))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", samplers.NAMES)
def test_silent_config_takes_class_defaults(name, prediction, steps, mode):
    """Silent on spacing, steps_offset, set_alpha_to_one (DDIM: True, PNDM: False) and skip_prk_steps: PNDM
    then warms up with pseudo Runge-Kutta steps."""
    check_parity(name, config_dict("silent", prediction_type=prediction), steps, MODES[mode], seed=1)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("name", samplers.NAMES)
def test_other_beta_schedules(name, beta_schedule):
    check_parity(name, config_dict("silent", beta_schedule=beta_schedule, beta_start=0.0001, beta_end=0.02), 8, 1.0)


def test_evaluation_counts_and_start_levels():
    sd15 = SchedulerConfig.from_diffusers(BASES["sd15"])
    counts = {name: samplers.plan(name, sd15, 10).num_evaluations for name in samplers.NAMES}
    assert counts == {**dict.fromkeys(samplers.NAMES, 10), "pndm": 11, "heun": 19, "dpm2": 19, "dpm2_a": 19}
    assert samplers.plan("pndm", SchedulerConfig(), 10).num_evaluations == 10 + 9  # 3 PRK steps of 4
    for name in ("euler", "euler_a", "heun", "lms"):
        p = samplers.plan(name, sd15, 10)
        assert p.init_noise_sigma == p.sigmas.max() and p.init_noise_sigma == pytest.approx(14.6146, abs=1e-4)
    xl = samplers.plan("euler", SchedulerConfig.from_diffusers(BASES["sdxl-base"]), 10)
    assert xl.init_noise_sigma == pytest.approx(math.sqrt(xl.sigmas.max() ** 2 + 1))
    assert {samplers.plan(n, sd15, 10).init_noise_sigma for n in ("ddim", "pndm", "dpmpp_2m", "unipc")} == {1.0}


def test_plms_is_pndm():
    config = SchedulerConfig.from_diffusers(BASES["sd15"])
    a, b = samplers.plan("plms", config, 7), samplers.plan("pndm", config, 7)
    assert a.sampler == b.sampler == "pndm" and np.array_equal(a.timesteps, b.timesteps)
    assert samplers.canonical_name("plms") == "pndm"


@pytest.mark.parametrize("name", ["dpm_fast", "", "DDIM", "euler a"])
def test_unknown_sampler_lists_valid_names(name):
    with pytest.raises(ValueError) as e:
        samplers.plan(name, SchedulerConfig(), 10)
    assert all(valid in str(e.value) for valid in samplers.NAMES) and repr(name) in str(e.value)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10", 1001])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000\]"):
        samplers.plan("euler", SchedulerConfig(), steps)


@pytest.mark.parametrize("steps,strength", [(2, 0.3), (1, 0.99), (30, 0.03)])
def test_strength_too_low(steps, strength):
    with pytest.raises(ValueError, match=f"strength {strength} is too low for {steps} steps"):
        samplers.plan("ddim", SchedulerConfig(), steps, strength)


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5])
def test_strength_out_of_range(strength):
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        samplers.plan("ddim", SchedulerConfig(), 10, strength)


def test_pndm_runge_kutta_needs_four_steps():
    with pytest.raises(ValueError, match="steps must be >= 4 when the scheduler config's skip_prk_steps is false"):
        samplers.plan("pndm", SchedulerConfig(), 3)


def test_bad_config_values():
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        samplers.plan("euler", SchedulerConfig(prediction_type="sample"), 10)
    with pytest.raises(ValueError, match="timestep_spacing 'even' is not supported"):
        samplers.plan("ddim", SchedulerConfig(timestep_spacing="even"), 10)
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid' is not supported"):
        samplers.plan("ddim", SchedulerConfig(beta_schedule="sigmoid"), 10)


@pytest.mark.parametrize("name", samplers.NAMES)
def test_same_code_runs_on_torch_and_mlx(name):
    """Only + - * / with Python floats touch x: torch and mlx arrays give numpy's result."""
    p = samplers.plan(name, SchedulerConfig.from_diffusers(BASES["sd15"]), 6, 0.75)
    rng = np.random.default_rng(2)
    x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    steps = [rng.standard_normal(SHAPE) for _ in range(p.num_evaluations)]

    def run(asarray, sin):
        queue = iter(steps)
        model = lambda x, t: x * 0.8 + sin(x * 1.7 + t / 150.0) * 0.3
        return samplers.sample(p, model, samplers.add_noise(p, asarray(x0), asarray(noise)),
                               lambda: asarray(next(queue)))

    reference = run(np.asarray, np.sin)
    np.testing.assert_allclose(run(torch.from_numpy, torch.sin).numpy(), reference, rtol=1e-12, atol=1e-12)
    mx = pytest.importorskip("mlx.core")
    ours = np.array(run(lambda a: mx.array(a.astype(np.float32)), mx.sin))
    assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-5


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("name", samplers.NAMES)
def test_hook_sees_every_step_and_can_replace_x(name, strength):
    """hook(step, x, sigma, denoised) once per step, 0-based, noise levels falling to (about) zero; returning
    None or x changes nothing; another array replaces x (what inpainting's blend does). hook.inner(x, sigma) after
    every other evaluation: each evaluation is reported once, as diffusers' inpainting blends per scheduler.step."""
    config = SchedulerConfig.from_diffusers(BASES["sd15"])
    p = samplers.plan(name, config, 6, strength)
    rng = np.random.default_rng(3)
    x, steps = rng.standard_normal(SHAPE) * p.init_noise_sigma, [rng.standard_normal(SHAPE) for _ in range(99)]

    def run(hook):
        queue = iter(steps)
        return samplers.sample(p, unet, x, lambda: next(queue), hook)

    seen = []
    plain = run(None)
    last = run(lambda i, x, sigma, x0: seen.append((i, sigma, x.shape, x0.shape)) or x)
    assert np.array_equal(plain, last)
    assert [s[0] for s in seen] == list(range(int(6 * strength)))
    sigmas = [s[1] for s in seen]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[-1] < 0.1 and all(s[2:] == (SHAPE, SHAPE) for s in seen)
    finals = []
    replaced = run(lambda i, x, sigma, x0: finals.append(x * 0.5) or finals[-1])
    assert np.array_equal(replaced, finals[-1]) and not np.allclose(replaced, plain)

    inner = []
    hook = lambda i, x, sigma, x0: x  # noqa: E731
    hook.inner = lambda x, sigma: inner.append(sigma) or x
    assert np.array_equal(run(hook), plain) and len(seen) + len(inner) == p.num_evaluations
    hook.inner = lambda x, sigma: x * 0.5
    assert inner == [] or not np.allclose(run(hook), plain)


@pytest.mark.parametrize("schedule", [None, "karras"])
def test_deis_third_order(schedule):
    """deis(order=3) equals DEISMultistepScheduler(solver_order=3): the degree-2 Lagrange integrals in log rho
    (sampler deis is diffusers' default, order 2), including the drop to orders 2 and 1 at the end below 15 steps."""
    third = dataclasses.replace(samplers.SAMPLERS["deis"], sample=functools.partial(deis.deis, order=3))
    with mock.patch.dict(ORACLES, {"deis": (ORACLES["deis"][0], {"solver_order": 3})}), \
            mock.patch.dict(samplers.SAMPLERS, {"deis": third}):
        for steps, mode in runs([6, 14, 15], MODES):
            check_parity("deis", config_dict("sd15", prediction_type="v_prediction"), steps, MODES[mode], seed=steps,
                         schedule=schedule)


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guidance_rescale_equals_diffusers_formula(phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from sdkit.samplers import guidance
    rng = np.random.default_rng(4)
    uncond, cond = rng.standard_normal((2, *SHAPE)) * [[[[[1.0]]]], [[[[1.3]]]]]
    guided = guidance.guide(uncond, cond, 7.5)
    expected = rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), phi).numpy()
    np.testing.assert_allclose(guidance.rescale(guided, cond, phi), expected, rtol=1e-12, atol=1e-12)
    ours = guidance.rescale(torch.from_numpy(guided), torch.from_numpy(cond), phi).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    mx = pytest.importorskip("mlx.core")
    ours = np.array(guidance.rescale(mx.array(guided.astype(np.float32)), mx.array(cond.astype(np.float32)), phi))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert phi == 0 or not np.allclose(expected, guided)


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("steps,mode", runs([1, 4, 8], ["txt2img", "img2img_0.75"]))
def test_tcd_eta(eta, steps, mode):
    """TCD's eta (gamma): 0 is deterministic; diffusers takes it in step(), sdkit in plan()."""
    config = SchedulerConfig.from_diffusers(config_dict("sd15", prediction_type="epsilon"))
    rng = np.random.default_rng(steps)
    x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    p = samplers.plan("tcd", config, steps, MODES[mode], eta=eta)
    x = noise if mode == "txt2img" else samplers.add_noise(p, x0, noise)
    ours = samplers.sample(p, unet, x, step_noise(steps))
    theirs, _, _ = run_diffusers("tcd", config_dict("sd15", prediction_type="epsilon"), steps, MODES[mode], x0, noise,
                                 steps, eta=eta)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-5
    with pytest.raises(ValueError, match="eta is a setting of sampler tcd, not of euler"):
        samplers.plan("euler", config, steps, eta=eta)


@pytest.mark.parametrize("start,end", [(None, 0.8), (0.8, None), (0.3, 0.7)])
@pytest.mark.parametrize("name", samplers.FRACTIONAL)
def test_denoising_start_and_end_as_diffusers(name, start, end):
    """diffusers' SDXL pipelines: denoising_end keeps the timesteps >= T (1 - end); denoising_start the ones
    < T (1 - start), from latents already that noisy (no add_noise)."""
    config, steps, T = config_dict("sdxl-base", prediction_type="epsilon"), 10, 1000
    rng = np.random.default_rng(5)
    x = rng.standard_normal(SHAPE) * 3
    p = samplers.plan(name, SchedulerConfig.from_diffusers(config), steps, denoising_start=start, denoising_end=end)
    ours = samplers.sample(p, unet, x, step_noise(0))
    cls, extra = ORACLES[name]
    scheduler = cls.from_config(config, **extra)
    scheduler.alphas_cumprod = float64_alphas_cumprod(scheduler.config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if start is not None:
        n = int((timesteps < round(T - start * T)).sum())
        timesteps = timesteps[len(timesteps) - n:]
        scheduler.set_begin_index(len(scheduler.timesteps) - n)
    if end is not None:
        timesteps = timesteps[:len([t for t in timesteps if t >= round(T - end * T)])]
    assert [float(t) for t in timesteps] == p.timesteps.tolist()
    theirs, noise = torch.from_numpy(x), step_noise(0)
    with mock.patch.object(sys.modules[cls.__module__], "randn_tensor", lambda *a, **kw: torch.from_numpy(noise()),
                           create=True):
        for t in timesteps:
            theirs = scheduler.step(unet(scheduler.scale_model_input(theirs, t), float(t)), t, theirs).prev_sample
    theirs = theirs.double().numpy()
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-5
