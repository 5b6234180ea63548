"""Bottleneck adapters and the adapter site that wires them around a sublayer.

An adapter is ``up(act(down(x))) * scaling`` (+ optional LayerNorms, + residual):
``W_down`` [d, m], ``b_down`` [m], ``W_up`` [m, d], ``b_up`` [d]. Its params live at
``<site>/<name>/down/{kernel,bias}`` and ``<site>/<name>/up/{kernel,bias}`` where site is
``attn_adapter`` or ``ffn_adapter`` inside ``encoder/layer_i``. The bottleneck activation
is sown as ``intermediates/<site>/<name>/bottleneck`` (used for activation-based alignment).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jadapt.adapters.config import AdapterConfig
from jadapt.models.layers import Dense, Dropout, LayerNorm, activation


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


class BottleneckAdapter(nn.Module):
    """One named bottleneck adapter. Returns the adapter output with its own residual."""

    config: AdapterConfig
    compute_dtype: str = "float32"

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


class AdapterSite(nn.Module):
    """All adapters at one insertion point (``attn_adapter`` or ``ffn_adapter``).

    Replaces the sublayer's ``LayerNorm(h + x)`` step, where ``h`` is the sublayer output
    (after its dropout) and ``x`` the sublayer input, following AdapterHub's
    pre_forward / post_forward so imported adapters compute the same function.
    ``active``: names of the adapters to run (one, or several with a fusion layer).
    Inactive adapters are still initialised so one params tree holds all of them.
    """

    adapters: tuple[tuple[str, AdapterConfig], ...]
    active: tuple[str, ...]
    fusion: Optional[Any] = None  # jadapt.fusion.FusionConfig
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, h, x, layer_norm: Callable, deterministic: bool = True):
        modules = {
            name: BottleneckAdapter(cfg, self.compute_dtype, name=name) for name, cfg in self.adapters
        }
        if self.is_initializing():
            for name, cfg in self.adapters:
                modules[name](h, h, True)
        active = [n for n in self.active if n in modules]
        if not active:
            return layer_norm(h + x)
        fused = len(active) > 1
        if fused and self.fusion is None:
            raise ValueError(f"{len(active)} active adapters {active} at one site need a fusion config")
        cfg = dict(self.adapters)[active[-1]]  # AdapterHub: the last fused adapter's placement counts
        inp, query, residual = _pre_forward(cfg, h, x, layer_norm, self.fusion if fused else None)
        if not fused:
            out = modules[active[0]](inp, residual, deterministic)
        else:
            from jadapt.fusion.layer import FusionLayer  # fusion reuses this adapter forward

            ups = jnp.stack([modules[n](inp, residual, deterministic, up_only=True) for n in active], axis=-2)
            out = FusionLayer(self.fusion, self.compute_dtype, name="fusion")(query, ups, residual, deterministic)
        return _post_forward(cfg, out, h, x, layer_norm)


def _pre_forward(cfg: AdapterConfig, h, x, layer_norm, fusion=None):
    """(adapter input, fusion query, adapter residual), as AdapterHub's ``pre_forward``:
    the query is ``h`` before the original LayerNorm only with ``fusion.query_before_ln``."""
    if cfg.is_parallel:
        return x, x, x
    residual = h if cfg.residual_before_ln else None
    sublayer_out = h
    if cfg.original_ln_before:
        h = layer_norm(h + x)
    if not cfg.residual_before_ln:
        residual = h
    query = sublayer_out if fusion is not None and fusion.query_before_ln else h
    return h, query, residual


def _post_forward(cfg: AdapterConfig, out, h, x, layer_norm):
    if cfg.is_parallel:
        out = out + h
    # AdapterHub's post_forward: without original_ln_after the sublayer residual x is not re-added
    # (a sequential adapter already carries it when original_ln_before).
    return layer_norm(out + x) if cfg.original_ln_after else out
