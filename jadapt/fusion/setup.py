"""Fuse named adapters of a model: new fusion params, the active set, what trains.

Mirrors AdapterHub's ``add_adapter_fusion`` + ``set_active_adapters(Fuse(...))`` +
``train_adapter_fusion``: the fused adapters and the backbone stay frozen, only the fusion
layers (``encoder/layer_i/<bottleneck site>/fusion/...``, ``jadapt.param_paths``) and the head
train: ``jadapt.train.optim.trainable_rules("fusion")`` says so.
"""
from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.fusion.config import FusionConfig, fusion_preset
from jadapt.fusion.layer import FusionLayer
from jadapt.models.build import param_shapes
from jadapt.models.model import AdapterModel

FUSION_PATTERN = paths.FUSION_LAYERS


def resolve_config(model: AdapterModel, config: FusionConfig | str) -> FusionConfig:
    """A preset name or config, with ``dropout_prob=None`` replaced by the encoder's
    attention dropout (AdapterHub's default for fusion dropout)."""
    cfg = fusion_preset(config) if isinstance(config, str) else config
    if not isinstance(cfg, FusionConfig):
        raise TypeError(f"fusion config must be a FusionConfig or preset name, got {type(cfg).__name__}")
    if cfg.dropout_prob is None:
        cfg = cfg.replace(dropout_prob=float(model.config.attention_dropout))
    return cfg


def _check_names(model: AdapterModel, names: tuple[str, ...]) -> None:
    specs = dict(model.adapters)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"fusion needs at least two distinct adapter names, got {names}")
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; the model has {list(specs)}")
    if "fusion" in names:
        raise ValueError("an adapter named 'fusion' would share its path with the fusion layer; rename it")
    lora = [n for n in names if specs[n].method == "lora"]
    if lora:
        raise ValueError(f"only bottleneck adapters can be fused; {lora} are LoRA")
    sites = {specs[n].sites() for n in names}
    if len(sites) != 1:
        raise ValueError(f"fused adapters must sit at the same sites, got {[(n, specs[n].sites()) for n in names]}")


def fuse(model: AdapterModel, params: dict, names: Sequence[str], config: FusionConfig | str,
         rng: jax.Array) -> tuple[AdapterModel, dict]:
    """Activate ``names`` (in order) behind fresh fusion layers; other params are untouched.

    Existing fusion params are replaced. The fusion layer uses the last adapter's placement
    (query / residual), as AdapterHub does.

    >>> model, params = fuse(model, params, ("mnli", "qnli", "sst2"), "dynamic", jax.random.key(0))
    """
    names = tuple(names)
    _check_names(model, names)
    new = model.clone(active=names, fusion=resolve_config(model, config))
    _, kept = tree.partition(params, lambda p: re.search(FUSION_PATTERN, p) is not None)
    return new, tree.merge(kept, init_fusion_params(new, rng))


def init_fusion_params(model: AdapterModel, rng: jax.Array) -> dict:
    """Fresh params for every fusion layer ``model`` has, at the paths the model uses.

    The paths come from the model's own ``eval_shape``; each site is initialised by
    ``FusionLayer.init`` with its own key, so no full-model init is compiled."""
    sites = sorted({m.group(1) for p in param_shapes(model) if (m := paths.FUSION_SITE.match(p))})
    if not sites:
        raise ValueError(f"adapters {model.active} created no fusion layer (no bottleneck site?)")
    d = model.config.hidden_size
    k = len([n for n in model.active if n in dict(model.adapters)])
    layer = FusionLayer(model.fusion, compute_dtype=model.compute_dtype)
    x = jnp.zeros((1, 1, d), jnp.float32)
    init = jax.jit(lambda key: layer.init(key, x, jnp.zeros((1, 1, k, d), jnp.float32), x)["params"])
    keys = jax.random.split(rng, len(sites))
    out = {}
    for site, key in zip(sites, keys):
        for p, v in tree.flatten(init(key)).items():
            out[f"{site}/fusion/{p}"] = v
    return tree.unflatten(out)


def unfuse(model: AdapterModel, params: dict, active: Sequence[str] = ()) -> tuple[AdapterModel, dict]:
    """Drop the fusion layers and their params; ``active`` becomes the active set."""
    _, kept = tree.partition(params, lambda p: re.search(FUSION_PATTERN, p) is not None)
    return model.clone(fusion=None, active=tuple(active)), kept


def fusion_params(params: dict) -> dict:
    """Only the fusion layers' leaves."""
    return tree.select(params, FUSION_PATTERN)


def fusion_state(model: AdapterModel) -> dict:
    """Initial ``fusion_state`` collection (temperature T=50 per site) for a model whose
    fusion config has ``temperature=True``; empty otherwise. Pass it with the params and
    apply with ``mutable=["fusion_state"]`` to follow AdapterHub's schedule."""
    ids = jnp.ones((1, 2), jnp.int32)
    state = jax.jit(lambda k: model.init({"params": k}, ids, ids).get("fusion_state", {}))(jax.random.key(0))
    return {"fusion_state": state} if state else {}


def load_for_fusion(cfg, model_dir, head) -> tuple[AdapterModel, dict, list[str]]:
    """``jadapt train --method fusion``: the pretrained encoder, the saved adapters of
    ``cfg.fusion_adapters`` (checkpoint dirs; their heads are dropped) and a fresh dynamic
    fusion over them, in that order. Returns (model, params, adapter names that train = [])."""
    from jadapt.checkpoint import load_adapter, spec_of
    from jadapt.models.build import build
    from jadapt.models.spec import ModelSpec

    specs, saved, origin = [], {}, {}
    for ckpt in cfg.fusion_adapters:
        params, meta = load_adapter(ckpt)
        spec = spec_of(meta, f"fusion adapter checkpoint {ckpt}")
        if len(spec.active) != 1:
            raise ValueError(f"fusion adapter checkpoint {ckpt} must hold one active adapter, has {list(spec.active)}")
        name = spec.active[0]
        if name in origin:
            raise ValueError(f"adapter {name!r} is in both {origin[name]} and {ckpt}; fused adapters need distinct names")
        origin[name] = ckpt
        specs.append((name, dict(spec.adapters)[name]))
        saved.update(tree.flatten(tree.select(params, paths.adapter_pattern(name))))
    names = [n for n, _ in specs]
    unfused = ModelSpec(base_model=str(model_dir), adapters=tuple(specs), active=(names[0],), head=head,
                        compute_dtype=cfg.compute_dtype)
    fused = re.compile(paths.adapter_pattern(*names))
    model, params = build(unfused, tree.unflatten(saved), seed=cfg.seed, required=lambda p: bool(fused.search(p)),
                          where=f"fusion adapters {list(cfg.fusion_adapters)}", remat=cfg.remat,
                          attention=cfg.attention)
    model, params = fuse(model, params, names, "dynamic", jax.random.key(cfg.seed))
    return model, params, []
