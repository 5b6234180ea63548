"""Linear assignment inside ``jit``: which unit of one adapter matches which of another.

``solve_assignment(similarity [..., m, m])`` returns ``perm [..., m]`` maximising
``sum_i similarity[i, perm[i]]`` for every leading index at once -- all sites of all
adapters in one call:

- ``solver="hungarian"``: ``optax.assignment.hungarian_algorithm`` (exact, pure JAX, so it
  compiles into the caller's program and runs on any backend), batched with ``vmap``
  (``batching="map"`` runs the problems one after another with ``lax.map``: a vmapped
  ``while_loop`` steps every problem until the slowest is done, so on a CPU ``map`` can win
  when problems differ a lot in difficulty -- see benchmarks/bench_align.py);
- ``solver="scipy"``: ``scipy.optimize.linear_sum_assignment`` on the host through
  ``jax.pure_callback`` -- the reference the tests compare against.

Non-finite similarities are treated as 0 (a NaN would stall the Hungarian loop).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

SOLVERS = ("hungarian", "scipy")
BATCHING = ("vmap", "map")


def _hungarian(cost: jax.Array) -> jax.Array:
    """[m, m] cost -> perm [m] minimising sum_i cost[i, perm[i]]."""
    rows, cols = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros(cost.shape[-1], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _scipy_host(sim: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    sim = np.asarray(sim, np.float64)
    flat = sim.reshape((-1,) + sim.shape[-2:])
    out = np.empty(flat.shape[:-1], np.int32)
    for b, s in enumerate(flat):
        rows, cols = linear_sum_assignment(s, maximize=True)
        out[b, rows] = cols
    return out.reshape(sim.shape[:-1])


def solve_assignment(similarity: jax.Array, *, solver: str = "hungarian", maximize: bool = True,
                     batching: str = "vmap") -> jax.Array:
    """perm [..., m] (int32) with perm[i] the column matched to row i.

    ``maximize=False`` minimises instead (``similarity`` is then a cost). Compiled once per
    shape and options (inlined when called inside a ``jit``).
    """
    if solver not in SOLVERS:
        raise ValueError(f"assignment solver {solver!r} is not supported; expected one of {SOLVERS}")
    if batching not in BATCHING:
        raise ValueError(f"assignment batching {batching!r} is not supported; expected one of {BATCHING}")
    shape = jnp.shape(similarity)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"assignment needs square [..., m, m] matrices, got shape {shape}")
    return _solve(similarity, solver, maximize, batching)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _solve(sim: jax.Array, solver: str, maximize: bool, batching: str) -> jax.Array:
    sim = sim.astype(jnp.result_type(sim.dtype, jnp.float32))
    sim = jnp.where(jnp.isfinite(sim), sim, 0)
    if not maximize:
        sim = -sim
    if solver == "scipy":
        out = jax.ShapeDtypeStruct(sim.shape[:-1], jnp.int32)
        return jax.pure_callback(_scipy_host, out, sim, vmap_method="broadcast_all")
    lead, m = sim.shape[:-2], sim.shape[-1]
    if not lead:
        return _hungarian(-sim)
    flat = -sim.reshape((-1, m, m))
    perms = jax.vmap(_hungarian)(flat) if batching == "vmap" else jax.lax.map(_hungarian, flat)
    return perms.reshape(lead + (m,))


def assignment_score(similarity: jax.Array, perm: jax.Array) -> jax.Array:
    """sum_i similarity[..., i, perm[..., i]]."""
    return jnp.take_along_axis(similarity, perm[..., None], axis=-1)[..., 0].sum(-1)
