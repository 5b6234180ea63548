"""Merge K adapter checkpoints into one checkpoint (MerA); ``jadapt merge`` is a thin wrapper.

>>> params, meta = merge_checkpoints(["runs/sst2/best", "runs/mr/best"], "align-weights")  # doctest: +SKIP
>>> save_merged("runs/merged", params, meta)                                               # doctest: +SKIP

What is merged:

- the adapter leaves (``jadapt.param_paths``: every site of the one adapter each
  checkpoint holds) by ``method`` (``jadapt.merge.methods.merge_adapters``);
- other shared trained leaves (e.g. Houlsby's LayerNorms) by the weighted average, whatever
  the method: they are not deltas from zero, so sums / TIES / DARE make no sense for them;
- heads are task-specific and dropped (MerA trains a new head on the target task).

The checkpoints' specs (``jadapt.models.spec``) must agree on the adapter config (up to
dropout), the encoder config (up to dropouts) and the base model; otherwise the error names
the checkpoints and the differing field, path or shapes. ``align-activations`` (and ``ot``
with ``ot_cost="activations"``) run every adapter alone in the base model on ``probe`` inputs.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import jax

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.checkpoint import files, load_adapter, save_adapter
from jadapt.merge import sites
from jadapt.merge.average import average
from jadapt.merge.methods import NEEDS_ACTIVATIONS, merge_adapters
from jadapt.models.spec import ModelSpec, adapter_differences

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Probe:
    """Inputs whose activations align the adapters: a seeded subset of ``task``'s ``split``
    (default: its train split, else dev) from ``data_dir`` (else $JADAPT_DATA_DIR, else the hub)."""

    task: str
    split: Optional[str] = None
    size: int = 256
    data_dir: Optional[str] = None
    batch_size: int = 32
    max_length: int = 128


def merge_checkpoints(checkpoints: Sequence[PathLike], method: str, *, weights: Optional[Sequence[float]] = None,
                      reference: int = 0, base: Optional[PathLike] = None, name: Optional[str] = None,
                      base_model: Optional[str] = None, allow_base_mismatch: bool = False, seed: int = 0,
                      probe: Optional[Probe] = None, **options) -> tuple[dict, dict]:
    """(merged params, checkpoint metadata) of the adapters in ``checkpoints``.

    ``weights``: one per checkpoint (see ``merge_adapters``); ``reference``: index of the
    checkpoint the others are aligned to, whose spec the merge keeps; ``base``: a checkpoint
    used as the base point of task vectors (default: the zero adapter); ``name``: the merged
    adapter's name (default: the reference's); ``base_model`` overrides the checkpoints' base
    model; ``seed``: DARE's drop masks and the probe subset. ``options`` go to
    ``merge_adapters`` (``density``, ``scale``, ``sign_method``, ``dare_combine``, ``solver``,
    ``ot_cost``, ``exact``, ``epsilon``, ``num_iters``).
    """
    k = len(checkpoints)
    if k < 1:
        raise ValueError("merge needs at least one adapter checkpoint")
    needs_acts = method in NEEDS_ACTIVATIONS or (method == "ot" and options.get("ot_cost") == "activations")
    if needs_acts and probe is None:
        raise ValueError(f"method {method!r} with activation costs needs --probe-task (and --data-dir): "
                         "probe=Probe(task, data_dir=...)")
    if weights is not None and len(weights) != k:
        raise ValueError(f"--weights has {len(weights)} values for {k} adapters")
    if not -k <= reference < k:
        raise ValueError(f"--reference {reference} is out of range for {k} adapters")

    loaded = [load_adapter(d) for d in checkpoints]
    metas = [m for _, m in loaded]
    specs = [ModelSpec.from_metadata(m, f"checkpoint {d}") for m, d in zip(metas, checkpoints)]
    parts = [split_leaves(p, d) for (p, _), d in zip(loaded, checkpoints)]
    adapters, shared = [a for a, _ in parts], [s for _, s in parts]
    names = [_adapter_name(a, d) for a, d in zip(adapters, checkpoints)]
    check_specs(specs, names, checkpoints, allow_base_mismatch=allow_base_mismatch)
    ref = reference % k
    name = name or names[ref]
    adapters = [sites.rename_adapter(a, n, name) if n != name else a for a, n in zip(adapters, names)]
    _check_trees(adapters, checkpoints, units_may_differ=method == "ot")
    _check_trees(shared, checkpoints, what="shared leaves")

    base_tree = None
    if base is not None:
        base_params, _ = load_adapter(base)
        base_tree, _ = split_leaves(base_params, base)
        base_tree = sites.rename_adapter(base_tree, _adapter_name(base_tree, base), name)
        _check_trees([adapters[0], base_tree], [checkpoints[0], base], what="base")

    config = dict(specs[ref].adapters).get(names[ref])
    activations = mask = None
    if needs_acts:
        if config is None:
            raise ValueError("activation alignment needs the adapter config in the checkpoint metadata ('adapters')")
        activations, mask = probe_activations(specs[ref], config, adapters, probe, base_model, seed)

    fn = jax.jit(lambda ads, w, b, key, acts, msk: merge_adapters(
        ads, method, weights=w, base=b, key=key, activations=acts, mask=msk, reference=reference, **options))
    merged = fn(adapters, weights, base_tree, jax.random.key(seed), activations, mask)
    if any(tree.flatten(s) for s in shared):
        merged = tree.merge(merged, average(shared, weights))

    spec = ModelSpec(base_model=base_model or specs[ref].base_model, encoder=specs[ref].encoder,
                     adapters=((name, config),) if config else (), active=(name,) if config else (),
                     compute_dtype=specs[ref].compute_dtype)
    meta = spec.to_metadata()
    if "method" in metas[ref]:
        meta["method"] = metas[ref]["method"]
    tracks = {m.get("track") for m in metas}
    if len(tracks) == 1 and None not in tracks:
        meta["track"] = tracks.pop()
    meta["merge"] = {
        "method": method, "sources": [str(Path(c).absolute()) for c in checkpoints],
        "tasks": [m.get("task") for m in metas], "weights": None if weights is None else list(weights),
        "reference": reference, "seed": seed, "base": None if base is None else str(base), **options,
        "probe_task": probe.task if probe else None, "probe_size": probe.size if probe else None,
    }
    return merged, meta


def save_merged(out: PathLike, params: dict, metadata: dict) -> dict:
    """Write the merge as an adapter checkpoint with a ``metrics.json`` summary; returns it."""
    path = save_adapter(out, params, metadata)
    summary = {"out": str(path), "method": metadata["merge"]["method"], "adapters": metadata["merge"]["sources"],
               "name": (metadata["active"] or [None])[0], "params": tree.count(params)}
    files.write_metrics(path, {**summary, "merge": metadata["merge"]})
    return summary


def split_leaves(params: dict, where: Any) -> tuple[dict, dict]:
    """(adapter leaves, other non-head leaves) of a checkpoint's params."""
    adapter_rx, head_rx = re.compile(paths.adapter_pattern()), re.compile(paths.HEAD)
    adapter, shared = {}, {}
    for p, x in tree.flatten(params).items():
        if adapter_rx.search(p):
            adapter[p] = x
        elif not head_rx.search(p):
            shared[p] = x
    if not adapter:
        raise ValueError(f"checkpoint {where} holds no adapter leaves (nothing at an adapter site: "
                         f"{', '.join(paths.BOTTLENECK_SITES)}, {paths.LORA_PREFIX}*)")
    return tree.unflatten(adapter), tree.unflatten(shared)


def check_specs(specs: Sequence[ModelSpec], names: Sequence[str], where: Sequence[Any], *,
                allow_base_mismatch: bool = False) -> None:
    """Same adapter config (up to dropout), encoder config and base model, or a ValueError."""
    first = dict(specs[0].adapters).get(names[0])
    for k in range(1, len(specs)):
        config = dict(specs[k].adapters).get(names[k])
        d = adapter_differences(config, first) if config is not None and first is not None else []
        if d:
            raise ValueError(f"adapter configs differ between {where[k]} and {where[0]}: " + "; ".join(d))
        d = specs[k].encoder_differences(specs[0].encoder) if specs[0].encoder is not None else []
        if d:
            raise ValueError(f"base models differ between {where[k]} and {where[0]} (encoder config): " + "; ".join(d))
        a, b = _base_id(specs[0].base_model), _base_id(specs[k].base_model)
        if a != b and not allow_base_mismatch:
            raise ValueError(f"base models differ: {where[k]} was trained on {specs[k].base_model!r}, "
                             f"{where[0]} on {specs[0].base_model!r} (pass --allow-base-mismatch if they are "
                             "copies of the same model)")


def probe_activations(spec: ModelSpec, config, adapters: Sequence[dict], probe: Probe,
                      base_model: Optional[str] = None, seed: int = 0):
    """Each adapter (same name and ``config``) alone in ``spec``'s base model on the probe
    inputs: ([{site: [N, m]}], mask [N])."""
    import numpy as np

    from jadapt import data
    from jadapt.merge.activations import collect
    from jadapt.models.build import build

    name = sites.adapter_names(adapters[0])[0]
    base = base_model or spec.base_model
    model, params = build(ModelSpec(base_model=base, encoder=spec.encoder, adapters=((name, config),)),
                          where=f"probe model for adapter {name!r}")
    task = data.get_task(probe.task)
    try:
        rows = data.load_split(task, probe.split or task.train_split, probe.data_dir)
    except FileNotFoundError:
        if probe.split:
            raise
        rows = data.load_split(task, "dev", probe.data_dir)
    if probe.size < data.num_rows(rows):
        rows = data.subsample(rows, probe.size, seed)
    tok = data.load_tokenizer(base)
    enc = data.encode(task, rows, tok, probe.max_length, model_max_length=model.config.max_length)
    batches = []
    for b in data.eval_batches(enc, probe.batch_size):
        mask = b["attention_mask"] * b["weight"][:, None].astype(b["attention_mask"].dtype)  # filler rows: 0
        batches.append({"input_ids": b["input_ids"], "attention_mask": mask.astype(np.int32),
                        "token_type_ids": b["token_type_ids"]})
    return collect(model, params, adapters, batches)


def _adapter_name(adapter: dict, where: Any) -> str:
    names = [n for n in sites.adapter_names(adapter) if n != paths.FUSION]
    if len(names) != 1:
        raise ValueError(f"checkpoint {where} holds {len(names)} adapters {names}; merge needs exactly one each")
    return names[0]


def _base_id(base: Any) -> Any:
    if isinstance(base, str) and os.path.exists(base):
        return os.path.realpath(base)
    return base


def _check_trees(trees: Sequence[dict], where: Sequence[Any], *, units_may_differ: bool = False,
                 what: str = "adapter") -> None:
    try:
        sites.check_compatible(trees, units_may_differ=units_may_differ, what=what)
    except ValueError as e:
        msg = str(e)
        for k, w in reversed(list(enumerate(where))):
            msg = msg.replace(f"#{k}", f"{w}")
        raise ValueError(msg) from None
