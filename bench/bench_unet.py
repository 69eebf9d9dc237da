"""One UNet evaluation, sdkit's torch UNet against diffusers' on the same weights, in one process.

    python bench/bench_unet.py --size 256                        # CPU float32, SD1.5-sized random weights
    python bench/bench_unet.py --device cuda --dtype float16 --size 512 --variants diffusers sdkit sdkit-nchw compiled

Isolates the noise predictor (90%+ of generate()) so each optimisation's effect can be measured alone. Variants:
  diffusers         diffusers' UNet2DConditionModel as it ships (SDPA attention)
  sdkit             sdkit's UNet as the backend builds it (on CUDA: channels_last, replayed as a CUDA graph;
                    on the CPU: small feature maps convolved as one GEMM)
  sdkit-nchw        the same in NCHW memory format (what channels_last buys on CUDA)
  sdkit-eager       the same without the CUDA graph (what replaying the UNet as one graph buys on CUDA)
  sdkit-direct-conv the same with every convolution on the framework's direct kernel (what the CPU GEMM path buys)
  sdkit-sdpa        the same with torch's SDPA in place of cpu_attention.c (what the CPU attention kernel buys)
  compiled          sdkit.load(..., compile=True)'s UNet (torch.compile; CUDA graphs on CUDA)
Variants run in turns (one evaluation each per round) so drift in the machine's speed hits them alike; the
report gives the median time per evaluation (batch 2: classifier-free guidance) and its ratio to diffusers'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch import build_random  # noqa: E402

VARIANTS = ["diffusers", "sdkit", "sdkit-nchw", "sdkit-eager", "sdkit-direct-conv", "sdkit-sdpa", "compiled"]


def build_variants(args, names: list[str]) -> dict:
    import sdkit_torch.unet as sdkit_unet
    from sdkit.checkpoint import open_checkpoint
    from sdkit_torch import TorchBackend

    ckpt = open_checkpoint(Path(args.model), prefer_fp16=args.dtype == "float16")
    h, dtype, device = args.size // 8, getattr(torch, args.dtype), torch.device(args.device)
    x = torch.randn(args.batch, 4, h, h, device=device)
    context = torch.randn(args.batch, 77, ckpt.unet.cross_attention_dim, device=device)
    added = None
    if ckpt.unet.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(args.batch, 1280, device=device),
                 "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * args.batch,
                                          device=device, dtype=torch.float32)}
    calls = {}
    for name in names:
        if name == "diffusers":
            from diffusers import UNet2DConditionModel
            theirs = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", torch_dtype=dtype).to(device)
            xd, cd = x.to(dtype), context.to(dtype)
            ad = None if added is None else {k: v.to(dtype) for k, v in added.items()}
            calls[name] = lambda m=theirs: m(xd, 500.0, cd, added_cond_kwargs=ad).sample
            continue
        unet = TorchBackend(args.device, args.dtype, compile=name == "compiled").unet(ckpt.unet, ckpt.weights["unet"])
        if name == "sdkit-nchw":
            unet.model.to(memory_format=torch.contiguous_format)
        if name == "sdkit-eager":
            unet.forward = unet.model
        call = lambda u=unet: u(x, 500.0, context, added)  # noqa: E731
        if name == "sdkit-direct-conv":  # turn the GEMM path off around this variant's calls only
            call = patched(call, sdkit_unet, "GEMM_CONV_MAX_PIXELS", 0)
        if name == "sdkit-sdpa":
            call = patched(call, sdkit_unet.cpu_attention, "applies", lambda q, k, v: False)
        calls[name] = call
    return calls


def patched(call, module, name: str, value):
    """call, with module.name set to value during it only."""
    def run():
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            return call()
        finally:
            setattr(module, name, saved)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: the random one bench_torch.py builds)")
    p.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["diffusers", "sdkit", "sdkit-direct-conv"])
    args = p.parse_args()
    if args.model is None:
        cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
        weights = "float16" if args.dtype == "float16" else "float32"
        args.model = str(build_random(cache / f"{args.family}-random-{weights}", args.family, weights))
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    calls = build_variants(args, args.variants)
    times = {name: [] for name in calls}
    with torch.inference_mode():
        for name, call in calls.items():  # warm-up (and compilation); CUDA graphs record on the 2nd/3rd call
            for _ in range(3 if cuda else 1):
                call()
            sync()
        reps = 10 if cuda else 1  # CUDA evaluations are ~10 ms: time 10 back to back per turn
        for _ in range(args.rounds):
            for name, call in calls.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(reps):
                    call()
                sync()
                times[name].append((time.perf_counter() - t0) / reps)
    print(f"\n{args.family} UNet, {args.size}x{args.size} (latents {args.size // 8}), batch {args.batch}, "
          f"{args.device} {args.dtype}, median of {args.rounds} rounds")
    base = statistics.median(times["diffusers"]) if "diffusers" in times else None
    print("| variant | ms / evaluation | evaluations/s |" + (" vs diffusers |" if base else "") + "\n|---|---|---|"
          + ("---|" if base else ""))
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m * 1e3:.1f} | {1 / m:.2f} |" + (f" {m / base:.2f} |" if base else ""))


if __name__ == "__main__":
    main()
