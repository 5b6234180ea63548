"""Encoder configuration, read from a Hugging Face ``config.json``.

One frozen dataclass covers the BERT / RoBERTa / XLM-R family: they differ only in where
position ids start (RoBERTa-style models count from ``padding_idx + 1``), the token-type
vocabulary and the LayerNorm epsilon, all of which the HF config states.
"""
from __future__ import annotations

import dataclasses
import os
import types
from typing import Any

from jadapt.folders import read_folder_json

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")
ATTENTION_IMPLS = ("matmul", "fused")  # attention kernels of ``SelfAttention`` (a runtime choice)


# The keys a BERT-family config.json must state, and transformers' defaults for the rest
# (BertConfig / RobertaConfig / XLMRobertaConfig / CamembertConfig; the RoBERTa family pads with 1).
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings")
_HF_DEFAULTS = {"type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
                "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}


def _read_config_json(path: str | os.PathLike) -> types.SimpleNamespace | None:
    """``config.json`` of a local folder as attributes with transformers' defaults filled in,
    or None where only ``AutoConfig`` can tell (no such file, another model type, keys missing)."""
    raw = read_folder_json(path, "config.json")
    if raw is None:
        return None
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES or any(k not in raw for k in _REQUIRED_KEYS):
        return None
    pad = 0 if model_type == "bert" else 1
    return types.SimpleNamespace(**{**_HF_DEFAULTS, "pad_token_id": pad, **raw})


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    model_type: str = "bert"
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {SUPPORTED_ACTIVATIONS}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        """First position id: RoBERTa-style models start after ``padding_idx``."""
        return self.pad_token_id + 1 if self.model_type != "bert" else 0

    @property
    def max_length(self) -> int:
        """Longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, hf_config: Any) -> "EncoderConfig":
        """Build from a ``transformers`` config object, refusing options we do not implement."""
        c = hf_config
        model_type = getattr(c, "model_type", "bert")
        pe = getattr(c, "position_embedding_type", "absolute")
        if pe not in (None, "absolute"):
            raise ValueError(f"position_embedding_type {pe!r} is not supported (only 'absolute')")
        if getattr(c, "is_decoder", False) or getattr(c, "add_cross_attention", False):
            raise ValueError("decoder / cross-attention configs are not supported: jadapt encoders are encoder-only")
        return cls(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            max_position_embeddings=c.max_position_embeddings,
            type_vocab_size=c.type_vocab_size,
            layer_norm_eps=c.layer_norm_eps,
            hidden_act=c.hidden_act,
            hidden_dropout=c.hidden_dropout_prob,
            attention_dropout=c.attention_probs_dropout_prob,
            pad_token_id=c.pad_token_id if c.pad_token_id is not None else 0,
            model_type=model_type,
            initializer_range=getattr(c, "initializer_range", 0.02),
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "EncoderConfig":
        """From a model folder's ``config.json`` (or a hub name, through ``AutoConfig``).

        A folder of a supported model type is read as plain JSON with transformers' defaults
        for the keys it omits: importing transformers takes seconds and, with torch installed,
        imports torch too. Anything else goes through ``transformers.AutoConfig``."""
        raw = _read_config_json(path)
        if raw is not None:
            return cls.from_hf(raw)
        from transformers import AutoConfig

        return cls.from_hf(AutoConfig.from_pretrained(str(path)))

    def replace(self, **kw) -> "EncoderConfig":
        return dataclasses.replace(self, **kw)
