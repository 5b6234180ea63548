"""Permutation alignment of adapters' hidden units before averaging (MerA, He et al. 2023).

Two adapters trained from different seeds or on different tasks can compute similar
features in a different unit order; averaging them unit-by-unit then blurs both. Aligning
finds, per unit site, the permutation of the other adapter's units that best matches the
reference's units, then averages.

- **weights**: unit j's feature is its incoming and outgoing weights
  ``[W_down[:, j]; b_down[j]; W_up[j, :]]`` (LoRA: ``[A[:, j]; B[j, :]]``); similarity is
  the inner product (weight matching: maximises ``<W_ref, P W_other>``).
- **activations**: Pearson correlation of the bottleneck activations of the two adapters on
  the same probe tokens (``jadapt.merge.activations``), each adapter run alone in the frozen
  model.

Per adapter, all sites' similarity matrices are stacked [S, m, m] and every other adapter's
stack with them, and one ``solve_assignment`` call solves them all (vmapped, inside jit).
``activations`` are dicts keyed by site (``site_key``: the site path without the adapter
name, e.g. ``encoder/layer_0/ffn_adapter``) with values [N, m]; ``mask`` [N] marks real tokens.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt.merge import assignment, permutation, sites
from jadapt.merge.average import average

Tree = Mapping[str, Any]
Activations = Mapping[str, jax.Array]
METHODS = ("weights", "activations")


def site_key(site: str) -> str:
    """``encoder/layer_0/ffn_adapter/<name>`` -> ``encoder/layer_0/ffn_adapter``."""
    return site.rsplit("/", 1)[0]


def unit_features(adapter: Tree, site: str) -> jax.Array:
    """[m, F]: each unit's incoming weights (and bias) followed by its outgoing weights."""
    kind = sites.unit_sites(adapter)[site]
    flat = tree.flatten(adapter)
    inc, out = (flat[f"{site}/{p}"].astype(jnp.float32) for p in sites.MATRICES[kind])
    parts = [inc.T]
    if kind == "bottleneck" and f"{site}/down/bias" in flat:
        parts.append(flat[f"{site}/down/bias"].astype(jnp.float32)[:, None])
    parts.append(out)
    return jnp.concatenate(parts, axis=-1)


def weight_similarity(reference: Tree, adapter: Tree, site: str) -> jax.Array:
    """[m_ref, m] inner products of unit features: S[i, j] = <ref unit i, adapter unit j>.

    Computed as a sum of per-matrix products (no concatenation), so sharded leaves need no
    common layout.
    """
    kind = sites.unit_sites(reference)[site]
    fr, fa = tree.flatten(reference), tree.flatten(adapter)
    inc, out = sites.MATRICES[kind]
    get = lambda flat, rel: flat[f"{site}/{rel}"].astype(jnp.float32)
    sim = get(fr, inc).T @ get(fa, inc) + get(fr, out) @ get(fa, out).T
    if kind == "bottleneck" and f"{site}/down/bias" in fr:
        sim = sim + get(fr, "down/bias")[:, None] * get(fa, "down/bias")[None, :]
    return sim


def activation_similarity(ref_acts: jax.Array, acts: jax.Array, mask: Optional[jax.Array] = None,
                          eps: float = 1e-8) -> jax.Array:
    """[m_ref, m] Pearson correlation over tokens of [N, m_ref] and [N, m] activations.

    ``mask`` [N] (1 = real token) weights the tokens; a constant (dead) unit correlates 0.
    """
    x, y = ref_acts.astype(jnp.float32), acts.astype(jnp.float32)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"activations must cover the same tokens: {x.shape} vs {y.shape}")
    w = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32).reshape(-1)
    w = w / jnp.maximum(w.sum(), 1.0)
    xc, yc = x - w @ x, y - w @ y
    cov = (xc * w[:, None]).T @ yc
    sx, sy = jnp.sqrt(w @ (xc * xc)), jnp.sqrt(w @ (yc * yc))
    return cov / jnp.maximum(sx[:, None] * sy[None, :], eps)


def similarities(reference: Tree, adapters: Sequence[Tree], *, method: str = "weights",
                 activations: Optional[Sequence[Activations]] = None, mask: Optional[jax.Array] = None,
                 reference_activations: Optional[Activations] = None) -> dict[str, jax.Array]:
    """{site: [K, m, m]} similarity of the reference's units (rows) to each adapter's (cols)."""
    if method not in METHODS:
        raise ValueError(f"alignment method {method!r} is not supported; expected one of {METHODS}")
    out = {}
    for site in sites.unit_sites(reference):
        if method == "weights":
            out[site] = jnp.stack([weight_similarity(reference, a, site) for a in adapters])
            continue
        if activations is None or reference_activations is None:
            raise ValueError("method 'activations' needs activations for the reference and every adapter")
        key = site_key(site)
        for k, acts in enumerate([reference_activations, *activations]):
            if key not in acts:
                raise ValueError(f"no activations for site {key} (adapter #{k}); have {sorted(acts)[:4]}...")
        out[site] = jnp.stack([activation_similarity(reference_activations[key], acts[key], mask)
                               for acts in activations])
    return out


def solve_sites(sims: Mapping[str, jax.Array], *, solver: str = "hungarian",
                batching: str = "vmap") -> dict[str, jax.Array]:
    """{site: [K, m, m]} -> {site: [K, m]} perms; sites with equal m are solved in one call."""
    groups: dict[int, list[str]] = {}
    for site, s in sims.items():
        groups.setdefault(s.shape[-1], []).append(site)
    out = {}
    for names in groups.values():
        perms = assignment.solve_assignment(jnp.stack([sims[s] for s in names]), solver=solver, batching=batching)
        out.update({s: perms[i] for i, s in enumerate(names)})
    return out


def align_to_reference(adapters: Sequence[Tree], *, reference: int = 0, method: str = "weights",
                       activations: Optional[Sequence[Activations]] = None, mask: Optional[jax.Array] = None,
                       solver: str = "hungarian", batching: str = "vmap") -> tuple[list[dict], list[dict]]:
    """Permute every adapter's units to match ``adapters[reference]``.

    Returns (aligned adapters, perms) in input order; the reference is returned as is with
    identity perms. ``activations[k]`` belongs to ``adapters[k]``.
    """
    adapters = sites.prepare(adapters)
    k_all = len(adapters)
    if not -k_all <= reference < k_all:
        raise ValueError(f"reference {reference} is out of range for {k_all} adapters")
    reference %= k_all
    if activations is not None and len(activations) != k_all:
        raise ValueError(f"need one activations dict per adapter: {len(activations)} for {k_all} adapters")
    ref = adapters[reference]
    others = [i for i in range(k_all) if i != reference]
    if not others or not sites.unit_sites(ref):
        return adapters, [permutation.identity_permutations(a) for a in adapters]
    sims = similarities(ref, [adapters[i] for i in others], method=method, mask=mask,
                        activations=None if activations is None else [activations[i] for i in others],
                        reference_activations=None if activations is None else activations[reference])
    perms = solve_sites(sims, solver=solver, batching=batching)
    aligned, all_perms = list(adapters), [permutation.identity_permutations(ref)] * k_all
    for j, i in enumerate(others):
        p = {site: perms[site][j] for site in perms}
        aligned[i], all_perms[i] = permutation.permute_adapter(adapters[i], p), p
    return aligned, all_perms


def align_by_weights(reference: Tree, adapter: Tree, *, solver: str = "hungarian",
                     batching: str = "vmap") -> tuple[dict, dict]:
    """(``adapter`` permuted to match ``reference`` by weights, {site: perm})."""
    aligned, perms = align_to_reference([reference, adapter], method="weights", solver=solver, batching=batching)
    return aligned[1], perms[1]


def align_by_activations(reference: Tree, adapter: Tree, reference_activations: Activations,
                         adapter_activations: Activations, mask: Optional[jax.Array] = None, *,
                         solver: str = "hungarian", batching: str = "vmap") -> tuple[dict, dict]:
    """(``adapter`` permuted to match ``reference`` by activation correlation, {site: perm})."""
    aligned, perms = align_to_reference([reference, adapter], method="activations", mask=mask,
                                        activations=[reference_activations, adapter_activations],
                                        solver=solver, batching=batching)
    return aligned[1], perms[1]


def merge_aligned(adapters: Sequence[Tree], *, reference: int = 0, weights: Optional[Any] = None,
                  method: str = "weights", activations: Optional[Sequence[Activations]] = None,
                  mask: Optional[jax.Array] = None, solver: str = "hungarian", batching: str = "vmap") -> dict:
    """MerA: align every adapter to the reference, then take the (weighted) average."""
    aligned, _ = align_to_reference(adapters, reference=reference, method=method, activations=activations,
                                    mask=mask, solver=solver, batching=batching)
    return average(aligned, weights)
