"""UNet2DConditionModel: the noise predictor of SD 1.x, 2.x and XL (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models"). Attribute paths equal diffusers' state-dict keys."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sdkit.config import UNetConfig
from sdkit.errors import CheckpointError

from . import cpu_attention, cpu_bf16, frozen
from .autograd import needs_grad
from .frozen import group_norm_silu
from .onednn import Linear, linear


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> torch.Tensor:
    """t (N,) -> (N, dim) float32 sinusoidal embedding (Vaswani et al. 2017), as diffusers' Timesteps."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None]  # (N, half)
    sin, cos = torch.sin(args), torch.cos(args)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


# Below this many output pixels (batch x height x width) a CPU 3x3 convolution runs faster as one GEMM over
# unfolded patches: oneDNN's direct kernel reaches ~40% of GEMM speed there (the UNet's 8x8 and 4x4 levels).
GEMM_CONV_MAX_PIXELS = 256


class Conv2d(nn.Conv2d):
    """nn.Conv2d, with small stride-1 3x3 convolutions on the CPU lowered to a GEMM (same weights, same result
    to float rounding). Measured on a 2-core AVX-512 CPU, float32, batch 2: 1280 channels at 8x8 98 -> 144
    GFLOP/s, at 4x4 37 -> 111 GFLOP/s; at 16x16 and above the direct kernel wins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if frozen.applies(x, self):
            return frozen.FrozenConv2d.apply(x, self)
        return self._forward(x)

    def gemm(self, x: torch.Tensor) -> bool:
        B, _, H, W = x.shape
        return (x.device.type == "cpu" and B * H * W <= GEMM_CONV_MAX_PIXELS and self.kernel_size == (3, 3)
                and self.stride == (1, 1) and self.padding == (1, 1))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_bf16.emulated(x):  # torch's portable bfloat16 convolution is 38x slower (cpu_bf16)
            bias = None if self.bias is None else self.bias.float()
            y = F.conv2d(x.float(), self.weight.float(), bias, self.stride, self.padding, self.dilation, self.groups)
            return y.to(x.dtype)
        if not self.gemm(x):
            return super().forward(x)
        B, C, H, W = x.shape
        cols = F.unfold(x, 3, padding=1).transpose(0, 1).reshape(C * 9, B * H * W)  # (9C, B*HW)
        y = torch.addmm(self.bias[:, None], self.weight.reshape(self.out_channels, -1), cols)  # (C_out, B*HW)
        return y.view(-1, B, H, W).transpose(0, 1)  # (B, C_out, H, W)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = Linear(in_dim, dim)
        self.linear_2 = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """Two GroupNorm-SiLU-conv layers with the time embedding added in between (None in the VAE)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(group_norm_silu(self.norm1, x))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(group_norm_silu(self.norm2, h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h.add_(x)


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv: padding 1 gives ceil(n / 2) (UNet); padding 0 pads right/bottom only (VAE)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.padding == (0, 0):
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest upsampling to `size` (the skip connection's, so odd sizes round-trip), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Attention(nn.Module):
    """Multi-head attention of x over context (itself when None), fused by SDPA or, on x86 CPUs, cpu_attention."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, upcast: bool = False):
        super().__init__()
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.upcast = upcast
        self.chunk = 0  # query rows per step, set on self attention by the backend's UNet.attention_chunk
        self.to_q = Linear(dim, dim, bias=False)
        self.to_k = Linear(context_dim, dim, bias=False)
        self.to_v = Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([Linear(dim, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, T, C = x.shape
        q = self.to_q(x).view(B, T, self.num_heads, -1).transpose(1, 2)  # (B, nh, T, hs)
        k = self.to_k(context).view(B, context.shape[1], self.num_heads, -1).transpose(1, 2)  # (B, nh, S, hs)
        v = self.to_v(context).view(B, context.shape[1], self.num_heads, -1).transpose(1, 2)
        if (not self.upcast or q.dtype == torch.float32) and cpu_attention.applies(q, k, v):
            y = cpu_attention.attention(q, k, v)  # never holds a (T, S) score matrix: no chunks needed
        else:
            if x.device.type == "cpu":  # torch's CPU flash kernel runs ~8% faster on (B, nh, T, hs)-contiguous inputs
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            if self.chunk and T > self.chunk:  # a (chunk, S) score matrix at a time where SDPA materialises (T, S)
                y = torch.cat([self._attend(q[:, :, i:i + self.chunk], k, v) for i in range(0, T, self.chunk)], 2)
            else:
                y = self._attend(q, k, v)  # (B, nh, T, hs)
        return self.to_out[0](y.transpose(1, 2).reshape(B, T, C))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one projection gives the value and its gate."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = Linear(dim, inner_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two half-width products rather than one and chunk(): contiguous outputs, the GELU fused into the gate's
        # product, and the result in the value's buffer (the feed-forward runs 1.3x faster on the CPU)
        if isinstance(self.proj, nn.Linear) and frozen.applies(x, self.proj):  # LoRA / TI training through it
            return frozen.GEGLU.apply(x, self.proj.weight, self.proj.bias)
        if not isinstance(self.proj, nn.Linear) or needs_grad(x, self.proj.weight):  # training (proj may be a LoRA)
            return _GEGLUGate.apply(self.proj(x))
        inner = self.proj.out_features // 2
        w, b = self.proj.weight, self.proj.bias
        gate = linear(x, w[inner:], b[inner:], gelu=True)
        return linear(x, w[:inner], b[:inner]).mul_(gate)


class _GEGLUGate(torch.autograd.Function):
    """[value, gate] -> value * gelu(gate), keeping only the (N, 2 inner) input for backward and recomputing the
    GELU there: autograd's value * F.gelu(gate) also keeps gelu(gate), a third more (44 MB of a training step's
    activations on SD1.5 at 256x256)."""

    @staticmethod
    def forward(ctx, h):
        value, gate = h.chunk(2, dim=-1)
        ctx.save_for_backward(h)
        return value * F.gelu(gate)

    @staticmethod
    def backward(ctx, gy):
        (h,) = ctx.saved_tensors
        value, gate = h.chunk(2, dim=-1)
        return torch.cat([gy * F.gelu(gate), torch.ops.aten.gelu_backward(gy * value, gate)], dim=-1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 is diffusers' dropout: the Identity keeps the output layer at index 2, as in the weights
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, context_dim: int, upcast: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, num_heads, context_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # Self attention
        x = x + self.attn1(self.norm1(x))
        # Cross attention
        x = x + self.attn2(self.norm2(x), context)
        # Feed forward
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """Spatial transformer: feature map -> tokens -> transformer blocks -> feature map, plus the input."""

    def __init__(self, channels: int, num_heads: int, num_layers: int, config: UNetConfig, upcast: bool):
        super().__init__()
        self.linear = config.use_linear_projection
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        proj = (lambda: Linear(channels, channels)) if self.linear else (lambda: Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, num_heads, config.cross_attention_dim, upcast) for _ in range(num_layers))
        self.proj_out = proj()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        # (B, HW, C). Made contiguous once here (a no-op in channels_last): otherwise, from NCHW, every LayerNorm in
        # the blocks copies it and the residual adds keep the strided layout (bfloat16 512x512: 4% of the UNet)
        y = y.permute(0, 2, 3, 1).reshape(B, H * W, C).contiguous()
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = y.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear:
            y = self.proj_out(y)
        return x + y


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (attention=True) or DownBlock2D."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, config: UNetConfig,
                 num_heads: int, transformer_layers: int, attention: bool, downsample: bool, upcast: bool):
        super().__init__()
        n, groups, eps = config.layers_per_block, config.norm_num_groups, config.norm_eps
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
            for i in range(n))
        self.attentions = nn.ModuleList(
            Transformer2DModel(out_channels, num_heads, transformer_layers, config, upcast)
            for _ in range(n)) if attention else None
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if downsample else None

    def forward(self, x, temb, context) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> x and the skip connections it leaves for the up path."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D (attention=True) or UpBlock2D: each resnet joins one skip connection."""

    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, temb_channels: int,
                 config: UNetConfig, num_heads: int, transformer_layers: int, attention: bool, upsample: bool,
                 upcast: bool):
        super().__init__()
        n, groups, eps = config.layers_per_block + 1, config.norm_num_groups, config.norm_eps
        self.resnets = nn.ModuleList(
            ResnetBlock2D((prev_channels if i == 0 else out_channels) + (in_channels if i == n - 1 else out_channels),
                          out_channels, temb_channels, groups, eps)
            for i in range(n))
        self.attentions = nn.ModuleList(
            Transformer2DModel(out_channels, num_heads, transformer_layers, config, upcast)
            for _ in range(n)) if attention else None
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x, skips: list[torch.Tensor], temb, context, size: tuple[int, int] | None) -> torch.Tensor:
        """skips: this block's skip connections, the last one joined first; size: the next block's skip size."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, channels: int, temb_channels: int, config: UNetConfig, upcast: bool):
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, temb_channels, groups, eps) for _ in range(2))
        self.attentions = nn.ModuleList([Transformer2DModel(
            channels, config.num_heads[-1], config.transformer_layers_per_block[-1], config, upcast)])

    def forward(self, x, temb, context) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # type -> has attention
UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig, upcast_attention: bool = False):
        """upcast_attention: compute attention in float32 (config.upcast_attention where the kernel
        would otherwise do its softmax in half precision)."""
        super().__init__()
        _check(config)
        self.config = config
        ch = config.block_out_channels
        temb = ch[0] * 4
        self.conv_in = Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        if config.addition_embed_type == "text_time":  # SDXL: pooled text and size/crop ids join the timestep
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, temb)

        last = len(ch) - 1
        self.down_blocks = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], ch[i], temb, config, config.num_heads[i],
                      config.transformer_layers_per_block[i], DOWN_TYPES[kind], i < last, upcast_attention)
            for i, kind in enumerate(config.down_block_types))
        self.mid_block = MidBlock(ch[-1], temb, config, upcast_attention)
        rch, heads, layers = ch[::-1], config.num_heads[::-1], config.transformer_layers_per_block[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock(rch[min(i + 1, last)], rch[max(i - 1, 0)], rch[i], temb, config, heads[i], layers[i],
                    UP_TYPES[kind], i < last, upcast_attention)
            for i, kind in enumerate(config.up_block_types))
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, ch[0], eps=config.norm_eps)
        self.conv_out = Conv2d(ch[0], config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, C, h, w), t (B,) float32 timesteps, context (B, S, D) in the compute dtype -> model output
        (B, C, h, w). t is a tensor, not a float, so a compiled forward sees one graph for every step."""
        cfg, B = self.config, x.shape[0]
        t_emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(t_emb.to(x.dtype))
        if cfg.addition_embed_type == "text_time":
            if added is None:
                raise ValueError("unet: this UNet (addition_embed_type 'text_time') needs "
                                 "added={'text_embeds': (B, P), 'time_ids': (B, 6)}")
            time_ids = added["time_ids"]  # (B, 6): original size, crop top-left, target size
            time_emb = timestep_embedding(time_ids.flatten(), cfg.addition_time_embed_dim, cfg.flip_sin_to_cos,
                                          cfg.freq_shift).reshape(B, -1)  # (B, 6 * addition_time_embed_dim)
            emb = emb + self.add_embedding(torch.cat([added["text_embeds"], time_emb], dim=-1).to(x.dtype))

        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, emb, context)
            skips += s
        x = self.mid_block(x, emb, context)
        for block in self.up_blocks:
            n = len(block.resnets)
            own, skips = skips[-n:], skips[:-n]
            x = block(x, own, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.conv_out(group_norm_silu(self.conv_norm_out, x))


def _check(config: UNetConfig) -> None:
    for field, kinds, valid in (("down_block_types", config.down_block_types, DOWN_TYPES),
                                ("up_block_types", config.up_block_types, UP_TYPES)):
        for kind in kinds:
            if kind not in valid:
                raise CheckpointError(f"unet {field}: {kind!r} is not supported; use {' or '.join(valid)}")
    if config.addition_embed_type not in (None, "text_time"):
        raise CheckpointError(f"unet addition_embed_type {config.addition_embed_type!r} is not supported; "
                              f"use None or 'text_time'")
