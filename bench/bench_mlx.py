"""sdkit's MLX backend on Apple silicon: steps per second and peak memory for SD1.5 and SD2.1-base at 512x512,
and, where a checkout of ml-explore/mlx-examples is given, its stable_diffusion on the same model.

    pip install -e ".[mlx]"
    python bench/bench_mlx.py                                  # SD1.5 and SD2.1-base from the Hub, float16, gpu
    python bench/bench_mlx.py --mlx-examples ~/src/mlx-examples/stable_diffusion
    python bench/bench_mlx.py --model ./v1-5-pruned-emaonly.safetensors --steps 30 --runs 3

Each measurement is a fresh process, so load time and peak memory are honest. Steps per second are timed
between the first and the last UNet evaluation of the second generate() call (the first pays for mx.compile),
so text encoding and VAE decoding are not in them; they are reported separately ("total_s"). mlx-examples
supports SD2.1-base (not SD1.5) and runs its own Euler sampler: the UNet is what is compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
MODELS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd21-base": "stabilityai/stable-diffusion-2-1-base"}
KEYS = ["load_s", "steps_per_s", "total_s", "peak_gb"]


def run_sdkit(args) -> dict:
    import mlx.core as mx

    import sdkit

    t0 = time.perf_counter()
    pipe = sdkit.load(args.model, backend="mlx", device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    kw = dict(width=args.size, height=args.size, steps=args.steps, sampler="dpmpp_2m_karras", seed=0)
    pipe.generate(PROMPT, **kw)  # compiles the UNet for this shape
    stamps = []
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    pipe.generate(PROMPT, **kw, callback=lambda step, total, x: stamps.append(time.perf_counter()))
    total_s = time.perf_counter() - t0
    return dict(load_s=load_s, steps_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]), total_s=total_s,
                peak_gb=mx.get_peak_memory() / 2**30)


def run_mlx_examples(args) -> dict:
    """ml-explore/mlx-examples' stable_diffusion (its own loader, which reads the Hub repo)."""
    import mlx.core as mx

    sys.path.insert(0, args.mlx_examples)
    from stable_diffusion import StableDiffusion

    t0 = time.perf_counter()
    sd = StableDiffusion(args.model, float16=args.dtype == "float16")
    sd.ensure_models_are_loaded()
    load_s = time.perf_counter() - t0

    def generate(stamps: list[float]):
        x = None
        for x in sd.generate_latents(PROMPT, n_images=1, num_steps=args.steps, cfg_weight=7.5,
                                     latent_size=(args.size // 8, args.size // 8), seed=0):
            mx.eval(x)
            stamps.append(time.perf_counter())
        mx.eval(sd.decode(x))

    generate([])
    stamps = []
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    generate(stamps)
    total_s = time.perf_counter() - t0
    return dict(load_s=load_s, steps_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]), total_s=total_s,
                peak_gb=mx.get_peak_memory() / 2**30)


def measure(impl: str, model: str, args) -> list[dict]:
    results = []
    for run in range(args.runs):
        cmd = [sys.executable, __file__, "--child", impl, "--model", model, "--size", str(args.size),
               "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype]
        if args.mlx_examples:
            cmd += ["--mlx-examples", args.mlx_examples]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"run {run + 1} {impl} {model}: {results[-1]}", file=sys.stderr)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="a Hub id, folder or .safetensors file (repeatable; "
                                                     "default: SD1.5 and SD2.1-base from the Hub)")
    p.add_argument("--mlx-examples", help="path to mlx-examples/stable_diffusion, to compare on SD2.1-base")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=2, help="processes per measurement")
    p.add_argument("--device", default="gpu")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--child", choices=["sdkit", "mlx-examples"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.model = args.model[0]
        print(json.dumps(run_sdkit(args) if args.child == "sdkit" else run_mlx_examples(args)))
        return

    rows = [("sdkit", model) for model in args.model or MODELS.values()]
    if args.mlx_examples:
        rows.append(("mlx-examples", MODELS["sd21-base"]))
    print(f"\n{args.size}x{args.size}, {args.steps} steps, {args.device} {args.dtype}, medians of {args.runs} runs")
    print("| implementation | model | " + " | ".join(KEYS) + " |\n|---|---|" + "---|" * len(KEYS))
    for impl, model in rows:
        results = measure(impl, model, args)
        print(f"| {impl} | {model} | " + " | ".join(f"{statistics.median(r[k] for r in results):.2f}" for k in KEYS)
              + " |", flush=True)


if __name__ == "__main__":
    main()
