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
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jadapt.fusion.config import TEMPERATURE_START, FusionConfig
from jadapt.models.layers import Dense, Dropout, einsum


def identity_init(key, shape, dtype=jnp.float32):
    """AdapterHub's V init: ones on the diagonal, 1e-6 elsewhere (square kernels only)."""
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"identity init needs a square kernel, got shape {shape}")
    return jnp.full(shape, 1e-6, dtype).at[jnp.diag_indices(shape[0])].set(1.0)


class FusionLayer(nn.Module):
    """Fuse K adapter outputs at one site.

    ``query``: [batch, seq, d]; ``adapter_outputs``: [batch, seq, K, d] (each adapter's
    scaled up-projection); ``residual``: [batch, seq, d]. Returns [batch, seq, d].

    Temperature (``config.temperature``): AdapterHub keeps T in the module and lowers it
    after every call. Here T lives in the ``fusion_state`` collection: apply with
    ``mutable=["fusion_state"]`` (state from ``jadapt.fusion.fusion_state``) to follow the
    schedule; without that state T is 1, the schedule's end value.
    """

    config: FusionConfig
    compute_dtype: str = "float32"

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
        k = Dense(d, compute_dtype=cdt, kernel_init=bert, name="key")(values) if cfg.key else values
        v_proj = None
        if cfg.value:
            v_proj = Dense(d, use_bias=False, compute_dtype=cdt, name="value",
                           kernel_init=identity_init if cfg.value_initialized else bert)
        if v_proj is not None and cfg.value_before_softmax:
            values = v_proj(values)

        scores = einsum("bsd,bskd->bsk", q, k, cdt)
        rate = cfg.dropout_prob or 0.0
        scores = Dropout(rate)(scores, deterministic)
        probs = jax.nn.softmax(scores / self._temperature(), axis=-1)
        self.sow("intermediates", "attention", probs)
        out = einsum("bsk,bskd->bsd", probs, values, cdt)

        if v_proj is not None and not cfg.value_before_softmax:
            out = v_proj(out)
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
