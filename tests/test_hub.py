"""hub.resolve without a network: local paths, the Hub cache offline, and the files a download would fetch."""

import os
import subprocess
import sys
import time

import pytest

from sdkit import hub
from sdkit.checkpoint import open_checkpoint
from sdkit.errors import CheckpointError, HubError

SD15_FILES = [  # stable-diffusion-v1-5's repo listing, abridged
    ".gitattributes", "README.md", "model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors",
    "feature_extractor/preprocessor_config.json", "safety_checker/config.json", "safety_checker/model.safetensors",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
]
COMMON = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
          "text_encoder/config.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
          "tokenizer/tokenizer_config.json", "tokenizer/vocab.json"]


def test_needed_files():
    assert sorted(hub.needed_files(SD15_FILES, prefer_fp16=False)) == sorted(COMMON + [
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"])
    # fp16 where published, the plain file where not (vae)
    assert sorted(hub.needed_files(SD15_FILES, prefer_fp16=True)) == sorted(COMMON + [
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.fp16.safetensors"])


def test_needed_files_sharded():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
             "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
             "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
             "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
             "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
             "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]
    assert [f for f in hub.needed_files(files, prefer_fp16=True) if "unet/diffusion" in f] == files[5:]
    assert [f for f in hub.needed_files(files, prefer_fp16=False) if "unet/diffusion" in f] == files[2:5]


def test_local_paths_resolve_to_themselves(sd1_folder, sd1_single_file):
    assert hub.resolve(str(sd1_folder)) == sd1_folder
    assert hub.resolve(str(sd1_single_file)) == sd1_single_file


@pytest.mark.parametrize("model", ["./missing-folder", "/no/such/model.safetensors", "owner/model.safetensors",
                                   "model.ckpt", "a/b/c"])
def test_neither_path_nor_repo_id(model):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        hub.resolve(model)


def resolve_in_subprocess(model: str, hf_home, tmp_path) -> subprocess.CompletedProcess:
    """huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at import: a fresh interpreter per environment."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = ("import sys; from sdkit import hub, errors\n"
            "try: print(hub.resolve(sys.argv[1]))\n"
            "except errors.HubError as e: print('HubError:', e)")
    return subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def test_offline_and_not_cached(tmp_path):
    start = time.perf_counter()
    result = resolve_in_subprocess("owner/tiny-sd", tmp_path / "hf", tmp_path)
    assert result.stdout.startswith("HubError: owner/tiny-sd: not in the Hugging Face cache"), result.stderr
    assert result.stdout.count("\n") == 1
    assert time.perf_counter() - start < 30


def test_offline_cached_snapshot(sd1_folder, tmp_path):
    """A snapshot laid out as huggingface_hub caches it resolves offline, and opens."""
    repo = tmp_path / "hf" / "hub" / "models--owner--tiny-sd"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / sha
    for file in sd1_folder.rglob("*"):
        if file.is_file():
            (snapshot / file.relative_to(sd1_folder)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file.relative_to(sd1_folder)).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    result = resolve_in_subprocess("owner/tiny-sd", tmp_path / "hf", tmp_path)
    assert result.stdout.strip() == str(snapshot), result.stdout + result.stderr
    assert open_checkpoint(snapshot, name="owner/tiny-sd").name == "owner/tiny-sd"


def test_unreachable_hub_is_a_hub_error(monkeypatch, tmp_path):
    """No network (not offline mode): listing fails, the cache has nothing -> HubError, not a traceback."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    def not_cached(*args, **kwargs):
        assert kwargs.get("local_files_only")
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(HubError, match="unreachable"):
        hub.resolve("owner/tiny-sd")
