"""Other tools' generation records as an Infotext: the prompts plus settings under A1111's names.

What a tool records and A1111 has a name for goes under that name ("Steps", "CFG scale", "Sampler", "Clip skip",
"VAE", ...), so one reader (metadata.to_keywords) turns every format into generate()'s keywords; settings A1111 has
no name for keep the tool's own, so that a caller can name what it does not honour. LoRAs become A1111's prompt
tags (`<lora:NAME:WEIGHT>`), which is how A1111 records them. Bookkeeping that changes nothing in the picture
(dates, timings, file formats, values repeated elsewhere) is dropped.
"""

from __future__ import annotations

import json
import re
from .metadata import Infotext


class Refused(ValueError):
    """A tool's metadata that sdkit cannot read reliably; the message names the tool and why."""


# ComfyUI's sampler and scheduler names (SwarmUI and Fooocus use them too) -> A1111's, as Fooocus maps them for
# Civitai; names with no A1111 counterpart pass through unchanged and so stay unknown to sdkit.
COMFY_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "lcm": "LCM", "restart": "Restart", "ddim": "DDIM", "uni_pc": "UniPC",
}
COMFY_SCHEDULERS = {
    "normal": "Normal", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
}
# NovelAI's sampler names -> A1111's: A1111's own aliases (sd_samplers' samplers_map) and NovelAI's longer
# spellings of the same samplers; A1111 turns any other name into "Euler a", sdkit keeps it (and so warns).
NOVELAI_SAMPLERS = {
    "k_euler_ancestral": "Euler a", "k_euler_a": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpm_2_ancestral": "DPM2 a", "k_dpmpp_2s_a": "DPM++ 2S a",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a", "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE", "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive", "ddim": "DDIM",
    "plms": "PLMS",
}
NOVELAI_SCHEDULES = {"karras": "Karras", "exponential": "Exponential", "polyexponential": "Polyexponential"}
# InvokeAI's scheduler names (diffusers schedulers, "_k": Karras sigmas) -> A1111 sampler and schedule type.
INVOKEAI_SCHEDULERS = {
    "ddim": ("DDIM", None), "pndm": ("PLMS", None), "lms": ("LMS", None), "lms_k": ("LMS", "Karras"),
    "heun": ("Heun", None), "heun_k": ("Heun", "Karras"), "euler": ("Euler", None), "euler_k": ("Euler", "Karras"),
    "euler_a": ("Euler a", None), "kdpm_2": ("DPM2", None), "kdpm_2_k": ("DPM2", "Karras"),
    "kdpm_2_a": ("DPM2 a", None), "kdpm_2_a_k": ("DPM2 a", "Karras"), "dpmpp_2m": ("DPM++ 2M", None),
    "dpmpp_2m_k": ("DPM++ 2M", "Karras"), "dpmpp_2m_sde": ("DPM++ 2M SDE", None),
    "dpmpp_2m_sde_k": ("DPM++ 2M SDE", "Karras"), "dpmpp_sde": ("DPM++ SDE", None),
    "dpmpp_sde_k": ("DPM++ SDE", "Karras"), "unipc": ("UniPC", None), "unipc_k": ("UniPC", "Karras"),
    "deis": ("DEIS", None), "deis_k": ("DEIS", "Karras"), "lcm": ("LCM", None),
}


def novelai(items: dict, size: tuple[int, int]) -> Infotext:
    """NovelAI's PNG chunks (or, in its WEBP files, the same as JSON): A1111's read_info_from_image conversion
    (prompt from "Description", Size from the image, "Clip skip: 2, ENSD: 31337"), plus NovelAI's noise schedule
    as the Schedule type, which A1111 drops."""
    try:
        comment = items["Comment"]
        info = json.loads(comment) if isinstance(comment, str) else comment
        prompt = items.get("Description", info.get("prompt"))
        settings = {"Steps": info["steps"], "Sampler": NOVELAI_SAMPLERS.get(info["sampler"], info["sampler"]),
                    "CFG scale": info["scale"], "Seed": info["seed"], "Size": f"{size[0]}x{size[1]}",
                    "Clip skip": 2, "ENSD": 31337}
        negative = info["uc"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Refused(f"made with NovelAI, but its 'Comment' metadata is incomplete or not JSON ({e!r})") from None
    if schedule := NOVELAI_SCHEDULES.get(info.get("noise_schedule")):
        settings["Schedule type"] = schedule
    return Infotext(_str(prompt), _str(negative), settings_text(settings))


def from_json(data, scheme: str | None, size: tuple[int, int]) -> Infotext:
    """JSON where A1111 keeps its text ("parameters" chunk, EXIF UserComment): Fooocus, SwarmUI, NovelAI's WEBP."""
    if isinstance(data, dict):
        if data.get("Software") == "NovelAI":
            return novelai(data, size)
        if isinstance(data.get("sui_image_params"), dict):
            return swarmui(data["sui_image_params"])
        if scheme == "fooocus" or {"full_prompt", "base_model", "guidance_scale"} <= data.keys():
            return fooocus(data)
    software = data.get("software") or data.get("Software") if isinstance(data, dict) else None
    made = f"made with {software}" if isinstance(software, str) else "made with a tool sdkit does not know"
    raise Refused(f"{made}: its parameters are JSON, not AUTOMATIC1111's text; sdkit reads the JSON of Fooocus "
                  "and SwarmUI")


def fooocus(d: dict) -> Infotext:
    """Fooocus's "fooocus" metadata scheme. The prompts are the ones its model saw (full_prompt: the prompt with
    styles and its GPT-2 expansion, joined with ", " as Fooocus's own A1111 scheme does)."""
    prompt = ", ".join(d["full_prompt"]) if isinstance(d.get("full_prompt"), list) else d.get("prompt", "")
    negative = d.get("full_negative_prompt")
    negative = ", ".join(negative) if isinstance(negative, list) else d.get("negative_prompt", "")
    settings = {"Steps": d.get("steps"), "Sampler": comfy_sampler(d.get("sampler")),
                "Schedule type": comfy_schedule(d.get("scheduler")), "CFG scale": d.get("guidance_scale"),
                "Seed": d.get("seed"), "Model": d.get("base_model")}
    if m := re.fullmatch(r"\(\s*'?(\d+)'?\s*,\s*'?(\d+)'?\s*\)", str(d.get("resolution", ""))):
        settings["Size"] = f"{m[1]}x{m[2]}"
    if isinstance(d.get("base_model_hash"), str):
        settings["Model hash"] = d["base_model_hash"][:10]  # A1111's too: the file's sha256, 10 digits
    if d.get("refiner_model") not in (None, "", "None"):
        settings |= {"Refiner": d["refiner_model"], "Refiner switch": d.get("refiner_switch")}
    if d.get("vae") not in (None, "", "None", "Default (model)"):
        settings["VAE"] = d["vae"]
    if d.get("clip_skip") not in (None, 1):
        settings["Clip skip"] = d["clip_skip"]
    settings["Version"] = d.get("version")

    # [name, weight, hash]; the hash is of the whole file, not A1111's "Lora hashes" kind (of the tensors): left out
    loras = [lora[:2] for lora in d.get("loras") or [] if isinstance(lora, list) and len(lora) >= 2]
    prompt = with_lora_tags(prompt, loras)

    done = {"prompt", "negative_prompt", "full_prompt", "full_negative_prompt", "prompt_expansion", "styles",
            "performance", "steps", "sampler", "scheduler", "guidance_scale", "seed", "base_model", "resolution",
            "base_model_hash", "refiner_model", "refiner_model_hash", "refiner_switch", "vae", "clip_skip",
            "version", "loras", "metadata_scheme", "created_by"}
    labels = {"sharpness": "Sharpness", "adm_guidance": "ADM Guidance", "freeu": "FreeU",
              "adaptive_cfg": "CFG Mimicking from TSNR", "overwrite_switch": "Overwrite Switch",
              "refiner_swap_method": "Refiner Swap Method"}  # Fooocus's own labels
    for key, value in d.items():
        if key not in done and not key.startswith("lora_combined_"):
            settings[labels.get(key, key)] = value
    return Infotext(_str(prompt), _str(negative), settings_text(settings))


def swarmui(p: dict) -> Infotext:
    """SwarmUI's sui_image_params. Its sampler and scheduler defaults (ComfyUI's euler / normal) apply when the
    keys are absent, as in SwarmUI."""
    settings = {"Steps": p.get("steps"), "Sampler": comfy_sampler(p.get("sampler", "euler")),
                "Schedule type": comfy_schedule(p.get("scheduler", "normal")), "CFG scale": p.get("cfgscale"),
                "Seed": p.get("seed"), "Model": p.get("model")}
    if "width" in p and "height" in p:
        settings["Size"] = f"{p['width']}x{p['height']}"
    if "initimagecreativity" in p:
        settings["Denoising strength"] = p["initimagecreativity"]
    if str(p.get("clipstopatlayer", -1)) != "-1":  # -2: the penultimate layer, A1111's Clip skip 2
        settings["Clip skip"] = -int(p["clipstopatlayer"])
    if p.get("vae") not in (None, "", "None", "Automatic"):
        settings["VAE"] = p["vae"]
    if "swarm_version" in p:
        settings["Version"] = f"SwarmUI {p['swarm_version']}"

    prompt = _str(p.get("prompt", ""))
    names, weights = _list(p.get("loras")), _list(p.get("loraweights"))
    prompt = with_lora_tags(prompt, [(n, weights[i] if i < len(weights) else 1) for i, n in enumerate(names)])

    done = {"prompt", "negativeprompt", "steps", "sampler", "scheduler", "cfgscale", "seed", "model", "width",
            "height", "initimagecreativity", "clipstopatlayer", "vae", "swarm_version", "loras", "loraweights",
            # bookkeeping: sizes repeated, previews, file format, timings, wildcard records
            "aspectratio", "automaticvae", "nopreviews", "imageformat", "date", "generation_time", "donotsave",
            "images", "batchsize", "wildcardseed", "used_wildcards", "original_prompt", "original_negativeprompt"}
    settings |= {k: v for k, v in p.items() if k not in done}
    negative = p.get("negativeprompt")
    return Infotext(prompt, None if negative is None else _str(negative), settings_text(settings))


def invokeai(d) -> Infotext:
    """InvokeAI 3 and later: its "invokeai_metadata" record (model as {"model_name"} in 3.x, {"name"} later).
    InvokeAI's prompts use its own weighting syntax (compel), kept as written."""
    if not isinstance(d, dict):
        raise Refused("made with InvokeAI, but its 'invokeai_metadata' chunk is not a JSON object")
    sampler, schedule = INVOKEAI_SCHEDULERS.get(d.get("scheduler"), (d.get("scheduler"), None))
    settings = {"Steps": d.get("steps"), "Sampler": sampler, "Schedule type": schedule,
                "CFG scale": d.get("cfg_scale"), "Seed": d.get("seed"), "Model": _model_name(d.get("model"))}
    if "width" in d and "height" in d:
        settings["Size"] = f"{d['width']}x{d['height']}"
    if "img2img" in str(d.get("generation_mode", "")) and "strength" in d:
        settings["Denoising strength"] = d["strength"]
    if isinstance(d.get("clip_skip"), int) and d["clip_skip"] > 0:  # layers skipped; A1111 counts the last as 1
        settings["Clip skip"] = d["clip_skip"] + 1
    if vae := _model_name(d.get("vae")):
        settings["VAE"] = vae
    if "app_version" in d:
        settings["Version"] = f"InvokeAI {d['app_version']}"

    loras = [(_model_name(x.get("model") or x.get("lora")), x.get("weight", 1)) for x in d.get("loras") or []
             if isinstance(x, dict)]
    prompt = with_lora_tags(_str(d.get("positive_prompt", "")), [(n, w) for n, w in loras if n])

    done = {"positive_prompt", "negative_prompt", "steps", "scheduler", "cfg_scale", "seed", "model", "width",
            "height", "strength", "clip_skip", "vae", "app_version", "loras", "generation_mode",
            "rand_device"}  # where the noise was drawn: InvokeAI's seeds do not carry over anyway
    for key, value in d.items():
        empty = value in (None, "", [], {}, False, 0) or (key.endswith("style_prompt") and value in (
            d.get("positive_prompt"), d.get("negative_prompt")))  # SDXL: the same text for both encoders
        if key not in done and not empty:
            settings[key] = value
    negative = d.get("negative_prompt")
    return Infotext(prompt, None if negative is None else _str(negative), settings_text(settings))


def comfy_sampler(name):
    return COMFY_SAMPLERS.get(name, name)


def comfy_schedule(name):
    return COMFY_SCHEDULERS.get(name, name)


def with_lora_tags(prompt: str, loras: list[tuple[str, object]]) -> str:
    """`prompt` with A1111's `<lora:NAME:WEIGHT>` tag for each LoRA (name: the file's stem) it does not yet have."""
    tags = []
    for name, weight in loras:
        stem = file_stem(name)
        if not re.search(rf"<lora:{re.escape(stem)}(:|>)", prompt):
            tags.append(f"<lora:{stem}:{setting_text(weight)}>")
    return ", ".join([prompt, *tags]) if prompt and tags else prompt or ", ".join(tags)


def file_stem(name) -> str:
    """A model file's name as A1111 writes it: no folders, no model-file extension ("lora_1.0" stays)."""
    name = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.lower() in ("safetensors", "sft", "ckpt", "pt", "pth", "bin", "gguf") else name


def _model_name(model) -> str | None:
    if isinstance(model, dict):
        model = model.get("name") or model.get("model_name")
    return model if isinstance(model, str) and model else None


def _list(value) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, list) else []


def _str(value) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def setting_text(value) -> str:
    """A JSON value as A1111 would write it: whole floats without ".0", lists and objects as JSON."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def settings_text(settings: dict) -> dict[str, str]:
    return {k: setting_text(v) for k, v in settings.items() if v is not None}
