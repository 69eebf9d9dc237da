"""sdkit-gen run for real in a subprocess on the tiny SD1 folder: files, metadata, --from, errors, Ctrl-C."""

import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from safetensors.numpy import save_file

import sdkit
from sdkit import cli

SDKIT_GEN = shutil.which("sdkit-gen", path=Path(sys.executable).parent)
FAST = ["--steps", "2", "-W", "64", "-H", "64", "--backend", "torch", "--device", "cpu"]


@pytest.fixture
def env(tmp_path):
    """No network, an empty Hub cache: nothing here may download."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}


def sdkit_gen(*args, cwd, env, command=(SDKIT_GEN,)) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "hf-home")


def test_batch_writes_one_png_per_seed_with_metadata_and_same_pixels_as_the_api(sd1_folder, tmp_path, env):
    r = sdkit_gen("a red fox, snow", "-m", sd1_folder, *FAST, "-s", "5", "-b", "2", "-n", "blurry",
                  "--sampler", "euler_a", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert pngs(tmp_path) == ["a-red-fox-snow-5.png", "a-red-fox-snow-6.png"]
    lines = r.stdout.splitlines()
    assert lines[:2] == ["a-red-fox-snow-5.png  seed 5", "a-red-fox-snow-6.png  seed 6"]
    assert lines[2].startswith("2 steps in ") and lines[2].endswith(" it/s)") and len(lines) == 3

    stored = sdkit.read_parameters(tmp_path / "a-red-fox-snow-6.png")
    assert {k: stored[k] for k in ("prompt", "negative_prompt", "seed", "steps", "sampler", "width", "height",
                                   "guidance_scale")} == dict(prompt="a red fox, snow", negative_prompt="blurry",
                                                              seed=6, steps=2, sampler="euler_a", width=64,
                                                              height=64, guidance_scale=7.5)
    api = sdkit.load(sd1_folder, backend="torch", device="cpu").generate(
        "a red fox, snow", "blurry", width=64, height=64, steps=2, sampler="euler_a", seed=5, num_images=2)
    for image, seed in zip(api, (5, 6)):
        assert np.array_equal(pixels(tmp_path / f"a-red-fox-snow-{seed}.png"), np.asarray(image, dtype=np.int16))


def test_from_regenerates_and_flags_override(sd1_folder, tmp_path, env, gen):
    assert gen("a cat", "-m", sd1_folder, *FAST, "-s", "11", "-o", "cat.png")[0] == 0

    r = sdkit_gen("--from", "cat.png", "-m", sd1_folder, "--backend", "torch", "-o", "cat.png", "-q",
                  cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "cat-1.png\n" and r.stderr == ""  # -q: the path only; the existing file is kept
    assert np.array_equal(pixels(tmp_path / "cat-1.png"), pixels(tmp_path / "cat.png"))
    assert Image.open(tmp_path / "cat-1.png").info == Image.open(tmp_path / "cat.png").info

    code, _, err = gen("a dog", "--from", "cat.png", "-m", sd1_folder, "-s", "3", "--steps", "3", "-b", "2",
                       "-o", "dog.png")
    assert code == 0, err
    assert pngs(tmp_path) == ["cat-1.png", "cat.png", "dog-1.png", "dog.png"]  # one file each
    for name, seed in (("dog.png", 3), ("dog-1.png", 4)):
        stored = sdkit.read_parameters(tmp_path / name)
        assert (stored["prompt"], stored["seed"], stored["steps"], stored["width"]) == ("a dog", seed, 3, 64)


def test_from_an_a1111_png_names_what_it_cannot_honour(sd1_folder, tmp_path, gen):
    # A1111 1.10 hires-fix txt2img with extensions: ADetailer, ControlNet (a quoted group) and Dynamic
    # Thresholding's lower-case keys.
    text = ("masterpiece, (a red fox:1.2) <lora:add_detail:0.5>\nNegative prompt: lowres\n"
            "Steps: 2, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 5, Seed: 77, Size: 64x64, "
            "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.4, Clip skip: 2, "
            "ADetailer model: face_yolov8n.pt, ControlNet 0: \"Module: canny, Model: control_v11p_sd15_canny\", "
            "dynthres_enabled: True, dynthres_mimic_scale: 7, Hires upscale: 2, Hires upscaler: Latent, "
            "Original size: 128x96, Aesthetic score: 7, Version: v1.10.1")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(tmp_path / "a1111.png", pnginfo=info)

    assert gen("--from", "a1111.png", "--backend", "torch") == (
        2, "", "sdkit-gen: error: a1111.png: its model 'v1-5-pruned-emaonly' is neither a local path nor a Hub "
               "repo id; pass -m MODEL\n")

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "init.png")
    code, _, err = gen("--from", "a1111.png", "-m", sd1_folder, "--backend", "torch", "-o", "out.png",
                       "-i", "init.png")
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        "sdkit-gen: warning: the stored hires fix is not applied: -i makes this image-to-image",
        "sdkit-gen: warning: Sampler: DPM++ SDE, Schedule type: Karras is not available in sdkit; "
        "using the model's recommended sampler",
        "sdkit-gen: warning: not applied: ADetailer model: face_yolov8n.pt",
        "sdkit-gen: warning: not applied: ControlNet 0: Module: canny, Model: control_v11p_sd15_canny",
        "sdkit-gen: warning: not applied: dynthres_enabled: True",
        "sdkit-gen: warning: not applied: dynthres_mimic_scale: 7",
        "sdkit-gen: warning: not applied: original_size, aesthetic_score (stored SDXL micro-conditioning this "
        "model does not take)",
        "sdkit-gen: warning: LoRA 'add_detail' is not in the LoRA folders (--lora-dir, $SDKIT_LORA_DIRS): "
        "not applied"]
    stored = sdkit.read_parameters(tmp_path / "out.png")
    assert (stored["seed"], stored["guidance_scale"], stored["sampler"], stored["schedule"]) == (77, 5.0, "dpmpp_2m",
                                                                                               "karras")
    assert stored["clip_skip"] == 2  # applied, and written again
    # the hires pass's strength never becomes the image-to-image strength: -i runs at the default strength
    assert stored["strength"] == sdkit.pipeline.IMG2IMG_STRENGTH == 0.8  # generate()'s image-to-image default


def test_unhonoured_is_extended_by_the_keys_a_feature_restores():
    stored = sdkit.metadata.parse_parameters(
        "a fox\nSteps: 20, Seed: 1, Size: 512x512, Clip skip: 2, VAE: vae-ft-mse-840000, Model hash: 6ce0161689, "
        "Hypernet: anime, Denoising strength: 0.5")
    assert cli.unhonoured(stored, cli.HONOURED | cli.HARMLESS) == ["not applied: Hypernet: anime"]
    assert cli.unhonoured(stored, cli.HONOURED | cli.HARMLESS | {"Hypernet"}) == []
    old_hires = sdkit.metadata.parse_parameters(
        "a\nSteps: 20, Seed: 1, Size: 1024x1024, Denoising strength: 0.7, First pass size: 0x0")
    assert cli.unhonoured(old_hires, cli.HONOURED | cli.HARMLESS) == []  # applied as A1111 does: Hires resize
    assert {k: old_hires[k] for k in ("width", "hires_resize", "hires_denoising")} == dict(
        width=512, hires_resize=(1024, 1024), hires_denoising=0.7)
    unreadable = sdkit.metadata.parse_parameters("a\nSteps: 20, Seed: 1, Size: 512x512, Hires resize: big")
    assert cli.unhonoured(unreadable, cli.HONOURED | cli.HARMLESS) == [
        "hires fix is not applied: only its first pass is generated, at 512x512 (the stored image is big)",
        "not applied (hires fix): Hires resize: big"]


def test_hires_flags_and_a_stored_hires_resize():
    parse = cli.build_parser().parse_args
    stored = sdkit.metadata.parse_parameters("a\nSteps: 20, Seed: 1, Size: 512x768, Denoising strength: 0.5, "
                                             "Hires resize: 1024x0, Hires upscaler: Latent (nearest-exact)")
    assert cli._hires(parse([]), stored, None) == dict(hires_resize=(0, 1024), hires_denoising=0.5,
                                                      hires_upscaler="latent_nearest_exact")
    assert cli._hires(parse(["--hires-scale", "2"]), stored, None) == dict(hires_scale=2, hires_denoising=0.5,
                                                                          hires_upscaler="latent_nearest_exact")
    assert cli._hires(parse(["--hires-resize", "1024x1536"]), {}, None) == dict(hires_resize=(1536, 1024))
    with pytest.raises(ValueError, match="give --hires-scale or --hires-resize, not both"):
        cli._hires(parse(["--hires-resize", "0x64", "--hires-scale", "2"]), {}, None)


@pytest.mark.parametrize("parameters,lines", [
    # A1111's rule: a last line with fewer than three pairs is prompt text, so there are no settings at all
    ("a fox in the snow\nSteps: 2, Seed: 5", [
        "sdkit-gen: warning: p.png: no settings line (A1111 needs at least three `Key: value` pairs on the last "
        "line): the whole text is the prompt, and every setting is sdkit's default"]),
    ("a fox\nNegative prompt: dogs\nSteps: 2, Seed: 5, Size: 64x64", [
        "sdkit-gen: warning: p.png does not store CFG scale, Sampler: using sdkit's default"]),
    ("Negative prompt: dogs\nSteps: 2, Seed: 5, Size: 64x64, CFG scale: 7, Sampler: Euler", [
        "sdkit-gen: warning: p.png: the stored prompt is empty"]),
])
def test_from_says_when_settings_are_missing(sd1_folder, tmp_path, gen, parameters, lines):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png", pnginfo=info)
    code, _, err = gen("--from", "p.png", "-m", sd1_folder, *FAST, "-o", "out.png")
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == lines


def test_img2img_with_a_long_prompt(sd1_folder, tmp_path, gen):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 64, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    long_prompt = " ".join(["lighthouse"] * 80)
    code, out, err = gen(long_prompt, "-m", sd1_folder, "--steps", "4", "--backend", "torch", "-i", "in.png",
                         "--strength", "0.5", "-s", "1", "-o", "out.png")
    assert code == 0, err
    assert "warning" not in err and "prompt: 80/150 tokens, 2 chunks" in err  # nothing cut
    stored = sdkit.read_parameters(tmp_path / "out.png")
    assert (stored["strength"], stored["width"], stored["height"]) == (0.5, 64, 72)
    assert out.splitlines()[1].startswith("2 steps in ")  # strength 0.5 of 4 steps


def test_memory_flags_reach_the_pipeline(sd1_folder, gen, monkeypatch):
    memories, load = [], sdkit.load
    monkeypatch.setattr(sdkit, "load", lambda *args, **kw: memories.append(kw["memory"]) or load(*args, **kw))
    code, _, err = gen("a cat", "-m", sd1_folder, *FAST, "--vae-slicing", "off", "--vae-tiling", "on",
                       "--attention-chunk", "16")
    assert code == 0, err
    assert gen("a cat", "-m", sd1_folder, *FAST)[0] == 0
    assert memories == [sdkit.Memory(vae_slicing=False, vae_tiling=True, attention_chunk=16), sdkit.Memory()]


def test_compile_flag_reaches_load(sd1_folder, gen, monkeypatch):
    """--compile asks load() to compile (compiling itself is tested in test_torch_modules; here it is recorded
    and skipped, a compilation taking ~40 s on the CI's CPU)."""
    asked, load = [], sdkit.load
    monkeypatch.setattr(sdkit, "load", lambda *args, **kw: asked.append(kw["compile"]) or load(*args, **{
        **kw, "compile": False}))
    assert gen("a cat", "-m", sd1_folder, *FAST, "--compile")[0] == 0
    assert gen("a cat", "-m", sd1_folder, *FAST)[0] == 0
    assert asked == [True, False]


def test_output_folder_with_trailing_slash_is_created(sd1_folder, tmp_path, gen):
    code, out, err = gen("a cat", "-m", sd1_folder, *FAST, "-s", "3", "-q", "-o", "new/sub/")
    assert code == 0, err
    assert out.splitlines() == [str(Path("new/sub/a-cat-3.png"))] and pngs(tmp_path / "new" / "sub")


@pytest.mark.parametrize("args,message", [
    ([], "PROMPT is required unless --from or --list-samplers is given"),
    (["cat", "-W", "100"], "argument -W/--width: 100 is not a multiple of 8; use 96 or 104"),
    (["cat", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["cat", "--sampler", "dpmpp_sde"], "argument --sampler: invalid choice: 'dpmpp_sde'"),
    (["cat", "--strength", "1.5"], "argument --strength: must be in (0, 1], got 1.5"),
    (["cat", "--schedule", "polyexponential"], "argument --schedule: invalid choice: 'polyexponential'"),
    (["cat", "--guidance-rescale", "1.5"], "argument --guidance-rescale: must be in [0, 1], got 1.5"),
    (["cat", "--hires-resize", "0x0"], "argument --hires-resize: must be WxH in pixels (one side may be 0), got '0x0'"),
    (["cat", "-m", "no/such/model.safetensors", "--sampler", "ddim", "--schedule", "karras"],
     "schedule 'karras' is not available for sampler ddim; use one of: None, 'trailing'"),
    (["cat", "--vae-tiling", "yes"], "argument --vae-tiling: invalid choice: 'yes'"),
    (["cat", "--attention-chunk", "0"], "argument --attention-chunk: must be auto, off or an integer >= 1, got '0'"),
    (["cat", "-o", "cat.jpg"], "-o cat.jpg: sdkit-gen writes PNG files; use a name ending in .png, or a folder"),
    (["cat", "-o", "missing/cat.png"], "-o missing/cat.png: folder 'missing' does not exist"),
    (["cat", "-i", "notes.txt"], "init_image 'notes.txt' cannot be read as an image"),
    (["--from", "notes.txt"], "'notes.txt' cannot be read as an image"),
    (["--from", "empty.png"], "empty.png: its stored parameters hold neither a prompt nor settings"),
    (["--from", "comfy.png"], "'comfy.png': made with ComfyUI, but it stores only the editor's workflow"),
    (["cat", "-m", "no/such/model.safetensors"], "no such file or folder: no/such/model.safetensors"),
])
def test_usage_errors_exit_2_with_one_line_and_no_file(tmp_path, env, args, message):
    (tmp_path / "notes.txt").write_text("not an image")
    for name, chunk, text in (("empty.png", "parameters", "Negative prompt: dogs"), ("comfy.png", "workflow", "{}")):
        info = PngImagePlugin.PngInfo()
        info.add_text(chunk, text)
        Image.new("RGB", (8, 8)).save(tmp_path / name, pnginfo=info)
    r = sdkit_gen(*args, cwd=tmp_path, env=env)
    assert r.returncode == 2 and r.stdout == ""
    error, = [line for line in r.stderr.splitlines() if not line.startswith("loading ")]  # one line
    assert error.startswith("sdkit-gen: error: ") and message in error, r.stderr
    assert pngs(tmp_path) == ["comfy.png", "empty.png", "notes.txt"]


def test_runtime_error_exits_1_and_debug_shows_the_traceback(tmp_path, env):
    r = sdkit_gen("cat", "-m", "nobody/no-such-model", "--backend", "torch", cwd=tmp_path, env=env)
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(
        "sdkit-gen: error: nobody/no-such-model: not in the Hugging Face cache and the Hub is unreachable")
    assert "Traceback" not in r.stderr
    r = sdkit_gen("cat", "-m", "nobody/no-such-model", "--backend", "torch", "--debug", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "HubError" in r.stderr
    assert pngs(tmp_path) == []


def test_ctrl_c_stops_within_a_step_exits_130_and_writes_nothing(sd1_folder, tmp_path, env, request):
    # 1000 steps of a batch of 4 at 256x256: tens of seconds of denoising, so a loaded machine cannot finish
    # the run before the signal lands (at 64x64 it once did, and exited 0).
    slow = ["--steps", "1000", "-b", "4", "-W", "256", "-H", "256", "--backend", "torch", "--device", "cpu"]
    # the bar shows every step (no time-based throttling), so its count is the number of steps done
    env = {**env, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    # SIGINT back to its default in the child, as in a terminal: a test run started in the background
    # (`cmd &` in a script) inherits SIGINT ignored, and Python then installs no Ctrl-C handler at all.
    proc = subprocess.Popen([SDKIT_GEN, "a cat", "-m", sd1_folder, *slow], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    request.addfinalizer(proc.kill)  # never leave a 1000-step run behind when an assertion fails
    err = b""

    def read_available() -> bool:
        """Appends what the child has written to stderr; False at its end."""
        nonlocal err
        while select.select([proc.stderr], [], [], 0)[0]:
            if not (chunk := os.read(proc.stderr.fileno(), 65536)):
                return False
            err += chunk
        return True

    def steps_done() -> int:
        return max(map(int, re.findall(rb"(\d+)/1000", err)), default=0)

    while steps_done() == 0:  # the tqdm bar: denoising is under way
        assert select.select([proc.stderr], [], [], 120)[0] and read_available(), err.decode()
    # Ctrl-C at a known step, not a wall-clock race: stop the child, read all it wrote, then signal and resume it
    proc.send_signal(signal.SIGSTOP)
    os.waitpid(proc.pid, os.WUNTRACED)
    read_available()
    at_signal = steps_done()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(120) == 130
    err += proc.stderr.read()
    assert steps_done() - at_signal <= 1, f"{steps_done() - at_signal} steps after Ctrl-C"
    assert proc.stdout.read() == b"" and b"sdkit-gen: interrupted" in err
    assert pngs(tmp_path) == []


def test_list_samplers(tmp_path, env):
    r = sdkit_gen("--list-samplers", cwd=tmp_path, env=env, command=(sys.executable, "-m", "sdkit"))
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == [*sdkit.SAMPLERS, "plms", "dpmpp_2m_karras"]
    assert "dpmpp_2m   DPM++ 2M                   schedules: default, trailing, karras, exponential, beta" in r.stdout
    assert "euler_a    Euler a        stochastic  schedules: default, trailing\n" in r.stdout
    assert "dpmpp_2m_karras  = dpmpp_2m --schedule karras  (default)" in r.stdout


def test_free_names_and_default_names(tmp_path):
    (tmp_path / "x.png").touch()
    (tmp_path / "x-1.png").touch()
    assert cli._free(tmp_path / "x.png") == tmp_path / "x-2.png"
    assert cli._free(tmp_path / "y.png") == tmp_path / "y.png"
    assert cli._targets(None, "  Ein Fuchs: im Schnee!  ", [3, 4]) == [Path("ein-fuchs-im-schnee-3.png"),
                                                                       Path("ein-fuchs-im-schnee-4.png")]
    assert cli._targets(str(tmp_path), "富士山", [1]) == [tmp_path / "富士山-1.png"]
    assert cli._targets(None, "!!!", [1]) == [Path("image-1.png")]


def test_prompt_flags_reach_generate(sd1_folder, tmp_path, gen, monkeypatch):
    """--clip-skip, --prompt-syntax, --embedding-dir; an embedding that does not fit the model is a warning line,
    A1111 syntax sdkit lacks is named."""
    (tmp_path / "emb").mkdir()
    save_file({"emb_params": np.ones((1, 1024), np.float32)}, tmp_path / "emb" / "sdtwo.safetensors")
    loads, generate = [], sdkit.Pipeline.generate
    monkeypatch.setattr(sdkit.Pipeline, "generate", lambda self, *a, **kw: loads.append(kw) or generate(self, *a, **kw))
    code, _, err = gen("a sdtwo [cat:dog:0.5]", "-m", sd1_folder, *FAST, "--clip-skip", "2", "--embedding-dir", "emb",
                       "-o", "out.png")
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        "sdkit-gen: warning: the prompt's prompt editing [from:to:when] is not supported; read as (weighted) text",
        "sdkit-gen: warning: embedding sdtwo.safetensors is 1024 wide, this model's text encoder 64: it was made for "
        "another model family; 'sdtwo' is read as text"]
    assert (loads[0]["clip_skip"], loads[0]["prompt_syntax"]) == (2, "a1111")
    assert sdkit.read_parameters(tmp_path / "out.png")["clip_skip"] == 2
    code, _, err = gen("a (cat)", "-m", sd1_folder, *FAST, "--prompt-syntax", "plain", "-o", "plain.png")
    assert code == 0 and loads[1]["prompt_syntax"] == "plain" and "clip_skip" not in loads[1]
    assert gen("a", "--embedding-dir", "missing", "-m", sd1_folder, *FAST)[:2] == (2, "")


def test_from_checks_the_stored_embeddings(sd1_folder, tmp_path, gen):
    from safetensors.numpy import save_file

    from sdkit.adapters.embeddings import short_hash

    (tmp_path / "emb").mkdir()
    for name in ("easyneg", "style"):
        save_file({"emb_params": np.full((1, 64), 0.1, np.float32)}, str(tmp_path / "emb" / f"{name}.safetensors"))
    ok = short_hash(tmp_path / "emb" / "easyneg.safetensors")
    text = (f"a fox, style\nNegative prompt: easyneg\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
            f'TI hashes: "easyneg: {ok}, style: 0123456789ab, gone: 111111111111"')
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(tmp_path / "p.png", pnginfo=info)
    code, _, err = gen("--from", "p.png", "-m", sd1_folder, *FAST, "-o", "out.png", "--embedding-dir", "emb")
    assert code == 0, err
    style = tmp_path / "emb" / "style.safetensors"
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"sdkit-gen: warning: embedding 'style': emb/style.safetensors has hash {short_hash(style)}, "
        "the image was made with 0123456789ab",
        "sdkit-gen: warning: embedding 'gone' (TI hashes) is not in the embedding folders (--embedding-dir, "
        "$SDKIT_EMBEDDING_DIRS); its word is read as text"]
    assert sdkit.read_parameters(tmp_path / "out.png")["TI hashes"] == f"style: {short_hash(style)}, easyneg: {ok}"


def test_refiner_and_its_stored_name(sdxl_folder, refiner_folder, gen, tmp_path):
    """--refiner gives the API's ensemble pixels and stores A1111's Refiner pair; --from names a stored refiner in
    a warning unless --refiner is given, and takes its switch point."""
    code, out, err = gen("a fox", "-m", sdxl_folder, *FAST, "-s", "3", "--sampler", "euler", "--refiner",
                         refiner_folder, "--refiner-start", "0.6", "-q")
    assert code == 0, err
    path = Path(out.split()[0])
    api = sdkit.load(sdxl_folder, backend="torch", device="cpu").generate(
        "a fox", steps=2, width=64, height=64, sampler="euler", seed=3, refiner_start=0.6,
        refiner=sdkit.load(refiner_folder, backend="torch", device="cpu"))[0]
    assert np.array_equal(pixels(path), np.asarray(api, dtype=np.int16))
    assert f"Refiner: {Path(refiner_folder).name}, Refiner switch at: 0.6" in Image.open(path).info["parameters"]

    code, _, err = gen("--from", path, "-m", sdxl_folder, *FAST, "-q")
    assert code == 0, err
    assert f"the stored Refiner {Path(refiner_folder).name} (switch at 0.6) is not applied" in err
    code, out, err = gen("--from", path, "-m", sdxl_folder, *FAST, "-q", "--refiner", refiner_folder)
    assert code == 0 and "Refiner" not in err, err
    assert np.array_equal(pixels(out.split()[0]), pixels(path))
    with pytest.raises(SystemExit, match="2"):
        gen("a fox", "-m", sdxl_folder, *FAST, "--refiner-start", "1")


def test_tcd_eta_is_written_and_restored_with_tcd_only(sd1_folder, tmp_path, gen):
    code, _, err = gen("a cat", "-m", sd1_folder, *FAST, "--sampler", "tcd", "--eta", "0.9", "-s", "3", "-o", "tcd.png")
    assert code == 0, err
    assert ", Eta: 0.9," in Image.open(tmp_path / "tcd.png").info["parameters"]
    assert sdkit.read_parameters(tmp_path / "tcd.png")["eta"] == 0.9
    code, _, err = gen("--from", "tcd.png", "-m", sd1_folder, "--backend", "torch", "-o", "again.png")
    assert code == 0 and "warning" not in err, err
    assert np.array_equal(pixels(tmp_path / "tcd.png"), pixels(tmp_path / "again.png"))  # eta 0.9, not 0.3
    code, _, err = gen("--from", "tcd.png", "-m", sd1_folder, "--backend", "torch", "--sampler", "euler", "-o", "e.png")
    assert code == 0 and "Eta" not in Image.open(tmp_path / "e.png").info["parameters"], err  # tcd's eta stays tcd's
    code, _, err = gen("a cat", "-m", sd1_folder, *FAST, "--sampler", "euler", "--eta", "0.5")
    assert code == 2 and err.strip() == "sdkit-gen: error: --eta is a setting of the tcd sampler, not of euler", err
