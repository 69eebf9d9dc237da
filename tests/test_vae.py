"""vae=: a VAE of one's choice replacing the checkpoint's, from the files people download (LDM single files as
vae-ft-mse-840000 ships, first_stage_model.-prefixed ones, diffusers' names, folders, Hub repos), "noVAE"
checkpoints, and one-line refusals.

The oracle is a copy of the tiny SD1 folder whose vae/ is the other VAE: every layout must give its weights.
"""

import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures import perturb, relayout, vae_to_ldm
from safetensors.torch import load_file, save_file
from test_checkpoint import assert_one_line_error, assert_same_weights
from test_cli import FAST

import sdkit
from sdkit import hub
from sdkit.checkpoint import open_checkpoint
from sdkit.errors import HubError

VAE = "first_stage_model."
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _autoencoder(path, seed, **config):
    """A tiny AutoencoderKL folder shaped as the fixtures' (another seed: other weights)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=32, sample_size=64, **config)
    perturb(vae, torch.Generator().manual_seed(seed + 1))
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vaes(tmp_path_factory, sd1_folder):
    """The other VAE in every layout, and the oracle folder (sd1_folder with that VAE as its vae/)."""
    root = tmp_path_factory.mktemp("vaes")
    folder = _autoencoder(root / "other-vae", seed=5)
    tensors = load_file(folder / VAE_WEIGHTS)
    ldm = vae_to_ldm(tensors, SimpleNamespace(**json.loads((folder / "config.json").read_text())))
    bare = {k.removeprefix(VAE): v for k, v in ldm.items()}
    leftovers = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1, dtype=torch.int32)}
    save_file({**bare, **leftovers}, root / "vae-ft-mse-840000-ema-pruned.safetensors")
    save_file(ldm, root / "prefixed-vae.safetensors")
    shutil.copy(folder / VAE_WEIGHTS, root / "diffusers-named-vae.safetensors")
    oracle = shutil.copytree(sd1_folder, root / "tiny-sd1-other-vae")
    shutil.rmtree(oracle / "vae")
    shutil.copytree(folder, oracle / "vae")
    return SimpleNamespace(folder=folder, ldm=root / "vae-ft-mse-840000-ema-pruned.safetensors",
                           prefixed=root / "prefixed-vae.safetensors", oracle=oracle,
                           diffusers=root / "diffusers-named-vae.safetensors")


@pytest.mark.parametrize("layout", ["ldm", "prefixed", "diffusers", "folder", "oracle"])
def test_every_vae_layout_gives_the_same_weights(vaes, sd1_single_file, layout):
    """An LDM file (1x1-conv attention, EMA leftovers), one under first_stage_model., one in diffusers' names,
    an AutoencoderKL folder and a pipeline folder's vae/ replace the single file's VAE with the oracle's."""
    vae = getattr(vaes, layout)
    ckpt = open_checkpoint(sd1_single_file, vae=vae)
    oracle = open_checkpoint(vaes.oracle)
    assert_same_weights(ckpt, oracle)
    assert ckpt.vae == dataclasses.replace(oracle.vae, sample_size=ckpt.vae.sample_size)  # a file's is inferred
    assert ckpt.vae_file == vae and ckpt.vae_name == vae.name


def test_the_checkpoints_scaling_factor_stays(vaes, sdxl_single_file, sd1_single_file, sdxl_folder):
    """An SD1 VAE (config: 0.18215) on SDXL keeps SDXL's 0.13025, and the reverse: the factor belongs to the
    UNet's latents, not to the VAE."""
    assert open_checkpoint(sdxl_single_file, vae=vaes.folder).vae.scaling_factor == 0.13025
    assert open_checkpoint(sdxl_single_file, vae=vaes.ldm).vae.scaling_factor == 0.13025
    assert open_checkpoint(sd1_single_file, vae=sdxl_folder / "vae").vae.scaling_factor == 0.18215


def test_no_vae_checkpoints(vaes, sd1_single_file, sd1_folder, tmp_path):
    """A "noVAE" file says in one line that it needs vae=, and loads with one; so does a folder without vae/."""
    no_vae = relayout(sd1_single_file, tmp_path / "model-noVAE.safetensors", keep=lambda k: not k.startswith(VAE))
    message = assert_one_line_error("has no VAE", open_checkpoint, no_vae)
    assert str(no_vae) in message and "vae=" in message and "--vae" in message
    assert_same_weights(open_checkpoint(no_vae, vae=vaes.ldm), open_checkpoint(vaes.oracle))
    folder = shutil.copytree(sd1_folder, tmp_path / "no-vae-folder")
    shutil.rmtree(folder / "vae")
    assert_one_line_error("missing vae/config.json", open_checkpoint, folder)
    assert_same_weights(open_checkpoint(folder, vae=vaes.folder), open_checkpoint(vaes.oracle))


def test_vaes_that_do_not_fit_are_refused(tmp_path, sd1_single_file, sd1_folder, vaes):
    wide = _autoencoder(tmp_path / "flux-like-vae", seed=3, latent_channels=16)
    message = assert_one_line_error("16 latent channels .* takes 4", open_checkpoint, sd1_single_file, vae=wide)
    assert str(wide) in message
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, lora)
    assert_one_line_error("this is a LoRA, not a VAE; vae= takes", open_checkpoint, sd1_single_file, vae=lora)
    unet = sd1_folder / "unet" / VAE_WEIGHTS
    assert_one_line_error("this is a UNet on its own, not a VAE", open_checkpoint, sd1_single_file, vae=unet)
    pickle = tmp_path / "vae.pt"
    pickle.write_bytes(b"not opened")
    assert_one_line_error("pickles", open_checkpoint, sd1_single_file, vae=pickle)
    assert_one_line_error("vae: no such file", open_checkpoint, sd1_single_file, vae=tmp_path / "missing.safetensors")
    extra = relayout(vaes.ldm, tmp_path / "extra.safetensors", extra={"decoder.something.weight": torch.zeros(2)})
    assert_one_line_error("unexpected tensors decoder.something.weight", open_checkpoint, sd1_single_file, vae=extra)
    config = json.loads((vaes.folder / "config.json").read_text())
    tiny = shutil.copytree(vaes.folder, tmp_path / "taesd")
    (tiny / "config.json").write_text(json.dumps(config | {"_class_name": "AutoencoderTiny"}))
    assert_one_line_error("AutoencoderTiny, not an AutoencoderKL", open_checkpoint, sd1_single_file, vae=tiny)


def test_vae_files_of_hub_repos():
    vae_repo = ["README.md", "config.json", "diffusion_pytorch_model.bin", VAE_WEIGHTS,
                "diffusion_pytorch_model.fp16.safetensors"]
    assert hub.vae_files(vae_repo, prefer_fp16=False) == ["config.json", VAE_WEIGHTS]
    assert hub.vae_files(vae_repo, prefer_fp16=True) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    pipeline = ["model_index.json", "unet/config.json", f"unet/{VAE_WEIGHTS}", "vae/config.json", f"vae/{VAE_WEIGHTS}",
                "v1-5-pruned.safetensors"]
    assert hub.vae_files(pipeline, prefer_fp16=False) == ["vae/config.json", f"vae/{VAE_WEIGHTS}"]
    assert hub.vae_files(["config.json", "diffusion_pytorch_model.bin"], prefer_fp16=False) == []


def test_a_hub_vae_is_fetched_and_named(monkeypatch, vaes, sd1_single_file):
    import huggingface_hub

    asked = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id: ["config.json", VAE_WEIGHTS, "diffusion_pytorch_model.bin"])

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked[repo_id] = allow_patterns
        return str(vaes.folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert hub.resolve_vae("owner/tiny-vae") == vaes.folder
    assert asked == {"owner/tiny-vae": ["config.json", VAE_WEIGHTS]}
    pipe = sdkit.load(sd1_single_file, backend="torch", device="cpu", vae="owner/tiny-vae")
    assert pipe.checkpoint.vae_name == "owner/tiny-vae"
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: ["README.md", "x.ckpt"])
    with pytest.raises(HubError, match="owner/other: not a diffusers VAE repo"):
        hub.resolve_vae("owner/other")


def _generate(pipe, **kwargs):
    image, = pipe.generate("a red house", "", steps=3, seed=3, width=64, height=64, sampler="euler", **kwargs)
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_pictures_with_a_vae_file_are_the_oracles(backend, vaes, sd1_single_file):
    """Text-to-image and image-to-image (which encodes with the file's encoder) with vae= equal the oracle
    folder's pictures, and differ from the checkpoint's own VAE's."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    load = lambda model, **kw: sdkit.load(model, backend=backend, device="cpu", dtype="float32", **kw)
    pipe, oracle = load(sd1_single_file, vae=vaes.ldm), load(vaes.oracle)
    text, expected = _generate(pipe), _generate(oracle)
    assert np.abs(text - expected).max() <= 1
    assert np.abs(text - _generate(load(sd1_single_file))).max() > 20  # the replacement is not a no-op
    init = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    from PIL import Image
    init = Image.fromarray(init)
    assert np.abs(_generate(pipe, init_image=init, strength=0.5)
                  - _generate(oracle, init_image=init, strength=0.5)).max() <= 1


def test_autov2_hashes_are_computed_once_per_file(tmp_path, monkeypatch):
    """A1111's AutoV2: 10 hex digits of the whole file's sha256, kept in the JSON cache while the file's size and
    mtime are unchanged."""
    import hashlib
    import os

    from sdkit import hashes

    monkeypatch.setenv("SDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hashes, "_known", {})
    file = tmp_path / "model.safetensors"
    file.write_bytes(os.urandom(3 << 20))
    real = hashlib.sha256(file.read_bytes()).hexdigest()
    assert hashes.autov2(file) == real[:10]
    cache = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert cache[str(file.resolve())]["sha256"] == real
    # from the cache, in a new process (no memory of it) too: a stored digest is not recomputed
    cache[str(file.resolve())]["sha256"] = "f" * 64
    (tmp_path / "cache" / "hashes.json").write_text(json.dumps(cache))
    monkeypatch.setattr(hashes, "_known", {})
    assert hashes.autov2(file) == "f" * 10
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # changed: hashed again
    assert hashes.autov2(file) == real[:10]
    assert json.loads((tmp_path / "cache" / "hashes.json").read_text())[str(file.resolve())]["sha256"] == real


def test_model_and_vae_hashes_in_the_metadata(vaes, sd1_single_file, tmp_path):
    """`Model hash`, `VAE hash` and `VAE` (the file's name) as A1111 writes them, in its order; read back under
    those names. Without vae= there is no VAE entry; a folder has no hash."""
    from sdkit import hashes

    pipe = sdkit.load(sd1_single_file, backend="torch", device="cpu", vae=vaes.ldm)
    image, = pipe.generate("a red house", steps=1, seed=3, width=64, height=64)
    text = image.info["parameters"]
    model_hash, vae_hash = hashes.autov2(sd1_single_file), hashes.autov2(vaes.ldm)
    assert (f"Model hash: {model_hash}, Model: tiny-sd1, VAE hash: {vae_hash}, "
            "VAE: vae-ft-mse-840000-ema-pruned.safetensors, ") in text
    stored = sdkit.read_parameters(sdkit.save(image, tmp_path / "a.png"))
    assert stored["Model hash"] == model_hash and stored["VAE hash"] == vae_hash
    assert stored["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    plain = sdkit.load(vaes.oracle, backend="torch", device="cpu").generate("a", steps=1, width=64, height=64)[0]
    assert "hash" not in plain.info["parameters"] and "VAE" not in plain.info["parameters"]


def test_cli_vae_and_from_restores_it(vaes, sd1_single_file, tmp_path, gen, monkeypatch):
    """--vae reaches load; --from finds the stored VAE by name in $SDKIT_VAE_DIRS (or next to the model), checks
    its hash, and names it when it cannot find it; a model file of another hash is named too."""
    from PIL import Image, PngImagePlugin

    from sdkit import hashes

    code, _, err = gen("a red house", "-m", sd1_single_file, *FAST, "-s", "4", "--vae", vaes.ldm, "-o", "v.png")
    assert code == 0, err
    made = sdkit.read_parameters(tmp_path / "v.png")
    assert made["VAE"] == vaes.ldm.name
    monkeypatch.setenv("SDKIT_VAE_DIRS", str(vaes.ldm.parent))
    code, _, err = gen("--from", "v.png", "-m", sd1_single_file, *FAST, "-o", "again.png")
    assert code == 0 and "warning" not in err, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(tmp_path / "v.png")))
    assert sdkit.read_parameters(tmp_path / "again.png")["VAE hash"] == made["VAE hash"]

    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(vaes.diffusers, other / vaes.ldm.name)  # the same name, another file
    monkeypatch.setenv("SDKIT_VAE_DIRS", str(other))
    text = Image.open(tmp_path / "v.png").info["parameters"]
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text.replace(made["Model hash"], "0123456789"))
    Image.new("RGB", (64, 64)).save(tmp_path / "other.png", pnginfo=info)
    code, _, err = gen("--from", "other.png", "-m", sd1_single_file, *FAST, "-o", "other-out.png")
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"sdkit-gen: warning: VAE {vaes.ldm.name!r}: {other / vaes.ldm.name} has hash "
        f"{hashes.autov2(vaes.diffusers)}, the image was made with {made['VAE hash']}",
        f"sdkit-gen: warning: {sd1_single_file} has Model hash {made['Model hash']}, the image was made with "
        "0123456789"]
    monkeypatch.delenv("SDKIT_VAE_DIRS")
    code, _, err = gen("--from", "v.png", "-m", sd1_single_file, *FAST, "-o", "lost.png")
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"sdkit-gen: warning: VAE {vaes.ldm.name!r} is not next to the model nor in $SDKIT_VAE_DIRS: the model's "
        "own VAE is used (pass --vae FILE)"]
    assert "VAE" not in sdkit.read_parameters(tmp_path / "lost.png")
    code, out, err = gen("a", "-m", sd1_single_file, *FAST, "--vae", "missing.safetensors")
    assert (code, out) == (2, "") and err.endswith(
        "\nsdkit-gen: error: vae: no such file or folder: missing.safetensors (nor is it a Hub repo id like "
        "'owner/name')\n")


def test_load_hashes_in_the_background(vaes, sd1_single_file, monkeypatch):
    """sdkit.load starts hashing the checkpoint and VAE files, so generate() finds the digests ready."""
    from sdkit import hashes

    monkeypatch.setattr(hashes, "_known", {})
    monkeypatch.setattr(hashes, "_running", {})
    sdkit.load(sd1_single_file, backend="torch", device="cpu", vae=vaes.ldm)
    assert set(hashes._running) == {str(sd1_single_file.resolve()), str(vaes.ldm.resolve())}
    for thread in hashes._running.values():
        thread.join(60)
    assert {k for k in hashes._known} == set(hashes._running)


def test_stored_vae_names_find_their_safetensors_file(tmp_path, monkeypatch):
    """A1111 writes the VAE's file name; a .ckpt name finds the .safetensors conversion beside it (the pickle is
    never chosen), a file next to the model comes first, a Hub repo id not found as a file is used as is."""
    from sdkit.cli import stored_vae

    for folder in ("models", "vaes"):
        (tmp_path / folder).mkdir()
    model = tmp_path / "models" / "model.safetensors"
    for file in (model, tmp_path / "vaes" / "kl-f8.safetensors", tmp_path / "vaes" / "kl-f8.ckpt",
                 tmp_path / "vaes" / "other.safetensors", tmp_path / "models" / "other.safetensors"):
        file.write_bytes(b"x")
    monkeypatch.setenv("SDKIT_VAE_DIRS", str(tmp_path / "vaes"))
    assert stored_vae({"VAE": "kl-f8.ckpt"}, str(model)) == (str(tmp_path / "vaes" / "kl-f8.safetensors"), [])
    assert stored_vae({"VAE": "other.safetensors"}, str(model)) == (str(tmp_path / "models" / "other.safetensors"), [])
    for repo in ("stabilityai/sd-vae-ft-mse", "owner/vae-v1.5"):
        assert stored_vae({"VAE": repo}, str(model)) == (repo, [])
    # SwarmUI's folder-qualified names are looked for by their last part first
    assert stored_vae({"VAE": "OfficialStableDiffusion/kl-f8"}, str(model)) == (
        str(tmp_path / "vaes" / "kl-f8.safetensors"), [])
    monkeypatch.setenv("SDKIT_VAE_DIRS", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="SDKIT_VAE_DIRS: .*missing.* is not a folder"):
        stored_vae({"VAE": "kl-f8.ckpt"}, str(model))
