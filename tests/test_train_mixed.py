"""Mixed-precision fine-tuning on MLX (Micikevicius et al. 2018): dtype bfloat16 / float16 keeps float32 master
weights (what AdamW updates, what is written and resumed) and runs the forward and backward in that dtype; float16
adds dynamic loss scaling. Tiny models, a few steps."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import sdkit
from sdkit import backends
from sdkit.checkpoint import open_checkpoint
from sdkit.train.plan import Plan
from sdkit.weights import read_tensors

from test_train import random_batch, run_past_an_overflow, trained, write_images

pytestmark = pytest.mark.usefixtures("one_thread")
mx = pytest.importorskip("mlx.core")


def finetune_trainer(folder, backend, dtype, learning_rate=1e-3, **options):
    engine = backends.get(backend)(device="cpu", dtype=dtype)
    return engine.trainer(open_checkpoint(folder), Plan(learning_rate=learning_rate, finetune=True, **options))


def run(trainer, seeds, lr=1e-3):
    """One optimizer step per batch seed -> the losses."""
    losses = []
    for seed in seeds:
        losses.append(trainer.accumulate(random_batch(seed), 1.0))
        trainer.step(lr)
    return np.array(losses)


def test_mlx_bfloat16_finetune_writes_float32_weights_and_tracks_float32(sd1_folder, tmp_path):
    """sdkit.train(dtype="bfloat16") fine-tuning UNet and text encoder: the single file it writes is float32 and
    trained, and its losses are near the float32 run's (that the backward runs in bfloat16: the gradient test below).
    bfloat16 keeps 8 significant bits (relative rounding up to 2^-9 per op); over this net and 4 steps at lr 1e-3
    the losses drift 0.5 % from float32's here, so 1e-2 allows twice that, under the 2-10 % the loss moves per step."""
    photos = write_images(tmp_path / "photos", ["a photo of a red cube", "a photo of a blue ball"])
    options = dict(method="finetune", text_encoder=True, steps=4, learning_rate=1e-3, backend="mlx", device="cpu",
                   seed=3, progress=False)
    runs = {d: sdkit.train(sd1_folder, photos, out=tmp_path / f"{d}.safetensors", dtype=d, **options)
            for d in ("float32", "bfloat16")}
    half, full = (np.array(runs[d].losses) for d in ("bfloat16", "float32"))
    np.testing.assert_allclose(half, full, rtol=1e-2)

    written = load_file(str(tmp_path / "bfloat16.safetensors"))
    assert {v.dtype for v in written.values()} == {np.dtype(np.float32)}
    source, tuned = open_checkpoint(sd1_folder), open_checkpoint(tmp_path / "bfloat16.safetensors")
    for component in ("unet", "text_encoder"):
        a, b = (dict(read_tensors(c.weights[component], "numpy")) for c in (source, tuned))
        assert max(np.abs(b[k] - a[k]).max() for k in a) > 1e-4, component


def test_mlx_bfloat16_finetune_follows_torch_autocast(sd1_folder):
    """The same batches through MLX's bfloat16 fine-tune and torch's (autocast): the losses agree as well as each
    agrees with float32 (0.2 % here; torch's autocast keeps norms and softmax in float32, MLX runs them in
    bfloat16, so the two round differently: 1e-2 as above)."""
    mlx_losses = run(finetune_trainer(sd1_folder, "mlx", "bfloat16"), range(4))
    torch_losses = run(finetune_trainer(sd1_folder, "torch", "bfloat16"), range(4))
    np.testing.assert_allclose(mlx_losses, torch_losses, rtol=1e-2)


def test_mlx_update_below_bfloat16_resolution_moves_the_float32_masters(sd1_folder):
    """The point of master weights: one AdamW step at lr 1e-6 moves each weight by about lr (Adam's first step is
    lr * sign(g)), under half the bfloat16 spacing of any weight of size >= 1e-3 (2^-17 = 7.6e-6 there): a bfloat16
    weight would stay as it is; its float32 master moves."""
    trainer = finetune_trainer(sd1_folder, "mlx", "bfloat16", weight_decay=0.0)
    before = trained(trainer)
    assert {v.dtype for v in before.values()} == {np.dtype(np.float32)}
    run(trainer, [0], lr=1e-6)
    after = trained(trainer)
    start = np.concatenate([before[k].ravel() for k in before])
    delta = np.concatenate([(after[k] - before[k]).ravel() for k in before])
    big = np.abs(start) >= 1e-3
    assert big.mean() > 0.9 and np.abs(delta).max() < 1.1e-6
    assert np.mean(delta[big] != 0) > 0.99
    bf16 = lambda a: np.array(mx.array(a).astype(mx.bfloat16).astype(mx.float32))
    assert np.array_equal(bf16(bf16(start[big]) + delta[big]), bf16(start[big]))  # the update a bf16 weight gets


def test_mlx_float16_finetune_skips_overflowing_steps(sd1_folder):
    """float16: the scaled gradients of a batch whose loss is 1e10 overflow float16 (not float32: the forward and
    backward must be float16 for this); the step is skipped, weights untouched, the scale halves, and the finite
    steps around it are those of a run without that batch."""
    scaled = finetune_trainer(sd1_folder, "mlx", "float16", loss_scaling=True)
    plain = finetune_trainer(sd1_folder, "mlx", "float16", loss_scaling=True)
    want, got = run_past_an_overflow(scaled, plain, 1e-3)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, err_msg=k)


def test_mlx_bfloat16_gradients_also_with_checkpointing(sd1_folder):
    """The backward runs in bfloat16: every float32 gradient is a bfloat16 value (the cast's gradient brought
    back), with gradient checkpointing too, which recomputes the blocks from the bfloat16 weights: the same loss,
    and gradients that differ from the plain run's only by the order their bfloat16 cotangents are summed in: 0.3 %
    of their norm here, a tenth of how far bfloat16 puts them from float32's (3.4 %); the bound is a quarter."""
    from mlx.utils import tree_flatten
    grads = {}
    for dtype, checkpointed in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
        trainer = finetune_trainer(sd1_folder, "mlx", dtype, gradient_checkpointing=checkpointed)
        grads[dtype, checkpointed] = trainer.accumulate(random_batch(0), 1.0), dict(tree_flatten(trainer.sum))
    (loss, plain), (light_loss, light), (_, full) = (grads[k] for k in (
        ("bfloat16", False), ("bfloat16", True), ("float32", False)))
    assert light_loss == loss and light.keys() == plain.keys()
    for g in (*plain.values(), *light.values()):
        assert g.dtype == mx.float32 and mx.array_equal(g, g.astype(mx.bfloat16).astype(mx.float32))
    distance = lambda a, b: np.sqrt(sum(float(mx.sum(mx.square(a[k] - b[k]))) for k in b)
                                    / sum(float(mx.sum(mx.square(b[k]))) for k in b))
    assert distance(light, plain) < 0.25 * distance(plain, full)
