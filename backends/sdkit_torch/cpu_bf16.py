"""bfloat16 on CPUs without it. torch computes bfloat16 on any CPU, but where oneDNN has no bfloat16 kernels (no
AVX-512, AVX2-VNNI-2 or AMX; torch's own query says) its matmuls and convolutions fall to portable loops. Measured
on a 2-core AVX2 CPU against float32: a (2, 1024, 640) x (640, 640) linear 8x slower, a 320-channel 3x3 convolution
at 32x32 38x, the VAE's 128-channel transposed upsampling at 64x64 177x. There the linear (onednn.py) and the VAE's
upsampling (vae.py) take their bfloat16 inputs and weights to float32, compute, and round the output back: 1.15x and
1.8x float32's time, the weights still stored in half the memory, accumulated in float32 as native kernels do.
So do unet.Conv2d's (the UNet's convolutions, the VAE's resnets and resamplers): an SD VAE decode to 128x128 in
1.2x float32's time, not 16x."""

from __future__ import annotations

import functools

import torch


@functools.cache
def supported() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's bf16 kernels, which torch's CPU matmuls and
    convolutions use)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def emulated(x: torch.Tensor) -> bool:
    """Whether x is a bfloat16 CPU tensor on a CPU without native bfloat16: its layers should compute in float32."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not supported())
