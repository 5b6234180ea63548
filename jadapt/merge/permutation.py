"""Reorder an adapter's hidden units without changing the function it computes.

Convention (a gather): after ``permute_site(site, perm)`` unit ``i`` is the old unit
``perm[i]``. For a bottleneck that takes columns of ``down/kernel``, entries of ``down/bias``
and rows of ``up/kernel``; ``up/bias`` and LayerNorms stay. For LoRA it takes columns of
``lora_a`` and rows of ``lora_b`` (``A B`` is unchanged). If ``b = permute(a, q)`` then
``permute(b, invert_permutation(q)) == a``.

``perms`` maps unit-site paths (see ``jadapt.merge.sites.unit_sites``) to int arrays [m];
sites not named are left as they are.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt.merge import sites

Tree = Mapping[str, Any]


def invert_permutation(perm: jax.Array) -> jax.Array:
    """q with q[perm[i]] = i, batched over leading axes."""
    return jnp.argsort(perm, axis=-1).astype(perm.dtype)


def permutation_matrix(perm: jax.Array, dtype=jnp.float32) -> jax.Array:
    """P [m, m] with P[i, perm[i]] = 1, so ``P @ X`` gathers rows ``X[perm]``."""
    return jax.nn.one_hot(perm, perm.shape[-1], dtype=dtype)


def permute_site(site: Tree, perm: jax.Array, kind: str = "bottleneck") -> dict:
    """Apply one permutation to one unit site's leaves (paths relative to the site)."""
    axes = sites.UNIT_AXES[kind]
    flat = tree.flatten(site)
    return tree.unflatten({p: jnp.take(x, perm, axis=axes[p]) if p in axes else x for p, x in flat.items()})


def permute_adapter(adapter: Tree, perms: Mapping[str, jax.Array]) -> dict:
    """Apply ``perms[site]`` to every named unit site of ``adapter``."""
    kinds = sites.unit_sites(adapter)
    unknown = [s for s in perms if s not in kinds]
    if unknown:
        raise KeyError(f"no unit site(s) {unknown[:3]} in adapter; its sites: {list(kinds)[:4]}...")
    flat = tree.flatten(adapter)
    for site, perm in perms.items():
        m = flat[f"{site}/{sites.MATRICES[kinds[site]][0]}"].shape[-1]
        if perm.shape != (m,):
            raise ValueError(f"permutation for {site} has shape {perm.shape}, the site has {m} units")
        for rel, axis in sites.UNIT_AXES[kinds[site]].items():
            path = f"{site}/{rel}"
            if path in flat:
                flat[path] = jnp.take(flat[path], perm, axis=axis)
    return tree.unflatten(flat)


def random_permutations(adapter: Tree, key: jax.Array) -> dict[str, jax.Array]:
    """An independent uniform random permutation for every unit site."""
    return {site: jax.random.permutation(jax.random.fold_in(key, i), sites.num_units(adapter, site))
            for i, site in enumerate(sites.unit_sites(adapter))}


def identity_permutations(adapter: Tree) -> dict[str, jax.Array]:
    return {site: jnp.arange(sites.num_units(adapter, site)) for site in sites.unit_sites(adapter)}
