"""Dynamic loss scaling for float16 training (Micikevicius et al. 2018), as torch.amp.GradScaler does it.

float16 gradients underflow to zero below 6e-8, so the loss is multiplied by `scale` before backpropagation and
the gradients divided by it before the optimizer sees them. A step whose gradients are not all finite (the
scaled backward overflowed 65504) is skipped and halves the scale; `growth_interval` finite steps in a row
double it. bfloat16 has float32's range and needs none of this."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossScale:
    scale: float = 2.0**16
    growth_interval: int = 2000
    good_steps: int = 0  # finite steps since the scale last changed

    def update(self, finite: bool) -> bool:
        """After one step's gradients: adjust the scale; -> whether the step is to be taken."""
        if not finite:
            self.scale, self.good_steps = self.scale / 2, 0
            return False
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0
        return True
