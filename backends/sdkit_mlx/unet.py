"""UNet2DConditionModel: the noise predictor of SD 1.x, 2.x and XL (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models"), in mlx.nn.

Feature maps are NHWC throughout (MLX's convolution layout: no transposes between layers); the backend
transposes once at the UNet's boundary. Attribute paths equal diffusers' state-dict keys; 1x1 convolutions
(conv_shortcut, SD1's proj_in / proj_out) are Linear layers over the channel axis, their weights squeezed
at load.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from sdkit.config import UNetConfig
from sdkit.errors import CheckpointError

# Head sizes with a fused Metal kernel in mx.fast.scaled_dot_product_attention. Smaller heads (SD1's 40) are
# zero-padded up to the next one; larger ones (SD1's 160, the VAE's 512) use MLX's own unfused fallback.
FUSED_HEAD_SIZES = (64, 80, 128)


def attention(q: mx.array, k: mx.array, v: mx.array, fused_sizes: tuple[int, ...] = (),
              upcast: bool = False) -> mx.array:
    """softmax(q k^T / sqrt(hs)) v over (B, nh, T, hs) queries and (B, nh, S, hs) keys and values.

    fused_sizes: head sizes with a fused kernel on this device (padding helps only where one exists).
    upcast: compute in float32 where no fused kernel runs (the fused one already accumulates and
    softmaxes in float32, which is all that SD2's upcast_attention asks for).
    """
    hs = q.shape[-1]
    scale = hs ** -0.5  # the real head size's, whatever the padding
    padded = next((s for s in fused_sizes if s >= hs), None)
    if padded is None:  # MLX's unfused fallback: q k^T in the input dtype, where float16 can overflow
        if upcast:
            y = mx.fast.scaled_dot_product_attention(q.astype(mx.float32), k.astype(mx.float32),
                                                     v.astype(mx.float32), scale=scale)
            return y.astype(q.dtype)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    if padded > hs:
        # Zero columns add nothing to q.k and give zero output columns, cut off after. Never split a head
        # instead: the softmax needs all of its dimensions.
        pad = [(0, 0), (0, 0), (0, 0), (0, padded - hs)]
        y = mx.fast.scaled_dot_product_attention(mx.pad(q, pad), mx.pad(k, pad), mx.pad(v, pad), scale=scale)
        return y[..., :hs]
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)


def group_norm(groups: int, channels: int, eps: float) -> nn.GroupNorm:
    """GroupNorm over groups of adjacent channels, as PyTorch (and so the weights) define them; MLX's default
    would group channels i, i + groups, i + 2 * groups, ..."""
    return nn.GroupNorm(groups, channels, eps=eps, pytorch_compatible=True)


def timestep_embedding(t: mx.array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> mx.array:
    """t (N,) -> (N, dim) float32 sinusoidal embedding (Vaswani et al. 2017), as diffusers' Timesteps."""
    half = dim // 2
    exponent = -math.log(max_period) * mx.arange(half, dtype=mx.float32) / (half - freq_shift)
    args = t.astype(mx.float32)[:, None] * mx.exp(exponent)[None]  # (N, half)
    sin, cos = mx.sin(args), mx.cos(args)
    return mx.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


def upsample_nearest(x: mx.array, size: tuple[int, int]) -> mx.array:
    """(B, H, W, C) -> (B, h, w, C), h in {2H - 1, 2H}: each pixel repeated 2x2, then cropped to `size`.

    Equals PyTorch's nearest interpolation to `size` (source index floor(i * H / h) = i // 2 for both h),
    so a skip connection of odd size (a latent side of 8 * odd pixels) joins without a mismatch."""
    B, H, W, C = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)
    return x[:, : size[0], : size[1]]


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """Two GroupNorm-SiLU-conv layers with the time embedding added in between (none in the VAE)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float):
        super().__init__()
        self.norm1 = group_norm(groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels:
            self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(groups, out_channels, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Linear(in_channels, out_channels)

    def __call__(self, x: mx.array, temb: mx.array | None = None) -> mx.array:
        y = self.norm1(x)
        y = nn.silu(y)
        y = self.conv1(y)
        if "time_emb_proj" in self:
            y = y + self.time_emb_proj(nn.silu(temb))[:, None, None, :]
        y = self.norm2(y)
        y = nn.silu(y)
        y = self.conv2(y)
        return y + (self.conv_shortcut(x) if "conv_shortcut" in self else x)


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv: padding 1 gives ceil(n / 2) (UNet); padding 0 pads right/bottom only (VAE)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def __call__(self, x: mx.array) -> mx.array:
        if self.padding == 0:
            x = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest upsampling to `size` (the skip connection's, not a blind 2x), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x: mx.array, size: tuple[int, int]) -> mx.array:
        return self.conv(upsample_nearest(x, size))


class Attention(nn.Module):
    """Multi-head attention of x over context (itself when None)."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None,
                 fused_sizes: tuple[int, ...] = (), upcast: bool = False):
        super().__init__()
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.fused_sizes = fused_sizes
        self.upcast = upcast
        self.chunk = 0  # query rows per step, set on self attention by the backend's UNet.attention_chunk
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = [nn.Linear(dim, dim)]

    def __call__(self, x: mx.array, context: mx.array | None = None) -> mx.array:
        context = x if context is None else context
        B, T, C = x.shape
        S, nh = context.shape[1], self.num_heads
        q = self.to_q(x).reshape(B, T, nh, -1).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        k = self.to_k(context).reshape(B, S, nh, -1).transpose(0, 2, 1, 3)  # (B, nh, S, hs)
        v = self.to_v(context).reshape(B, S, nh, -1).transpose(0, 2, 1, 3)
        if self.chunk and T > self.chunk:  # a (chunk, S) score matrix at a time where the kernel holds (T, S)
            # Evaluated chunk by chunk: from one lazy graph MLX would schedule all chunks' scores together.
            ys = []
            for i in range(0, T, self.chunk):
                ys.append(attention(q[:, :, i:i + self.chunk], k, v, self.fused_sizes, self.upcast))
                mx.eval(ys[-1])
            y = mx.concatenate(ys, axis=2)  # (B, nh, T, hs)
        else:
            y = attention(q, k, v, self.fused_sizes, self.upcast)  # (B, nh, T, hs)
        return self.to_out[0](y.transpose(0, 2, 1, 3).reshape(B, T, C))


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one projection gives the value and its gate."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def __call__(self, x: mx.array) -> mx.array:
        h, gate = mx.split(self.proj(x), 2, axis=-1)
        return h * nn.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 is diffusers' dropout: the Identity keeps the output layer at index 2, as in the weights
        self.net = [GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, context_dim: int, fused_sizes: tuple[int, ...], upcast: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, fused_sizes=fused_sizes, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, num_heads, context_dim, fused_sizes, upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        # Self attention
        y = self.norm1(x)
        y = self.attn1(y)
        x = x + y

        # Cross attention
        y = self.norm2(x)
        y = self.attn2(y, context)
        x = x + y

        # Feed forward
        y = self.norm3(x)
        y = self.ff(y)
        return x + y


class Transformer2DModel(nn.Module):
    """Spatial transformer: feature map -> tokens -> transformer blocks -> feature map, plus the input.

    SD1's 1x1-conv projections and SD2's linear ones are the same per-pixel map on an NHWC tensor, so
    use_linear_projection needs no second code path here."""

    def __init__(self, channels: int, num_heads: int, num_layers: int, config: UNetConfig,
                 fused_sizes: tuple[int, ...], upcast: bool):
        super().__init__()
        self.norm = group_norm(config.norm_num_groups, channels, 1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = [
            BasicTransformerBlock(channels, num_heads, config.cross_attention_dim, fused_sizes, upcast)
            for _ in range(num_layers)]
        self.proj_out = nn.Linear(channels, channels)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        B, H, W, C = x.shape
        y = self.norm(x).reshape(B, H * W, C)  # (B, HW, C)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y)
        return x + y.reshape(B, H, W, C)


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (attention=True) or DownBlock2D."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, config: UNetConfig,
                 num_heads: int, transformer_layers: int, attention: bool, downsample: bool,
                 fused_sizes: tuple[int, ...], upcast: bool):
        super().__init__()
        n, groups, eps = config.layers_per_block, config.norm_num_groups, config.norm_eps
        self.resnets = [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
                        for i in range(n)]
        if attention:
            self.attentions = [
                Transformer2DModel(out_channels, num_heads, transformer_layers, config, fused_sizes, upcast)
                for _ in range(n)]
        if downsample:
            self.downsamplers = [Downsample2D(out_channels)]

    def __call__(self, x, temb, context) -> tuple[mx.array, list[mx.array]]:
        """-> x and the skip connections it leaves for the up path."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if "attentions" in self:
                x = self.attentions[i](x, context)
            skips.append(x)
        if "downsamplers" in self:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D (attention=True) or UpBlock2D: each resnet joins one skip connection."""

    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, temb_channels: int,
                 config: UNetConfig, num_heads: int, transformer_layers: int, attention: bool, upsample: bool,
                 fused_sizes: tuple[int, ...], upcast: bool):
        super().__init__()
        n, groups, eps = config.layers_per_block + 1, config.norm_num_groups, config.norm_eps
        self.resnets = [
            ResnetBlock2D((prev_channels if i == 0 else out_channels) + (in_channels if i == n - 1 else out_channels),
                          out_channels, temb_channels, groups, eps)
            for i in range(n)]
        if attention:
            self.attentions = [
                Transformer2DModel(out_channels, num_heads, transformer_layers, config, fused_sizes, upcast)
                for _ in range(n)]
        if upsample:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x, skips: list[mx.array], temb, context, size: tuple[int, int] | None) -> mx.array:
        """skips: this block's skip connections, the last one joined first; size: the next block's skip size."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(mx.concatenate([x, skips[-1 - i]], axis=-1), temb)
            if "attentions" in self:
                x = self.attentions[i](x, context)
        if "upsamplers" in self:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, channels: int, temb_channels: int, config: UNetConfig, fused_sizes: tuple[int, ...],
                 upcast: bool):
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        self.resnets = [ResnetBlock2D(channels, channels, temb_channels, groups, eps) for _ in range(2)]
        self.attentions = [Transformer2DModel(channels, config.num_heads[-1], config.transformer_layers_per_block[-1],
                                              config, fused_sizes, upcast)]

    def __call__(self, x, temb, context) -> mx.array:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # type -> has attention
UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig, fused_sizes: tuple[int, ...] = ()):
        """fused_sizes: head sizes with a fused attention kernel on the device (FUSED_HEAD_SIZES on Metal)."""
        super().__init__()
        _check(config)
        self.config = config
        ch = config.block_out_channels
        temb = ch[0] * 4
        upcast = config.upcast_attention
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        if config.addition_embed_type == "text_time":  # SDXL: pooled text and size/crop ids join the timestep
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb)

        last = len(ch) - 1
        self.down_blocks = [
            DownBlock(ch[max(i - 1, 0)], ch[i], temb, config, config.num_heads[i],
                      config.transformer_layers_per_block[i], DOWN_TYPES[kind], i < last, fused_sizes, upcast)
            for i, kind in enumerate(config.down_block_types)]
        self.mid_block = MidBlock(ch[-1], temb, config, fused_sizes, upcast)
        rch, heads, layers = ch[::-1], config.num_heads[::-1], config.transformer_layers_per_block[::-1]
        self.up_blocks = [
            UpBlock(rch[min(i + 1, last)], rch[max(i - 1, 0)], rch[i], temb, config, heads[i], layers[i],
                    UP_TYPES[kind], i < last, fused_sizes, upcast)
            for i, kind in enumerate(config.up_block_types)]
        self.conv_norm_out = group_norm(config.norm_num_groups, ch[0], config.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], config.out_channels, 3, padding=1)

    def __call__(self, x: mx.array, t: mx.array, context: mx.array,
                 added: dict[str, mx.array] | None = None) -> mx.array:
        """x (B, h, w, C) NHWC, t (B,) timesteps, context (B, S, D) in the compute dtype -> (B, h, w, C)."""
        cfg, B = self.config, x.shape[0]
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(emb.astype(x.dtype))
        if cfg.addition_embed_type == "text_time":
            if added is None:
                raise ValueError("unet: this UNet (addition_embed_type 'text_time') needs "
                                 "added={'text_embeds': (B, P), 'time_ids': (B, 6)}")
            time_ids = added["time_ids"]  # (B, 6): original size, crop top-left, target size
            time_emb = timestep_embedding(time_ids.flatten(), cfg.addition_time_embed_dim, cfg.flip_sin_to_cos,
                                          cfg.freq_shift).reshape(B, -1)  # (B, 6 * addition_time_embed_dim)
            emb = emb + self.add_embedding(mx.concatenate([added["text_embeds"], time_emb], axis=-1).astype(x.dtype))

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, emb, context)
            skips += s
        x = self.mid_block(x, emb, context)
        for block in self.up_blocks:
            n = len(block.resnets)
            own, skips = skips[-n:], skips[:-n]
            x = block(x, own, emb, context, skips[-1].shape[1:3] if skips else None)
        y = self.conv_norm_out(x)
        y = nn.silu(y)
        return self.conv_out(y)


def _check(config: UNetConfig) -> None:
    for field, kinds, valid in (("down_block_types", config.down_block_types, DOWN_TYPES),
                                ("up_block_types", config.up_block_types, UP_TYPES)):
        for kind in kinds:
            if kind not in valid:
                raise CheckpointError(f"unet {field}: {kind!r} is not supported; use {' or '.join(valid)}")
    if config.addition_embed_type not in (None, "text_time"):
        raise CheckpointError(f"unet addition_embed_type {config.addition_embed_type!r} is not supported; "
                              f"use None or 'text_time'")
