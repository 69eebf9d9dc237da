"""The cost of switching LoRA sets between calls: sdkit (deltas patched into the weights, base weights restored
exactly) against diffusers' load_lora_weights + set_adapters (PEFT layers beside the weights), same session.

    python bench/bench_lora.py                                  # SD1.5-sized random checkpoint, CPU, 128x128
    python bench/bench_lora.py --device cuda --dtype float16 --size 512 --steps 20
    python bench/bench_lora.py --model PATH_OR_HUB_ID --rank 32

Two kohya LoRAs (`a`, `b`) of --rank on every attention, feed-forward and projection Linear of the UNet and the
text encoder's attention and MLP (as sd-scripts trains them) are written next to the random checkpoint. Each
side runs in its own process, in rounds of calls: no LoRA, a, b, a + b, a + b again, then no LoRA. A call's
"switch cost" is its time minus the median plain call's; the first use of a file includes reading it. diffusers
loads each file once (load_lora_weights, timed) and switches with set_adapters / disable_lora; its LoRA layers
stay beside the weights, so its cost is paid at every step instead of once per switch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch import ROOT, build_random  # noqa: E402

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
SETS = [("plain", {}), ("a", {"a": 0.8}), ("b", {"b": 0.8}), ("a+b", {"a": 0.5, "b": 0.5}),
        ("a+b again", {"a": 0.5, "b": 0.5}), ("plain again", {})]
ADAPTED = ("attn1.to_", "attn2.to_", "ff.net.", "proj_in", "proj_out", "self_attn.", "mlp.fc")


def write_loras(model: str, folder: Path, rank: int) -> None:
    """Kohya files a and b with random factors for the model's adaptable Linear layers."""
    if (folder / "b.safetensors").exists():
        return
    import numpy as np
    from safetensors.numpy import save_file

    sys.path.insert(0, str(ROOT))
    from sdkit.checkpoint import open_checkpoint

    ckpt = open_checkpoint(Path(model))
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}
    for seed, name in enumerate("ab"):
        rng = np.random.default_rng(seed)
        tensors = {}
        for component, prefix in prefixes.items():
            for weight, ref in ckpt.weights[component].items():
                if len(ref.shape) != 2 or not weight.endswith(".weight") or not any(a in weight for a in ADAPTED):
                    continue
                key = prefix + weight.removesuffix(".weight").replace(".", "_")
                out, inp = ref.shape
                tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, inp)) / inp**0.5).astype(np.float16)
                tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((out, rank)) * 0.01).astype(np.float16)
                tensors[f"{key}.alpha"] = np.array(rank / 2, np.float16)
        save_file(tensors, folder / f"{name}.safetensors")
        print(f"{name}.safetensors: {len(tensors) // 3} layers, rank {rank}", file=sys.stderr)


def child(args) -> dict:
    import torch

    folder = Path(args.loras)
    times: dict[str, list[float]] = {}
    call = dict(num_inference_steps=args.steps, width=args.size, height=args.size, guidance_scale=7.5)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    if args.child == "sdkit":
        sys.path[:0] = [str(ROOT), str(ROOT / "backends")]
        import sdkit

        pipe = sdkit.load(args.model, backend="torch", device=args.device, dtype=args.dtype, lora_dirs=folder)

        def run(loras):
            pipe.generate(PROMPT, steps=args.steps, width=args.size, height=args.size, guidance_scale=7.5,
                          sampler="dpmpp_2m_karras", seed=0, loras=loras)
    else:
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype),
                                                       safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
        pipe.to(args.device)
        pipe.set_progress_bar_config(disable=True)
        for name in "ab":
            start = time.perf_counter()
            pipe.load_lora_weights(folder, weight_name=f"{name}.safetensors", adapter_name=name)
            times.setdefault(f"load_lora_weights {name}", []).append(time.perf_counter() - start)
        pipe.disable_lora()

        def run(loras):
            if loras:
                pipe.enable_lora()
                pipe.set_adapters(list(loras), list(loras.values()))
            else:
                pipe.disable_lora()
            pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call)

    run({})  # warm-up: kernels, allocator, page cache
    for _ in range(args.rounds):
        for label, loras in SETS:
            sync()
            start = time.perf_counter()
            run(loras)
            sync()
            times.setdefault(label, []).append(time.perf_counter() - start)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers SD1.x folder (default: build an SD1.5-sized random one)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--child", choices=["sdkit", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--loras", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
    if args.model is None:
        args.model = str(build_random(cache / f"sd15-random-{args.dtype}", "sd15", args.dtype))
    loras = cache / f"loras-{Path(args.model).name}-r{args.rank}"
    write_loras(args.model, loras, args.rank)

    results = {}
    for side in ("sdkit", "diffusers"):
        cmd = [sys.executable, __file__, "--child", side, "--loras", str(loras), "--model", args.model,
               "--size", str(args.size), "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--device", args.device, "--dtype", args.dtype]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"{args.size}x{args.size}, {args.steps} steps, {args.device} {args.dtype}, rank {args.rank}, "
          f"{args.rounds} rounds (medians, s)")
    print("| call | sdkit | switch cost | diffusers | switch cost |\n|---|---|---|---|---|")
    plain = {side: statistics.median(r["plain"] + r["plain again"]) for side, r in results.items()}
    for label, _ in SETS:
        row = [label]
        for side in ("sdkit", "diffusers"):
            m = statistics.median(results[side][label])
            row += [f"{m:.2f}", f"{m - plain[side]:+.2f}"]
        print("| " + " | ".join(row) + " |")
    for label, t in results["diffusers"].items():
        if label.startswith("load_lora_weights"):
            print(f"diffusers {label}: {t[0]:.2f} s")
    print("first calls (file reads included):", {side: {k: round(v[0], 2) for k, v in r.items()}
                                                 for side, r in results.items()})


if __name__ == "__main__":
    main()
