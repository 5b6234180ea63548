"""Representational similarity analysis (RSA), computed block by block.

RSA of paired representations ``X [n, dx]`` and ``Y [n, dy]`` (row i of both = sentence i):
the Pearson correlation between the strict upper triangles of the two cosine-similarity
matrices ``S_X = U U^T`` and ``S_Y = V V^T`` (``U, V`` = unit-normalised rows). It is 1 for
X = Y and invariant to orthogonal transforms and isotropic scaling of either side.

Memory: the n x n matrices are never formed. The similarity matrix is visited in
``block_size x block_size`` tiles (i <= j, diagonal tiles masked to their strict upper
triangle); each tile gives the Pearson sufficient statistics of its entries (count, means,
centred sums of squares and cross-products), and tiles are merged with Chan et al.'s exact
pairwise update. Peak extra memory is O(block_size^2); only the normalised vectors (n x d,
e.g. 500 x 384 floats) are kept. Centred per-tile statistics, not raw sums of x, x^2, xy,
are merged because cosine similarities of anisotropic transformer embeddings cluster near a
large mean (often ~0.9), where raw float32 sums lose most of the variance to cancellation.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

_HI = jax.lax.Precision.HIGHEST


class PearsonStats(NamedTuple):
    """Sufficient statistics of a weighted set of pairs (a, b), centred for stability."""

    count: jax.Array
    mean_a: jax.Array
    mean_b: jax.Array
    m2_a: jax.Array  # sum w (a - mean_a)^2
    m2_b: jax.Array
    c_ab: jax.Array  # sum w (a - mean_a)(b - mean_b)


def pearson_init() -> PearsonStats:
    return PearsonStats(*(jnp.zeros(()) for _ in range(6)))


def pearson_stats(a: jax.Array, b: jax.Array, w: jax.Array) -> PearsonStats:
    """Stats of the entries of ``a``, ``b`` (any equal shape) with weights ``w`` (0/1)."""
    n = w.sum()
    safe = jnp.maximum(n, 1.0)
    ma, mb = (w * a).sum() / safe, (w * b).sum() / safe
    da, db = a - ma, b - mb
    return PearsonStats(n, ma, mb, (w * da * da).sum(), (w * db * db).sum(), (w * da * db).sum())


def pearson_merge(s: PearsonStats, t: PearsonStats) -> PearsonStats:
    """Stats of the union of two disjoint sets of pairs (exact)."""
    n = s.count + t.count
    frac = jnp.where(n > 0, t.count / jnp.maximum(n, 1.0), 0.0)
    da, db = t.mean_a - s.mean_a, t.mean_b - s.mean_b
    scale = s.count * frac  # = ns * nt / n
    return PearsonStats(
        n,
        s.mean_a + frac * da,
        s.mean_b + frac * db,
        s.m2_a + t.m2_a + scale * da * da,
        s.m2_b + t.m2_b + scale * db * db,
        s.c_ab + t.c_ab + scale * da * db,
    )


def pearson_result(s: PearsonStats) -> jax.Array:
    """Pearson r; NaN when either side is constant."""
    den = jnp.sqrt(s.m2_a * s.m2_b)
    return jnp.where(den > 0, s.c_ab / jnp.where(den > 0, den, 1.0), jnp.nan)


def normalize_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit L2 norm per row (all-zero rows stay zero)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames="block_size")
def rsa(x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None, block_size: int = 256) -> jax.Array:
    """Cosine-similarity RSA of ``x [n, dx]`` and ``y [n, dy]``; ``mask [n]`` drops rows (0/1)."""
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"rsa needs paired rows: x has {n}, y has {y.shape[0]}")
    bs = max(1, min(block_size, n))
    nb = -(-n // bs)
    pad = nb * bs - n
    w = jnp.ones(n, jnp.float32) if mask is None else mask.astype(jnp.float32)
    tiles = lambda z: jnp.pad(z, ((0, pad),) + ((0, 0),) * (z.ndim - 1)).reshape((nb, bs) + z.shape[1:])  # noqa: E731
    u, v, w = tiles(normalize_rows(x)), tiles(normalize_rows(y)), tiles(w)
    ii, jj = np.triu_indices(nb)  # tile pairs i <= j (static)
    strict = jnp.triu(jnp.ones((bs, bs), jnp.float32), k=1)

    def tile(stats, ij):
        i, j = ij
        a = jnp.einsum("pd,qd->pq", u[i], u[j], precision=_HI)
        b = jnp.einsum("pd,qd->pq", v[i], v[j], precision=_HI)
        wij = w[i][:, None] * w[j][None, :] * jnp.where(i == j, strict, 1.0)
        return pearson_merge(stats, pearson_stats(a, b, wij)), None

    stats, _ = jax.lax.scan(tile, pearson_init(), (jnp.asarray(ii), jnp.asarray(jj)))
    return pearson_result(stats)


@functools.partial(jax.jit, static_argnames="block_size")
def rsa_layers(x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None, block_size: int = 256) -> jax.Array:
    """:func:`rsa` per layer: ``x [L, n, dx]``, ``y [L, n, dy]`` (layers paired by index) -> [L]."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"layer counts differ: {x.shape[0]} vs {y.shape[0]}")
    return jax.vmap(lambda a, b: rsa(a, b, mask, block_size=block_size))(x, y)
