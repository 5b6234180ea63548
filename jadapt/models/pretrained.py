"""Build an ``AdapterModel`` around a pretrained HF encoder and add / remove adapters.

Everything returns new (model, params) pairs; params are plain nested dicts. The building
itself is ``jadapt.models.build`` (re-exported here: ``init_params``, ``param_shapes``).
"""
from __future__ import annotations

import os
import re
from typing import Optional

import jax

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.adapters.config import AdapterConfig
from jadapt.models.build import build, init_params, param_shapes, with_fresh_leaves
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.spec import ModelSpec

__all__ = ["add_adapter", "adapter_params", "init_params", "load_pretrained", "param_shapes", "remove_adapter",
           "with_fresh_leaves"]


def load_pretrained(
    name_or_path: str | os.PathLike | None = None,
    *,
    adapters: tuple[tuple[str, AdapterConfig], ...] = (),
    active: Optional[tuple[str, ...]] = None,
    head: Optional[HeadConfig] = None,
    compute_dtype: str = "float32",
    seed: int = 0,
    remat: bool = False,
    attention: str = "matmul",
) -> tuple[AdapterModel, dict]:
    """Pretrained encoder + fresh adapters / head (``build`` of a spec with nothing saved).

    >>> model, params = load_pretrained(adapters=(("sst2", preset("pfeiffer", bottleneck=64)),),
    ...                                 head=HeadConfig(num_labels=2))
    """
    spec = ModelSpec(base_model=name_or_path, adapters=tuple(adapters), active=active, head=head,
                     compute_dtype=compute_dtype)
    return build(spec, seed=seed, remat=remat, attention=attention)


def add_adapter(model: AdapterModel, params: dict, name: str, config: AdapterConfig, rng: jax.Array,
                *, activate: bool = True) -> tuple[AdapterModel, dict]:
    """A new named adapter beside the existing ones; existing params are untouched."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"adapter name {name!r} must use letters, digits, '_', '.', '-' only")
    if name in dict(model.adapters):
        raise ValueError(f"adapter {name!r} already exists; existing: {[n for n, _ in model.adapters]}")
    new = model.clone(adapters=model.adapters + ((name, config),),
                      active=(name,) if activate else model.active)
    fresh = init_params(new, rng)
    return new, tree.merge(params, adapter_params(fresh, name))


def adapter_params(params: dict, name: str) -> dict:
    """Only the leaves of adapter ``name`` (bottleneck sites and LoRA banks)."""
    return tree.select(params, paths.adapter_pattern(name))


def remove_adapter(model: AdapterModel, params: dict, name: str) -> tuple[AdapterModel, dict]:
    if name not in dict(model.adapters):
        raise KeyError(f"no adapter {name!r}; existing: {[n for n, _ in model.adapters]}")
    rx = re.compile(paths.adapter_pattern(name))
    kept = {p: x for p, x in tree.flatten(params).items() if not rx.search(p)}
    new = model.clone(adapters=tuple((n, c) for n, c in model.adapters if n != name),
                      active=tuple(a for a in model.active if a != name))
    return new, tree.unflatten(kept)
