"""Open a model: a diffusers folder or an original single .safetensors file -> Checkpoint.

Only the safetensors headers are read here; every weight stays a lazy TensorRef under its canonical
(diffusers) name, so a backend reads each tensor once, straight into its own arrays.

Single files carry no configs: they are inferred from tensor shapes (see sdkit.ldm), with the family's
published scheduler config and tokenizer bundled in sdkit/data (sdkit.families). What the UNet predicts is
not in the shapes; sdkit takes it from, in this order:

    `prediction="v"` or `"epsilon"`, which overrides everything below (for folders too);
    the file's metadata: modelspec.prediction_type (or ComfyUI's modelspec.predict_key);
    a `v_pred` marker tensor (ComfyUI's convention), with `ztsnr` for a zero-terminal-SNR schedule;
    modelspec.architecture (stable-diffusion-v2-768-v, -v2-512, ...);
    the file name: SD2 files predict v at 768 pixels unless the name says 512 or base (v2-1_512-ema-pruned,
    sd21-base...), which means epsilon at 512 pixels; SD1 and SDXL files predict epsilon.

An SDXL file with `edm_mean` / `edm_std` tensors is an EDM model, Playground v2.5 (sdkit.families.PLAYGROUND):
its published EDM scheduler config, VAE scaling factor 0.5 and those tensors as the VAE's latents_mean / _std.

A file that is not a checkpoint sdkit can load (a LoRA, an embedding, a lone VAE or UNet, ControlNet, Flux,
SD3, an inpainting model, ...) is refused in one line naming what it is (sdkit.identify), as is a diffusers
folder of another pipeline type. A checkpoint published without a VAE ("noVAE") loads when a VAE is given.

`vae=` replaces the checkpoint's VAE with one from a file (A1111's way: LDM names `encoder.*`/`decoder.*` as
vae-ft-mse-840000 and sdxl_vae ship them, with or without `first_stage_model.`, or diffusers' names; a whole
checkpoint lends its VAE) or a diffusers folder (an AutoencoderKL's, or a pipeline's vae/). The checkpoint's
scaling factor stays, as in A1111 and diffusers: a VAE's config says nothing about the UNet's latents.

Pickled checkpoints (.ckpt, .pt, .bin, .pth) are refused without being opened: unpickling can run code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import identify, ldm
from .config import SchedulerConfig, TextEncoderConfig, UNetConfig, VAEConfig
from .errors import CheckpointError
from .families import (ARCHITECTURES, FAMILIES, ORDINARY, PLAYGROUND, PREDICTION_NAMES, UNET_PREFIX, V_PRED, VAE_PREFIX,
                       ZTSNR, Layout, Recipe, recipe_from_name, recipe_from_scheduler, time_ids)
from .interfaces import TensorRef, Weights
from .weights import read_values

DATA = Path(__file__).parent / "data"
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
TEXT_COMPONENTS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}  # and their tokenizers
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' file names
PICKLES = (".ckpt", ".pt", ".pth", ".bin")
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
# diffusers pipelines whose folders sdkit loads (image-to-image ones hold the same components), and what the
# classes of others are, for the refusal
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
             "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
OTHER_PIPELINES = {"Flux": "Flux", "StableDiffusion3": "Stable Diffusion 3", "ControlNet": "a ControlNet pipeline",
                   "Cascade": "Stable Cascade", "PixArt": "PixArt",
                   "Kolors": "Kolors", "AuraFlow": "AuraFlow", "Video": "a video pipeline", "Onnx": "an ONNX export"}
MAX_HEADER = 100 * 2**20  # safetensors' own limit


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    name: str  # for display and image metadata: folder name, file stem or Hub repo id
    family: str  # "sd1" | "sd2" | "sdxl" (sdkit.families)
    text_encoders: tuple[TextEncoderConfig, ...]
    tokenizers: tuple[Path | str, ...]  # a tokenizer folder, or a bundled tokenizer's name
    unet: UNetConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    # SDXL: with no negative prompt, the uncond context and pooled embedding are zeros (not the encoding of "")
    force_zeros_for_empty_prompt: bool
    weights: dict[str, Weights]  # "unet", "vae" and the text encoders ("text_encoder", "text_encoder_2")
    # SDXL micro-conditioning: the values the UNet's time ids hold (families.BASE_TIME_IDS or REFINER_TIME_IDS)
    time_ids: tuple[str, ...] = ()
    recommended: Recipe = ORDINARY  # generate()'s defaults: a few-step model's recipe, else today's
    vae_file: Path | None = None  # the VAE given with vae=, replacing the checkpoint's (a file or a folder)
    vae_name: str | None = None  # its display name: the file's name (as A1111 writes `VAE`), folder or Hub repo id

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at."""
        side = self.unet.sample_size * self.vae.scale
        return side, side

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders' components, in the order of text_encoders (the refiner has text_encoder_2 only)."""
        return tuple(c for c in TEXT_COMPONENTS if c in self.weights)


def open_checkpoint(path: str | Path, *, prediction: str | None = None, prefer_fp16: bool = False,
                    name: str | None = None, vae: str | Path | None = None,
                    vae_name: str | None = None) -> Checkpoint:
    """A diffusers folder or a single-file .safetensors checkpoint -> Checkpoint (headers only).

    prediction: "epsilon" or "v" overrides what the config (or the rule above) says the UNet predicts.
    prefer_fp16: in folders, read `*.fp16.safetensors` variants where they exist.
    name: the display name (e.g. the Hub repo id the folder came from); default the folder name / file stem.
    vae: a VAE file or folder replacing the checkpoint's (see open_vae); vae_name its display name (default the
    file's name or the folder's)."""
    path = Path(path).expanduser()
    if prediction is not None and prediction not in PREDICTIONS:
        raise CheckpointError(f"prediction={prediction!r}; use 'epsilon', 'v' or None (from the checkpoint)")
    if path.suffix.lower() in PICKLES:
        raise CheckpointError(f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code "
                              "when loaded; sdkit never opens them. Use the model's .safetensors file")
    if not path.exists():
        raise CheckpointError(f"no such file or folder: {path}")
    if path.is_dir():
        ckpt = _open_folder(path, prefer_fp16, vae_given=vae is not None)
    elif path.suffix.lower() == ".safetensors":
        ckpt = _open_single_file(path, overridden=prediction is not None, vae_given=vae is not None)
    else:
        raise CheckpointError(f"{path}: not a .safetensors file or a diffusers folder")
    if vae is not None:
        ckpt = _replace_vae(ckpt, Path(vae).expanduser(), prefer_fp16, vae_name)
    _check_agreement(ckpt)
    if prediction is not None:
        ckpt = dataclasses.replace(ckpt, scheduler=dataclasses.replace(ckpt.scheduler,
                                                                       prediction_type=PREDICTIONS[prediction]))
    return dataclasses.replace(ckpt, name=name) if name else ckpt


def read_header(file: Path) -> ldm.Header:
    """{key: (dtype, shape)} of a safetensors file, validated against the file's size without reading data."""
    return _parse_header(file)[0]


def read_metadata(file: Path) -> dict[str, str]:
    """A safetensors file's `__metadata__` (string keys and values; modelspec.* among them), {} if none."""
    return _parse_header(file)[1]


def _parse_header(file: Path) -> tuple[ldm.Header, dict[str, str]]:
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: not a safetensors file ({size} bytes, too short for a header)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER):
            raise CheckpointError(f"{file}: not a safetensors file, or truncated (header length {n} "
                                  f"but the file has {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{file}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None)
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    data = size - 8 - n
    out = {}
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            nbytes = math.prod(shape) * ITEMSIZE.get(dtype, 0)
            ok = 0 <= begin <= end <= data and (dtype not in ITEMSIZE or end - begin == nbytes)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{file}: tensor {key!r} has a broken header entry or lies past the end of "
                                  f"the file ({size} bytes); the file is truncated or corrupt")
        out[key] = (dtype, shape)
    return out, metadata


def choose_weights(names, prefer_fp16: bool) -> str | None:
    """Of a component folder's file names, the safetensors weights to read (a file or a shard index):
    the fp16 variant when preferred and present, else the plain file, else the fp16 one."""
    names = set(names)
    for stem in WEIGHT_STEMS:
        plain = [f"{stem}.safetensors", f"{stem}.safetensors.index.json"]
        fp16 = [f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.fp16.json"]
        for candidate in (fp16 + plain if prefer_fp16 else plain + fp16):
            if candidate in names:
                return candidate
    return None


# ---- diffusers folders ----

def _open_folder(path: Path, prefer_fp16: bool, vae_given: bool = False) -> Checkpoint:
    index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    _check_pipeline(path, index)
    # the text encoders the folder has: model_index lists them (the refiner's text_encoder is null), else
    # whichever folders exist
    listed = [c for c in TEXT_COMPONENTS if isinstance(index.get(c), list) and index[c][0] is not None]
    texts = tuple(listed or [c for c in TEXT_COMPONENTS if (path / c).is_dir()] or ["text_encoder"])
    tokenizers = tuple(path / TEXT_COMPONENTS[t] for t in texts)
    # a folder without a VAE loads when one is given (it replaces the folder's anyway)
    components = ("unet", *texts) if vae_given and not (path / "vae").is_dir() else ("unet", "vae", *texts)
    required = [*(f"{c}/config.json" for c in components), "scheduler/scheduler_config.json"]
    missing = [r for r in required if not (path / r).is_file()] + [t.name + "/" for t in tokenizers if not t.is_dir()]
    if missing:
        raise CheckpointError(f"{path}: not a complete diffusers folder; missing {', '.join(missing)}")
    configs = {c: _read_json(path / c / "config.json") for c in components}
    _check_unet(path / "unet", configs["unet"])
    weights = {c: _component_weights(path / c, prefer_fp16) for c in components}
    text_encoders = tuple(TextEncoderConfig.from_diffusers(configs[t], "text_projection.weight" in weights[t])
                          for t in texts)
    unet = UNetConfig.from_diffusers(configs["unet"])
    xl = unet.addition_embed_type == "text_time"
    family = "sdxl" if xl else "sd2" if text_encoders[0].hidden_act == "gelu" else "sd1"
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    ids = _time_ids(path, unet.projection_class_embeddings_input_dim, text_encoders[-1].projection_dim,
                    unet.addition_time_embed_dim)[0] if xl else ()
    # diffusers' default: True for StableDiffusionXLPipeline, False for its Img2Img pipeline (the refiner's)
    zeros = index.get("force_zeros_for_empty_prompt", "aesthetic_score" not in ids)
    vae = VAEConfig.from_diffusers(configs["vae"]) if "vae" in configs else VAEConfig(  # replaced by the given one
        scaling_factor=FAMILIES[family].scaling_factor, sample_size=unet.sample_size * 8)
    return Checkpoint(
        path=path, name=path.name, family=family, text_encoders=text_encoders, tokenizers=tokenizers,
        unet=unet, vae=vae, scheduler=SchedulerConfig.from_diffusers(scheduler),
        force_zeros_for_empty_prompt=xl and bool(zeros), weights=weights, time_ids=ids,
        recommended=recipe_from_scheduler(scheduler) or ORDINARY)


def _check_pipeline(path: Path, index: dict) -> None:
    """Refuse, in one line, a folder of a pipeline sdkit does not run, or a single component's folder."""
    cls = index.get("_class_name")
    if not index and (path / "config.json").is_file() and not (path / "unet").is_dir():
        cls = _read_json(path / "config.json").get("_class_name", "unknown")
        what = {"AutoencoderKL": "a VAE", "UNet2DConditionModel": "a UNet", "ControlNetModel": "a ControlNet",
                "CLIPTextModel": "a text encoder", "CLIPTextModelWithProjection": "a text encoder"}.get(cls, cls)
        raise CheckpointError(f"{path}: the folder of one component ({what}, {cls}), not a whole diffusers "
                              "pipeline; pass the folder that holds model_index.json")
    if cls is None or cls in PIPELINES:
        return
    what = next((name for part, name in OTHER_PIPELINES.items() if part in str(cls)), None)
    raise CheckpointError(f"{path}: a {cls} folder{f' ({what})' if what else ''}; sdkit loads "
                          f"{', '.join(PIPELINES)} folders")


def _check_unet(folder: Path, config: dict) -> None:
    """What sdkit's UNets cannot run, refused before reading weights."""
    what = identify.UNET_INPUTS.get(config.get("in_channels", 4))
    if what:
        raise CheckpointError(f"{folder}: {what}")
    if config.get("time_cond_proj_dim"):
        raise CheckpointError(f"{folder}: the UNet takes the guidance scale as an input (time_cond_proj_dim, as "
                              "LCM-distilled UNets do), which sdkit does not run yet; LCM-LoRA merges load")


def _component_weights(folder: Path, prefer_fp16: bool, component: str | None = None) -> Weights:
    """component: what the folder holds, when its name does not say ("vae" for a VAE folder of any name)."""
    component = component or folder.name
    names = [p.name for p in folder.iterdir()]
    chosen = choose_weights(names, prefer_fp16)
    if chosen is None:
        pickles = [n for n in names if n.endswith(PICKLES)]
        if pickles:
            raise CheckpointError(f"{folder}: only pickled weights ({pickles[0]}), which can run arbitrary code "
                                  "when loaded; sdkit never opens them. Download the .safetensors files")
        raise CheckpointError(f"{folder}: no weights (diffusion_pytorch_model.safetensors or model.safetensors)")
    if chosen.endswith(".json"):
        weight_map = _read_json(folder / chosen).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    else:
        files = [chosen]
    weights = {}
    for file in (folder / f for f in files):
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {folder / chosen} but missing")
        for key, (dtype, shape) in read_header(file).items():
            name = _canonical(component, key)
            if name is None:
                continue
            transform = None
            if component == "vae" and ".attentions." in name and len(shape) == 4:  # 1x1 conv -> linear
                shape, transform = shape[:2], lambda x: x[:, :, 0, 0]
            weights[name] = TensorRef(file, key, shape, dtype, transform)
    return weights


def _canonical(component: str, key: str) -> str | None:
    """A folder's key -> canonical name (None: a known leftover): legacy 'text_model.' prefixes and old
    VAE attention names (query/key/value/proj_attn) are renamed."""
    if component.startswith("text_encoder"):
        key = key.removeprefix("text_model.")
        return None if key == "embeddings.position_ids" else key
    return ldm.diffusers_vae_name(key) if component == "vae" else key


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


# ---- original single files ----

def _open_single_file(path: Path, overridden: bool, vae_given: bool = False) -> Checkpoint:
    """overridden: the caller gives the prediction type, so the file's own need not be understood.
    vae_given: a VAE replaces the file's, so a file without one ("noVAE") loads."""
    header, metadata = _parse_header(path)
    file = ldm.read(path, header)
    _refuse_what_is_not_a_checkpoint(file, vae_given)
    layout = ldm.layout(file)
    if layout is None:
        towers = sorted({".".join(k.split(".")[:3]) + "." for k in file.header if k.startswith(("cond_stage_model.",
                                                                                                 "conditioner."))})
        raise CheckpointError(f"{path}: its text encoders ({', '.join(towers[:3])}) fit no Stable Diffusion "
                              "1.x, 2.x or XL layout sdkit knows")
    family = FAMILIES[layout.family]
    prediction, side, zsnr, recipe = _single_file_facts(file, metadata, layout, overridden)
    edm = PLAYGROUND if layout.family == "sdxl" and all(m in file.header for m in PLAYGROUND.markers) else None
    config = SchedulerConfig.from_diffusers(_read_json(DATA / "schedulers" / (edm or family).scheduler))
    scheduler = dataclasses.replace(config, prediction_type=prediction, rescale_betas_zero_snr=zsnr and not edm,
                                    timestep_spacing=recipe.schedule or config.timestep_spacing)
    scaling_factor = (edm or family).scaling_factor
    sample_size = side // 8  # every SD VAE has 8 pixels per latent
    try:
        texts = [ldm.clip(file, t.prefix) if t.kind == "clip" else ldm.openclip(file, t.prefix, family)
                 for t in layout.towers]
        ids, width = (), None
        if family.name == "sdxl":
            ids, width = _time_ids(path, file.header[UNET_PREFIX + "label_emb.0.0.weight"][1][1],
                                   texts[-1][0].projection_dim, None)
        unet, unet_weights, unexpected = ldm.unet(file, family, sample_size, width)
        vae, vae_weights, unexpected_vae = ldm.vae(file, scaling_factor, side) if file.has(VAE_PREFIX) else (
            VAEConfig(scaling_factor=scaling_factor, sample_size=side), {}, [])  # noVAE: replaced
    except (KeyError, StopIteration, IndexError) as e:
        missing = f"tensor {e} is missing" if isinstance(e, KeyError) else "its blocks are not where they should be"
        raise CheckpointError(f"{path}: cannot read it as an {layout.name} checkpoint; {missing}") from None

    if edm:  # the latents' channel statistics (diffusers' from_single_file reads them as its VAE's)
        mean, std = (read_values(path, file.stored[m]) for m in edm.markers)
        vae = dataclasses.replace(vae, latents_mean=mean, latents_std=std)
    covered = (UNET_PREFIX, VAE_PREFIX, *(t.prefix for t in layout.towers))
    unexpected += unexpected_vae + [k for _, _, u in texts for k in u]
    unexpected += [file.stored[k] for k in file.header if not k.startswith(covered) and not ldm.LEFTOVER.fullmatch(k)
                   and k not in (edm.markers if edm else ())]
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise CheckpointError(f"{path}: unexpected tensors {', '.join(unexpected[:5])}{more}; "
                              f"not an {layout.name} checkpoint sdkit can map")
    weights = {"unet": unet_weights, "vae": vae_weights}
    weights |= {t.component: w for t, (_, w, _) in zip(layout.towers, texts)}
    return Checkpoint(
        path=path, name=path.stem, family=family.name, text_encoders=tuple(config for config, _, _ in texts),
        tokenizers=tuple(t.tokenizer for t in layout.towers), unet=unet, vae=vae, scheduler=scheduler,
        force_zeros_for_empty_prompt=layout.force_zeros_for_empty_prompt, weights=weights,
        time_ids=ids, recommended=recipe)


def _refuse_what_is_not_a_checkpoint(file: ldm.SingleFile, vae_given: bool = False) -> None:
    """One line naming what the file is, if it is anything but a complete SD 1.x / 2.x / XL checkpoint
    (without a VAE when one is given)."""
    path, keys = file.path, list(file.header)
    kind = identify.foreign(keys)
    if kind:
        raise CheckpointError(f"{path}: this is {kind[0]}, not a Stable Diffusion checkpoint; {kind[1]}")
    parts = file.has(UNET_PREFIX), file.has(VAE_PREFIX) or vae_given, ldm.has_text_encoder(file)
    if parts == (True, False, True):
        raise CheckpointError(f"{path}: this checkpoint has no VAE (a \"noVAE\" file); pass one, e.g. sdkit.load("
                              "model, vae='vae-ft-mse-840000-ema-pruned.safetensors') or sdkit-gen --vae FILE")
    if not all(parts):
        lone = identify.lone_component(keys)
        if lone:
            raise CheckpointError(f"{path}: this is {lone}, not a whole checkpoint; sdkit loads checkpoints "
                                  "that hold the UNet, the VAE and the text encoder(s)")
        if not any(parts):
            raise CheckpointError(f"{path}: not a Stable Diffusion checkpoint; none of its {len(keys)} tensors "
                                  f"({', '.join(file.stored[k] for k in keys[:3])}) is a UNet, VAE or text encoder")
        raise CheckpointError(f"{path}: not a complete Stable Diffusion checkpoint; {identify.missing_parts(*parts)}")
    conv_in = file.header.get(UNET_PREFIX + "input_blocks.0.0.weight")
    what = conv_in and identify.UNET_INPUTS.get(conv_in[1][1])
    if what:
        raise CheckpointError(f"{path}: this is {what}")


def _single_file_facts(file: ldm.SingleFile, metadata: dict[str, str], layout: Layout,
                       overridden: bool) -> tuple[str, int, bool, Recipe]:
    """(prediction type, native side in pixels, zero terminal SNR, recipe) of a single file: from its metadata
    and markers first, then its name (see the module docstring)."""
    family = FAMILIES[layout.family]
    architecture = metadata.get("modelspec.architecture", "").strip().lower()
    if not architecture and layout.sgm_architecture and "denoiser.sigmas" in file.header:
        architecture = layout.sgm_architecture
    known = ARCHITECTURES.get(architecture.split("/")[0])
    if known and known[0] != family.name:  # metadata written for another model (a merge's leftovers): ignored
        known = None
    says_512 = family.name == "sd2" and re.search(r"512|base", file.path.stem, re.IGNORECASE)

    prediction = "v_prediction" if family.name == "sd2" and not says_512 else "epsilon"
    if known and known[1]:
        prediction = known[1]
    if V_PRED in file.header:
        prediction = "v_prediction"
    declared = metadata.get("modelspec.prediction_type") or metadata.get("modelspec.predict_key")
    if declared and not overridden:
        if declared.strip().lower() not in PREDICTION_NAMES:
            raise CheckpointError(f"{file.path}: its metadata says modelspec.prediction_type {declared!r}, which "
                                  "sdkit does not know; pass prediction='epsilon' or 'v'")
        prediction = PREDICTION_NAMES[declared.strip().lower()]

    recipe = recipe_from_name(architecture, family.name) or recipe_from_name(file.path.stem, family.name) or ORDINARY
    side = 512 if says_512 else family.native_size(prediction)
    side = (known and known[2]) or side
    if m := re.fullmatch(r"(\d+)x(\1)", metadata.get("modelspec.resolution", "").strip()):
        side = int(m[1])
    return prediction, side, ZTSNR in file.header, recipe


def _time_ids(path: Path, width: int, pooled: int | None, dim: int | None) -> tuple[tuple[str, ...], int]:
    """SDXL's micro-conditioning (families.time_ids) and each id's embedding width, from the width of the UNet's
    add_embedding input (pooled text + time ids); dim: the width each id is embedded with, when a config says."""
    if pooled is None:
        raise CheckpointError(f"{path}: the UNet takes SDXL's pooled text, but its last text encoder has no "
                              "text_projection to pool it with")
    found = time_ids(width - pooled, dim)
    if found is None:
        each = f"addition_time_embed_dim {dim}" if dim else "an even width"
        raise CheckpointError(f"{path}: the UNet's projection_class_embeddings_input_dim {width} is not the pooled "
                              f"text width {pooled} + 6 (base) or 5 (refiner) time ids x {each} "
                              "(text_encoder_2 vs unet)")
    return found


# ---- VAE files (vae=) ----

def open_vae(path: Path, scaling_factor: float, sample_size: int,
             prefer_fp16: bool = False) -> tuple[VAEConfig, Weights]:
    """A VAE .safetensors file (LDM or diffusers names, on its own or under first_stage_model.) or a diffusers
    folder (an AutoencoderKL's, or a pipeline's with vae/) -> its config and canonical weights.
    scaling_factor, sample_size: the checkpoint's, which stay."""
    if path.suffix.lower() in PICKLES:
        raise CheckpointError(f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code "
                              "when loaded; sdkit never opens them. Use the VAE's .safetensors file")
    if not path.exists():
        raise CheckpointError(f"vae: no such file or folder: {path}")
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{path}: not a VAE folder (no config.json or vae/config.json)")
        config = _read_json(folder / "config.json")
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise CheckpointError(f"{folder}: a {config['_class_name']}, not an AutoencoderKL; sdkit's vae= takes "
                                  "Stable Diffusion's KL autoencoders")
        vae = dataclasses.replace(VAEConfig.from_diffusers(config), scaling_factor=scaling_factor,
                                  sample_size=sample_size)
        return vae, _component_weights(folder, prefer_fp16, "vae")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: not a .safetensors file or a diffusers VAE folder")
    file = ldm.read(path, read_header(path))
    keys = list(file.header)
    prefix = VAE_PREFIX if file.has(VAE_PREFIX) else ""  # a checkpoint, or a VAE saved under its prefix
    if not prefix and identify.lone_component(keys) != "a VAE on its own":
        what = (identify.foreign(keys) or (None,))[0] or identify.lone_component(keys)
        found = f"this is {what}, not a VAE" if what else f"not a VAE (its tensors: {', '.join(keys[:3])}, ...)"
        raise CheckpointError(f"{path}: {found}; vae= takes a VAE .safetensors file (encoder.*, decoder.*), a "
                              "diffusers VAE folder or a Hub repo id")
    try:
        vae, weights, unexpected = ldm.vae(file, scaling_factor, sample_size, prefix)
    except (KeyError, StopIteration, IndexError) as e:
        missing = f"tensor {e} is missing" if isinstance(e, KeyError) else "its blocks are not where they should be"
        raise CheckpointError(f"{path}: cannot read it as a VAE; {missing}") from None
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise CheckpointError(f"{path}: unexpected tensors {', '.join(unexpected[:5])}{more}; not a VAE sdkit can map")
    return vae, weights


def _replace_vae(ckpt: Checkpoint, path: Path, prefer_fp16: bool, name: str | None) -> Checkpoint:
    """ckpt with the VAE at `path` instead of its own; one line if the UNet cannot use its latents."""
    vae, weights = open_vae(path, ckpt.vae.scaling_factor, ckpt.vae.sample_size, prefer_fp16)
    if vae.latent_channels != ckpt.unet.in_channels or vae.scale != ckpt.vae.scale:
        raise CheckpointError(f"{path}: this VAE makes {vae.latent_channels} latent channels at 1/{vae.scale} of "
                              f"the image size, but {ckpt.name}'s UNet takes {ckpt.unet.in_channels} at "
                              f"1/{ckpt.vae.scale}; use a VAE made for {ckpt.family.upper()} models")
    vae = dataclasses.replace(vae, latents_mean=ckpt.vae.latents_mean, latents_std=ckpt.vae.latents_std)  # stay too
    return dataclasses.replace(ckpt, vae=vae, weights={**ckpt.weights, "vae": weights}, vae_file=path,
                               vae_name=name or path.name)


def _check_agreement(ckpt: Checkpoint) -> None:
    """The text encoders, UNet and VAE must fit together (catches mixed-up folders and wrong configs)."""
    width = sum(t.hidden_size for t in ckpt.text_encoders)
    if width != ckpt.unet.cross_attention_dim:
        raise CheckpointError(f"{ckpt.path}: text encoder width {width} does not match the UNet's "
                              f"cross_attention_dim {ckpt.unet.cross_attention_dim} (text_encoder vs unet)")
    latent = ckpt.vae.latent_channels
    if ckpt.unet.in_channels not in (latent, 2 * latent + 1):  # inpainting: + mask + masked-image latents
        raise CheckpointError(f"{ckpt.path}: the UNet takes {ckpt.unet.in_channels} channels but the VAE "
                              f"makes {latent} latent channels (unet vs vae; an inpainting UNet takes "
                              f"{2 * latent + 1})")
