"""The adapter site: the bottleneck adapters (and their fusion) at one insertion point of an
encoder layer.

A site replaces the sublayer's ``LayerNorm(h + x)`` step. It is where adapters and
AdapterFusion meet, so it lives with the encoder that places it, above both: ``adapters``
and ``fusion`` stay independent of each other.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from jadapt.adapters.bottleneck import BottleneckAdapter
from jadapt.adapters.config import AdapterConfig
from jadapt.fusion.layer import FusionLayer
from jadapt.layers.dense import PrecisionModule


class AdapterSite(PrecisionModule):
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

    @nn.compact
    def __call__(self, h, x, layer_norm: Callable, deterministic: bool = True):
        modules = {
            name: BottleneckAdapter(cfg, compute_dtype=self.compute_dtype, name=name) for name, cfg in self.adapters
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
            ups = jnp.stack([modules[n](inp, residual, deterministic, up_only=True) for n in active], axis=-2)
            fusion = FusionLayer(self.fusion, compute_dtype=self.compute_dtype, name="fusion")
            out = fusion(query, ups, residual, deterministic)
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
