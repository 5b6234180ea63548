"""BERT / RoBERTa / XLM-R encoder (post-LN transformer) with adapter sites, in Flax linen.

Param paths (the public contract; see README):

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    embeddings/layer_norm/{scale,bias}
    encoder/layer_{i}/attention/{query,key,value,output}/{kernel,bias}
    encoder/layer_{i}/attention/lora_{query,key,value}/<name>/{lora_a,lora_b}
    encoder/layer_{i}/attention_layer_norm/{scale,bias}
    encoder/layer_{i}/attn_adapter/<name>/{down,up}/{kernel,bias}
    encoder/layer_{i}/intermediate/{kernel,bias}
    encoder/layer_{i}/output/{kernel,bias}
    encoder/layer_{i}/output_layer_norm/{scale,bias}
    encoder/layer_{i}/ffn_adapter/<name>/{down,up}/{kernel,bias}
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jadapt import param_paths as paths
from jadapt.adapters.config import AdapterConfig
from jadapt.adapters.lora import LoraBank
from jadapt.layers.activations import activation
from jadapt.layers.attention import fused_attention, matmul_attention
from jadapt.layers.dense import Dense, PrecisionModule
from jadapt.layers.dropout import Dropout
from jadapt.layers.norm import LayerNorm
from jadapt.layers.precision import operand_dtype
from jadapt.models.adapter_site import AdapterSite
from jadapt.models.config import EncoderConfig

AdapterSpecs = tuple[tuple[str, AdapterConfig], ...]


def _with(adapters: AdapterSpecs, pred) -> AdapterSpecs:
    return tuple((n, c) for n, c in adapters if pred(c))


def _lora_for(adapters: AdapterSpecs, target: str) -> AdapterSpecs:
    return _with(adapters, lambda c: c.method == "lora" and target in c.lora_targets)


def _project(module: nn.Module, x, features, name, target, adapters, active, cdt, init, deterministic):
    """Dense ``name`` in ``module``'s scope, plus active LoRA updates as ``lora_<target>``."""
    y = Dense(features, compute_dtype=cdt, kernel_init=init, name=name)(x)
    loras = _lora_for(adapters, target)
    if loras:
        upd = LoraBank(loras, active, features, compute_dtype=cdt, name=paths.lora_site(target))(x, deterministic)
        if upd is not None:
            y = y + upd
    return y


class SelfAttention(PrecisionModule):
    """Multi-head self-attention. ``attention``: ``matmul`` (two canonical matmuls + fp32
    softmax, the fastest form on XLA:CPU, with attention-probability dropout) or ``fused``
    (``fused_attention``: cuDNN flash attention on GPUs when shapes and dtype allow, XLA's
    form elsewhere; it has no dropout, so attention-probability dropout is skipped,
    as in flash-attention trainers; hidden dropout stays)."""

    config: EncoderConfig
    adapters: AdapterSpecs = ()
    active: tuple[str, ...] = ()
    attention: str = "matmul"

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        cfg, cdt = self.config, self.compute_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        b, s, _ = x.shape

        def proj(name, inp):
            return _project(self, inp, cfg.hidden_size, name, name, self.adapters, self.active, cdt, init, deterministic)

        split = lambda t: t.reshape(b, s, cfg.num_heads, cfg.head_dim)
        q = split(proj("query", x)) * (cfg.head_dim ** -0.5)
        k, v = split(proj("key", x)), split(proj("value", x))
        if self.attention == "fused":
            dt = operand_dtype(cdt)  # q is pre-scaled, as in the matmul form
            ctx = fused_attention(q.astype(dt), k.astype(dt), v.astype(dt), mask_bias == 0)
            ctx = ctx.reshape(b, s, cfg.hidden_size)  # in the operand dtype: the output Dense rounds to it
        else:
            drop = Dropout(cfg.attention_dropout)
            ctx = matmul_attention(q, k, v, mask_bias, drop.seeds(deterministic), drop.rate, cdt)
            ctx = ctx.reshape(b, s, cfg.hidden_size)
        return _project(self, ctx, cfg.hidden_size, "output", "attention_output", self.adapters,
                        self.active, cdt, init, deterministic)


class EncoderLayer(PrecisionModule):
    config: EncoderConfig
    adapters: AdapterSpecs = ()
    active: tuple[str, ...] = ()
    fusion: Optional[Any] = None
    attention: str = "matmul"

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        cfg, cdt = self.config, self.compute_dtype
        init = nn.initializers.normal(cfg.initializer_range)
        bottleneck = _with(self.adapters, lambda c: c.method != "lora")

        h = SelfAttention(cfg, self.adapters, self.active, self.attention, compute_dtype=cdt, name="attention")(
            x, mask_bias, deterministic)
        h = Dropout(cfg.hidden_dropout)(h, deterministic)
        ln1 = LayerNorm(cfg.layer_norm_eps, name="attention_layer_norm")
        mh = _with(bottleneck, lambda c: c.mh_adapter)
        if mh:
            x = AdapterSite(mh, self.active, self.fusion, compute_dtype=cdt, name=paths.ATTN_SITE)(h, x, ln1, deterministic)
        else:
            x = ln1(h + x)

        inter = _project(self, x, cfg.intermediate_size, "intermediate", "intermediate", self.adapters,
                         self.active, cdt, init, deterministic)
        inter = activation(cfg.hidden_act)(inter)
        h = _project(self, inter, cfg.hidden_size, "output", "output", self.adapters, self.active, cdt, init,
                     deterministic)
        h = Dropout(cfg.hidden_dropout)(h, deterministic)
        ln2 = LayerNorm(cfg.layer_norm_eps, name="output_layer_norm")
        ffn = _with(bottleneck, lambda c: c.output_adapter)
        if ffn:
            return AdapterSite(ffn, self.active, self.fusion, compute_dtype=cdt, name=paths.FFN_SITE)(h, x, ln2, deterministic)
        return ln2(h + x)


class Embeddings(nn.Module):
    config: EncoderConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool = True):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        if cfg.model_type == "bert":
            pos = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        else:  # RoBERTa / XLM-R: count non-pad tokens from padding_idx + 1; pads get padding_idx
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            pos = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, name="word_embeddings")(input_ids)
        x = x + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                         name="position_embeddings")(pos)
        x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                         name="token_type_embeddings")(token_type_ids)
        x = LayerNorm(cfg.layer_norm_eps, name="layer_norm")(x)
        return Dropout(cfg.hidden_dropout)(x, deterministic)


class LayerStack(PrecisionModule):
    """The ``encoder`` scope: ``layer_0 .. layer_{n-1}``. Returns every layer's output."""

    config: EncoderConfig
    adapters: AdapterSpecs = ()
    active: tuple[str, ...] = ()
    fusion: Optional[Any] = None
    remat: bool = False
    attention: str = "matmul"

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        layer_cls = nn.remat(EncoderLayer, static_argnums=(3,)) if self.remat else EncoderLayer
        # Trace a layer once, not once per layer: every layer has the same shapes, so a jitted
        # layer is traced and lowered once and called n times (XLA inlines the calls; the
        # compiled work is the same), and tracing a train step for a new batch width no longer
        # grows with depth (benchmarks/RESULTS.md). Flax hands each jitted layer its dropout
        # key as an argument, so a seed's dropout masks differ from those of an un-jitted
        # stack: results from before this change do not reproduce bit for bit.
        layer_cls = nn.jit(layer_cls, static_argnums=(3,))
        outs = []
        for i in range(self.config.num_layers):
            x = layer_cls(self.config, self.adapters, self.active, self.fusion, self.attention,
                          compute_dtype=self.compute_dtype, name=f"layer_{i}")(x, mask_bias, deterministic)
            outs.append(x)
        return tuple(outs)


def attention_bias(attention_mask: jax.Array) -> jax.Array:
    """[b, s] 0/1 mask -> additive [b, 1, 1, s] bias (fp32 min where masked, as HF)."""
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
