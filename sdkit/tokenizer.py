"""CLIP's byte-level BPE tokenizer, on the `tokenizers` library (the Rust engine transformers uses)."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

DATA = Path(__file__).parent / "data"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character map: printable bytes map to themselves,
    the others to unused code points from 256 on, so BPE never sees whitespace or control bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
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
