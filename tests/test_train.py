"""sdkit.train: data layout, schedules and loss weighting (numpy), outputs read by diffusers (kohya LoRA with
load_lora_weights, A1111 embeddings with load_textual_inversion), torch vs MLX loss curves, and overfitting."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

import sdkit
from sdkit.checkpoint import open_checkpoint
from sdkit.config import SchedulerConfig
from sdkit.samplers.schedules import alphas_cumprod
from sdkit.train import data, formats, loss, schedule

from fixtures import diffusers_pipeline

SD15 = SchedulerConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # the fixtures' schedule
pytestmark = pytest.mark.usefixtures("one_thread")


def write_images(folder, captions, size=(64, 64), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, caption in enumerate(captions):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
        if caption is not None:
            (folder / f"{i}.txt").write_text(caption)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("photos"), ["a photo of a red cube", "a photo of a blue ball"])


# --- data, schedule, loss: numpy ------------------------------------------------------------------------------

def test_scan_reads_captions_and_kohya_repeat_folders(tmp_path):
    write_images(tmp_path, ["top caption"])
    write_images(tmp_path / "10_sks dog", [None, "own caption"])
    write_images(tmp_path / "notes", ["ignored"])
    got = sorted((e.path.relative_to(tmp_path).as_posix(), e.caption, e.repeats) for e in data.scan(tmp_path))
    assert got == [("0.png", "top caption", 1), ("10_sks dog/0.png", "sks dog", 10),
                   ("10_sks dog/1.png", "own caption", 10)]


def test_scan_names_an_uncaptioned_image(tmp_path):
    write_images(tmp_path, [None])
    with pytest.raises(ValueError, match=r"0\.png: no caption; add 0\.txt"):
        data.scan(tmp_path)
    assert data.scan(tmp_path, caption="a photo of sks dog")[0].caption == "a photo of sks dog"


def test_buckets_and_nearest():
    sizes = data.buckets(512)
    assert sizes[0] == (512, 512)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and max(w / h, h / w) <= 2 for w, h in sizes)
    assert (640, 384) in sizes and (384, 640) in sizes
    assert data.nearest_bucket(1920, 1080, sizes) == (640, 384)
    assert data.nearest_bucket(100, 100, sizes) == (512, 512)


def test_epoch_batches_keep_one_bucket_and_repeats():
    rng = np.random.default_rng(0)
    buckets = [(64, 64), (64, 64), (128, 64)]
    batches = data.epoch_batches(buckets, [2, 1, 3], 2, rng)
    assert sorted(i for b in batches for i in b) == [0, 0, 1, 2, 2, 2]
    assert all(len({buckets[i] for i in b}) == 1 for b in batches)


def test_learning_rate_warmup_and_cosine():
    assert schedule.learning_rate(0, 100, 1.0, warmup=4) == pytest.approx(0.2)
    assert schedule.learning_rate(4, 100, 1.0, warmup=4, kind="cosine") == pytest.approx(1.0)
    assert schedule.learning_rate(52, 100, 1.0, warmup=4, kind="cosine") == pytest.approx(0.5)
    assert schedule.learning_rate(99, 100, 1.0, kind="constant") == 1.0
    with pytest.raises(ValueError, match="lr_schedule 'linear' is not known"):
        schedule.learning_rate(0, 10, 1.0, kind="linear")


def test_targets_and_min_snr_match_diffusers_training_script():
    """eps / v targets as DDPMScheduler.add_noise / get_velocity; min-SNR weights as diffusers'
    compute_snr-based weighting in train_text_to_image.py."""
    from diffusers import DDPMScheduler
    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ac = alphas_cumprod(SD15)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((3, 4, 8, 8), dtype=np.float32), rng.standard_normal((3, 4, 8, 8), dtype=np.float32)
    t = np.array([0, 500, 999])
    tt = torch.from_numpy(t)
    for prediction in ("epsilon", "v"):
        noisy, target = loss.noisy_and_target(x0, eps, t, ac, prediction)
        np.testing.assert_allclose(noisy, ddpm.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), tt), atol=1e-5)
        want = torch.from_numpy(eps) if prediction == "epsilon" else ddpm.get_velocity(
            torch.from_numpy(x0), torch.from_numpy(eps), tt)
        np.testing.assert_allclose(target, want, atol=1e-5)
    snr = ac[t] / (1 - ac[t])
    np.testing.assert_allclose(loss.weights(t, ac, "epsilon", 5.0), np.minimum(snr, 5) / snr, rtol=1e-6)
    np.testing.assert_allclose(loss.weights(t, ac, "v", 5.0), np.minimum(snr, 5) / (snr + 1), rtol=1e-6)
    assert (loss.weights(t, ac, "epsilon", None) == 1).all()


# --- outputs read by diffusers ----------------------------------------------------------------------------------

def unet_probe(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=context).sample


def merged_state(folder, component, lora_file):
    """component's diffusers weights with the LoRA's deltas (formats.lora_delta) added by hand."""
    lora = load_file(str(lora_file))
    state = {}
    path = next((folder / component).glob("*.safetensors"))
    base = load_file(str(path))
    names = {t.module: k for t, k in formats.kohya_names(open_checkpoint(folder), [  # SDXL: LDM's paths
        formats.Target(component, key.removeprefix("text_model.").removesuffix(".weight"), w.shape)
        for key, w in base.items() if key.endswith(".weight")]).items()}
    changed = 0
    for key, w in base.items():
        k = names.get(key.removeprefix("text_model.").removesuffix(".weight"))
        if key.endswith(".weight") and f"{k}.lora_down.weight" in lora:
            w = w + formats.lora_delta(lora[f"{k}.lora_down.weight"], lora[f"{k}.lora_up.weight"],
                                       float(lora[f"{k}.alpha"])).reshape(w.shape)
            changed += 1
        state[key] = w
    return state, changed


def test_lora_reads_in_diffusers_as_the_deltas_it_holds(sd1_folder, photos, tmp_path):
    """A kohya LoRA of UNet and text encoder: diffusers' load_lora_weights gives the same UNet and text-encoder
    outputs as adding up @ down * alpha / rank to the weights by hand, and they differ from the base model's."""
    out = tmp_path / "my_lora.safetensors"
    record = sdkit.train(sd1_folder, photos, method="lora", out=out, steps=4, rank=4, alpha=2, text_encoder=True,
                         learning_rate=1e-2, backend="torch", progress=False)
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_module"] == "networks.lora"
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines] == [1, 2, 3, 4] and [d["loss"] for d in lines] == record.losses

    pipe = diffusers_pipeline(sd1_folder)
    base = unet_probe(pipe.unet)
    ids = pipe.tokenizer(["a photo of a red cube"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        base_text = pipe.text_encoder(ids).last_hidden_state
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    with torch.no_grad():
        theirs, theirs_text = unet_probe(pipe.unet), pipe.text_encoder(ids).last_hidden_state

    unet_state, n_unet = merged_state(sd1_folder, "unet", out)
    assert n_unet == sum(1 for k in load_file(str(out)) if k.startswith("lora_unet_") and k.endswith(".alpha"))
    fresh = diffusers_pipeline(sd1_folder)
    fresh.unet.load_state_dict({k: torch.from_numpy(v) for k, v in unet_state.items()})
    text_state, _ = merged_state(sd1_folder, "text_encoder", out)
    own = fresh.text_encoder.state_dict()  # transformers 5 names them without the file's 'text_model.'
    text_state = {k if k in own else k.removeprefix("text_model."): torch.from_numpy(v) for k, v in text_state.items()}
    fresh.text_encoder.load_state_dict({k: v for k, v in text_state.items() if k in own}, strict=True)
    with torch.no_grad():
        mine, mine_text = unet_probe(fresh.unet), fresh.text_encoder(ids).last_hidden_state
    assert (theirs - base).abs().max() > 1e-3 and (theirs_text - base_text).abs().max() > 1e-3
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine_text, theirs_text, atol=1e-4, rtol=1e-4)


def test_textual_inversion_reads_in_diffusers_and_sdkit_alike(sd1_folder, photos, tmp_path):
    """An A1111 embedding: diffusers' load_textual_inversion and sdkit's embedding folders give the same
    prompt context."""
    out = tmp_path / "shinything.safetensors"
    sdkit.train(sd1_folder, photos, method="textual_inversion", out=out, steps=3, init_word="cube",
                learning_rate=1e-1, backend="torch", progress=False)
    emb = load_file(str(out))
    assert list(emb) == ["emb_params"] and emb["emb_params"].shape == (1, 64)
    with safe_open(str(out), "np") as f:  # kohya's model spec for an embedding (sai_model_spec.build_metadata)
        meta = f.metadata()
    assert (meta["modelspec.architecture"], meta["modelspec.title"], meta["modelspec.resolution"]) == (
        "stable-diffusion-v1/textual-inversion", "shinything", "64x64")  # trained at the tiny model's size

    pipe = diffusers_pipeline(sd1_folder)
    pipe.load_textual_inversion(str(out), token="shinything")
    theirs = pipe.encode_prompt("a photo of shinything", "cpu", 1, False)[0]
    ours = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32", embedding_dirs=[tmp_path])
    from sdkit import conditioning
    enc = conditioning.encode(["a photo of shinything"], ours.towers, ours.backend.numpy, embeddings=ours.embeddings)
    assert enc.embeddings[0]  # sdkit found and used it
    np.testing.assert_allclose(enc.contexts[0], theirs[0].detach().numpy(), atol=1e-4)
    cube = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.encode("cube", add_special_tokens=False)[0]]
    assert np.abs(emb["emb_params"][0] - cube.detach().numpy()).max() > 1e-3  # it trained away from its start


# --- cross-backend and overfitting ------------------------------------------------------------------------------

def test_torch_and_mlx_loss_curves_agree(sd1_folder, photos, tmp_path):
    pytest.importorskip("mlx.core")
    runs = {b: sdkit.train(sd1_folder, photos, method="lora", out=tmp_path / b / "l.safetensors", steps=20, rank=4,
                           learning_rate=1e-2, backend=b, device="cpu", seed=3, progress=False, min_snr_gamma=5.0)
            for b in ("torch", "mlx")}
    torch_losses, mlx_losses = (np.array(runs[b].losses) for b in ("torch", "mlx"))
    np.testing.assert_allclose(mlx_losses, torch_losses, rtol=1e-3)
    assert np.abs(np.diff(torch_losses)).max() > 1e-3  # the curves move: LoRA updates reach the output


def x0_error(unet, latents, context, prediction="epsilon", seed=0):
    """How far the UNet's x0 estimate is from the image's latents, over fixed timesteps and noise."""
    ac = torch.from_numpy(alphas_cumprod(SD15)).float()
    g = torch.Generator().manual_seed(seed)
    errs = []
    for t in (100, 300, 500, 700):
        eps = torch.randn(latents.shape, generator=g)
        a = ac[t]
        x_t = a.sqrt() * latents + (1 - a).sqrt() * eps
        with torch.no_grad():
            pred = unet(x_t, t, encoder_hidden_states=context).sample
        errs.append(((x_t - (1 - a).sqrt() * pred) / a.sqrt() - latents).square().mean())
    return float(torch.stack(errs).mean())


def image_error(pipe, image, prompt):
    """x0_error of a diffusers pipeline on one 64x64 image's latents, conditioned on prompt."""
    with torch.no_grad():
        latents = pipe.vae.encode(torch.from_numpy(data.load_image(image, (64, 64)))[None]).latent_dist.mean
        context = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    return x0_error(pipe.unet, latents * pipe.vae.config.scaling_factor, context)


# Each method on a backend, tiny and short: (method, backend, steps, options)
OVERFIT = [
    ("finetune", "torch", 60, dict(learning_rate=2e-3)),
    ("finetune", "mlx", 20, dict(learning_rate=3e-3, text_encoder=True)),  # a single file, read back
    ("lora", "torch", 60, dict(rank=8, conv=True, learning_rate=2e-2)),
    ("lora", "mlx", 60, dict(rank=8, conv=True, learning_rate=2e-2)),
    ("dreambooth", "torch", 60, dict(rank=8, conv=True, learning_rate=2e-2, instance_prompt="a photo of sks cube")),
    ("dreambooth", "mlx", 60, dict(rank=8, conv=True, learning_rate=2e-2, instance_prompt="a photo of sks cube")),
]
# Textual inversion is not here: the tiny model's x0 estimates barely depend on the prompt (any prompt, or none,
# moves them by under 1%), so no embedding can overfit them; test_textual_inversion_overfits_a_prompt_led_model
# gives it a model that listens to the prompt.


@pytest.mark.parametrize("method, backend, steps, options", OVERFIT, ids=[f"{m}-{b}" for m, b, *_ in OVERFIT])
def test_short_run_overfits_one_image(sd1_folder, tmp_path, method, backend, steps, options):
    """A short run on one image: the trained prompt's x0 estimates come much closer to the image's latents than
    the untrained model's, read back by diffusers (the fine-tuned single file or folder, or load_lora_weights)."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    photo = write_images(tmp_path / "one", [None if method == "dreambooth" else "a photo of a red cube"])
    single = method == "finetune" and backend == "mlx"  # the other fine-tune writes a folder
    out = tmp_path / ("tuned.safetensors" if single else "tuned" if method == "finetune" else "cube.safetensors")
    sdkit.train(sd1_folder, photo, method=method, out=out, steps=steps, backend=backend, device="cpu", progress=False,
                **options)
    prompt = "a photo of sks cube" if method == "dreambooth" else "a photo of a red cube"
    pipe = diffusers_pipeline(sd1_folder)
    before = image_error(pipe, photo / "0.png", prompt)
    if single:
        from diffusers import StableDiffusionPipeline
        tuned = StableDiffusionPipeline.from_single_file(str(out), config=str(sd1_folder), safety_checker=None,
                                                         local_files_only=True)
    elif method == "finetune":
        tuned = diffusers_pipeline(out)
    else:
        tuned = pipe
        tuned.load_lora_weights(str(out))
    after = image_error(tuned, photo / "0.png", prompt)
    assert after < 0.3 * before, (before, after)


@pytest.fixture(scope="module")
def prompt_led(sd1_folder, tmp_path_factory):
    """(model, image): the tiny model fine-tuned on one image (so it denoises it), then with every cross-attention
    sharpened (query and key x QK) and made loud (value and output x VO). Its noise prediction now follows the
    prompt, which the random model's barely does: its keys hardly tell the 77 positions apart, so attention
    averages contexts whose padding positions nearly agree for every prompt, and the next GroupNorm removes the
    spatially flat result. Here the prompt decides how much the cross-attention disturbs the denoiser."""
    root = tmp_path_factory.mktemp("prompt_led")
    photo = write_images(root / "one", ["a photo of a red cube"])
    model = root / "model"
    sdkit.train(sd1_folder, photo, method="finetune", out=model, steps=60, learning_rate=3e-3, backend="torch",
                progress=False)
    QK, VO = 4.0, 5.0  # sharper still (8) makes runs chaotic: torch and MLX drift apart within 5 steps
    unet = next((model / "unet").glob("*.safetensors"))
    weights = load_file(str(unet))
    for key, w in weights.items():
        if ".attn2." in key and key.endswith(".weight"):
            weights[key] = w * (QK if key.split(".")[-2] in ("to_q", "to_k") else VO)  # else to_v, to_out.0
    save_file(weights, str(unet))
    return model, photo / "0.png"


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_textual_inversion_overfits_a_prompt_led_model(prompt_led, tmp_path, backend):
    """Textual inversion on a model that listens to the prompt: the trained token's x0 estimates come much closer
    to its image than its init word's (the untrained embedding: with learning rate 0 the two errors are equal)
    or any other prompt's, read back by diffusers' load_textual_inversion (0.30x here). The token learns a context
    under which the loud cross-attention stops disturbing the denoiser. 70 vectors fill the context ("a photo of"
    + 70 + BOS/EOS = 75 of 77 positions), as padding positions carry little of a short prompt in the tiny text
    encoder."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    model, image = prompt_led
    data_dir = tmp_path / "shiny"
    data_dir.mkdir()
    (data_dir / "0.png").write_bytes(image.read_bytes())
    (data_dir / "0.txt").write_text("a photo of shiny")
    vectors = 70
    out = tmp_path / "shiny.safetensors"
    sdkit.train(model, data_dir, method="textual_inversion", out=out, steps=60, vectors=vectors, init_word="ball",
                learning_rate=5e-2, backend=backend, device="cpu", progress=False)
    pipe = diffusers_pipeline(model)
    before = image_error(pipe, image, "a photo of" + " ball" * vectors)  # the embedding as it started
    others = [image_error(pipe, image, p) for p in ("a photo of a red cube", "a photo of a blue ball", "")]
    pipe.load_textual_inversion(str(out), token="shiny")
    after = image_error(pipe, image, "a photo of shiny")
    assert after < 0.4 * min(before, *others), (before, others, after)


def test_textual_inversion_on_mlx_trains_as_on_torch(sd1_folder, photos, tmp_path):
    """Textual inversion with two vectors: MLX's loss curve and trained vectors are torch's (same seed)."""
    pytest.importorskip("mlx.core")
    runs = {b: sdkit.train(sd1_folder, photos, method="textual_inversion", out=tmp_path / b / "shiny.safetensors",
                           steps=5, vectors=2, init_word="cube", learning_rate=1e-1, backend=b, device="cpu",
                           progress=False) for b in ("torch", "mlx")}
    np.testing.assert_allclose(runs["mlx"].losses, runs["torch"].losses, rtol=1e-3)
    vectors = {b: load_file(str(tmp_path / b / "shiny.safetensors"))["emb_params"] for b in runs}
    pipe = diffusers_pipeline(sd1_folder)
    cube = pipe.tokenizer.encode("cube", add_special_tokens=False)[0]
    start = pipe.text_encoder.get_input_embeddings().weight[cube].detach().numpy()
    assert np.abs(vectors["torch"] - start).max() > 0.1  # it trained (lr 0.1, 5 steps)
    np.testing.assert_allclose(vectors["mlx"], vectors["torch"], atol=1e-4)


# --- long runs: resume, Ctrl-C, samples -------------------------------------------------------------------------

def test_ctrl_c_saves_and_resume_continues_the_same_run(sd1_folder, photos, tmp_path, monkeypatch):
    """Interrupted at step 4 of 6 (Ctrl-C inside the step), then resumed: the same losses and LoRA as one
    uninterrupted run with that seed (which ran with gradient checkpointing), whose output is the EMA of the
    weights; samples appear every N steps."""
    options = dict(method="lora", steps=6, rank=4, learning_rate=1e-2, backend="torch", seed=5, progress=False,
                   caption_dropout=0.3, save_every=2, ema_decay=0.8)
    # gradient checkpointing recomputes activations: the same run, less memory
    whole = sdkit.train(sd1_folder, photos, out=tmp_path / "a" / "l.safetensors", gradient_checkpointing=True,
                        **options)

    from sdkit_torch.train import Trainer
    real_step, calls = Trainer.step, []

    def step(self, lr):
        calls.append(lr)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_step(self, lr)
    monkeypatch.setattr(Trainer, "step", step)
    out = tmp_path / "b" / "l.safetensors"
    with pytest.raises(sdkit.Cancelled, match=r"interrupted at step 4 of 6: state saved to .*l\.safetensors\.state"):
        sdkit.train(sd1_folder, photos, out=out, **options)
    assert out.exists()  # the LoRA so far
    monkeypatch.setattr(Trainer, "step", real_step)
    resumed = sdkit.train(sd1_folder, photos, out=out, resume=True, sample_every=3,
                          sample_prompts=["a photo of a red cube"], sample_steps=2, **options)
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    a, b = load_file(str(tmp_path / "a" / "l.safetensors")), load_file(str(out))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    state = load_file(str(out) + ".state.safetensors")
    ups = [v for k, v in b.items() if k.endswith("lora_up.weight")]
    same = lambda prefix: all(any(np.allclose(u.ravel(), v.ravel()) for k, v in state.items()
                                  if k.startswith(prefix) and v.size == u.size) for u in ups)
    assert same("ema.") and not same("param.")  # the output is the average
    assert [p.rsplit("/", 1)[-1] for p in resumed.outputs[2:]] == ["step000006-0.png"]  # step 3 ran before


def test_cli_dreambooth_with_prior_preservation(sd1_folder, tmp_path, capsys):
    """sdkit-train: an uncaptioned instance folder with --instance-prompt, class images for prior preservation;
    a usage error exits 2 with one line naming the argument."""
    from sdkit.train.cli import main
    instance = write_images(tmp_path / "sks", [None, None])
    classes = write_images(tmp_path / "dogs", [None], seed=1)
    out = tmp_path / "sks.safetensors"
    code = main([str(sd1_folder), str(instance), "--method", "dreambooth", "--out", str(out), "--steps", "3",
                 "--instance-prompt", "a photo of sks dog", "--class-data", str(classes), "--class-prompt",
                 "a photo of a dog", "--rank", "2", "--backend", "torch", "--ema-decay", "0.99"])
    assert code == 0 and out.exists()
    assert capsys.readouterr().out.split() == [str(out), str(tmp_path / "log.jsonl")]
    assert main([str(sd1_folder), str(tmp_path / "missing"), "--out", str(out), "--backend", "torch"]) == 2
    assert "sdkit-train: error: data" in capsys.readouterr().err
    assert main([str(sd1_folder), str(instance), "--out", str(out), "--ema-decay", "1.5"]) == 2
    assert capsys.readouterr().err == "sdkit-train: error: ema_decay must be in (0, 1), e.g. 0.9999, got 1.5\n"


def test_sdxl_lora_reads_in_diffusers(sdxl_folder, photos, tmp_path):
    """SDXL: kohya's lora_unet_ (LDM's paths, LoCon included) / lora_te1_ / lora_te2_ names reach diffusers' UNet
    and both text encoders, and sdkit's loader; the UNet's output is the hand-merged one."""
    out = tmp_path / "xl.safetensors"
    sdkit.train(sdxl_folder, photos, method="lora", out=out, steps=3, rank=4, text_encoder=True, conv=True,
                learning_rate=1e-2, backend="torch", progress=False, resolution=64)
    keys = load_file(str(out)).keys()
    assert keys >= {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha",
                    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha"}
    # kohya's SDXL UNet is named as LDM's (sd-scripts library/sdxl_original_unet.py), not diffusers'
    unet_keys = {k.split("_")[2] for k in keys if k.startswith("lora_unet_")}
    assert unet_keys == {"input", "middle", "output"}, unet_keys
    assert any(k.endswith("_emb_layers_1.alpha") for k in keys)  # LoCon's timestep projections, as kohya's
    from sdkit.adapters.lora import Targets, read_lora
    ckpt = open_checkpoint(sdxl_folder)  # sdkit's loader finds every trained layer under its name
    layers = read_lora(out, Targets.of(ckpt.family, ckpt.weights, ckpt.unet)).layers
    assert {(x.component, x.name.removesuffix(".weight")) for x in layers} == {
        (t.component, t.module) for t in formats.lora_targets(ckpt, conv=True, text_encoder=True)}
    pipe = diffusers_pipeline(sdxl_folder)
    ids = pipe.tokenizer(["a photo of a red cube"], padding="max_length", return_tensors="pt").input_ids
    probe = lambda: [pipe.text_encoder(ids).last_hidden_state, pipe.text_encoder_2(ids).last_hidden_state]
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 192, generator=g)
    added = {"text_embeds": torch.randn(1, 64, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    unet = lambda u: u(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
    with torch.no_grad():
        before, base = probe(), unet(pipe.unet)
        pipe.load_lora_weights(str(out))
        pipe.fuse_lora()
        after, theirs = probe(), unet(pipe.unet)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(after, before))
    assert (theirs - base).abs().max() > 1e-3
    fresh = diffusers_pipeline(sdxl_folder)
    state, changed = merged_state(sdxl_folder, "unet", out)
    assert changed == sum(1 for k in keys if k.startswith("lora_unet_") and k.endswith(".alpha"))
    fresh.unet.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        torch.testing.assert_close(unet(fresh.unet), theirs, atol=1e-4, rtol=1e-4)


def test_peft_format_lora_reads_in_diffusers(sd1_folder, photos, tmp_path):
    """lora_format="peft": diffusers' own keys, alpha / rank folded into lora_B; the UNet output is the merged one."""
    out = tmp_path / "peft.safetensors"
    sdkit.train(sd1_folder, photos, method="lora", out=out, steps=3, rank=4, alpha=2, lora_format="peft",
                learning_rate=1e-2, backend="torch", progress=False)
    lora = load_file(str(out))
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in lora
    kohya_file = tmp_path / "kohya" / "k.safetensors"  # the same run (seed) in kohya's format: the same deltas
    sdkit.train(sd1_folder, photos, method="lora", out=kohya_file, steps=3, rank=4, alpha=2, learning_rate=1e-2,
                backend="torch", progress=False)
    kohya = load_file(str(kohya_file))
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    p = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    np.testing.assert_allclose(formats.lora_delta(lora[f"{p}.lora_A.weight"], lora[f"{p}.lora_B.weight"], 4),
                               formats.lora_delta(kohya[f"{k}.lora_down.weight"], kohya[f"{k}.lora_up.weight"], 2),
                               atol=1e-7)
    pipe = diffusers_pipeline(sd1_folder)
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    theirs = unet_probe(pipe.unet)
    fresh = diffusers_pipeline(sd1_folder)
    state = dict(fresh.unet.state_dict())
    for key in [k for k in lora if k.endswith("lora_A.weight")]:
        name = key.removeprefix("unet.").removesuffix(".lora_A.weight") + ".weight"
        delta = formats.lora_delta(lora[key], lora[key.replace("lora_A", "lora_B")], alpha=4)  # scale 1
        state[name] = state[name] + torch.from_numpy(delta).reshape(state[name].shape)
    fresh.unet.load_state_dict(state)
    torch.testing.assert_close(unet_probe(fresh.unet), theirs, atol=1e-4, rtol=1e-4)
    assert (theirs - unet_probe(diffusers_pipeline(sd1_folder).unet)).abs().max() > 1e-3


def test_sdkit_applies_its_own_trained_lora_as_diffusers_does(sd1_folder, photos, tmp_path):
    """A kohya LoRA sdkit trained (UNet and text encoder), applied by sdkit's loader with loras=: the latents and
    picture of diffusers' load_lora_weights on the same file, and not the base model's."""
    from test_lora import HEIGHT, SEED, STEPS, WIDTH, assert_same_run, run_ours, run_theirs

    out = tmp_path / "mine.safetensors"
    sdkit.train(sd1_folder, photos, method="lora", out=out, steps=4, rank=4, alpha=2, text_encoder=True,
                learning_rate=5e-2, backend="torch", progress=False)
    theirs = diffusers_pipeline(sd1_folder)
    theirs.load_lora_weights(str(tmp_path), weight_name=out.name, adapter_name="mine")
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")
    run = dict(width=WIDTH, height=HEIGHT, steps=STEPS, sampler="pndm", seed=SEED, output="latent")
    base = pipe.generate("a photo of a red cube", "blurry", **run)
    ours = run_ours(pipe, "pndm", prompt="a photo of a red cube", loras={out: 1.0})
    assert_same_run(ours, run_theirs(theirs, ["mine"], [1.0], prompt="a photo of a red cube"))
    mine = pipe.generate("a photo of a red cube", "blurry", loras={out: 1.0}, **run)
    assert np.abs(mine - base).max() > 1e-2  # the LoRA changes the picture: the comparison proves something


# --- trainer options: EMA, loss scaling, gradient checkpointing ------------------------------------------------

def lora_trainer(folder, backend, dtype="float32", **options):
    """A backend's LoRA trainer (rank 2 on the UNet's attention) on `folder`, with Plan `options`."""
    from sdkit import backends
    from sdkit.checkpoint import open_checkpoint
    from sdkit.train.plan import Plan
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    ckpt = open_checkpoint(folder)
    lora = formats.lora_init(formats.lora_targets(ckpt), 2, np.random.default_rng(0))
    engine = backends.get(backend)(device="cpu", dtype=dtype)
    return engine.trainer(ckpt, Plan(learning_rate=1e-2, lora=lora, alpha=2.0, **options))


def random_batch(seed, target_scale=1.0, width=64):
    from sdkit.train.plan import Batch
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    target = rng.standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(target_scale)
    context = rng.standard_normal((1, 77, width), dtype=np.float32)
    return Batch(x, target, np.array([500.0], np.float32), np.ones(1, np.float32), context, None, None, None)


def trained(trainer, prefix="param."):
    return {k.removeprefix(prefix): v for k, v in trainer.state().items() if k.startswith(prefix)}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_ema_follows_diffusers_ema_model_and_survives_resume(sd1_folder, backend):
    """ema_decay: after each step the average is diffusers' EMAModel.step of the trained weights (its default
    schedule: a copy, then min(decay, n / (n + 9))); averaged() swaps it in for writing and back; a resumed trainer
    carries it on."""
    from diffusers.training_utils import EMAModel
    trainer = lora_trainer(sd1_folder, backend, ema_decay=0.9)
    oracle = None
    for step in range(4):
        trainer.accumulate(random_batch(step), 1.0)
        assert trainer.step(1e-2)
        weights = trained(trainer)
        tensors = [torch.nn.Parameter(torch.from_numpy(weights[k].copy())) for k in sorted(weights)]
        oracle = oracle or EMAModel([t.detach().clone() for t in tensors], decay=0.9)
        oracle.step(tensors)  # (Parameters: EMAModel only averages what requires grad)
    average = trained(trainer, "ema.")
    assert sorted(average) == sorted(weights)
    for k, want in zip(sorted(weights), oracle.shadow_params):
        np.testing.assert_allclose(average[k], want.numpy(), rtol=1e-5, atol=1e-7)
    assert max(np.abs(average[k] - weights[k]).max() for k in weights) > 1e-4  # the average lags the weights
    k = next(t for t in trainer.lora)
    last = trainer.lora_weights()[k][1].copy()
    with trainer.averaged():
        during = trainer.lora_weights()[k][1].copy()
    assert not np.allclose(during, last) and np.array_equal(trainer.lora_weights()[k][1], last)

    resumed = lora_trainer(sd1_folder, backend, ema_decay=0.9)
    resumed.load_state(trainer.state())
    for t in (trainer, resumed):
        t.accumulate(random_batch(9), 1.0)
        t.step(1e-2)
    want, got = trained(trainer, "ema."), trained(resumed, "ema.")
    assert all(np.allclose(got[k], want[k], rtol=1e-6, atol=1e-8) for k in want)


def run_past_an_overflow(scaled, plain, lr: float) -> tuple[dict, dict]:
    """`scaled` steps over batches 0, 1 (whose scaled float16 gradients overflow) and 2, `plain` over 0 and 2: the
    overflowing step is skipped (weights untouched) and halves the scale, the others are taken.
    -> the trained tensors of plain and of scaled."""
    taken = []
    for batch in (random_batch(0), random_batch(1, target_scale=1e5), random_batch(2)):
        before = trained(scaled)
        scaled.accumulate(batch, 1.0)
        taken.append(scaled.step(lr))
        if not taken[-1]:
            assert scaled.scaler.scale == 2.0**15
            after = trained(scaled)
            assert all(np.array_equal(before[k], after[k]) for k in before)
    assert taken == [True, False, True]
    for batch in (random_batch(0), random_batch(2)):
        plain.accumulate(batch, 1.0)
        assert plain.step(lr)
    return trained(plain), trained(scaled)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_float16_loss_scaling_skips_overflowing_steps(sd1_folder, backend):
    """float16 with loss scaling: a step whose scaled gradients overflow is skipped (weights and AdamW untouched)
    and halves the scale; the finite steps around it are the steps of a run without that batch, whose scale
    stayed 2^16: the gradients are unscaled by the scale they were computed with."""
    scaled = lora_trainer(sd1_folder, backend, "float16", loss_scaling=True)
    plain = lora_trainer(sd1_folder, backend, "float16", loss_scaling=True)
    assert scaled.scaler.scale == 2.0**16
    want, got = run_past_an_overflow(scaled, plain, 1e-2)
    assert all(np.abs(got[k]).max() > 0 for k in got)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, err_msg=k)


def test_mlx_gradient_checkpointing_gives_the_same_gradients(sd1_folder):
    """MLX gradient checkpointing (mx.checkpoint around each resnet and transformer block): the same loss and
    LoRA gradients as without it, and parameter names unchanged."""
    from mlx.utils import tree_flatten
    plain = lora_trainer(sd1_folder, "mlx")
    light = lora_trainer(sd1_folder, "mlx", gradient_checkpointing=True)
    assert any(type(m).__name__.startswith("Checkpointed") for _, m in light.model.unet.named_modules())
    assert sorted(trained(light)) == sorted(trained(plain))
    batch = random_batch(0)
    assert light.accumulate(batch, 1.0) == pytest.approx(plain.accumulate(batch, 1.0), rel=1e-6)
    want, got = dict(tree_flatten(plain.sum)), dict(tree_flatten(light.sum))
    assert want.keys() == got.keys() and any(np.abs(np.array(g)).max() > 0 for g in want.values())
    for k in want:
        np.testing.assert_allclose(np.array(got[k]), np.array(want[k]), rtol=1e-5, atol=1e-7, err_msg=k)


def test_finetune_with_text_encoder_writes_a_single_file_and_a_folder(sd1_folder, photos, tmp_path):
    """finetune with text_encoder=True: out=*.safetensors is an LDM single file that diffusers' from_single_file
    and sdkit read as the same weights as the diffusers folder the same run writes; UNet and text encoder
    trained, the VAE the source's."""
    from diffusers import StableDiffusionPipeline
    from sdkit.checkpoint import open_checkpoint
    from sdkit.weights import read_tensors
    options = dict(method="finetune", text_encoder=True, steps=2, learning_rate=1e-3, backend="torch", progress=False)
    single, folder = tmp_path / "tuned.safetensors", tmp_path / "tuned"
    sdkit.train(sd1_folder, photos, out=single, **options)
    sdkit.train(sd1_folder, photos, out=folder, **options)
    assert "model.diffusion_model.input_blocks.0.0.weight" in load_file(str(single))

    theirs = StableDiffusionPipeline.from_single_file(str(single), config=str(sd1_folder), safety_checker=None,
                                                       local_files_only=True)
    ours, base = diffusers_pipeline(folder), diffusers_pipeline(sd1_folder)
    for name in ("unet", "text_encoder", "vae"):
        a, b, c = (getattr(p, name).state_dict() for p in (theirs, ours, base))
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
        changed = max(float((b[k] - c[k]).abs().max()) for k in b if k in c)
        assert (changed > 1e-5) == (name != "vae"), (name, changed)
    a, b = open_checkpoint(single), open_checkpoint(folder)
    for component in a.weights:
        x, y = dict(read_tensors(a.weights[component], "numpy")), dict(read_tensors(b.weights[component], "numpy"))
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), component


def test_single_file_writer_reads_back_for_sd2_and_sdxl(sd2v_folder, sdxl_folder, tmp_path):
    """ldm_writer for OpenCLIP towers (SD2; SDXL's CLIP-L + bigG with its projection): sdkit's reader gives back
    the family, the text encoders and every tensor exactly."""
    from sdkit import ldm_writer
    from sdkit.checkpoint import open_checkpoint
    from sdkit.weights import read_tensors
    for folder in (sd2v_folder, sdxl_folder):
        source = open_checkpoint(folder)
        ldm_writer.write(tmp_path / f"{folder.name}.safetensors", source, {})
        back = open_checkpoint(tmp_path / f"{folder.name}.safetensors")
        assert (back.family, back.text_encoder_names, back.unet.block_out_channels) == (
            source.family, source.text_encoder_names, source.unet.block_out_channels)
        for component, refs in source.weights.items():
            x, y = dict(read_tensors(refs, "numpy")), dict(read_tensors(back.weights[component], "numpy"))
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), (folder.name, component)


def test_torch_finetune_in_bfloat16_runs_under_autocast(sd1_folder):
    """A fine-tune keeps float32 weights; with dtype bfloat16 its forward runs under autocast: a loss near the
    float32 one, but not it."""
    from sdkit import backends
    from sdkit.checkpoint import open_checkpoint
    from sdkit.train.plan import Plan
    ckpt, batch = open_checkpoint(sd1_folder), random_batch(0)
    loss = {dtype: backends.get("torch")(device="cpu", dtype=dtype).trainer(
        ckpt, Plan(learning_rate=1e-3, finetune=True)).accumulate(batch, 1.0) for dtype in ("float32", "bfloat16")}
    assert loss["bfloat16"] != loss["float32"] and loss["bfloat16"] == pytest.approx(loss["float32"], rel=2e-2)


# --- the VAE, stopping while caching ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_vae_encodes_the_cached_latents(sd1_folder, photos, tmp_path, monkeypatch, backend):
    """vae= (as sdkit.load's): the cached latents are the given VAE's posterior mean times the checkpoint's scaling
    factor (diffusers' AutoencoderKL on the same weights), not the model's own VAE's; sdkit-train --vae takes an
    LDM-named file."""
    from diffusers import AutoencoderKL

    from safetensors.torch import load_file as load_torch, save_file

    from fixtures import vae_to_ldm
    from sdkit.train import loop
    from sdkit.train.cli import main
    from test_vae import _autoencoder

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    other = _autoencoder(tmp_path / "other-vae", seed=5)
    encoded = []
    real = loop._encode_images
    monkeypatch.setattr(loop, "_encode_images", lambda *a: encoded.append(real(*a)) or encoded[-1])
    options = dict(method="lora", steps=1, rank=2, backend=backend, device="cpu", progress=False)
    sdkit.train(sd1_folder, photos, out=tmp_path / "own" / "l.safetensors", **options)
    sdkit.train(sd1_folder, photos, out=tmp_path / "other" / "l.safetensors", vae=other, **options)
    scale = AutoencoderKL.load_config(sd1_folder / "vae")["scaling_factor"]
    for vae, latents in zip((AutoencoderKL.from_pretrained(sd1_folder / "vae"), AutoencoderKL.from_pretrained(other)),
                            encoded):
        for i, x0 in enumerate(latents):
            image = torch.from_numpy(data.load_image(photos / f"{i}.png", (64, 64)))[None]
            with torch.no_grad():
                expected = vae.encode(image).latent_dist.mean[0].numpy() * scale
            np.testing.assert_allclose(x0, expected, atol=1e-4)
    assert np.abs(encoded[0][0] - encoded[1][0]).max() > 0.1  # another VAE, other latents

    ldm = tmp_path / "other-vae.safetensors"  # as vae-ft-mse-840000 ships
    config = SimpleNamespace(**json.loads((other / "config.json").read_text()))
    save_file(vae_to_ldm(load_torch(other / "diffusion_pytorch_model.safetensors"), config), ldm)
    assert main([str(sd1_folder), str(photos), "--out", str(tmp_path / "cli" / "l.safetensors"), "--steps", "1",
                 "--rank", "2", "--backend", backend, "--vae", str(ldm)]) == 0
    np.testing.assert_allclose(np.stack(encoded[2]), np.stack(encoded[1]), atol=1e-5)


def test_should_stop_while_caching_writes_nothing_and_a_later_run_works(sd1_folder, photos, tmp_path, monkeypatch):
    """A GUI's Cancel during the first encoding: should_stop is consulted between images, the run raises
    Cancelled before writing anything (no folder, log, state or output), and the next run trains as usual."""
    from sdkit.train import loop
    loaded = []
    real = loop.dataset.load_image
    monkeypatch.setattr(loop.dataset, "load_image", lambda *a: loaded.append(a) or real(*a))
    out = tmp_path / "run" / "l.safetensors"
    options = dict(method="lora", steps=2, rank=2, backend="torch", progress=False)
    with pytest.raises(sdkit.Cancelled, match="cancelled while encoding .*nothing was written"):
        sdkit.train(sd1_folder, photos, out=out, should_stop=lambda: len(loaded) == 1, **options)
    assert len(loaded) == 1 and not out.parent.exists()
    record = sdkit.train(sd1_folder, photos, out=out, should_stop=lambda: False, **options)
    assert len(record.losses) == 2 and out.exists()


def test_single_file_writer_reads_back_for_the_sdxl_refiner(refiner_folder, tmp_path):
    """ldm_writer for the refiner-only layout (OpenCLIP bigG alone, at conditioner.embedders.0): sdkit's reader
    gives back the family, the one text encoder and every tensor exactly, and finds the same layout."""
    from sdkit import ldm_writer
    from sdkit.checkpoint import open_checkpoint
    from sdkit.weights import read_tensors
    source = open_checkpoint(refiner_folder)
    path = tmp_path / "refiner.safetensors"
    ldm_writer.write(path, source, {})
    assert any(k.startswith("conditioner.embedders.0.model.") for k in load_file(str(path)))
    back = open_checkpoint(path)
    unet = dataclasses.replace(back.unet, sample_size=source.unet.sample_size)  # a single file has no sample size
    assert (back.family, back.text_encoder_names, unet, back.text_encoders) == (
        source.family, source.text_encoder_names, source.unet, source.text_encoders)
    for component, refs in source.weights.items():
        x, y = dict(read_tensors(refs, "numpy")), dict(read_tensors(back.weights[component], "numpy"))
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), component


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("method,options", [
    ("lora", dict(text_encoder=True, target="^text_encoder", rank=4, learning_rate=3e-2)),
    ("finetune", dict(text_encoder=True, learning_rate=1e-3)),
    ("textual_inversion", dict(learning_rate=5e-2))])
def test_samples_use_the_text_encoders_being_trained(sd1_folder, photos, tmp_path, backend, method, options):
    """A sample at step N is generate()'s picture (same seed) from the output written at step N: with the text
    encoder LoRA's deltas of that step (a LoRA on the text encoder only), with the fine-tuned text encoder, with
    the embedding's vectors; not the base model's text encoder."""
    prompt, run = "a photo of sks", dict(seed=7, steps=3, width=64, height=64)
    out = tmp_path / "sks.safetensors"  # textual inversion: the token, and the embedding's trigger
    record = sdkit.train(sd1_folder, photos, method=method, out=out, steps=3, backend=backend, seed=1,
                         progress=False, sample_every=3, sample_prompts=[prompt], sample_steps=3, sample_seed=7,
                         **options)
    sample = np.asarray(Image.open(record.outputs[2]), np.float32)
    base = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32")
    if method == "lora":
        trained = base.generate(prompt, loras={str(out): 1.0}, **run)[0]
    elif method == "finetune":
        trained = sdkit.load(out, backend=backend, device="cpu", dtype="float32").generate(prompt, **run)[0]
    else:
        trained = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32",
                             embedding_dirs=tmp_path).generate(prompt, **run)[0]
    untrained = base.generate(prompt, **run)[0]
    # the sample's LoRA layers add up(down(x)) where generate() merges W + delta: at most a rounding apart
    assert np.abs(sample - np.asarray(trained, np.float32)).max() <= 1
    assert np.abs(sample - np.asarray(untrained, np.float32)).mean() > 2  # the base model's: 2.7 to 10 levels off


def test_finetune_of_a_single_file_writes_a_diffusers_folder(sd1_single_file, photos, tmp_path):
    """finetune (UNet and text encoder) of a single-file model with a folder as out: a diffusers folder that
    from_pretrained loads as exactly the weights written, trained ones among them, and with which diffusers makes
    sdkit's picture (the latents of every step) from that folder."""
    from test_lora import assert_same_run, run_ours, run_theirs
    folder = tmp_path / "tuned"
    sdkit.train(sd1_single_file, photos, out=folder, method="finetune", text_encoder=True, steps=2, resolution=64,
                learning_rate=1e-3, backend="torch", progress=False)
    theirs = diffusers_pipeline(folder)
    original = diffusers_pipeline(sd1_single_file.parent / "tiny-sd1")  # the folder the single file was made from
    for name, file in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        written = {k.removeprefix("text_model."): torch.from_numpy(v)  # transformers 5 names it without
                   for k, v in load_file(str(folder / name / f"{file}.safetensors")).items()}
        loaded = getattr(theirs, name).state_dict()
        assert written.keys() == loaded.keys() and all(torch.equal(written[k], loaded[k]) for k in written), name
        base = getattr(original, name).state_dict()
        changed = max(float((loaded[k] - base[k]).abs().max()) for k in loaded)
        assert (changed > 1e-5) == (name != "vae"), (name, changed)
    pipe = sdkit.load(folder, backend="torch", device="cpu", dtype="float32")
    assert_same_run(run_ours(pipe, "pndm"), run_theirs(theirs, [], []))


@pytest.mark.parametrize("family", ["sd1", "sd2v", "sdxl", "refiner"])
def test_diffusers_writer_from_single_files(family, request, tmp_path):
    """A single file written as a diffusers folder: from_pretrained loads the weights of the folder the single
    file was made from, and sdkit reads the folder with the single file's configs (the UNet's sample size aside:
    a single file has none, the folder writes the family's)."""
    from sdkit import diffusers_writer
    from sdkit.checkpoint import open_checkpoint
    source_folder = request.getfixturevalue(f"{family}_folder")
    single = open_checkpoint(request.getfixturevalue(f"{family}_single_file"))
    diffusers_writer.write(tmp_path / family, single, {})
    theirs, original = diffusers_pipeline(tmp_path / family), diffusers_pipeline(source_folder)
    assert type(theirs) is type(original)
    for name in ("unet", "vae", *single.text_encoder_names):
        a, b = getattr(theirs, name).state_dict(), getattr(original, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (family, name)
    assert theirs.scheduler.config.prediction_type == original.scheduler.config.prediction_type
    back = open_checkpoint(tmp_path / family)
    for field in ("family", "text_encoders", "unet", "vae", "scheduler", "time_ids", "force_zeros_for_empty_prompt"):
        assert getattr(back, field) == getattr(single, field), (family, field)


def test_diffusers_writer_from_a_folder_writes_the_vae_given(sd1_folder, tmp_path):
    """A folder model opened with vae= another VAE: the folder written holds that VAE, not the model's own."""
    from sdkit import diffusers_writer
    from sdkit.checkpoint import open_checkpoint
    from fixtures import build_folder
    other = build_folder(tmp_path / "other", "sd1", seed=1)
    diffusers_writer.write(tmp_path / "out", open_checkpoint(sd1_folder, vae=other / "vae"), {})
    theirs, given, own = (diffusers_pipeline(f).vae.state_dict() for f in (tmp_path / "out", other, sd1_folder))
    assert theirs.keys() == given.keys() and all(torch.equal(theirs[k], given[k]) for k in theirs)
    assert not all(torch.equal(theirs[k], own[k]) for k in theirs)


def test_finetune_refuses_an_out_folder_it_would_destroy(sd1_folder, photos, tmp_path):
    """A diffusers-folder output replaces what is at `out`: refused up front (before any training) when that is
    the model's own folder or a folder holding other files; a previous run's diffusers output is replaced."""
    other = tmp_path / "holiday"
    other.mkdir()
    (other / "beach.jpg").write_bytes(b"not a model")
    run = lambda out: sdkit.train(sd1_folder, photos, out=out, method="finetune", steps=1, resolution=64,
                                  backend="torch", progress=False)
    for out, message in ((other, "other files in it"), (sd1_folder, "holds the model being trained"),
                         (sd1_folder.parent, "holds the model being trained")):
        with pytest.raises(ValueError, match=message):
            run(out)
    assert (other / "beach.jpg").read_bytes() == b"not a model" and (sd1_folder / "model_index.json").is_file()
    assert not (tmp_path / "log.jsonl").exists()  # refused before training
    run(tmp_path / "tuned")
    run(tmp_path / "tuned")  # its own earlier output: replaced
    assert (tmp_path / "tuned" / "model_index.json").is_file()
