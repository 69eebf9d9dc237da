"""torch bfloat16 on any x86 CPU: the oneDNN linear takes bfloat16 only where torch says oneDNN computes it (AVX-512,
AVX2-VNNI-2, AMX); elsewhere plain torch ops run it. Generating and training then work in bfloat16 everywhere."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from safetensors.torch import load_file

import sdkit
from sdkit_torch import onednn

from test_train import write_images

pytestmark = pytest.mark.usefixtures("one_thread")
CPU_BF16 = onednn.ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # this machine's answer, unpatched


@pytest.fixture
def bf16_support(monkeypatch):
    """set(supported): what torch's query answers from then on; the gate's cached answer is dropped both ways."""
    def set_support(supported: bool):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)
        onednn.dtypes.cache_clear()
    yield set_support
    onednn.dtypes.cache_clear()


@pytest.fixture
def onednn_calls(monkeypatch):
    """The dtypes of the inputs that reached oneDNN's linear (the real op still computes them)."""
    calls, real = [], torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, *a: calls.append(x.dtype) or real(x, *a))
    return calls


@pytest.mark.skipif(not onednn.ONEDNN, reason="no oneDNN linear on this platform: F.linear everywhere")
@pytest.mark.parametrize("supported", [False, True])
def test_bfloat16_reaches_onednn_only_where_the_cpu_supports_it(bf16_support, onednn_calls, supported):
    bf16_support(supported)
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 77, 40), torch.randn(96, 40), torch.randn(96)
    torch.testing.assert_close(onednn.linear(x, w, b, gelu=True), F.gelu(F.linear(x, w, b)), atol=1e-5, rtol=1e-5)
    assert onednn_calls == [torch.float32]  # float32 keeps the fast path either way

    xh, wh, bh = (t.bfloat16() for t in (x, w, b))
    if supported and not CPU_BF16:  # what the gate spares a CPU without bfloat16 support
        with pytest.raises(RuntimeError, match="could not create a primitive descriptor"):
            onednn.linear(xh, wh, bh, gelu=True)
        return
    y = onednn.linear(xh, wh, bh, gelu=True)
    assert y.dtype == torch.bfloat16 and onednn_calls == [torch.float32] + [torch.bfloat16] * supported
    want = F.gelu(F.linear(xh.float(), wh.float(), bh.float()))
    torch.testing.assert_close(y.float(), want, atol=0.05 * want.abs().max().item(), rtol=0)  # inputs exact, ~3 digits


def test_bfloat16_generate_is_float32_to_bfloat16_precision(sd1_folder):
    """bfloat16 keeps 8 significant bits: each rounding is off by up to 2^-9 (0.2 %) and a sample goes through
    hundreds of them (UNet layers x steps), so the latents end ~1.3-2.3 % (RMS, 3 seeds) from float32's, the images
    ~1 of 255 on average and at most 8. Bounds: about twice that. Another seed moves the latents by ~100 %."""
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


def test_bfloat16_lora_trains_end_to_end(sd1_folder, tmp_path):
    """2 steps of a LoRA with dtype bfloat16 (images encoded by the bfloat16 VAE): the file and log are written, the
    up-projections moved off their zero init, and the first loss is float32's to bfloat16 precision (the mean of
    many squared errors, whose roundings mostly cancel: 0.1 % apart measured, bound 1 %)."""
    photos = write_images(tmp_path / "photos", ["a photo of a red cube", "a photo of a blue ball"])
    options = dict(method="lora", steps=2, rank=2, learning_rate=1e-2, backend="torch", device="cpu", progress=False)
    runs = {d: sdkit.train(sd1_folder, photos, out=tmp_path / d / "l.safetensors", dtype=d, **options)
            for d in ("float32", "bfloat16")}
    losses = runs["bfloat16"].losses
    assert len(losses) == 2 and np.isfinite(losses).all()
    log = (tmp_path / "bfloat16" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in log] == losses
    assert losses[0] != runs["float32"].losses[0] and losses[0] == pytest.approx(runs["float32"].losses[0], rel=1e-2)
    up = [t for k, t in load_file(tmp_path / "bfloat16" / "l.safetensors").items() if k.endswith("lora_up.weight")]
    assert up and all(t.abs().max() > 0 for t in up)
