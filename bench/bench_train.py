"""sdkit's LoRA training step against a diffusers + PEFT loop shaped like diffusers' examples/text_to_image/
train_text_to_image_lora.py, on the same weights and settings, in alternating separate processes.

    python bench/bench_train.py                          # SD1.5-sized random weights, 256x256, rank 16, CPU
    python bench/bench_train.py --size 512 --device cuda --gradient-checkpointing
    python bench/bench_train.py --model PATH ...

Both train rank-16 LoRA (alpha 16) on the UNet attention projections the diffusers script targets (to_q, to_k,
to_v, to_out.0), batch 1, AdamW, float32 by default, on one 'size' x 'size' image. The diffusers loop does what
the script does per step (VAE-encode the image, encode the caption, add noise, predict, MSE, backward, step);
sdkit caches latents and text once, as it does. Reported: median seconds per step after the first, peak RSS,
and the sdkit/diffusers ratios. Needs the test extra (diffusers, transformers, peft).
"""

from __future__ import annotations

import argparse
import json
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


def make_data(folder: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "0.png")
    (folder / "0.txt").write_text(CAPTION)
    return folder


def run_sdkit(args) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "backends")]
    import sdkit
    out = Path(tempfile.mkdtemp()) / "bench.safetensors"
    record = sdkit.train(args.model, args.data, method="lora", out=out, steps=args.steps, rank=args.rank,
                         target=r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", resolution=args.size,
                         backend="torch", device=args.device, dtype=args.dtype, progress=False,
                         gradient_checkpointing=args.gradient_checkpointing)
    return {"s_per_step": statistics.median(record.seconds[1:]), "peak_rss_mb": peak_rss_mb()}


def run_diffusers(args) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = Path(args.model)
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").to(device, dtype)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").to(device, dtype)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").to(device, dtype)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    image = np.asarray(Image.open(Path(args.data) / "0.png").convert("RGB"), np.float32) / 127.5 - 1
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(device, dtype)
    ids = tokenizer([CAPTION], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    unet.train()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        context = text_encoder(ids.to(device), return_dict=False)[0]
        pred = unet(noisy, t, context, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(seconds[1:]), "peak_rss_mb": peak_rss_mb()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: an SD1.5-sized random one, built once)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--child", choices=["sdkit", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps((run_sdkit if args.child == "sdkit" else run_diffusers)(args)))
        return
    import os
    cache = Path(os.environ.get("SDKIT_BENCH_CACHE", Path.home() / ".cache" / "sdkit-bench"))
    model = args.model or str(build_random(cache / "sd15-random-float32", "sd15", "float32"))
    data = make_data(Path(tempfile.mkdtemp()) / "data", args.size)
    results = {"sdkit": [], "diffusers": []}
    for _ in range(args.runs):
        for side in results:
            cmd = [sys.executable, __file__, "--child", side, "--model", model, "--data", str(data),
                   "--size", str(args.size), "--rank", str(args.rank), "--steps", str(args.steps),
                   "--device", args.device, "--dtype", args.dtype] + (
                ["--gradient-checkpointing"] if args.gradient_checkpointing else [])
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[side].append(json.loads(line))
            print(side, results[side][-1], file=sys.stderr)
    med = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for side, runs in results.items()}
    print(json.dumps({**med, "ratio": {k: med["sdkit"][k] / med["diffusers"][k] for k in med["sdkit"]}}, indent=1))


if __name__ == "__main__":
    main()
