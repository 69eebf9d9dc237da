"""Prompts -> the UNet's text conditioning, built as AUTOMATIC1111 builds it (its modules/sd_hijack_clip.py).

A prompt is parsed (sdkit.prompt), tokenized piece by piece and cut into chunks of 75 tokens, each encoded as
<|startoftext|> + 75 + <|endoftext|> = 77 positions (padded). A chunk about to overflow within 20 tokens of a
comma ends at that comma instead, and BREAK ends a chunk early. A textual-inversion embedding's stem in the
text is replaced by its vectors, one position each, as ids past the vocabulary that index extra embedding rows
of the text encoder. Every chunk of every prompt goes through each text encoder in one batch; on the host each
chunk's hidden states are multiplied by its tokens' weights and rescaled to the chunk's former mean (A1111's
default "Original" emphasis), and a prompt's chunks are concatenated: (77 * n, C).

A prompt of at most 75 tokens without weights or BREAK is one chunk with exactly the ids and hidden states of
a plain encoding.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import prompt as syntax
from .adapters.embeddings import Embeddings
from .config import TextEncoderConfig
from .errors import CheckpointError
from .interfaces import Array, TextEncoder
from .tokenizer import Tokenizer

CHUNK = 75  # tokens per chunk, between <|startoftext|> and <|endoftext|>
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
SYNTAXES = ("a1111", "plain")

Chunk = tuple[list[int], list[float]]  # up to 75 token ids (before BOS/EOS) and their weights
Find = Callable[[list[int], int], "tuple[list[int], int] | None"]  # (ids, i) -> (ids to insert, ids consumed)


@dataclass(frozen=True)
class Tower:
    """One text encoder with its tokenizer. `key` names its vectors in SDXL embedding files ("clip_l",
    "clip_g"); None for a model with one text encoder."""

    tokenizer: Tokenizer
    encoder: TextEncoder
    config: TextEncoderConfig
    key: str | None = None


@dataclass(frozen=True)
class Conditioning:
    contexts: list[np.ndarray]  # per prompt (77 * n, C): every tower's hidden states, side by side
    pooled: list[np.ndarray | None]  # per prompt (P,): the last tower's pooled output of the first chunk
    embeddings: list[dict[str, str]]  # per prompt: embedding used -> A1111's short hash of its file


def check_syntax(prompt_syntax: str) -> None:
    if prompt_syntax not in SYNTAXES:
        raise ValueError(f"prompt_syntax must be one of {', '.join(map(repr, SYNTAXES))}, got {prompt_syntax!r}")


def pieces(text: str, prompt_syntax: str = "a1111") -> list[tuple[str, float]]:
    """(text, weight) pieces, BREAK markers included: A1111's syntax, or the whole text at weight 1."""
    check_syntax(prompt_syntax)
    return syntax.parse(text) if prompt_syntax == "a1111" else [(text, 1.0)]


def chunk(parsed: list[tuple[str, float]], tokenizer: Tokenizer, find: Find | None = None) -> tuple[list[Chunk], int]:
    """A1111's tokenize_line: pieces -> chunks of at most 75 (id, weight) pairs, and the token count its
    counter shows (75 for each chunk but the last, plus the last chunk's tokens).

    `find(ids, i)` says whether a textual-inversion embedding's name starts at ids[i]: the ids to put in its
    place (one per vector) and how many of `ids` its name takes, or None."""
    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    count = 0
    last_comma = -1  # index in `tokens` of the last comma, -1 if none in this chunk

    def close(last: bool = False) -> None:
        nonlocal tokens, weights, count, last_comma
        count += len(tokens) if last else CHUNK
        chunks.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for (text, weight), ids in zip(parsed, tokenizer.encode_batch([t for t, _ in parsed])):
        if syntax.is_break((text, weight)):
            close()
            continue
        i = 0
        while i < len(ids):
            if ids[i] == tokenizer.comma_id:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                # Full, and a comma among the last 20 tokens: what follows it moves to the next chunk. A1111
                # leaves embedding vectors behind (its fixes do not move): they stay where they were in the
                # closed chunk, over its padding, and the moved tokens hold id 0 in their place.
                cut, vocab = last_comma + 1, tokenizer.vocab_size
                moved = [0 if t >= vocab else t for t in tokens[cut:]], weights[cut:]
                tokens = tokens[:cut] + [t if t >= vocab else tokenizer.eos_id for t in tokens[cut:]]
                weights = weights[:cut] + [1.0] * (CHUNK - cut)
                close()
                tokens, weights = moved
            if len(tokens) == CHUNK:
                close()
            match = find(ids, i) if find is not None else None
            if match is None:
                tokens.append(ids[i])
                weights.append(weight)
                i += 1
                continue
            vectors, consumed = match
            if len(tokens) + len(vectors) > CHUNK:  # an embedding is never split across chunks
                close()
            tokens += vectors
            weights += [weight] * len(vectors)
            i += consumed
    if tokens or not chunks:
        close(last=True)
    return chunks, count


def token_usage(text: str, tokenizer: Tokenizer, prompt_syntax: str = "a1111",
                find: Find | None = None) -> tuple[int, int]:
    """A1111's token counter: (tokens used, tokens the chunks hold), e.g. (80, 150) for a prompt of two
    chunks. Pass the text without <lora:...> tags, as generate() encodes it; Pipeline.token_usage counts the
    pipeline's embeddings too."""
    _, count = chunk(pieces(text, prompt_syntax), tokenizer, find)
    return count, math.ceil(max(count, 1) / CHUNK) * CHUNK


def ids(chunks: list[Chunk], tokenizer: Tokenizer) -> np.ndarray:
    """Chunks -> (n, 77) int64: <|startoftext|>, the chunk's ids, <|endoftext|> up to the end; where the pad
    token differs (SD2, SDXL's second tokenizer) every token after the first <|endoftext|> is the pad (not
    embedding vectors, which A1111 puts in after this)."""
    out = np.full((len(chunks), CHUNK + 2), tokenizer.eos_id, dtype=np.int64)
    out[:, 0] = tokenizer.bos_id
    for row, (tokens, _) in zip(out, chunks):
        row[1 : 1 + len(tokens)] = tokens
        if tokenizer.pad_id != tokenizer.eos_id:
            after = row[int(np.argmax(row == tokenizer.eos_id)) + 1:]  # a view of the row
            after[after < tokenizer.vocab_size] = tokenizer.pad_id
    return out


def weights(chunks: list[Chunk]) -> np.ndarray:
    """Chunks -> (n, 77) float32 token weights; 1 at <|startoftext|>, <|endoftext|> and padding."""
    out = np.ones((len(chunks), CHUNK + 2), dtype=np.float32)
    for row, (_, w) in zip(out, chunks):
        row[1 : 1 + len(w)] = w
    return out


def emphasize(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A1111's "Original" emphasis: z (n, 77, C) * w (n, 77), each chunk then rescaled so that the mean of
    its 77 x C values is what it was. Chunks of weight 1 come back untouched."""
    if (w == 1).all():
        return z
    mean = z.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    z = z * w[:, :, None]
    return (z * (mean / z.mean(axis=(1, 2), keepdims=True, dtype=np.float64))).astype(np.float32)


def encode(texts: Sequence[str], towers: Sequence[Tower], numpy: Callable[[Array], np.ndarray], *,
           prompt_syntax: str = "a1111", layer: int = -1, final_norm: bool = True,
           embeddings: Embeddings | None = None) -> Conditioning:
    """Each text -> its context (77 * n, C) and pooled output, with one text-encoder call per tower.

    layer / final_norm: which hidden state conditions (TextEncoder's arguments); `numpy` turns a backend
    array into numpy (Backend.numpy). Embeddings are matched in every text."""
    parsed = [pieces(t, prompt_syntax) for t in texts]
    used: list[dict[str, str]] = [{} for _ in texts]
    per_tower = []
    for tower in towers:
        vectors = _Vectors(tower, embeddings)
        chunked = []
        for p, seen in zip(parsed, used):
            vectors.seen = seen
            chunked.append(chunk(p, tower.tokenizer, vectors.find)[0])
        per_tower.append((chunked, vectors))

    # Towers chunk alike unless their tokenizers split a text differently (SDXL's second one reads "!" as its
    # pad token): the shorter side gets empty chunks, as A1111 pads a batch of unequal prompts.
    counts = [max(len(chunked[i]) for chunked, _ in per_tower) for i in range(len(texts))]
    contexts: list[list[np.ndarray]] = [[] for _ in texts]
    pooled: list[np.ndarray | None] = [None] * len(texts)
    for tower, (chunked, vectors) in zip(towers, per_tower):
        rows = [c for chunks, n in zip(chunked, counts) for c in chunks + [([], [])] * (n - len(chunks))]
        context, pool = tower.encoder(ids(rows, tower.tokenizer), layer=layer, final_norm=final_norm,
                                      extra=vectors.rows())
        z = emphasize(numpy(context), weights(rows))  # (sum(counts), 77, C)
        pool = None if pool is None else numpy(pool)
        start = 0
        for i, n in enumerate(counts):
            contexts[i].append(z[start : start + n].reshape(n * (CHUNK + 2), -1))
            pooled[i] = None if pool is None else pool[start]  # the last tower's, from the first chunk
            start += n
    return Conditioning([np.concatenate(c, axis=-1) for c in contexts], pooled, used)


def matcher(tower: Tower, embeddings: Embeddings | None) -> Find:
    """chunk()'s `find` for one tower and a set of embedding folders (for token_usage: ids are not encoded)."""
    return _Vectors(tower, embeddings).find


def common_length(contexts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Contexts of n_i chunks each, every one repeated to the least common multiple of the n_i, so they batch
    into one UNet call. Exact: cross-attention over keys each repeated k times is the same softmax average."""
    n = [len(c) // (CHUNK + 2) for c in contexts]
    m = math.lcm(*n)
    return [np.tile(c, (m // k, 1)) for c, k in zip(contexts, n)]


class _Vectors:
    """One tower's embedding vectors for one encode() call: each embedding the texts name gets ids past the
    vocabulary, in order of first use, indexing rows(). `seen` collects the names (-> short hash) found."""

    def __init__(self, tower: Tower, embeddings: Embeddings | None):
        self.tower, self.embeddings = tower, embeddings
        self.lookup = embeddings.triggers(tower.tokenizer) if embeddings is not None else {}
        self.first: dict = {}  # file -> (its first id, vector count, name, short hash)
        self.unusable: set = set()  # files warned about
        self.vectors: list[np.ndarray] = []
        self.next_id = tower.config.vocab_size
        self.seen: dict[str, str] = {}

    def find(self, tokens: list[int], i: int) -> tuple[list[int], int] | None:
        for name_ids, path in self.lookup.get(tokens[i], ()):
            if tuple(tokens[i : i + len(name_ids)]) != name_ids:
                continue
            if path in self.unusable or path not in self.first and not self._add(path):
                continue  # unusable (warned): a shorter name may still match, as in A1111
            start, n, name, short_hash = self.first[path]
            self.seen.setdefault(name, short_hash)
            return list(range(start, start + n)), len(name_ids)
        return None

    def rows(self) -> np.ndarray | None:
        return np.concatenate(self.vectors) if self.vectors else None

    def _add(self, path) -> bool:
        try:
            embedding = self.embeddings.get(path)
            v = embedding.for_encoder(self.tower.key, self.tower.config.hidden_size)
            if len(v) > CHUNK:
                raise CheckpointError(f"embedding {path.name} has {len(v)} vectors, more than the {CHUNK} a "
                                      "prompt chunk holds")
        except (CheckpointError, OSError) as e:
            warnings.warn(f"sdkit: {e}; '{path.stem}' is read as text", stacklevel=2)
            self.unusable.add(path)
            return False
        self.first[path] = (self.next_id, len(v), embedding.name, self.embeddings.short_hash(path))
        self.vectors.append(v)
        self.next_id += len(v)
        return True
