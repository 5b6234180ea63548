"""Where an adapter's hidden units live in its params tree, and checks that adapters match.

An adapter tree is what ``jadapt.models.pretrained.adapter_params(params, name)`` returns:
leaves at ``encoder/layer_i/<site>/<name>/...`` with site ``attn_adapter``, ``ffn_adapter``
or ``lora_<target>`` (the LoRA banks sit one level deeper, under ``attention/``).

A *unit site* is the node that holds one layer of hidden units:

- bottleneck: ``down/kernel`` [d, m], ``down/bias`` [m], ``up/kernel`` [m, d], ``up/bias`` [d]
  (+ optional ``norm_before`` / ``norm_after`` LayerNorms over d);
- LoRA: ``lora_a`` [in, r], ``lora_b`` [r, out].

Reordering the m (or r) units -- columns of the incoming matrix, entries of the incoming
bias, rows of the outgoing matrix -- leaves the function unchanged; ``UNIT_AXES`` says which
axis of which leaf is the unit axis. Everything here is structural (shapes and paths), so it
runs unchanged on tracers inside ``jit``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from jadapt import tree
from jadapt.param_paths import SITE_KEY

# leaf path relative to the unit site -> the unit axis of that leaf
UNIT_AXES = {
    "bottleneck": {"down/kernel": 1, "down/bias": 0, "up/kernel": 0},
    "lora": {"lora_a": 1, "lora_b": 0},
}
# the incoming [in, m] and outgoing [m, out] matrix of each kind of site
MATRICES = {"bottleneck": ("down/kernel", "up/kernel"), "lora": ("lora_a", "lora_b")}


def _name_index(parts: Sequence[str]) -> Optional[int]:
    """Index of the adapter-name component in a split leaf path (after the site key)."""
    for i, p in enumerate(parts[:-1]):
        if SITE_KEY.match(p):
            return i + 1
    return None


def adapter_names(adapter: Mapping[str, Any]) -> tuple[str, ...]:
    """Adapter names found in a tree, in order of first appearance."""
    names: dict[str, None] = {}
    for path in tree.flatten(adapter):
        parts = path.split("/")
        i = _name_index(parts)
        if i is not None and i < len(parts) - 1:
            names[parts[i]] = None
    return tuple(names)


def rename_adapter(adapter: Mapping[str, Any], old: str, new: str) -> dict:
    """The same tree with adapter ``old`` called ``new`` (leaves are not copied)."""
    if old not in adapter_names(adapter):
        raise KeyError(f"no adapter {old!r} in tree; found {list(adapter_names(adapter))}")
    out = {}
    for path, leaf in tree.flatten(adapter).items():
        parts = path.split("/")
        i = _name_index(parts)
        if i is not None and parts[i] == old:
            parts[i] = new
        out["/".join(parts)] = leaf
    return tree.unflatten(out)


def unify_names(adapters: Sequence[Mapping[str, Any]], name: Optional[str] = None) -> list[dict]:
    """Give every adapter the same name (``name``, default the first adapter's).

    Each tree must hold at most one adapter; trees without adapter sites (plain pytrees)
    pass through unchanged, so the merges also work on arbitrary matching trees.
    """
    out = []
    for k, a in enumerate(adapters):
        names = adapter_names(a)
        if len(names) > 1:
            raise ValueError(f"adapter #{k} holds {len(names)} adapters {list(names)}; "
                             "pass one adapter per tree (jadapt.models.pretrained.adapter_params)")
        if names and name is None:
            name = names[0]
        out.append(rename_adapter(a, names[0], name) if names and names[0] != name else dict(a))
    return out


def unit_sites(adapter: Mapping[str, Any]) -> dict[str, str]:
    """{site path: "bottleneck" | "lora"} for every unit site, in tree order."""
    flat = tree.flatten(adapter)
    sites: dict[str, str] = {}
    for path in flat:
        for kind, (inc, out) in MATRICES.items():
            if path.endswith("/" + inc):
                site = path[: -len(inc) - 1]
                if f"{site}/{out}" not in flat:
                    raise ValueError(f"unit site {site} has {inc} but no {out}")
                sites[site] = kind
    return sites


def unit_axis_of(adapter: Mapping[str, Any]) -> dict[str, Optional[int]]:
    """{leaf path: unit axis or None} -- None for leaves that do not index units."""
    sites = unit_sites(adapter)
    out: dict[str, Optional[int]] = {}
    for path in tree.flatten(adapter):
        out[path] = None
        for site, kind in sites.items():
            rel = path[len(site) + 1:] if path.startswith(site + "/") else None
            if rel in UNIT_AXES[kind]:
                out[path] = UNIT_AXES[kind][rel]
    return out


def num_units(adapter: Mapping[str, Any], site: str) -> int:
    """m (bottleneck) or r (LoRA) of one unit site."""
    kind = unit_sites(adapter)[site]
    return int(tree.flatten(adapter)[f"{site}/{MATRICES[kind][0]}"].shape[-1])


def check_compatible(adapters: Sequence[Mapping[str, Any]], *, units_may_differ: bool = False,
                     what: str = "adapter") -> None:
    """Raise a ValueError naming the site path and shapes if the trees cannot be merged.

    Same leaf paths and same shapes are required; with ``units_may_differ`` (OT fusion),
    the unit axis of unit leaves may differ in size.
    """
    if not adapters:
        raise ValueError(f"need at least one {what} to merge")
    flats = [tree.flatten(a) for a in adapters]
    ref, axes = flats[0], unit_axis_of(adapters[0])
    for k, flat in enumerate(flats[1:], start=1):
        missing = [p for p in ref if p not in flat]
        extra = [p for p in flat if p not in ref]
        if missing or extra:
            raise ValueError(
                f"{what} #{k} does not match {what} #0: "
                + (f"{len(missing)} path(s) missing, e.g. {missing[:3]}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"{len(extra)} extra path(s), e.g. {extra[:3]}" if extra else "")
                + _rename_hint(adapters[0], adapters[k]))
        for p, x in ref.items():
            a, b = tuple(x.shape), tuple(flat[p].shape)
            if a == b:
                continue
            ax = axes[p]
            if units_may_differ and ax is not None and len(a) == len(b) and \
                    all(i == ax or u == v for i, (u, v) in enumerate(zip(a, b))):
                continue
            raise ValueError(f"{what} #{k} does not match {what} #0 at {p}: shape {b} vs {a}"
                             + (" (different bottleneck sizes / LoRA ranks can only be merged with "
                                "method 'ot')" if ax is not None else ""))
        for p, x in ref.items():
            if x.dtype != flat[p].dtype:
                raise ValueError(f"{what} #{k} does not match {what} #0 at {p}: dtype {flat[p].dtype} vs {x.dtype}")


def _rename_hint(a, b) -> str:
    na, nb = adapter_names(a), adapter_names(b)
    if na and nb and na != nb:
        return f" (adapter names differ: {list(na)} vs {list(nb)}; use jadapt.merge.unify_names)"
    return ""


def prepare(adapters: Sequence[Mapping[str, Any]], *, units_may_differ: bool = False) -> list[dict]:
    """unify_names + check_compatible: what every merge does first."""
    adapters = unify_names(list(adapters))
    check_compatible(adapters, units_may_differ=units_may_differ)
    return adapters
