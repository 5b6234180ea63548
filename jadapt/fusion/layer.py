"""The AdapterFusion layer: attention over the outputs of K adapters at one site.

Matches AdapterHub's ``BertFusion`` forward. With ``u_k`` the k-th adapter's scaled
up-projection (before its dropout and residual) and ``r`` the adapter residual::

    scores_k = Q(query) . K(u_k)            # [batch, seq, K]
    p        = softmax(dropout(scores) / T)  # over adapters
    out      = sum_k p_k V(u_k) + r

Params (inside ``encoder/layer_i/<site>/fusion``): ``query/{kernel,bias}``,
``key/{kernel,bias}`` (N(0, 0.02), zero bias) and ``value/kernel`` (no bias; identity
with 1e-6 off the diagonal when ``value_initialized``). Kernels are ``[in, out]``.
The attention probabilities are sown as ``intermediates/.../fusion/attention``.

Cost: AdapterHub projects every adapter output through K and V (2 K d^2 per token). Both
are linear, so here the key projection moves to the query side,
``Q(q) . (W_k^T u_k + b_k) = (W_k Q(q)) . u_k + Q(q) . b_k``, and V (no bias) is applied
once to the weighted sum: the same function for either ``value_before_softmax``, at
3 d^2 per token whatever K.

Every product that is not a plain ``x @ kernel`` goes through ``jadapt.layers.einsum``
(the key kernel used transposed, the key bias, the K-way scores and sum): on XLA:CPU it keeps
each dot, and its gradients, in a form the bf16 x bf16 -> fp32 kernel takes; written as
``matmul(q, w_k.T)`` the weight gradient became a doubly transposed dot and a bf16 train step
failed with ``Unsupported element type for DotThunk``.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jadapt.fusion.config import TEMPERATURE_START, FusionConfig
from jadapt.layers.dense import Dense, PrecisionModule
from jadapt.layers.dropout import Dropout
from jadapt.layers.einsum import einsum
from jadapt.layers.matmul import matmul


def identity_init(key, shape, dtype=jnp.float32):
    """AdapterHub's V init: ones on the diagonal, 1e-6 elsewhere (square kernels only)."""
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"identity init needs a square kernel, got shape {shape}")
    return jnp.full(shape, 1e-6, dtype).at[jnp.diag_indices(shape[0])].set(1.0)


class _Weights(nn.Module):
    """A Dense layer's ``kernel`` [in, out] (and ``bias``), returned rather than applied."""

    features: int
    use_bias: bool
    kernel_init: Callable

    @nn.compact
    def __call__(self, fan_in: int):
        kernel = self.param("kernel", self.kernel_init, (fan_in, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
        return kernel, bias


class FusionLayer(PrecisionModule):
    """Fuse K adapter outputs at one site.

    ``query``: [batch, seq, d]; ``adapter_outputs``: [batch, seq, K, d] (each adapter's
    scaled up-projection); ``residual``: [batch, seq, d]. Returns [batch, seq, d].

    Temperature (``config.temperature``): AdapterHub keeps T in the module and lowers it
    after every call. Here T lives in the ``fusion_state`` collection: apply with
    ``mutable=["fusion_state"]`` (state from ``jadapt.fusion.fusion_state``) to follow the
    schedule; without that state T is 1, the schedule's end value.
    """

    config: FusionConfig

    @nn.compact
    def __call__(self, query, adapter_outputs, residual, deterministic: bool = True):
        cfg, cdt = self.config, self.compute_dtype
        d = query.shape[-1]
        if adapter_outputs.shape[-1] != d or adapter_outputs.shape[:-2] != query.shape[:-1]:
            raise ValueError(f"adapter_outputs {adapter_outputs.shape} must be query's {query.shape} with a K axis before d")
        bert = nn.initializers.normal(0.02)
        values = adapter_outputs
        if cfg.residual_before:  # AdapterHub adds in place to the tensor it also uses as keys
            values = values + residual[..., None, :]
        q = Dense(d, compute_dtype=cdt, kernel_init=bert, name="query")(query) if cfg.query else query
        if cfg.key:
            w_k, b_k = _Weights(d, True, bert, name="key")(d)
            q_k = einsum("bsd,ed->bse", q, w_k, cdt)  # W_k Q(q): the key kernel [in, out] used transposed
            scores = einsum("bsd,bskd->bsk", q_k, values, cdt) + einsum("bsd,d->bs", q, b_k, cdt)[..., None]
        else:
            scores = einsum("bsd,bskd->bsk", q, values, cdt)
        scores = Dropout(cfg.dropout_prob or 0.0)(scores, deterministic)
        probs = jax.nn.softmax(scores / self._temperature(), axis=-1)
        self.sow("intermediates", "attention", probs)
        out = einsum("bsk,bskd->bsd", probs, values, cdt)
        if cfg.value:  # before or after the softmax-weighted sum: the same linear map
            w_v, _ = _Weights(d, False, identity_init if cfg.value_initialized else bert, name="value")(d)
            out = matmul(out, w_v, cdt)
        if not cfg.residual_before:
            out = out + residual
        return out

    def _temperature(self):
        """T for this call; steps the schedule when the ``fusion_state`` collection is mutable."""
        if not self.config.temperature:
            return 1.0
        col = "fusion_state"
        if not (self.has_variable(col, "temperature") or self.is_mutable_collection(col)):
            return 1.0
        t = self.variable(col, "temperature", lambda: jnp.asarray(TEMPERATURE_START, jnp.float32))
        current = t.value
        if self.is_mutable_collection(col) and not self.is_initializing():
            t.value = jnp.maximum(current - TEMPERATURE_START / 1000.0, 1.0)
        return current
