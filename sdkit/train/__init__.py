"""Training: LoRA / LoCon, DreamBooth, textual inversion and UNet fine-tuning on either backend (sdkit.train)."""

from .loop import METHODS, Record, train

__all__ = ["train", "Record", "METHODS"]
