"""Peak working memory of the VAE decoder, the VAE encoder and the UNet per pixel: the figures in sdkit/memory.py.

    python bench/memory_per_pixel.py                                  # torch on the CPU, float32, 256 and 512 px
    python bench/memory_per_pixel.py --device cuda --sizes 512 1024   # torch on CUDA
    python bench/memory_per_pixel.py --backend mlx --device gpu       # mlx on Metal

Each measurement is a fresh process that builds one component with SD1.5's real topology (VAEConfig() and
UNetConfig() defaults, random weights), runs it once at a given size and reports the peak memory of that call
above what was resident before it: torch on the CPU the process's peak RSS (VmHWM, reset just before the call
through /proc/self/clear_refs), on CUDA torch.cuda.max_memory_allocated, mlx mx.get_peak_memory. Two sizes per
component give bytes per pixel as the slope, so fixed costs (weights, workspaces) drop out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("decode", "encode", "unet")  # the UNet at batch 2, as with guidance


def child(component: str, size: int, backend: str, device: str, dtype: str) -> int:
    """Peak bytes of one call above the memory resident before it."""
    sys.path[:0] = [str(ROOT), str(ROOT / "backends")]
    from sdkit.config import UNetConfig, VAEConfig

    h = size // 8
    if backend == "torch":
        import torch
        from sdkit_torch.unet import UNet2DConditionModel
        from sdkit_torch.vae import AutoencoderKL

        dt = getattr(torch, dtype)
        model = (UNet2DConditionModel(UNetConfig()) if component == "unet" else AutoencoderKL(VAEConfig()))
        model = model.to(device, dt).eval()
        if component == "decode":
            run = lambda: model.decode(torch.randn(1, 4, h, h, device=device, dtype=dt))
        elif component == "encode":
            run = lambda: model.encode(torch.randn(1, 3, size, size, device=device, dtype=dt))
        else:
            x, context = torch.randn(2, 4, h, h, device=device, dtype=dt), torch.randn(2, 77, 768, device=device,
                                                                                      dtype=dt)
            run = lambda: model(x, torch.full((2,), 500.0, device=device), context)
        with torch.inference_mode():
            if device == "cpu":
                before = _rss()
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
                run()
                return _hwm() - before
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before

    import mlx.core as mx
    from sdkit_mlx.unet import UNet2DConditionModel
    from sdkit_mlx.vae import AutoencoderKL

    mx.set_default_device(mx.cpu if device == "cpu" else mx.gpu)
    dt = getattr(mx, dtype)
    model = UNet2DConditionModel(UNetConfig()) if component == "unet" else AutoencoderKL(VAEConfig())
    model.set_dtype(dt)
    mx.eval(model.parameters())
    if component == "decode":
        inputs = (mx.random.normal((1, h, h, 4)).astype(dt),)
    elif component == "encode":
        inputs = (mx.random.normal((1, size, size, 3)).astype(dt),)
    else:
        inputs = (mx.random.normal((2, h, h, 4)).astype(dt), mx.full((2,), 500.0),
                  mx.random.normal((2, 77, 768)).astype(dt))
    mx.eval(inputs)
    run = model if component == "unet" else getattr(model, component)
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(run(*inputs))
    return mx.get_peak_memory() - before


def _rss() -> int:
    return _status("VmRSS")


def _hwm() -> int:
    return _status("VmHWM")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["torch", "mlx"], default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    p.add_argument("--sizes", nargs=2, type=int, default=[256, 512], metavar=("SMALL", "LARGE"),
                   help="square image sides in pixels, multiples of 8 (default 256 512)")
    p.add_argument("--child", nargs=2, metavar=("COMPONENT", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.backend, args.device, args.dtype)))
        return
    for component in args.components:
        peaks = []
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--backend", args.backend, "--device", args.device,
                                  "--dtype", args.dtype, "--child", component, str(size)],
                                 check=True, capture_output=True, text=True).stdout
            peaks.append(json.loads(out.splitlines()[-1]))
        (a, b), (pa, pb) = args.sizes, peaks
        per_pixel = (pb - pa) / (b * b - a * a)  # output pixels; the UNet's per image pixel at batch 2
        print(f"{component:<7} {args.backend} {args.device} {args.dtype}: peak {pa / 2**20:.0f} MiB at {a}px, "
              f"{pb / 2**20:.0f} MiB at {b}px -> {per_pixel:.0f} bytes per pixel")


if __name__ == "__main__":
    main()
