"""Optimal-transport alignment (OTFusion, Singh & Jaggi 2020) of adapter units.

Each unit site gets a transport plan ``T`` [m_ref, m] between the reference's units and the
other adapter's, with uniform marginals, from a cost derived from the same similarities as
``jadapt.merge.align`` (cost = similarity range-normalised to [0, 1], reversed):

- **exact** OT with uniform, equal-size marginals has a permutation matrix (/ m) among its
  optimal plans (Birkhoff), so ``exact=True`` *is* permutation alignment: solved by
  ``solve_assignment``;
- **Sinkhorn** (entropic, log-domain, ``epsilon`` relative to the [0, 1] cost range) gives
  a soft plan; each reference unit then takes the barycentre of the other's units under
  its row of ``T`` (``T`` row-normalised: ``m_ref * T``). Sizes may differ (m != m_ref): the
  result has the reference's sizes.

After transport every adapter is in the reference's unit basis and they are averaged.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt.merge import sites
from jadapt.merge.align import similarities
from jadapt.merge.assignment import solve_assignment
from jadapt.merge.average import average
from jadapt.merge.permutation import permutation_matrix

Tree = Mapping[str, Any]


@functools.partial(jax.jit, static_argnames=("num_iters",))
def sinkhorn(cost: jax.Array, a: Optional[jax.Array] = None, b: Optional[jax.Array] = None, *,
             epsilon: float = 0.05, num_iters: int = 200) -> jax.Array:
    """Entropic OT plan [..., n, m] with row sums ``a`` [n] and column sums ``b`` [m].

    Marginals default to uniform (1/n, 1/m). Log-domain updates, so small ``epsilon`` is
    stable; after the last (column) update the column sums are exact and the row sums
    converge with ``num_iters``.
    """
    n, m = cost.shape[-2:]
    cost = cost.astype(jnp.float32)
    log_a = jnp.log(jnp.full((n,), 1.0 / n) if a is None else a)
    log_b = jnp.log(jnp.full((m,), 1.0 / m) if b is None else b)
    lse = jax.scipy.special.logsumexp

    def body(_, fg):
        f, g = fg
        f = epsilon * (log_a - lse((g[..., None, :] - cost) / epsilon, axis=-1))
        g = epsilon * (log_b - lse((f[..., :, None] - cost) / epsilon, axis=-2))
        return f, g

    f0 = jnp.zeros(cost.shape[:-1], jnp.float32)
    g0 = jnp.zeros(cost.shape[:-2] + (m,), jnp.float32)
    f, g = jax.lax.fori_loop(0, num_iters, body, (f0, g0))
    return jnp.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)


def exact_transport(cost: jax.Array, *, solver: str = "hungarian") -> jax.Array:
    """Exact OT plan [..., n, n] for uniform marginals: a permutation matrix / n."""
    n = cost.shape[-1]
    if cost.shape[-2] != n:
        raise ValueError(f"exact OT here needs equal sizes (a permutation); got cost {cost.shape}: use sinkhorn")
    perm = solve_assignment(cost, solver=solver, maximize=False)
    return permutation_matrix(perm) / n


def similarity_to_cost(sim: jax.Array) -> jax.Array:
    """Similarity [..., n, m] -> cost in [0, 1] (0 = most similar) per matrix."""
    hi = sim.max(axis=(-2, -1), keepdims=True)
    lo = sim.min(axis=(-2, -1), keepdims=True)
    return (hi - sim) / jnp.maximum(hi - lo, 1e-12)


def transport_adapter(adapter: Tree, plans: Mapping[str, jax.Array]) -> dict:
    """Map each site's units into the reference basis: unit i <- sum_j (T_ij / sum_j T_ij) unit j."""
    kinds = sites.unit_sites(adapter)
    flat = tree.flatten(adapter)
    for site, plan in plans.items():
        t = plan / jnp.maximum(plan.sum(-1, keepdims=True), 1e-30)
        for rel, axis in sites.UNIT_AXES[kinds[site]].items():
            path = f"{site}/{rel}"
            if path in flat:
                x = jnp.moveaxis(flat[path], axis, 0)
                y = jnp.tensordot(t, x.astype(jnp.float32), axes=1).astype(x.dtype)
                flat[path] = jnp.moveaxis(y, 0, axis)
    return tree.unflatten(flat)


def transport_plans(reference: Tree, adapter: Tree, *, method: str = "weights",
                    reference_activations=None, adapter_activations=None, mask=None,
                    exact: bool = False, epsilon: float = 0.05, num_iters: int = 200,
                    solver: str = "hungarian") -> dict[str, jax.Array]:
    """{site: plan [m_ref, m]} from weight or activation similarities."""
    sims = similarities(reference, [adapter], method=method, mask=mask,
                                  reference_activations=reference_activations,
                                  activations=None if adapter_activations is None else [adapter_activations])
    plans = {}
    for site, s in sims.items():
        cost = similarity_to_cost(s[0])
        plans[site] = exact_transport(cost, solver=solver) if exact else \
            sinkhorn(cost, epsilon=epsilon, num_iters=num_iters)
    return plans


def ot_align(reference: Tree, adapter: Tree, **kw) -> tuple[dict, dict]:
    """(``adapter`` transported into ``reference``'s unit basis, {site: plan}).

    Keyword arguments as ``transport_plans``.
    """
    reference, adapter = sites.prepare([reference, adapter], units_may_differ=True)
    plans = transport_plans(reference, adapter, **kw)
    return transport_adapter(adapter, plans), plans


def ot_merge(adapters: Sequence[Tree], *, reference: int = 0, weights: Optional[Any] = None,
             method: str = "weights", activations=None, mask=None, exact: bool = False,
             epsilon: float = 0.05, num_iters: int = 200, solver: str = "hungarian") -> dict:
    """OTFusion-style merge: transport every adapter to the reference's units, then average."""
    adapters = sites.prepare(adapters, units_may_differ=True)
    k_all = len(adapters)
    if not -k_all <= reference < k_all:
        raise ValueError(f"reference {reference} is out of range for {k_all} adapters")
    reference %= k_all
    ref = adapters[reference]
    moved = []
    for k, a in enumerate(adapters):
        if k == reference:
            moved.append(a)
            continue
        plans = transport_plans(ref, a, method=method, mask=mask, exact=exact, epsilon=epsilon,
                                num_iters=num_iters, solver=solver,
                                reference_activations=None if activations is None else activations[reference],
                                adapter_activations=None if activations is None else activations[k])
        moved.append(transport_adapter(a, plans))
    return average(moved, weights)
