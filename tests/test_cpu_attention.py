"""cpu_attention.c, the x86 CPU flash-attention kernel, against torch's SDPA (the UNet parity tests run it too)."""

import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdkit_torch import cpu_attention


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    return {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()[2:]}


X86 = platform.machine().lower() in ("x86_64", "amd64") and platform.system() == "Linux"
AVX512 = X86 and {"avx512f", "avx512dq"} <= cpu_flags()
AVX512_BF16 = AVX512 and {"avx512bw", "avx512vl", "avx512_bf16"} <= cpu_flags()
AMX = "amx_bf16" in cpu_flags()


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """_library() built again under the test's environment (an empty cache), and the real one restored after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_attention._library.cache_clear()
    yield
    cpu_attention._library.cache_clear()


def qkv(B, H, T, S, D, dtype, gain=1.0):
    """q and v as head views of (B, T, H, D) projections, as the UNet makes them; k contiguous."""
    g = torch.Generator().manual_seed(T * 1000 + S + D)
    q = (gain * torch.randn(B, T, H, D, generator=g)).to(dtype).transpose(1, 2)
    k = torch.randn(B, H, S, D, generator=g).to(dtype)
    v = torch.randn(B, S, H, D, generator=g).to(dtype).transpose(1, 2)
    return q, k, v


def test_kernel_runs_where_the_cpu_allows():
    """Not skipped on a CPU without AVX-512: there it must decline, and the callers use SDPA."""
    f32, bf16 = (qkv(1, 1, 128, 128, 8, dtype)[0] for dtype in (torch.float32, torch.bfloat16))
    assert cpu_attention.applies(f32, f32, f32) == AVX512
    assert cpu_attention.applies(bf16, bf16, bf16) == (AVX512_BF16 and not AMX)
    odd = qkv(1, 1, 128, 128, 7, torch.bfloat16)[0]
    assert not cpu_attention.applies(odd, odd, odd)  # bfloat16 products go by pairs of dims
    assert not cpu_attention.applies(f32.half(), f32.half(), f32.half())
    small = qkv(1, 1, 32, 32, 8, torch.float32)[0]
    assert not cpu_attention.applies(small, small, small)  # SDPA is faster below MIN_SCORES


SHAPES = [  # (B, heads, queries, keys, head size)
    (2, 8, 300, 77, 40),    # cross attention over a prompt; 40 = 2.5 vectors of 16
    (1, 2, 1100, 1100, 40),  # three key blocks, the last partial: the running max and sum
    (1, 3, 129, 600, 80),   # a query tile of 128 plus one row
    (2, 1, 37, 19, 160),
    (1, 1, 70, 530, 24),
    (1, 2, 5, 3, 2),
    (1, 2, 64, 64, 64),
]


@pytest.mark.skipif(not AVX512, reason="needs AVX-512; test_kernel_runs_where_the_cpu_allows checks it declines")
@pytest.mark.parametrize("shape", SHAPES + [(1, 2, 33, 700, 25)], ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_sdpa(shape):
    q, k, v = qkv(*shape, torch.float32)
    y = cpu_attention.attention(q, k, v)  # whatever the size: applies() declines tiny ones for speed only
    assert y.shape == q.shape and y.transpose(1, 2).is_contiguous()  # (B, T, nh, hs) underneath: heads merge free
    torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v), atol=2e-6, rtol=1e-5)


@pytest.mark.skipif(not AVX512_BF16, reason="the bfloat16 kernel needs AVX512_BF16")  # it runs under AMX too
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bfloat16_matches_float32_attention_of_the_same_inputs(shape):
    q, k, v = qkv(*shape, torch.bfloat16)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    err = (cpu_attention.attention(q, k, v).float() - exact).abs().max().item()
    sdpa = (F.scaled_dot_product_attention(q, k, v).float() - exact).abs().max().item()
    assert err < 1e-2  # probabilities rounded to bfloat16 for the second product, the output to bfloat16
    assert err < 2 * sdpa + 1e-3  # and no worse than torch's own bfloat16 kernel


@pytest.mark.skipif(not AVX512, reason="the kernel needs AVX-512")
def test_large_scores_are_stable():
    """Scores in the hundreds: exp() would overflow without the running max."""
    q, k, v = qkv(1, 2, 200, 1100, 40, torch.float32, gain=60.0)
    torch.testing.assert_close(cpu_attention.attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(not AVX512, reason="the kernel needs AVX-512")
def test_runs_on_torchs_own_openmp_threads():
    """One libgomp in the process: the kernel's is torch's (same soname), not a second pool competing for cores."""
    q, k, v = qkv(1, 2, 256, 256, 40, torch.float32)
    cpu_attention.attention(q, k, v)
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert len({line.split()[-1] for line in maps if "libgomp" in line}) == 1


def test_switched_off_by_environment(monkeypatch, fresh_library):
    monkeypatch.setenv("SDKIT_CPU_ATTENTION", "0")
    q = qkv(1, 1, 128, 128, 8, torch.float32)[0]
    assert not cpu_attention.applies(q, q, q)


@pytest.mark.skipif(not X86, reason="the kernel is only compiled on x86 Linux")
def test_a_failing_compiler_falls_back_to_sdpa_with_a_warning(monkeypatch, fresh_library):
    monkeypatch.setenv("CC", "false")  # exits 1, like a compiler that cannot build the file
    q = qkv(1, 1, 128, 128, 8, torch.float32)[0]
    with pytest.warns(UserWarning, match=r"compiling cpu_attention\.c with false failed.*torch's SDPA"):
        assert not cpu_attention.applies(q, q, q)


@pytest.mark.skipif(not X86, reason="the kernel is only compiled on x86 Linux")
def test_no_compiler_falls_back_to_sdpa_with_a_warning(monkeypatch, tmp_path, fresh_library):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no cc, gcc or clang
    q = qkv(1, 1, 128, 128, 8, torch.float32)[0]
    with pytest.warns(UserWarning, match="no C compiler .* set CC, so CPU attention uses torch's SDPA"):
        assert not cpu_attention.applies(q, q, q)
