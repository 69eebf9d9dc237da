"""The torch backend's CLIP, UNet and VAE against transformers / diffusers on identical random weights (float32),
plus loading errors and device/dtype resolution."""

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
from sdkit_torch import TorchBackend

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


def save_weights(model: torch.nn.Module, path: Path) -> dict[str, TensorRef]:
    """Save as safetensors; refer to each tensor by its canonical name (no 'text_model.' prefix)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return {k.removeprefix("text_model."): TensorRef(path, k, tuple(v.shape), "F32") for k, v in state.items()}


def token_ids(pad: int, lengths=(5, 12)) -> np.ndarray:
    """Rows laid out as CLIP's tokenizer does: BOS, words, EOS, padding up to 77."""
    rng = np.random.default_rng(0)
    ids = np.full((len(lengths), 77), pad, dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, 1:n + 1], ids[row, n + 1] = BOS, rng.integers(0, BOS, n), EOS
    return ids


@pytest.fixture(scope="module")
def cpu():
    return TorchBackend("cpu", "float32")


# --- Text encoder ---------------------------------------------------------------------------------------

TEXT = {  # SD1 (CLIP ViT-L, quick_gelu, EOS padding) and SD2 (OpenCLIP, gelu, "!" padding) in miniature
    "quick_gelu": dict(hidden_act="quick_gelu", pad=EOS),
    "gelu": dict(hidden_act="gelu", pad=0),
}


@pytest.mark.parametrize("act", TEXT)
def test_text_encoder_matches_transformers(act, cpu, tmp_path):
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act=TEXT[act]["hidden_act"])
    theirs = perturb(CLIPTextModel(cfg))
    ours = cpu.text_encoder(TextEncoderConfig.from_diffusers(cfg.to_dict()), save_weights(theirs, tmp_path / "te.st"))
    ids = token_ids(TEXT[act]["pad"])
    context, pooled = ours(ids)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(ids)).last_hidden_state
    assert context.dtype == torch.float32 and context.shape == (2, 77, 128) and pooled is None
    torch.testing.assert_close(context, expected, atol=ATOL, rtol=0)


def test_text_encoder_pooled_projection(cpu, tmp_path):
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, hidden_act="gelu", projection_dim=32)
    theirs = perturb(CLIPTextModelWithProjection(cfg))
    config = TextEncoderConfig.from_diffusers(cfg.to_dict(), has_projection=True)
    ours = cpu.text_encoder(config, save_weights(theirs, tmp_path / "te2.st"))
    ids = token_ids(pad=0)
    context, pooled = ours(ids)
    with torch.no_grad():
        out = theirs(torch.from_numpy(ids))
    torch.testing.assert_close(context, out.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, out.text_embeds, atol=ATOL, rtol=0)


@pytest.mark.parametrize("projection", [True, False])
@pytest.mark.parametrize("layer,final_norm", [(-2, False), (-1, False), (-3, True), (1, False)])
def test_text_encoder_hidden_layer(projection, layer, final_norm, cpu, tmp_path):
    """SDXL's context is hidden_states[-2] without the final LayerNorm; pooled stays the last layer's."""
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=2, hidden_act="gelu", projection_dim=32)
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
    torch.testing.assert_close(context, expected, atol=ATOL, rtol=0)
    if projection:
        torch.testing.assert_close(pooled, out.text_embeds, atol=ATOL, rtol=0)
    else:
        assert pooled is None


def test_text_encoder_layer_out_of_range(cpu, tmp_path):
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1)
    ours = cpu.text_encoder(TextEncoderConfig.from_diffusers(cfg.to_dict()),
                            save_weights(CLIPTextModel(cfg), tmp_path / "te.st"))
    with pytest.raises(ValueError, match=r"layer -3 does not exist; use -1 \.\. -2"):
        ours(token_ids(pad=0), layer=-3)


# --- UNet -----------------------------------------------------------------------------------------------

UNETS = {
    "sd1": dict(block_out_channels=(32, 64), attention_head_dim=8, cross_attention_dim=64),
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


@pytest.fixture(scope="module", params=list(UNETS))
def unets(request, tmp_path_factory):
    theirs = make_unet(request.param)
    weights = save_weights(theirs, tmp_path_factory.mktemp("unet") / "unet.st")
    return request.param, theirs, UNetConfig.from_diffusers(dict(theirs.config)), weights


def unet_inputs(theirs, size, k=2, b=1):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, *size, generator=g)
    context = torch.randn(k * b, 77, theirs.config.cross_attention_dim, generator=g)
    added = None
    if theirs.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(k * b, 32, generator=g),
                 "time_ids": torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 48.0]] * (k * b))}
    return x, context, added


@pytest.mark.parametrize("size", [(8, 8), (15, 12)])
@pytest.mark.parametrize("t", [999.0, 500.5])
def test_unet_matches_diffusers(unets, size, t, cpu):
    kind, theirs, config, weights = unets
    ours = cpu.unet(config, weights)
    x, context, added = unet_inputs(theirs, size)
    out = ours(x, t, context, added)
    with torch.no_grad():
        expected = theirs(x.repeat(2, 1, 1, 1), t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    assert out.dtype == torch.float32 and out.shape == (2, 4, *size)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_unet_bfloat16_on_cpu(unets):
    kind, theirs, config, weights = unets
    x, context, added = unet_inputs(theirs, (15, 12))
    full = TorchBackend("cpu", "float32").unet(config, weights)(x, 500.5, context, added)
    half = TorchBackend("cpu", "bfloat16").unet(config, weights)
    assert half.model.conv_in.weight.dtype == torch.bfloat16
    out = half(x, 500.5, context, added)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - full).abs().max() < 0.05 * full.abs().max()  # bfloat16 keeps ~3 significant digits


def test_unet_compiled_matches_eager_without_recompiling_per_step(tmp_path):
    """compile=True: torch.compile'd UNet, one graph for every timestep (t is a tensor, not a constant).
    The SDXL-like UNet only: its added conditioning makes it the superset, and each compilation takes ~40 s."""
    theirs = make_unet("sdxl")
    config, weights = UNetConfig.from_diffusers(dict(theirs.config)), save_weights(theirs, tmp_path / "unet.st")
    x, context, added = unet_inputs(theirs, (8, 8))
    eager = TorchBackend("cpu", "float32").unet(config, weights)
    compiled = TorchBackend("cpu", "float32", compile=True).unet(config, weights)
    compiled(x, 999.0, context, added)  # compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in (500.5, 1.0):
            torch.testing.assert_close(compiled(x, t, context, added), eager(x, t, context, added), atol=ATOL, rtol=0)


@pytest.mark.parametrize("shape", [(2, 64, 8, 8), (1, 32, 4, 6), (3, 16, 9, 9), (2, 16, 16, 16)])
def test_conv2d_gemm_path_equals_direct_convolution(shape):
    """Small CPU 3x3 convolutions run as one GEMM over unfolded patches: same result as the direct kernel."""
    from sdkit_torch.unet import GEMM_CONV_MAX_PIXELS, Conv2d
    B, C, H, W = shape
    torch.manual_seed(0)
    conv = Conv2d(C, 2 * C, 3, padding=1).eval()
    x = torch.randn(shape)
    assert (B * H * W <= GEMM_CONV_MAX_PIXELS) == (shape != (2, 16, 16, 16))  # both paths are exercised
    with torch.no_grad():
        out = conv(x)
        torch.testing.assert_close(out, torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1),
                                   atol=1e-5, rtol=1e-5)
    assert out.shape == (B, 2 * C, H, W)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
@pytest.mark.parametrize("gelu", [False, True])
def test_onednn_linear_equals_f_linear(dtype, atol, gelu):
    """The CPU linear through oneDNN (and its fused GELU) computes F.linear (then F.gelu), on 3-D and
    non-contiguous inputs and on weight rows sliced out of a larger matrix (GEGLU's halves)."""
    from sdkit_torch import onednn
    torch.manual_seed(0)
    w, b = torch.randn(96, 40, dtype=dtype), torch.randn(96, dtype=dtype)
    for x in (torch.randn(2, 77, 40, dtype=dtype), torch.randn(2, 40, 77, dtype=dtype).transpose(1, 2)):
        for weight, bias in ((w, b), (w[48:], b[48:]), (w, None)):
            want = torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
            got = onednn.linear(x, weight, bias, gelu=gelu)
            assert got.dtype == dtype and got.shape == want.shape
            torch.testing.assert_close(got.float(), torch.nn.functional.gelu(want) if gelu else want,
                                       atol=atol * want.abs().max().item(), rtol=0)


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
    torch.testing.assert_close(latents, expected, atol=ATOL, rtol=0)


def test_vae_decode_matches_diffusers(vae, cpu):
    theirs, config, weights = vae
    latents = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 4, 8, 6)).astype(np.float32))
    ours = cpu.vae(config, weights)
    with torch.no_grad():
        expected = theirs.decode(latents / config.scaling_factor).sample
        torch.testing.assert_close(ours.model.decode(latents), expected, atol=ATOL, rtol=0)
    images = ours.decode(latents)
    assert images.dtype == np.uint8 and images.shape == (2, 64, 48, 3)
    # the same float32 formula: only values within float noise of a rounding boundary may differ, by one
    diff = np.abs(images.astype(int) - to_uint8(expected).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_vae_float16_runs_in_half_precision_first(vae):
    """force_upcast is set in SD1/SD2 and SDXL configs alike: only a non-finite result moves the VAE to float32."""
    theirs, config, weights = vae
    assert config.force_upcast
    half = TorchBackend("cpu", "float16").vae(config, weights)
    assert half.model.quant_conv.weight.dtype == torch.float16
    half.decode(torch.from_numpy(np.zeros((1, 4, 8, 8), np.float32)))
    assert half.dtype == torch.float16


def test_vae_float16_overflow_retries_in_float32(vae, tmp_path):
    """Activations past float16's 65504 give inf; the decode is redone in float32, matching a float32 VAE."""
    theirs, config, _ = vae
    loud = {k: v * 1e6 if k == "decoder.conv_in.weight" else v for k, v in theirs.state_dict().items()}
    save_file(loud, str(tmp_path / "loud.st"))
    weights = {k: TensorRef(tmp_path / "loud.st", k, tuple(v.shape), "F32") for k, v in loud.items()}
    config = VAEConfig.from_diffusers({**dict(theirs.config), "force_upcast": False})
    half = TorchBackend("cpu", "float16").vae(config, weights)
    assert half.dtype == torch.float16
    latents = torch.from_numpy(np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32))
    with torch.no_grad():
        assert not torch.isfinite(half.model.decode(latents.half())).all()  # the test's premise
    images = half.decode(latents)
    assert half.dtype == torch.float32
    np.testing.assert_array_equal(images, TorchBackend("cpu", "float32").vae(config, weights).decode(latents))


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


def test_many_missing_weights_are_counted(unets, cpu):
    _, _, config, weights = unets
    kept = {k: v for k, v in weights.items() if not k.startswith("up_blocks.")}
    with pytest.raises(CheckpointError, match=r"^unet weights in .*: \d+ missing \([^)]*, \.\.\.\)$"):
        cpu.unet(config, kept)


@pytest.mark.parametrize("device", ["gpu", "cuda:7", "tpu", "mps:3"])
def test_bad_device(device):
    with pytest.raises(BackendError, match=f"device '{device}' .* use one of: cpu"):
        TorchBackend(device)


@pytest.mark.parametrize("dtype", ["fp16", "float64", "half"])
def test_bad_dtype(dtype):
    with pytest.raises(BackendError, match=f"dtype '{dtype}' .*float32, float16, bfloat16"):
        TorchBackend("cpu", dtype)


def test_defaults():
    b = TorchBackend()
    expected = ("cuda:0", "float16") if torch.cuda.is_available() else \
        ("mps", "float16") if torch.backends.mps.is_available() else ("cpu", "float32")
    assert (b.name, b.device, b.dtype) == ("torch", *expected)
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = b.asarray(x)
    assert t.dtype == torch.float32 and str(t.device) == str(b.torch_device)
    np.testing.assert_array_equal(b.numpy(t * 2), x * 2)
