"""The full model: embeddings + encoder (with adapters) + task head.

``AdapterModel(...).apply({"params": params}, input_ids, attention_mask)`` -> logits
[batch, num_labels] (regression: [batch]). ``return_hidden=True`` also returns every
layer's hidden states (embeddings first), for RSA / CKA and parity tests.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jadapt.layers.dense import Dense, PrecisionModule
from jadapt.layers.dropout import Dropout
from jadapt.models.config import ATTENTION_IMPLS, EncoderConfig
from jadapt.models.encoder import AdapterSpecs, Embeddings, LayerStack, attention_bias

POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Sequence-level head. ``pooling``: first token or masked mean over tokens.

    ``dense``: a tanh layer before the output layer (BERT's pooler / RoBERTa's
    classification head); initialised from the checkpoint's pooler when it has one.
    """

    num_labels: int = 2
    regression: bool = False
    pooling: str = "mean"
    dense: bool = True
    dropout: float = 0.1

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"head pooling {self.pooling!r} is not supported; expected one of {POOLINGS}")
        if self.regression and self.num_labels != 1:
            raise ValueError(f"a regression head has num_labels=1, got {self.num_labels}")
        if not self.regression and self.num_labels < 2:
            raise ValueError(f"a classification head needs num_labels >= 2, got {self.num_labels}")


class Head(PrecisionModule):
    config: HeadConfig

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool = True):
        cfg = self.config
        if cfg.pooling == "cls":
            x = hidden[:, 0]
        else:
            m = attention_mask[..., None].astype(hidden.dtype)
            x = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        if cfg.dense:
            x = Dropout(cfg.dropout)(x, deterministic)
            x = jnp.tanh(Dense(x.shape[-1], compute_dtype=self.compute_dtype, name="dense")(x))
        x = Dropout(cfg.dropout)(x, deterministic)
        out = Dense(cfg.num_labels, compute_dtype="float32", name="out")(x)
        return out[..., 0] if cfg.regression else out


class AdapterModel(PrecisionModule):
    """Encoder with named adapters and an optional head.

    ``adapters``: ((name, AdapterConfig), ...) all present in the params tree;
    ``active``: which of them run (one; or several with ``fusion``).
    """

    config: EncoderConfig
    adapters: AdapterSpecs = ()
    active: tuple[str, ...] = ()
    head: Optional[HeadConfig] = None
    fusion: Optional[Any] = None
    remat: bool = False
    attention: str = "matmul"  # matmul | fused (jax.nn.dot_product_attention; see SelfAttention)

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention {self.attention!r} is not supported; expected one of {ATTENTION_IMPLS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True,
                 return_hidden: bool = False):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = Embeddings(self.config, name="embeddings")(input_ids, token_type_ids, deterministic)
        layers = LayerStack(self.config, self.adapters, self.active, self.fusion, self.remat, self.attention,
                            compute_dtype=self.compute_dtype, name="encoder")(x, attention_bias(attention_mask),
                                                                              deterministic)
        hidden = (x,) + layers
        if self.head is None:
            return hidden
        logits = Head(self.head, compute_dtype=self.compute_dtype, name="head")(hidden[-1], attention_mask, deterministic)
        return (logits, hidden) if return_hidden else logits
