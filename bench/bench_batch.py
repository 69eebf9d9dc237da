"""sdkit.batch on a local Ray cluster: two 1-core workers against one, and Ray's overhead per image.

    python bench/bench_batch.py                     # tiny SD1 test model, 32x32, 4 steps, 24 images
    python bench/bench_batch.py --images 48 --steps 8 --size 64

Three runs, each on a fresh local Ray instance of 2 CPUs: (a) in this process on one torch thread (no Ray),
(b) one Ray actor of 1 CPU, (c) two actors of 1 CPU each. Rates are steady-state images/s, between the
completion of the last warm-up image (one per worker: its load) and of the last image, so start-up and model
loads are left out. Ray's overhead per image is (b)'s seconds between completions minus the seconds its
worker spent in Worker.run (generate and write), and also shown against (a)'s seconds per image. Needs the test extra
(ray, diffusers and transformers to build the tiny model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "tests")]


def steady_rate(times: list[float], warm: int) -> float:
    """Images per second between the `warm`-th completion and the last."""
    done = sorted(times)[warm - 1:]
    return (len(done) - 1) / (done[-1] - done[0])


def run(mode: str, model: Path, args, workers: int = 1) -> tuple[float, float]:
    """(steady images/s, mean seconds the workers spent in Worker.run per steady image)."""
    from sdkit.batch import cluster, local, rows
    from sdkit.batch.manifest import Manifest

    table = rows.read([{"prompt": f"picture {i}", "seed": i} for i in range(args.images)],
                      dict(steps=args.steps, width=args.size, height=args.size, sampler="euler"), str(model))
    times: list[float] = []
    inside: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        units = rows.units(table, salt=Manifest(out).salt)
        def on_result(unit, result):
            if result.get("error"):
                sys.exit(f"{unit.source}: {result['error']}")
            times.append(time.perf_counter())
            inside.append(result["seconds"])

        stop = threading.Event()
        if mode == "local":
            import torch
            torch.set_num_threads(1)
            local.run(units, out, on_result, stop, devices=["cpu"], backend="torch")
        else:
            import ray
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
            try:
                cluster.run(units, out, on_result, stop, backend="torch", cpus_per_worker=1)
            finally:
                ray.shutdown()
    steady = inside[workers:]  # the first image of each worker includes its load
    return steady_rate(times, warm=workers), sum(steady) / len(steady)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    from fixtures import build_folder
    cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
    model = cache / "tiny-sd1"
    if not (model / "model_index.json").exists():
        build_folder(model, "sd1")

    local_rate, _ = run("local", model, args)
    one, one_inside = run("ray", model, args, workers=1)
    two, _ = run("ray", model, args, workers=2)
    report = {"images": args.images, "steps": args.steps, "size": args.size, "load_average": os.getloadavg(),
              "local_1_thread_images_s": round(local_rate, 3), "ray_1_worker_images_s": round(one, 3),
              "ray_2_workers_images_s": round(two, 3), "speedup_2_vs_1": round(two / one, 2),
              # per image: the time between completions that the worker did not spend making it
              "ray_overhead_ms_per_image": round((1 / one - one_inside) * 1000, 1),
              "ray_vs_local_ms_per_image": round((1 / one - 1 / local_rate) * 1000, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
