"""LoRA (Hu et al. 2022) as a side path of a frozen Dense: ``y = x W + b + s * (x A) B``.

Params live at ``encoder/layer_i/<module>/lora/<name>/{lora_a,lora_b}`` with
``lora_a`` [in, r] (kaiming-uniform, as PEFT) and ``lora_b`` [r, out] (zeros), s = alpha / r.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jadapt.adapters.config import AdapterConfig
from jadapt.layers.dense import PrecisionModule
from jadapt.layers.dropout import Dropout
from jadapt.layers.matmul import matmul


class LoraBank(PrecisionModule):
    """All LoRA adapters of one projection; returns the sum of the active ones' updates."""

    adapters: tuple[tuple[str, AdapterConfig], ...]
    active: tuple[str, ...]
    features: int

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        total = None
        for name, cfg in self.adapters:
            if name not in self.active and not self.is_initializing():
                continue
            out = _LoraPair(cfg, self.features, compute_dtype=self.compute_dtype, name=name)(x, deterministic)
            if name in self.active:
                total = out if total is None else total + out
        return total


class _LoraPair(PrecisionModule):
    config: AdapterConfig
    features: int

    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        a = self.param("lora_a", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                       (x.shape[-1], cfg.lora_r), jnp.float32)
        b = self.param("lora_b", nn.initializers.zeros, (cfg.lora_r, self.features), jnp.float32)
        x = Dropout(cfg.dropout)(x, deterministic)
        return matmul(matmul(x, a, self.compute_dtype), b, self.compute_dtype) * cfg.lora_scaling
