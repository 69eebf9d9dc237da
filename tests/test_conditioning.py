"""Weighted and long prompts, BREAK and clip skip on real (tiny) text encoders, torch and MLX.

- Emphasis and chunking against tests/a1111.py's transcription of A1111 run on transformers' CLIPTextModel
  (SD1, SD2, SDXL's two encoders with the pooled output of the first chunk), at 1e-5.
- A prompt without weights or BREAK: bit-identical to a plain encoding of the ids (the code path before
  weighted prompts existed).
- Prompt and negative prompt of different chunk counts, repeated to a common multiple in one UNet batch: the
  same as evaluating each separately.
- clip_skip on both prompts (A1111), against transformers' hidden states; an image against diffusers'
  clip_skip=1 given the same embeddings; SDXL unaffected; metadata.
"""

import numpy as np
import pytest
import torch
from a1111 import Reference
from fixtures import diffusers_pipeline
from test_parity_torch import assert_close, draw, seeded_noise
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import sdkit
from sdkit import conditioning
from sdkit.pipeline import _text_layer

BACKENDS = ["torch", "mlx"]
LONG = ("masterpiece, (a red fox:1.3) in the [snow], " + ", ".join(f"tree number {i}" for i in range(30))
        + " BREAK ((winter)) light, (evening:0.8)")  # 3 chunks: 75 + BREAK + the rest
NEGATIVE = "blurry, (text:1.2)"


def load(folder, backend):
    if backend == "mlx":
        pytest.importorskip("mlx.core", reason="mlx is not installed")
    return sdkit.load(folder, backend=backend, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def references(sd1_folder, sd2v_folder, sdxl_folder):
    """family -> A1111 on transformers, one Reference per text encoder (hidden: A1111's layer choice)."""
    def refs(folder, names, hidden):
        out = []
        for (enc, tok), h in zip(names, hidden):
            cls = CLIPTextModelWithProjection if enc == "text_encoder_2" else CLIPTextModel
            out.append(Reference(CLIPTokenizer.from_pretrained(folder / tok), cls.from_pretrained(folder / enc).eval(),
                                 hidden=h))
        return out
    one = [("text_encoder", "tokenizer")]
    return {"sd1": refs(sd1_folder, one, [None]), "sd2": refs(sd2v_folder, one, [None]),
            "sdxl": refs(sdxl_folder, one + [("text_encoder_2", "tokenizer_2")], [(-2, False), (-2, False)])}


def encode(pipe, texts, clip_skip=1, **kw):
    return conditioning.encode(texts, pipe.towers, pipe.backend.numpy,
                               **_text_layer(pipe.checkpoint.family, clip_skip), **kw)


def a1111(refs, text):
    outs = [ref.forward(text) for ref in refs]
    return torch.cat([z for z, _ in outs], dim=-1).numpy(), outs[-1][1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["sd1_folder", "sd2v_folder", "sdxl_folder"])
def test_weights_chunks_and_break_as_a1111(request, references, model, backend):
    pipe = load(request.getfixturevalue(model), backend)
    texts = [NEGATIVE, LONG, "a (fox:0.5), BREAK"]
    enc = encode(pipe, texts)
    for text, context, pooled in zip(texts, enc.contexts, enc.pooled):
        expected, expected_pooled = a1111(references[pipe.checkpoint.family], text)
        assert context.shape == expected.shape
        np.testing.assert_allclose(context, expected, rtol=1e-5, atol=1e-5)
        if expected_pooled is not None:
            np.testing.assert_allclose(pooled, expected_pooled.numpy(), rtol=1e-5, atol=1e-5)
    assert [len(c) // 77 for c in enc.contexts] == [1, 3, 1]  # a BREAK at the end adds no chunk


def validated(pipe, prompt, negative, **changes):
    """A validated generate() request: 2 euler steps, seed 1, the model's size, unless `changes` say otherwise."""
    args = dict(width=None, height=None, steps=2, guidance_scale=7.5, guidance_rescale=0.0, sampler="euler",
                schedule=None, seed=1, num_images=1, strength=None, micro={}, clip_skip=None, prompt_syntax="a1111")
    return pipe._request(prompt, negative, **(args | changes))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["sd1_folder", "sdxl_folder"])
def test_plain_prompts_are_bit_identical_to_a_plain_encoding(request, model, backend):
    pipe = load(request.getfixturevalue(model), backend)
    prompt, negative = "a red fox in the snow: photo", "blurry, text"
    for n in (1, 2):
        req = validated(pipe, prompt, negative, num_images=n)
        context, added, _ = pipe._encode_prompts(req)
        layer = _text_layer(pipe.checkpoint.family, 1)
        texts = [negative] * n + [prompt] * n
        plain = [enc(tok(texts), **layer) for tok, enc in zip(pipe.tokenizers, pipe.text_encoders)]
        expected = np.concatenate([pipe.backend.numpy(c) for c, _ in plain], axis=-1)
        assert np.array_equal(pipe.backend.numpy(context), expected)
        if added is not None:
            assert np.array_equal(pipe.backend.numpy(added["text_embeds"]), pipe.backend.numpy(plain[-1][1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["sd1_folder", "sdxl_folder"])
def test_unequal_chunk_counts_equal_separate_evaluation(request, model, backend):
    """3 chunks against 2: one UNet batch of 6-chunk contexts gives each prompt's separate result."""
    pipe = load(request.getfixturevalue(model), backend)
    negative = "lowres, " * 40  # 80 tokens: 2 chunks
    req = validated(pipe, LONG, negative, width=64, height=48)
    context, added, _ = pipe._encode_prompts(req)
    assert context.shape[:2] == (2, 6 * 77)
    x = pipe.backend.asarray(np.random.default_rng(0).standard_normal((1, 4, 6, 8), dtype=np.float32))
    batched = pipe.backend.numpy(pipe.unet(x, 500.0, context, added))
    enc = encode(pipe, [negative, LONG])
    for row, (ctx, pooled) in enumerate(zip(enc.contexts, enc.pooled)):
        rows = None if added is None else {k: v[row : row + 1] for k, v in added.items()}
        alone = pipe.backend.numpy(pipe.unet(x, 500.0, pipe.backend.asarray(ctx[None]), rows))
        np.testing.assert_allclose(batched[row], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["sd1_folder", "sd2v_folder"])
def test_clip_skip_applies_to_prompt_and_negative(request, references, model, backend):
    """A1111: hidden_states[-clip_skip] through the final LayerNorm, for both prompts."""
    pipe = load(request.getfixturevalue(model), backend)
    req = validated(pipe, "a red fox", NEGATIVE, clip_skip=2)
    context, _, _ = pipe._encode_prompts(req)
    ref = references[pipe.checkpoint.family][0]
    skipped = Reference(ref.tokenizer, ref.model, hidden=(-2, True))
    for got, text in zip(pipe.backend.numpy(context), [NEGATIVE, "a red fox"]):
        np.testing.assert_allclose(got, skipped.forward(text)[0].numpy(), rtol=1e-5, atol=1e-5)
        assert not np.allclose(got, ref.forward(text)[0].numpy(), atol=1e-3)


def test_clip_skip_2_is_diffusers_clip_skip_1(sd1_folder):
    """The image, against diffusers given embeddings made as its encode_prompt(clip_skip=1) makes them
    (hidden_states[-2] through the final LayerNorm; computed here with transformers, whose 5.x CLIPTextModel
    breaks diffusers' own clip_skip path) for the prompt and the negative: diffusers skips only the prompt's
    layers, A1111 both."""
    ours = load(sd1_folder, "torch")
    theirs = diffusers_pipeline(sd1_folder)
    prompt, negative, width, height, steps = "a red fox in the snow", "blurry, text", 48, 32, 3

    def clip_skip_1(text):
        ids = theirs.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = theirs.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            return theirs.text_encoder.final_layer_norm(hidden)

    prompt_embeds, negative_embeds = clip_skip_1(prompt), clip_skip_1(negative)
    shape = (4, height // 8, width // 8)
    expected = theirs(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, width=width,
                      height=height, num_inference_steps=steps, guidance_scale=7.5,
                      latents=draw(seeded_noise(3, 1, shape), shape)).images
    got = ours.generate(prompt, negative, width=width, height=height, steps=steps, sampler="pndm", seed=3,
                        clip_skip=2)
    assert_close(got, expected)
    assert sdkit.read_parameters(got[0])["clip_skip"] == 2
    assert "Clip skip" not in sdkit.metadata.format_parameters({"clip_skip": 1})  # A1111 writes it only when not 1


def test_sdxl_ignores_clip_skip_as_a1111(sdxl_folder):
    pipe = load(sdxl_folder, "torch")
    contexts = [encode(pipe, [LONG], clip_skip=k).contexts[0] for k in (1, 2, 3)]
    assert np.array_equal(contexts[0], contexts[1]) and np.array_equal(contexts[0], contexts[2])


def test_sdxl_towers_that_chunk_differently(sdxl_folder):
    """SDXL's second tokenizer reads "!" as its pad token ("!!!" is three tokens there, one in the first): the
    first encoder's side gets an empty chunk, as A1111 pads a batch of prompts of unequal chunk counts."""
    pipe = load(sdxl_folder, "torch")
    text = "wow!!! " * 30  # 60 tokens for the first tokenizer, 120 for the second
    assert [len(tok.encode(text)) for tok in pipe.tokenizers] == [60, 120]
    context, empty = encode(pipe, [text]).contexts[0], encode(pipe, [""]).contexts[0]
    assert context.shape == (2 * 77, 64 + 128)
    np.testing.assert_allclose(context[77:, :64], empty[:, :64], rtol=1e-6, atol=1e-6)


def test_plain_syntax_reads_brackets_as_text(sd1_folder):
    pipe = load(sd1_folder, "torch")
    text = "(a red fox:1.5) \\( BREAK b"
    plain, weighted = encode(pipe, [text], prompt_syntax="plain"), encode(pipe, [text])
    ids = pipe.tokenizers[0]([text])
    assert np.array_equal(plain.contexts[0], pipe.backend.numpy(pipe.text_encoders[0](ids)[0])[0])
    assert weighted.contexts[0].shape == (2 * 77, 64)


def test_argument_errors(sd1_folder):
    pipe = load(sd1_folder, "torch")
    with pytest.raises(ValueError, match=r"clip_skip 3 is more than this model's text encoder has layers \(2\)"):
        pipe.generate("a", steps=1, clip_skip=3)
    with pytest.raises(ValueError, match="clip_skip must be an integer >= 1, got 0"):
        pipe.generate("a", steps=1, clip_skip=0)
    with pytest.raises(ValueError, match="prompt_syntax must be one of 'a1111', 'plain', got 'comfy'"):
        pipe.generate("a", steps=1, prompt_syntax="comfy")
    with pytest.raises(ValueError, match="not a number"):
        pipe.generate("a (b:1..2)", steps=1)
    assert pipe.token_usage("a BREAK b") == (76, 150)
    assert pipe.token_usage("(a BREAK b)", prompt_syntax="plain") == (5, 75)
