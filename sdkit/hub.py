"""Model names -> local paths: a folder or .safetensors file as is, a Hub repo id as a cached snapshot.

Downloads go through huggingface_hub (its cache, HF_HOME, HF_HUB_OFFLINE, HF_TOKEN and progress bars), and
fetch only what sdkit reads: model_index.json, the component configs, tokenizer and scheduler files, and one
safetensors weight set per component (the fp16 variant when asked for and published). Never pickles,
never the safety checker, never the multi-GB single files some repos also keep at their root. A VAE repo
(`vae=`: stabilityai/sd-vae-ft-mse, madebyollin/sdxl-vae-fp16-fix) gives its config and one weight set only.
"""

from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import COMPONENTS, Checkpoint, choose_weights, open_checkpoint
from .errors import CheckpointError, HubError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json")


def resolve(model: str, *, prefer_fp16: bool = False) -> Path:
    """An existing path -> itself; "owner/name" -> the local snapshot of that Hub repo (downloaded if needed)."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not REPO_ID.fullmatch(model) or model.endswith((".safetensors", ".ckpt")):
        raise CheckpointError(f"no such file or folder: {model} (nor is it a Hub repo id like 'owner/name')")
    return _snapshot(model, lambda files: needed_files(files, prefer_fp16) if "model_index.json" in files else
                     _not(model, "a diffusers pipeline repo (no model_index.json); download its .safetensors file "
                          "and pass that path"))


def open_model(model: str | Path, *, vae: str | Path | None = None, prediction: str | None = None,
               prefer_fp16: bool = False) -> Checkpoint:
    """sdkit.load's and sdkit.train's `model` and `vae=` -> the Checkpoint (headers only), the VAE resolved first
    so a mistyped path fails before a model download; Hub repo ids become the display names."""
    vae_path = resolve_vae(str(vae), prefer_fp16=prefer_fp16) if vae is not None else None
    vae_name = str(vae) if vae is not None and not Path(vae).expanduser().exists() else None
    name = str(model) if not Path(model).exists() else None
    return open_checkpoint(resolve(str(model), prefer_fp16=prefer_fp16), prediction=prediction,
                           prefer_fp16=prefer_fp16, name=name, vae=vae_path, vae_name=vae_name)


def resolve_vae(vae: str, *, prefer_fp16: bool = False) -> Path:
    """`vae=`: an existing file or folder -> itself; "owner/name" -> the snapshot of that Hub repo's VAE (a
    diffusers AutoencoderKL at the root, or a pipeline's vae/ folder)."""
    path = Path(vae).expanduser()
    if path.exists():
        return path
    if not REPO_ID.fullmatch(vae) or vae.endswith((".safetensors", ".ckpt", ".pt")):
        raise CheckpointError(f"vae: no such file or folder: {vae} (nor is it a Hub repo id like 'owner/name')")
    return _snapshot(vae, lambda files: vae_files(files, prefer_fp16) or _not(
        vae, "a diffusers VAE repo (no config.json or vae/config.json with safetensors weights); download its "
             ".safetensors file and pass that path"))


def vae_files(files: list[str], prefer_fp16: bool) -> list[str]:
    """The files of a Hub repo that make its VAE: a pipeline's vae/ folder, else an AutoencoderKL at the root;
    [] if neither."""
    for folder in ("vae/", ""):
        names = [f.removeprefix(folder) for f in files if f.startswith(folder) and "/" not in f.removeprefix(folder)]
        chosen = choose_weights(names, prefer_fp16)
        if "config.json" in names and chosen and not chosen.endswith(".json"):  # VAEs are never sharded
            return [folder + "config.json", folder + chosen]
    return []


def _not(repo_id: str, what: str):
    raise HubError(f"{repo_id}: not {what}")


def needed_files(files: list[str], prefer_fp16: bool) -> list[str]:
    """The files of a diffusers repo that sdkit reads, out of all the repo's files."""
    wanted = [f for f in files if f in ("model_index.json", "scheduler/scheduler_config.json")]
    for component in COMPONENTS:
        wanted += [f for f in files if f == f"{component}/config.json"]
        names = [f.split("/", 1)[1] for f in files if f.startswith(component + "/") and f.count("/") == 1]
        chosen = choose_weights(names, prefer_fp16)
        if chosen is None:
            continue
        wanted.append(f"{component}/{chosen}")
        if chosen.endswith(".json"):  # a sharded set: its shards carry the stem and variant of the index
            base, variant = re.fullmatch(r"(.+)\.safetensors\.index(\.\w+)?\.json", chosen).groups()
            shard = re.compile(re.escape(base + (variant or "")) + r"-\d+-of-\d+\.safetensors")
            wanted += [f"{component}/{n}" for n in names if shard.fullmatch(n)]
    wanted += [f for f in files if re.fullmatch(r"tokenizer(_2)?/[^/]+", f) and f.split("/")[1] in TOKENIZER_FILES]
    return wanted


def _snapshot(repo_id: str, pick) -> Path:
    """The local snapshot of the files `pick(all the repo's files)` names (it raises HubError for a repo of
    another kind)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        files = HfApi().list_repo_files(repo_id)
    except GatedRepoError:
        raise HubError(f"{repo_id}: the repo is gated; accept its terms on huggingface.co and log in "
                       "(`hf auth login` or HF_TOKEN)") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise HubError(f"{repo_id}: no such repo on the Hugging Face Hub (or it is private: log in)") from None
    except Exception as e:  # offline mode or no network (the HTTP stack's error types vary across versions)
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except LocalEntryNotFoundError:
            raise HubError(f"{repo_id}: not in the Hugging Face cache and the Hub is unreachable "
                           f"({type(e).__name__}); connect once, or pass a local folder or .safetensors file") from None
    patterns = pick(files)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network failure mid-download
        raise HubError(f"{repo_id}: download failed ({type(e).__name__}: {str(e).splitlines()[0]})") from None
