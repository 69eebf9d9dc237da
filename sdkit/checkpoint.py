"""Open a model: a diffusers folder or an original single .safetensors file -> Checkpoint.

Only the safetensors headers are read here; every weight stays a lazy TensorRef under its canonical
(diffusers) name, so a backend reads each tensor once, straight into its own arrays.

Single files carry no configs: they are inferred from tensor shapes (see sdkit.ldm), with the family's
published scheduler config and tokenizer bundled in sdkit/data. What the UNet predicts is not in the shapes,
so sdkit uses this rule:

    SD1 and SDXL files predict epsilon at 512 / 1024 pixels.
    SD2 files predict v at 768 pixels, unless the file name says 512 or base (v2-1_512-ema-pruned,
    sd21-base...), which means epsilon at 512 pixels.
    A file holding a `v_pred` key (the ComfyUI convention) predicts v, whatever its name.
    `prediction="v"` or `"epsilon"` overrides all of this, for folders too.

Pickled checkpoints (.ckpt, .pt, .bin, .pth) are refused without being opened: unpickling can run code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import ldm
from .config import SchedulerConfig, TextEncoderConfig, UNetConfig, VAEConfig
from .errors import CheckpointError
from .interfaces import TensorRef, Weights

DATA = Path(__file__).parent / "data"
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' file names
PICKLES = (".ckpt", ".pt", ".pth", ".bin")
SCHEDULERS = {"sd1": "sd15-scheduler_config.json", "sd2": "sd21-768v-scheduler_config.json",
              "sdxl": "sdxl-base-scheduler_config.json"}
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 2**20  # safetensors' own limit


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    name: str  # for display and image metadata: folder name, file stem or Hub repo id
    family: str  # "sd1" | "sd2" | "sdxl"
    text_encoders: tuple[TextEncoderConfig, ...]
    tokenizers: tuple[Path | str, ...]  # a tokenizer folder, or a bundled tokenizer's name
    unet: UNetConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    # SDXL: with no negative prompt, the uncond context and pooled embedding are zeros (not the encoding of "")
    force_zeros_for_empty_prompt: bool
    weights: dict[str, Weights]  # "text_encoder"["text_encoder_2"], "unet", "vae"

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at."""
        side = self.unet.sample_size * self.vae.scale
        return side, side


def open_checkpoint(path: str | Path, *, prediction: str | None = None, prefer_fp16: bool = False,
                    name: str | None = None) -> Checkpoint:
    """A diffusers folder or a single-file .safetensors checkpoint -> Checkpoint (headers only).

    prediction: "epsilon" or "v" overrides what the config (or the rule above) says the UNet predicts.
    prefer_fp16: in folders, read `*.fp16.safetensors` variants where they exist.
    name: the display name (e.g. the Hub repo id the folder came from); default the folder name / file stem."""
    path = Path(path).expanduser()
    if prediction is not None and prediction not in PREDICTIONS:
        raise CheckpointError(f"prediction={prediction!r}; use 'epsilon', 'v' or None (from the checkpoint)")
    if path.suffix.lower() in PICKLES:
        raise CheckpointError(f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code "
                              "when loaded; sdkit never opens them. Use the model's .safetensors file")
    if not path.exists():
        raise CheckpointError(f"no such file or folder: {path}")
    if path.is_dir():
        ckpt = _open_folder(path, prefer_fp16)
    elif path.suffix.lower() == ".safetensors":
        ckpt = _open_single_file(path)
    else:
        raise CheckpointError(f"{path}: not a .safetensors file or a diffusers folder")
    _check_agreement(ckpt)
    if prediction is not None:
        ckpt = dataclasses.replace(ckpt, scheduler=dataclasses.replace(ckpt.scheduler,
                                                                       prediction_type=PREDICTIONS[prediction]))
    return dataclasses.replace(ckpt, name=name) if name else ckpt


def read_header(file: Path) -> ldm.Header:
    """{key: (dtype, shape)} of a safetensors file, validated against the file's size without reading data."""
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
    data = size - 8 - n
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
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
    return out


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

def _open_folder(path: Path, prefer_fp16: bool) -> Checkpoint:
    xl = (path / "text_encoder_2").is_dir()
    texts = ("text_encoder", "text_encoder_2") if xl else ("text_encoder",)
    tokenizers = tuple(path / t for t in (("tokenizer", "tokenizer_2") if xl else ("tokenizer",)))
    required = [*(f"{c}/config.json" for c in ("unet", "vae", *texts)), "scheduler/scheduler_config.json"]
    missing = [r for r in required if not (path / r).is_file()] + [t.name + "/" for t in tokenizers if not t.is_dir()]
    if missing:
        raise CheckpointError(f"{path}: not a complete diffusers folder; missing {', '.join(missing)}")
    weights = {c: _component_weights(path / c, prefer_fp16) for c in ("unet", "vae", *texts)}
    configs = {c: _read_json(path / c / "config.json") for c in ("unet", "vae", *texts)}
    text_encoders = tuple(TextEncoderConfig.from_diffusers(configs[t], "text_projection.weight" in weights[t])
                          for t in texts)
    family = "sdxl" if xl else "sd2" if text_encoders[0].hidden_act == "gelu" else "sd1"
    index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    return Checkpoint(
        path=path, name=path.name, family=family, text_encoders=text_encoders, tokenizers=tokenizers,
        unet=UNetConfig.from_diffusers(configs["unet"]), vae=VAEConfig.from_diffusers(configs["vae"]),
        scheduler=SchedulerConfig.from_diffusers(_read_json(path / "scheduler" / "scheduler_config.json")),
        force_zeros_for_empty_prompt=xl and bool(index.get("force_zeros_for_empty_prompt", True)),  # diffusers' default
        weights=weights)


OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _component_weights(folder: Path, prefer_fp16: bool) -> Weights:
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
            name = _canonical(folder.name, key)
            if name is None:
                continue
            transform = None
            if folder.name == "vae" and ".attentions." in name and len(shape) == 4:  # 1x1 conv -> linear
                shape, transform = shape[:2], lambda x: x[:, :, 0, 0]
            weights[name] = TensorRef(file, key, shape, dtype, transform)
    return weights


def _canonical(component: str, key: str) -> str | None:
    """A folder's key -> canonical name (None: a known leftover): legacy 'text_model.' prefixes and old
    VAE attention names (query/key/value/proj_attn) are renamed."""
    if component.startswith("text_encoder"):
        key = key.removeprefix("text_model.")
        return None if key == "embeddings.position_ids" else key
    if component == "vae":
        m = re.fullmatch(r"(.+\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)", key)
        if m:
            return f"{m[1]}{OLD_VAE_ATTENTION[m[2]]}.{m[3]}"
    return key


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


# ---- original single files ----

def _open_single_file(file: Path) -> Checkpoint:
    header = read_header(file)
    family = ldm.detect_family(header)
    missing = [what for what, prefix in (("a UNet (model.diffusion_model.*)", ldm.UNET_PREFIX),
                                         ("a VAE (first_stage_model.*)", ldm.VAE_PREFIX))
               if not any(k.startswith(prefix) for k in header)]
    if family is None:
        missing.append("a text encoder (cond_stage_model.* or conditioner.embedders.*)")
    if missing:
        raise CheckpointError(f"{file}: not a complete Stable Diffusion checkpoint; "
                              f"it has no {' and no '.join(missing)}")

    v_768 = family == "sd2" and not re.search(r"512|base", file.stem, re.IGNORECASE)
    v = v_768 or "v_pred" in header
    sample_size = {"sd1": 64, "sd2": 96 if v_768 else 64, "sdxl": 128}[family]
    scheduler = SchedulerConfig.from_diffusers(_read_json(DATA / "schedulers" / SCHEDULERS[family]))
    scheduler = dataclasses.replace(scheduler, prediction_type="v_prediction" if v else "epsilon")

    try:
        unet, unet_weights, unexpected = ldm.unet(file, header, family, sample_size)
        vae, vae_weights, unexpected_vae = ldm.vae(file, header, 0.13025 if family == "sdxl" else 0.18215,
                                                   sample_size * 8)
        texts = [ldm.clip(file, header, prefix) if layout == "clip" else
                 ldm.openclip(file, header, prefix, penultimate=family == "sd2")
                 for _, prefix, layout in ldm.TEXT_ENCODERS[family]]
    except (KeyError, StopIteration) as e:
        raise CheckpointError(f"{file}: cannot infer the {family} model's layout; tensor {e} is missing") from None

    covered = (ldm.UNET_PREFIX, ldm.VAE_PREFIX, *(prefix for _, prefix, _ in ldm.TEXT_ENCODERS[family]))
    unexpected += unexpected_vae + [k for _, _, u in texts for k in u]
    unexpected += [k for k in header if not k.startswith(covered) and not ldm.LEFTOVER.fullmatch(k)]
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise CheckpointError(f"{file}: unexpected tensors {', '.join(unexpected[:5])}{more}; "
                              f"not a {family} checkpoint sdkit can map")
    components = [component for component, _, _ in ldm.TEXT_ENCODERS[family]]
    weights = {"unet": unet_weights, "vae": vae_weights, **{c: w for c, (_, w, _) in zip(components, texts)}}
    return Checkpoint(
        path=file, name=file.stem, family=family, text_encoders=tuple(config for config, _, _ in texts),
        tokenizers={"sd1": ("clip-l",), "sd2": ("openclip",), "sdxl": ("clip-l", "openclip")}[family],
        unet=unet, vae=vae, scheduler=scheduler, force_zeros_for_empty_prompt=family == "sdxl", weights=weights)


def _check_agreement(ckpt: Checkpoint) -> None:
    """The text encoders, UNet and VAE must fit together (catches mixed-up folders and wrong configs)."""
    width = sum(t.hidden_size for t in ckpt.text_encoders)
    if width != ckpt.unet.cross_attention_dim:
        raise CheckpointError(f"{ckpt.path}: text encoder width {width} does not match the UNet's "
                              f"cross_attention_dim {ckpt.unet.cross_attention_dim} (text_encoder vs unet)")
    unet = ckpt.unet
    if unet.addition_embed_type == "text_time":  # the UNet's add_embedding takes pooled text + 6 time ids
        pooled = ckpt.text_encoders[-1].projection_dim
        expected = None if pooled is None else pooled + 6 * unet.addition_time_embed_dim
        if unet.projection_class_embeddings_input_dim != expected:
            raise CheckpointError(f"{ckpt.path}: the UNet's projection_class_embeddings_input_dim "
                                  f"{unet.projection_class_embeddings_input_dim} is not 6 x addition_time_embed_dim "
                                  f"{unet.addition_time_embed_dim} + the pooled text width {pooled} "
                                  "(text_encoder_2 projection_dim vs unet)")
    if ckpt.unet.in_channels != ckpt.vae.latent_channels:
        raise CheckpointError(f"{ckpt.path}: the UNet takes {ckpt.unet.in_channels} channels but the VAE "
                              f"makes {ckpt.vae.latent_channels} latent channels (unet vs vae)")
