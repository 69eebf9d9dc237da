"""How far images made in a lower precision drift from float32 ones, same weights, seeds and sampler.

    python bench/dtype_drift.py                                  # CPU, bfloat16 vs float32, SD1.5-sized random
    python bench/dtype_drift.py --model PATH --dtype float16 --device cuda --size 512 --steps 30

Prints, per seed and overall, the mean and the largest absolute pixel difference (0-255) and the share of pixels
that differ by more than 8/255, next to the float32 picture's own spread (its pixels' standard deviation: a flat
picture would hide any drift).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch import PROMPT, build_random  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: the random one bench_torch.py builds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", help="the precision compared against float32")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    if args.model is None:
        cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
        args.model = str(build_random(cache / "sd15-random-float32", "sd15", "float32"))

    import sdkit

    images = {}
    for dtype in ("float32", args.dtype):
        pipe = sdkit.load(args.model, backend="torch", device=args.device, dtype=dtype)
        images[dtype] = [np.asarray(pipe.generate(PROMPT, width=args.size, height=args.size, steps=args.steps,
                                                  seed=seed)[0], dtype=np.int16) for seed in range(args.seeds)]
        del pipe
    print(f"{args.dtype} vs float32, {args.size}x{args.size}, {args.steps} steps, {args.device}")
    print("| seed | mean abs diff | max abs diff | pixels off by > 8 | float32 picture's std |\n|---|---|---|---|---|")
    diffs = [np.abs(a - b) for a, b in zip(images["float32"], images[args.dtype])]
    for seed, (d, ref) in enumerate(zip(diffs, images["float32"])):
        print(f"| {seed} | {d.mean():.2f} | {d.max()} | {(d > 8).mean():.1%} | {ref.std():.1f} |")
    d = np.stack(diffs)
    print(f"| all | {d.mean():.2f} | {d.max()} | {(d > 8).mean():.1%} | {np.stack(images['float32']).std():.1f} |")


if __name__ == "__main__":
    main()
