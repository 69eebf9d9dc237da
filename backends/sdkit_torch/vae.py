"""AutoencoderKL (Rombach et al. 2022): pixels <-> latents with `scale` pixels per latent.
Attribute paths equal diffusers' state-dict keys (the new attention names: to_q, to_k, to_v, to_out.0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdkit.config import VAEConfig

from . import cpu_bf16
from .autograd import needs_grad
from .onednn import Linear
from .unet import Downsample2D, ResnetBlock2D

EPS = 1e-6  # every GroupNorm in the VAE


class Attention(nn.Module):
    """Single-head self attention over all pixels, with its own GroupNorm and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = Linear(channels, channels)
        self.to_k = Linear(channels, channels)
        self.to_v = Linear(channels, channels)
        self.to_out = nn.ModuleList([Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        y = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        q, k, v = (p(y)[:, None] for p in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)[:, 0]
        y = self.to_out[0](y).transpose(1, 2).reshape(B, C, H, W)
        return x + y


class Upsample2D(nn.Module):
    """2x nearest upsampling, then a 3x3 conv: computed as one stride-2 transposed 4x4 convolution of the input.
    Upsampling repeats each pixel, so an output pixel sees 2x2 input pixels through sums of the 3x3 taps: 4
    multiply-adds per channel pair instead of 9 (the decoder's two largest convolutions, 2x faster on the CPU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.kernel = None  # (C_in, C_out, 4, 4), made from conv.weight at the first call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bfloat16 on a CPU without it: in float32, kernel included (torch's bfloat16 kernel takes 177x the time)
        dtype = torch.float32 if cpu_bf16.emulated(x) else self.conv.weight.dtype
        if needs_grad(self.conv.weight):  # a kernel made now, so the gradient reaches conv.weight; never cached
            kernel = upsampling_kernel(self.conv.weight, dtype)
        else:
            if self.kernel is None:
                self.kernel = upsampling_kernel(self.conv.weight, dtype)
            kernel = self.kernel
        y = F.conv_transpose2d(x.to(dtype), kernel, self.conv.bias.to(dtype), stride=2, padding=1)
        return y.to(x.dtype)


# Per axis, transposed-conv tap p of output pixel 2i + a, from the 3x3 taps (w0, w1, w2): a = 0 reads input
# pixels (i - 1, i) through taps 3 and 1 = (w0, w1 + w2); a = 1 reads (i, i + 1) through 2 and 0 = (w0 + w1, w2).
_TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)  # (4, 3)


def upsampling_kernel(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C_out, C_in, 3, 3) conv weight -> the (C_in, C_out, 4, 4) kernel of upsample-then-conv, summed in float32."""
    taps = _TAPS.to(weight.device)
    return torch.einsum("pk,ql,oikl->iopq", taps, taps, weight.float()).to(dtype)


class MidBlock(nn.Module):
    """UNetMidBlock2D: resnet, attention, resnet."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class DownEncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, EPS)
            for i in range(num_layers))
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, EPS)
            for i in range(num_layers))
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups, last = config.block_out_channels, config.norm_num_groups, len(config.block_out_channels) - 1
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block, groups, i < last)
            for i in range(len(ch)))
        self.mid_block = MidBlock(ch[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups, last = config.block_out_channels[::-1], config.norm_num_groups, len(config.block_out_channels) - 1
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block + 1, groups, i < last)
            for i in range(len(ch)))
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> posterior mean * scaling_factor (B, 4, H/f, W/f); with latents_mean and
        _std (Playground v2.5), (mean - latents_mean) * scaling_factor / latents_std, as diffusers' SDXL pipelines."""
        moments = self.quant_conv(self.encoder(x))  # (B, 2 * latent, h, w): mean, log-variance
        z = moments[:, : self.config.latent_channels]
        if self.config.latents_mean is None:
            return z * self.config.scaling_factor
        mean, std = self._channel_stats(z)
        return (z - mean) * self.config.scaling_factor / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, 4, h, w) scaled latents -> x (B, 3, h*f, w*f), about [-1, 1]."""
        if self.config.latents_mean is None:
            return self.decoder(self.post_quant_conv(z / self.config.scaling_factor))
        mean, std = self._channel_stats(z)
        return self.decoder(self.post_quant_conv(z * std / self.config.scaling_factor + mean))

    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents_mean, latents_std as (1, C, 1, 1) tensors like `like`."""
        return tuple(torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
                     for v in (self.config.latents_mean, self.config.latents_std))
