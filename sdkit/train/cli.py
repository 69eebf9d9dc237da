"""sdkit-train MODEL DATA --method lora|dreambooth|textual_inversion|finetune --out PATH [options]

Exit status: 0 done, 1 runtime error (backend, disk), 2 usage error, 130 interrupted (Ctrl-C: the state and
the output so far are saved; the same command with --resume continues).
"""

from __future__ import annotations

import argparse
import sys
import traceback

import sdkit

from .loop import METHODS
from .schedule import SCHEDULES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdkit-train", description="Train a LoRA, DreamBooth, textual-inversion "
                                "embedding or UNet fine-tune on a folder of captioned images.")
    p.add_argument("model", help="diffusers folder, .safetensors checkpoint or Hub repo id")
    p.add_argument("data", help="folder of images with same-stem .txt captions (kohya N_name folders repeat)")
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--out", required=True, help="output .safetensors (finetune: a single-file checkpoint, or a "
                   "diffusers folder when it has no .safetensors suffix); log.jsonl beside it")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--backend", default="auto", help="auto, torch or mlx")
    p.add_argument("--device", help="cuda, cuda:1, mps, cpu (torch); gpu, cpu (mlx)")
    p.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", help="a VAE replacing the model's (as sdkit-gen --vae): it encodes the images and "
                   "decodes the samples")
    p.add_argument("--resolution", type=int, help="bucket area is resolution^2 (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4 LoRA, 5e-3 embeddings, 1e-5 finetune)")
    p.add_argument("--lr-schedule", choices=SCHEDULES, default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank)")
    p.add_argument("--conv", action="store_true", help="LoCon: also the UNet's convolutions")
    p.add_argument("--text-encoder", action="store_true", help="train the text encoders too (LoRA, finetune)")
    p.add_argument("--lora-format", choices=["kohya", "peft"], default="kohya",
                   help="kohya (A1111, ComfyUI, Civitai) or peft (diffusers' save_lora_weights)")
    p.add_argument("--target", help="regular expression narrowing the LoRA's layers, e.g. 'attn2'")
    p.add_argument("--full", action="store_true", help="dreambooth: train the whole UNet instead of a LoRA")
    p.add_argument("--instance-prompt", help="caption for images without a .txt (dreambooth: 'a photo of sks dog')")
    p.add_argument("--class-data", help="dreambooth prior preservation: folder of class images")
    p.add_argument("--class-prompt", help="caption of the class images, e.g. 'a photo of a dog'")
    p.add_argument("--prior-loss-weight", type=float, default=1.0)
    p.add_argument("--token", help="textual inversion: the new word (default: the output's file stem)")
    p.add_argument("--init-word", default="*", help="textual inversion: the word whose embedding starts it")
    p.add_argument("--vectors", type=int, default=1, help="textual inversion: vectors per token")
    p.add_argument("--caption-dropout", type=float, default=0.0)
    p.add_argument("--noise-offset", type=float, default=0.0)
    p.add_argument("--min-snr-gamma", type=float, help="min-SNR loss weighting, e.g. 5")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    p.add_argument("--ema-decay", type=float, help="write an EMA of the trained weights, e.g. 0.9999")
    p.add_argument("--save-every", type=int, help="write a resumable state every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.safetensors")
    p.add_argument("--sample-every", type=int, help="generate the sample prompts every N steps")
    p.add_argument("--sample-prompt", action="append", default=[], help="repeatable")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show the traceback of errors")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        record = sdkit.train(
            a.model, a.data, method=a.method, out=a.out, steps=a.steps, backend=a.backend, device=a.device,
            dtype=a.dtype, seed=a.seed, resolution=a.resolution, batch_size=a.batch_size, grad_accum=a.grad_accum,
            learning_rate=a.lr, lr_schedule=a.lr_schedule, warmup_steps=a.warmup_steps, rank=a.rank, alpha=a.alpha,
            conv=a.conv, text_encoder=a.text_encoder, lora_format=a.lora_format, target=a.target,
            instance_prompt=a.instance_prompt,
            class_data=a.class_data, class_prompt=a.class_prompt, prior_loss_weight=a.prior_loss_weight,
            full=a.full, token=a.token, init_word=a.init_word, vectors=a.vectors, caption_dropout=a.caption_dropout,
            noise_offset=a.noise_offset, min_snr_gamma=a.min_snr_gamma, weight_decay=a.weight_decay,
            gradient_checkpointing=a.gradient_checkpointing, ema_decay=a.ema_decay, save_every=a.save_every,
            resume=a.resume,
            sample_every=a.sample_every, sample_prompts=a.sample_prompt, sample_seed=a.sample_seed, vae=a.vae)
    except sdkit.Cancelled as e:
        print(f"sdkit-train: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the loop: nothing to save
        print("sdkit-train: interrupted", file=sys.stderr)
        return 130
    except ValueError as e:
        return _fail(e, 2, a.debug)
    except (sdkit.SdkitError, OSError) as e:
        return _fail(e, 1, a.debug)
    for path in record.outputs:
        print(path)
    return 0


def _fail(error: Exception, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"sdkit-train: error: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
