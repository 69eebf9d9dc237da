"""AUTOMATIC1111's prompt conditioning transcribed as a test oracle: modules/sd_hijack_clip.py's
FrozenCLIPEmbedderWithCustomWordsBase (tokenize_line, forward, process_tokens), textual_inversion.py's
EmbeddingDatabase lookup, sd_hijack.EmbeddingsWithFixes and sd_emphasis.EmphasisOriginal, written against
transformers' CLIPTokenizer and CLIPTextModel the way A1111 drives them, independently of sdkit's code.
The prompt parser is taken as given (sdkit.prompt.parse is checked against A1111's doctests on its own)."""

from __future__ import annotations

import math

import torch

from sdkit.prompt import parse

CHUNK_LENGTH = 75
COMMA_PADDING_BACKTRACK = 20


class PromptChunk:
    def __init__(self):
        self.tokens, self.multipliers, self.fixes = [], [], []  # fixes: (offset, embedding name)


class Reference:
    """One text encoder as A1111 wraps it. `embeddings`: {name: (n, C) tensor}; `hidden`: None for the last
    layer through the final LayerNorm (SD1 at clip skip 1), else (index into hidden_states, final LayerNorm?)."""

    def __init__(self, tokenizer, model, embeddings: dict | None = None, hidden: tuple[int, bool] | None = None,
                 emphasis: bool = True):
        self.tokenizer, self.model, self.hidden, self.emphasis = tokenizer, model, hidden, emphasis
        vocab = tokenizer.get_vocab()
        self.comma_token = vocab.get(",</w>")
        self.id_start, self.id_end, self.id_pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.embeddings = embeddings or {}
        self.ids_lookup = {}
        for name in self.embeddings:  # EmbeddingDatabase.register_embedding_by_name
            ids = self.tokenize([name])[0]
            self.ids_lookup.setdefault(ids[0], []).append((ids, name))
            self.ids_lookup[ids[0]].sort(key=lambda x: len(x[0]), reverse=True)

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def find_embedding_at_position(self, tokens, offset):
        for ids, name in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset:offset + len(ids)] == ids:
                return name, len(ids)
        return None, None

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (CHUNK_LENGTH + 1)
        chunk.multipliers = [1.0] * (CHUNK_LENGTH + 2)
        return chunk

    def tokenize_line(self, line):
        parsed = parse(line) if self.emphasis else [(line, 1.0)]
        tokenized = self.tokenize([text for text, _ in parsed])
        chunks = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def next_chunk(is_last=False):
            nonlocal token_count, last_comma, chunk
            if is_last:
                token_count += len(chunk.tokens)
            else:
                token_count += CHUNK_LENGTH
            to_add = CHUNK_LENGTH - len(chunk.tokens)
            if to_add > 0:
                chunk.tokens += [self.id_end] * to_add
                chunk.multipliers += [1.0] * to_add
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
            last_comma = -1
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                next_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (COMMA_PADDING_BACKTRACK != 0 and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                      and len(chunk.tokens) - last_comma <= COMMA_PADDING_BACKTRACK):
                    break_location = last_comma + 1
                    reloc_tokens = chunk.tokens[break_location:]
                    reloc_mults = chunk.multipliers[break_location:]
                    chunk.tokens = chunk.tokens[:break_location]
                    chunk.multipliers = chunk.multipliers[:break_location]
                    next_chunk()
                    chunk.tokens = reloc_tokens
                    chunk.multipliers = reloc_mults
                if len(chunk.tokens) == CHUNK_LENGTH:
                    next_chunk()
                name, embedding_length_in_tokens = self.find_embedding_at_position(tokens, position)
                if name is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                emb_len = len(self.embeddings[name])
                if len(chunk.tokens) + emb_len > CHUNK_LENGTH:
                    next_chunk()
                chunk.fixes.append((len(chunk.tokens), name))
                chunk.tokens += [0] * emb_len
                chunk.multipliers += [weight] * emb_len
                position += embedding_length_in_tokens
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count

    def target_token_count(self, token_count):
        return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH

    @torch.no_grad()
    def forward(self, text: str):
        """One prompt -> (77 * n, C) hidden states, and the pooled output of the first chunk (or None)."""
        chunks, _ = self.tokenize_line(text)
        zs, pooled = [], None
        for chunk in chunks:
            z, pool = self.process_tokens([chunk.tokens], [chunk.multipliers], [chunk.fixes])
            zs.append(z)
            pooled = pool if pooled is None else pooled
        return torch.hstack(zs)[0], None if pooled is None else pooled[0]

    def process_tokens(self, batch_tokens, batch_multipliers, batch_fixes):
        tokens = torch.asarray(batch_tokens)
        if self.id_end != self.id_pad:  # SD2 / SDXL's second encoder: pad after the first end token
            for pos in range(len(batch_tokens)):
                index = batch_tokens[pos].index(self.id_end)
                tokens[pos, index + 1:] = self.id_pad
        z, pooled = self.encode_with_fixes(tokens, batch_fixes)
        if self.emphasis:  # EmphasisOriginal
            multipliers = torch.asarray(batch_multipliers)
            original_mean = z.mean()
            z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
            z = z * (original_mean / z.mean())
        return z, pooled

    def encode_with_fixes(self, tokens, batch_fixes):
        """EmbeddingsWithFixes: the embedding's vectors replace the token embeddings after each fix's offset."""
        text_model = getattr(self.model, "text_model", self.model)  # transformers 5: CLIPTextModel is one
        layer = text_model.embeddings.token_embedding
        inputs = layer(tokens)
        rows = []
        for fixes, tensor in zip(batch_fixes, inputs):
            for offset, name in fixes:
                emb = self.embeddings[name].to(tensor.dtype)
                n = min(tensor.shape[0] - offset - 1, emb.shape[0])
                tensor = torch.cat([tensor[0:offset + 1], emb[0:n], tensor[offset + 1 + n:]])
            rows.append(tensor)
        embeddings = text_model.embeddings
        embeddings.token_embedding = _Fixed(torch.stack(rows))  # as A1111 wraps it
        try:
            out = self.model(input_ids=tokens, output_hidden_states=True)
        finally:
            embeddings.token_embedding = layer
        if self.hidden is None:
            z = out.last_hidden_state
        else:
            index, final_norm = self.hidden
            z = out.hidden_states[index]
            z = text_model.final_layer_norm(z) if final_norm else z
        return z, getattr(out, "text_embeds", None)


class _Fixed(torch.nn.Module):
    def __init__(self, inputs: torch.Tensor):
        super().__init__()
        self.inputs = inputs

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inputs
