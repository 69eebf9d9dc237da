"""Training through layers whose weights do not train (LoRA, textual inversion): their backward needs only the
weights, yet autograd's generic convolution keeps its input (and the GEMM path its unfolded columns) for a weight
gradient nobody asks for, and GroupNorm -> SiLU keeps both the norm's and the SiLU's outputs. These Functions keep
only what the input's gradient needs: per UNet resnet, the two norm inputs instead of six maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autograd import needs_grad


def applies(x: torch.Tensor, layer: nn.Module) -> bool:
    """x takes part in a backward pass through `layer`, whose weights are frozen and of x's dtype."""
    return needs_grad(x) and not needs_grad(layer.weight, layer.bias) and layer.weight.dtype == x.dtype


class FrozenConv2d(torch.autograd.Function):
    """sdkit's Conv2d whose backward is the input's gradient only, from the weights and x's shape. Where the forward
    ran as a GEMM over unfolded patches (small maps), so does the backward: oneDNN's backward-data kernel would
    reorder the weights on every call (59 MB per 1280-channel 3x3 conv, freshly mapped each time)."""

    @staticmethod
    def forward(ctx, x, conv):
        ctx.conv, ctx.shape, ctx.gemm = conv, x.shape, conv.gemm(x)
        y = conv._forward(x)
        # the GEMM path returns a view of its (C_out, B*HW) product; autograd forbids in-place ops (the resnet's
        # residual add) on a view made inside a Function, so that one (at most 1280 x 256) is copied
        return y.clone(memory_format=torch.contiguous_format) if y._is_view() else y

    @staticmethod
    def backward(ctx, gy):
        c, (B, C, H, W) = ctx.conv, ctx.shape
        if ctx.gemm:
            gy = gy.transpose(0, 1).reshape(c.out_channels, B * H * W)  # (C_out, B*HW)
            cols = (c.weight.reshape(c.out_channels, -1).t() @ gy).view(C * 9, B, H * W).transpose(0, 1)  # (B, 9C, HW)
            return F.fold(cols, (H, W), 3, padding=1), None
        x = gy.new_empty(1).expand(ctx.shape)  # only its shape is read, as in torch.nn.grad.conv2d_input
        gx, _, _ = torch.ops.aten.convolution_backward(gy, x, c.weight, None, c.stride, c.padding, c.dilation,
                                                       False, [0, 0], c.groups, (True, False, False))
        return gx, None


class GroupNormSiLU(torch.autograd.Function):
    """silu(group_norm(x)) keeping x and the group statistics; backward recomputes the norm (one cheap pass)."""

    @staticmethod
    def forward(ctx, x, norm):
        x = x.contiguous()  # the small-map GEMM convolution returns a transposed view
        N, C = x.shape[:2]
        y, mean, rstd = torch.native_group_norm(x, norm.weight, norm.bias, N, C, x[0, 0].numel(), norm.num_groups,
                                                norm.eps)
        ctx.save_for_backward(x, mean, rstd)
        ctx.norm = norm
        return F.silu(y, inplace=True)

    @staticmethod
    def backward(ctx, gy):
        x, mean, rstd = ctx.saved_tensors
        n, (N, C), HW = ctx.norm, x.shape[:2], x[0, 0].numel()
        y = torch.native_group_norm(x, n.weight, n.bias, N, C, HW, n.num_groups, n.eps)[0]
        gy = torch.ops.aten.silu_backward(gy, y)
        gx, _, _ = torch.ops.aten.native_group_norm_backward(gy, x, mean, rstd, n.weight, N, C, HW, n.num_groups,
                                                    (True, False, False))
        return gx, None


class GEGLU(torch.autograd.Function):
    """value * gelu(gate) with [value, gate] = x W^T + b for a frozen W: keeps x (N, C), not the (N, 8C) projection,
    and recomputes the projection in backward (one more GEMM, a few percent of the step, for 77 MB of an SD1.5
    LoRA step's 237 MB of saved activations at 256x256)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x)
        ctx.weight, ctx.bias = weight, bias
        value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
        return value * F.gelu(gate)

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        value, gate = F.linear(x, ctx.weight, ctx.bias).chunk(2, dim=-1)
        gh = torch.cat([gy * F.gelu(gate), torch.ops.aten.gelu_backward(gy * value, gate)], dim=-1)  # (..., 2 inner)
        return gh @ ctx.weight, None, None


def group_norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    if applies(x, norm):
        return GroupNormSiLU.apply(x, norm)
    # in place on the fresh norm output: the VAE's 512x512 maps are 64-128 MB each (decode 5% faster)
    return F.silu(norm(x), inplace=True)
