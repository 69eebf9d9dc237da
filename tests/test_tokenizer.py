"""The CLIP tokenizer: ids identical to transformers' CLIPTokenizer, from every layout a checkpoint ships.

transformers 5 has a single CLIPTokenizer, on the `tokenizers` library (CLIPTokenizerFast is an alias of it):
NFC + whitespace collapsing + lowercase, no ftfy and no BasicTokenizer cleanup. It is the oracle here, fed the
same vocabulary and merges written in each published layout. Ids from open_clip pin the vocabulary itself,
which the oracle cannot check since it reads our files.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

from sdkit.errors import CheckpointError
from sdkit.tokenizer import Tokenizer, bpe_vocab

BUNDLED = Path(__file__).parents[1] / "sdkit" / "data" / "tokenizers"

HARD = [
    "a photo of a cat",
    "",
    "Café crème brûlée à la française",  # composed accents
    "Cafe\u0301 cre\u0300me bru\u0302le\u0301e",  # the same, decomposed (NFD): NFC makes them equal
    "ÅNGSTRÖM Straße İstanbul ǅemal ΣΊΣΥΦΟΣ",  # case mappings beyond ASCII
    "🐱 🎨✨ 👍🏽 👩‍🔬 🇯🇵",  # emoji: skin tone, ZWJ sequence, flag
    "東京タワーの夜景, 한국어 문장, 中文提示词",
    "!!!",
    "wow!!! (great)... a!b ! ! ?!?!",
    "1234567890 3.14 1,000,000 2e10 -7",
    "it's they're we've I'm you'll he'd can't IT'S",
    "   leading  and\ttabs\n\nnewlines \r\n trailing   ",
    "\u00a0no-break\u2003em\u3000ideographic\u2028line-separator",
    "(masterpiece:1.2), [foo|bar], {best quality}, <lora:x:0.8>, (((eyes))), [[[bg]]]",
    "<|startoftext|>a<|endoftext|>b <|ENDOFTEXT|> x!<|endoftext|>!",
    "ﬁne ligature ① ² ™ ½",
    "control\x00null\x7fdel\u200bzero-width\ufeffbom",
    "a red fox in the snow, highly detailed, " * 12,  # ~100 tokens: truncated to 77, EOS last
]


def _write_vocab(folder: Path) -> None:
    vocab, merges = bpe_vocab()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _added(content: str, normalized: bool, special: bool) -> dict:
    return dict(content=content, lstrip=False, normalized=normalized, rstrip=False, single_word=False,
                special=special)


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer folders in the layouts published checkpoints use, with the bundled (published) special token
    files: SD1 / SD2 (vocab.json + merges.txt, old tokenizer_config.json, special_tokens_map.json), SDXL's
    tokenizer and tokenizer_2 (tokenizer_config.json with added_tokens_decoder), and tokenizer.json as
    transformers 5 saves it."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for name, bundled in [("sd1", "clip-l"), ("sd2", "openclip")]:
        _write_vocab(root / name)
        for file in ("special_tokens_map.json", "tokenizer_config.json"):
            shutil.copy(BUNDLED / bundled / file, root / name / file)
        out[name] = root / name
    for name, pad in [("sdxl", "<|endoftext|>"), ("sdxl_2", "!")]:
        _write_vocab(root / name)
        decoder = {"49406": _added("<|startoftext|>", True, False), "49407": _added("<|endoftext|>", False, False)}
        if pad == "!":
            decoder = {"0": _added("!", False, True), **decoder}
        config = dict(add_prefix_space=False, added_tokens_decoder=decoder, bos_token="<|startoftext|>",
                      do_lower_case=True, eos_token="<|endoftext|>", model_max_length=77, pad_token=pad,
                      tokenizer_class="CLIPTokenizer", unk_token="<|endoftext|>")
        (root / name / "tokenizer_config.json").write_text(json.dumps(config))
        out[name] = root / name
    for name in ("sd1", "sd2"):
        CLIPTokenizer.from_pretrained(out[name]).save_pretrained(root / f"{name}_json")
        out[f"{name}_json"] = root / f"{name}_json"
    return out


def _oracle_ids(folder: Path, texts: list[str]) -> np.ndarray:
    ref = CLIPTokenizer.from_pretrained(folder)
    return np.array(ref(texts, padding="max_length", max_length=77, truncation=True).input_ids)


@pytest.mark.parametrize("layout", ["sd1", "sd2", "sdxl", "sdxl_2", "sd1_json", "sd2_json"])
def test_ids_match_transformers(folders, layout):
    if layout.endswith("_json"):
        assert not (folders[layout] / "vocab.json").exists()  # really read from tokenizer.json
    ids = Tokenizer.from_dir(folders[layout])(HARD)
    assert ids.dtype == np.int64 and ids.shape == (len(HARD), 77)
    np.testing.assert_array_equal(ids, _oracle_ids(folders[layout], HARD))


@pytest.mark.parametrize("layout", ["sd1", "sd2", "sdxl", "sdxl_2", "sd1_json", "sd2_json"])
def test_added_tokens_match_transformers(folders, layout):
    """Same added tokens with the same flags: `normalized` decides whether "<|ENDOFTEXT|>" is one token."""
    ours = Tokenizer.from_dir(folders[layout])._tok.get_added_tokens_decoder()
    assert ours == CLIPTokenizer.from_pretrained(folders[layout]).backend_tokenizer.get_added_tokens_decoder()


def test_known_clip_ids():
    """Ids open_clip's SimpleTokenizer gives on the real CLIP vocabulary: they pin bpe_vocab() itself."""
    tok = Tokenizer.bundled("clip-l")
    cases = {
        "a photo of a cat": [320, 1125, 539, 320, 2368],
        "hello, world! how are you?": [3306, 267, 1002, 256, 829, 631, 592, 286],
        "it's a beautiful day": [585, 568, 320, 1215, 575],
        "the year 2024 was interesting": [518, 935, 273, 271, 273, 275, 739, 3628],
        "MacBook Pro 16-inch": [20617, 2630, 272, 277, 268, 6523],
        "  HELLO   World  ": [3306, 1002],
        "!!!": [995],
    }
    for text, ids in cases.items():
        assert tok.encode(text) == ids, text
        np.testing.assert_array_equal(tok([text])[0, : len(ids) + 2], [49406, *ids, 49407])


def test_bpe_vocab():
    vocab, merges = bpe_vocab()
    assert len(vocab) == 49408 and len(merges) == 49152 - 256 - 2
    assert sorted(vocab.values()) == list(range(49408))
    assert (vocab["!"], vocab["!</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (0, 256, 49406, 49407)
    assert all(a + b in vocab for a, b in merges)
    assert bpe_vocab() is bpe_vocab()  # built once


@pytest.mark.parametrize("name, layout", [("clip-l", "sd1"), ("openclip", "sd2")])
def test_bundled_equals_folder(folders, name, layout):
    bundled, folder = Tokenizer.bundled(name), Tokenizer.from_dir(folders[layout])
    np.testing.assert_array_equal(bundled(HARD), folder(HARD))
    assert (bundled.bos_id, bundled.eos_id, bundled.pad_id) == (folder.bos_id, folder.eos_id, folder.pad_id)


def test_pad_conventions():
    clip_l, openclip = Tokenizer.bundled("clip-l"), Tokenizer.bundled("openclip")
    assert (clip_l.max_length, clip_l.bos_id, clip_l.eos_id, clip_l.pad_id) == (77, 49406, 49407, 49407)
    assert (openclip.max_length, openclip.bos_id, openclip.eos_id, openclip.pad_id) == (77, 49406, 49407, 0)
    # SD2's pad "!" is a special token: each "!" is cut out as id 0, where CLIP-L merges them into "!!!</w>"
    np.testing.assert_array_equal(openclip(["!!!"])[0, :6], [49406, 0, 0, 0, 49407, 0])
    np.testing.assert_array_equal(clip_l(["!!!"])[0, :4], [49406, 995, 49407, 49407])
    assert (openclip([""])[0, 2:] == 0).all() and (clip_l([""])[0, 2:] == 49407).all()


def test_normalisation():
    tok = Tokenizer.bundled("clip-l")
    np.testing.assert_array_equal(tok(["Cafe\u0301"]), tok(["café"]))  # NFD == NFC
    np.testing.assert_array_equal(tok([" Hello \t\n  WORLD "]), tok(["hello world"]))


def test_truncation_keeps_eos():
    tok = Tokenizer.bundled("openclip")
    text = "a red fox in the snow, " * 20
    assert tok.count(text) > 75
    row = tok([text])[0]
    assert row[0] == tok.bos_id and row[-1] == tok.eos_id and tok.pad_id not in row
    np.testing.assert_array_equal(row[1:-1], tok.encode(text)[:75])


def test_count(folders):
    ref = CLIPTokenizer.from_pretrained(folders["sd2"])
    tok = Tokenizer.from_dir(folders["sd2"])
    for text in HARD:
        assert tok.count(text) == len(ref(text, add_special_tokens=False).input_ids), text
    assert tok.count("") == 0 and tok.count("a photo of a cat") == 5


def test_embedding_token_beyond_vocab(folders, tmp_path):
    """An added token past the vocabulary (a textual-inversion word) gets the id its file declares."""
    folder = tmp_path / "ti"
    shutil.copytree(folders["sdxl"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["49408"] = _added("<cat-toy>", True, False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["a <cat-toy> on a mat", "<CAT-TOY>", "x<cat-toy>y"]
    ids = Tokenizer.from_dir(folder)(texts)
    assert 49408 in ids[0]
    np.testing.assert_array_equal(ids, _oracle_ids(folder, texts))

    config["added_tokens_decoder"]["49410"] = config["added_tokens_decoder"].pop("49408")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'<cat-toy>' has id 49410"):
        Tokenizer.from_dir(folder)


def test_list_required():
    with pytest.raises(TypeError, match="list of prompts"):
        Tokenizer.bundled("clip-l")("a cat")


def _copy(folders, tmp_path, layout):
    folder = tmp_path / "tok"
    shutil.copytree(folders[layout], folder)
    return folder


@pytest.mark.parametrize("file, content, match", [
    ("merges.txt", None, "merges.txt is missing"),
    ("vocab.json", b'{"a": 0,', "vocab.json: unreadable JSON"),
    ("vocab.json", b'["a", "b"]', "vocab.json: expected a JSON object"),
    ("merges.txt", b"#version: 0.2\ni n\nt h e\n", "merges.txt, line 3: expected two"),
    ("merges.txt", "i n\nq\u1234 z\n".encode(), "merge 'q\u1234' 'z' has a piece missing"),
    ("special_tokens_map.json", b'{"pad_token": "<pad>"}', "special_tokens_map.json: pad_token '<pad>' is not in"),
    ("special_tokens_map.json", b'{"pad_token": 7}', "special_tokens_map.json: pad_token must be a string"),
    ("tokenizer_config.json", b"\xff\xfe", "tokenizer_config.json: unreadable JSON"),
    ("tokenizer_config.json", b'{"added_tokens_decoder": {"x": {}}}', "added_tokens_decoder must map integer ids"),
])
def test_broken_folder(folders, tmp_path, file, content, match):
    folder = _copy(folders, tmp_path, "sd1")
    if content is None:
        (folder / file).unlink()
    else:
        (folder / file).write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        Tokenizer.from_dir(folder)
    assert "\n" not in str(e.value)


def test_broken_tokenizer_json(folders, tmp_path):
    folder = _copy(folders, tmp_path, "sd1_json")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"] = {"type": "WordPiece", "vocab": {"a": 0}}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="tokenizer.json: expected a BPE model with vocab and merges"):
        Tokenizer.from_dir(folder)


def test_missing_folder_and_unknown_bundle(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer folder not found"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="use one of clip-l, openclip"):
        Tokenizer.bundled("clip-g")
