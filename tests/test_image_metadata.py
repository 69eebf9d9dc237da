"""read_parameters on files as other tools write them: where each puts its metadata (PNG chunks, EXIF), in what
encoding, and what sdkit reads from it or refuses. Each file reproduces the tool's structure byte for byte (the
chunk names, JSON layouts and EXIF encodings of its source code and published examples), built here."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

import sdkit

A1111 = ("a red fox in the snow, (winter:1.2), 富士山\nNegative prompt: blurry, lowres\n"
         "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
         'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", '
         "Version: v1.10.1")
A1111_KEYWORDS = {"prompt": "a red fox in the snow, (winter:1.2), 富士山", "negative_prompt": "blurry, lowres",
                  "steps": 20, "sampler": "dpmpp_2m", "schedule": "karras", "guidance_scale": 7.0, "seed": 1234,
                  "width": 512, "height": 768, "Model hash": "6ce0161689", "model": "v1-5-pruned-emaonly",
                  "Lora hashes": "add_detail: 7c6bad76eb54", "Version": "v1.10.1"}


def png(tmp_path, name="x.png", **chunks) -> str:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key.replace("_", "-") if key == "sd_metadata" else key, value)
    path = tmp_path / name
    Image.new("RGB", (64, 96), "gray").save(path, pnginfo=info)
    return path


def exif_user_comment(comment: bytes, order: str = ">") -> bytes:
    """EXIF holding one UserComment, laid out as piexif.dump writes it (A1111's save_image_with_geninfo): TIFF
    header, IFD0 with only the Exif IFD pointer, the Exif IFD (no next-IFD field), then the comment."""
    head = (b"MM" if order == ">" else b"II") + struct.pack(order + "HI", 42, 8)
    ifd0 = struct.pack(order + "HHHII", 1, 0x8769, 4, 1, 26) + struct.pack(order + "I", 0)
    exif_ifd = struct.pack(order + "HHHII", 1, 0x9286, 7, len(comment), 40)
    return b"Exif\0\0" + head + ifd0 + exif_ifd + comment


def a1111_jpeg_or_webp(tmp_path, text: str, fmt: str, order: str = ">", encoding: str = "utf-16-be"):
    """A1111's JPEG/WEBP: the pixels saved by PIL, then piexif.insert of
    UserComment.dump(text, encoding="unicode") = b"UNICODE\\0" + UTF-16 (big-endian in piexif)."""
    exif = exif_user_comment(b"UNICODE\0" + text.encode(encoding), order)
    path = tmp_path / f"a1111.{fmt.lower()}"
    Image.new("RGB", (64, 96), "gray").save(path, format=fmt, exif=exif)  # WEBP: PIL drops "Exif\0\0", as piexif
    return path


def test_exif_layout_is_piexifs():
    # piexif.dump({"Exif": {UserComment: UserComment.dump("a fox, 富士\nSteps: 20", encoding="unicode")}})
    piexif = bytes.fromhex(
        "4578696600004d4d002a00000008000187690004000000010000001a000000000001928600070000002e00000028554e49434f"
        "444500006100200066006f0078002c00205bcc58eb000a00530074006500700073003a002000320030")
    assert exif_user_comment(b"UNICODE\0" + "a fox, 富士\nSteps: 20".encode("utf-16-be")) == piexif


@pytest.mark.parametrize("chunk", ["tEXt", "zTXt", "iTXt"])
def test_a1111_png_text_chunks(tmp_path, chunk):
    info = PngImagePlugin.PngInfo()
    if chunk == "iTXt":
        info.add_itxt("parameters", A1111, zip=False)
    else:
        info.add_text("parameters", A1111.replace("富士山", "Fuji"), zip=chunk == "zTXt")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    assert bytes(chunk, "ascii") in (tmp_path / "a.png").read_bytes()
    expected = A1111_KEYWORDS if chunk == "iTXt" else {**A1111_KEYWORDS, "prompt": A1111_KEYWORDS["prompt"].replace(
        "富士山", "Fuji")}
    assert sdkit.read_parameters(tmp_path / "a.png") == expected


def test_a1111_png_chunk_after_the_pixel_data(tmp_path):
    # Some writers append text chunks after IDAT, where PIL finds them only once the pixels are loaded.
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    body = b"parameters\0" + A1111.replace("富士山", "Fuji").encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    (tmp_path / "a.png").write_bytes(data[:iend] + chunk + data[iend:])
    assert sdkit.read_parameters(tmp_path / "a.png")["seed"] == 1234


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a1111_jpeg_and_webp_exif_user_comment(tmp_path, fmt):
    path = a1111_jpeg_or_webp(tmp_path, A1111, fmt)
    assert sdkit.read_parameters(path) == A1111_KEYWORDS


@pytest.mark.parametrize("order,encoding", [("<", "utf-16-le"), ("<", "utf-16"), (">", "utf-16-le")])
def test_user_comment_in_other_byte_orders(tmp_path, order, encoding):
    # exiftool and Windows write UTF-16 in the file's byte order (here little-endian), some with a BOM; a
    # big-endian file with a little-endian comment is read right too (from its zero high bytes).
    path = a1111_jpeg_or_webp(tmp_path, A1111, "JPEG", order, encoding)
    assert sdkit.read_parameters(path) == A1111_KEYWORDS


def test_ascii_and_undefined_user_comments(tmp_path):
    text = A1111.replace("富士山", "Fuji")
    for prefix in (b"ASCII\0\0\0", b"\0" * 8):
        exif = exif_user_comment(prefix + text.encode())
        Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg", exif=exif)
        assert sdkit.read_parameters(tmp_path / "a.jpg")["prompt"] == "a red fox in the snow, (winter:1.2), Fuji"


def test_novelai_png_reads_as_a1111_converts_it(tmp_path):
    # NovelAI's PNG chunks (Title, Description, Software, Source, Generation time, Comment), its Comment JSON
    # layout as in NovelAI V3 images.
    comment = {"prompt": "1girl, silver hair, library, {{soft light}}", "steps": 28, "height": 1216,
               "width": 832, "scale": 5.0, "uncond_scale": 1.0, "cfg_rescale": 0.0, "seed": 3141592653,
               "n_samples": 1, "hide_debug_overlay": False, "noise_schedule": "native", "legacy_v3_extend": False,
               "reference_information_extracted": 1.0, "reference_strength": 0.6, "sampler": "k_euler_ancestral",
               "controlnet_strength": 1.0, "controlnet_model": None, "dynamic_thresholding": False,
               "dynamic_thresholding_percentile": 0.999, "dynamic_thresholding_mimic_scale": 10.0, "sm": False,
               "sm_dyn": False, "skip_cfg_below_sigma": 0.0, "lora_unet_weights": None, "lora_clip_weights": None,
               "uc": "lowres, {bad}, error, fewer, extra, missing, worst quality",
               "request_type": "PromptGenerateRequest",
               "signed_hash": "dGVzdA=="}
    path = png(tmp_path, Title="AI generated image", Description=comment["prompt"], Software="NovelAI",
               Source="Stable Diffusion XL C1E1DE52", **{"Generation time": "6.81"}, Comment=json.dumps(comment))
    # A1111: "{Description}\nNegative prompt: {uc}\nSteps: 28, Sampler: Euler a, CFG scale: 5.0, Seed: ...,
    # Size: {image size}, Clip skip: 2, ENSD: 31337"
    assert sdkit.read_parameters(path) == {
        "prompt": "1girl, silver hair, library, {{soft light}}", "negative_prompt": comment["uc"], "steps": 28,
        "sampler": "euler_a", "guidance_scale": 5.0, "seed": 3141592653, "width": 64, "height": 96,
        "clip_skip": 2, "ENSD": "31337"}
    karras = png(tmp_path, "k.png", Description="x", Software="NovelAI",
                 Comment=json.dumps({**comment, "noise_schedule": "karras", "sampler": "k_dpmpp_2m"}))
    p = sdkit.read_parameters(karras)
    assert (p["sampler"], p["schedule"]) == ("dpmpp_2m", "karras")  # the schedule A1111 drops


def test_novelai_webp_keeps_its_chunks_as_json_in_the_user_comment(tmp_path):
    chunks = {"Description": "a lighthouse", "Software": "NovelAI", "Source": "NovelAI Diffusion V4.5 4BDE2A90",
              "Comment": json.dumps({"prompt": "a lighthouse", "uc": "", "steps": 23, "scale": 6, "seed": 7,
                                     "sampler": "k_euler", "noise_schedule": "native"})}
    exif = exif_user_comment(b"UNICODE\0" + json.dumps(chunks).encode("utf-16-be"))
    Image.new("RGB", (32, 48)).save(tmp_path / "nai.webp", exif=exif)
    p = sdkit.read_parameters(tmp_path / "nai.webp")
    assert (p["prompt"], p["negative_prompt"], p["sampler"], p["steps"], p["width"]) == ("a lighthouse", "", "euler",
                                                                                        23, 32)


FOOOCUS = {  # Fooocus 2.5's "fooocus" scheme: json.dumps(dict(sorted(...)))
    "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion",
    "base_model_hash": "aeb7e9e6897a1e58b10494bd989d001e3d4bc9b634633cd7b559838f612c2867",
    "full_negative_prompt": ["unrealistic, saturated, high contrast", "anime, cartoon"],
    "full_prompt": ["cinematic still a cat on a sofa . emotional, harmonious", "a cat on a sofa, intricate"],
    "guidance_scale": 4, "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]],
    "metadata_scheme": "fooocus", "negative_prompt": "", "performance": "Speed", "prompt": "a cat on a sofa",
    "prompt_expansion": "a cat on a sofa, intricate", "refiner_model": "None", "refiner_switch": 0.5,
    "resolution": "(1152, 896)", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "3457234239",
    "sharpness": 2, "steps": 30, "styles": "['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']",
    "vae": "Default (model)", "version": "Fooocus v2.5.5"}
FOOOCUS_KEYWORDS = {
    "prompt": "cinematic still a cat on a sofa . emotional, harmonious, a cat on a sofa, intricate, "
              "<lora:sd_xl_offset_example-lora_1.0:0.1>",
    "negative_prompt": "unrealistic, saturated, high contrast, anime, cartoon", "steps": 30, "guidance_scale": 4.0,
    "seed": 3457234239, "model": "juggernautXL_v8Rundiffusion", "width": 1152, "height": 896,
    "Model hash": "aeb7e9e689", "Version": "Fooocus v2.5.5",
    "ADM Guidance": "(1.5, 0.8, 0.3)", "Sharpness": "2", "sampler": "dpmpp_2m_sde", "schedule": "karras"}


def test_fooocus_png(tmp_path):
    path = png(tmp_path, parameters=json.dumps(FOOOCUS), fooocus_scheme="fooocus")
    assert sdkit.read_parameters(path) == FOOOCUS_KEYWORDS


def test_fooocus_jpeg(tmp_path):
    # Fooocus's get_exif(): PIL's Exif with UserComment and MakerNote in IFD0, as ASCII text.
    exif = Image.Exif()
    exif[0x9286] = json.dumps(FOOOCUS)
    exif[0x0131] = "Fooocus v2.5.5"
    exif[0x927C] = "fooocus"
    Image.new("RGB", (8, 8)).save(tmp_path / "f.jpg", quality=95, exif=exif)
    assert sdkit.read_parameters(tmp_path / "f.jpg") == FOOOCUS_KEYWORDS


def test_swarmui_png(tmp_path):
    # SwarmUI's documented layout ("parameters" iTXt, indented JSON), with a LoRA and settings sdkit lacks.
    params = {"sui_image_params": {
        "prompt": "a photo of a cat", "negativeprompt": "", "model": "OfficialStableDiffusion/sd_xl_base_1.0",
        "seed": 1, "steps": 20, "cfgscale": 7.0, "aspectratio": "1:1", "width": 1024, "height": 1024,
        "sampler": "dpmpp_2m", "scheduler": "karras", "automaticvae": True, "loras": ["pixel-art-xl"],
        "loraweights": ["0.8"], "clipstopatlayer": -2, "refinercontrolpercentage": 0.2, "swarm_version": "0.9.3.1"},
        "sui_extra_data": {"date": "2024-11-13", "generation_time": "6.11 (prep) and 4.84 (gen) seconds"}}
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", json.dumps(params, indent=2))
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png", pnginfo=info)
    assert sdkit.read_parameters(tmp_path / "s.png") == {
        "prompt": "a photo of a cat, <lora:pixel-art-xl:0.8>", "negative_prompt": "", "steps": 20,
        "sampler": "dpmpp_2m", "schedule": "karras", "guidance_scale": 7.0, "seed": 1,
        "model": "OfficialStableDiffusion/sd_xl_base_1.0",
        "width": 1024, "height": 1024, "clip_skip": 2, "Version": "SwarmUI 0.9.3.1",
        "refinercontrolpercentage": "0.2"}


def test_swarmui_defaults_and_lora_tags_already_in_the_prompt(tmp_path):
    params = {"sui_image_params": {"prompt": "<lora:pixel-art-xl:0.5> a cat", "loras": "pixel-art-xl",
                                   "loraweights": "0.5", "seed": 3, "steps": 4, "cfgscale": 1}}
    p = sdkit.read_parameters(png(tmp_path, parameters=json.dumps(params)))
    assert p["prompt"] == "<lora:pixel-art-xl:0.5> a cat"  # not tagged twice
    assert (p["Sampler"], p["Schedule type"]) == ("Euler", "Normal")  # SwarmUI's defaults: ComfyUI's euler / normal


COMFY_DEFAULT = {  # ComfyUI's default workflow as its "prompt" chunk (API format)
    "3": {"inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler_ancestral",
                     "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
                     "negative": ["7", 0], "latent_image": ["5", 0]}, "class_type": "KSampler",
          "_meta": {"title": "KSampler"}},
    "4": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "class_type": "CheckpointLoaderSimple"},
    "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage"},
    "6": {"inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
                     "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
    "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode"},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"}}


def comfy_png(tmp_path, graph, workflow=True):
    chunks = {"prompt": json.dumps(graph)} if graph is not None else {}
    if workflow:
        chunks["workflow"] = json.dumps({"last_node_id": 9, "last_link_id": 9, "nodes": [], "links": [],
                                         "groups": [], "config": {}, "extra": {}, "version": 0.4})
    return png(tmp_path, **chunks)


def test_comfyui_default_workflow(tmp_path):
    assert sdkit.read_parameters(comfy_png(tmp_path, COMFY_DEFAULT)) == {
        "prompt": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
        "negative_prompt": "text, watermark", "steps": 20, "guidance_scale": 8.0, "seed": 156680208700286,
        "width": 512, "height": 512, "model": "v1-5-pruned-emaonly", "Sampler": "Euler a", "Schedule type": "Normal"}


def test_comfyui_loras_and_clip_skip(tmp_path):
    graph = json.loads(json.dumps(COMFY_DEFAULT))
    graph["10"] = {"inputs": {"lora_name": "styles\\add_detail.safetensors", "strength_model": 0.5,
                              "strength_clip": 1, "model": ["4", 0], "clip": ["4", 1]}, "class_type": "LoraLoader"}
    graph["11"] = {"inputs": {"lora_name": "lcm-lora-sdv1-5.safetensors", "strength_model": 1.0, "model": ["10", 0]},
                   "class_type": "LoraLoaderModelOnly"}
    graph["12"] = {"inputs": {"stop_at_clip_layer": -2, "clip": ["10", 1]}, "class_type": "CLIPSetLastLayer"}
    graph["3"]["inputs"] |= {"model": ["11", 0], "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["12", 0]
    p = sdkit.read_parameters(comfy_png(tmp_path, graph))
    assert p["prompt"].endswith(", , purple galaxy bottle,, <lora:lcm-lora-sdv1-5:0:1>, <lora:add_detail:1:0.5>")
    assert (p["sampler"], p["schedule"], p["clip_skip"]) == ("dpmpp_2m", "karras", 2)


@pytest.mark.parametrize("change,why", [
    (lambda g: g.update({"20": {**g["3"], "inputs": {**g["3"]["inputs"], "denoise": 0.5}}}), "has 2 sampler nodes"),
    (lambda g: g["3"]["inputs"].update(denoise=0.8700000000000001), "denoises 0.87 of the way"),
    (lambda g: g["6"]["inputs"].update(text=["30", 0]), "CLIPTextEncode's text comes from another node"),
    (lambda g: g["3"]["inputs"].update(positive=["9", 0]), "KSampler's positive comes from a SaveImage node"),
    (lambda g: g["3"]["inputs"].update(seed=["40", 0]), "seed comes from another node"),
])
def test_comfyui_graphs_beyond_the_basic_one_are_refused(tmp_path, change, why):
    graph = json.loads(json.dumps(COMFY_DEFAULT))
    change(graph)
    with pytest.raises(ValueError, match=r"x\.png': made with ComfyUI: sdkit reads a basic text-to-image graph") as e:
        sdkit.read_parameters(comfy_png(tmp_path, graph))
    assert why in str(e.value) and "\n" not in str(e.value)


def test_comfyui_workflow_only_is_refused(tmp_path):
    with pytest.raises(ValueError, match="made with ComfyUI, but it stores only the editor's workflow"):
        sdkit.read_parameters(comfy_png(tmp_path, None))


def test_comfyui_webp_graph_in_exif(tmp_path):
    # ComfyUI's SaveAnimatedWEBP: "prompt:" + JSON in EXIF Model (0x0110), "workflow:" + JSON in Make (0x010F).
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(COMFY_DEFAULT)
    exif[0x010F] = "workflow:{}"
    Image.new("RGB", (8, 8)).save(tmp_path / "c.webp", exif=exif)
    assert sdkit.read_parameters(tmp_path / "c.webp")["seed"] == 156680208700286


def test_invokeai_3(tmp_path):
    meta = {"app_version": "3.3.0post3", "generation_mode": "txt2img", "positive_prompt": "landscape",
            "negative_prompt": "low quality", "width": 768, "height": 432, "seed": 356120443, "rand_device": "cpu",
            "cfg_scale": 7.5, "steps": 50, "scheduler": "dpmpp_2m_k", "clip_skip": 0,
            "model": {"model_name": "amixx_3Prunedfp16", "base_model": "sd-1", "model_type": "main"},
            "controlnets": [], "ipAdapters": [], "t2iAdapters": [], "loras": [],
            "vae": {"model_name": "sd-vae-ft-mse", "base_model": "sd-1"}}
    path = png(tmp_path, invokeai_metadata=json.dumps(meta), invokeai_graph="{}")
    assert sdkit.read_parameters(path) == {
        "prompt": "landscape", "negative_prompt": "low quality", "steps": 50, "sampler": "dpmpp_2m",
        "schedule": "karras",
        "guidance_scale": 7.5, "seed": 356120443, "model": "amixx_3Prunedfp16", "width": 768, "height": 432,
        "VAE": "sd-vae-ft-mse", "Version": "InvokeAI 3.3.0post3"}


@pytest.mark.parametrize("scheduler,expected", [("deis", ("deis", None)), ("deis_k", ("deis", "karras"))])
def test_invokeai_deis(tmp_path, scheduler, expected):
    """InvokeAI's deis is diffusers' DEISMultistepScheduler with its defaults, sdkit's deis; _k: Karras sigmas."""
    meta = {"app_version": "3.3.0post3", "generation_mode": "txt2img", "positive_prompt": "landscape", "width": 64,
            "height": 64, "seed": 1, "cfg_scale": 7.5, "steps": 20, "scheduler": scheduler}
    p = sdkit.read_parameters(png(tmp_path, invokeai_metadata=json.dumps(meta), invokeai_graph="{}"))
    assert (p["sampler"], p.get("schedule")) == expected


def test_invokeai_5_with_lora_img2img_and_clip_skip(tmp_path):
    meta = {"generation_mode": "sdxl_img2img", "positive_prompt": "a watercolor fox", "negative_prompt": "photo",
            "width": 1024, "height": 1024, "seed": 99, "steps": 30, "cfg_scale": 7.5, "scheduler": "euler_a",
            "strength": 0.7, "clip_skip": 1, "positive_style_prompt": "a watercolor fox", "negative_style_prompt": "",
            "model": {"key": "abc", "hash": "blake3:00", "name": "Juggernaut XL v9", "base": "sdxl", "type": "main"},
            "loras": [{"model": {"key": "l1", "name": "watercolor_xl", "base": "sdxl", "type": "lora"}, "weight": 0.6}],
            "hrf_enabled": True, "app_version": "5.4.2"}
    p = sdkit.read_parameters(png(tmp_path, invokeai_metadata=json.dumps(meta)))
    assert p == {"prompt": "a watercolor fox, <lora:watercolor_xl:0.6>", "negative_prompt": "photo", "steps": 30,
                 "sampler": "euler_a", "guidance_scale": 7.5, "seed": 99, "model": "Juggernaut XL v9", "width": 1024,
                 "height": 1024, "strength": 0.7, "clip_skip": 2, "Version": "InvokeAI 5.4.2",
                 "hrf_enabled": "true"}


@pytest.mark.parametrize("chunks,message", [
    ({"sd_metadata": json.dumps({"model": "stable diffusion", "app_id": "invoke-ai/InvokeAI", "app_version": "2.2.4",
                                 "image": {"prompt": [{"prompt": "a cat [ugly]", "weight": 1.0}], "steps": 50}}),
      "Dream": '"a cat [ugly]" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms'}, "made with InvokeAI 2.x"),
    ({"parameters": json.dumps({"Prompt": "a cat", "Negative": "", "steps": 30, "cfg": 8, "seed": 1,
                                "software": "RuinedFooocus"})}, "made with RuinedFooocus: its parameters are JSON"),
    ({"parameters": '["a cat"]'}, "made with a tool sdkit does not know: its parameters are JSON"),
    ({"Software": "NovelAI", "Description": "a cat", "Comment": "{not json"}, "made with NovelAI, but its 'Comment'"),
    ({"prompt": "{broken", "workflow": "{}"}, "made with ComfyUI, but its 'prompt' chunk is not a node graph"),
    ({"prompt": "a plain-text prompt chunk", "Title": "holiday"}, "has no generation parameters"),
])
def test_refusals_are_one_line_naming_the_file_and_the_tool(tmp_path, chunks, message):
    with pytest.raises(ValueError) as e:
        sdkit.read_parameters(png(tmp_path, **chunks))
    assert str(e.value).startswith(f"{str(tmp_path / 'x.png')!r}") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_a1111_prompt_starting_with_a_brace_is_text(tmp_path):
    # Dynamic Prompts' {a|b} syntax is not JSON
    p = sdkit.read_parameters(png(tmp_path, parameters="{red|blue} fox\nSteps: 2, Seed: 1, CFG scale: 3"))
    assert (p["prompt"], p["steps"]) == ("{red|blue} fox", 2)


def test_pil_image_in_memory(tmp_path):
    image = Image.open(io.BytesIO(a1111_jpeg_or_webp(tmp_path, A1111, "JPEG").read_bytes()))
    assert sdkit.read_parameters(image) == A1111_KEYWORDS
