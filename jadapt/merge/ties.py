"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint merge.

1. **Trim** each task vector ``tau_k = theta_k - base`` to its top ``density`` fraction by
   magnitude (``scope="global"``: over the whole adapter, as the paper's code; ``"leaf"``:
   per tensor, as PEFT).
2. **Elect** a sign per parameter: ``sign(sum_k tau_k)`` ("total", the paper) or the
   majority of signs ("frequency").
3. **Disjoint mean** over the task vectors whose sign agrees with the elected one (zeros do
   not count), then ``theta = base + scale * tau_merged``.

Base defaults to the zero adapter (see ``jadapt.merge.average``). With ``density=1``,
merging K identical adapters returns that adapter.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jadapt.merge.average import add_to_base, merge_weights, task_vectors

Tree = Mapping[str, Any]
SIGN_METHODS = ("total", "frequency")
SCOPES = ("global", "leaf")


def _check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")


def _keep_top(x: jax.Array, density: float) -> jax.Array:
    """Mask of the top ``density`` fraction of |x| (ties at the threshold are kept)."""
    n = x.size
    k = int(round(density * n))
    if k >= n:
        return jnp.ones(x.shape, bool)
    if k == 0:
        return jnp.zeros(x.shape, bool)
    mag = jnp.abs(x).ravel()
    threshold = jnp.sort(mag)[n - k]
    return jnp.abs(x) >= threshold


def trim(task_vector: Tree, density: float, scope: str = "global") -> dict:
    """Zero all but the largest-magnitude ``density`` fraction of a task vector's entries."""
    _check_density(density)
    if scope not in SCOPES:
        raise ValueError(f"trim scope {scope!r} is not supported; expected one of {SCOPES}")
    if density >= 1.0:
        return dict(task_vector)
    leaves, treedef = jax.tree_util.tree_flatten(dict(task_vector))
    if scope == "leaf":
        kept = [jnp.where(_keep_top(x, density), x, 0) for x in leaves]
    else:
        flat = jnp.concatenate([x.astype(jnp.float32).ravel() for x in leaves])
        mask = _keep_top(flat, density)
        kept, start = [], 0
        for x in leaves:
            kept.append(jnp.where(mask[start:start + x.size].reshape(x.shape), x, 0))
            start += x.size
    return jax.tree_util.tree_unflatten(treedef, kept)


def elect_sign(stacked: jax.Array, method: str = "total") -> jax.Array:
    """[K, ...] task-vector values -> the elected sign (+1 / -1) per entry [...]."""
    if method not in SIGN_METHODS:
        raise ValueError(f"sign method {method!r} is not supported; expected one of {SIGN_METHODS}")
    score = stacked.sum(0) if method == "total" else jnp.sign(stacked).sum(0)
    return jnp.where(score >= 0, 1.0, -1.0).astype(stacked.dtype)


def disjoint_merge(stacked: jax.Array, sign: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean over k of the (weighted) values whose sign equals ``sign``; 0 where none does."""
    agree = jnp.sign(stacked) == sign
    if weights is not None:
        stacked = stacked * weights.reshape((-1,) + (1,) * (stacked.ndim - 1))
    total = jnp.where(agree, stacked, 0).sum(0)
    return total / jnp.maximum(agree.sum(0), 1).astype(stacked.dtype)


def ties_combine(task_vectors: Sequence[Tree], weights: Optional[jax.Array] = None,
                 sign_method: str = "total") -> dict:
    """Elect + disjoint-merge already-trimmed (or DARE-dropped) task vectors."""
    def leaf(*xs):
        stacked = jnp.stack([x.astype(jnp.float32) for x in xs])
        return disjoint_merge(stacked, elect_sign(stacked, sign_method), weights).astype(xs[0].dtype)

    return jax.tree_util.tree_map(leaf, *[dict(t) for t in task_vectors])


def ties(adapters: Sequence[Tree], base: Optional[Tree] = None, *, density: float = 0.2,
         weights: Optional[Any] = None, scale: float = 1.0, sign_method: str = "total",
         scope: str = "global") -> dict:
    """TIES-merge K adapters: base + scale * disjoint_mean(elect(trim(tau_k)))."""
    taus = task_vectors(adapters, base)
    trimmed = [trim(t, density, scope) for t in taus]
    w = None if weights is None else merge_weights(weights, len(taus), normalize=False)
    merged = ties_combine(trimmed, w, sign_method)
    merged = jax.tree_util.tree_map(lambda x: (x * scale).astype(x.dtype), merged)
    return add_to_base(merged, base, taus[0])
