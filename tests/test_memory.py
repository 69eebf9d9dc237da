"""Memory options (sdkit.memory, sdkit.tiling): the automatic choice, VAE slicing and tiling, attention chunking,
on both backends with the tiny models, and through generate() and sdkit.load."""

import dataclasses
import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import sdkit
from sdkit import memory, tiling
from sdkit.config import UNetConfig, VAEConfig
from sdkit.memory import Memory, Workload

BACKENDS = ["torch", pytest.param("mlx", marks=pytest.mark.skipif(importlib.util.find_spec("mlx") is None,
                                                                 reason="mlx is not installed"))]


def sd15(**kw) -> Workload:
    """SD1.5's real topology at 512x512, one image with guidance, float16, attention by a fused kernel."""
    return Workload(**{**dict(unet=UNetConfig(), vae=VAEConfig(), images=1, rows=2, height=512, width=512,
                              itemsize=2, encode=False, holds_scores=lambda head_size: False), **kw})


def smooth_latents(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Spatially correlated latents, as a picture's are: per channel a sum of plane waves 6 to 24 latents long."""
    rng = np.random.default_rng(seed)
    B, C, h, w = shape
    y, x = np.mgrid[:h, :w]
    out = np.zeros(shape, np.float32)
    for b in range(B):
        for c in range(C):
            for _ in range(6):
                wavelength, angle, phase = rng.uniform(6, 24), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
                out[b, c] += np.sin(2 * np.pi / wavelength * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return out / out.std()


def line_jumps(image: np.ndarray, axis: int) -> np.ndarray:
    """(H, W, C) -> for each pair of neighbouring rows (axis 0) or columns (axis 1), how far the whole line
    steps on average: |mean along the line of the difference across it|, the largest over channels. A seam is
    a line that steps far more than the picture's own lines do."""
    return np.abs(np.diff(image, axis=axis).mean(axis=1 - axis)).max(axis=-1)


def overlap_lines(n: int, tile: int, f: int) -> list[int]:
    """Indices into line_jumps of every step within or at the edges of the overlaps of n latents in tiles."""
    spans = tiling.spans(n, tile, tile // 4)
    return [p - 1 for (_, stop), (start, _) in zip(spans, spans[1:]) for p in range(f * start, f * stop + 1)]


class Recorder:
    """A VAE that records the shapes it is called on."""

    def __init__(self, vae):
        self.vae, self.encoded, self.decoded = vae, [], []

    def encode(self, images):
        self.encoded.append(tuple(images.shape))
        return self.vae.encode(images)

    def decode(self, latents):
        self.decoded.append(tuple(latents.shape))
        return self.vae.decode(latents)


@pytest.fixture(scope="module")
def pipes(sd1_folder):
    """backend name -> the tiny SD1 model on its CPU in float32, loaded once."""
    loaded = {}

    def get(backend):
        if backend not in loaded:
            loaded[backend] = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32")
        return loaded[backend]

    return get


# --- Options and the automatic choice (no framework) -----------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(vae_tiling="yes"), "vae_tiling must be True, False or None (auto), got 'yes'"),
    (dict(vae_slicing=1), "vae_slicing must be True, False or None (auto), got 1"),
    (dict(attention_chunk=-1), "attention_chunk must be None (auto), 0 (off) or a number of query rows >= 1, got -1"),
    (dict(attention_chunk=True), "attention_chunk must be None (auto), 0 (off)"),
    (dict(attention_chunk=2.5), "attention_chunk must be None (auto), 0 (off)"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        Memory(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_plenty_of_memory_turns_nothing_on():
    assert memory.choose(Memory(), sd15(images=4, rows=8), 2**40) == Memory(False, False, 0)


def test_vae_is_sliced_before_it_is_tiled():
    w = sd15(images=4, rows=8, width=1024, height=1024)
    whole, sliced = memory.vae_bytes(w, False, False), memory.vae_bytes(w, True, False)
    assert whole > sliced > max(memory.vae_bytes(w, True, True), memory.unet_bytes(w, 0))
    assert memory.choose(Memory(), w, whole) == Memory(False, False, 0)
    assert memory.choose(Memory(), w, whole - 1) == Memory(True, False, 0)
    assert memory.choose(Memory(), w, sliced - 1) == Memory(True, True, 0)


def test_attention_is_chunked_only_where_the_scores_are_held():
    w = sd15(width=1024, height=1024, holds_scores=lambda head_size: True)
    whole = memory.unet_bytes(w, 0)
    chunk = memory.choose(Memory(), w, whole - 1).attention_chunk
    assert chunk > 0 and chunk & (chunk - 1) == 0  # a power of two: the largest that fits
    assert memory.unet_bytes(w, chunk) <= whole - 1 < memory.unet_bytes(w, 2 * chunk)
    fused = dataclasses.replace(w, holds_scores=lambda head_size: False)  # no scores held: nothing to chunk
    assert memory.choose(Memory(), fused, whole - 1).attention_chunk == 0


def test_refuses_only_what_does_not_fit_with_every_option_on():
    w = sd15(width=2048, height=2048, holds_scores=lambda head_size: True)
    least = max(memory.vae_bytes(w, True, True), memory.unet_bytes(w, 1))
    assert memory.choose(Memory(), w, least) == Memory(False, True, 1)  # one image: slicing changes nothing
    with pytest.raises(ValueError) as e:
        memory.choose(Memory(), w, least - 1)
    message = str(e.value)
    assert message.startswith("2048x2048 x 1 image(s) needs about ") and "\n" not in message
    assert "even with every memory option on, more than the " in message
    assert message.endswith("available; use a smaller size or fewer images")


def test_fixed_options_are_kept_and_named_when_they_do_not_fit():
    w = sd15(images=2, rows=4)
    assert memory.choose(Memory(vae_tiling=True, attention_chunk=64), w, 2**40) == Memory(False, True, 64)
    with pytest.raises(ValueError) as e:
        memory.choose(Memory(vae_tiling=False), w, memory.vae_bytes(w, True, False) - 1)
    assert "with Memory(vae_slicing=None, vae_tiling=False, attention_chunk=None), more than" in str(e.value)
    assert str(e.value).endswith("or leave the memory options to sdkit (None)")


@pytest.mark.parametrize("tile", [8, 16, 64, 128])
def test_tiles_cover_evenly_and_their_weights_sum_to_one(tile):
    for size in range(1, 5 * tile):
        spans = tiling.spans(size, tile, tile // 4)
        length = spans[0][1] - spans[0][0]
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(stop - start == length <= tile for start, stop in spans)  # no sliver at the border
        assert all(stop - start >= tile // 4 for (_, stop), (start, _) in zip(spans, spans[1:]))
        for scale in (1, 8):
            total = np.zeros(size * scale)
            for (start, stop), weight in zip(spans, tiling.ramps(spans, scale)):
                total[start * scale:stop * scale] += weight
            np.testing.assert_allclose(total, 1, atol=1e-6)


class BlockVAE:
    """A VAE without context, in numpy: each latent decodes to an 8x8 block of one colour, each 8x8 block
    encodes to its mean colour and brightness. Tiling it is exact, so any misplaced or misweighted tile shows."""

    def decode(self, latents: np.ndarray) -> np.ndarray:
        rgb = np.round((np.tanh(latents[:, :3]) / 2 + 0.5) * 255).astype(np.uint8)  # (B, 3, h, w)
        return rgb.repeat(8, axis=2).repeat(8, axis=3).transpose(0, 2, 3, 1)  # (B, 8h, 8w, 3)

    def encode(self, images: np.ndarray) -> np.ndarray:
        B, C, H, W = images.shape
        blocks = images.reshape(B, C, H // 8, 8, W // 8, 8).mean(axis=(3, 5))  # (B, 3, h, w)
        return np.concatenate([blocks, blocks.mean(axis=1, keepdims=True)], axis=1)  # (B, 4, h, w)


@pytest.mark.parametrize("h,w", [(1, 1), (8, 8), (9, 17), (24, 32), (40, 13)])
def test_tiling_is_exact_for_a_vae_without_context(h, w):
    vae, host = BlockVAE(), SimpleNamespace(numpy=np.asarray, asarray=np.asarray)
    config = VAEConfig(sample_size=64)  # tiles of 8 latents overlapping by 2
    latents = np.random.default_rng(6).standard_normal((2, 4, h, w)).astype(np.float32)
    for slicing in (False, True):
        np.testing.assert_array_equal(tiling.decode(vae, config, latents, slicing, True), vae.decode(latents))
    images = np.random.default_rng(7).uniform(-1, 1, (2, 3, 8 * h, 8 * w)).astype(np.float32)
    np.testing.assert_allclose(tiling.encode(vae, host, config, images, True), vae.encode(images), atol=1e-6)


# --- VAE slicing and tiling on the backends -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_slicing_equals_the_batched_decode(pipes, backend):
    pipe = pipes(backend)
    latents = pipe.backend.asarray(smooth_latents((3, 4, 8, 10), seed=1))
    batched = tiling.decode(pipe.vae, pipe.checkpoint.vae, latents, slicing=False, tiling=False)
    sliced = tiling.decode(pipe.vae, pipe.checkpoint.vae, latents, slicing=True, tiling=False)
    assert sliced.shape == batched.shape == (3, 64, 80, 3)
    assert np.abs(sliced.astype(int) - batched).max() <= 1  # float rounding of batch 1 vs 3 only


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_tile_is_the_untiled_decode(pipes, backend):
    pipe = pipes(backend)
    latents = pipe.backend.asarray(smooth_latents((1, 4, 8, 6), seed=2))  # within the VAE's 8-latent tile
    np.testing.assert_array_equal(tiling.decode(pipe.vae, pipe.checkpoint.vae, latents, False, True),
                                  pipe.vae.decode(latents))


@pytest.fixture(scope="module", params=BACKENDS)
def tiled(request, pipes):
    """A 192x256 decode whole and in 2 x 3 tiles of 16 latents overlapping by 4 (the tiny VAE's own tile, 8
    latents, would leave each tile little but border)."""
    pipe = pipes(request.param)
    config = dataclasses.replace(pipe.checkpoint.vae, sample_size=128)
    latents = pipe.backend.asarray(smooth_latents((1, 4, 24, 32), seed=0))
    whole = tiling.decode(pipe.vae, config, latents, False, False)[0].astype(float)
    tiles = tiling.decode(pipe.vae, config, latents, False, True)[0].astype(float)
    return pipe, latents, whole, tiles


def test_tiled_decode_is_seamless(tiled):
    _, latents, whole, tiles = tiled
    for axis in (0, 1):
        inside = line_jumps(whole, axis)[8:-8]  # the picture's edges (zero padding) step unlike its inside
        seams = line_jumps(tiles, axis)[overlap_lines(latents.shape[2 + axis], 16, 8)]
        assert seams.max() <= inside.max(), f"axis {axis}: a tile boundary steps {seams.max():.1f}, the " \
                                            f"untiled picture at most {inside.max():.1f}"


def test_tiled_decode_differs_from_untiled_no_more_than_its_tiles_do(tiled):
    """A tile decoded alone differs from the untiled picture (its own GroupNorm statistics and attention); a
    blend of tiles must not add to that (no tile misplaced or mixed up)."""
    pipe, latents, whole, tiles = tiled
    ys, xs = tiling.spans(latents.shape[2], 16, 4), tiling.spans(latents.shape[3], 16, 4)
    alone = max(np.abs(pipe.vae.decode(latents[:, :, y0:y1, x0:x1])[0] - whole[8 * y0:8 * y1, 8 * x0:8 * x1]).mean()
                for y0, y1 in ys for x0, x1 in xs)
    assert np.abs(tiles - whole).mean() <= alone


def test_tiled_encode_differs_from_untiled_no_more_than_its_tiles_do(tiled):
    pipe, _, picture, _ = tiled
    config = dataclasses.replace(pipe.checkpoint.vae, sample_size=128)
    images = (picture.transpose(2, 0, 1)[None] / 127.5 - 1).astype(np.float32)  # (1, 3, 192, 256)
    whole = pipe.backend.numpy(tiling.encode(pipe.vae, pipe.backend, config, images, False))
    tiles = pipe.backend.numpy(tiling.encode(pipe.vae, pipe.backend, config, images, True))
    assert tiles.shape == whole.shape == (1, 4, 24, 32)
    ys, xs = tiling.spans(24, 16, 4), tiling.spans(32, 16, 4)
    alone = max(np.abs(pipe.backend.numpy(pipe.vae.encode(images[:, :, 8 * y0:8 * y1, 8 * x0:8 * x1]))
                       - whole[:, :, y0:y1, x0:x1]).mean() for y0, y1 in ys for x0, x1 in xs)
    assert 0 < np.abs(tiles - whole).mean() <= alone


# --- Attention chunking on the backends -------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["sd1", "sd2v"])  # sd2v: upcast attention, 64-wide heads
def test_chunked_attention_equals_whole(backend, family, request):
    pipe = sdkit.load(request.getfixturevalue(f"{family}_folder"), backend=backend, device="cpu", dtype="float32")
    rng = np.random.default_rng(4)
    x = pipe.backend.asarray(rng.standard_normal((1, 4, 10, 12), dtype=np.float32))
    context = pipe.backend.asarray(rng.standard_normal((2, 77, pipe.checkpoint.unet.cross_attention_dim),
                                                       dtype=np.float32))
    whole = pipe.backend.numpy(pipe.unet(x, 500.0, context))
    pipe.unet.attention_chunk = 7  # 120 queries at the top level: 18 chunks, the last one short
    chunks = {name.rsplit(".", 1)[-1]: m.chunk for name, m in pipe.unet.model.named_modules()
              if name.endswith(("attn1", "attn2"))}
    assert chunks == {"attn1": 7, "attn2": 0}  # self attention only
    np.testing.assert_allclose(pipe.backend.numpy(pipe.unet(x, 500.0, context)), whole, atol=1e-5, rtol=0)


def test_mlx_chunked_attention_holds_one_chunk_of_scores():
    mx = pytest.importorskip("mlx.core")
    from sdkit_mlx.unet import Attention

    with mx.stream(mx.cpu):  # MLX's CPU attention materialises the (T, T) scores: 2048^2 float32 = 16 MiB
        attention = Attention(64, 1)
        x = mx.random.normal((1, 2048, 64))
        mx.eval(attention.parameters(), x)
        peaks = {}
        for chunk in (0, 128):
            attention.chunk = chunk
            mx.reset_peak_memory()
            before = mx.get_active_memory()
            mx.eval(attention(x))
            peaks[chunk] = mx.get_peak_memory() - before
    assert peaks[0] >= 16 * 2**20 > 4 * peaks[128]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_on_the_cpu_report_available_ram(backend):
    engine = sdkit.backends.get(backend)("cpu", "float32")
    assert 0 < engine.memory_available() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # torch's SDPA on the CPU is a memory-efficient kernel for any head size; MLX's CPU attention is not
    assert engine.attention_holds_scores(64) is (backend == "mlx")


# --- Through generate() and sdkit.load -----------------------------------------------------------------------

def tiny_work(pipe, images=1, width=128, height=96, **kw) -> Workload:
    """The Workload generate() costs for the tiny model with guidance."""
    return Workload(pipe.checkpoint.unet, pipe.checkpoint.vae, images, 2 * images, height, width, 4, False,
                    pipe.backend.attention_holds_scores, **kw)


@pytest.fixture
def pipe(sd1_folder):
    return sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32")


def test_auto_tiles_when_one_image_would_not_fit(pipe, monkeypatch):
    whole, = pipe.generate("a cat", width=128, height=96, steps=1, seed=1)
    monkeypatch.setattr(pipe.backend, "memory_available", lambda: memory.vae_bytes(tiny_work(pipe), False, True))
    pipe.vae = Recorder(pipe.vae)
    tiled, = pipe.generate("a cat", width=128, height=96, steps=1, seed=1)
    assert pipe.vae.decoded == [(1, 4, 7, 7)] * 6  # 12 x 16 latents in 2 x 3 evenly spread tiles (VAE tile: 8)
    assert tiled.size == whole.size == (128, 96)
    assert not np.array_equal(np.asarray(tiled), np.asarray(whole))


def test_auto_slices_a_batch_that_would_not_fit(pipe, monkeypatch):
    batched = pipe.generate("a cat", width=64, height=64, steps=1, seed=1, num_images=2)
    work = tiny_work(pipe, images=2, width=64, height=64)
    monkeypatch.setattr(pipe.backend, "memory_available", lambda: memory.vae_bytes(work, True, False))
    pipe.vae = Recorder(pipe.vae)
    sliced = pipe.generate("a cat", width=64, height=64, steps=1, seed=1, num_images=2)
    assert pipe.vae.decoded == [(1, 4, 8, 8)] * 2
    for a, b in zip(sliced, batched):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b)).max() <= 1


def test_auto_chunks_attention_that_would_not_fit(pipe, monkeypatch):
    whole, = pipe.generate("a cat", width=256, height=192, steps=2, seed=1)
    monkeypatch.setattr(pipe.backend, "attention_holds_scores", lambda head_size: True)  # as on MPS
    work = tiny_work(pipe, width=256, height=192)
    assert memory.unet_bytes(work, 0) > memory.vae_bytes(work, False, False)  # the (T, T) scores, not the VAE
    monkeypatch.setattr(pipe.backend, "memory_available", lambda: memory.unet_bytes(work, 0) - 1)
    pipe.vae = Recorder(pipe.vae)
    chunked, = pipe.generate("a cat", width=256, height=192, steps=2, seed=1)
    assert 0 < pipe.unet.attention_chunk < 32 * 24 and pipe.vae.decoded == [(1, 4, 24, 32)]
    assert np.abs(np.asarray(chunked, dtype=int) - np.asarray(whole)).max() <= 1


def test_too_large_even_with_every_option_on_is_one_line_error(pipe, monkeypatch):
    monkeypatch.setattr(pipe.backend, "memory_available", lambda: 2**20)
    with pytest.raises(ValueError) as e:
        pipe.generate("a cat", width=256, height=256, steps=1)
    assert str(e.value).startswith("256x256 x 1 image(s) needs about ") and "\n" not in str(e.value)
    assert "even with every memory option on, more than the 1 MiB available; use a smaller size" in str(e.value)


def test_options_from_load_and_pipe_memory(sd1_folder):
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", memory=Memory(vae_tiling=True))
    pipe.vae = Recorder(pipe.vae)
    pipe.generate("a cat", width=128, height=96, steps=1, seed=1)  # fits whole; tiled as asked
    assert pipe.vae.decoded == [(1, 4, 7, 7)] * 6
    pipe.memory = Memory(vae_tiling=False)
    pipe.vae.decoded.clear()
    pipe.generate("a cat", width=128, height=96, steps=1, seed=1)
    assert pipe.vae.decoded == [(1, 4, 12, 16)]
    pipe.memory = {"vae_tiling": True}
    with pytest.raises(ValueError, match="pipe.memory must be an sdkit.Memory, got dict"):
        pipe.generate("a cat", width=64, height=64, steps=1)
    with pytest.raises(ValueError, match="memory must be an sdkit.Memory, got str"):
        sdkit.load(sd1_folder, backend="torch", memory="auto")


def test_img2img_encodes_once_and_in_tiles_when_asked(pipe):
    init = Image.fromarray(np.random.default_rng(5).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    pipe.memory = Memory(vae_tiling=True)
    pipe.vae = Recorder(pipe.vae)
    images = pipe.generate("a cat", init_image=init, steps=2, strength=0.5, seed=1, num_images=2)
    assert pipe.vae.encoded == [(1, 3, 56, 56)] * 6  # one picture for the whole batch, in 2 x 3 tiles
    assert [image.size for image in images] == [(128, 96)] * 2
