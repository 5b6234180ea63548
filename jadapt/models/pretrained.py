"""Build an ``AdapterModel`` around a pretrained HF encoder and add / remove adapters.

Everything returns new (model, params) pairs; params are plain nested dicts.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Optional

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt.adapters.config import AdapterConfig
from jadapt.models.config import EncoderConfig
from jadapt.models.hf import convert_state_dict, iter_state_dict, resolve_model_path
from jadapt.models.model import AdapterModel, HeadConfig


def init_params(model: AdapterModel, rng: jax.Array, seq_len: int = 8, *,
                paths: Optional[Iterable[str]] = None) -> dict:
    """Fresh random params for every leaf of ``model`` (jit-compiled init), or only for
    ``paths``: the same values, and XLA drops the rest's random draws (a pretrained
    backbone is not drawn only to be overwritten)."""
    ids = jnp.ones((1, seq_len), jnp.int32)
    keep = None if paths is None else frozenset(paths)

    @jax.jit
    def _init(key):
        params = model.init({"params": key}, ids, jnp.ones_like(ids))["params"]
        if keep is None:
            return params
        return {p: x for p, x in tree.flatten(params).items() if p in keep}

    out = jax.tree_util.tree_map(lambda x: x, _init(rng))
    return out if keep is None else tree.unflatten(out)


def param_shapes(model: AdapterModel, seq_len: int = 8) -> dict[str, tuple]:
    ids = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    shapes = jax.eval_shape(lambda i: model.init({"params": jax.random.key(0)}, i, i)["params"], ids)
    return {p: tuple(s.shape) for p, s in tree.flatten(shapes).items()}


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
    """Pretrained encoder + fresh adapters / head.

    >>> model, params = load_pretrained(adapters=(("sst2", preset("pfeiffer", bottleneck=64)),),
    ...                                 head=HeadConfig(num_labels=2))
    """
    path = resolve_model_path(name_or_path)
    config = EncoderConfig.from_pretrained(path)
    model = AdapterModel(
        config,
        adapters=tuple(adapters),
        active=tuple(n for n, _ in adapters) if active is None else tuple(active),
        head=head,
        compute_dtype=compute_dtype,
        remat=remat,
        attention=attention,
    )
    shapes = param_shapes(model)
    loaded = convert_state_dict(iter_state_dict(path), shapes)  # tensor by tensor: one copy in memory
    return model, with_fresh_leaves(model, loaded, shapes, jax.random.key(seed))


def with_fresh_leaves(model: AdapterModel, params: dict, expected, rng: jax.Array) -> dict:
    """``params`` plus fresh random values (``init_params``) for the paths of ``expected``
    it lacks (new adapters, a head); no init is compiled when nothing is missing."""
    have = tree.flatten(params)
    missing = [p for p in expected if p not in have]
    return tree.merge(init_params(model, rng, paths=missing), params) if missing else params


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
    return tree.select(params, adapter_path_pattern(name))


def adapter_path_pattern(name: str) -> str:
    return rf"/(attn_adapter|ffn_adapter|lora_\w+)/{re.escape(name)}/"


def remove_adapter(model: AdapterModel, params: dict, name: str) -> tuple[AdapterModel, dict]:
    if name not in dict(model.adapters):
        raise KeyError(f"no adapter {name!r}; existing: {[n for n, _ in model.adapters]}")
    rx = re.compile(adapter_path_pattern(name))
    kept = {p: x for p, x in tree.flatten(params).items() if not rx.search(p)}
    new = model.clone(adapters=tuple((n, c) for n, c in model.adapters if n != name),
                      active=tuple(a for a in model.active if a != name))
    return new, tree.unflatten(kept)
