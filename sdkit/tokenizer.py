"""CLIP's byte-level BPE tokenizer, on the `tokenizers` library (the Rust engine transformers uses).

Text -> 77 ids exactly as transformers' CLIPTokenizer (5.x) makes them: NFC, whitespace runs collapsed to one
space, lowercase; CLIP's split pattern; byte-level BPE whose word-final pieces end in </w>; then
<|startoftext|> ids[:75] <|endoftext|>, padded with the pad token. Added tokens (SD2's "!" pad among them)
are cut out of the text before any of that, so "!!!" is three pad tokens there.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.models import BPE

from .errors import CheckpointError

DATA = Path(__file__).parent / "data"
BUNDLED = ("clip-l", "openclip")
SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")  # in the order transformers adds them
DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>"}  # CLIPTokenizer's, for keys no file sets
# CLIP's word pattern: the special tokens, English contractions, letter runs, single digits, symbol runs.
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character map: printable bytes map to themselves,
    the others to unused code points from 256 on, so BPE never sees whitespace or control bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49408 tokens) and merges, built from bpe_simple_vocab_16e6.txt.gz exactly as
    open_clip's SimpleTokenizer does: the 256 byte characters, the same with </w>, one token per merge,
    then <|startoftext|> and <|endoftext|>."""
    lines = gzip.open(DATA / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # line 0 is "#version"
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


class Tokenizer:
    """Prompts -> (B, 77) int64 token ids for a CLIP text encoder."""

    max_length = 77  # CLIP's context: <|startoftext|> + 75 tokens + <|endoftext|>

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 specials: dict[str, AddedToken], added: Sequence[AddedToken] = ()):
        """specials: SPECIALS -> token; added: the file's added tokens, whose flags win over a special
        token with the same text (as in transformers)."""
        self._tok = _RustTokenizer(BPE(vocab, list(merges), unk_token=specials["unk_token"].content,
                                       continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False))
        self._tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        self._tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        # As transformers adds them, in one call: a special token the file lists among its added tokens keeps
        # the file's flags; of specials sharing a text, the last wins (SD1's plain-string pad "<|endoftext|>"
        # is not `normalized`, so "<|ENDOFTEXT|>" is not that token there, while it is in SD2).
        named, listed = {t.content for t in specials.values()}, {t.content for t in added}
        for t in added:
            t.special = t.special or t.content in named
        self._tok.add_tokens([*added, *(specials[k] for k in SPECIALS if specials[k].content not in listed)])
        self.bos_id, self.eos_id, self.pad_id = (self._tok.token_to_id(specials[k].content)
                                                 for k in ("bos_token", "eos_token", "pad_token"))
        self.comma_id = self._tok.token_to_id(",</w>")  # where A1111 prefers to end a 75-token chunk
        self.vocab_size = self._tok.get_vocab_size()  # ids from here on are not tokens (textual inversion's)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """A tokenizer folder as published: tokenizer.json, or vocab.json + merges.txt, with the special tokens
        of tokenizer_config.json and special_tokens_map.json."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: tokenizer folder not found")
        if (path / "tokenizer.json").is_file():
            vocab, merges, added = _read_tokenizer_json(path / "tokenizer.json")
        else:
            for name in ("vocab.json", "merges.txt"):
                if not (path / name).is_file():
                    raise CheckpointError(f"{path / name} is missing; a tokenizer folder needs tokenizer.json "
                                          "or vocab.json + merges.txt")
            vocab, merges, added = _read_vocab(path / "vocab.json"), _read_merges(path / "merges.txt"), []
        return cls._checked(path, vocab, merges, *_special_tokens(path, vocab, added))

    @classmethod
    def bundled(cls, name: str) -> Tokenizer:
        """The tokenizer of a single-file checkpoint, which carries none: "clip-l" (SD1, SDXL's first encoder;
        pads with <|endoftext|>) or "openclip" (SD2, SDXL's second; pads with "!"). Both use CLIP's BPE."""
        if name not in BUNDLED:
            raise CheckpointError(f"unknown bundled tokenizer {name!r}; use one of {', '.join(BUNDLED)}")
        vocab, merges = bpe_vocab()
        return cls(vocab, merges, *_special_tokens(DATA / "tokenizers" / name, vocab, []))

    @classmethod
    def _checked(cls, path: Path, vocab: dict, merges: list, specials: dict, added: list) -> Tokenizer:
        """Build, reporting a vocabulary that its merges or added tokens contradict as CheckpointError."""
        for a, b in merges:
            if a not in vocab or b not in vocab or a + b not in vocab:
                raise CheckpointError(f"{path}: merge {a!r} {b!r} has a piece missing from the vocabulary")
        tok = cls(vocab, merges, specials, [t for t, _ in added])
        for token, expected in added:
            if tok._tok.token_to_id(token.content) != expected:
                raise CheckpointError(f"{path}: added token {token.content!r} has id {expected}, but the "
                                      f"vocabulary gives it {tok._tok.token_to_id(token.content)}")
        return tok

    def encode(self, text: str) -> list[int]:
        """The ids of `text` alone: no <|startoftext|>/<|endoftext|>, not truncated."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def count(self, text: str) -> int:
        """How many tokens `text` takes (75 fit in one encoding)."""
        return len(self.encode(text))

    def __call__(self, texts: list[str]) -> np.ndarray:
        """texts -> (B, 77) int64: <|startoftext|>, at most 75 ids, <|endoftext|>, then the pad id."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer takes a list of prompts, got one str; wrap it: tok([text])")
        out = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        for row, enc in zip(out, self._tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.bos_id, *enc.ids[: self.max_length - 2], self.eos_id]
            row[: len(ids)] = ids
        return out


def _special_tokens(path: Path, vocab: dict[str, int], file_added: list[tuple[AddedToken, int]]
                    ) -> tuple[dict[str, AddedToken], list[tuple[AddedToken, int]]]:
    """Special and added tokens resolved as transformers resolves them: a tokenizer_config.json with
    `added_tokens_decoder` is the whole truth; an older one is overridden by special_tokens_map.json
    (which is where SD2 says its pad is "!") and takes tokenizer.json's added tokens (`file_added`)."""
    config_file, map_file = path / "tokenizer_config.json", path / "special_tokens_map.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    source = dict.fromkeys(config, config_file)  # key -> the file its value comes from, for errors
    if "added_tokens_decoder" in config:
        decoder = config["added_tokens_decoder"]
        if not isinstance(decoder, dict) or not all(i.isdigit() for i in decoder):
            raise CheckpointError(f"{config_file}: added_tokens_decoder must map integer ids to added tokens")
        added = sorted(((_added_token(config_file, t), int(i)) for i, t in decoder.items()), key=lambda t: t[1])
    else:
        if map_file.is_file():
            special_map = _read_json(map_file)
            config, source = {**config, **special_map}, {**source, **dict.fromkeys(special_map, map_file)}
        added = file_added
    specials = {}
    for key in SPECIALS:
        token = _special_token(source.get(key, path), key, config.get(key) or DEFAULTS[key])
        if token.content not in vocab:
            raise CheckpointError(f"{source.get(key, path)}: {key} {token.content!r} is not in the vocabulary")
        specials[key] = token
    return specials, added


def _special_token(file: Path, key: str, value) -> AddedToken:
    """A special token as written: a plain string (matched before normalisation), or an AddedToken dict."""
    if isinstance(value, str):
        return AddedToken(value, special=True)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
        return AddedToken(value["content"], special=True, **flags)
    raise CheckpointError(f"{file}: {key} must be a string or a {{\"content\": ...}} object, got {value!r}")


def _added_token(file: Path, d) -> AddedToken:
    if not isinstance(d, dict) or not isinstance(d.get("content"), str):
        raise CheckpointError(f"{file}: an added token must be a {{\"content\": ...}} object, got {d!r}")
    flags = {k: d[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in d}
    return AddedToken(d["content"], **flags)


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable JSON ({e})") from None


def _read_vocab(file: Path) -> dict[str, int]:
    return _check_vocab(file, _read_json(file))


def _check_vocab(file: Path, vocab) -> dict[str, int]:
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise CheckpointError(f"{file}: expected a JSON object mapping each token to its integer id")
    return vocab


def _read_merges(file: Path) -> list[tuple[str, str]]:
    """merges.txt: an optional "#version" line, then one "left right" pair per line, highest priority first."""
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise CheckpointError(f"{file}, line {n}: expected two space-separated pieces, got {line!r}")
        merges.append(tuple(pair))
    return merges


def _read_tokenizer_json(file: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[tuple[AddedToken, int]]]:
    """Vocabulary, merges and added tokens of a `tokenizers` serialisation. Its normaliser and pre-tokeniser
    are not used: CLIP's are fixed, and transformers' CLIPTokenizer rebuilds them the same way."""
    spec = _read_json(file)
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or not isinstance(model.get("merges"), list):
        raise CheckpointError(f"{file}: expected a BPE model with vocab and merges, as CLIP's tokenizer has")
    # merges are "left right" strings in older files, [left, right] lists in newer ones
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if any(len(m) != 2 for m in merges):
        raise CheckpointError(f"{file}: every merge must be a pair of pieces")
    added = [(_added_token(file, t), t.get("id")) for t in spec.get("added_tokens") or []]
    if any(not isinstance(i, int) for _, i in added):
        raise CheckpointError(f"{file}: every added token needs an integer id")
    return _check_vocab(file, model.get("vocab")), merges, sorted(added, key=lambda t: t[1])
