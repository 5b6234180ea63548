"""DARE (Yu et al. 2024): drop task-vector entries at random and rescale the survivors.

Each entry of ``tau_k = theta_k - base`` is kept with probability ``density`` and divided by
``density``, so ``E[dare(tau)] = tau``. The dropped task vectors are then combined by task
arithmetic (``combine="task_arithmetic"``: base + scale * sum_k w_k tau_k) or by TIES' sign
election and disjoint mean (``combine="ties"``, PEFT's ``dare_ties``). Randomness comes only
from ``key``: each adapter and leaf gets its own ``fold_in`` of it.

Base defaults to the zero adapter (see ``jadapt.merge.average``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jadapt.merge.average import add_to_base, combine as linear_combine, merge_weights, task_vectors
from jadapt.merge.ties import ties_combine

Tree = Mapping[str, Any]
COMBINES = ("task_arithmetic", "ties")


def drop_and_rescale(task_vector: Tree, key: jax.Array, density: float = 0.5, rescale: bool = True) -> dict:
    """Keep each entry with probability ``density`` (divided by ``density`` when rescaling)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"DARE density (keep probability) must be in (0, 1], got {density}")
    leaves, treedef = jax.tree_util.tree_flatten(dict(task_vector))
    out = []
    for i, x in enumerate(leaves):
        keep = jax.random.bernoulli(jax.random.fold_in(key, i), density, x.shape)
        y = jnp.where(keep, x, 0)
        out.append((y / density).astype(x.dtype) if rescale else y)
    return jax.tree_util.tree_unflatten(treedef, out)


def dare(adapters: Sequence[Tree], key: jax.Array, base: Optional[Tree] = None, *, density: float = 0.5,
         weights: Optional[Any] = None, scale: float = 1.0, combine: str = "task_arithmetic",
         rescale: bool = True, sign_method: str = "total") -> dict:
    """DARE-merge K adapters (weights default to 1 for task arithmetic, as PEFT)."""
    if combine not in COMBINES:
        raise ValueError(f"DARE combine {combine!r} is not supported; expected one of {COMBINES}")
    taus = task_vectors(adapters, base)
    dropped = [drop_and_rescale(t, jax.random.fold_in(key, k), density, rescale) for k, t in enumerate(taus)]
    w = merge_weights(weights, len(taus), normalize=False)
    if combine == "task_arithmetic":
        merged = linear_combine(dropped, w * scale)
    else:
        merged = ties_combine(dropped, None if weights is None else w, sign_method)
        merged = jax.tree_util.tree_map(lambda x: (x * scale).astype(x.dtype), merged)
    return add_to_base(merged, base, taus[0])
