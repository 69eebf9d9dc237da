"""sdkit (torch backend) against diffusers on the same weights, in alternating separate processes.

    python bench/bench_torch.py                       # builds an SD1.5-sized random checkpoint once
    python bench/bench_torch.py --model PATH --size 512 --steps 20 --runs 3 --dtype float32 --device cpu

Each run is a fresh process (so load time and peak RSS are honest); sdkit and diffusers alternate, and the
report gives medians and sdkit/diffusers ratios. Same sampler (DPM++ 2M Karras), size, steps and initial noise.
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


def build_sd15_sized(folder: Path) -> Path:
    """A diffusers folder with SD1.5's exact topology and random weights (written once, then reused)."""
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sdkit.tokenizer import bpe_vocab

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"))
    vocab, merges = bpe_vocab()
    tmp = folder.with_suffix(".tok")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    config = json.loads((Path(__file__).parent / "../sdkit/data/schedulers/sd15-scheduler_config.json").resolve().read_text())
    scheduler = PNDMScheduler.from_config(config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def child(args) -> dict:
    """One measured process: load, then generate twice (the first call pays one-off costs)."""
    import numpy as np

    shape = (1, 4, args.size // 8, args.size // 8)
    latents = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    t0 = time.perf_counter()
    if args.child == "sdkit":
        import sdkit
        pipe = sdkit.load(args.model, backend="torch", device=args.device, dtype=args.dtype)
        run = lambda: pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps,
                                    sampler="dpmpp_2m_karras", latents=latents)
    else:
        import torch
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
        dtype = getattr(torch, args.dtype)
        pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False).to(args.device)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
        pipe.set_progress_bar_config(disable=True)
        x = torch.from_numpy(latents).to(args.device, dtype)
        run = lambda: pipe(PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps, latents=x)
    load = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(load_s=load, first_s=times[0], later_s=times[1], steps_per_s=args.steps / times[1], peak_rss_mb=peak_mb)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: build an SD1.5-sized random one)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=3, help="processes per implementation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--child", choices=["sdkit", "diffusers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.model is None:
        cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
        print(f"building an SD1.5-sized random checkpoint in {cache} (once)...", file=sys.stderr)
        args.model = str(build_sd15_sized(cache / "sd15-random"))
    results = {"sdkit": [], "diffusers": []}
    for run in range(args.runs):
        for impl in ("sdkit", "diffusers"):
            cmd = [sys.executable, __file__, "--child", impl, "--model", args.model, "--size", str(args.size),
                   "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[impl].append(json.loads(out.strip().splitlines()[-1]))
            print(f"run {run + 1} {impl:9s} {results[impl][-1]}", file=sys.stderr)
    keys = ["load_s", "first_s", "later_s", "steps_per_s", "peak_rss_mb"]
    med = {impl: {k: statistics.median(r[k] for r in rs) for k in keys} for impl, rs in results.items()}
    print(f"\n{args.size}x{args.size}, {args.steps} steps, {args.device} {args.dtype}, medians of {args.runs} runs")
    print(f"| metric | sdkit | diffusers | sdkit/diffusers |\n|---|---|---|---|")
    for k in keys:
        a, b = med["sdkit"][k], med["diffusers"][k]
        print(f"| {k} | {a:.2f} | {b:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
