"""AdapterFusion's value regulariser: ``0.01 * sum_sites ||I - V||_F^2``.

AdapterHub adds it to the loss while training a ``dynamic`` fusion so V stays near the
identity (Pfeiffer et al. 2021). It reads the V kernels from the params tree by path, so it
works on the full tree or on the trainable part alone, and is jit-able.
"""
from __future__ import annotations

import jax.numpy as jnp

from jadapt import tree
from jadapt.param_paths import FUSION_VALUE_KERNEL
from jadapt.fusion.config import REGULARIZATION_WEIGHT


def value_kernels(params: dict) -> dict:
    """{path: V kernel [d, d]} for every fusion site in ``params``."""
    return {p: x for p, x in tree.flatten(params).items() if FUSION_VALUE_KERNEL.search(p)}


def regularization_loss(params: dict, weight: float = REGULARIZATION_WEIGHT) -> jnp.ndarray:
    """``weight * sum ||I - V||^2`` over all fusion sites (0.0 when there are none)."""
    total = jnp.zeros((), jnp.float32)
    for v in value_kernels(params).values():
        total = total + jnp.sum(jnp.square(jnp.eye(v.shape[0], dtype=v.dtype) - v))
    return weight * total
