"""CLIP text transformer (Radford et al. 2021): ViT-L/14 (SD1, quick_gelu), OpenCLIP ViT-H/14 and bigG (SD2, SDXL;
gelu). Attribute paths follow transformers' CLIPTextModel without its 'text_model.' prefix."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sdkit.config import TextEncoderConfig
from sdkit.errors import CheckpointError

EOS = 49407  # <|endoftext|> in both CLIP BPE vocabularies; the pooled output is read at its first position


def quick_gelu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": nn.gelu}  # nn.gelu is the exact (erf) GELU, as transformers'


class Embeddings(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_length, config.hidden_size)

    def __call__(self, ids: mx.array, extra: mx.array | None = None) -> mx.array:
        """ids (B, T) -> (B, T, C); ids past the vocabulary index the rows of `extra` (textual inversion)."""
        if extra is None:
            x = self.token_embedding(ids)
        else:
            vocab = self.token_embedding.weight.shape[0]
            x = mx.where((ids < vocab)[..., None], self.token_embedding(mx.minimum(ids, vocab - 1)),
                         extra[mx.maximum(ids - vocab, 0)])
        return x + self.position_embedding.weight[: ids.shape[1]]


class SelfAttention(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)
        self.v_proj = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, c)

    def __call__(self, x: mx.array) -> mx.array:
        B, T, C = x.shape
        q, k, v = (p(x).reshape(B, T, self.num_heads, -1).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask="causal")
        return self.out_proj(y.transpose(0, 2, 1, 3).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SelfAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def __call__(self, x: mx.array) -> mx.array:
        # Causal self attention
        y = self.layer_norm1(x)
        y = self.self_attn(y)
        x = x + y

        # Feed forward
        y = self.layer_norm2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layers = [EncoderLayer(config) for _ in range(config.num_layers)]


class CLIPTextModel(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"text encoder hidden_act {config.hidden_act!r} is not supported; "
                                  f"use one of {sorted(ACTIVATIONS)}")
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def __call__(self, ids: mx.array, layer: int = -1, final_norm: bool = True,
                 extra: mx.array | None = None) -> tuple[mx.array, mx.array | None]:
        """ids (B, T) -> context (B, T, C): the output of encoder layer `layer`, through the final LayerNorm when
        final_norm; pooled (B, P): the projected, final-normed last layer's output at the first EOS, or None.
        extra (E, C): embedding rows for ids vocab_size .. vocab_size + E - 1."""
        n = len(self.encoder.layers)
        if not -n <= layer < n:
            raise ValueError(f"text encoder layer {layer} does not exist; use -1 .. -{n} (this encoder has {n})")
        keep = layer % n  # index of the layer whose output is the context
        projection = "text_projection" in self
        x = self.embeddings(ids, extra)
        # pooled needs the last layer; without a projection the layers after `keep` are skipped
        for i, block in enumerate(self.encoder.layers[: n if projection else keep + 1]):
            x = block(x)
            if i == keep:
                context = x
        if final_norm:
            context = self.final_layer_norm(context)
        if not projection:
            return context, None
        eos = mx.argmax((ids == EOS).astype(mx.int32), axis=-1)  # (B,) first EOS of each row
        return context, self.text_projection(self.final_layer_norm(x[mx.arange(x.shape[0]), eos]))
