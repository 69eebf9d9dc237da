"""Hires fix (sdkit.hires): A1111's two-pass text-to-image, its metadata, and sdkit-gen --from applying it."""

import inspect

import numpy as np
import pytest
import torch

import sdkit
from sdkit import hires, interpolate
from sdkit.metadata import parse_parameters
from sdkit.pipeline import TWO_PASS, Stage

KW = dict(width=32, height=16, steps=2, seed=5, num_images=2, sampler="euler_a")  # stochastic: noise continues


@pytest.fixture(scope="module")
def pipe(sd1_folder):
    return sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")


def one_pass(pipe, stage, **kw):
    """pipe._generate(stage, ...) with generate()'s defaults for what kw does not set."""
    defaults = {k: p.default for k, p in inspect.signature(sdkit.Pipeline.generate).parameters.items()
                if p.default is not p.empty and k not in TWO_PASS}
    return pipe._generate(stage, "a cat", **(defaults | kw))


def test_latent_upscalers_are_torch_interpolate():
    """Each of A1111's latent upscale modes in numpy (the same on every backend) equals torch's interpolate; the
    differences left are float32 rounding of torch's scale and weights."""
    rng = np.random.default_rng(0)
    for name, (_, mode, antialias) in hires.UPSCALERS.items():
        for h0, w0, h, w in ((3, 5, 6, 10), (5, 7, 13, 9), (4, 4, 4, 4), (6, 9, 11, 17), (9, 6, 4, 3), (8, 12, 16, 24)):
            if mode is None:
                continue
            x = rng.standard_normal((2, 4, h0, w0)).astype(np.float32)
            expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=(h, w), mode=mode,
                                                       antialias=antialias).numpy()
            np.testing.assert_allclose(interpolate.resize(x, h, w, mode, antialias), expected, atol=2e-5,
                                       err_msg=f"{name} {(h0, w0)} -> {(h, w)}")


def test_resize_target_is_a1111s():
    # (first pass h, w), hires_resize (h, w) -> ((upscale-to h, w), (latent rows, columns cropped))
    for size, resize, expected in (((768, 512), (1024, 1024), ((1536, 1024), (64, 0))),  # taller: rows cropped
                                   ((512, 768), (1024, 1024), ((1024, 1536), (0, 64))),
                                   ((512, 768), (1536, 1024), ((1536, 2304), (0, 160))),
                                   ((512, 512), (0, 1000), ((1000, 1000), (0, 0))),  # one side: the aspect's
                                   ((512, 768), (1024, 0), ((1024, 1536), (0, 0))),
                                   ((600, 800), (1000, 1000), ((1000, 1333), (0, 41)))):
        assert hires.target(*size, None, resize) == expected
    assert hires.target(600, 800, 1.55, None) == ((930, 1240), (0, 0))  # A1111's int(width * scale)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_equals_the_two_passes_by_hand(pipe, upscaler):
    got = pipe.generate("a cat", hires_scale=1.5, hires_steps=2, hires_denoising=0.6, hires_upscaler=upscaler,
                        output="latent", **KW)
    assert got.shape == (2, 4, 3, 6)  # 48 x 24 pixels

    # by hand: each image's generator continues through both passes (euler_a draws at each step)
    rngs = [np.random.default_rng(5 + i) for i in range(2)]
    first = one_pass(pipe, Stage(rngs=rngs), **KW, output="latent" if upscaler == "latent" else "pil")
    if upscaler == "latent":
        x0 = interpolate.resize(first, 3, 6)
    else:
        pixels = np.stack([sdkit.images.to_model_input(im.resize((48, 24), 1), 48, 24) for im in first])
        x0 = pipe.backend.numpy(pipe.vae.encode(pixels))
    seen = []
    total = int(2 / 0.6)  # A1111: the last hires_steps steps of int(hires_steps / denoising)
    second = one_pass(pipe, Stage(rngs=rngs), **(KW | dict(width=48, height=24, steps=total, strength=2.5 / total)),
                      init_latents=x0, output="latent", hook=lambda i, x, sigma, d: seen.append(i) or x)
    assert seen == [0, 1]  # exactly hires_steps steps
    np.testing.assert_allclose(got, second, atol=1e-4)


def test_resize_crops_as_a1111_and_is_written_as_hires_resize(pipe):
    """Hires resize 48x32 from 32x16: the aspect kept (64x32 latents' worth), 1 latent column cropped each side;
    a bicubic antialiased upscale. Equals the passes by hand; "Hires resize: 48x32" is read back and re-run."""
    kw = dict(hires_resize=(32, 48), hires_steps=2, hires_denoising=0.6, hires_upscaler="latent_bicubic_antialiased")
    got = pipe.generate("a cat", **kw, output="latent", **KW)
    rngs = [np.random.default_rng(5 + i) for i in range(2)]
    first = one_pass(pipe, Stage(rngs=rngs), **KW, output="latent")
    x0 = interpolate.resize(first, 4, 8, "bicubic", antialias=True)[:, :, :, 1:7]
    total = int(2 / 0.6)
    second = one_pass(pipe, Stage(rngs=rngs), **(KW | dict(width=48, height=32, steps=total, strength=2.5 / total)),
                      init_latents=x0, output="latent")
    np.testing.assert_allclose(got, second, atol=1e-4)

    image, = pipe.generate("a cat", **kw, **(KW | dict(num_images=1)))
    assert image.size == (48, 32)
    text = image.info["parameters"]
    assert "Size: 32x16," in text and "Hires upscale:" not in text
    assert ("Denoising strength: 0.6, Hires resize: 48x32, Hires steps: 2, Hires upscaler: Latent (bicubic "
            "antialiased)") in text
    p = sdkit.read_parameters(image)
    assert (p["hires_resize"], p["hires_upscaler"]) == ((32, 48), "latent_bicubic_antialiased")
    again, = pipe.generate(**{k: v for k, v in p.items() if k[0].islower() and k != "model"})
    assert np.array_equal(np.asarray(image), np.asarray(again))


def test_metadata_as_a1111_writes_it_and_read_back(pipe):
    calls = []
    image, = pipe.generate("a cat", hires_scale=2, hires_steps=2, **(KW | dict(num_images=1)),
                           callback=lambda step, total, x: calls.append((step, total)))
    assert calls == [(1, 2), (2, 2), (3, 4), (4, 4)]  # both passes' UNet evaluations, counted on
    assert image.size == (64, 32)
    text = image.info["parameters"]
    assert "Steps: 2," in text and "Size: 32x16," in text  # the first pass's, as A1111 writes them
    assert "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in text
    p = sdkit.read_parameters(image)
    assert {k: p[k] for k in ("width", "height", "steps", "hires_scale", "hires_steps", "hires_denoising",
                              "hires_upscaler")} == dict(width=32, height=16, steps=2, hires_scale=2.0, hires_steps=2,
                                                         hires_denoising=0.7, hires_upscaler="latent")
    assert "strength" not in p
    again, = pipe.generate(**{k: v for k, v in p.items() if k[0].islower() and k != "model"})
    assert np.array_equal(np.asarray(image), np.asarray(again))


def test_a1111_text_and_errors(pipe):
    p = parse_parameters("a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768, "
                         "Denoising strength: 0.45, Hires upscale: 1.5, Hires upscaler: R-ESRGAN 4x+, Version: v1")
    assert (p["hires_scale"], p["hires_denoising"], p["Hires upscaler"]) == (1.5, 0.45, "R-ESRGAN 4x+")
    assert "hires_upscaler" not in p and "hires_steps" not in p and "strength" not in p
    for name in ("Lanczos", "None"):  # A1111 resizes with PIL's Lanczos for "None" too
        lanczos = parse_parameters(f"a\nSteps: 2, Seed: 1, Size: 8x8, Hires upscale: 2, Hires upscaler: {name}")
        assert lanczos["hires_upscaler"] == "lanczos"
    for kw, message in ((dict(hires_scale=0.5), r"hires_scale must be a number in \[1, 16\], got 0.5"),
                        (dict(hires_scale=2, hires_upscaler="esrgan"), "hires_upscaler must be one of"),
                        (dict(hires_scale=2, hires_denoising=0), r"hires_denoising must be in \(0, 1\]"),
                        (dict(hires_scale=2, init_latents=np.zeros((1, 4, 2, 4))), "takes no init_image"),
                        (dict(hires_scale=2, hires_resize=(32, 32)), "hires_scale or hires_resize, not both"),
                        (dict(hires_resize=(0, 0)), r"hires_resize \(0, 0\) resizes to nothing"),
                        (dict(hires_resize=(4, 0)), r"hires_resize \(4, 0\) is smaller than 8 pixels")):
        with pytest.raises(ValueError, match=message):
            pipe.generate("a", **(KW | kw))


def test_same_pictures_on_mlx(pipe, sd1_folder):
    pytest.importorskip("mlx.core")
    mlx = sdkit.load(sd1_folder, backend="mlx", device="cpu", dtype="float32")
    for hires_fix in (dict(hires_scale=2), dict(hires_resize=(40, 48), hires_upscaler="latent_nearest_exact")):
        kw = KW | dict(num_images=1, hires_steps=2) | hires_fix
        ours, theirs = mlx.generate("a cat", output="latent", **kw), pipe.generate("a cat", output="latent", **kw)
        # the tiny random model's latents reach |x| ~ 60: float32 rounding of two backends, relative to that scale
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_from_applies_a1111_hires_fix(pipe, sd1_folder, tmp_path, monkeypatch, capsys):
    from PIL import Image, PngImagePlugin
    from sdkit import cli

    text = ("a fox\nSteps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 9, Size: 32x16, "
            "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 1, Hires upscaler: 4x-UltraSharp, Version: v1")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 32)).save(tmp_path / "a1111.png", pnginfo=info)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["--from", "a1111.png", "-m", str(sd1_folder), "--backend", "torch", "-o", "out.png", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        "sdkit-gen: warning: Hires upscaler: 4x-UltraSharp is not in sdkit; using Lanczos"]
    expected, = pipe.generate("a fox", steps=2, sampler="euler_a", guidance_scale=7, seed=9, width=32, height=16,
                              hires_scale=2, hires_steps=1, hires_denoising=0.5, hires_upscaler="lanczos")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))
    assert "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 1, Hires upscaler: Lanczos" in \
        Image.open(tmp_path / "out.png").info["parameters"]


def test_batch_rows_take_hires_columns(tmp_path):
    from sdkit.batch import rows

    assert rows._convert({"prompt": "a", "hires_scale": "1.5", "hires_steps": "5", "hires_denoising": "0.5",
                          "hires_upscaler": "lanczos"}, tmp_path) == dict(
        prompt="a", hires_scale=1.5, hires_steps=5, hires_denoising=0.5, hires_upscaler="lanczos")
    assert rows._convert({"prompt": "a", "hires_resize": "48x32", "eta": "0.5"}, tmp_path) == dict(
        prompt="a", hires_resize=(32, 48), eta=0.5)
    assert "init_latents" not in rows.COLUMNS


def test_generate_has_no_private_keywords():
    assert not [k for k in inspect.signature(sdkit.Pipeline.generate).parameters if k.startswith("_")]
