"""Scaled dot-product attention in its two forms: matmul (two canonical matmuls around an fp32
softmax, with a lean backward and probability dropout) and fused (``jax.nn``'s kernel, cuDNN
flash attention on GPUs).

Matmul form: autodiff of ``softmax -> dropout -> matmul`` keeps four attention-sized tensors
per layer for the backward pass: softmax's unnormalised ``exp``, the dropout mask, a zeros
tensor from the mask's ``where`` and the dropped probabilities (plus two row statistics); XLA
keeps two of them. The custom VJP keeps only the probabilities and re-hashes the mask from its
two seeds; the backward does the same four matmuls autodiff does. Forward values are
bit-identical to the plain form; gradients agree to fp32 rounding.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from jadapt.layers.dropout import dropout, keep_mask
from jadapt.layers.einsum import einsum
from jadapt.layers.matmul import rounded_residuals
from jadapt.layers.precision import operand_dtype

_SCORES, _CONTEXT = "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd"


def _probs(q, k, bias, cdt):
    return jax.nn.softmax(einsum(_SCORES, q, k, cdt) + bias, axis=-1)


def _dropped(p, seeds, rate):
    return p if seeds is None else dropout(p, seeds, rate)


def matmul_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                     seeds: Optional[jax.Array] = None, rate: float = 0.0,
                     compute_dtype: str = "float32") -> jax.Array:
    """``dropout(softmax(q k^T + bias)) v`` for pre-scaled ``[B, T, N, H]`` q, k, v and an
    additive ``[B, 1, 1, S]`` bias; ``seeds`` (``Dropout.seeds``) drop attention
    probabilities at ``rate``, None drops nothing. Returns ``[B, T, N, H]`` in fp32."""
    return _attention(q, k, v, bias, seeds, rate, compute_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, bias, seeds, rate, cdt):
    return einsum(_CONTEXT, _dropped(_probs(q, k, bias, cdt), seeds, rate), v, cdt)


def _attention_fwd(q, k, v, bias, seeds, rate, cdt):
    p = _probs(q, k, bias, cdt)
    out = einsum(_CONTEXT, _dropped(p, seeds, rate), v, cdt)
    (rq, rk, rv), marks = rounded_residuals(operand_dtype(cdt), q, k, v)
    return out, (rq, rk, rv, p, seeds, marks)


def _attention_bwd(rate, cdt, res, g):
    q, k, v, p, seeds, (tq, tk, tv) = res
    if seeds is None:
        pk, gk = p, g
    else:  # the mask re-hashed from its seeds; the 1 / (1 - rate) scale moved onto the
        # (4x smaller) cotangent, so XLA's CSE cannot find the forward's dropped
        # probabilities here and keep them alive for the backward pass
        pk = jnp.where(keep_mask(seeds, p.shape, rate), p, 0.0)
        gk = g / jnp.asarray(1.0 - rate, g.dtype)
    dv = einsum("bhqk,bqhd->bkhd", pk, gk, cdt)
    dp = _dropped(einsum("bqhd,bkhd->bhqk", g, v, cdt), seeds, rate)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))  # softmax's VJP
    dq = einsum("bhqk,bkhd->bqhd", ds, k, cdt)
    dk = einsum("bhqk,bqhd->bkhd", ds, q, cdt)
    return dq.astype(tq.dtype), dk.astype(tk.dtype), dv.astype(tv.dtype), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, keep: jax.Array) -> jax.Array:
    """softmax(q k^T + mask) v for pre-scaled [B, T, N, H] inputs and a [B, 1, 1, S] keep-mask.

    On a GPU with bf16 / fp16 inputs: cuDNN's flash attention (``jax.nn.dot_product_attention``
    with ``implementation=None`` is XLA's unfused form), the mask as an additive [B, 1, T, S]
    bias; XLA's form elsewhere, or where cuDNN refuses the shapes or is missing. It has no
    dropout: callers skip attention-probability dropout with it, as flash-attention trainers do.
    """
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        neg = jnp.asarray(-0.7 * float(jnp.finfo(q.dtype).max), q.dtype)
        bias = jnp.broadcast_to(jnp.where(keep, jnp.zeros((), q.dtype), neg),
                                (q.shape[0], 1, q.shape[1], k.shape[1]))
        try:
            return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=1.0, implementation="cudnn")
        except (ValueError, NotImplementedError, RuntimeError):
            pass
    return jax.nn.dot_product_attention(q, k, v, mask=keep, scale=1.0)
