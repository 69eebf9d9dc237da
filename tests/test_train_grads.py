"""Gradients through sdkit's modules, as training takes them, against diffusers' / transformers' reference modules
on the same weights: the UNet (SD1, SDXL), the CLIP text encoder and the VAE encoder. Autograd on both sides;
every parameter's gradient must agree. The inputs are big enough that the inference fast paths (cpu_attention's
4096-score threshold, oneDNN linear, in-place GEGLU) would run if they did not give way under autograd."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from sdkit.checkpoint import open_checkpoint
from sdkit_torch.clip import CLIPTextModel as TorchCLIP
from sdkit_torch.loading import load
from sdkit_torch.unet import UNet2DConditionModel as TorchUNet
from sdkit_torch.vae import AutoencoderKL as TorchVAE

RTOL = 1e-4  # on each parameter's gradient, relative to its norm
# Gradients that are zero in exact arithmetic (a conv bias right before a GroupNorm of one channel per group, which
# removes it) are float rounding on both sides: below this fraction of the largest gradient, both must be as small.
ZERO = 1e-6


def assert_grads_close(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]):
    assert ours.keys() == theirs.keys()
    scale = max(g.norm() for g in theirs.values())
    for name, g in theirs.items():
        assert ours[name] is not None, f"{name}: no gradient"
        mine = ours[name].reshape(g.shape)
        if g.norm() < ZERO * scale:
            assert mine.norm() < ZERO * scale, f"{name}: gradient {mine.norm():.2e} where the reference's is ~0"
            continue
        err = (mine - g).norm() / g.norm()
        assert err < RTOL, f"{name}: gradient off by {err:.2e} (relative)"


def grads(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {name.removeprefix(prefix): p.grad for name, p in module.named_parameters()}


def unet_inputs(config, size=(16, 16), seed=0):
    """x (2, 4, h, w), t (2,), context (2, 77, D), added (SDXL) and a fixed projection of the output (the loss)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, *size, generator=g)
    t = torch.tensor([999.0, 17.0])
    context = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    added = None
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(2, pooled, generator=g),
                 "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * 2)}
    return x, t, context, added, torch.randn(2, 4, *size, generator=g)


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def unet_pair(request):
    folder = request.getfixturevalue(f"{request.param}_folder")
    ckpt = open_checkpoint(folder)
    ours = load(lambda: TorchUNet(ckpt.unet), ckpt.weights["unet"], "unet", torch.device("cpu"), torch.float32)
    theirs = UNet2DConditionModel.from_pretrained(folder / "unet").float()
    return ckpt, ours.requires_grad_(True).train(), theirs.requires_grad_(True).train()


def test_unet_gradients_match_diffusers(unet_pair):
    ckpt, ours, theirs = unet_pair
    x, t, context, added, w = unet_inputs(ckpt.unet)
    x1, x2 = (x.clone().requires_grad_(True) for _ in range(2))  # gradients reach the inputs too
    c1, c2 = (context.clone().requires_grad_(True) for _ in range(2))
    (ours(x1, t, c1, added) * w).sum().backward()
    (theirs(x2, t, encoder_hidden_states=c2, added_cond_kwargs=added).sample * w).sum().backward()
    assert_grads_close(grads(ours), grads(theirs))
    assert_grads_close({"x": x1.grad, "context": c1.grad}, {"x": x2.grad, "context": c2.grad})


@pytest.mark.parametrize("family, name", [("sd1", "text_encoder"), ("sdxl", "text_encoder_2")])
def test_text_encoder_gradients_match_transformers(family, name, request):
    folder = request.getfixturevalue(f"{family}_folder")
    ckpt = open_checkpoint(folder)
    config = ckpt.text_encoders[ckpt.text_encoder_names.index(name)]
    ours = load(lambda: TorchCLIP(config), ckpt.weights[name], "text encoder", torch.device("cpu"), torch.float32)
    ref = CLIPTextModelWithProjection if config.projection_dim else CLIPTextModel
    theirs = ref.from_pretrained(folder / name).float()
    ours.requires_grad_(True), theirs.requires_grad_(True)
    ids = torch.tensor([[49406, 320, 1125, 539, 2368, 49407] + [49407] * 71])  # "a photo of cat", EOS padded
    g = torch.Generator().manual_seed(0)
    context, pooled = ours(ids)
    out = theirs(ids, output_hidden_states=True)
    wc = torch.randn(context.shape, generator=g)
    loss = (context * wc).sum()
    ref_loss = (out.last_hidden_state * wc).sum()
    if pooled is not None:
        wp = torch.randn(pooled.shape, generator=g)
        loss, ref_loss = loss + (pooled * wp).sum(), ref_loss + (out.text_embeds * wp).sum()
    loss.backward()
    ref_loss.backward()
    assert_grads_close(grads(ours), {k.removeprefix("text_model."): v for k, v in grads(theirs).items()})


def test_vae_encoder_gradients_match_diffusers(sd1_folder):
    ckpt = open_checkpoint(sd1_folder)
    ours = load(lambda: TorchVAE(ckpt.vae), ckpt.weights["vae"], "vae", torch.device("cpu"), torch.float32)
    theirs = AutoencoderKL.from_pretrained(sd1_folder / "vae").float()
    ours.requires_grad_(True), theirs.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    w = torch.randn(1, 4, 8, 8, generator=g)
    (ours.encode(x) * w).sum().backward()
    (theirs.encode(x).latent_dist.mean * theirs.config.scaling_factor * w).sum().backward()
    assert_grads_close({k: v for k, v in grads(ours).items() if not k.startswith(("decoder.", "post_quant"))},
                       {k: v for k, v in grads(theirs).items() if not k.startswith(("decoder.", "post_quant"))})


def test_vae_decoder_upsampling_learns(sd1_folder):
    """The decoder's upsampling kernel is made from conv.weight: under autograd it is made again each call (the
    gradient reaches the weight, and a changed weight is used), never the cached inference one."""
    ckpt = open_checkpoint(sd1_folder)
    ours = load(lambda: TorchVAE(ckpt.vae), ckpt.weights["vae"], "vae", torch.device("cpu"), torch.float32)
    theirs = AutoencoderKL.from_pretrained(sd1_folder / "vae").float()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours.decode(z)  # caches the inference kernel
    ours.requires_grad_(True), theirs.requires_grad_(True)
    ours.decode(z).square().mean().backward()
    theirs.decode(z / theirs.config.scaling_factor).sample.square().mean().backward()
    decoder = lambda g: {k: v for k, v in g.items() if k.startswith(("decoder.", "post_quant"))}
    assert_grads_close(decoder(grads(ours)), decoder(grads(theirs)))


# --- MLX: mx.value_and_grad against torch autograd on the same weights -------------------------------------

def mlx_grads_as_torch(grads_tree, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLX gradients (NHWC conv layouts, 1x1 convs as linears) -> torch tensors shaped as the torch parameters
    (those torch gave a gradient)."""
    from mlx.utils import tree_flatten
    out = {}
    for name, g in tree_flatten(grads_tree):
        if like[name] is None:
            continue
        g = torch.from_numpy(np.array(g))
        out[name] = g.permute(0, 3, 1, 2) if g.ndim == 4 else g.reshape(like[name].shape)
    return out


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_mlx_unet_gradients_match_torch(family, request):
    mx = pytest.importorskip("mlx.core")
    import mlx.nn as mnn
    from sdkit_mlx.loading import load as mlx_load
    from sdkit_mlx.unet import UNet2DConditionModel as MLXUNet

    ckpt = open_checkpoint(request.getfixturevalue(f"{family}_folder"))
    theirs = load(lambda: TorchUNet(ckpt.unet), ckpt.weights["unet"], "unet", torch.device("cpu"), torch.float32)
    x, t, context, added, w = unet_inputs(ckpt.unet, size=(8, 8))
    theirs.requires_grad_(True)
    (theirs(x, t, context, added) * w).sum().backward()
    with mx.stream(mx.cpu):
        ours = mlx_load(lambda: MLXUNet(ckpt.unet), ckpt.weights["unet"], "unet", mx.float32).train()
        nhwc = lambda a: mx.array(a.permute(0, 2, 3, 1).numpy())
        am = added and {k: mx.array(v.numpy()) for k, v in added.items()}
        loss = lambda model: (model(nhwc(x), mx.array(t.numpy()), mx.array(context.numpy()), am) * nhwc(w)).sum()
        _, g = mnn.value_and_grad(ours, loss)(ours)
        mx.eval(g)
    assert_grads_close(mlx_grads_as_torch(g, grads(theirs)), grads(theirs))


def test_mlx_text_encoder_and_vae_encoder_gradients_match_torch(sdxl_folder):
    mx = pytest.importorskip("mlx.core")
    import mlx.nn as mnn
    from sdkit_mlx.clip import CLIPTextModel as MLXCLIP
    from sdkit_mlx.loading import load as mlx_load
    from sdkit_mlx.vae import AutoencoderKL as MLXVAE

    ckpt = open_checkpoint(sdxl_folder)
    config, weights = ckpt.text_encoders[1], ckpt.weights["text_encoder_2"]  # with the pooled projection
    ids = np.array([[49406, 320, 1125, 539, 2368, 49407] + [0] * 71])
    g = torch.Generator().manual_seed(0)
    theirs = load(lambda: TorchCLIP(config), weights, "text encoder", torch.device("cpu"), torch.float32)
    theirs.requires_grad_(True)
    context, pooled = theirs(torch.from_numpy(ids))
    wc, wp = torch.randn(context.shape, generator=g), torch.randn(pooled.shape, generator=g)
    ((context * wc).sum() + (pooled * wp).sum()).backward()

    vae_theirs = load(lambda: TorchVAE(ckpt.vae), ckpt.weights["vae"], "vae", torch.device("cpu"), torch.float32)
    vae_theirs.requires_grad_(True)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    wz = torch.randn(1, 4, 8, 8, generator=g)
    (vae_theirs.encode(image) * wz).sum().backward()

    with mx.stream(mx.cpu):
        ours = mlx_load(lambda: MLXCLIP(config), weights, "text encoder", mx.float32).train()

        def text_loss(model):
            c, p = model(mx.array(ids, dtype=mx.int32))
            return (c * mx.array(wc.numpy())).sum() + (p * mx.array(wp.numpy())).sum()
        _, g_text = mnn.value_and_grad(ours, text_loss)(ours)
        vae = mlx_load(lambda: MLXVAE(ckpt.vae), ckpt.weights["vae"], "vae", mx.float32).train()
        vae_loss = lambda m: (m.encode(mx.array(image.permute(0, 2, 3, 1).numpy()))
                              * mx.array(wz.permute(0, 2, 3, 1).numpy())).sum()
        _, g_vae = mnn.value_and_grad(vae, vae_loss)(vae)
        mx.eval(g_text, g_vae)
    assert_grads_close(mlx_grads_as_torch(g_text, grads(theirs)), grads(theirs))
    encoder = lambda gs: {k: v for k, v in gs.items() if not k.startswith(("decoder.", "post_quant"))}
    assert_grads_close(encoder(mlx_grads_as_torch(g_vae, grads(vae_theirs))), encoder(grads(vae_theirs)))


def test_lora_linear_fast_path_matches_autograd():
    """The training LoRA's fused Linear path (sdkit_torch.train._LoRALinear): float64 finite differences for
    x, bias, down and up, and the float32 module against base(x) + up(down(x)) * scale under plain autograd, with
    and without a bias, with and without an input that wants gradients (the UNet's first layers and the context)."""
    from sdkit_torch.train import LoRA, _LoRALinear
    g = torch.Generator().manual_seed(0)
    r = lambda *shape, dtype=torch.float64: torch.randn(*shape, generator=g, dtype=dtype)
    x, w, b, down, up = r(2, 3, 8), r(6, 8), r(6), r(4, 8), r(6, 4)
    for t in (x, b, down, up):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(_LoRALinear.apply, (x, w, b, down, up, 0.7))
    assert torch.autograd.gradcheck(_LoRALinear.apply, (x, w, None, down, up, 1.0))

    for bias, x_grad in ((True, True), (False, True), (True, False)):
        base = torch.nn.Linear(8, 6, bias=bias).requires_grad_(False)
        lora = LoRA(base, r(4, 8, dtype=torch.float32).numpy(), r(6, 4, dtype=torch.float32).numpy(), alpha=2.0)
        lora.down.weight.requires_grad_(True)
        lora.up.weight.requires_grad_(True)
        x = r(2, 5, 8, dtype=torch.float32).requires_grad_(x_grad)
        wy = r(2, 5, 6, dtype=torch.float32)
        (lora(x) * wy).sum().backward()
        ours = {"down": lora.down.weight.grad, "up": lora.up.weight.grad, "x": x.grad}
        lora.down.weight.grad = lora.up.weight.grad = x.grad = None
        ((base(x) + lora.up(lora.down(x)) * lora.scale) * wy).sum().backward()
        theirs = {"down": lora.down.weight.grad, "up": lora.up.weight.grad, "x": x.grad}
        if not x_grad:
            assert ours.pop("x") is None and theirs.pop("x") is None
        assert_grads_close(ours, theirs)


def test_geglu_gate_matches_autograd():
    """The training GEGLU's gate (sdkit_torch.unet._GEGLUGate, which recomputes the GELU in backward): float64
    finite differences."""
    from sdkit_torch.unet import _GEGLUGate
    h = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GEGLUGate.apply, (h,))


def test_unet_input_gradients_through_frozen_weights(unet_pair):
    """LoRA and textual inversion backpropagate through frozen weights: sdkit's frozen-layer Functions
    (sdkit_torch.frozen: convolutions, GroupNorm -> SiLU) must give the inputs' gradients of plain autograd."""
    ckpt, ours, theirs = unet_pair
    x, t, context, added, w = unet_inputs(ckpt.unet, seed=1)
    x1, x2 = (x.clone().requires_grad_(True) for _ in range(2))
    c1, c2 = (context.clone().requires_grad_(True) for _ in range(2))
    ours.requires_grad_(False)
    try:
        (ours(x1, t, c1, added) * w).sum().backward()
    finally:
        ours.requires_grad_(True)
    theirs.requires_grad_(False)
    try:
        (theirs(x2, t, encoder_hidden_states=c2, added_cond_kwargs=added).sample * w).sum().backward()
    finally:
        theirs.requires_grad_(True)
    assert_grads_close({"x": x1.grad, "context": c1.grad}, {"x": x2.grad, "context": c2.grad})


@pytest.mark.parametrize("batch, kernel, stride, padding, size", [
    (2, 3, 1, 1, 9), (2, 3, 1, 1, 3), (1, 3, 1, 1, 3), (2, 3, 2, 1, 9), (2, 3, 2, 0, 8), (2, 1, 1, 0, 5)])
def test_frozen_conv_matches_finite_differences(batch, kernel, stride, padding, size):
    """sdkit_torch.frozen.FrozenConv2d through sdkit's Conv2d (direct and small-map GEMM forward), float64, its
    output then changed in place as the resnets' residual add does."""
    from sdkit_torch import frozen
    from sdkit_torch.unet import Conv2d
    conv = Conv2d(3, 5, kernel, stride=stride, padding=padding, dtype=torch.float64).requires_grad_(False)
    x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    assert frozen.applies(x, conv)
    assert torch.autograd.gradcheck(lambda x: conv(x).mul_(2.0), (x,))


def test_group_norm_silu_matches_finite_differences():
    from sdkit_torch.frozen import GroupNormSiLU, group_norm_silu
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.GroupNorm(2, 6, eps=1e-5, dtype=torch.float64).requires_grad_(False)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, generator=g, dtype=torch.float64))
        norm.bias.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: group_norm_silu(norm, x), (x,))
    assert group_norm_silu(norm, x).grad_fn.name() == GroupNormSiLU.__name__ + "Backward"


def test_frozen_geglu_matches_finite_differences():
    """sdkit_torch.frozen.GEGLU (the projection recomputed in backward), float64, with and without a bias; and
    the UNet's GEGLU takes it when its projection is frozen."""
    from sdkit_torch import frozen
    from sdkit_torch.unet import GEGLU
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w, b = torch.randn(10, 4, dtype=torch.float64, generator=g), torch.randn(10, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(frozen.GEGLU.apply, (x, w, b))
    assert torch.autograd.gradcheck(frozen.GEGLU.apply, (x, w, None))
    layer = GEGLU(4, 5).double().requires_grad_(False)
    assert layer(x).grad_fn.name() == "GEGLUBackward"


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_lora_in_a_bfloat16_model_computes_in_bfloat16_from_float32_masters(kind):
    """As diffusers under autocast: the low-rank product in the model's dtype (the fused Function for a Linear),
    float32 gradients for the float32 down/up weights, within bfloat16 rounding of the float32 computation."""
    from sdkit_torch.train import LoRA
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)
    if kind == "linear":
        base, down, up, x = torch.nn.Linear(16, 12), r(4, 16), r(12, 4), r(2, 5, 16)
    else:
        base, down, up, x = torch.nn.Conv2d(6, 8, 3, padding=1), r(4, 6, 3, 3), r(8, 4, 1, 1), r(2, 6, 5, 5)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        lora = LoRA(base.to(dtype).requires_grad_(False), down.numpy(), up.numpy(), alpha=2.0)
        lora.down.weight.requires_grad_(True)
        lora.up.weight.requires_grad_(True)
        y = lora(x.to(dtype))
        assert y.dtype == dtype
        if kind == "linear" and dtype == torch.bfloat16:
            assert y.grad_fn.name() == "_LoRALinearBackward"
        y.float().square().sum().backward()
        assert lora.down.weight.grad.dtype == lora.up.weight.grad.dtype == torch.float32
        runs[dtype] = y.float(), lora.down.weight.grad, lora.up.weight.grad
    for ours, want in zip(runs[torch.bfloat16], runs[torch.float32]):
        assert ((ours - want).norm() / want.norm()) < 2e-2  # a few bfloat16 roundings (2^-8 each) along the way
