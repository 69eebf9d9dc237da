"""AutoencoderKL (Rombach et al. 2022): pixels <-> latents with `scale` pixels per latent, NHWC, in mlx.nn.
Attribute paths equal diffusers' state-dict keys (the new attention names: to_q, to_k, to_v, to_out.0);
quant_conv and post_quant_conv are 1x1 convolutions, so Linear layers over the channel axis."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sdkit.config import VAEConfig

from .unet import Downsample2D, ResnetBlock2D, group_norm

EPS = 1e-6  # every GroupNorm in the VAE


class Upsample2D(nn.Module):
    """2x nearest upsampling, then a 3x3 conv: computed as one 2x2 conv of the input with an output per phase.
    Upsampling repeats each pixel, so output pixel (2i + a, 2j + b) sees 2x2 input pixels through sums of the
    3x3 taps: 4 multiply-adds per channel pair instead of 9 on the decoder's two largest convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self._kernel = None  # (4 * C_out, 2, 2, C_in), made from conv.weight at the first call

    def __call__(self, x: mx.array) -> mx.array:
        if self.training:  # made from the weight in the traced graph, so gradients reach it; never cached
            kernel = phase_kernels(self.conv.weight)
        else:
            if self._kernel is None:
                self._kernel = phase_kernels(self.conv.weight)
            kernel = self._kernel
        B, H, W, _ = x.shape
        y = mx.conv2d(mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]), kernel)  # (B, H+1, W+1, 4 * C_out)
        y = (y + mx.tile(self.conv.bias, 4)).reshape(B, H + 1, W + 1, 2, 2, -1)  # (..., a, b, C_out)
        # phase (a, b) of output pixel (2i + a, 2j + b) sits at y[:, i + a, j + b, a, b]
        rows = [mx.stack([y[:, a:a + H, b:b + W, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]  # (B, H, W, 2, C)
        return mx.stack(rows, axis=2).reshape(B, 2 * H, 2 * W, -1)


# Per axis, phase a of output pixel 2i + a reads input pixels (i - 1 + a, i + a) of the 1-padded input through
# these sums of the 3x3 taps (w0, w1, w2): a = 0 -> (w0, w1 + w2), a = 1 -> (w0 + w1, w2).
_PHASE_TAPS = mx.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=mx.float32)  # (a, 2, 3)


def phase_kernels(weight: mx.array) -> mx.array:
    """(C_out, 3, 3, C_in) conv weight -> (4 * C_out, 2, 2, C_in): a 2x2 kernel per output phase (a, b), summed
    in float32."""
    k = mx.einsum("apk,bql,okli->abopqi", _PHASE_TAPS, _PHASE_TAPS, weight.astype(mx.float32))
    return k.reshape(-1, 2, 2, weight.shape[-1]).astype(weight.dtype)


class Attention(nn.Module):
    """Single-head self attention over all pixels, with its own GroupNorm and a residual.

    The one head is as wide as the channels (512): no fused kernel covers it, MLX falls back to
    matmul-softmax-matmul inside scaled_dot_product_attention, which is what it would be by hand."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(groups, channels, EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        B, H, W, C = x.shape
        y = self.group_norm(x).reshape(B, 1, H * W, C)  # (B, 1, HW, C): one head
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=C ** -0.5)
        y = self.to_out[0](y).reshape(B, H, W, C)
        return x + y


class MidBlock(nn.Module):
    """UNetMidBlock2D: resnet, attention, resnet."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = [ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)]
        self.attentions = [Attention(channels, groups)]

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, EPS)
                        for i in range(num_layers)]
        if downsample:
            self.downsamplers = [Downsample2D(out_channels, padding=0)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if "downsamplers" in self else x


class UpDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, EPS)
                        for i in range(num_layers)]
        if upsample:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        if "upsamplers" in self:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups, last = config.block_out_channels, config.norm_num_groups, len(config.block_out_channels) - 1
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = [DownEncoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block, groups, i < last)
                            for i in range(len(ch))]
        self.mid_block = MidBlock(ch[-1], groups)
        self.conv_norm_out = group_norm(groups, ch[-1], EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)  # mean and log-variance

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, groups, last = config.block_out_channels[::-1], config.norm_num_groups, len(config.block_out_channels) - 1
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups)
        self.up_blocks = [UpDecoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block + 1, groups, i < last)
                          for i in range(len(ch))]
        self.conv_norm_out = group_norm(groups, ch[-1], EPS)
        self.conv_out = nn.Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Linear(2 * config.latent_channels, 2 * config.latent_channels)
        self.post_quant_conv = nn.Linear(config.latent_channels, config.latent_channels)

    def encode(self, x: mx.array) -> mx.array:
        """x (B, H, W, 3) in [-1, 1] -> posterior mean * scaling_factor (B, H/f, W/f, 4); with latents_mean and
        _std (Playground v2.5), (mean - latents_mean) * scaling_factor / latents_std, as diffusers' SDXL pipelines."""
        moments = self.quant_conv(self.encoder(x))  # (B, h, w, 2 * latent): mean, log-variance
        z = moments[..., : self.config.latent_channels]
        if self.config.latents_mean is None:
            return z * self.config.scaling_factor
        mean, std = self._channel_stats(z)
        return (z - mean) * self.config.scaling_factor / std

    def decode(self, z: mx.array) -> mx.array:
        """z (B, h, w, 4) scaled latents -> x (B, h*f, w*f, 3), about [-1, 1]."""
        if self.config.latents_mean is None:
            return self.decoder(self.post_quant_conv(z / self.config.scaling_factor))
        mean, std = self._channel_stats(z)
        return self.decoder(self.post_quant_conv(z * std / self.config.scaling_factor + mean))

    def _channel_stats(self, like: mx.array) -> tuple[mx.array, mx.array]:
        """latents_mean, latents_std as (C,) arrays like `like` (channels last: they broadcast)."""
        return tuple(mx.array(v, dtype=like.dtype) for v in (self.config.latents_mean, self.config.latents_std))
