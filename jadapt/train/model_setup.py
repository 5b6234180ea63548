"""The model a training run starts from, and what its adapter checkpoints record.

- ``build_model``: the run's ``ModelSpec`` built around the base model: a fresh adapter for
  the method, started from ``--init-adapter``'s saved leaves when given, or a fusion over
  ``--fusion-adapters`` (``jadapt.fusion.load_for_fusion``).
- ``run_metadata``: the spec's metadata fields plus the run's (task, labels, config).
- ``adapter_to_save``: the leaves a checkpoint of the run holds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.models.spec import ModelSpec
from jadapt.train.config import TrainConfig

BOTTLENECK_AND_LORA = ("houlsby", "pfeiffer", "parallel", "lora")


def run_spec(cfg: TrainConfig, task, model_dir: Path) -> ModelSpec:
    """The model a (non-fusion) run trains: base model, the method's adapter (named
    ``cfg.name``; none for ``full`` / ``head``) and the task's head."""
    from jadapt.adapters.config import preset
    from jadapt.models.model import HeadConfig

    head = HeadConfig(num_labels=1 if task.regression else task.num_labels, regression=task.regression,
                      pooling=cfg.pooling)
    adapters: tuple = ()
    if cfg.method in BOTTLENECK_AND_LORA:
        kw: dict[str, Any] = {}
        if cfg.method == "lora":
            kw.update(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha)
        elif cfg.reduction_factor is not None:
            kw.update(bottleneck=None, reduction_factor=cfg.reduction_factor)
        else:
            kw.update(bottleneck=cfg.bottleneck)
        if cfg.train_layer_norms is not None:
            kw.update(train_layer_norms=cfg.train_layer_norms)
        adapters = ((cfg.name, preset(cfg.method, **kw)),)
    return ModelSpec(base_model=str(model_dir), adapters=adapters, head=head, compute_dtype=cfg.compute_dtype)


def build_model(cfg: TrainConfig, task, model_dir: Path):
    """(model, params, adapter names that train) for the run's method."""
    from jadapt.models.build import build

    spec = run_spec(cfg, task, model_dir)
    if cfg.method == "fusion":
        from jadapt.fusion.setup import load_for_fusion

        return load_for_fusion(cfg, model_dir, spec.head)
    names = [n for n, _ in spec.adapters]
    saved, where = None, "checkpoint"
    required = None  # build's default: nothing saved, nothing required
    if cfg.init_adapter:
        saved, encoder = init_leaves(cfg.init_adapter, cfg.name)
        spec = spec.replace(encoder=encoder)  # the base must be the one the saved adapter was trained on
        where = f"init adapter {cfg.init_adapter}"

        def whole(path: str) -> bool:  # the run's adapter comes whole from the saved one
            return paths.adapter_name(path) in names
        required = whole
    model, params = build(spec, saved, seed=cfg.seed, required=required, where=where, remat=cfg.remat,
                          attention=cfg.attention)
    return model, params, names


def init_leaves(ckpt_dir: str, name: str):
    """(leaves, encoder config) of a saved adapter (e.g. a MerA merge) to start adapter ``name``
    from: its one adapter renamed to ``name``, its head dropped (the run's task head is new)."""
    from jadapt.checkpoint import load_adapter, spec_of

    saved, meta = load_adapter(ckpt_dir)
    spec = spec_of(meta, f"init adapter {ckpt_dir}")
    flat = {p: x for p, x in tree.flatten(saved).items() if not re.search(paths.HEAD, p)}
    found = sorted({n for p in flat if (n := paths.adapter_name(p)) not in (None, paths.FUSION)})
    if not found:
        raise ValueError(f"init adapter {ckpt_dir} holds no adapter params")
    if len(found) > 1:
        raise ValueError(f"init adapter {ckpt_dir} holds adapters {found}; it must hold one")
    return tree.unflatten({paths.rename(p, found, name): x for p, x in flat.items()}), spec.encoder


def adapter_to_save(trainable: dict, frozen: dict, model) -> dict:
    """The leaves an adapter checkpoint needs: the trained ones, plus (fusion) the fused
    adapters, which are frozen in the run but part of the model."""
    if model.fusion is None:
        return jax.device_get(trainable)
    from jadapt.models.pretrained import adapter_params

    fused = [adapter_params(frozen, n) for n in model.active]
    return jax.device_get(tree.merge(*fused, trainable))


def run_metadata(cfg: TrainConfig, model, model_dir: Path, task) -> dict:
    """Adapter-checkpoint metadata of a run: its model's spec and the run's own fields."""
    from jadapt.checkpoint import FORMAT, VERSION

    return {
        "format": FORMAT,
        "version": VERSION,
        **ModelSpec.of(model, base_model=str(cfg.model or model_dir)).to_metadata(),
        "task": task.name,
        "track": task.track,
        "label_names": list(task.label_names),
        "method": cfg.method,
        "train_config": cfg.to_dict(),
    }
