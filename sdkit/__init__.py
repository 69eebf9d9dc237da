"""sdkit: Stable Diffusion on PyTorch and MLX from the same safetensors files.

    import sdkit
    pipe = sdkit.load("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image, = pipe.generate("a lighthouse at dawn, oil painting", seed=1)
    sdkit.save(image, "lighthouse.png")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import backends, hashes, hub
from .adapters.embeddings import Embeddings, folders as _embedding_folders
from .adapters.lora import Library as _LoRAs, lora_folders as _lora_folders
from .checkpoint import Checkpoint
from .errors import BackendError, Cancelled, CheckpointError, HubError, SdkitError
from .memory import Memory
from .image_metadata import read_parameters
from .inpaint import outpaint
from .metadata import save
from .pipeline import Pipeline
from .samplers import NAMES as SAMPLERS
from .batch import batch  # after .pipeline; the name is the function, its modules are sdkit.batch.*
from .train import train  # the function; its package stays importable as sdkit.train.data etc.

try:
    __version__ = version("sdkit-diffusion")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = ["load", "train", "batch", "outpaint", "Pipeline", "Memory", "Checkpoint", "read_parameters", "save",
           "SAMPLERS", "SdkitError", "CheckpointError", "HubError", "BackendError", "Cancelled", "__version__"]


def load(model: str | Path, backend: str = "auto", device: str | None = None, dtype: str | None = None, *,
         prediction: str | None = None, compile: bool = False, memory: Memory = Memory(),
         embedding_dirs: str | Path | list[str | Path] | None = None,
         lora_dirs: str | Path | list[str | Path] | None = None, vae: str | Path | None = None) -> Pipeline:
    """Load a model for generation.

    model: a diffusers folder, a single-file .safetensors checkpoint, or a Hugging Face Hub repo id.
    backend: "auto" (mlx on Apple silicon when installed, else torch), "torch" or "mlx".
    device: "cuda", "cuda:1", "mps", "cpu" (torch) or "gpu", "cpu" (mlx); default: the fastest one present.
    dtype: "float32", "float16" or "bfloat16"; default float16 on GPUs, float32 on CPUs.
    prediction: "epsilon" or "v" to override what the checkpoint's config (or a single file's metadata,
    markers or name: see sdkit.checkpoint) says the UNet predicts.
    compile: compile the UNet for the device, trading a one-off compilation at each new image size for faster
    steps (torch: torch.compile, with CUDA graphs on CUDA; mlx compiles on the GPU anyway, this adds the CPU).
    memory: VAE slicing / tiling and attention chunking, each None (the default) chosen per call to fit the
    device's free memory; also `pipe.memory`, which can be changed between calls.
    embedding_dirs: folders of textual-inversion embeddings (.safetensors), each triggered by its file's stem
    in a prompt; default the os.pathsep-separated list in $SDKIT_EMBEDDING_DIRS.
    lora_dirs: folders of LoRA files (.safetensors), named by stem in generate(loras=) and `<lora:NAME:W>` tags;
    default the os.pathsep-separated list in $SDKIT_LORA_DIRS.
    vae: a VAE replacing the checkpoint's: a .safetensors file (LDM names as vae-ft-mse-840000-ema-pruned and
    sdxl_vae ship, or diffusers'), a diffusers folder (an AutoencoderKL's or a pipeline's vae/) or a Hub repo id.
    Checkpoints published without a VAE ("noVAE") need one. The checkpoint's latent scaling factor stays.
    """
    if not isinstance(memory, Memory):
        raise ValueError(f"memory must be an sdkit.Memory, got {type(memory).__name__}")
    library = Embeddings(_embedding_folders(embedding_dirs))
    loras = _LoRAs(_lora_folders(lora_dirs))
    engine = backends.get(backend)(device=device, dtype=dtype, compile=compile)
    ckpt = hub.open_model(model, vae=vae, prediction=prediction, prefer_fp16=engine.dtype == "float16")
    hashes.start_for(ckpt)  # Model hash / VAE hash for the images' metadata, in the background
    return Pipeline(ckpt, engine, memory, library, loras)
