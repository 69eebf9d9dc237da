"""sdkit's MLX backend against ml-explore/mlx-examples' stable_diffusion on the same weights, in alternating
separate processes.

    pip install -e ".[mlx,test]"       # the test extra (diffusers, transformers) builds the random checkpoint
    git clone https://github.com/ml-explore/mlx-examples
    python bench/bench_mlx.py --mlx-examples mlx-examples/stable_diffusion     # a Mac: 512x512, float16, gpu
    python bench/bench_mlx.py --mlx-examples mlx-examples/stable_diffusion --model stabilityai/stable-diffusion-2-1-base
    python bench/bench_mlx.py --mlx-examples mlx-examples/stable_diffusion --tiny --device cpu --dtype float32 \\
        --size 128 --steps 4                                                   # MLX's CPU build (Linux)

Without --model, a random checkpoint with SD2.1-base's layout is built once in $SDKIT_BENCH_CACHE (default
~/.cache/sdkit-bench); --tiny narrows it (see TINY) for MLX's CPU build, whose reference BLAS would take hours
on the full model. --model takes a diffusers folder with SD2's layout or a Hub id (sdkit downloads it once).
Without --mlx-examples, sdkit is measured alone.

Each run is a fresh process, so load time and peak memory are honest; sdkit and mlx-examples alternate, and the
report gives medians and sdkit/mlx-examples ratios. Both sides get the same weights, prompt, empty negative
prompt, guidance 7.5 (a UNet batch of 2), size, steps and initial noise: mlx-examples draws its prior with
mx.random.normal after mx.random.seed(0), and sdkit is given that same draw as `latents`. Each runs its own
Euler sampler (one UNet call per step); what differs, by each implementation's own design:
- the timestep grid: mlx-examples spaces t evenly from 1000 to 0, sdkit follows the scheduler config
  ("leading" spacing, as diffusers does). Same cost per step, a different picture.
- the text: mlx-examples pads the two prompts only to the longer one (12 tokens here), sdkit to CLIP's 77,
  so sdkit's text encoder reads 77 tokens per prompt and its cross-attention has 77 keys, against 12.
- compilation: sdkit runs its UNet through mx.compile on the GPU (paid in the first call), mlx-examples does not.
The VAE: mlx-examples decodes in float32; sdkit in the compute dtype (float16 on the GPU), redone in float32
only if a result is not finite.
mlx-examples' loader fetches SD2.1-base's files by Hub id with huggingface_hub.hf_hub_download; in its child
process only, that function is replaced by one that reads the same file names from the local folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch import peak_rss_mb  # noqa: E402

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
CFG = 7.5
SEED = 0
MLX_EXAMPLES_MODEL = "stabilityai/stable-diffusion-2-1-base"  # the key of the file list its loader reads

# SD2.1-base's published layout (its unet/, text_encoder/ and vae/ config.json); TINY keeps every block,
# layer and 64-wide head but narrows UNet channels 5x, text width 4x and VAE channels 4x.
SD21_BASE = dict(unet=(320, 640, 1280, 1280), heads=(5, 10, 20, 20), text=1024, text_heads=16,
                 vae=(128, 256, 512, 512))
TINY = dict(unet=(64, 128, 256, 256), heads=(1, 2, 4, 4), text=256, text_heads=4, vae=(32, 64, 128, 128))

MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"],
               "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
KEYS = ["load_s", "first_s", "later_s", "steps_per_s", "peak_rss_mb", "peak_mlx_mb"]


def build_random(folder: Path, size: dict) -> Path:
    """A diffusers folder with SD2.1-base's layout and random weights (written once, then reused)."""
    if (folder / "model_index.json").exists():
        return folder
    print(f"building a random checkpoint in {folder} (once)...", file=sys.stderr)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import sdkit
    from sdkit.tokenizer import bpe_vocab

    data = Path(sdkit.__file__).parent / "data"
    torch.manual_seed(0)
    # attention_head_dim is the number of heads in SD2's config (a diffusers misnomer both loaders follow).
    # transformer_layers_per_block as a list: mlx-examples indexes it, and diffusers now writes a bare 1
    # (SD2.1-base's published config, from diffusers 0.10, has no such key).
    UNet2DConditionModel(sample_size=64, block_out_channels=size["unet"], attention_head_dim=size["heads"],
                         cross_attention_dim=size["text"], use_linear_projection=True,
                         transformer_layers_per_block=(1,) * 4).save_pretrained(folder / "unet")
    AutoencoderKL(block_out_channels=size["vae"], layers_per_block=2, latent_channels=4, sample_size=512,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(folder / "vae")
    text = CLIPTextConfig(hidden_size=size["text"], intermediate_size=4 * size["text"], num_hidden_layers=23,
                          num_attention_heads=size["text_heads"], projection_dim=512, hidden_act="gelu",
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)
    CLIPTextModel(text).save_pretrained(folder / "text_encoder")
    vocab, merges = bpe_vocab()
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    for file in (data / "tokenizers" / "openclip").iterdir():  # SD2's special tokens ("!" pads)
        shutil.copy(file, folder / "tokenizer" / file.name)
    (folder / "scheduler").mkdir()  # SD2.1-base's scheduler is SD1.5's (epsilon prediction, same betas)
    shutil.copy(data / "schedulers" / "sd15-scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))  # last: marks the folder complete
    return folder


def load_sdkit(args):
    import mlx.core as mx
    import numpy as np

    import sdkit

    pipe = sdkit.load(args.model, backend="mlx", device=args.device, dtype=args.dtype)
    mx.random.seed(SEED)  # mlx-examples' initial noise (its sample_prior's draw after seeding, NHWC); microseconds
    latents = np.array(mx.random.normal((1, args.size // 8, args.size // 8, 4))).transpose(0, 3, 1, 2)

    def generate(stamp):
        return pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance_scale=CFG,
                             sampler="euler", latents=latents, callback=lambda *_: stamp())

    return generate


def load_mlx_examples(args):
    import mlx.core as mx
    import numpy as np

    sys.path.insert(0, args.mlx_examples)
    from stable_diffusion import StableDiffusion, model_io

    model_io.hf_hub_download = lambda repo_id, filename: str(Path(args.model) / filename)
    sd = StableDiffusion(MLX_EXAMPLES_MODEL, float16=args.dtype == "float16")
    sd.ensure_models_are_loaded()  # its weights are read lazily otherwise

    def generate(stamp):
        latent_size = (args.size // 8, args.size // 8)
        for x in sd.generate_latents(PROMPT, num_steps=args.steps, cfg_weight=CFG, latent_size=latent_size,
                                     seed=SEED):
            mx.eval(x)
            stamp()
        return np.array((sd.decode(x) * 255).astype(mx.uint8))  # images on the host, as sdkit returns them

    return generate


def child(args) -> dict:
    """One measured process: load, then generate twice (the first call pays one-off costs: mx.compile on the GPU).
    steps/s is timed between the first and the last UNet evaluation of the second call, so text encoding and
    VAE decoding are not in it; they are in first_s and later_s."""
    import mlx.core as mx

    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    t0 = time.perf_counter()
    generate = load_sdkit(args) if args.child == "sdkit" else load_mlx_examples(args)
    load_s = time.perf_counter() - t0
    times, stamps = [], []
    for _ in range(2):
        stamps.clear()
        t0 = time.perf_counter()
        generate(lambda: stamps.append(time.perf_counter()))
        times.append(time.perf_counter() - t0)
    rss = peak_rss_mb()
    return dict(load_s=load_s, first_s=times[0], later_s=times[1],
                steps_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]), peak_rss_mb=rss,
                peak_mlx_mb=mx.get_peak_memory() / 2**20)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a folder, .safetensors file or Hub id; mlx-examples reads diffusers folders "
                                   "with SD2's layout only (default: build a random one with SD2.1-base's layout)")
    p.add_argument("--tiny", action="store_true", help="build the random checkpoint narrow, for MLX's CPU build")
    p.add_argument("--mlx-examples", help="path to mlx-examples/stable_diffusion, to compare against")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=3, help="processes per implementation")
    p.add_argument("--device", default="gpu")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--child", choices=["sdkit", "mlx-examples"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.steps < 2:
        p.error("--steps must be at least 2: steps/s is timed from the first UNet evaluation to the last")
    if args.mlx_examples and args.dtype not in ("float32", "float16"):
        p.error("mlx-examples runs in float32 or float16 only")
    if args.model and args.tiny:
        p.error("--tiny builds its own random checkpoint; drop --model or --tiny")
    if args.model is None:
        cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
        folder = cache / ("sd21-base-tiny-random" if args.tiny else "sd21-base-random")
        args.model = str(build_random(folder, TINY if args.tiny else SD21_BASE))
    else:
        from sdkit.errors import SdkitError
        from sdkit.hub import resolve
        try:
            args.model = str(resolve(args.model))
        except SdkitError as e:
            p.error(str(e))
    if args.mlx_examples and not Path(args.model).is_dir():
        p.error(f"mlx-examples reads diffusers folders only, not {args.model}")

    impls = ["sdkit", "mlx-examples"] if args.mlx_examples else ["sdkit"]
    results = {impl: [] for impl in impls}
    for run in range(args.runs):
        for impl in impls:
            cmd = [sys.executable, __file__, "--child", impl, "--model", args.model, "--size", str(args.size),
                   "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype]
            if args.mlx_examples:
                cmd += ["--mlx-examples", args.mlx_examples]
            # stderr passes through: a failing child's traceback is shown
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            results[impl].append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {run + 1} {impl:12s} {json.dumps({k: round(v, 3) for k, v in results[impl][-1].items()})}",
                  file=sys.stderr)

    med = {impl: {k: statistics.median(r[k] for r in rs) for k in KEYS} for impl, rs in results.items()}
    print(f"\n{args.model}: {args.size}x{args.size}, {args.steps} steps, {args.device} {args.dtype}, "
          f"medians of {args.runs} runs")
    print("| metric | " + " | ".join(impls) + (" | sdkit/mlx-examples |" if args.mlx_examples else " |"))
    print("|---" * (len(impls) + 1 + bool(args.mlx_examples)) + "|")
    for k in KEYS:
        row = [med[impl][k] for impl in impls]
        if args.mlx_examples:
            row.append(row[0] / row[1])
        print(f"| {k} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
