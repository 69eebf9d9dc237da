"""sdkit's LoRA training step against a diffusers + PEFT loop shaped like diffusers' examples/text_to_image/
train_text_to_image_lora.py (train_text_to_image_lora_sdxl.py for --family sdxl), on the same weights and
settings, in alternating separate processes.

    python bench/bench_train.py                          # SD1.5-sized random weights, 256x256, rank 16, CPU
    python bench/bench_train.py --size 512 --device cuda --dtype float16 --gradient-checkpointing
    python bench/bench_train.py --family sdxl --size 1024 --device cuda --dtype bfloat16 --gradient-checkpointing
    python bench/bench_train.py --backend mlx --device gpu --dtype float16 --size 512   # a Mac: MLX vs torch MPS
    python bench/bench_train.py --model PATH ...
    bash bench/run_cuda_train.sh                         # the issue's CUDA cases in one command

Both train rank-16 LoRA (alpha 16) on the UNet attention projections the diffusers scripts target (to_q, to_k,
to_v, to_out.0), batch 1, AdamW (weight decay 1e-2), on one 'size' x 'size' image. The diffusers loop does what
the script does per step (VAE-encode the image, encode the caption, add noise, predict, MSE, backward, step;
SDXL: both text encoders' penultimate states and the second one's pooled embedding, add_time_ids, the VAE in
float32), without the script's gradient clipping (sdkit has none). --dtype float16 / bfloat16 is the scripts'
--mixed_precision: frozen weights in that dtype, the UNet's forward under autocast, and in float16 the LoRA
weights upcast to float32 (cast_training_params) and a GradScaler; sdkit keeps its LoRA weights in float32 and
scales the loss in float16. sdkit caches latents and text once, as it does.

--backend mlx runs sdkit's side on MLX (--device cpu or gpu, i.e. Metal); the diffusers side stays torch, on MPS
when --device gpu and MPS is available, else on the CPU (--diffusers-device overrides). MLX's CPU path is a
reference BLAS: its times say nothing about speed, only that the loop runs.

Reported (a markdown table): median seconds per step after the first, peak RSS (/proc VmHWM; the diffusers side
loads its models in float32 before casting them, as the scripts do, so its RSS in half precision is float32's),
on CUDA peak GPU memory allocated and reserved (torch.cuda.max_memory_*), on MLX its peak memory
(mx.get_peak_memory: Metal's buffers on a Mac, which RSS does not show), steps skipped for a float16 overflow or
with a non-finite loss, and the sdkit/diffusers ratios. Random weights (--family's topology) are built once
under $SDKIT_BENCH_CACHE in --dtype (on the GPU when there is one).
Needs the test extra (diffusers, transformers, peft).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch import ROOT, build_random, peak_rss_mb  # noqa: E402

CAPTION = "a photo of a lighthouse on a cliff"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
ROWS = {"s_per_step": "s / step (median after the first)", "it_per_s": "it/s", "peak_rss_mb": "peak RSS (MB)",
        "peak_gpu_mb": "peak CUDA allocated (MB)", "reserved_gpu_mb": "peak CUDA reserved (MB)",
        "peak_mlx_mb": "peak MLX memory (MB)", "bad_steps": "steps skipped or non-finite"}


def make_data(folder: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "0.png")
    (folder / "0.txt").write_text(CAPTION)
    return folder


def cuda_peaks() -> dict:
    import torch
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            "reserved_gpu_mb": torch.cuda.max_memory_reserved() / 2**20}


def run_sdkit(args) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "backends")]
    import sdkit
    out = Path(tempfile.mkdtemp()) / "bench.safetensors"
    record = sdkit.train(args.model, args.data, method="lora", out=out, steps=args.steps, rank=args.rank,
                         target=r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", resolution=args.size,
                         backend=args.backend, device=args.device, dtype=args.dtype, progress=False,
                         gradient_checkpointing=args.gradient_checkpointing)
    log = [json.loads(line) for line in (out.parent / "log.jsonl").read_text().splitlines()]
    result = {"s_per_step": statistics.median(record.seconds[1:]), "peak_rss_mb": peak_rss_mb(),
              "bad_steps": sum(d.get("skipped", False) or not math.isfinite(d["loss"]) for d in log)}
    if args.backend == "mlx":
        import mlx.core as mx
        get_peak = getattr(mx, "get_peak_memory", None) or mx.metal.get_peak_memory  # older MLX: mx.metal only
        result["peak_mlx_mb"] = get_peak() / 2**20
    elif args.device.startswith("cuda"):
        result |= cuda_peaks()
    return result


def run_diffusers(args) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    device, weight_dtype = torch.device(args.diffusers_device), getattr(torch, args.dtype)
    sdxl = args.family == "sdxl"
    model = Path(args.model)
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    names = ["", "_2"] if sdxl else [""]
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder=f"tokenizer{n}") for n in names]
    encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder").to(device, weight_dtype)]
    if sdxl:
        encoders.append(CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2")
                        .to(device, weight_dtype))
    # the SDXL script keeps the VAE in float32 (SDXL's VAE overflows in float16) unless given another VAE
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").to(device, torch.float32 if sdxl else weight_dtype)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").to(device, weight_dtype)
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    if weight_dtype == torch.float16:  # cast_training_params: only the LoRA weights in float32
        for p in params:
            p.data = p.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    # accelerate's mixed precision: the prepared model's forward under autocast, a GradScaler in float16
    autocast = torch.autocast(device.type, weight_dtype, enabled=weight_dtype != torch.float32)
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)
    image = np.asarray(Image.open(Path(args.data) / "0.png").convert("RGB"), np.float32) / 127.5 - 1
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(device, vae.dtype)  # (1, 3, size, size)
    ids = [tok([CAPTION], padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(device) for tok in tokenizers]
    # SDXL's micro-conditioning: original size, crop top-left, target size
    time_ids = torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]], device=device, dtype=weight_dtype)
    unet.train()
    seconds, bad = [], 0
    for _ in range(args.steps):
        start = time.perf_counter()
        latents = (vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor).to(weight_dtype)
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device).long()
        noisy = scheduler.add_noise(latents, noise, t)
        if sdxl:  # encode_prompt: each encoder's penultimate hidden states, the last one's pooled output
            outs = [enc(i, output_hidden_states=True, return_dict=False) for enc, i in zip(encoders, ids)]
            context = torch.cat([o[-1][-2] for o in outs], dim=-1)  # (1, 77, 768 + 1280)
            added = {"time_ids": time_ids, "text_embeds": outs[-1][0]}
        else:
            context, added = encoders[0](ids[0], return_dict=False)[0], None
        with autocast:
            pred = unet(noisy, t, context, added_cond_kwargs=added, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skipped when a gradient overflowed
        scaler.update()
        optimizer.zero_grad()
        bad += scaler.get_scale() < scale or not math.isfinite(loss.item())
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    result = {"s_per_step": statistics.median(seconds[1:]), "peak_rss_mb": peak_rss_mb(), "bad_steps": bad}
    return result | cuda_peaks() if device.type == "cuda" else result


def synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def diffusers_device(args) -> str:
    if args.diffusers_device:
        return args.diffusers_device
    if args.backend == "torch":
        return args.device
    import torch
    return "mps" if args.device == "gpu" and torch.backends.mps.is_available() else "cpu"


def table(args, med: dict) -> str:
    sides = list(med)
    for m in med.values():
        m["it_per_s"] = 1 / m["s_per_step"]
    lines = [f"{args.family} LoRA rank {args.rank}, {args.size}x{args.size}, batch 1, {args.dtype}"
             f"{', gradient checkpointing' if args.gradient_checkpointing else ''}, {args.steps} steps; "
             f"sdkit {args.backend} on {args.device}, diffusers + PEFT on {args.diffusers_device}; "
             f"medians of {args.runs} run(s)", "",
             "| metric | " + " | ".join(sides) + " | sdkit/diffusers |", "|---|---|---|---|"]
    for key, label in ROWS.items():
        vals = [med[s].get(key) for s in sides]
        if all(v is None for v in vals):
            continue
        ratio = f"{vals[0] / vals[1]:.2f}" if None not in vals and vals[1] and key != "bad_steps" else "-"
        digits = ".3g" if key in ("s_per_step", "it_per_s") else ".0f"
        cells = ["-" if v is None else f"{v:{digits}}" for v in vals]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: a random one of --family's size, built once)")
    p.add_argument("--family", choices=["sd15", "sdxl"], default="sd15", help="topology of the random weights; "
                   "with --model, the model's (it picks the diffusers script)")
    p.add_argument("--backend", choices=["torch", "mlx"], default="torch", help="sdkit's side")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch: cpu, cuda, mps; mlx: cpu, gpu")
    p.add_argument("--diffusers-device", help="torch device of the diffusers side (default: see above)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--child", choices=["sdkit", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is not timed)")
    if args.child:
        print(json.dumps((run_sdkit if args.child == "sdkit" else run_diffusers)(args)))
        return
    args.diffusers_device = diffusers_device(args)
    cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
    model = args.model or str(build_random(cache / f"{args.family}-random-{args.dtype}", args.family, args.dtype))
    data = make_data(Path(tempfile.mkdtemp()) / "data", args.size)
    results = {"sdkit": [], "diffusers": []}
    for _ in range(args.runs):
        for side in results:
            cmd = [sys.executable, __file__, "--child", side, "--model", model, "--data", str(data),
                   "--family", args.family, "--backend", args.backend, "--size", str(args.size),
                   "--rank", str(args.rank), "--steps", str(args.steps), "--device", args.device,
                   "--diffusers-device", args.diffusers_device, "--dtype", args.dtype] + (
                ["--gradient-checkpointing"] if args.gradient_checkpointing else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{side} run failed:\n{out.stderr[-3000:]}")
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(side, results[side][-1], file=sys.stderr, flush=True)
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for side, runs in results.items()}
    print(table(args, med))


if __name__ == "__main__":
    main()
