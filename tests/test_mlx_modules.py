"""The MLX backend's CLIP, UNet and VAE against transformers / diffusers on identical random weights (float32
on the CPU), the fused-attention padding path, loading (layouts, dtypes, errors) and device/dtype resolution."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdkit.config import TextEncoderConfig, UNetConfig, VAEConfig
from sdkit.errors import BackendError, CheckpointError
from sdkit.interfaces import TensorRef

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'sdkit-diffusion[mlx]')")

from mlx.utils import tree_flatten  # noqa: E402
from sdkit_mlx import MLXBackend, UNet  # noqa: E402
from sdkit_mlx.loading import load  # noqa: E402
from sdkit_mlx.unet import FUSED_HEAD_SIZES, UNet2DConditionModel as MLXUNet, attention  # noqa: E402

ATOL = 1e-4
BOS, EOS = 49406, 49407


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Randomise every constant parameter (norm scales and shifts, zero-initialised output layers):
    at their default values they would hide a wrong mapping."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() == 1 or p.std() == 0:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def save_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype = torch.float32) -> dict[str, TensorRef]:
    """Save as safetensors; refer to each tensor by its canonical name (no 'text_model.' prefix)."""
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    stored = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    return {k.removeprefix("text_model."): TensorRef(path, k, tuple(v.shape), stored) for k, v in state.items()}


def token_ids(pad: int, lengths=(5, 12)) -> np.ndarray:
    """Rows laid out as CLIP's tokenizer does: BOS, words, EOS, padding up to 77."""
    rng = np.random.default_rng(0)
    ids = np.full((len(lengths), 77), pad, dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, 1:n + 1], ids[row, n + 1] = BOS, rng.integers(0, BOS, n), EOS
    return ids


def assert_close(ours: mx.array, theirs: torch.Tensor, atol: float = ATOL):
    ours = np.array(ours)
    assert ours.dtype == np.float32 and ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def cpu():
    return MLXBackend("cpu", "float32")


# --- Text encoder ---------------------------------------------------------------------------------------

TEXT = {  # SD1 (CLIP ViT-L, quick_gelu, EOS padding) and SD2 (OpenCLIP, gelu, "!" padding) in miniature
    "quick_gelu": dict(hidden_act="quick_gelu", pad=EOS),
    "gelu": dict(hidden_act="gelu", pad=0),
}


def clip_config(act: str, layers: int = 2, **kw) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act=act, **kw)


@pytest.mark.parametrize("act", TEXT)
def test_text_encoder_matches_transformers(act, cpu, tmp_path):
    torch.manual_seed(0)
    cfg = clip_config(TEXT[act]["hidden_act"])
    theirs = perturb(CLIPTextModel(cfg))
    ours = cpu.text_encoder(TextEncoderConfig.from_diffusers(cfg.to_dict()), save_weights(theirs, tmp_path / "te.st"))
    ids = token_ids(TEXT[act]["pad"])
    context, pooled = ours(ids)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(ids)).last_hidden_state
    assert pooled is None
    assert_close(context, expected)


def test_text_encoder_pooled_projection(cpu, tmp_path):
    torch.manual_seed(0)
    cfg = clip_config("gelu", projection_dim=32)
    theirs = perturb(CLIPTextModelWithProjection(cfg))
    config = TextEncoderConfig.from_diffusers(cfg.to_dict(), has_projection=True)
    ours = cpu.text_encoder(config, save_weights(theirs, tmp_path / "te2.st"))
    ids = token_ids(pad=0)
    context, pooled = ours(ids)
    with torch.no_grad():
        out = theirs(torch.from_numpy(ids))
    assert_close(context, out.last_hidden_state)
    assert_close(pooled, out.text_embeds)


@pytest.mark.parametrize("projection", [True, False])
@pytest.mark.parametrize("layer,final_norm", [(-2, False), (-1, False), (-3, True), (1, False)])
def test_text_encoder_hidden_layer(projection, layer, final_norm, cpu, tmp_path):
    """SDXL's context is hidden_states[-2] without the final LayerNorm; pooled stays the last layer's."""
    torch.manual_seed(0)
    cfg = clip_config("gelu", layers=3, projection_dim=32)
    theirs = perturb((CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg))
    config = TextEncoderConfig.from_diffusers(cfg.to_dict(), has_projection=projection)
    ours = cpu.text_encoder(config, save_weights(theirs, tmp_path / "te.st"))
    ids = token_ids(pad=0)
    context, pooled = ours(ids, layer=layer, final_norm=final_norm)
    with torch.no_grad():
        out = theirs(torch.from_numpy(ids), output_hidden_states=True)
        expected = out.hidden_states[layer if layer < 0 else layer + 1]  # [0] is the embeddings' output
        if final_norm:
            expected = (theirs.text_model if projection else theirs).final_layer_norm(expected)
    assert_close(context, expected)
    if projection:
        assert_close(pooled, out.text_embeds)
    else:
        assert pooled is None


def test_text_encoder_layer_out_of_range(cpu, tmp_path):
    cfg = clip_config("gelu")
    ours = cpu.text_encoder(TextEncoderConfig.from_diffusers(cfg.to_dict()),
                            save_weights(CLIPTextModel(cfg), tmp_path / "te.st"))
    with pytest.raises(ValueError, match=r"layer -3 does not exist; use -1 \.\. -2 \(this encoder has 2\)"):
        ours(token_ids(pad=0), layer=-3)
    with pytest.raises(ValueError, match=r"layer 2 does not exist"):
        ours(token_ids(pad=0), layer=2)


def test_text_encoder_fused_qkv_through_transforms(cpu, tmp_path):
    """OpenCLIP files store q, k, v as one in_proj tensor: each TensorRef's transform takes its third."""
    torch.manual_seed(0)
    cfg = clip_config("gelu")
    theirs = perturb(CLIPTextModel(cfg))
    state = {k.removeprefix("text_model."): v for k, v in theirs.state_dict().items()}
    fused, weights = {}, {}
    for name, v in state.items():
        if ".self_attn.q_proj." in name:
            kind = name.rsplit(".", 1)[1]  # weight | bias
            key = name.replace(f"q_proj.{kind}", f"in_proj_{kind}")
            fused[key] = torch.cat([state[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")])
            n = v.shape[0]
            for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
                weights[name.replace("q_proj", p)] = TensorRef(tmp_path / "fused.st", key, tuple(v.shape), "F32",
                                                               transform=lambda x, i=i, n=n: x[i * n:(i + 1) * n])
        elif not any(f".self_attn.{p}." in name for p in ("k_proj", "v_proj")):
            fused[name] = v
            weights[name] = TensorRef(tmp_path / "fused.st", name, tuple(v.shape), "F32")
    save_file({k: v.contiguous() for k, v in fused.items()}, str(tmp_path / "fused.st"))
    ids = token_ids(pad=0)
    context, _ = cpu.text_encoder(TextEncoderConfig.from_diffusers(cfg.to_dict()), weights)(ids)
    with torch.no_grad():
        assert_close(context, theirs(torch.from_numpy(ids)).last_hidden_state)


def test_low_memory_text_encoder_reads_weights_per_call(tmp_path):
    torch.manual_seed(0)
    cfg = clip_config("quick_gelu")
    weights = save_weights(perturb(CLIPTextModel(cfg)), tmp_path / "te.st")
    config = TextEncoderConfig.from_diffusers(cfg.to_dict())
    ids = token_ids(EOS)
    resident = MLXBackend("cpu", "float32", low_memory=False).text_encoder(config, weights)
    transient = MLXBackend("cpu", "float32", low_memory=True).text_encoder(config, weights)
    assert resident.model is not None and transient.model is None
    np.testing.assert_array_equal(np.array(transient(ids)[0]), np.array(resident(ids)[0]))
    assert transient.model is None
    del weights["final_layer_norm.bias"]  # checked when the backend hands the encoder out, not at its first call
    with pytest.raises(CheckpointError, match="text encoder weights .* 1 missing"):
        MLXBackend("cpu", "float32", low_memory=True).text_encoder(config, weights)


# --- Attention ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hs", [8, 40, 64, 160])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention_padding_and_upcast(hs, dtype):
    """Padded to a fused kernel's head size (Metal's rule, run here on the CPU) or upcast: the same result
    as plain softmax(q k^T / sqrt(hs)) v in float64."""
    rng = np.random.default_rng(hs)
    q, k, v = (rng.standard_normal((2, 3, n, hs)).astype(np.float32) for n in (10, 7, 7))
    scores = q.astype(np.float64) @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (p / p.sum(-1, keepdims=True)) @ v
    tol = 1e-5 if dtype == "float32" else 5e-3
    for fused_sizes, upcast in (((), False), ((), True), (FUSED_HEAD_SIZES, False)):
        qm, km, vm = (mx.array(a).astype(getattr(mx, dtype)) for a in (q, k, v))
        with mx.stream(mx.cpu):
            y = attention(qm, km, vm, fused_sizes, upcast)
        assert y.shape == (2, 3, 10, hs) and y.dtype == getattr(mx, dtype)
        np.testing.assert_allclose(np.array(y.astype(mx.float32)), expected, atol=tol, rtol=0)


# --- UNet -----------------------------------------------------------------------------------------------

UNETS = {
    # SD1-like: 8 heads of 4 and 8 (padded to 64 where a fused kernel is assumed), 1x1-conv projections
    "sd1": dict(block_out_channels=(32, 64), attention_head_dim=8, cross_attention_dim=64),
    # SD1's real head size, 40 = 160 / 4: the case the padding exists for
    "sd1_hs40": dict(block_out_channels=(160, 160), attention_head_dim=4, cross_attention_dim=64),
    # SD2-like: heads of 64, linear projections, upcast attention
    "sd2": dict(block_out_channels=(64, 128), attention_head_dim=[1, 2], cross_attention_dim=128,
                use_linear_projection=True, upcast_attention=True),
    "sdxl": dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=[1, 1],
                 transformer_layers_per_block=[1, 2], cross_attention_dim=64, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8),
}


def make_unet(kind: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    base = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return perturb(UNet2DConditionModel(**{**base, **UNETS[kind]}))


def unet_case(kind, tmp_path_factory):
    theirs = make_unet(kind)
    weights = save_weights(theirs, tmp_path_factory.mktemp("unet") / "unet.st")
    return kind, theirs, UNetConfig.from_diffusers(dict(theirs.config)), weights


@pytest.fixture(scope="module", params=list(UNETS))
def every_unet(request, tmp_path_factory):
    return unet_case(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def unets(request, tmp_path_factory):
    return unet_case(request.param, tmp_path_factory)


def unet_inputs(theirs, size, k=2, b=1):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, *size, generator=g)
    context = torch.randn(k * b, 77, theirs.config.cross_attention_dim, generator=g)
    added = None
    if theirs.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(k * b, 32, generator=g),
                 "time_ids": torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 48.0]] * (k * b))}
    return x, context, added


def to_mx(x, context, added):
    return mx.array(x.numpy()), mx.array(context.numpy()), added and {n: mx.array(a.numpy()) for n, a in added.items()}


@pytest.fixture(scope="module")
def metal_layout_unet(every_unet) -> UNet:
    """The UNet as the backend builds it for Metal (heads padded to the fused sizes, mx.compile), on the CPU.
    One instance for every test of a kind: a new shape or timestep must not reuse a stale compiled graph."""
    _, _, config, weights = every_unet
    with mx.stream(mx.cpu):
        model = load(lambda: MLXUNet(config, FUSED_HEAD_SIZES), weights, "unet", mx.float32)
    return UNet(model, mx.cpu, compiled=True)


@pytest.mark.parametrize("size, t", [((8, 8), 999.0), ((15, 12), 500.5), ((8, 8), 500.5)])
def test_unet_matches_diffusers(every_unet, metal_layout_unet, size, t, cpu):
    """As the backend builds it for the CPU, and as it builds it for Metal."""
    kind, theirs, config, weights = every_unet
    x, context, added = unet_inputs(theirs, size)
    with torch.no_grad():
        expected = theirs(x.repeat(2, 1, 1, 1), t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    xm, cm, am = to_mx(x, context, added)
    assert_close(cpu.unet(config, weights)(xm, t, cm, am), expected)
    assert_close(metal_layout_unet(xm, t, cm, am), expected)


def test_unet_batch_of_two_images(unets, cpu):
    """B = 2 with guidance: x is repeated as [x0, x1, x0, x1] against [uncond0, uncond1, cond0, cond1]."""
    kind, theirs, config, weights = unets
    x, context, added = unet_inputs(theirs, (8, 8), k=2, b=2)
    with torch.no_grad():
        expected = theirs(x.repeat(2, 1, 1, 1), 250.0, encoder_hidden_states=context, added_cond_kwargs=added).sample
    xm, cm, am = to_mx(x, context, added)
    assert_close(cpu.unet(config, weights)(xm, 250.0, cm, am), expected)


def test_unet_float16_on_cpu(unets):
    kind, theirs, config, weights = unets
    xm, cm, am = to_mx(*unet_inputs(theirs, (15, 12)))
    full = np.array(MLXBackend("cpu", "float32").unet(config, weights)(xm, 500.5, cm, am))
    half = MLXBackend("cpu", "float16").unet(config, weights)
    assert half.model.conv_in.weight.dtype == mx.float16
    out = half(xm, 500.5, cm, am)
    assert out.dtype == mx.float32 and np.isfinite(np.array(out)).all()
    assert np.abs(np.array(out) - full).max() < 0.02 * np.abs(full).max()  # float16 keeps ~3 significant digits


def test_unet_loads_float16_and_bfloat16_files(tmp_path, cpu):
    """bfloat16 files (which numpy cannot hold) load like float16 ones, cast once to the compute dtype."""
    theirs = make_unet("sd1")
    config = UNetConfig.from_diffusers(dict(theirs.config))
    x, context, _ = to_mx(*unet_inputs(theirs, (8, 8)))
    for dtype in (torch.float16, torch.bfloat16):
        ours = cpu.unet(config, save_weights(theirs, tmp_path / f"{dtype}.st", dtype))
        assert ours.model.conv_in.weight.dtype == mx.float32
        stored = theirs.conv_in.weight.detach().to(dtype).float().permute(0, 2, 3, 1)  # (O, kH, kW, I)
        np.testing.assert_array_equal(np.array(ours.model.conv_in.weight), stored.numpy())
        assert np.isfinite(np.array(ours(x, 500.0, context))).all()


def test_loading_holds_one_copy_of_the_weights(unets):
    """Each stored tensor is freed once converted: the peak is the model plus at most one tensor."""
    kind, theirs, config, weights = unets
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    ours = MLXBackend("cpu", "float32").unet(config, weights)
    sizes = [p.nbytes for _, p in tree_flatten(ours.model.parameters())]
    assert mx.get_peak_memory() - before <= sum(sizes) + max(sizes)


def test_conv_weights_are_contiguous_mlx_layout(unets, cpu):
    kind, theirs, config, weights = unets
    ours = cpu.unet(config, weights).model
    w = ours.down_blocks[0].resnets[0].conv1.weight
    expected = theirs.down_blocks[0].resnets[0].conv1.weight.detach().permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.array(w), expected.numpy())


# --- VAE ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    torch.manual_seed(0)
    theirs = perturb(AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                                   down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=64))
    weights = save_weights(theirs, tmp_path_factory.mktemp("vae") / "vae.st")
    return theirs, VAEConfig.from_diffusers(dict(theirs.config)), weights


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_vae_encode_matches_diffusers(vae, cpu):
    theirs, config, weights = vae
    images = np.random.default_rng(2).uniform(-1, 1, (2, 3, 64, 48)).astype(np.float32)
    latents = cpu.vae(config, weights).encode(images)
    with torch.no_grad():
        expected = theirs.encode(torch.from_numpy(images)).latent_dist.mean * config.scaling_factor
    assert latents.shape == (2, 4, 8, 6)
    assert_close(latents, expected)


def test_vae_decode_matches_diffusers(vae, cpu):
    theirs, config, weights = vae
    latents = np.random.default_rng(3).standard_normal((2, 4, 8, 6)).astype(np.float32)
    ours = cpu.vae(config, weights)
    with torch.no_grad():
        expected = theirs.decode(torch.from_numpy(latents) / config.scaling_factor).sample
    with mx.stream(mx.cpu):
        raw = ours.model.decode(mx.array(latents).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert_close(raw, expected)
    images = ours.decode(mx.array(latents))
    assert images.dtype == np.uint8 and images.shape == (2, 64, 48, 3)
    # the same float32 formula: only values within float noise of a rounding boundary may differ, by one
    diff = np.abs(images.astype(int) - to_uint8(expected).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_vae_float16_runs_in_half_precision_first(vae):
    """force_upcast is set in SD1/SD2 and SDXL configs alike: only a non-finite result moves the VAE to float32."""
    theirs, config, weights = vae
    assert config.force_upcast
    half = MLXBackend("cpu", "float16").vae(config, weights)
    assert half.model.quant_conv.weight.dtype == mx.float16
    half.decode(mx.array(np.zeros((1, 4, 8, 8), np.float32)))
    assert half.dtype == mx.float16


def test_vae_float16_overflow_retries_in_float32(vae, tmp_path):
    """Activations past float16's 65504 give inf; the decode is redone in float32, matching a float32 VAE."""
    theirs, config, _ = vae
    loud = {k: v * 1e6 if k == "decoder.conv_in.weight" else v for k, v in theirs.state_dict().items()}
    save_file(loud, str(tmp_path / "loud.st"))
    weights = {k: TensorRef(tmp_path / "loud.st", k, tuple(v.shape), "F32") for k, v in loud.items()}
    config = VAEConfig.from_diffusers({**dict(theirs.config), "force_upcast": False})
    half = MLXBackend("cpu", "float16").vae(config, weights)
    assert half.dtype == mx.float16
    latents = mx.array(np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32))
    with mx.stream(mx.cpu):
        z = latents.transpose(0, 2, 3, 1).astype(mx.float16)
        assert not mx.isfinite(half.model.decode(z)).all().item()  # the test's premise
    images = half.decode(latents)
    assert half.dtype == mx.float32
    np.testing.assert_array_equal(images, MLXBackend("cpu", "float32").vae(config, weights).decode(latents))


# --- Loading errors, devices, dtypes ----------------------------------------------------------------------

def test_mismatched_weights_give_one_error_listing_all(vae, cpu):
    _, config, weights = vae
    weights = dict(weights)
    del weights["decoder.conv_out.bias"]
    weights["decoder.extra.weight"] = weights["quant_conv.bias"]
    ref = weights["encoder.conv_in.weight"]
    weights["encoder.conv_in.weight"] = TensorRef(ref.file, ref.key, (16, *ref.shape[1:]), ref.dtype,
                                                  transform=lambda x: x[:16])
    with pytest.raises(CheckpointError) as e:
        cpu.vae(config, weights)
    message = str(e.value)
    assert "\n" not in message and message.startswith("vae weights in ")
    for part in ("1 missing (decoder.conv_out.bias)", "1 unexpected (decoder.extra.weight)",
                 "1 mis-shaped", "encoder.conv_in.weight (16, 3, 3, 3) vs (32, 3, 3, 3)"):
        assert part in message


def test_misshaped_1x1_conv_is_reported_in_the_file_layout(vae, cpu):
    _, config, weights = vae
    ref = weights["quant_conv.weight"]  # (8, 8, 1, 1) in the file, a Linear (8, 8) here
    weights = {**weights, "quant_conv.weight": TensorRef(ref.file, ref.key, (8, 6, 1, 1), ref.dtype)}
    with pytest.raises(CheckpointError, match=r"quant_conv.weight \(8, 6, 1, 1\) vs \(8, 8, 1, 1\)"):
        cpu.vae(config, weights)


def test_many_missing_weights_are_counted(unets, cpu):
    _, _, config, weights = unets
    kept = {k: v for k, v in weights.items() if not k.startswith("up_blocks.")}
    with pytest.raises(CheckpointError, match=r"^unet weights in .*: \d+ missing \([^)]*, \.\.\.\)$"):
        cpu.unet(config, kept)


@pytest.mark.skipif(mx.is_available(mx.gpu), reason="this machine has an MLX GPU")
def test_gpu_unavailable():
    with pytest.raises(BackendError, match="device 'gpu' is not available to the mlx backend here; use one of: cpu"):
        MLXBackend("gpu")


@pytest.mark.parametrize("device", ["cuda", "mps", "cpu:0", "metal"])
def test_bad_device(device):
    with pytest.raises(BackendError, match=f"device '{device}' .* use one of: .*cpu"):
        MLXBackend(device)


@pytest.mark.parametrize("dtype", ["fp16", "float64", "half"])
def test_bad_dtype(dtype):
    with pytest.raises(BackendError, match=f"dtype '{dtype}' .*float32, float16, bfloat16"):
        MLXBackend("cpu", dtype)


def test_defaults():
    b = MLXBackend()
    expected = ("gpu", "float16") if mx.is_available(mx.gpu) else ("cpu", "float32")
    assert (b.name, b.device, b.dtype) == ("mlx", *expected)
    assert MLXBackend.is_available()
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    a = b.asarray(x)
    assert a.dtype == mx.float32
    np.testing.assert_array_equal(b.numpy(a * 2), x * 2)
    assert b.numpy(a.astype(mx.bfloat16)).dtype == np.float32
