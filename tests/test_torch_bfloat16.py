"""torch bfloat16 on any x86 CPU. Where oneDNN computes bfloat16 (AVX-512, AVX2-VNNI-2, AMX: torch's query) the
oneDNN linear takes it; elsewhere (this machine's AVX2 CPU) it cannot, and torch's portable bfloat16 kernels are
8-177x slower than float32, so the linear and the VAE's upsampling compute in float32 and round back (cpu_bf16.py).
Generating and training then work in bfloat16 everywhere."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import sdkit
from sdkit_torch import cpu_bf16, onednn
from sdkit_torch.vae import Upsample2D

from test_train import write_images

pytestmark = pytest.mark.usefixtures("one_thread")
CPU_BF16 = cpu_bf16.supported()  # this machine's answer, before any test patches the query
BF16_ULP = 2 ** -8  # bfloat16's unit roundoff (half its spacing 2^-7 in [1, 2)): one rounding's relative error


@pytest.fixture
def bf16_support(monkeypatch):
    """set(supported): what torch's query answers from then on; the cached answer is dropped both ways."""
    def set_support(supported: bool):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
        cpu_bf16.supported.cache_clear()
    yield set_support
    cpu_bf16.supported.cache_clear()


def spy(monkeypatch, namespace, name: str) -> list[torch.dtype]:
    """The dtypes of the first argument of each call to namespace.name from now on (the real function still runs)."""
    calls, real = [], getattr(namespace, name)
    monkeypatch.setattr(namespace, name, lambda x, *a, **kw: calls.append(x.dtype) or real(x, *a, **kw))
    return calls


@pytest.mark.skipif(not onednn.ONEDNN, reason="no oneDNN linear on this platform: F.linear everywhere")
@pytest.mark.parametrize("supported", [False, True])
def test_linear_takes_bfloat16_to_onednn_only_where_the_cpu_supports_it(bf16_support, monkeypatch, supported):
    bf16_support(supported)
    calls = spy(monkeypatch, torch.ops.mkldnn, "_linear_pointwise")
    torch.manual_seed(0)
    x, w, b = (t.bfloat16().float() for t in (torch.randn(2, 77, 40), torch.randn(96, 40), torch.randn(96)))
    want = F.gelu(F.linear(x, w, b))  # of bfloat16 values, in float32
    torch.testing.assert_close(onednn.linear(x, w, b, gelu=True), want, atol=1e-5, rtol=1e-5)
    assert calls == [torch.float32]  # float32 keeps the fast path either way

    xh, wh, bh = (t.bfloat16() for t in (x, w, b))
    if supported and not CPU_BF16:  # what the gate spares a CPU without bfloat16 support
        with pytest.raises(RuntimeError, match="could not create a primitive descriptor"):
            onednn.linear(xh, wh, bh, gelu=True)
        return
    y = onednn.linear(xh, wh, bh, gelu=True)
    assert y.dtype == torch.bfloat16 and calls == [torch.float32, torch.bfloat16 if supported else torch.float32]
    # emulated: float32 products and sums, one rounding of the output; native: bfloat16 kernels, ~3 digits
    tolerance = 0.05 * want.abs().max().item() if supported else 1e-5
    torch.testing.assert_close(y.float(), want, atol=tolerance, rtol=0 if supported else BF16_ULP)


def test_emulated_linear_passes_gradients(bf16_support):
    """Textual inversion trains through the frozen text encoder: the float32 detour must keep the graph."""
    bf16_support(False)
    torch.manual_seed(0)
    x, w, b, c = (t.bfloat16().float() for t in (torch.randn(3, 40), torch.randn(24, 40), torch.randn(24),
                                                 torch.randn(3, 24)))
    x32, xh = x.clone().requires_grad_(), x.bfloat16().requires_grad_()
    (F.gelu(F.linear(x32, w, b)) * c).sum().backward()  # the output's gradient: c, exact in bfloat16
    (onednn.linear(xh, w.bfloat16(), b.bfloat16(), gelu=True).float() * c).sum().backward()
    assert xh.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xh.grad.float(), x32.grad, atol=1e-6, rtol=BF16_ULP)  # float32's, rounded once


@pytest.mark.parametrize("supported", [False, True])
def test_vae_upsampling_in_bfloat16_computes_in_float32_only_without_cpu_support(bf16_support, monkeypatch,
                                                                                 supported):
    """The emulated path is float32's upsampling of the same bfloat16 values, rounded once; the native one is
    torch's bfloat16 kernel (slow on this CPU, but runs at this size)."""
    bf16_support(supported)
    torch.manual_seed(0)
    up = Upsample2D(8).eval()
    for p in up.parameters():
        p.data = p.data.bfloat16().float()
    x = torch.randn(1, 8, 6, 5).bfloat16().float()
    with torch.no_grad():
        want = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (1, 8, 12, 10)
        calls = spy(monkeypatch, F, "conv_transpose2d")
        y = up.bfloat16()(x.bfloat16())
    assert y.dtype == torch.bfloat16 and calls == [torch.bfloat16 if supported else torch.float32]
    tolerance = 0.05 * want.abs().max().item() if supported else 1e-5
    torch.testing.assert_close(y.float(), want, atol=tolerance, rtol=0 if supported else BF16_ULP)


def test_bfloat16_generate_is_float32_to_bfloat16_precision(sd1_folder):
    """bfloat16 keeps 8 significant bits: each rounding is off by up to 2^-9 (0.2 %) and a sample goes through
    hundreds of them (UNet layers x steps), so the latents end 1.3-2.2 % (RMS; 3 seeds, 4 and 10 steps) from
    float32's, the images under 1 of 255 on average and at most 7 apart. Bounds: about twice that. Another seed
    moves the latents by ~100 %."""
    pipes = {d: sdkit.load(sd1_folder, backend="torch", device="cpu", dtype=d) for d in ("float32", "bfloat16")}
    options = dict(width=64, height=64, steps=4, seed=1)
    latents = {d: p.generate("a fox", output="latent", **options) for d, p in pipes.items()}
    images = {d: np.asarray(p.generate("a fox", **options)[0], dtype=np.float32) for d, p in pipes.items()}
    full, half = latents["float32"], latents["bfloat16"]

    def rms(a):
        return float(np.sqrt(np.mean(np.square(a))))

    assert 1e-3 < rms(half - full) / rms(full) < 0.05  # above 1e-3: bfloat16 did run, not float32 again
    other = pipes["float32"].generate("a fox", output="latent", **{**options, "seed": 2})
    assert rms(other - full) / rms(full) > 0.5
    pixels = np.abs(images["bfloat16"] - images["float32"])
    assert pixels.mean() < 2 and pixels.max() <= 16


@pytest.mark.parametrize("method, options", [("lora", dict(rank=2)), ("textual_inversion", dict(init_word="cube"))])
def test_bfloat16_training_runs_end_to_end(sd1_folder, tmp_path, method, options):
    """2 steps with dtype bfloat16 (images encoded by the bfloat16 VAE): the output and log are written, and the first
    loss is float32's to bfloat16 precision (the mean of many squared errors, whose roundings mostly cancel: 0.1 %
    apart measured, bound 1 %). A LoRA's up-projections moved off their zero init; a textual-inversion vector
    (float32 masters fed to the bfloat16 text encoder) is float32's to within the steps: Adam moves an element by
    about lr a step, and bfloat16 gradients may flip the sign of small ones."""
    photos = write_images(tmp_path / "photos", ["a photo of a red cube", "a photo of a blue ball"])
    lr = 1e-2
    runs = {d: sdkit.train(sd1_folder, photos, method=method, out=tmp_path / d / "out.safetensors", dtype=d, steps=2,
                           learning_rate=lr, backend="torch", device="cpu", progress=False, **options)
            for d in ("float32", "bfloat16")}
    losses = runs["bfloat16"].losses
    assert len(losses) == 2 and np.isfinite(losses).all()
    log = (tmp_path / "bfloat16" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in log] == losses
    assert losses[0] != runs["float32"].losses[0] and losses[0] == pytest.approx(runs["float32"].losses[0], rel=1e-2)
    out = {d: load_file(tmp_path / d / "out.safetensors") for d in runs}
    if method == "lora":
        up = [t for k, t in out["bfloat16"].items() if k.endswith("lora_up.weight")]
        assert up and all(t.abs().max() > 0 for t in up)
    else:
        torch.testing.assert_close(out["bfloat16"]["emb_params"], out["float32"]["emb_params"], atol=2 * 2 * lr, rtol=0)


@pytest.mark.parametrize("size", [4, 20])  # the small-map GEMM path and the direct convolution
def test_conv_computes_bfloat16_in_float32_where_the_cpu_lacks_it(bf16_support, monkeypatch, size):
    from sdkit_torch.unet import Conv2d
    bf16_support(False)
    calls = spy(monkeypatch, F, "conv2d")
    torch.manual_seed(0)
    conv = Conv2d(8, 6, 3, padding=1).bfloat16()
    x = torch.randn(1, 8, size, size).bfloat16()
    y = conv(x)
    want = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1)  # of bfloat16 values, in float32
    assert y.dtype == torch.bfloat16 and calls[0] == torch.float32
    torch.testing.assert_close(y.float(), want, atol=1e-6, rtol=BF16_ULP)  # rounded once
