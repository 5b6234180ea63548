"""Linear merges: weighted sum, weighted average, task arithmetic.

All are pure functions of K matching trees (see ``sites.prepare``), jit-able, and stay
element-wise, so sharded leaves are combined where they live.

**Base point.** Task arithmetic (and TIES / DARE) combine *task vectors* ``tau_k = theta_k -
base``. For a full model the base is the pretrained model; an adapter has no pretrained value,
so the default base here is the **zero adapter** (``tau_k = theta_k``). Pass ``base=`` (e.g.
the adapters' common initialisation, or a source adapter being continued) to use another.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jadapt.merge import sites

Tree = Mapping[str, Any]


def merge_weights(weights: Optional[Any], k: int, *, normalize: bool) -> jax.Array:
    """[K] float32 weights; uniform when ``weights`` is None. Checked against K."""
    w = jnp.full((k,), 1.0 / k if normalize else 1.0, jnp.float32) if weights is None \
        else jnp.asarray(weights, jnp.float32)
    if w.shape != (k,):
        raise ValueError(f"weights must have one entry per adapter: got shape {w.shape} for {k} adapters")
    return w / w.sum() if (normalize and weights is not None) else w


def combine(adapters: Sequence[Tree], weights: jax.Array) -> dict:
    """sum_k weights[k] * adapters[k], leaf by leaf, keeping each leaf's dtype."""
    def comb(*xs):
        acc = sum(weights[k] * x.astype(jnp.float32) for k, x in enumerate(xs))
        return acc.astype(xs[0].dtype)

    return jax.tree_util.tree_map(comb, *adapters)


def weighted_sum(adapters: Sequence[Tree], weights: Optional[Any] = None) -> dict:
    """sum_k w_k theta_k (default w_k = 1: MerA's "summation")."""
    adapters = sites.prepare(adapters)
    return combine(adapters, merge_weights(weights, len(adapters), normalize=False))


def average(adapters: Sequence[Tree], weights: Optional[Any] = None) -> dict:
    """sum_k w_k theta_k / sum_k w_k (default uniform): AdapterHub's ``average_adapter``."""
    adapters = sites.prepare(adapters)
    return combine(adapters, merge_weights(weights, len(adapters), normalize=True))


def zeros_like(adapter: Tree) -> dict:
    """The zero adapter: the default base point of task vectors."""
    return jax.tree_util.tree_map(jnp.zeros_like, dict(adapter))


def task_vectors(adapters: Sequence[Tree], base: Optional[Tree] = None) -> list[dict]:
    """tau_k = theta_k - base (base defaults to the zero adapter)."""
    adapters = sites.prepare(adapters)
    if base is None:
        return adapters
    base = sites.prepare([adapters[0], base])[1]
    return [jax.tree_util.tree_map(lambda x, b: x - b, a, base) for a in adapters]


def add_to_base(delta: Tree, base: Optional[Tree], like: Tree) -> dict:
    """base + delta (delta alone when base is None), named like ``like``."""
    if base is None:
        return dict(delta)
    base = sites.prepare([like, base])[1]
    return jax.tree_util.tree_map(lambda b, d: (b + d).astype(b.dtype), base, delta)


def task_arithmetic(adapters: Sequence[Tree], base: Optional[Tree] = None, weights: Optional[Any] = None,
                    scale: float = 1.0) -> dict:
    """base + scale * sum_k w_k tau_k (Ilharco et al. 2023; default w_k = 1).

    With ``scale=1/K`` this is the plain average; with the zero base and ``scale=1`` it is
    the sum.
    """
    taus = task_vectors(adapters, base)
    w = merge_weights(weights, len(taus), normalize=False) * scale
    return add_to_base(combine(taus, w), base, taus[0])
