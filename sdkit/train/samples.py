"""Sample images during training: fixed prompts and seeds through a Pipeline whose UNet and text encoders are the
ones training (the trainer's `attach`: LoRA layers and fine-tuned weights as they are at this step), and, for
textual inversion, the current vectors as an embedding file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..adapters.embeddings import Embeddings
from ..metadata import save as save_image
from ..pipeline import Pipeline
from . import formats


class Sampler:
    def __init__(self, ckpt, engine, trainer, out: Path, prompts, seed: int, steps: int):
        self.pipe = Pipeline(ckpt, engine)
        trainer.attach(self.pipe)
        self.trainer, self.ckpt = trainer, ckpt
        self.prompts, self.seed, self.steps = list(prompts), seed, steps
        self.folder = out.parent / "samples"
        self.vectors = Path(tempfile.mkdtemp(prefix="sdkit-train-"))

    def __call__(self, step: int, plan, token: str | None, should_stop=None) -> list[str]:
        """Images for this step -> their paths. should_stop() True during an image raises sdkit.Cancelled at its
        next sampler step, before that image is saved."""
        callback = None if should_stop is None else lambda *_: not should_stop()
        if plan.embeddings is not None:
            formats.save_embedding(self.vectors / f"{token}.safetensors", self.trainer.embedding_vectors(),
                                   self.ckpt.family)
            self.pipe.embeddings = Embeddings([self.vectors])
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, prompt in enumerate(self.prompts):
            image, = self.pipe.generate(prompt, seed=self.seed + i, steps=self.steps, callback=callback)
            path = self.folder / f"step{step:06d}-{i}.png"
            save_image(image, path)
            paths.append(str(path))
        return paths
