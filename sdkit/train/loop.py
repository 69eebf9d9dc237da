"""sdkit.train: the noise-predictor training loop (Rombach et al. 2022, section 3.3), backend-neutral.

Per step: pick a batch of one aspect bucket, take its cached latents x0, draw timesteps t and noise (numpy,
from the run's seed), form x_t and the target (loss.py), let the backend's trainer predict and backpropagate,
and after `grad_accum` micro-batches take one AdamW step at the scheduled rate. Latents (VAE posterior mean)
and, when the text side is frozen, text contexts are computed once before the loop.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backends, conditioning, diffusers_writer, hub, micro_conditioning, modelspec
from ..checkpoint import Checkpoint
from ..families import FAMILIES
from ..pipeline import _load_tokenizer, _text_layer
from ..samplers.schedules import alphas_cumprod
from ..errors import Cancelled
from . import checkpoints, data as dataset, formats, loss, noise, samples, schedule
from .plan import Batch, Plan

METHODS = ("lora", "dreambooth", "textual_inversion", "finetune")
TEXT_BATCH = 16  # captions per text-encoder call while caching


@dataclass
class Record:
    """What a run did: one entry per optimizer step (mean loss of its micro-batches, learning rate, seconds),
    and the files written. The same is in log.jsonl beside the output."""

    method: str
    seed: int
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def train(model: str | Path, data: str | Path | None = None, *, method: str = "lora", out: str | Path,
          steps: int = 1000, backend: str = "auto", device: str | None = None, dtype: str | None = None,
          seed: int = 0, resolution: int | None = None, batch_size: int = 1, grad_accum: int = 1,
          learning_rate: float | None = None, lr_schedule: str = "constant", warmup_steps: int = 0,
          rank: int = 16, alpha: float | None = None, conv: bool = False, text_encoder: bool = False,
          lora_format: str = "kohya",
          target: str | None = None, instance_prompt: str | None = None, class_data: str | Path | None = None,
          class_prompt: str | None = None, prior_loss_weight: float = 1.0, full: bool = False,
          token: str | None = None, init_word: str = "*", vectors: int = 1, caption_dropout: float = 0.0,
          noise_offset: float = 0.0, min_snr_gamma: float | None = None, weight_decay: float = 1e-2,
          gradient_checkpointing: bool = False, ema_decay: float | None = None, save_every: int | None = None,
          resume: bool = False,
          sample_every: int | None = None, sample_prompts: tuple[str, ...] | list[str] = (), sample_seed: int = 0,
          sample_steps: int = 20, progress: bool = True, callback=None, should_stop=None,
          vae: str | Path | None = None) -> Record:
    """Train `model` on a folder of captioned images; write the result to `out` and return a Record.

    method: "lora" (kohya-format .safetensors, or lora_format="peft" for diffusers' / PEFT's; rank, alpha
    (default rank), conv: LoCon, text_encoder: also the text encoders, target: a regular expression narrowing
    the layers), "dreambooth" (instance_prompt for
    uncaptioned images, class_data / class_prompt for prior preservation; a LoRA unless full=True),
    "textual_inversion" (A1111 .safetensors; `token`, default the output's stem, is the word captions use,
    started from `init_word`'s embedding, `vectors` per token) or "finetune" (the UNet, and with text_encoder
    the text encoders too; out: a single-file checkpoint when it ends in .safetensors (LDM names: A1111,
    ComfyUI, from_single_file), else a diffusers folder (from a folder or a single-file model alike)).
    backend, device, dtype, vae as in sdkit.load (dtype default float32; vae: the VAE that encodes the images);
    in bfloat16 or float16 the frozen weights and activations are half precision and the trained weights and AdamW
    float32 (a fine-tune keeps float32 master weights, its forward and backward in dtype); float16 adds dynamic loss
    scaling (a step whose gradients overflow is skipped and logged with "skipped": true). seed fixes data order,
    noise and timesteps. gradient_checkpointing: recompute block activations in the backward pass (less memory).
    ema_decay (e.g. 0.9999): write an exponential moving average of the trained weights (diffusers' EMAModel
    schedule) instead of the last ones.
    save_every: write a resumable state (trained weights, AdamW moments, step, numpy RNG and data order) to
    `<out>.state.safetensors` every N steps; resume: continue from that file when it exists. Ctrl-C writes the
    state and the output so far, then raises sdkit.Cancelled. sample_every: generate `sample_prompts` (seed
    sample_seed + i) every N steps into `samples/` beside the output.
    callback(step, steps, loss, sample_paths) after each step (sample_paths: the images that step wrote);
    returning False stops the run as Ctrl-C does, after that step (a GUI's Cancel).
    should_stop(): polled before each image and caption is encoded (caching), after each step and at each sampler
    step of a sample image; True while caching raises sdkit.Cancelled with nothing written, in the loop stops as
    callback returning False does (a sample image being made is dropped, never half-written).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not known; use one of {', '.join(METHODS)}")
    if data is None:
        raise ValueError("data: give a folder of images (with .txt captions or an instance_prompt)")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("grad_accum", grad_accum), ("rank", rank),
                        ("vectors", vectors)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if lora_format not in ("kohya", "peft"):
        raise ValueError(f"lora_format {lora_format!r} is not known; use kohya or peft")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1), e.g. 0.9999, got {ema_decay!r}")
    if not 0 <= caption_dropout < 1:
        raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout!r}")
    out = Path(out)
    engine = backends.get(backend)(device=device, dtype=dtype or "float32")
    ckpt = hub.open_model(model, vae=vae)
    if ckpt.scheduler.edm:  # its noise levels are continuous: the DDPM timesteps drawn below would be wrong
        raise ValueError(f"model: {ckpt.name} is an EDM model (Playground v2.5); sdkit trains on DDPM-schedule "
                         "models (SD 1.x, 2.x, XL) only")
    family = FAMILIES[ckpt.family]
    text_layer = _text_layer(ckpt.family, 1)
    resolution = resolution or ckpt.default_size[0]
    lr = learning_rate if learning_rate is not None else {"textual_inversion": 5e-3, "finetune": 1e-5}.get(method, 1e-4)
    rng = np.random.default_rng(seed)

    # --- what trains
    lora_like = method == "lora" or (method == "dreambooth" and not full)
    plan = Plan(learning_rate=lr, text_layer=text_layer, weight_decay=weight_decay,
                gradient_checkpointing=gradient_checkpointing, ema_decay=ema_decay,
                loss_scaling=dtype == "float16", finetune=method == "finetune" or (
                    method == "dreambooth" and full))
    if plan.finetune and out.suffix != ".safetensors":
        diffusers_writer.check_target(out, ckpt)  # before hours of training, not after
    tokenizers = {name: _load_tokenizer(t) for name, t in zip(ckpt.text_encoder_names, ckpt.tokenizers)}
    if lora_like:
        targets = formats.lora_targets(ckpt, conv, text_encoder, target)
        plan.lora, plan.alpha = formats.lora_init(targets, rank, rng), float(rank if alpha is None else alpha)
        plan.text_trained = text_encoder
    if plan.finetune and text_encoder:
        plan.text_finetune = plan.text_trained = True
    if method == "textual_inversion":
        token = token or out.stem
        plan.embeddings = {name: _init_rows(tok, init_word, vectors) for name, tok in tokenizers.items()}
        plan.text_trained = True

    # --- data, cached
    examples = dataset.scan(data, instance_prompt)
    if class_data is not None:
        examples += dataset.scan(class_data, class_prompt, prior=True)
    sizes = list(family.buckets) if family.buckets and resolution == family.native_size("epsilon") \
        else dataset.buckets(resolution)
    bucket_of = [dataset.nearest_bucket(*dataset.image_size(e.path), sizes) for e in examples]
    stop = _stopper(should_stop)
    latents = _encode_images(engine, ckpt, examples, bucket_of, stop)
    captions = [_with_token(e.caption, token) if token else e.caption for e in examples]
    texts = sorted(set(captions) | ({""} if caption_dropout else set()))
    if plan.text_trained:
        ids = {t: {name: _ids(t, tok, token, ckpt.text_encoders[i].vocab_size, vectors)
                   for i, (name, tok) in enumerate(tokenizers.items())} for t in texts}
    else:
        cached = _encode_texts(engine, ckpt, tokenizers, texts, text_layer, stop)
    trainer = engine.trainer(ckpt, plan)
    stop()  # the last chance to stop with nothing written

    # --- loop
    ac = alphas_cumprod(ckpt.scheduler)
    prediction = "v" if ckpt.scheduler.prediction_type == "v_prediction" else "epsilon"
    record = Record(method, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / "log.jsonl"
    queue: list[list[int]] = []
    state_file = out.with_name(out.name + ".state.safetensors")
    first = 0
    if resume and state_file.exists():
        first, queue = checkpoints.load(state_file, trainer, rng)
        previous = [json.loads(line) for line in log.read_text().splitlines()][:first] if log.exists() else []
        record.losses = [d["loss"] for d in previous]
        record.learning_rates = [d["lr"] for d in previous]
        record.seconds = [d["seconds"] for d in previous]
    sampler = samples.Sampler(ckpt, engine, trainer, out, sample_prompts, sample_seed, sample_steps) \
        if sample_every and sample_prompts else None
    bar = _progress(steps, progress, first)
    step, snapshot = first, (rng.bit_generator.state, [list(b) for b in queue])
    log_file = open(log, "a" if first else "w")
    try:
        for step in range(first, steps):
            start = time.perf_counter()
            snapshot = rng.bit_generator.state, [list(b) for b in queue]  # the state this step starts from
            total = 0.0
            for _ in range(grad_accum):
                if not queue:
                    queue = dataset.epoch_batches(bucket_of, [e.repeats for e in examples], batch_size, rng)
                idx = queue.pop(0)
                x0 = np.stack([latents[i] for i in idx])  # (B, C, h, w)
                t, eps = noise.draw(rng, x0.shape, len(ac), noise_offset)
                dropped = rng.random(len(idx)) < caption_dropout if caption_dropout else np.zeros(len(idx), bool)
                noisy, target_ = loss.noisy_and_target(x0, eps, t, ac, prediction)
                w = loss.weights(t, ac, prediction, min_snr_gamma)
                w *= np.array([prior_loss_weight if examples[i].prior else 1.0 for i in idx], np.float32)
                chosen = ["" if d else captions[i] for i, d in zip(idx, dropped)]
                batch = Batch(noisy, target_, t.astype(np.float32), w, None, None, None,
                              _time_ids(ckpt, bucket_of[idx[0]], len(idx)))
                if plan.text_trained:
                    batch.ids = {name: np.stack([ids[c][name] for c in chosen]) for name in tokenizers}
                else:
                    batch.context = np.stack([cached[c][0] for c in chosen])
                    batch.pooled = None if cached[chosen[0]][1] is None else np.stack([cached[c][1] for c in chosen])
                total += trainer.accumulate(batch, 1.0 / grad_accum)
            rate = schedule.learning_rate(step, steps, lr, warmup_steps, lr_schedule)
            taken = trainer.step(rate)
            record.losses.append(total / grad_accum)
            record.learning_rates.append(rate)
            record.seconds.append(time.perf_counter() - start)
            log_file.write(json.dumps({"step": step + 1, "loss": record.losses[-1], "lr": rate,
                                       "seconds": round(record.seconds[-1], 4)} | ({} if taken else {
                                           "skipped": True})) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{record.losses[-1]:.4f}")
            bar.update(1)
            if save_every and (step + 1) % save_every == 0:
                checkpoints.save(state_file, trainer, step + 1, rng.bit_generator.state, queue)
            try:
                images = sampler(step + 1, plan, token, should_stop) \
                    if sampler is not None and (step + 1) % sample_every == 0 else []
            except Cancelled:  # should_stop during a sample image: the step is done, that image is not saved
                images = []
            record.outputs += images
            stopped = callback is not None and callback(step + 1, steps, record.losses[-1], images) is False
            if (stopped or should_stop is not None and should_stop()) and step + 1 < steps:
                step, snapshot = step + 1, (rng.bit_generator.state, queue)  # this step is done: resume after it
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        checkpoints.save(state_file, trainer, step, *snapshot)  # `step` itself did not finish: it reruns
        _save(out, ckpt, plan, trainer, rank, conv, text_encoder, steps, lr, resolution, examples, seed,
              lora_format)
        raise Cancelled(f"interrupted at step {step + 1} of {steps}: state saved to {state_file}; run again with "
                        f"resume to continue") from None
    finally:
        bar.close()
        log_file.close()
    _save(out, ckpt, plan, trainer, rank, conv, text_encoder, steps, lr, resolution, examples, seed, lora_format)
    record.outputs = [str(out), str(log)] + record.outputs
    return record


def _save(out, ckpt, plan, trainer, rank, conv, text_encoder, steps, lr, resolution, examples, seed,
          lora_format) -> None:
    with trainer.averaged():
        _write(out, ckpt, plan, trainer, rank, conv, text_encoder, steps, lr, resolution, examples, seed, lora_format)


def _write(out, ckpt, plan, trainer, rank, conv, text_encoder, steps, lr, resolution, examples, seed,
           lora_format) -> None:
    if plan.lora is not None and lora_format == "peft":
        formats.save_peft(out, trainer.lora_weights(), plan.alpha)
    elif plan.lora is not None:
        meta = formats.lora_metadata(ckpt, rank, plan.alpha, conv, text_encoder, steps, lr, resolution,
                                     examples, seed, out.stem)
        formats.save_lora(out, ckpt, trainer.lora_weights(), plan.alpha, meta)
    elif plan.embeddings is not None:
        formats.save_embedding(out, trainer.embedding_vectors(), ckpt.family,
                               modelspec.metadata(ckpt, out.stem, (resolution, resolution), "textual-inversion"))
    else:
        formats.save_finetune(out, ckpt, {"unet": trainer.unet_weights(), **trainer.text_weights()})


def _init_rows(tokenizer, word: str, vectors: int) -> list[int]:
    """Token ids whose embeddings start the new vectors: init_word's tokens, cycled to `vectors` rows."""
    ids = tokenizer.encode(word)
    if not ids:
        raise ValueError(f"init_word {word!r} has no tokens; use a word like 'person' or 'style'")
    return [ids[i % len(ids)] for i in range(vectors)]


def _with_token(caption: str, token: str) -> str:
    """Textual inversion trains on captions that name the token; one that does not gets it in front."""
    return caption if re.search(rf"\b{re.escape(token)}\b", caption, re.IGNORECASE) else f"{token}, {caption}"


def _ids(text: str, tokenizer, token: str | None, vocab: int, vectors: int) -> np.ndarray:
    """(77,) ids of `text`, with each `token` (textual inversion) as the new rows vocab .. vocab + vectors - 1."""
    if not token:
        return tokenizer([text])[0]
    body = []
    for i, piece in enumerate(re.split(rf"\b{re.escape(token)}\b", text, flags=re.IGNORECASE)):
        if i:
            body += range(vocab, vocab + vectors)
        body += tokenizer.encode(piece)
    row = np.full(tokenizer.max_length, tokenizer.pad_id, np.int64)
    body = [tokenizer.bos_id, *body[: tokenizer.max_length - 2], tokenizer.eos_id]
    row[: len(body)] = body
    return row


def _stopper(should_stop):
    """should_stop -> a function raising Cancelled when it says so: the caching's checkpoint, before anything
    is written."""
    def stop():
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled while encoding the training images and captions: nothing was written")
    return stop


def _encode_images(engine, ckpt: Checkpoint, examples, bucket_of, stop) -> list[np.ndarray]:
    """Each image once through the VAE encoder (posterior mean, scaled): (C, h, w) float32 each."""
    vae = engine.vae(ckpt.vae, ckpt.weights["vae"])
    out = []
    for e, size in zip(examples, bucket_of):
        stop()
        out.append(engine.numpy(vae.encode(dataset.load_image(e.path, size)[None]))[0])
    del vae
    return out


def _encode_texts(engine, ckpt: Checkpoint, tokenizers, texts: list[str], text_layer: dict, stop):
    """text -> (context (77, C), pooled (P,) or None) through the frozen encoders (first 77 tokens), TEXT_BATCH
    texts per call so that `stop` is consulted between calls."""
    towers = [conditioning.Tower(tok, engine.text_encoder(cfg, ckpt.weights[name]), cfg)
              for (name, tok), cfg in zip(tokenizers.items(), ckpt.text_encoders)]
    cached = {}
    for i in range(0, len(texts), TEXT_BATCH):
        stop()
        batch = texts[i:i + TEXT_BATCH]
        enc = conditioning.encode(batch, towers, engine.numpy, prompt_syntax="plain", **text_layer)
        cached |= {t: (c[:77], p) for t, c, p in zip(batch, enc.contexts, enc.pooled)}
    return cached


def _time_ids(ckpt: Checkpoint, size: tuple[int, int], n: int) -> np.ndarray | None:
    """SDXL micro-conditioning for a bucket: original and target size the bucket's, crop (0, 0)."""
    if ckpt.unet.addition_embed_type != "text_time":
        return None
    w, h = size
    values = micro_conditioning.resolve(ckpt.time_ids, h, w, {})
    return np.repeat(micro_conditioning.time_ids(values, ckpt.time_ids, negative=False)[None], n, axis=0)


class _Quiet:
    def set_postfix(self, **_): pass
    def update(self, _): pass
    def close(self): pass


def _progress(steps: int, show: bool, done: int = 0):
    """A bar with the loss and it/s (tqdm's rate), or nothing."""
    if not show:
        return _Quiet()
    from tqdm import tqdm
    return tqdm(total=steps, initial=done, unit="step", desc="train")
