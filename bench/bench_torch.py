"""sdkit (torch backend) against diffusers on the same weights, in alternating separate processes.

    python bench/bench_torch.py                       # builds an SD1.5-sized random checkpoint once
    python bench/bench_torch.py --size 512 --steps 20 --runs 3 --dtype bfloat16
    python bench/bench_torch.py --device cuda --dtype float16 --size 512 --steps 30 [--compile]
    python bench/bench_torch.py --family sdxl --device cuda --dtype float16 --size 1024
    python bench/bench_torch.py --model PATH_OR_HUB_ID ...

Each run is a fresh process (so load time and peak RSS are honest); sdkit and diffusers alternate, and the
report gives medians and sdkit/diffusers ratios. Same sampler (DPM++ 2M Karras), size, steps, guidance 7.5 and
initial noise. "loop it/s" is UNet steps per second between the first and the last step of the later call, with
the device synchronised at both ends only (the number diffusers' progress bar shows); "later_s" is the whole
call: text encoding, sampling and VAE decode. --compile compiles sdkit's UNet (diffusers runs as it ships).
--diffusers-dtype runs the reference in another dtype (e.g. sdkit bfloat16 against diffusers float32).
Needs the test extra (diffusers, transformers) for the reference side and to build the random checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
ROOT = Path(__file__).resolve().parents[1]
KEYS = ["load_s", "first_s", "later_s", "loop_it_s", "peak_rss_mb", "peak_gpu_mb"]


def build_random(folder: Path, family: str, dtype: str) -> Path:
    """A diffusers folder with SD1.5's or SDXL-base's exact topology and random weights (written once).
    Built on the GPU when there is one (initialising 2.6 billion weights on a CPU takes minutes)."""
    if (folder / "model_index.json").exists():
        return folder
    print(f"building a random {family}-sized checkpoint in {folder} (once)...", file=sys.stderr)
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sys.path.insert(0, str(ROOT))
    from sdkit.tokenizer import bpe_vocab

    torch.manual_seed(0)
    vocab, merges = bpe_vocab()
    tmp = folder.with_suffix(".tok")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = lambda pad: CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), pad_token=pad,
                                          model_max_length=77)
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            projection_dim=768, hidden_act="quick_gelu")
    vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    schedulers = ROOT / "sdkit" / "data" / "schedulers"
    # initialised in the dtype written: SDXL built in float32, then cast, would peak at 21 GB instead of 7
    torch.set_default_dtype(getattr(torch, dtype))
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        if family == "sd15":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**vae, sample_size=512), text_encoder=CLIPTextModel(clip_l),
                tokenizer=tokenizer("<|endoftext|>"),
                unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                scheduler=PNDMScheduler.from_config(json.loads((schedulers / "sd15-scheduler_config.json").read_text())),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:  # SDXL base 1.0's published configs
            bigg = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                                  projection_dim=1280, hidden_act="gelu", bos_token_id=0, eos_token_id=2)
            unet = UNet2DConditionModel(
                sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**vae, sample_size=1024, scaling_factor=0.13025), text_encoder=CLIPTextModel(clip_l),
                text_encoder_2=CLIPTextModelWithProjection(bigg), tokenizer=tokenizer("<|endoftext|>"),
                tokenizer_2=tokenizer("!"), unet=unet, force_zeros_for_empty_prompt=True,
                scheduler=EulerDiscreteScheduler.from_config(
                    json.loads((schedulers / "sdxl-base-scheduler_config.json").read_text())))
    torch.set_default_dtype(torch.float32)
    pipe.to("cpu").save_pretrained(folder)
    return folder


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, since ru_maxrss survives exec and so can report the
    parent's size at fork (a parent that built a 7 GB checkpoint made every child read 7.8 GB)."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def child(args) -> dict:
    """One measured process: load, then generate twice (the first call pays one-off costs)."""
    import numpy as np
    import torch

    latents = np.random.default_rng(0).standard_normal((1, 4, args.size // 8, args.size // 8), dtype=np.float32)
    cuda = args.device.startswith("cuda")
    stamps: list[float] = []

    def stamp(step: int, total: int):  # device synchronised at the first and last step only
        if step in (1, total):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    if args.child == "sdkit":
        import sdkit
        pipe = sdkit.load(args.model, backend="torch", device=args.device, dtype=args.dtype, compile=args.compile)
        run = lambda: pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps,
                                    sampler="dpmpp_2m_karras", latents=latents,
                                    callback=lambda step, total, x: stamp(step, total))
    else:
        from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler
        dtype = getattr(torch, args.diffusers_dtype or args.dtype)
        pipe = AutoPipelineForText2Image.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                         requires_safety_checker=False).to(args.device)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
        pipe.set_progress_bar_config(disable=True)
        x = torch.from_numpy(latents).to(args.device, dtype)

        def on_step_end(pipe, i, t, kwargs):
            stamp(i + 1, args.steps)
            return kwargs

        run = lambda: pipe(PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps, latents=x,
                           guidance_scale=7.5, callback_on_step_end=on_step_end)
    if cuda:
        torch.cuda.synchronize()
    load = time.perf_counter() - t0
    times = []
    for _ in range(2):
        stamps.clear()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak_mb = peak_rss_mb()
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    loop = (args.steps - 1) / (stamps[-1] - stamps[0]) if args.steps > 1 else float("nan")
    return dict(load_s=load, first_s=times[0], later_s=times[1], loop_it_s=loop, peak_rss_mb=peak_mb,
                peak_gpu_mb=peak_gpu_mb)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder or Hub id (default: build a random one of --family's size)")
    p.add_argument("--family", choices=["sd15", "sdxl"], default="sd15", help="topology of the random checkpoint")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=3, help="processes per implementation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--diffusers-dtype", help="the reference's dtype (default: --dtype)")
    p.add_argument("--compile", action="store_true", help="sdkit.load(..., compile=True)")
    p.add_argument("--only", choices=["sdkit", "diffusers"], help="measure one side only")
    p.add_argument("--child", choices=["sdkit", "diffusers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.model is None:
        cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
        weights = "float16" if args.dtype == "float16" else "float32"
        args.model = str(build_random(cache / f"{args.family}-random-{weights}", args.family, weights))
    impls = [args.only] if args.only else ["sdkit", "diffusers"]
    results = {impl: [] for impl in impls}
    for run in range(args.runs):
        for impl in impls:
            cmd = [sys.executable, __file__, "--child", impl, "--model", args.model, "--size", str(args.size),
                   "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype]
            cmd += ["--compile"] * args.compile + ["--diffusers-dtype", args.diffusers_dtype] * bool(args.diffusers_dtype)
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{impl} run failed:\n{out.stderr[-3000:]}")
            results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1} {impl:9s} " + " ".join(f"{k}={v:.3f}" for k, v in results[impl][-1].items()),
                  file=sys.stderr, flush=True)
    med = {impl: {k: statistics.median(r[k] for r in rs) for k in KEYS} for impl, rs in results.items()}
    ref = args.diffusers_dtype or args.dtype
    print(f"\n{args.family} {args.size}x{args.size}, {args.steps} steps, {args.device}, sdkit {args.dtype}"
          f"{' compiled' if args.compile else ''}, diffusers {ref}, medians of {args.runs} runs")
    print("| metric | " + " | ".join(impls) + (" | sdkit/diffusers |" if len(impls) == 2 else " |"))
    print("|---|" + "---|" * (len(impls) + (len(impls) == 2)))
    for k in KEYS:
        vals = [med[impl][k] for impl in impls]
        ratio = f" {vals[0] / vals[1]:.2f} |" if len(vals) == 2 and vals[1] else (" - |" if len(vals) == 2 else "")
        print(f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" + ratio)


if __name__ == "__main__":
    main()
