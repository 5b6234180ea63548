"""Path-named views of param pytrees: the one place that matches leaves by path.

Params are plain nested dicts; a leaf's path is its keys joined by "/", e.g.
``encoder/layer_3/ffn_adapter/sst2/down/kernel``. Masks, sharding rules, checkpoints,
merges and imports all select leaves through the helpers here, so path semantics are
defined exactly once.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax

Params = dict  # nested dict[str, dict | Array]


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}. Keys keep insertion order."""
    out: dict[str, Any] = {}

    def rec(node, prefix):
        if isinstance(node, Mapping):
            if not node and prefix:
                return
            for k, v in node.items():
                rec(v, f"{prefix}{sep}{k}" if prefix else str(k))
        else:
            out[prefix] = node

    rec(tree, "")
    return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict:
    """Inverse of :func:`flatten`."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def map_with_path(fn: Callable[[str, Any], Any], tree: Mapping[str, Any]) -> dict:
    """Apply ``fn(path, leaf)`` to every leaf, keeping the structure."""
    return unflatten({p: fn(p, x) for p, x in flatten(tree).items()})


def select(tree: Mapping[str, Any], pattern: str) -> dict:
    """The sub-tree of leaves whose path matches ``pattern`` (re.search)."""
    rx = re.compile(pattern)
    return unflatten({p: x for p, x in flatten(tree).items() if rx.search(p)})


def merge(*trees: Mapping[str, Any]) -> dict:
    """Union of disjoint-or-overriding trees; later trees win on equal paths."""
    flat: dict[str, Any] = {}
    for t in trees:
        flat.update(flatten(t))
    return unflatten(flat)


def partition(tree: Mapping[str, Any], predicate: Callable[[str], bool]) -> tuple[dict, dict]:
    """Split into (matching, rest) by a predicate on paths."""
    a, b = {}, {}
    for p, x in flatten(tree).items():
        (a if predicate(p) else b)[p] = x
    return unflatten(a), unflatten(b)


def label_by_rules(
    tree: Mapping[str, Any],
    rules: Sequence[tuple[str, str]],
    *,
    default: str | None = None,
) -> dict:
    """Label every leaf by the first ``(regex, label)`` rule whose regex matches its path.

    Every leaf must be covered (or a ``default`` given): a param that silently matches no
    rule is how frozen weights end up training, so that is an error naming the paths.
    """
    compiled = [(re.compile(rx), lab) for rx, lab in rules]
    labels, missing = {}, []
    for p in flatten(tree):
        for rx, lab in compiled:
            if rx.search(p):
                labels[p] = lab
                break
        else:
            if default is None:
                missing.append(p)
            else:
                labels[p] = default
    if missing:
        raise ValueError(
            f"{len(missing)} param(s) match no rule, e.g. {missing[:3]}; rules: {[r for r, _ in rules]}"
        )
    return unflatten(labels)


def count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def paths(tree: Mapping[str, Any]) -> list[str]:
    return list(flatten(tree))


def matching(paths_: Iterable[str], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [p for p in paths_ if rx.search(p)]
