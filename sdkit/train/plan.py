"""What the core asks a backend's trainer to train (Plan) and one micro-batch it hands over (Batch).

A backend's `trainer(checkpoint, plan)` returns an object with
    accumulate(batch, scale) -> float   forward + backward of one micro-batch, gradients x scale added up
    step(lr) -> bool                    one AdamW step at that rate (and the EMA's update), gradients cleared;
                                        False when loss scaling skipped it (non-finite gradients)
    averaged()                          context manager: the EMA weights in place of the trained ones
    lora_weights() -> {Target: (down, up)}, embedding_vectors() -> {encoder: (n, C)},
    unet_weights() -> {name: array}     the trained tensors as numpy, canonical names and torch layouts
    text_weights() -> {encoder: {name: array}}  likewise, the fine-tuned text encoders (text_finetune)
    state() / load_state(dict)          trained tensors and optimizer moments, for resuming
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .formats import Target


@dataclass
class Plan:
    learning_rate: float
    lora: dict[Target, tuple[np.ndarray, np.ndarray]] | None = None  # initial (down, up) per adapted module
    alpha: float = 1.0
    finetune: bool = False  # every UNet weight
    text_finetune: bool = False  # every text-encoder weight too (text_trained is set with it)
    embeddings: dict[str, list[int]] | None = None  # encoder -> token ids whose rows start the new vectors
    text_trained: bool = False  # the text encoders run each step (text-encoder LoRA, textual inversion)
    text_layer: dict = field(default_factory=dict)  # TextEncoder's layer / final_norm for this family
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    gradient_checkpointing: bool = False
    ema_decay: float | None = None  # keep an EMA of the trained weights (ema.py) and write it as the output
    loss_scaling: bool = False  # dynamic loss scaling (scaling.py): float16 runs


@dataclass
class Batch:
    noisy: np.ndarray  # (B, C, h, w) x_t
    target: np.ndarray  # (B, C, h, w) eps or v
    t: np.ndarray  # (B,) timesteps
    weights: np.ndarray  # (B,) per-sample loss weights (min-SNR, prior preservation)
    context: np.ndarray | None  # (B, 77, C) cached frozen-text context, or None: encode `ids`
    pooled: np.ndarray | None  # (B, P) SDXL's pooled text (cached), or None
    ids: dict[str, np.ndarray] | None  # encoder -> (B, 77) token ids, when the text side trains
    time_ids: np.ndarray | None  # (B, 6) SDXL micro-conditioning, or None
