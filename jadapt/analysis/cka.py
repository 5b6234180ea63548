"""Linear CKA (Kornblith et al. 2019), one-shot and streamed over batches.

``CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` for row-paired
representations ``X [n, dx]``, ``Y [n, dy]`` with column-centred ``Xc, Yc``. It is
invariant to orthogonal transforms and isotropic scaling of either side, and 1 for X = Y.

Streaming works in feature space: the statistic only needs the centred (co-)moment
matrices ``Xc^T Xc [dx, dx]``, ``Yc^T Yc [dy, dy]``, ``Xc^T Yc [dx, dy]``. They are
accumulated batch by batch with running means (Chan et al.'s pairwise update), so memory is
O(d^2) whatever the number of sentences or tokens, and no uncentred ``sum x x^T`` is ever
formed (that would cancel catastrophically in float32 for the large-mean outlier dimensions
transformers have). Rows carry a 0/1 ``mask`` so padded batches keep one compiled shape.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST  # analysis numbers must not depend on the accelerator's matmul default


class CkaStats(NamedTuple):
    """Weighted count, means and centred (co-)moments of paired rows seen so far."""

    count: jax.Array  # []
    mean_x: jax.Array  # [dx]
    mean_y: jax.Array  # [dy]
    cxx: jax.Array  # [dx, dx]
    cyy: jax.Array  # [dy, dy]
    cxy: jax.Array  # [dx, dy]


def cka_init(dim_x: int, dim_y: int) -> CkaStats:
    z = jnp.zeros
    return CkaStats(z(()), z((dim_x,)), z((dim_y,)), z((dim_x, dim_x)), z((dim_y, dim_y)), z((dim_x, dim_y)))


def _weights(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    return jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)


def _moments(x: jax.Array, y: jax.Array, w: jax.Array) -> CkaStats:
    """Stats of one batch ``x [n, dx]``, ``y [n, dy]`` with row weights ``w [n]``."""
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    n = w.sum()
    safe = jnp.maximum(n, 1.0)
    mx, my = (w @ x) / safe, (w @ y) / safe
    xc, yc = (x - mx) * w[:, None], y - my  # weights are 0/1, so one factor of w is enough
    dot = lambda a, b: jnp.einsum("na,nb->ab", a, b, precision=_HI)  # noqa: E731
    return CkaStats(n, mx, my, dot(xc, x - mx), dot(yc * w[:, None], yc), dot(xc, yc))


def cka_merge(a: CkaStats, b: CkaStats) -> CkaStats:
    """Stats of the union of two disjoint row sets (exact; order-independent up to rounding)."""
    n = a.count + b.count
    frac = jnp.where(n > 0, b.count / jnp.maximum(n, 1.0), 0.0)
    dx, dy = b.mean_x - a.mean_x, b.mean_y - a.mean_y
    scale = a.count * frac  # = na * nb / n
    return CkaStats(
        n,
        a.mean_x + frac * dx,
        a.mean_y + frac * dy,
        a.cxx + b.cxx + scale * jnp.outer(dx, dx),
        a.cyy + b.cyy + scale * jnp.outer(dy, dy),
        a.cxy + b.cxy + scale * jnp.outer(dx, dy),
    )


@jax.jit
def cka_update(stats: CkaStats, x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None) -> CkaStats:
    """Fold one batch of paired rows ``x [n, dx]``, ``y [n, dy]`` (``mask [n]``) into ``stats``."""
    return cka_merge(stats, _moments(x, y, _weights(x, mask)))


@jax.jit
def cka_result(stats: CkaStats) -> jax.Array:
    """Linear CKA from accumulated stats; NaN when a side has no variance."""
    num = jnp.sum(stats.cxy**2)
    den = jnp.sqrt(jnp.sum(stats.cxx**2)) * jnp.sqrt(jnp.sum(stats.cyy**2))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


@jax.jit
def linear_cka(x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """One-shot linear CKA of ``x [n, dx]`` and ``y [n, dy]`` (rows paired; ``mask [n]`` 0/1)."""
    w = _weights(x, mask)
    n = jnp.maximum(w.sum(), 1.0)
    xc = (x - (w @ x) / n) * w[:, None]
    yc = (y - (w @ y) / n) * w[:, None]
    fro2 = lambda a, b: jnp.sum(jnp.einsum("na,nb->ab", a, b, precision=_HI) ** 2)  # noqa: E731
    den = jnp.sqrt(fro2(xc, xc) * fro2(yc, yc))
    return jnp.where(den > 0, fro2(xc, yc) / jnp.where(den > 0, den, 1.0), jnp.nan)


# Per-layer forms: representations stacked along a leading layer axis, x [L, n, d]; stats [L, ...].
def cka_init_layers(num_layers: int, dim_x: int, dim_y: int) -> CkaStats:
    return jax.tree_util.tree_map(lambda z: jnp.zeros((num_layers,) + z.shape), cka_init(dim_x, dim_y))


@jax.jit
def cka_update_layers(stats: CkaStats, x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None) -> CkaStats:
    """:func:`cka_update` for every layer at once: x [L, n, dx], y [L, n, dy], mask [n]."""
    return jax.vmap(lambda s, a, b: cka_update(s, a, b, mask))(stats, x, y)


cka_result_layers = jax.jit(jax.vmap(cka_result))


@jax.jit
def linear_cka_layers(x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """:func:`linear_cka` per layer: ``x [L, n, dx]``, ``y [L, n, dy]`` (paired by index) -> [L]."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"layer counts differ: {x.shape[0]} vs {y.shape[0]}")
    return jax.vmap(lambda a, b: linear_cka(a, b, mask))(x, y)
