"""Attention on x86-64 Linux CPUs with AVX-512 through cpu_attention.c, a flash-attention kernel of our own.

torch's CPU SDPA spends ~1.3 ns per score element at the UNet's head sizes on a 2-core AVX-512 CPU, in float32
and bfloat16 alike. This kernel, on the 4096- and 1024-token layers of a 512x512 image, is 2.1-2.4x faster in
bfloat16 and 1.2-1.6x in float32 (BENCHMARKS.md).

The C file is compiled with the system's C compiler at first use (about a second) into sdkit's cache folder and
loaded with ctypes: no build step at install, no Python headers. It is built with OpenMP, and the libgomp it asks
for by soname is the one torch has already loaded, so the kernel runs on torch's own warm thread pool.

Where there is no compiler or no AVX-512, with SDKIT_CPU_ATTENTION=0, under torch.compile, for tiny problems, or
when gradients are recorded, `applies()` is False and callers use SDPA. bfloat16 also goes to SDPA on CPUs with
AMX, whose tile unit torch's kernel uses (2-3x faster than this one on a 16-core Xeon).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from .autograd import needs_grad

SOURCE = Path(__file__).with_name("cpu_attention.c")
FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp"]
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
MAX_HEAD = 256
# Below this many scores per head the call's fixed costs (~0.1 ms: buffers, packing, waking the threads)
# outweigh the gain: 16 x 77 tokens runs 1.3-1.7x slower than SDPA, 64 x 64 even to 0.6x, 64 x 77 0.6x.
MIN_SCORES = 4096


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sdkit"


@functools.cache
def _library() -> tuple[ctypes.CDLL, int] | None:
    """The compiled kernel and its capability bits (1: float32, 2: bfloat16), or None where it cannot run."""
    if os.environ.get("SDKIT_CPU_ATTENTION", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or platform.system() != "Linux":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return _unavailable("no C compiler (cc, gcc or clang) on PATH; install one (e.g. `apt install gcc`) or set CC")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    path = cache_dir() / f"cpu_attention-{key}.so"
    if not path.exists():
        try:
            _compile(cc, path)
        except subprocess.CalledProcessError as e:
            why = ((e.stderr or "").strip().splitlines() or [f"exit status {e.returncode}"])[-1]
            return _unavailable(f"compiling {SOURCE.name} with {cc} failed ({why})")
        except OSError as e:
            return _unavailable(f"compiling {SOURCE.name} with {cc} failed ({e})")
    lib = ctypes.CDLL(str(path))
    lib.sdkit_attention_caps.restype = ctypes.c_int
    p, i, i64p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)
    lib.sdkit_attention.argtypes = [i, i, i, i, i, i, ctypes.c_float, p, i64p, p, i64p, p, i64p, p, i64p, i]
    lib.sdkit_attention.restype = ctypes.c_int
    caps = lib.sdkit_attention_caps()
    return (lib, caps) if caps else None


def _unavailable(why: str) -> None:
    warnings.warn(f"sdkit: {why}, so CPU attention uses torch's SDPA (1.2-2.5x slower)", stacklevel=4)


def _compile(cc: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Into a temporary file first, then renamed: a concurrent process never loads a half-written library
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True, text=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether attention(q, k, v) should run: CPU float32 (bfloat16 where the CPU has AVX512_BF16 but no AMX)
    tensors of shape (B, nh, T, hs) with contiguous head dims and at least MIN_SCORES scores per head, outside
    torch.compile, with no gradient wanted (the kernel has no backward: its output would be detached)."""
    if (q.device.type != "cpu" or q.dtype not in DTYPES or torch.compiler.is_compiling()
            or needs_grad(q, k, v)):
        return False
    hs = q.shape[-1]
    if hs > MAX_HEAD or (q.dtype == torch.bfloat16 and hs % 2) or any(t.stride(-1) != 1 for t in (q, k, v)):
        return False
    if q.shape[2] * k.shape[2] < MIN_SCORES:
        return False
    lib = _library()
    return lib is not None and bool(lib[1] & (1 << DTYPES[q.dtype]))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v for q (B, nh, T, hs) and k, v (B, nh, S, hs) of any size, where the CPU and
    dtype are as applies() requires.

    Returns (B, nh, T, hs) as a view of a (B, T, nh, hs) tensor, so merging the heads afterwards is free."""
    B, nh, T, hs = q.shape
    S = k.shape[2]
    out = torch.empty(B, T, nh, hs, dtype=q.dtype)
    y = out.transpose(1, 2)  # (B, nh, T, hs)
    lib, _ = _library()

    def strides(t: torch.Tensor):
        return (ctypes.c_int64 * 3)(*t.stride()[:3])

    status = lib.sdkit_attention(DTYPES[q.dtype], B, nh, T, S, hs, hs ** -0.5, q.data_ptr(), strides(q),
                                 k.data_ptr(), strides(k), v.data_ptr(), strides(v), y.data_ptr(), strides(y),
                                 torch.get_num_threads())
    if status:
        raise MemoryError(f"cpu_attention: no memory for the kernel's buffers ({B}x{nh}x{T}x{hs})")
    return y
