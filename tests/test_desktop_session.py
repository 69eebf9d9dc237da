"""The desktop app's Qt-free parts: session state, size presets, latent preview, error lines, download size."""

import numpy as np
import pytest

pytest.importorskip("PySide6")  # sdkit_desktop.worker below needs it; the session model itself does not

from sdkit_desktop import download, preview  # noqa: E402
from sdkit_desktop.session import (ModelChoice, Session, Settings, embedding_text, lora_tag,  # noqa: E402
                                   network_files, size_presets, snap8, vae_files)
from sdkit_desktop.worker import describe  # noqa: E402

import sdkit  # noqa: E402

SAMPLERS = ("ddim", "euler_a", "dpmpp_2m", "dpmpp_2m_sde")


def test_generate_kwargs_text_to_image_and_image_to_image():
    s = Settings(prompt="a cat", width=64, height=96, seed=5, strength=0.4)
    assert s.generate_kwargs() == dict(prompt="a cat", negative_prompt=None, width=64, height=96, steps=30,
                                       guidance_scale=7.5, sampler="dpmpp_2m", schedule="karras", seed=5,
                                       num_images=1, clip_skip=1)
    assert Settings(negative_prompt="").generate_kwargs()["negative_prompt"] == ""  # SDXL: not None's zeros
    kw = Settings(init_image="in.png", strength=0.4).generate_kwargs()
    assert (kw["init_image"], kw["strength"]) == ("in.png", 0.4)


def test_hires_fix_reaches_generate_for_text_to_image_only():
    hires = dict(hires=True, hires_scale=1.5, hires_steps=0, hires_denoising=0.55, hires_upscaler="lanczos")
    kw = Settings(**hires).generate_kwargs()
    assert {k: kw[k] for k in kw if k.startswith("hires")} == dict(hires_scale=1.5, hires_steps=None,
                                                                     hires_denoising=0.55, hires_upscaler="lanczos")
    assert Settings(**hires | {"hires_steps": 12}).generate_kwargs()["hires_steps"] == 12
    assert not any(k.startswith("hires") for k in Settings(**hires, init_image="in.png").generate_kwargs())
    assert not any(k.startswith("hires") for k in Settings(hires_scale=3.0).generate_kwargs())
    kw = Settings(**hires, hires_resize=True, hires_width=96, hires_height=0).generate_kwargs()  # "Resize to"
    assert (kw["hires_resize"], "hires_scale" in kw) == ((0, 96), False)


def test_parameters_restore_every_field_and_lock_the_seed():
    params = dict(prompt="a castle", negative_prompt="fog", steps=23, sampler="euler_a", guidance_scale=6.5,
                  seed=1234, width=512, height=768, model="v1-5", strength=0.3)
    s = Settings(sampler="ddim", num_images=3).with_parameters(params, SAMPLERS)
    assert s == Settings(prompt="a castle", negative_prompt="fog", steps=23, sampler="euler_a", schedule=None,
                         guidance_scale=6.5, seed=1234, seed_locked=True, width=512, height=768, strength=0.3,
                         num_images=3)


def test_parameters_with_a_sampler_sdkit_lacks_keep_the_current_one():
    s = Settings(sampler="ddim").with_parameters({"prompt": "x", "sampler": "DPM fast"}, SAMPLERS)
    assert (s.prompt, s.sampler, s.seed_locked) == ("x", "ddim", False)


def test_settings_survive_a_round_trip_and_bad_saved_values_are_dropped():
    s = Settings(prompt="p", width=640, guidance_scale=5.0, seed_locked=True, init_image="a.png")
    assert Settings.from_dict(s.to_dict()) == s
    loaded = Settings.from_dict({"steps": "many", "guidance_scale": 9, "seed_locked": 1, "colour": "red",
                                 "width": True})
    assert loaded == Settings(guidance_scale=9.0)


def test_job_draws_a_fresh_seed_unless_locked():
    session = Session(model=ModelChoice("model.safetensors"))
    seeds = {session.job()[1]["seed"] for _ in range(5)}
    assert len(seeds) == 5 and session.settings.seed in seeds  # the form shows the seed used
    session.settings.seed_locked, session.settings.seed = True, 42
    choice, kwargs = session.job()
    assert choice == ModelChoice("model.safetensors") and kwargs["seed"] == 42


def test_refiner_start_goes_with_a_refiner_and_a_refiner_is_found_by_name(tmp_path):
    session = Session(model=ModelChoice("m.safetensors"), settings=Settings(refiner_start=0.7))
    assert "refiner_start" not in session.job()[1]
    session.model = ModelChoice("m.safetensors", refiner="r.safetensors")
    assert session.job()[1]["refiner_start"] == 0.7 and session.model.base == ModelChoice("m.safetensors")
    (tmp_path / "base.safetensors").touch()
    (tmp_path / "xl-refiner.safetensors").touch()
    session.remember("/elsewhere/r1", "used-refiner")
    base = str(tmp_path / "base.safetensors")
    assert session.refiner_named("used-refiner", base) == "/elsewhere/r1"
    assert session.refiner_named("xl-refiner", base) == str(tmp_path / "xl-refiner.safetensors")  # next to it
    assert session.refiner_named("xl-refiner", "org/model") is None
    assert session.refiner_named("../xl-refiner", base) is None


def test_job_without_a_model_says_what_to_do():
    with pytest.raises(ValueError, match="no model chosen: open a .safetensors file"):
        Session().job()


def test_recent_models_most_recent_first_without_duplicates():
    session = Session()
    for m in ["a", "b", "a", *map(str, range(12))]:
        session.remember(m, f"name of {m}")
    assert session.recent[:3] == ["11", "10", "9"] and len(session.recent) == 10
    session.remember("a", "A")
    assert session.recent[0] == "a" and session.recent.count("a") == 1
    assert session.model_named("A") == "a" and session.model_named("name of 11") == "11"
    assert session.model_named("name of 2") is None and len(session.names) == 10  # dropped from the list
    session.remember("r", "R", refiner=True)  # a refiner has its own list, and is found by name as models are
    assert session.refiners == ["r"] and "r" not in session.recent and session.model_named("R") == "r"


def test_model_named_finds_existing_paths(tmp_path):
    assert Session().model_named(str(tmp_path)) == str(tmp_path)
    assert Session().model_named("v1-5-pruned-emaonly") is None and Session().model_named(None) is None


def test_hub_id_versus_local_path(tmp_path):
    assert ModelChoice("stable-diffusion-v1-5/stable-diffusion-v1-5").is_hub_id
    (tmp_path / "m").mkdir()
    assert not ModelChoice(str(tmp_path / "m")).is_hub_id
    assert not ModelChoice("model.safetensors").is_hub_id


def test_size_presets():
    assert size_presets("sd1", (512, 512)) == [(512, 512), (512, 768), (768, 512), (512, 680), (680, 512)]
    assert size_presets("sd2", (768, 768))[:3] == [(768, 768), (768, 1152), (1152, 768)]
    xl = size_presets("sdxl", (1024, 1024))
    assert (832, 1216) in xl and all(abs(w * h / 1024**2 - 1) < 0.1 for w, h in xl)
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in size_presets("sd1", (64, 64)))
    assert [snap8(v) for v in (1, 3, 4, 100, 516)] == [8, 8, 8, 104, 520]


def test_preview_projects_latents_with_the_sd_factors():
    x = np.zeros((4, 2, 3), np.float32)
    x[0] = 1.0  # std 0.47 < 1: not rescaled
    rgb = preview.latents_to_rgb(x)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], np.round((1 + np.array([0.298, 0.207, 0.208])) / 2 * 255))
    assert not np.array_equal(preview.latents_to_rgb(x, "sdxl"), rgb)


def test_preview_of_noisy_latents_is_scaled_to_unit_std_not_saturated():
    noisy = np.random.default_rng(0).standard_normal((4, 32, 32)).astype(np.float32) * 14.6
    rgb = preview.latents_to_rgb(noisy)
    saturated = np.mean((rgb == 0) | (rgb == 255))
    assert saturated < 0.05, saturated


def test_errors_become_one_actionable_line():
    assert describe(sdkit.CheckpointError("m.safetensors: no UNet weights")) == "m.safetensors: no UNet weights"
    oom = describe(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore details"))
    assert oom.startswith("Out of memory: use a smaller size") and "\n" not in oom
    assert describe(MemoryError()).startswith("Out of memory")
    assert describe(KeyError("x")) == "KeyError: 'x'"


def test_download_progress_counts_partial_files(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "HF_HUB_CACHE", str(tmp_path))
    assert download.cached_bytes("org/model") == 0
    blobs = tmp_path / "models--org--model" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "a").write_bytes(b"x" * 1000)
    (blobs / "b.incomplete").write_bytes(b"x" * 500)
    assert download.cached_bytes("org/model") == 1500
    assert [download.human_bytes(n) for n in (5, 1500, 2_300_000_000)] == ["5 B", "1.5 KB", "2.3 GB"]


def test_restored_images_set_negative_prompt_and_clip_skip_even_when_absent():
    """An image with an explicit empty negative prompt restores "" (not None); one without a negative prompt or
    clip skip clears the current ones."""
    s = Settings(negative_prompt="fog", clip_skip=2)
    assert s.with_parameters({"prompt": "a", "negative_prompt": ""}, SAMPLERS).negative_prompt == ""
    cleared = s.with_parameters({"prompt": "a"}, SAMPLERS)
    assert (cleared.negative_prompt, cleared.clip_skip) == (None, 1)
    assert s.with_parameters({"prompt": "a", "clip_skip": 3}, SAMPLERS).clip_skip == 3
    assert Settings.from_dict(Settings(negative_prompt="", clip_skip=2).to_dict()) == Settings(negative_prompt="",
                                                                                                 clip_skip=2)


def test_lora_embedding_and_vae_files_of_the_configured_folders(tmp_path, monkeypatch):
    import os

    for folder, names in (("a", ["detail.safetensors", "style.safetensors", "old.pt", ".hidden.safetensors"]),
                          ("b", ["detail.safetensors", "more.safetensors"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    monkeypatch.setenv("SDKIT_LORA_DIRS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b"),
                                                           str(tmp_path / "missing")]))
    assert network_files("SDKIT_LORA_DIRS") == {"detail": str(tmp_path / "a" / "detail.safetensors"),
                                                "style": str(tmp_path / "a" / "style.safetensors"),
                                                "more": str(tmp_path / "b" / "more.safetensors")}
    monkeypatch.setenv("SDKIT_VAE_DIRS", str(tmp_path / "b"))
    assert vae_files() == [str(tmp_path / "b" / "detail.safetensors"), str(tmp_path / "b" / "more.safetensors")]
    assert (lora_tag("detail", 1.0), lora_tag("detail", -0.5)) == ("<lora:detail:1>", "<lora:detail:-0.5>")
    assert (embedding_text("EasyNegative", 1.0), embedding_text("EasyNegative", 1.2)) == (
        "EasyNegative", "(EasyNegative:1.2)")


def test_a_stored_sampler_and_schedule_are_restored_and_an_unknown_sampler_keeps_both():
    s = Settings(sampler="ddim", schedule=None)
    restored = s.with_parameters({"prompt": "x", "sampler": "dpmpp_2m_sde", "schedule": "beta"}, SAMPLERS)
    assert (restored.sampler, restored.schedule) == ("dpmpp_2m_sde", "beta")
    restored = Settings().with_parameters({"prompt": "x", "sampler": "ddim"}, SAMPLERS)  # no schedule: the model's
    assert (restored.sampler, restored.schedule) == ("ddim", None)
    kept = Settings(sampler="dpmpp_2m_sde", schedule="exponential").with_parameters(
        {"prompt": "x", "Sampler": "DPM fast", "Schedule type": "Karras"}, SAMPLERS)
    assert (kept.sampler, kept.schedule) == ("dpmpp_2m_sde", "exponential")


def test_hires_fix_is_restored_and_an_image_without_it_turns_it_off():
    params = dict(prompt="x", hires_scale=2.0, hires_steps=10, hires_denoising=0.45, hires_upscaler="lanczos")
    s = Settings().with_parameters(params, SAMPLERS)
    assert (s.hires, s.hires_scale, s.hires_steps, s.hires_denoising, s.hires_upscaler) == (
        True, 2.0, 10, 0.45, "lanczos")
    assert not s.with_parameters({"prompt": "y"}, SAMPLERS).hires
    resized = s.with_parameters(params | {"hires_scale": None, "hires_resize": (768, 1024)}, SAMPLERS)
    assert (resized.hires, resized.hires_resize, resized.hires_width, resized.hires_height) == (True, True, 1024, 768)
    assert resized.generate_kwargs()["hires_resize"] == (768, 1024)
    assert not resized.with_parameters(params, SAMPLERS).hires_resize  # a scale again: "Upscale by"


def test_tcd_eta_reaches_generate_and_is_restored_with_tcd_only():
    assert Settings(sampler="tcd", schedule=None, eta=0.6).generate_kwargs()["eta"] == 0.6
    assert "eta" not in Settings(eta=0.6).generate_kwargs()  # dpmpp_2m takes none
    tcd = Settings().with_parameters(dict(prompt="x", sampler="tcd", eta=0.9), SAMPLERS + ("tcd",))
    assert (tcd.sampler, tcd.eta) == ("tcd", 0.9)
    assert tcd.with_parameters(dict(prompt="x", sampler="tcd"), SAMPLERS + ("tcd",)).eta == 0.3  # none stored
    assert tcd.with_parameters(dict(prompt="x", sampler="euler_a"), SAMPLERS).eta == 0.9  # kept for later


def test_saved_settings_with_an_alias_sampler_or_a_schedule_it_lacks_still_load():
    assert (Settings.from_dict({"sampler": "dpmpp_2m_karras"}).sampler,
            Settings.from_dict({"sampler": "dpmpp_2m_karras"}).schedule) == ("dpmpp_2m", "karras")
    assert Settings.from_dict({"sampler": "ddim"}).schedule is None  # the default karras is not DDIM's
    assert Settings.from_dict({"sampler": "euler", "schedule": None}).schedule is None
    assert Settings.from_dict({"sampler": "DPM fast", "schedule": "beta"}) == Settings()
    s = Settings(sampler="euler", schedule="beta", hires=True, hires_scale=1.5)
    assert Settings.from_dict(s.to_dict()) == s
