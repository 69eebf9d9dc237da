"""How much of a Hub repo has reached the local cache so far: the download progress the window shows."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.constants import HF_HUB_CACHE


def cached_bytes(repo_id: str) -> int:
    """Bytes of the repo's files in the Hugging Face cache, partial downloads (*.incomplete) included."""
    blobs = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "blobs"
    return sum(f.stat().st_size for f in blobs.iterdir() if f.is_file()) if blobs.is_dir() else 0


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
