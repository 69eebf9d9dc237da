"""sdkit-gen: text-to-image and image-to-image from the command line, on sdkit's public API.

    sdkit-gen "a lighthouse at dawn, oil painting" -s 1
    sdkit-gen "the same scene in winter" -m model.safetensors -i photo.png --strength 0.6
    sdkit-gen --from lighthouse-1.png -s 7        # an image's stored parameters (sdkit's, A1111's, ...), a new seed

--from restores the VAE an image names (A1111 writes its file name): a path as stored, else a
.safetensors file of that name (or stem) next to the model or in a folder of $SDKIT_VAE_DIRS, else a Hub repo id
as stored; --vae overrides it.

Exit status: 0 done, 1 runtime error (download, backend, disk), 2 usage error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import secrets
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import sdkit
from sdkit import backends, hashes, hires, hub, inpaint, micro_conditioning
from sdkit.adapters import lora
from sdkit.adapters.embeddings import folders
from sdkit.checkpoint import PICKLES
from sdkit.conditioning import CHUNK
from sdkit.families import ORDINARY
from sdkit.images import open_image
from sdkit.metadata import A1111_SCHEDULES, HIRES_KEYS
from sdkit.pipeline import IMG2IMG_STRENGTH
from sdkit.samplers import ALIASES, SAMPLERS, resolve
from sdkit.prompt import unsupported as unsupported_syntax

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULTS = {k: p.default for k, p in inspect.signature(sdkit.Pipeline.generate).parameters.items()}
# read_parameters() keys that sdkit-gen hands on to generate() or load(); a feature that restores another stored
# setting adds its key here. Every other stored key (A1111's, an extension's, another tool's) is named in a warning.
HIRES = ("hires_scale", "hires_resize", "hires_steps", "hires_denoising", "hires_upscaler")  # restored without -i
HIRES_ON = {"hires_scale", "hires_resize"}  # either turns hires fix on
INPAINT_KEYS = ("mask_blur", "inpaint_area", "inpaint_padding")  # restored from --from with its NAME.mask.png
HONOURED = {"prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "guidance_rescale", "sampler",
            "schedule", "eta", "seed", "strength", "model", "clip_skip", "TI hashes", "Lora hashes", "VAE", "VAE hash",
            *micro_conditioning.ARGUMENTS, *INPAINT_KEYS, *HIRES, "Refiner", "refiner_start"}
# Stored keys that change nothing in the picture.
HARMLESS = {"Version", "Model hash"}
# The settings whose absence from a --from image means sdkit's default is used instead.
CORE = {"steps": "Steps", "guidance_scale": "CFG scale", "sampler": "Sampler", "seed": "Seed", "width": "Size"}
SWITCH = {"auto": None, "on": True, "off": False}  # a memory option's flag value -> sdkit.Memory's
VAE_DIRS = "SDKIT_VAE_DIRS"  # folders --from looks for a stored VAE in (os.pathsep-separated)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdkit-gen", description="Generate images with Stable Diffusion (torch or MLX).",
                epilog="PNGs carry their parameters in AUTOMATIC1111's format; --from reads them back.")
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="what to draw (required unless --from is given)")
    p.add_argument("-m", "--model", help=f"a diffusers folder, a .safetensors file or a Hub repo id "
                                         f"(default {DEFAULT_MODEL})")
    p.add_argument("-n", "--negative", dest="negative_prompt", metavar="NEGATIVE", help="what not to draw")
    p.add_argument("-W", "--width", type=_size, help="pixels, a multiple of 8 (default: the model's size)")
    p.add_argument("-H", "--height", type=_size, help="pixels, a multiple of 8 (default: the model's size)")
    p.add_argument("--steps", type=_positive_int,
                   help=f"denoising steps (default: the model's recommendation; {ORDINARY.steps} for ordinary models)")
    p.add_argument("-g", "--guidance", dest="guidance_scale", type=_guidance, metavar="GUIDANCE",
                   help=f"classifier-free guidance scale (default: the model's recommendation; "
                        f"{ORDINARY.guidance_scale} for ordinary models)")
    p.add_argument("--guidance-rescale", type=_unit, metavar="PHI",
                   help="CFG rescale in [0, 1] (default 0; 0.7 for v-prediction models on zero-terminal-SNR "
                        "schedules)")
    p.add_argument("-s", "--seed", type=_seed, help="image i gets seed + i (default: random)")
    p.add_argument("--sampler", choices=[*sdkit.SAMPLERS, *ALIASES], metavar="NAME",
                   help=f"see --list-samplers (default: the model's recommendation; {ORDINARY.sampler} "
                        "for ordinary models)")
    p.add_argument("--schedule", choices=[s for s in A1111_SCHEDULES if s], metavar="SCHEDULE",
                   help="the noise levels the sampler steps through: trailing, karras, exponential or beta "
                        "(default: the model's own timestep spacing; which samplers take which: --list-samplers)")
    p.add_argument("--eta", type=_unit, metavar="ETA",
                   help="the tcd sampler's stochasticity (gamma) in [0, 1]: the share of each step re-noised "
                        "(default 0.3)")
    p.add_argument("-b", "--num-images", type=_positive_int, default=1, metavar="NUM_IMAGES",
                   help="images to make in one batch (default 1)")
    p.add_argument("--clip-skip", type=_positive_int, metavar="N",
                   help="A1111's clip skip: 1 the text encoder's last layer (default), 2 the penultimate, ...; "
                        "SD1/SD2 only, SDXL ignores it as A1111 does")
    p.add_argument("--prompt-syntax", choices=["a1111", "plain"], default="a1111",
                   help=r"a1111 (default): (word), (word:1.3), [word], \( escapes and BREAK; plain: none of it")
    p.add_argument("--embedding-dir", dest="embedding_dirs", action="append", type=Path, metavar="DIR",
                   help="a folder of textual-inversion embeddings (.safetensors), each used where its file "
                        "name appears in a prompt; repeatable (default: $SDKIT_EMBEDDING_DIRS)")
    p.add_argument("--lora", dest="loras", action="append", type=_lora, metavar="NAME[:W]",
                   help="apply a LoRA (a name in the LoRA folders or a .safetensors file) at weight W (default 1), "
                        "as <lora:NAME:W> in the prompt does; repeatable")
    p.add_argument("--lora-dir", dest="lora_dirs", action="append", type=Path, metavar="DIR",
                   help="a folder of LoRA files (.safetensors), found by name; repeatable "
                        "(default: $SDKIT_LORA_DIRS)")
    p.add_argument("--vae", metavar="PATH|ID",
                   help="a VAE replacing the model's: a .safetensors file, a diffusers folder or a Hub repo id "
                        "(default: the model's own; with --from, the image's VAE when found next to the model or "
                        f"in ${VAE_DIRS})")
    p.add_argument("--backend", choices=["auto", *backends.names()], default="auto",
                   help="auto: MLX on Apple silicon when installed, else torch")
    p.add_argument("--device", help="torch: cuda, cuda:1, mps, cpu; mlx: gpu, cpu (default: the fastest)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="default float16 on GPUs, float32 on CPUs")
    p.add_argument("--compile", action="store_true",
                   help="compile the UNet (torch.compile; CUDA graphs on CUDA): about a minute once per image "
                        "size, then faster steps; worth it for batches of images at one size")
    p.add_argument("--vae-slicing", choices=SWITCH, default="auto",
                   help="decode one image of the batch at a time: same pixels, less memory (default auto: when "
                        "the batch would not fit)")
    p.add_argument("--vae-tiling", choices=SWITCH, default="auto",
                   help="decode in overlapping tiles blended together: seamless, not identical (default auto: "
                        "when one image would not fit)")
    p.add_argument("--attention-chunk", type=_attention_chunk, default=None, metavar="{auto,off,N}",
                   help="self attention N query rows at a time: same result, less memory where the device "
                        "materialises the attention matrix (default auto: when that would not fit)")
    p.add_argument("--refiner", metavar="PATH|ID",
                   help="an SDXL refiner (file, folder or Hub id) that denoises the last part of the schedule, "
                        "from --refiner-start on (A1111's Refiner; with --from, the stored one is only named)")
    p.add_argument("--refiner-start", type=_refiner_start, metavar="S",
                   help=f"where the refiner takes over, in (0, 1) of the schedule (default "
                        f"{DEFAULTS['refiner_start']}; with --from, the stored Refiner switch at)")
    p.add_argument("--hires-scale", type=_hires_scale, metavar="SCALE",
                   help="hires fix (A1111's): generate at -W x -H, upscale by SCALE, refine image-to-image")
    p.add_argument("--hires-resize", type=_hires_resize, metavar="WxH",
                   help="hires fix to this size instead of --hires-scale (A1111's Hires resize; 0 for one side: "
                        "from the other by the aspect; both: the aspect kept and the overflow cropped)")
    p.add_argument("--hires-steps", type=_non_negative_int, metavar="N",
                   help="steps of the hires pass (default 0: --steps)")
    p.add_argument("--hires-denoising", type=_strength, metavar="STRENGTH",
                   help=f"strength of the hires pass, in (0, 1] (default {DEFAULTS['hires_denoising']})")
    p.add_argument("--hires-upscaler", choices=hires.UPSCALERS, metavar="UPSCALER",
                   help="latent (default: A1111's Latent, bilinear on the latents), latent_antialiased, "
                        "latent_bicubic, latent_bicubic_antialiased, latent_nearest, latent_nearest_exact (A1111's "
                        "other Latent modes) or lanczos (on the pixels)")
    p.add_argument("-i", "--init-image", metavar="INIT_IMAGE", help="start from this picture (image-to-image)")
    p.add_argument("--strength", type=_strength, help=f"with -i: how much to change it, in (0, 1] "
                                                      f"(default {IMG2IMG_STRENGTH}; 1 with --mask or --outpaint)")
    p.add_argument("--mask", metavar="MASK", help="with -i: inpaint where this picture is white (black keeps); "
                                                  "saved beside each output as NAME.mask.png, where --from finds it")
    p.add_argument("--mask-blur", type=_non_negative_int, metavar="PIXELS",
                   help=f"blur of the mask the result is pasted through (default {DEFAULTS['mask_blur']})")
    p.add_argument("--inpaint-area", choices=inpaint.AREAS,
                   help="whole (default): the whole picture; masked: the mask's box plus --inpaint-padding, "
                        "generated at -W x -H and pasted back (A1111's 'only masked')")
    p.add_argument("--inpaint-padding", type=_non_negative_int, metavar="PIXELS",
                   help=f"with --inpaint-area masked (default {DEFAULTS['inpaint_padding']})")
    p.add_argument("--outpaint", type=_sides, metavar="LEFT,TOP,RIGHT,BOTTOM",
                   help="with -i: extend the picture by these pixels (multiples of 8) and paint the new area")
    p.add_argument("-o", "--output", help="a .png file or a folder (a trailing / creates it; default: the "
                                          "current folder, named from prompt and seed); never overwrites")
    p.add_argument("--from", dest="from_image", type=Path, metavar="IMAGE",
                   help="regenerate from the parameters stored in an image (PNG, JPEG, WEBP from sdkit, A1111, "
                        "Forge, Fooocus, SwarmUI, InvokeAI, NovelAI, basic ComfyUI graphs); other flags override "
                        "them")
    p.add_argument("--list-samplers", action="store_true",
                   help="list the samplers (sdkit and AUTOMATIC1111 names, schedules) and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the paths of the images")
    p.add_argument("--debug", action="store_true", help="show the traceback of errors")
    p.add_argument("--version", action="version", version=f"sdkit {sdkit.__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("sdkit-gen: interrupted", file=sys.stderr)
        return 130
    except ValueError as e:  # bad values, unreadable files, unusable checkpoints: the user can fix them
        return _fail(e, 2, args.debug)
    except (sdkit.SdkitError, OSError) as e:  # network, backend, disk
        return _fail(e, 1, args.debug)


def run(args: argparse.Namespace) -> int:
    if args.list_samplers:
        for s in SAMPLERS.values():
            schedules = ", ".join(x or "default" for x in s.schedules)
            print(f"{s.name:<10} {s.a1111:<14} {'stochastic' if s.stochastic else '':<10}  schedules: {schedules}")
        for alias, (name, schedule) in ALIASES.items():
            recipe = "  (default)" if alias == ORDINARY.sampler else ""
            print(f"{alias:<16} = {name}" + (f" --schedule {schedule}" if schedule else "") + recipe)
        return 0

    # Everything that can be refused is checked before the (slow) model load.
    stored = sdkit.read_parameters(args.from_image) if args.from_image else {}
    if args.from_image:
        _check_usable(stored, args)
    prompt = args.prompt if args.prompt is not None else stored.get("prompt")
    if prompt is None:
        raise ValueError("PROMPT is required unless --from or --list-samplers is given")
    kwargs = {k: getattr(args, k) if getattr(args, k) is not None else stored.get(k)
              for k in ("negative_prompt", "width", "height", "steps", "guidance_scale", "guidance_rescale", "sampler",
                        "seed",
                        "clip_skip")}
    if args.schedule is not None or args.sampler is None:  # a stored schedule goes with the stored sampler
        kwargs["schedule"] = args.schedule if args.schedule is not None else stored.get("schedule")
    if args.eta is not None:
        kwargs["eta"] = args.eta
    elif "eta" in stored and (args.sampler is None or resolve(args.sampler)[0].name == "tcd"):  # tcd's, kept with it
        kwargs["eta"] = stored["eta"]
    kwargs |= {k: stored[k] for k in micro_conditioning.ARGUMENTS if k in stored}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if "sampler" in kwargs:
        resolve(kwargs["sampler"], kwargs.get("schedule"))  # a schedule the sampler lacks: refused before the load
        if "eta" in kwargs and resolve(kwargs["sampler"])[0].name != "tcd":
            raise ValueError(f"--eta is a setting of the tcd sampler, not of {kwargs['sampler']}")
    kwargs["seed"] = kwargs.get("seed", secrets.randbits(32))  # chosen here: the file names carry it
    seeds = [kwargs["seed"] + i for i in range(args.num_images)]
    init = open_image(args.init_image) if args.init_image else None
    if init is not None:
        kwargs["strength"] = stored.get("strength") if args.strength is None else args.strength
    kwargs |= _hires(args, stored, init)
    mask = _mask(args, init, stored, kwargs)
    if mask is not None:
        init, mask = mask
    targets = _targets(args.output, prompt, seeds)
    model = args.model or _stored_model(stored, args.from_image) or DEFAULT_MODEL
    vae, notes = (args.vae, []) if args.vae or "VAE" not in stored else stored_vae(stored, model)
    notes += _other_model(stored, model)
    refiner_start = args.refiner_start if args.refiner_start is not None else stored.get("refiner_start")
    if args.refiner is None and args.refiner_start is not None:
        _warn("--refiner-start has no effect without --refiner MODEL")
    elif args.refiner is None and "Refiner" in stored:
        notes.append(f"the stored Refiner {stored['Refiner']} (switch at {stored.get('refiner_start', '?')}) is "
                     "not applied: give it as --refiner MODEL")

    if init is None and args.strength is not None:
        _warn("--strength has no effect without -i INIT_IMAGE")
    elif init is None and "strength" in stored:
        _warn(f"the stored Denoising strength {stored['strength']} is not applied: it needs the init image "
              "(-i), which PNGs do not store")
    for note in notes + _unsupported(stored, prompt, kwargs.get("negative_prompt", ""), kwargs.get("sampler"),
                                     args.prompt_syntax):
        _warn(note)

    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    else:
        print(f"loading {model}" + (f" with VAE {vae}" if vae else ""), file=sys.stderr)
    memory = sdkit.Memory(SWITCH[args.vae_slicing], SWITCH[args.vae_tiling], args.attention_chunk)
    with _warnings_as_lines():
        pipe = sdkit.load(model, backend=args.backend, device=args.device, dtype=args.dtype, compile=args.compile,
                          memory=memory, embedding_dirs=args.embedding_dirs, lora_dirs=args.lora_dirs, vae=vae)
        if args.refiner:  # same backend, device and dtype: the latents pass from one to the other
            if not args.quiet:
                print(f"loading refiner {args.refiner}", file=sys.stderr)
            kwargs["refiner"] = sdkit.load(args.refiner, backend=pipe.backend.name, device=pipe.backend.device,
                                           dtype=pipe.backend.dtype, compile=args.compile, memory=memory)
            if refiner_start is not None:
                kwargs["refiner_start"] = refiner_start
        if not args.quiet:
            b = pipe.backend
            print(f"{pipe.checkpoint.family} on {b.name} {b.device} {b.dtype}", file=sys.stderr)
            for name, text in (("prompt", prompt), ("negative prompt", kwargs.get("negative_prompt") or "")):
                used, capacity = pipe.token_usage(text, args.prompt_syntax)
                if capacity > CHUNK:  # A1111's counter, worth a line once the text takes several chunks
                    print(f"{name}: {used}/{capacity} tokens, {capacity // CHUNK} chunks", file=sys.stderr)
        time_ids = pipe.checkpoint.time_ids + (kwargs["refiner"].checkpoint.time_ids if args.refiner else ())
        ignored = [k for k in micro_conditioning.ARGUMENTS
                   if k in kwargs and k.removeprefix("negative_") not in time_ids]
        if ignored:
            _warn(f"not applied: {', '.join(ignored)} (stored SDXL micro-conditioning this model does not take)")
            kwargs = {k: v for k, v in kwargs.items() if k not in ignored}
        for note in _missing_embeddings(stored.get("TI hashes", ""), pipe.embeddings):
            _warn(note)
        if args.from_image and args.prompt is None:
            prompt, notes = _find_loras(prompt, stored.get("Lora hashes", ""), pipe.loras)
            for note in notes:
                _warn(note)
        if args.loras:
            kwargs["loras"] = dict(args.loras)

        progress = _Progress(disable=args.quiet)
        with progress:
            images = pipe.generate(prompt, num_images=args.num_images, init_image=init, callback=progress,
                                   prompt_syntax=args.prompt_syntax, mask_image=mask, **kwargs)

    for image, target, seed in zip(images, targets, seeds):
        target.parent.mkdir(parents=True, exist_ok=True)
        path = sdkit.save(image, _free(target))
        if mask is not None:
            mask.save(_mask_path(path))
        print(path if args.quiet else f"{path}  seed {seed}")
    if not args.quiet:
        print(progress.summary())
    return 0


class _Progress:
    """The generate() callback: a tqdm bar over UNet evaluations, and their speed."""

    def __init__(self, disable: bool):
        self.disable, self.bar, self.steps = disable, None, 0
        self.start = time.perf_counter()
        self.end = self.start

    def __call__(self, step: int, total: int, latents) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="it", disable=self.disable, file=sys.stderr, leave=False)
        self.bar.update(step - self.steps)
        self.steps, self.end = step, time.perf_counter()

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def summary(self) -> str:
        seconds = max(self.end - self.start, 1e-9)
        return f"{self.steps} steps in {seconds:.1f} s ({self.steps / seconds:.2f} it/s)"


def _mask(args: argparse.Namespace, init, stored: dict, kwargs: dict):
    """(init image, mask) for inpainting (--mask, --outpaint's canvas, or --from's NAME.mask.png beside the
    stored image), else None; the inpainting settings go into kwargs (flags over stored values)."""
    asked = [f for f, v in (("--mask", args.mask), ("--outpaint", args.outpaint)) if v is not None]
    if len(asked) == 2:
        raise ValueError("--mask and --outpaint exclude each other: --outpaint makes its own mask")
    settings = {k: getattr(args, k) if getattr(args, k) is not None else stored.get(k) for k in INPAINT_KEYS}
    settings = {k: v for k, v in settings.items() if v is not None}
    found = args.from_image and _mask_path(args.from_image)
    if asked and init is None:
        raise ValueError(f"{asked[0]} needs -i INIT_IMAGE: the picture to paint in")
    if not asked and init is not None and found and found.is_file() and "mask_blur" in stored:
        args.mask = found  # --from an inpainted picture, given its init image again: its mask too
    elif not asked:
        for flag in INPAINT_KEYS:
            if getattr(args, flag) is not None:
                _warn(f"--{flag.replace('_', '-')} has no effect without --mask or --outpaint")
        if "mask_blur" in stored:
            _warn("the stored inpainting settings are not applied: they need the init image again (-i; PNGs do "
                  f"not store it) and the mask {found}" + ("" if found.is_file() else ", which is not there"))
        return None
    kwargs |= settings
    if args.outpaint is not None:
        init, mask = inpaint.outpaint_canvas(init, *args.outpaint, settings.get("mask_blur", DEFAULTS["mask_blur"]),
                                             kwargs["seed"])
        return init, mask
    return init, inpaint.open_mask(args.mask, init.size)


def _mask_path(image: Path) -> Path:
    """NAME.png -> NAME.mask.png: where the mask of an inpainted picture is kept."""
    return Path(image).with_name(Path(image).stem + ".mask.png")


def _targets(output: str | None, prompt: str, seeds: list[int]) -> list[Path]:
    """Where each image goes, before any free-name choice; usage errors for paths that cannot work.
    A folder named with a trailing slash is created when the images are saved."""
    if output is None or output.endswith(("/", os.sep)) or Path(output).is_dir():
        folder = Path(output or ".")
        slug = re.sub(r"\W+", "-", prompt.lower()).strip("-")[:60].rstrip("-") or "image"
        return [folder / f"{slug}-{seed}.png" for seed in seeds]
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"-o {output}: sdkit-gen writes PNG files; use a name ending in .png, or a folder "
                         "(end it with / to create it)")
    if not output.parent.is_dir():
        raise ValueError(f"-o {output}: folder {str(output.parent)!r} does not exist")
    return [output] * len(seeds)


def _free(path: Path) -> Path:
    """`path`, or the first of path-1, path-2, ... that does not exist: an existing file is never replaced."""
    n, free = 0, path
    while free.exists():
        n += 1
        free = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return free


def _find_loras(prompt: str, lora_hashes: str, library) -> tuple[str, list[str]]:
    """A stored prompt's <lora:NAME:...> tags checked against the LoRA folders: a name that is not there is
    looked for by its stored `Lora hashes` entry (the tag then names the file found); one found neither way
    is named and its tag removed."""
    hashes = {}
    for entry in filter(None, (e.strip() for e in lora_hashes.split(","))):
        name, _, short = entry.rpartition(":")
        hashes[name.strip()] = short.strip()
    files, notes = library.files(), []

    def find(m: re.Match) -> str:
        name = m[1].split(":")[0].strip()
        if name in files:
            return m[0]
        found = library.by_hash(hashes[name]) if hashes.get(name) else None
        if found is not None:
            notes.append(f"LoRA {name!r} is not in the LoRA folders by name; its hash {hashes[name]} is {found.name}")
            return m[0].replace(name, found.stem, 1)
        hash_note = f" (hash {hashes[name]})" if hashes.get(name) else ""
        notes.append(f"LoRA {name!r}{hash_note} is not in the LoRA folders (--lora-dir, $SDKIT_LORA_DIRS): "
                     "not applied")
        return ""

    return lora.TAG.sub(find, prompt), notes


def _missing_embeddings(ti_hashes: str, embeddings) -> list[str]:
    """A stored `TI hashes: "name: hash, ..."` entry checked against the embedding folders: an embedding is
    used again when its name is in the prompt, so only one that is missing, or another file of that name,
    needs saying."""
    files = {stem.lower(): path for stem, path in embeddings.files().items()}
    notes = []
    for entry in filter(None, (e.strip() for e in ti_hashes.split(","))):
        name, _, stored_hash = entry.rpartition(":")
        name, stored_hash = name.strip() or stored_hash.strip(), stored_hash.strip() if name.strip() else ""
        path = files.get(name.lower())
        if path is None:
            notes.append(f"embedding {name!r} (TI hashes) is not in the embedding folders (--embedding-dir, "
                         "$SDKIT_EMBEDDING_DIRS); its word is read as text")
        elif stored_hash and embeddings.short_hash(path) != stored_hash:
            notes.append(f"embedding {name!r}: {path} has hash {embeddings.short_hash(path)}, the image was made "
                         f"with {stored_hash}")
    return notes


def _stored_model(stored: dict, image: Path | None) -> str | None:
    """The model a PNG names, if sdkit can find it (a path here or a Hub repo id); A1111 names need -m."""
    model = stored.get("model")
    if model is None:
        return None
    if Path(model).expanduser().exists() or hub.REPO_ID.fullmatch(model):
        return model
    raise ValueError(f"{image}: its model {model!r} is neither a local path nor a Hub repo id; pass -m MODEL")


def stored_vae(stored: dict, model: str) -> tuple[str | None, list[str]]:
    """(the VAE to load, notes) for the VAE an image names: a path as is; else a .safetensors file of that name or
    stem (a folder-qualified name, as SwarmUI writes, by its last part) next to the model or in $SDKIT_VAE_DIRS;
    else a Hub repo id as is. Checked against a stored VAE hash; (None, a note) when it is not found: the model's
    own VAE is used."""
    name, stored_hash = stored["VAE"], stored.get("VAE hash")
    found = Path(name).expanduser() if Path(name).expanduser().exists() else None
    if found is None:
        near = Path(model).expanduser().resolve().parent if Path(model).expanduser().exists() else None
        names = [n for base in dict.fromkeys([name, Path(name).name])
                 for n in dict.fromkeys([base, Path(base).stem + ".safetensors"]) if not n.endswith(PICKLES)]
        places = [d / n for d in [*filter(None, [near]), *folders(None, VAE_DIRS, VAE_DIRS)] for n in names]
        found = next((p for p in places if p.exists()), None)
    if found is None:
        if hub.REPO_ID.fullmatch(name) and not name.endswith((*PICKLES, ".safetensors")):
            return name, []
        return None, [f"VAE {name!r} is not next to the model nor in ${VAE_DIRS}: the model's own VAE is used "
                      "(pass --vae FILE)"]
    if stored_hash and found.is_file() and hashes.autov2(found) != stored_hash:
        return str(found), [f"VAE {name!r}: {found} has hash {hashes.autov2(found)}, the image was made with "
                            f"{stored_hash}"]
    return str(found), []


def _other_model(stored: dict, model: str) -> list[str]:
    """A note if the model file's hash is not the stored `Model hash` (A1111's AutoV2)."""
    path = Path(model).expanduser()
    if not stored.get("Model hash") or not path.is_file() or hashes.autov2(path) == stored["Model hash"]:
        return []
    return [f"{path} has Model hash {hashes.autov2(path)}, the image was made with {stored['Model hash']}"]


def _check_usable(stored: dict, args: argparse.Namespace) -> None:
    """Never run on an empty prompt or on default settings without saying so: A1111's rule reads a last line with
    fewer than three `Key: value` pairs as prompt text, which leaves no settings at all."""
    image, settings = args.from_image, stored.keys() - {"prompt", "negative_prompt"}
    if not settings and not stored["prompt"].strip():
        raise ValueError(f"{image}: its stored parameters hold neither a prompt nor settings")
    if not settings:
        _warn(f"{image}: no settings line (A1111 needs at least three `Key: value` pairs on the last line): the "
              "whole text is the prompt, and every setting is sdkit's default")
        return
    if not stored["prompt"].strip() and args.prompt is None:
        _warn(f"{image}: the stored prompt is empty")
    missing = [a1111 for key, a1111 in CORE.items()
               if key not in stored and a1111 not in stored and getattr(args, key) is None]
    if missing:
        _warn(f"{image} does not store {', '.join(missing)}: using sdkit's default")


def unhonoured(stored: dict, honoured: set[str], sampler: str | None = None) -> list[str]:
    """One warning line per stored setting outside `honoured`: A1111's keys, extensions' keys (lower-case ones
    too) and other tools' keys alike. Hires fix is named as such: its Denoising strength is the hires pass's."""
    rest = {k: v for k, v in stored.items() if k not in honoured}
    notes = []
    if "Sampler" in rest:
        a1111 = ", ".join(f"{k}: {rest.pop(k)}" for k in ("Sampler", "Schedule type") if k in rest)
        notes.append(f"{a1111} is not available in sdkit; using " + (sampler or "the model's recommended sampler"))
    if HIRES_ON & stored.keys() and "Hires upscaler" in rest:  # applied, with a stand-in for the upscaler
        notes.append(f"Hires upscaler: {rest.pop('Hires upscaler')} is not in sdkit; using Lanczos")
    if any(k in rest for k in HIRES_KEYS):  # hires keys sdkit cannot read (an unreadable scale or size)
        notes.append(f"hires fix is not applied: only its first pass is generated{_hires_sizes(stored)}")
        for k in [k for k in rest if k.startswith("Hires ")]:
            notes.append(f"not applied (hires fix): {k}: {rest.pop(k)}")
        if "hires_denoising" in stored:
            notes.append(f"not applied (hires fix): Denoising strength: {stored['hires_denoising']} (the hires "
                         "pass's strength)")
    notes += [f"not applied: {k}: {v}" for k, v in rest.items()]
    return notes


def _hires(args: argparse.Namespace, stored: dict, init) -> dict:
    """generate()'s hires_* arguments from the flags, else from a stored hires fix (A1111's "Hires upscale",
    ...); an upscaler sdkit lacks (R-ESRGAN, ...) becomes Lanczos. Hires fix is text-to-image: none with -i."""
    given = {k: getattr(args, k) for k in HIRES if getattr(args, k) is not None}
    if init is not None:
        if given:
            raise ValueError("--hires-* make a two-pass text-to-image; they take no -i INIT_IMAGE")
        if HIRES_ON & stored.keys():
            _warn("the stored hires fix is not applied: -i makes this image-to-image")
        return {}
    if len(HIRES_ON & given.keys()) == 2:
        raise ValueError("give --hires-scale or --hires-resize, not both")
    if not HIRES_ON & stored.keys():
        if given and not HIRES_ON & given.keys():
            raise ValueError("--hires-steps, --hires-denoising and --hires-upscaler need --hires-scale or "
                             "--hires-resize")
        return given
    restored = {k: stored[k] for k in HIRES if k in stored and not (HIRES_ON & given.keys() and k in HIRES_ON)}
    restored.setdefault("hires_upscaler", "lanczos" if "Hires upscaler" in stored else "latent")
    return restored | given


def _hires_scale(text: str) -> float:
    value = _float(text)
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"must be a number in [1, 16], got {text!r}")
    return value


def _hires_resize(text: str) -> tuple[int, int]:
    """"1024x1536" -> (1536, 1024): generate()'s (height, width); 0 for one side, not both."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not any(int(p) for p in parts):
        raise argparse.ArgumentTypeError(f"must be WxH in pixels (one side may be 0), got {text!r}")
    return int(parts[1]), int(parts[0])


def _hires_sizes(stored: dict) -> str:
    """", at 512x768 (the stored image is 1024x1536)": the first pass's size and A1111's final one, where known."""
    if "width" not in stored or "height" not in stored:
        return ""
    w, h = stored["width"], stored["height"]
    final = stored.get("Hires resize")
    try:
        scale = float(stored.get("Hires upscale", ""))
        final = final or f"{int(w * scale)}x{int(h * scale)}"  # A1111's hr_upscale_to_x, _y
    except ValueError:
        pass
    return f", at {w}x{h}" + (f" (the stored image is {final})" if final else "")


def _unsupported(stored: dict, prompt: str, negative: str, sampler: str | None, syntax: str) -> list[str]:
    """What the stored parameters or the prompts ask for that sdkit does not do yet, one note each."""
    notes = unhonoured(stored, HONOURED | HARMLESS, sampler)

    for name, text in (("prompt", prompt), ("negative prompt", negative)):
        if re.search(r"<hypernet:", text):
            notes.append(f"the {name}'s hypernetwork tags (<hypernet:...>) are not applied; they are read as text")
        if name == "negative prompt" and re.search(r"<(lora|lyco):", text):
            notes.append("the negative prompt's LoRA tags are not applied (as in A1111); they are read as text")
        if syntax == "a1111" and (found := unsupported_syntax(text)):
            notes.append(f"the {name}'s {' and '.join(found)} is not supported; read as (weighted) text")
    return notes


@contextmanager
def _warnings_as_lines():
    """sdkit's warnings (an embedding that does not fit the model, ...) as one `warning:` line each, every
    one of them once; other libraries' warnings as Python shows them."""
    shown, python = set(), warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if not text.startswith("sdkit: "):
            return python(message, category, filename, lineno, file, line)
        if text not in shown:
            shown.add(text)
            _warn(text.removeprefix("sdkit: "))

    with warnings.catch_warnings():
        warnings.filterwarnings("always", message="sdkit: ")
        warnings.showwarning = show
        yield


def _fail(error: Exception, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"sdkit-gen: error: {error}", file=sys.stderr)
    return code


def _warn(message: str) -> None:
    print(f"sdkit-gen: warning: {message}", file=sys.stderr)


def _lora(text: str) -> tuple[str, float]:
    """--lora NAME[:W] -> (NAME, W)."""
    name, sep, weight = text.rpartition(":")
    try:
        return (name, float(weight)) if sep else (text, 1.0)
    except ValueError:
        return text, 1.0  # a name with a ':' and no weight


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _seed(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _size(text: str) -> int:
    value = _int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8, got {text}")
    if value % 8:
        lo = value - value % 8
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of 8; use {lo} or {lo + 8}")
    return value


def _guidance(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _sides(text: str) -> tuple[int, int, int, int]:
    """"0,0,256,0" -> (left, top, right, bottom), each a multiple of 8."""
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"must be LEFT,TOP,RIGHT,BOTTOM in pixels (e.g. 0,0,256,0), got {text}")
    sides = tuple(_non_negative_int(p.strip()) for p in parts)
    for name, n in zip(inpaint.SIDES, sides):
        if n % 8:
            raise argparse.ArgumentTypeError(f"{name} {n} is not a multiple of 8; use {n - n % 8} or {n - n % 8 + 8}")
    if not any(sides):
        raise argparse.ArgumentTypeError("all four sides are 0; give the pixels to add, e.g. 0,0,256,0")
    return sides


def _unit(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _strength(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _refiner_start(text: str) -> float:
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _attention_chunk(text: str) -> int | None:
    """auto -> None, off -> 0, N -> N: sdkit.Memory's attention_chunk."""
    if text in ("auto", "off"):
        return {"auto": None, "off": 0}[text]
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be auto, off or an integer >= 1, got {text!r}")
    return int(text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
