"""The state of one app session, free of Qt so it is tested with plain pytest.

Settings are what the form shows; a ModelChoice is what the worker must have loaded; Session holds both,
the recent models and this session's results. Widgets read and write these, nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sdkit.families import FAMILIES
from sdkit.config import SchedulerConfig
from sdkit.samplers import ALIASES, SAMPLERS, edm
from sdkit.samplers.lcm import TCD_ETA

from .mask import Mask

MAX_SEED = 2**32 - 1
MAX_RECENT = 10
BACKENDS = ("auto", "torch", "mlx")
DEVICES = {"auto": (), "torch": ("cuda", "mps", "cpu"), "mlx": ("gpu", "cpu")}
DTYPES = ("float32", "float16", "bfloat16")
VAE_DIRS = "SDKIT_VAE_DIRS"  # as sdkit-gen --from reads it



@dataclass
class Settings:
    """Every field of the form that goes into a generate() call."""

    prompt: str = ""
    # None: no negative prompt (an empty box); "" only when an image recorded an explicit empty one, which SDXL
    # encodes as text where None is zeros
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 30
    guidance_scale: float = 7.5
    sampler: str = "dpmpp_2m"  # sdkit's name; the form shows SAMPLERS[sampler].a1111
    schedule: str | None = "karras"  # one of SAMPLERS[sampler].schedules; None: the model's own spacing
    eta: float = TCD_ETA  # the tcd sampler's gamma; other samplers take none
    seed: int = 0
    seed_locked: bool = False  # unlocked: every generation draws a fresh random seed
    num_images: int = 1
    init_image: str | None = None  # a path: image-to-image when set
    strength: float = 0.8
    clip_skip: int = 1  # A1111's: 1 the text encoder's last layer, 2 the penultimate
    mask_blur: int = 4  # inpainting (a mask drawn over the init image, or Extend canvas)
    inpaint_area: str = "whole"
    inpaint_padding: int = 32
    hires: bool = False  # A1111's hires fix (text to image only): the hires_* fields below apply
    hires_scale: float = 2.0
    hires_resize: bool = False  # A1111's "Resize to" in place of "Upscale by": hires_width x hires_height
    hires_width: int = 0  # 0: from the other side, keeping the first pass's aspect
    hires_height: int = 0
    hires_steps: int = 0  # 0: as many as `steps`
    hires_denoising: float = 0.7
    hires_upscaler: str = "latent"
    refiner_start: float = 0.8  # A1111's "Refiner switch at": used when the ModelChoice has a refiner

    def generate_kwargs(self) -> dict:
        """Keyword arguments for Pipeline.generate()."""
        kw = dict(prompt=self.prompt, negative_prompt=self.negative_prompt, width=self.width, height=self.height,
                  steps=self.steps, guidance_scale=self.guidance_scale, sampler=self.sampler, schedule=self.schedule,
                  seed=self.seed, num_images=self.num_images, clip_skip=self.clip_skip)
        if self.sampler == "tcd":
            kw["eta"] = self.eta
        if self.init_image:
            kw.update(init_image=self.init_image, strength=self.strength)
        elif self.hires:  # generate() takes hires_scale for text to image only
            size = dict(hires_resize=(self.hires_height, self.hires_width)) if self.hires_resize else dict(
                hires_scale=self.hires_scale)
            kw.update(size, hires_steps=self.hires_steps or None, hires_denoising=self.hires_denoising,
                      hires_upscaler=self.hires_upscaler)
        return kw

    def with_parameters(self, params: dict, samplers: tuple[str, ...]) -> Settings:
        """These settings with every field an image's metadata (sdkit.read_parameters) records; the seed
        is locked so that generating again remakes that image. A sampler sdkit lacks keeps the current sampler and
        schedule; an image without a negative prompt, clip skip or hires fix clears them."""
        keys = ("prompt", "width", "height", "steps", "guidance_scale", "seed", "strength")
        new = {k: params[k] for k in keys if params.get(k) is not None}
        new |= {"negative_prompt": params.get("negative_prompt"), "clip_skip": params.get("clip_skip") or 1}
        if params.get("sampler") in samplers:  # metadata names it with a schedule it takes (None when unrecorded)
            new |= {"sampler": params["sampler"], "schedule": params.get("schedule")}
            new["eta"] = params.get("eta", TCD_ETA) if params["sampler"] == "tcd" else self.eta
        if params.get("refiner_start") is not None:
            new["refiner_start"] = params["refiner_start"]
        resize = params.get("hires_resize")  # (height, width)
        new["hires"] = params.get("hires_scale") is not None or resize is not None
        if new["hires"]:
            new |= {"hires_scale": params["hires_scale"]} if resize is None else {
                "hires_height": resize[0], "hires_width": resize[1]}
            new |= {"hires_resize": resize is not None, "hires_steps": params.get("hires_steps") or 0,
                    "hires_denoising": params.get("hires_denoising", 0.7),
                    "hires_upscaler": params.get("hires_upscaler", "latent")}
        return dataclasses.replace(self, **new, seed_locked="seed" in new or self.seed_locked)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        """Settings saved by an older or newer version: unknown keys and mistyped values are dropped, an alias
        sampler (dpmpp_2m_karras) becomes its sampler and schedule, an unknown sampler or schedule the defaults."""
        defaults = cls()
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            value, default = d[f.name], getattr(defaults, f.name)
            if type(default) is float and type(value) is int:
                value = float(value)
            optional = "None" in str(f.type)
            if type(value) is type(default) or optional and (value is None or isinstance(value, str)):
                kw[f.name] = value
        if kw.get("sampler") in ALIASES:
            kw["sampler"], kw["schedule"] = ALIASES[kw["sampler"]]
        if kw.get("sampler", defaults.sampler) not in SAMPLERS:
            kw.pop("sampler", None)
            kw.pop("schedule", None)
        if kw.get("schedule", defaults.schedule) not in SAMPLERS[kw.get("sampler", defaults.sampler)].schedules:
            kw["schedule"] = None  # every sampler takes the model's own
        return cls(**kw)


@dataclass(frozen=True)
class ModelChoice:
    """A model on a backend, as sdkit.load takes it. None means "the backend's default"."""

    model: str
    backend: str = "auto"
    device: str | None = None
    dtype: str | None = None
    vae: str | None = None  # a VAE file, folder or Hub id replacing the model's (sdkit.load's vae=)
    refiner: str | None = None  # an SDXL refiner's file, folder or Hub id, loaded on the same backend

    @property
    def base(self) -> ModelChoice:
        """This choice without its refiner: what the base Pipeline is loaded from."""
        return dataclasses.replace(self, refiner=None)

    @property
    def is_hub_id(self) -> bool:
        """A Hub repo id ("org/name") rather than a local file or folder."""
        return not Path(self.model).expanduser().exists() and self.model.count("/") == 1


@dataclass
class Result:
    image: Image.Image
    params: dict  # as sdkit.read_parameters returns them
    mask: Image.Image | None = None  # the inpainting mask it was made with, saved beside it as NAME.mask.png


@dataclass
class Session:
    settings: Settings = field(default_factory=Settings)
    model: ModelChoice | None = None
    recent: list[str] = field(default_factory=list)  # models, most recent first (the Model box's)
    refiners: list[str] = field(default_factory=list)  # SDXL refiners, most recent first (the Refiner box's)
    names: dict[str, str] = field(default_factory=dict)  # display name (as in image metadata) -> model
    results: list[Result] = field(default_factory=list)
    mask: Mask | None = None  # drawn over the init image (Inpaint mode); not saved between sessions

    def job(self) -> tuple[ModelChoice, dict]:
        """What the next Generate runs: the model, and generate() arguments with this run's seed.
        Unlocked, the seed is drawn here and written back, so the form shows the seed actually used."""
        if self.model is None:
            raise ValueError("no model chosen: open a .safetensors file or a folder, or type a Hub repo id")
        if not self.settings.seed_locked:
            self.settings.seed = secrets.randbelow(MAX_SEED + 1 - self.settings.num_images)
        kwargs = self.settings.generate_kwargs()
        if self.model.refiner:  # the worker adds refiner= (its Pipeline)
            kwargs["refiner_start"] = self.settings.refiner_start
        if self.mask is not None and self.settings.init_image:
            s = self.settings
            kwargs |= self.mask.generate_kwargs(s.init_image, s.mask_blur, s.inpaint_area, s.inpaint_padding, s.seed)
        return self.model, kwargs

    def remember(self, model: str, name: str, refiner: bool = False) -> None:
        """Put a successfully loaded model at the top of its recent list: `refiners` for a refiner, else `recent`."""
        first = lambda models: [model] + [m for m in models if m != model][: MAX_RECENT - 1]
        if refiner:
            self.refiners = first(self.refiners)
        else:
            self.recent = first(self.recent)
        self.names = {n: m for n, m in self.names.items() if m in self.recent or m in self.refiners} | {name: model}

    def model_named(self, name: str | None) -> str | None:
        """The model an image's metadata names, if it is one used before or a path that exists."""
        if name in self.names:
            return self.names[name]
        return name if name and Path(name).expanduser().exists() else None

    def refiner_named(self, name: str, model: str) -> str | None:
        """The refiner an image's metadata names (its checkpoint name): one used before, a path that exists, or a
        file or folder of that name next to the model."""
        if found := self.model_named(name):
            return found
        near = Path(model).expanduser().parent if model and Path(model).expanduser().exists() else None
        places = [near / n for n in (name, f"{name}.safetensors")] if near and Path(name).name == name else []
        return next((str(p) for p in places if p.exists()), None)

    def add_results(self, images: list[Image.Image], params: list[dict], mask: Image.Image | None = None) -> None:
        self.results.extend(Result(im, p, mask) for im, p in zip(images, params))


def model_samplers(scheduler: SchedulerConfig | None) -> dict[str, tuple[str | None, ...]]:
    """sampler -> the schedules it takes on a model with this scheduler config (None: no model loaded yet): an EDM
    model (Playground v2.5) runs the samplers and noise levels of diffusers' EDM schedulers only, every other all."""
    if scheduler is not None and scheduler.edm:
        return {name: tuple(s for s in SAMPLERS[name].schedules if s in edm.SCHEDULES) for name in edm.REFERENCES}
    return {name: sampler.schedules for name, sampler in SAMPLERS.items()}


def vae_files() -> list[str]:
    """The .safetensors files in the folders of $SDKIT_VAE_DIRS: the VAE picker's list."""
    return list(network_files(VAE_DIRS).values())


def size_presets(family: str, native: tuple[int, int]) -> list[tuple[int, int]]:
    """(width, height) presets for a model: its family's training buckets (SDXL's equal-area ones) when it is
    at its family's native size, else its native square, then portrait and landscape at 2:3 and 3:4 with the
    native side as the short side (SD1/SD2 habit)."""
    h, w = native
    buckets = FAMILIES[family].buckets if family in FAMILIES else ()
    if buckets and buckets[0] == (w, h):
        return list(buckets)
    side = min(h, w)
    out = [(w, h)]
    for long in (side * 3 // 2, side * 4 // 3):
        long -= long % 8
        out += [(side, long), (long, side)]
    return out


def snap8(value: int) -> int:
    """The nearest multiple of 8 (at least 8): the sizes the VAE can encode."""
    return max(8, (value + 4) // 8 * 8)


def network_files(env: str) -> dict[str, str]:
    """stem -> path of the .safetensors files in the folders of `env` ($SDKIT_LORA_DIRS, $SDKIT_EMBEDDING_DIRS,
    $SDKIT_VAE_DIRS): the names a prompt uses them by, first folder first, as sdkit finds them (pickles are never
    used; folders that are not there are skipped: sdkit-gen names them)."""
    found: dict[str, str] = {}
    for d in (Path(d).expanduser() for d in os.environ.get(env, "").split(os.pathsep) if d):
        if d.is_dir():
            for f in sorted(d.glob("*.safetensors")):
                if not f.name.startswith("."):
                    found.setdefault(f.stem, str(f))
    return found


def lora_tag(name: str, weight: float) -> str:
    """A1111's prompt tag for a LoRA: <lora:NAME:WEIGHT>."""
    return f"<lora:{name}:{weight:g}>"


def embedding_text(name: str, weight: float) -> str:
    """An embedding is used by its name; another weight than 1 as A1111's (NAME:WEIGHT)."""
    return name if weight == 1 else f"({name}:{weight:g})"
