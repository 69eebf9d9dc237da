"""Textual-inversion embeddings: the files (A1111's emb_params, SDXL's clip_l/clip_g, diffusers' learned_embeds),
folders and names, and the pictures, against diffusers' load_textual_inversion on the same vectors (conditioning
at 1e-5 on torch and MLX, images within 3/255), and against tests/a1111.py (SDXL's pooled output, which A1111
reads at <|endoftext|> and diffusers at the largest id: an embedding's)."""

import hashlib
import os

import numpy as np
import pytest
import torch
from a1111 import Reference
from fixtures import diffusers_pipeline
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from test_conditioning import encode, load
from test_parity_torch import assert_close, draw, seeded_noise
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

import sdkit
from sdkit import conditioning
from sdkit.adapters.embeddings import Embeddings, folders, read_embedding
from sdkit.config import TextEncoderConfig
from sdkit.errors import CheckpointError
from sdkit.tokenizer import Tokenizer

BACKENDS = ["torch", "mlx"]
PROMPT, NEGATIVE = "a photo of myemb next to TokEmb, red", "ugly tokemb, myemb"
THEIR_PROMPT, THEIR_NEGATIVE = "a photo of <myemb> next to <tokemb>, red", "ugly <tokemb>, <myemb>"


def short_hashes(folder):
    """name -> the first 12 hex digits of the file's sha256, as A1111's TI hashes."""
    return {f.stem: hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in folder.glob("*.safetensors")}


def vectors(n, width, seed):
    return 0.5 * torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd1(sd1_folder, tmp_path_factory):
    """(embedding folder, diffusers pipeline with the same embeddings loaded): myemb is A1111's format with two
    vectors (fp16), tokemb diffusers' with one."""
    folder = tmp_path_factory.mktemp("embeddings")
    save_file({"emb_params": vectors(2, 64, 1).half()}, folder / "myemb.safetensors")
    save_file({"<tokemb>": vectors(1, 64, 2)[0]}, folder / "tokemb.safetensors")
    theirs = diffusers_pipeline(sd1_folder)
    theirs.load_textual_inversion(folder / "myemb.safetensors", token="<myemb>")
    theirs.load_textual_inversion(folder / "tokemb.safetensors", token="<tokemb>")
    return folder, theirs


@pytest.fixture(scope="module")
def sdxl(sdxl_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings-xl")
    clip_l, clip_g = vectors(2, 64, 3), vectors(2, 128, 4)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, folder / "xlemb.safetensors")
    theirs = diffusers_pipeline(sdxl_folder)
    theirs.load_textual_inversion(clip_l, token="<xlemb>", text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer)
    theirs.load_textual_inversion(clip_g, token="<xlemb>", text_encoder=theirs.text_encoder_2,
                                  tokenizer=theirs.tokenizer_2)
    return folder, theirs


@pytest.mark.parametrize("backend", BACKENDS)
def test_sd1_conditioning_as_diffusers(sd1_folder, sd1, backend):
    folder, theirs = sd1
    pipe = sdkit.load(sd1_folder, backend=backend, device="cpu", dtype="float32", embedding_dirs=[folder])
    enc = encode(pipe, [NEGATIVE, PROMPT], embeddings=pipe.embeddings)
    with torch.no_grad():
        expected = [theirs.encode_prompt(t, "cpu", 1, False)[0][0].numpy() for t in (THEIR_NEGATIVE, THEIR_PROMPT)]
    for got, want in zip(enc.contexts, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert enc.embeddings == [short_hashes(folder), short_hashes(folder)]


def test_sd1_picture_as_diffusers(sd1_folder, sd1):
    folder, theirs = sd1
    ours = sdkit.load(sd1_folder, backend="torch", device="cpu", dtype="float32", embedding_dirs=[folder])
    width, height, steps, seed = 48, 32, 3, 5
    shape = (4, height // 8, width // 8)
    expected = theirs(THEIR_PROMPT, negative_prompt=THEIR_NEGATIVE, width=width, height=height,
                      num_inference_steps=steps, guidance_scale=7.5,
                      latents=draw(seeded_noise(seed, 1, shape), shape)).images
    got = ours.generate(PROMPT, NEGATIVE, width=width, height=height, steps=steps, sampler="pndm", seed=seed)
    assert_close(got, expected)
    params = sdkit.read_parameters(got[0])
    hashes = short_hashes(folder)
    assert params["TI hashes"] == f"myemb: {hashes['myemb']}, tokemb: {hashes['tokemb']}"  # the prompt's first
    assert '"myemb: ' in got[0].info["parameters"]  # quoted, as A1111 writes it


@pytest.fixture(scope="module")
def sdxl_reference(sdxl_folder, sdxl):
    """A1111 on transformers for SDXL's second encoder: the pooled output of the first chunk."""
    folder, _ = sdxl
    clip_g = read_embedding(folder / "xlemb.safetensors").vectors["clip_g"]
    return Reference(CLIPTokenizer.from_pretrained(sdxl_folder / "tokenizer_2"),
                     CLIPTextModelWithProjection.from_pretrained(sdxl_folder / "text_encoder_2").eval(),
                     {"xlemb": torch.from_numpy(clip_g)}, hidden=(-2, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdxl_conditioning_as_diffusers(sdxl_folder, sdxl, sdxl_reference, backend):
    folder, theirs = sdxl
    pipe = sdkit.load(sdxl_folder, backend=backend, device="cpu", dtype="float32", embedding_dirs=[folder])
    enc = encode(pipe, ["a photo of XLEmb"], embeddings=pipe.embeddings)
    with torch.no_grad():
        context, _, _, _ = theirs.encode_prompt("a photo of <xlemb>", device="cpu", do_classifier_free_guidance=False)
    np.testing.assert_allclose(enc.contexts[0], context[0].numpy(), rtol=1e-5, atol=1e-5)
    _, pooled = sdxl_reference.forward("a photo of xlemb")
    np.testing.assert_allclose(enc.pooled[0], pooled.numpy(), rtol=1e-5, atol=1e-5)


def test_sdxl_picture_as_diffusers(sdxl_folder, sdxl, sdxl_reference):
    folder, theirs = sdxl
    ours = sdkit.load(sdxl_folder, backend="torch", device="cpu", dtype="float32", embedding_dirs=[folder])
    with torch.no_grad():
        context, negative, _, negative_pooled = theirs.encode_prompt("a photo of <xlemb>", device="cpu",
                                                                      negative_prompt="blurry")
    _, pooled = sdxl_reference.forward("a photo of xlemb")
    width, height, steps, seed = 48, 32, 3, 6
    shape = (4, height // 8, width // 8)
    expected = theirs(prompt_embeds=context, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled[None],
                      negative_pooled_prompt_embeds=negative_pooled, width=width, height=height,
                      num_inference_steps=steps, guidance_scale=7.5,
                      latents=draw(seeded_noise(seed, 1, shape), shape)).images
    got = ours.generate("a photo of xlemb", "blurry", width=width, height=height, steps=steps, sampler="euler",
                        seed=seed)
    assert_close(got, expected)


# ---- files, folders, names ----

def test_file_formats(tmp_path):
    save_numpy({"emb_params": np.ones((3, 8), np.float32)}, tmp_path / "a1111.safetensors")
    save_numpy({"<cat-toy>": np.full(8, 2, np.float16)}, tmp_path / "learned_embeds.safetensors")
    save_file({"emb_params": torch.full((2, 8), 1.5, dtype=torch.bfloat16)}, tmp_path / "bf16.safetensors")
    a, d, b = (read_embedding(tmp_path / f"{n}.safetensors") for n in ("a1111", "learned_embeds", "bf16"))
    assert (a.name, len(a), a.vectors[None].shape) == ("a1111", 3, (3, 8))
    assert (d.name, len(d)) == ("learned_embeds", 1) and (d.vectors[None] == 2).all()
    assert b.vectors[None].dtype == np.float32 and (b.vectors[None] == 1.5).all()
    with pytest.raises(CheckpointError, match="is 8 wide, this model's text encoder 768"):
        a.for_encoder(None, 768)
    with pytest.raises(CheckpointError, match="holds one tensor; SDXL takes clip_l and clip_g"):
        a.for_encoder("clip_l", 8)


@pytest.mark.parametrize("tensors,message", [
    ({"a": np.ones((1, 8), np.float32), "b": np.ones((1, 8), np.float32)}, "holds 2 tensors"),
    ({"emb_params": np.ones((1, 2, 8), np.float32)}, "F32 \\[1, 2, 8\\]"),
    ({"emb_params": np.ones((1, 8), np.int64)}, "I64"),
    ({"clip_l": np.ones((1, 8), np.float32), "clip_g": np.ones((2, 8), np.float32)},
     "clip_l has 1 vectors but clip_g 2"),
])
def test_files_that_are_no_embedding(tmp_path, tensors, message):
    save_numpy(tensors, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match=message):
        read_embedding(tmp_path / "x.safetensors")


def test_pickles_are_refused_unopened(tmp_path):
    (tmp_path / "EasyNegative.pt").write_bytes(b"not even a pickle")
    with pytest.raises(CheckpointError, match="pickles.*never opens them"):
        read_embedding(tmp_path / "EasyNegative.pt")


def test_folders_and_names(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    (second / "nested").mkdir(parents=True)
    first.mkdir()
    for path in (first / "same.safetensors", second / "same.safetensors", second / "other.pt",
                 second / "other.safetensors", second / "pickled.bin", second / "nested" / "deep.safetensors",
                 second / "notes.txt", second / "other.preview.png", second / "._same.safetensors"):
        path.write_bytes(b"")
    found = Embeddings([first, second]).files()
    assert found == {"same": first / "same.safetensors", "other": second / "other.safetensors",
                     "pickled": second / "pickled.bin"}
    monkeypatch.setenv("SDKIT_EMBEDDING_DIRS", f"{first}{os.pathsep}{second}")
    assert folders(None) == (first, second)
    monkeypatch.setenv("SDKIT_EMBEDDING_DIRS", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match="SDKIT_EMBEDDING_DIRS: .*gone' is not a folder"):
        folders(None)
    with pytest.raises(ValueError, match="embedding_dirs: .*gone' is not a folder"):
        sdkit.load(tmp_path, embedding_dirs=tmp_path / "gone")


def test_files_changed_on_disk_are_seen(tmp_path):
    tokenizer = Tokenizer.bundled("clip-l")
    find = lambda: conditioning.matcher(conditioning.Tower(tokenizer, None, TextEncoderConfig(hidden_size=8)), library)
    library = Embeddings([tmp_path])
    assert conditioning.token_usage("a thing", tokenizer, find=find()) == (2, 75)
    (tmp_path / "thing.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match="pickles"):
        assert conditioning.token_usage("a thing", tokenizer, find=find()) == (2, 75)
    save_numpy({"emb_params": np.ones((3, 8), np.float32)}, tmp_path / "thing.safetensors")
    assert conditioning.token_usage("a thing", tokenizer, find=find()) == (4, 75)
    save_numpy({"emb_params": np.ones((5, 8), np.float32)}, tmp_path / "thing.safetensors")
    assert conditioning.token_usage("a thing", tokenizer, find=find()) == (6, 75)


def test_unusable_embeddings_are_read_as_text_with_a_warning(sd1_folder, tmp_path):
    save_numpy({"clip_l": np.ones((1, 64), np.float32), "clip_g": np.ones((1, 128), np.float32)},
               tmp_path / "xlonly.safetensors")
    save_numpy({"emb_params": np.ones((1, 1024), np.float32)}, tmp_path / "sdtwo.safetensors")
    (tmp_path / "pickled.pt").write_bytes(b"")
    pipe = load(sd1_folder, "torch")
    pipe.embeddings = Embeddings([tmp_path])
    for name, message in (("xlonly", r"is an SDXL one \(clip_l, clip_g\); this model has one text encoder"),
                          ("sdtwo", "is 1024 wide, this model's text encoder 64"), ("pickled", "pickles")):
        text = f"a {name} b"
        with pytest.warns(UserWarning, match=f"{message}.*'{name}' is read as text"):
            enc = encode(pipe, [text], embeddings=pipe.embeddings)
        assert np.array_equal(enc.contexts[0], encode(pipe, [text]).contexts[0]) and enc.embeddings == [{}]


def test_token_usage_counts_vectors(sd1_folder, sd1):
    folder, _ = sd1
    pipe = sdkit.load(sd1_folder, backend="torch", device="cpu", embedding_dirs=folder)
    assert pipe.token_usage("myemb myemb tokemb") == (5, 75)
