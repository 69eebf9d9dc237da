"""AUTOMATIC1111 'parameters' text: writing, reading (ours and A1111's own strings), PNG chunks, atomic saves."""

import struct

import numpy as np
import pytest
from PIL import Image

import sdkit
from sdkit import metadata

PARAMS = dict(prompt="a lighthouse at dawn, oil painting", negative_prompt="blurry", steps=30,
              sampler="dpmpp_2m", schedule="karras", guidance_scale=7.5, seed=1234, width=512, height=768,
              model="stable-diffusion-v1-5/stable-diffusion-v1-5")

# Written by AUTOMATIC1111 1.10 (hires fix, LoRA and an embedding), as found on Civitai.
A1111_TEXT = """masterpiece, best quality, (a red fox:1.2) in the snow, <lora:add_detail:0.5>
BREAK winter forest
Negative prompt: (worst quality:1.4), low quality,
easynegative
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3735928559, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, \
Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", \
TI hashes: "easynegative: c74b4e810b03, other: 0123", Version: v1.10.1"""


def test_format_writes_a1111_layout():
    text = metadata.format_parameters({**PARAMS, "strength": 0.75})
    assert text == (
        "a lighthouse at dawn, oil painting\n"
        "Negative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
        "Model: stable-diffusion-v1-5/stable-diffusion-v1-5, Denoising strength: 0.75, "
        f"Version: sdkit {sdkit.__version__}")


def test_format_omits_a_none_negative_prompt_and_writes_whole_cfg_as_int():
    text = metadata.format_parameters({**PARAMS, "negative_prompt": None, "guidance_scale": 7.0,
                                       "sampler": "euler_a", "schedule": None, "Hires upscaler": None})
    prompt, last = text.split("\n")
    assert prompt == PARAMS["prompt"]
    assert "Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, " in last  # written: A1111 1.9+ reads none as
    # "Automatic", which is Karras for some samplers
    assert "Hires upscaler" not in last  # A1111 writes no key whose value is None


def test_an_explicit_empty_negative_prompt_survives_a_round_trip(tmp_path):
    # For SDXL "" is encoded as text while None is zeros: an empty "Negative prompt: " line keeps them apart.
    # A1111 reads that line as its empty negative prompt, the same as no line (it has only one kind).
    text = metadata.format_parameters({**PARAMS, "negative_prompt": ""})
    assert text.split("\n")[1] == "Negative prompt: "
    path = sdkit.save(_image(text), tmp_path / "empty.png")
    assert sdkit.read_parameters(path)["negative_prompt"] == ""
    assert metadata.parse_parameters(text.replace("Negative prompt: ", "Negative prompt:"))["negative_prompt"] == ""
    assert "negative_prompt" not in metadata.parse_parameters(metadata.format_parameters(
        {**PARAMS, "negative_prompt": None}))


def test_keys_other_features_write_pass_through_as_a1111_writes_them():
    extra = {"Schedule type": "Karras", "Model hash": "6ce0161689", "VAE": "vae-ft-mse-840000",
             "VAE hash": "735e4c3a44", "Lora hashes": "add_detail: 7c6bad76eb54, more_art: 0123456789ab",
             "TI hashes": "easynegative: c74b4e810b03", "Hires sampler": "Euler", "Hires upscaler": "R-ESRGAN 4x+"}
    text = metadata.format_parameters({**PARAMS, **extra})
    assert ('Lora hashes: "add_detail: 7c6bad76eb54, more_art: 0123456789ab", '
            'TI hashes: "easynegative: c74b4e810b03", Hires sampler: Euler, ') in text
    back = metadata.parse_parameters(text)
    assert {k: back[k] for k in extra if k != "Schedule type"} == {
        k: str(v) for k, v in extra.items() if k != "Schedule type"}
    assert (back["sampler"], back["schedule"]) == ("dpmpp_2m", "karras")


A1111_NAMES = {"ddim": "DDIM", "pndm": "PLMS", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "lms": "LMS",
               "dpmpp_2m": "DPM++ 2M", "unipc": "UniPC", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE",
               "lcm": "LCM", "ddpm": "DDPM", "tcd": "TCD", "dpm2": "DPM2", "dpm2_a": "DPM2 a", "deis": "DEIS"}
A1111_SCHEDULES = {None: "Uniform", "trailing": "SGM Uniform", "karras": "Karras", "exponential": "Exponential",
                   "beta": "Beta"}


@pytest.mark.parametrize("sampler,schedule", [(name, schedule) for name, s in sdkit.samplers.SAMPLERS.items()
                                              for schedule in s.schedules])
def test_every_sampler_and_schedule_round_trips(sampler, schedule):
    text = metadata.format_parameters({**PARAMS, "sampler": sampler, "schedule": schedule})
    assert f"Sampler: {A1111_NAMES[sampler]}, Schedule type: {A1111_SCHEDULES[schedule]}," in text
    back = metadata.parse_parameters(text)
    assert (back["sampler"], back.get("schedule")) == (sampler, schedule)


def test_aliases_are_written_as_their_sampler_and_schedule():
    text = metadata.format_parameters({**PARAMS, "sampler": "plms", "schedule": None})
    assert "Sampler: PLMS, Schedule type: Uniform," in text


def test_round_trip_keeps_every_value_and_type():
    params = {**PARAMS, "prompt": "line one, with: colon\nline two\n\"quoted\"", "negative_prompt": "bad\nworse",
              "strength": 0.6, "model": 'C:\\models\\my "best", v2.safetensors', "clip_skip": 2,
              "Note": '"as is"'}
    back = metadata.parse_parameters(metadata.format_parameters(params))
    assert back.pop("Version") == f"sdkit {sdkit.__version__}"
    assert back == params
    assert type(back["steps"]) is int and type(back["guidance_scale"]) is float and type(back["seed"]) is int
    assert type(back["clip_skip"]) is int


def test_round_trip_of_non_latin1_text_through_a_png(tmp_path):
    params = {**PARAMS, "prompt": "富士山の夕焼け, ukiyo-e", "negative_prompt": "ぼやけた"}
    image = _image(metadata.format_parameters(params))
    path = sdkit.save(image, tmp_path / "fuji.png")
    assert _text_chunks(path) == {"parameters": b"iTXt"}
    back = sdkit.read_parameters(path)
    assert back["prompt"] == params["prompt"] and back["negative_prompt"] == params["negative_prompt"]
    assert Image.open(path).getpixel((3, 5)) == image.getpixel((3, 5))


def test_latin1_text_goes_into_a_text_chunk(tmp_path):
    path = sdkit.save(_image(metadata.format_parameters(PARAMS)), tmp_path / "a.png")
    assert _text_chunks(path) == {"parameters": b"tEXt"}
    assert sdkit.read_parameters(path)["seed"] == 1234
    assert sdkit.read_parameters(Image.open(path))["seed"] == 1234


def test_parses_a1111_string_with_quoted_values_and_multiline_prompts():
    p = metadata.parse_parameters(A1111_TEXT)
    assert p["prompt"] == ("masterpiece, best quality, (a red fox:1.2) in the snow, <lora:add_detail:0.5>\n"
                           "BREAK winter forest")
    assert p["negative_prompt"] == "(worst quality:1.4), low quality,\neasynegative"
    assert (p["steps"], p["sampler"], p["schedule"], p["guidance_scale"], p["seed"]) == (25, "dpmpp_2m", "karras",
                                                                                         7.0, 3735928559)
    assert (p["width"], p["height"], p["model"]) == (512, 768, "v1-5-pruned-emaonly")
    assert p["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert p["TI hashes"] == "easynegative: c74b4e810b03, other: 0123"
    assert p["clip_skip"] == 2
    assert {k: p[k] for k in ("Model hash", "hires_scale", "hires_steps", "hires_upscaler", "Version")} == {
        "Model hash": "6ce0161689", "hires_scale": 2.0, "hires_steps": 10, "hires_upscaler": "latent",
        "Version": "v1.10.1"}
    # a hires-fix txt2img: its Denoising strength is the hires pass's, not an image-to-image strength
    assert p["hires_denoising"] == 0.45 and "strength" not in p and "Denoising strength" not in p
    assert not {"Sampler", "Schedule type", "Size", "Steps", "Seed", "CFG scale"} & p.keys()


def test_img2img_denoising_strength_is_the_strength():
    p = metadata.parse_parameters("a cat\nSteps: 20, Seed: 5, Size: 512x512, Denoising strength: 0.6, Mask blur: 4")
    assert p["strength"] == 0.6 and "Denoising strength" not in p and p["mask_blur"] == 4


def test_inpainting_keys_round_trip_as_a1111_writes_them():
    params = dict(prompt="a cat", steps=20, seed=5, width=512, height=512, strength=1.0, mask_blur=4,
                  inpaint_area="masked", inpaint_padding=48)
    text = metadata.format_parameters(params)
    assert "Denoising strength: 1, Mask blur: 4, Inpaint area: Only masked, Only masked padding, pixels: 48" in text
    back = metadata.parse_parameters(text)
    assert {k: back[k] for k in params} == params
    whole = metadata.format_parameters(params | {"inpaint_area": "whole"})
    assert "Inpaint area" not in whole and "padding" not in whole  # A1111 writes neither for the whole picture
    assert metadata.parse_parameters("a\nSteps: 2, Seed: 1, Inpaint area: Whole picture")["inpaint_area"] == "whole"


@pytest.mark.parametrize("first,size,expected", [
    ("0x0", "1024x1024", (512, 512)),    # A1111's old automatic first pass: about 512x512 pixels, multiples of 64
    ("0x0", "1280x768", (704, 448)),
    ("512x384", "1024x768", (512, 384)),
])
def test_old_hires_fix_files_read_as_first_pass_and_hires_resize(first, size, expected):
    # A1111 before its hires-fix rework (late 2022): Size was the final size, "First pass size" the first pass.
    p = metadata.parse_parameters(f"a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: {size}, "
                                  f"Denoising strength: 0.7, First pass size: {first}")
    assert (p["width"], p["height"]) == expected
    assert p["hires_resize"] == tuple(map(int, size.split("x")))[::-1] and p["hires_denoising"] == 0.7
    assert not {"strength", "First pass size"} & p.keys()


def test_indented_lines_and_windows_line_ends_read_as_a1111_reads_them():
    # Written by tools that indent every line after the first (a NovelAI conversion in an f-string inside a
    # method), and by Windows editors.
    indented = ("1girl, library\n    Negative prompt: lowres\n    Steps: 28, Sampler: Euler a, CFG scale: 5, "
                "Seed: 42, Size: 832x1216, Clip skip: 2, ENSD: 31337")
    crlf = "1girl, library\r\nNegative prompt: lowres\r\n" + indented.split("\n")[2].strip() + "\r\n"
    for text in (indented, crlf):
        p = metadata.parse_parameters(text)
        assert (p["prompt"], p["negative_prompt"], p["seed"], p["width"]) == ("1girl, library", "lowres", 42, 832)
        assert p["ENSD"] == "31337"


@pytest.mark.parametrize("pairs,expected", [
    ("Sampler: DPM++ 2M Karras", ("dpmpp_2m", "karras")),  # A1111 before 1.9: schedule inside the name
    ("Sampler: DPM++ 2M, Schedule type: Karras", ("dpmpp_2m", "karras")),
    ("Sampler: DPM++ 2M", ("dpmpp_2m", None)),  # before 1.9: the uniform schedule
    ("Sampler: DPM++ 2M, Schedule type: Automatic", ("dpmpp_2m", "karras")),  # 1.9+: Karras for DPM++ 2M
    ("Sampler: Euler, Schedule type: Automatic", ("euler", None)),
    ("Sampler: Euler, Schedule type: Exponential", ("euler", "exponential")),
    ("Sampler: LMS Karras", ("lms", "karras")),
    ("Sampler: Euler a", ("euler_a", None)),
    ("Sampler: Euler a, Schedule type: SGM Uniform", ("euler_a", "trailing")),
    ("Sampler: PLMS", ("pndm", None)),
    ("Sampler: UniPC, Schedule type: Beta", ("unipc", "beta")),
    ("Sampler: DPM++ 2M SDE, Schedule type: Automatic", ("dpmpp_2m_sde", "exponential")),
    ("Sampler: DPM++ 3M SDE Karras", ("dpmpp_3m_sde", "karras")),
])
def test_sampler_names_from_a1111(pairs, expected):
    p = metadata.parse_parameters(f"fox\nSteps: 20, {pairs}, Seed: 1")
    assert (p["sampler"], p.get("schedule")) == expected


@pytest.mark.parametrize("pairs", ["Sampler: DPM++ SDE Karras", "Sampler: Euler a, Schedule type: Karras",
                                   "Sampler: DPM++ 2M, Schedule type: Polyexponential"])
def test_samplers_sdkit_lacks_stay_under_a1111_keys(pairs):
    p = metadata.parse_parameters(f"fox\nSteps: 20, {pairs}, Seed: 1")
    assert "sampler" not in p
    assert ", ".join(f"{k}: {p[k]}" for k in ("Sampler", "Schedule type") if k in p) == pairs


def test_missing_keys_are_simply_absent():
    p = metadata.parse_parameters("a cat\nSteps: 20, Seed: 5, Size: 640x448")
    # no negative prompt line: no key, so generate() gets its default None (SDXL: zero uncond, not "")
    assert p == {"prompt": "a cat", "steps": 20, "seed": 5, "width": 640, "height": 448}


def test_text_without_a_parameters_line_is_all_prompt():
    # A1111's rule: fewer than three `Key: value` pairs on the last line means it is still prompt.
    assert metadata.parse_parameters("a cat\nstyle: watercolor") == {"prompt": "a cat\nstyle: watercolor"}
    assert metadata.parse_parameters("Negative prompt: dogs\nSteps: 4, Seed: 1, CFG scale: 3") == {
        "prompt": "", "negative_prompt": "dogs", "steps": 4, "seed": 1, "guidance_scale": 3.0}


def test_unreadable_numbers_are_kept_as_found():
    p = metadata.parse_parameters("a cat\nSteps: many, Seed: 5, Size: huge")
    assert p["Steps"] == "many" and p["Size"] == "huge" and p["seed"] == 5 and "steps" not in p


def test_format_refuses_unknown_sampler():
    with pytest.raises(ValueError, match="sampler 'dpmpp_sde' is unknown; use one of: ddim"):
        metadata.format_parameters({**PARAMS, "sampler": "dpmpp_sde"})


def test_read_parameters_errors_name_the_file(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(ValueError, match="plain.png.*no generation parameters"):
        sdkit.read_parameters(plain)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png.*cannot be read as an image"):
        sdkit.read_parameters(text)


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        sdkit.save(_image("x"), tmp_path / "a.jpg")
    with pytest.raises(OSError):  # PNG cannot hold CMYK: the encoder fails after the temp file exists
        sdkit.save(Image.new("CMYK", (8, 8)), tmp_path / "cmyk.png")
    assert list(tmp_path.iterdir()) == []
    sdkit.save(_image("x"), tmp_path / "a.png")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def _image(parameters: str) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.info["parameters"] = parameters
    return image


def _text_chunks(path) -> dict[str, bytes]:
    """keyword -> chunk type (tEXt, zTXt, iTXt) of the PNG's text chunks, read from the raw file."""
    data, pos, found = path.read_bytes(), 8, {}
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            found[data[pos + 8:pos + 8 + length].split(b"\0")[0].decode("latin-1")] = kind
        pos += 12 + length
    return found


def test_cfg_rescale_round_trips_and_is_written_only_when_used():
    text = metadata.format_parameters({**PARAMS, "guidance_rescale": 0.7})
    assert ", CFG rescale: 0.7, " in text
    assert metadata.parse_parameters(text)["guidance_rescale"] == 0.7
    assert "CFG rescale" not in metadata.format_parameters({**PARAMS, "guidance_rescale": 0.0})


def test_eta_is_tcds_and_an_ancestral_eta_stays_a1111s():
    text = metadata.format_parameters({**PARAMS, "sampler": "tcd", "schedule": None, "eta": 0.5})
    assert ", Eta: 0.5, " in text
    assert metadata.parse_parameters(text)["eta"] == 0.5
    euler_a = metadata.parse_parameters("a\nSteps: 20, Sampler: Euler a, Seed: 1, Eta: 0.67, Size: 8x8")
    assert euler_a["Eta"] == "0.67" and "eta" not in euler_a
