"""Bottleneck adapters (Houlsby, Pfeiffer, parallel): one named adapter's forward.

An adapter is ``up(act(down(x))) * scaling`` (+ optional LayerNorms, + residual):
``W_down`` [d, m], ``b_down`` [m], ``W_up`` [m, d], ``b_up`` [d]. Its params live at
``<site>/<name>/down/{kernel,bias}`` and ``<site>/<name>/up/{kernel,bias}`` where site is
``attn_adapter`` or ``ffn_adapter`` inside ``encoder/layer_i``. The bottleneck activation
is sown as ``intermediates/<site>/<name>/bottleneck`` (used for activation-based alignment).
How adapters are placed around a sublayer, and fused, is the encoder's job
(``jadapt.models.adapter_site``).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jadapt.adapters.config import AdapterConfig
from jadapt.layers.activations import activation
from jadapt.layers.dense import Dense, PrecisionModule
from jadapt.layers.dropout import Dropout
from jadapt.layers.norm import LayerNorm


def _trunc_normal(std):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


def _kernel_inits(init: str) -> tuple[Callable, Callable]:
    """(down, up) kernel initialisers for AdapterHub's ``init_weights`` names."""
    if init == "bert":
        return nn.initializers.normal(0.02), nn.initializers.normal(0.02)
    if init == "houlsby":
        return _trunc_normal(1e-2), _trunc_normal(1e-2)
    if init == "mam":  # kaiming-uniform down, zero up: the adapter starts as exactly zero
        return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), nn.initializers.zeros
    raise ValueError(f"adapter init {init!r} is not supported for bottleneck adapters")


class BottleneckAdapter(PrecisionModule):
    """One named bottleneck adapter. Returns the adapter output with its own residual."""

    config: AdapterConfig

    @nn.compact
    def __call__(self, x, residual, deterministic: bool = True, up_only: bool = False):
        """``up_only``: return the scaled up-projection before dropout and residual, the
        per-adapter value AdapterFusion attends over (AdapterHub's ``up``)."""
        cfg = self.config
        d = x.shape[-1]
        down_init, up_init = _kernel_inits(cfg.init)
        h = LayerNorm(1e-5, name="norm_before")(x) if cfg.ln_before else x
        z = Dense(cfg.size(d), compute_dtype=self.compute_dtype, kernel_init=down_init, name="down")(h)
        z = activation(cfg.activation)(z)
        self.sow("intermediates", "bottleneck", z)
        out = Dense(d, compute_dtype=self.compute_dtype, kernel_init=up_init, name="up")(z) * cfg.scaling
        if up_only:
            return out
        out = Dropout(cfg.dropout)(out, deterministic)
        if cfg.is_parallel:  # AdapterHub's ParallelAdapter: ln_after on the scaled output, no residual
            return LayerNorm(1e-5, name="norm_after")(out) if cfg.ln_after else out
        if cfg.adapter_residual_before_ln:
            out = out + residual
        if cfg.ln_after:
            out = LayerNorm(1e-5, name="norm_after")(out)
        if not cfg.adapter_residual_before_ln:
            out = out + residual
        return out
