"""CLIP text transformer: ViT-L/14 (SD1, quick_gelu) and OpenCLIP ViT-H/14, bigG (SD2, SDXL; gelu).

Attribute paths follow transformers' CLIPTextModel without its 'text_model.' prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdkit.config import TextEncoderConfig
from sdkit.errors import CheckpointError

from .onednn import Linear

EOS = 49407  # <|endoftext|> in both CLIP BPE vocabularies; the pooled output is read at its first position


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class Embeddings(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        # _weight: skip nn.Embedding's random init. The loader builds modules on the meta device, where
        # normal_ runs a Python decomposition that first imports torch._dynamo (a second of load time).
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size,
                                            _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.position_embedding = nn.Embedding(config.max_length, config.hidden_size,
                                               _weight=torch.empty(config.max_length, config.hidden_size))

    def forward(self, ids: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> (B, T, C); ids past the vocabulary index the rows of `extra` (textual inversion)."""
        if extra is None:
            x = self.token_embedding(ids)
        else:
            vocab = self.token_embedding.num_embeddings
            # extra may be float32 master weights (training in half precision): in the table's dtype, as a row would be
            x = torch.where((ids < vocab)[..., None], self.token_embedding(ids.clamp(max=vocab - 1)),
                            extra[(ids - vocab).clamp(min=0)].to(self.token_embedding.weight.dtype))
        return x + self.position_embedding.weight[: ids.shape[1]]


class SelfAttention(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.q_proj = Linear(c, c)
        self.k_proj = Linear(c, c)
        self.v_proj = Linear(c, c)
        self.out_proj = Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SelfAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))


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
            self.text_projection = Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, ids: torch.Tensor, layer: int = -1, final_norm: bool = True,
                extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (B, T) -> context (B, T, C): the output of encoder layer `layer`, through the final LayerNorm when
        final_norm; pooled (B, P): the projected, final-normed last layer's output at the first EOS, or None.
        extra (E, C): embedding rows for ids vocab_size .. vocab_size + E - 1."""
        n = len(self.encoder.layers)
        if not -n <= layer < n:
            raise ValueError(f"text encoder layer {layer} does not exist; use -1 .. -{n} (this encoder has {n})")
        keep = layer % n  # index of the layer whose output is the context
        projection = getattr(self, "text_projection", None)
        x = self.embeddings(ids, extra)
        for i, block in enumerate(self.encoder.layers[: n if projection is not None else keep + 1]):
            x = block(x)
            if i == keep:
                context = x
        if final_norm:
            context = self.final_layer_norm(context)
        if projection is None:
            return context, None
        eos = (ids == EOS).int().argmax(dim=-1)  # (B,) first EOS of each row
        return context, projection(self.final_layer_norm(x[torch.arange(x.shape[0], device=x.device), eos]))
