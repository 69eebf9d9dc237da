"""A1111's prompt syntax (sdkit.prompt) and chunking (sdkit.conditioning.chunk), without a model.

The parser against the expected values in A1111's own doctests (modules/prompt_parser.py) and further cases
worked out with its parse_prompt_attention; chunking (75-token chunks, comma backtracking, BREAK, embeddings
never split, the token count) against tests/a1111.py's transcription of A1111's tokenize_line on transformers'
CLIPTokenizer, on crafted edge cases and a few hundred random prompts.
"""

import random

import numpy as np
import pytest
from a1111 import Reference
from fixtures import write_tokenizer
from safetensors.numpy import save_file
from transformers import CLIPTokenizer

from sdkit import conditioning
from sdkit.adapters.embeddings import Embeddings
from sdkit.config import TextEncoderConfig
from sdkit.prompt import BREAK, parse, unsupported
from sdkit.tokenizer import Tokenizer

A1111_DOCTESTS = [  # parse_prompt_attention's doctests, verbatim
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]
MORE = [  # worked out with A1111's parse_prompt_attention
    ("", [("", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),  # a colon without a number is text
    ("( word : 1.3 )", [(" word ", 1.3)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:1e3)", [("a:1e3", 1.1)]),  # not A1111's number syntax
    ("[word]", [("word", 0.9090909090909091)]),
    ("((a)", [("a", 1.2100000000000002)]),
    ("[[a] (b:0.5)]", [("a", 0.8264462809917354), (" ", 0.9090909090909091), ("b", 0.45454545454545453)]),
    ("a:1.2)", [("a:1.2)", 1.0)]),  # nothing open: text
    ("a]b)c", [("a]b)c", 1.0)]),
    ("a \\ b", [("a  b", 1.0)]),  # a lone backslash is dropped
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAK", [("", 1.0), BREAK, ("", 1.0)]),
    ("x BREAK\nBREAK y", [("x", 1.0), BREAK, ("", 1.0), BREAK, ("y", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # weighted like text: no longer a BREAK
    ("[a:b:0.5]", [("a:b:0.5", 0.9090909090909091)]),  # prompt editing: not supported, read as A1111's parser does
    ("[a|b]", [("a|b", 0.9090909090909091)]),
]


@pytest.mark.parametrize("text,expected", A1111_DOCTESTS + MORE)
def test_parse_as_a1111(text, expected):
    assert parse(text) == expected


def test_a_weight_that_is_not_a_number_is_an_error():
    with pytest.raises(ValueError, match=r"weight '1\.2\.3'.*not a number"):
        parse("a (b:1.2.3)")
    assert parse("a b:1.2.3)") == [("a b:1.2.3)", 1.0)]  # nothing open: text, as in A1111


def test_unsupported_syntax_is_named():
    assert unsupported("a [cat:dog:0.5] and [red|blue] AND more") == [
        "prompt editing [from:to:when]", "alternation [a|b]", "composable prompts (AND)"]
    assert unsupported("(a:1.2) [b] band, and") == []


# ---- chunking ----

WORDS = ["red", "fox", "snow", "(bright:1.3)", "[dark]", "((shiny))", ",", ",", "BREAK", "masterpiece",
         "detailed", "photograph", "emb1", "two_vec", "fivevec", "EMB1", "a", "of", "lighthouse"]
EMBEDDINGS = {"emb1": 1, "two_vec": 2, "fivevec": 5}  # stem -> vectors
WIDTH = 8


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(sdkit's, transformers') tokenizers for CLIP-L, and a folder of embeddings."""
    root = tmp_path_factory.mktemp("prompt")
    write_tokenizer(root / "clip-l", "clip-l")
    folder = root / "embeddings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in EMBEDDINGS.items():
        save_file({"emb_params": rng.standard_normal((n, WIDTH), dtype=np.float32)}, folder / f"{name}.safetensors")
    return Tokenizer.from_dir(root / "clip-l"), CLIPTokenizer.from_pretrained(root / "clip-l"), folder


VECTOR = -1  # a position an embedding vector takes, whatever id A1111 or sdkit puts there


def a1111_chunks(ref: Reference, text: str):
    """A1111's chunks: 77 ids, weights, and (offset, name) embedding fixes."""
    chunks, count = ref.tokenize_line(text)
    out = []
    for c in chunks:
        tokens = list(c.tokens)
        for offset, name in c.fixes:
            tokens[offset + 1 : offset + 1 + len(ref.embeddings[name])] = [VECTOR] * len(ref.embeddings[name])
        out.append((tokens, np.float32(c.multipliers).tolist(), c.fixes))
    return out, count


def sdkit_chunks(tokenizer: Tokenizer, folder, text: str):
    """sdkit's chunks in the same form: embedding vectors are ids past the vocabulary there."""
    tower = conditioning.Tower(tokenizer, None, TextEncoderConfig(hidden_size=WIDTH))
    find = conditioning.matcher(tower, Embeddings([folder]))
    chunks, count = conditioning.chunk(conditioning.pieces(text), tokenizer, find)
    starts = {start: name for start, _, name, _ in find.__self__.first.values()}
    out = []
    for ids, weights in zip(conditioning.ids(chunks, tokenizer).tolist(), conditioning.weights(chunks).tolist()):
        fixes = [(i - 1, starts[t]) for i, t in enumerate(ids) if t in starts]
        out.append(([VECTOR if t >= tokenizer.vocab_size else t for t in ids], weights, fixes))
    return out, count


def chunk_cases():
    words = lambda n: " ".join(["lighthouse"] * n)
    return [
        "", "a red fox", words(75), words(76), words(150), words(151),
        words(55) + ", " + words(30),  # comma 20 tokens before the end: the chunk ends at it
        words(54) + ", " + words(30),  # 21 tokens before: it does not
        words(74) + ", " + words(5),  # the comma is the 75th token
        words(75) + ", " + words(5),  # the comma would be the 76th
        "BREAK a", "a BREAK", "a BREAK BREAK b", words(75) + " BREAK b", "(a BREAK b)",
        words(73) + " two_vec b", words(74) + " two_vec b", words(72) + " fivevec", words(71) + " fivevec",
        "Emb1 emb1 EMB1, (two_vec:1.5) [fivevec]", "emb1emb1 xemb1 emb12",
        words(60) + ", (" + words(20) + ":1.2), " + words(10),
        words(60) + ", a two_vec " + words(20),  # the embedding moves to the next chunk, its vectors do not
    ]


@pytest.mark.parametrize("text", chunk_cases())
def test_chunks_as_a1111(tokenizers, text):
    ours, theirs, folder = tokenizers
    ref = Reference(theirs, None, {name: np.zeros((n, WIDTH)) for name, n in EMBEDDINGS.items()})
    assert sdkit_chunks(ours, folder, text) == a1111_chunks(ref, text)


def test_random_prompts_chunk_as_a1111(tokenizers):
    ours, theirs, folder = tokenizers
    ref = Reference(theirs, None, {name: np.zeros((n, WIDTH)) for name, n in EMBEDDINGS.items()})
    rng = random.Random(0)
    for _ in range(150):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 200)))
        assert sdkit_chunks(ours, folder, text) == a1111_chunks(ref, text), text


def test_plain_syntax_chunks_without_parsing(tokenizers):
    ours, theirs, folder = tokenizers
    ref = Reference(theirs, None, emphasis=False)
    text = "(a:1.5) BREAK " + " ".join(["b,"] * 60)
    chunks, count = conditioning.chunk(conditioning.pieces(text, "plain"), ours)
    expected, expected_count = ref.tokenize_line(text)
    assert conditioning.ids(chunks, ours).tolist() == [c.tokens for c in expected] and count == expected_count
    assert (conditioning.weights(chunks) == 1).all()


@pytest.mark.parametrize("text,usage", [("", (0, 75)), ("a red fox", (3, 75)), ("a BREAK b", (76, 150)),
                                        (" ".join(["fox"] * 76), (76, 150)), ("two_vec fivevec", (7, 75))])
def test_token_usage(tokenizers, text, usage):
    ours, theirs, folder = tokenizers
    tower = conditioning.Tower(ours, None, TextEncoderConfig(hidden_size=WIDTH))
    assert conditioning.token_usage(text, ours, find=conditioning.matcher(tower, Embeddings([folder]))) == usage
    ref = Reference(theirs, None, {name: np.zeros((n, WIDTH)) for name, n in EMBEDDINGS.items()})
    _, count = ref.tokenize_line(text)
    assert usage == (count, ref.target_token_count(count))


def test_pad_after_the_first_end_token(tmp_path):
    """SD2 and SDXL's second tokenizer pad with "!" after the first <|endoftext|>, as A1111's process_tokens."""
    write_tokenizer(tmp_path, "openclip")
    tok = Tokenizer.from_dir(tmp_path)
    chunks, _ = conditioning.chunk(conditioning.pieces("a red fox"), tok)
    assert conditioning.ids(chunks, tok).tolist() == tok(["a red fox"]).tolist()
    assert tok.pad_id != tok.eos_id
