"""``jadapt merge``: K adapter checkpoints -> one merged adapter checkpoint (MerA).

    jadapt merge --adapters runs/sst2 runs/mr runs/cr --method align-weights --out runs/merged

Reads and writes checkpoints with ``jadapt.checkpoint.load_adapter(dir) -> (params, metadata)``
and ``save_adapter(dir, params, metadata)``. What is merged:

- the adapter leaves (``.../{attn_adapter,ffn_adapter,lora_*}/<name>/...``) by ``--method``;
- other shared trained leaves (e.g. Houlsby's LayerNorms) by the weighted average, whatever
  the method: they are not deltas from zero, so sums / TIES / DARE make no sense for them;
- heads are task-specific and dropped (MerA trains a new head on the target task).

The adapters must share base model, adapter config and sites; otherwise the error names
the checkpoints and the differing field, path or shapes. ``align-activations`` (and ``ot``
with ``--ot-cost activations``) run every adapter alone in the base model on probe inputs
from ``--probe-task`` (``--data-dir``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

from jadapt.merge.methods import METHODS, NEEDS_ACTIVATIONS

ADAPTER_LEAF = re.compile(r"(^|/)(attn_adapter|ffn_adapter|lora_\w+)/[^/]+/")
# AdapterConfig fields that change no weights
_FREE_ADAPTER_FIELDS = ("dropout",)
_FREE_ENCODER_FIELDS = ("hidden_dropout", "attention_dropout", "initializer_range")


def add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapters", nargs="+", required=True, help="adapter checkpoint directories (K >= 1)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="output adapter checkpoint directory")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="one weight per adapter (average / align / ot: normalised; sum / task-arithmetic / "
                        "dare / ties: as given). Default: uniform (1/K) or 1 for the sum-type methods")
    p.add_argument("--reference", type=int, default=0, help="index of the adapter the others are aligned to")
    p.add_argument("--seed", type=int, default=0, help="DARE drop masks and probe-subset sampling")
    p.add_argument("--base", default=None,
                   help="adapter checkpoint used as the base point of task vectors (default: zero adapter)")
    p.add_argument("--density", type=float, default=None,
                   help="TIES: fraction kept by magnitude (0.2); DARE: keep probability (0.5)")
    p.add_argument("--scale", type=float, default=1.0, help="lambda for task-arithmetic / ties / dare")
    p.add_argument("--sign-method", default="total", choices=("total", "frequency"))
    p.add_argument("--dare-combine", default="task_arithmetic", choices=("task_arithmetic", "ties"))
    p.add_argument("--solver", default="hungarian", choices=("hungarian", "scipy"))
    p.add_argument("--ot-cost", default="weights", choices=("weights", "activations"))
    p.add_argument("--exact", action="store_true", help="ot: exact transport (= permutation alignment)")
    p.add_argument("--epsilon", type=float, default=0.05, help="ot: Sinkhorn entropy, relative to the cost range")
    p.add_argument("--sinkhorn-iters", type=int, default=200)
    p.add_argument("--name", default=None, help="name of the merged adapter (default: the reference's)")
    p.add_argument("--model", default=None, help="base model dir (default: the checkpoints' base_model)")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="merge adapters whose metadata names different base models of the same shape")
    p.add_argument("--probe-task", default=None, help="task whose inputs probe activations (align-activations)")
    p.add_argument("--probe-split", default=None, help="default: the task's train split")
    p.add_argument("--probe-size", type=int, default=256, help="probe examples (seeded subset)")
    p.add_argument("--data-dir", default=None, help="local data root (else $JADAPT_DATA_DIR, else the hub)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)


def run_merge(args: argparse.Namespace) -> dict:
    """Merge ``args.adapters`` into ``args.out``; returns a summary (also in ``metrics.json``)."""
    import json

    import jax

    from jadapt import tree
    from jadapt.merge import sites
    from jadapt.merge.average import average
    from jadapt.merge.methods import merge_adapters

    needs_acts = args.method in NEEDS_ACTIVATIONS or (args.method == "ot" and args.ot_cost == "activations")
    if needs_acts and not args.probe_task:
        raise ValueError(f"method {args.method!r} with activation costs needs --probe-task (and --data-dir)")
    k = len(args.adapters)
    if args.weights is not None and len(args.weights) != k:
        raise ValueError(f"--weights has {len(args.weights)} values for {k} adapters")
    if not -k <= args.reference < k:
        raise ValueError(f"--reference {args.reference} is out of range for {k} adapters")
    ckpt = importlib.import_module("jadapt.checkpoint")

    loaded = [ckpt.load_adapter(d) for d in args.adapters]
    metas = [m for _, m in loaded]
    parts = [split_leaves(p, d) for (p, _), d in zip(loaded, args.adapters)]
    adapters, shared = [a for a, _ in parts], [s for _, s in parts]
    names = [_adapter_name(a, d) for a, d in zip(adapters, args.adapters)]
    configs = [adapter_config_of(m, n, d) for m, n, d in zip(metas, names, args.adapters)]
    check_metadata(metas, configs, args.adapters, allow_base_mismatch=args.allow_base_mismatch)
    ref = args.reference % k
    name = args.name or names[ref]
    adapters = [sites.rename_adapter(a, n, name) if n != name else a for a, n in zip(adapters, names)]
    _check_trees(adapters, args.adapters, units_may_differ=args.method == "ot")
    _check_trees(shared, args.adapters, what="shared leaves")

    base = None
    if args.base:
        base_params, _ = ckpt.load_adapter(args.base)
        base, _ = split_leaves(base_params, args.base)
        base = sites.rename_adapter(base, _adapter_name(base, args.base), name)
        _check_trees([adapters[0], base], [args.adapters[0], args.base], what="base")

    activations = mask = None
    if needs_acts:
        activations, mask = probe_activations(args, metas[ref], configs[ref], adapters)

    kw: dict[str, Any] = dict(reference=args.reference, density=args.density, scale=args.scale,
                              sign_method=args.sign_method, dare_combine=args.dare_combine, solver=args.solver,
                              ot_cost=args.ot_cost, exact=args.exact, epsilon=args.epsilon,
                              num_iters=args.sinkhorn_iters)
    fn = jax.jit(lambda ads, w, b, key, acts, msk: merge_adapters(
        ads, args.method, weights=w, base=b, key=key, activations=acts, mask=msk, **kw))
    merged = fn(adapters, args.weights, base, jax.random.key(args.seed), activations, mask)
    if any(tree.flatten(s) for s in shared):
        merged = tree.merge(merged, average(shared, args.weights))

    meta = merged_metadata(metas[ref], configs[ref], name, metas, args)
    out = ckpt.save_adapter(args.out, merged, meta)
    summary = {"out": str(out), "method": args.method, "adapters": [str(a) for a in args.adapters],
               "name": name, "params": tree.count(merged)}
    Path(out).joinpath("metrics.json").write_text(json.dumps({**summary, "merge": meta["merge"]}, indent=1))
    print(f"merged {k} adapters with {args.method} -> {out} ({summary['params']} params)")
    return summary


def split_leaves(params: dict, where: Any) -> tuple[dict, dict]:
    """(adapter leaves, other non-head leaves) of a checkpoint's params."""
    from jadapt import tree

    adapter, shared = {}, {}
    for p, x in tree.flatten(params).items():
        if ADAPTER_LEAF.search(p):
            adapter[p] = x
        elif not p.startswith("head/"):
            shared[p] = x
    if not adapter:
        raise ValueError(f"checkpoint {where} holds no adapter leaves (nothing under attn_adapter / ffn_adapter / "
                         "lora_*)")
    return tree.unflatten(adapter), tree.unflatten(shared)


def _adapter_name(adapter: dict, where: Any) -> str:
    from jadapt.merge.sites import adapter_names

    names = [n for n in adapter_names(adapter) if n != "fusion"]
    if len(names) != 1:
        raise ValueError(f"checkpoint {where} holds {len(names)} adapters {names}; merge needs exactly one each")
    return names[0]


def adapter_config_of(meta: dict, name: str, where: Any) -> dict | None:
    """The adapter's config dict from checkpoint metadata (``adapters: [[name, config], ...]``)."""
    for n, cfg in meta.get("adapters") or []:
        if n == name:
            return dict(cfg)
    return None


def check_metadata(metas: Sequence[dict], configs: Sequence[dict | None], where: Sequence[Any], *,
                   allow_base_mismatch: bool = False) -> None:
    """Same adapter config (up to dropout), encoder config and base model, or a ValueError."""
    def differ(a: dict | None, b: dict | None, free) -> list[str]:
        if a is None or b is None:
            return []
        return [f"{key}: {b.get(key)!r} vs {a.get(key)!r}" for key in sorted(set(a) | set(b))
                if key not in free and a.get(key) != b.get(key)]

    for k in range(1, len(metas)):
        d = differ(configs[0], configs[k], _FREE_ADAPTER_FIELDS)
        if d:
            raise ValueError(f"adapter configs differ between {where[k]} and {where[0]}: " + "; ".join(d))
        d = differ(metas[0].get("encoder_config"), metas[k].get("encoder_config"), _FREE_ENCODER_FIELDS)
        if d:
            raise ValueError(f"base models differ between {where[k]} and {where[0]} (encoder config): " + "; ".join(d))
        a, b = _base_id(metas[0].get("base_model")), _base_id(metas[k].get("base_model"))
        if a != b and not allow_base_mismatch:
            raise ValueError(f"base models differ: {where[k]} was trained on {metas[k].get('base_model')!r}, "
                             f"{where[0]} on {metas[0].get('base_model')!r} (pass --allow-base-mismatch if they are "
                             "copies of the same model)")


def _base_id(base: Any) -> Any:
    if isinstance(base, str) and os.path.exists(base):
        return os.path.realpath(base)
    return base


def _check_trees(trees: Sequence[dict], where: Sequence[Any], *, units_may_differ: bool = False,
                 what: str = "adapter") -> None:
    from jadapt.merge.sites import check_compatible

    try:
        check_compatible(trees, units_may_differ=units_may_differ, what=what)
    except ValueError as e:
        msg = str(e)
        for k, w in reversed(list(enumerate(where))):
            msg = msg.replace(f"#{k}", f"{w}")
        raise ValueError(msg) from None


def probe_activations(args, meta: dict, config: dict | None, adapters: Sequence[dict]):
    """Each adapter alone in the base model on ``--probe-task`` inputs: ([{site: [N, m]}], mask [N])."""
    import numpy as np

    from jadapt import data
    from jadapt.adapters.config import AdapterConfig
    from jadapt.merge.activations import collect
    from jadapt.merge.sites import adapter_names
    from jadapt.models.pretrained import load_pretrained

    if config is None:
        raise ValueError("activation alignment needs the adapter config in the checkpoint metadata ('adapters')")
    name = adapter_names(adapters[0])[0]
    base = args.model or meta.get("base_model")
    model, params = load_pretrained(base, adapters=((name, AdapterConfig.from_dict(config)),), active=(name,))
    spec = data.get_task(args.probe_task)
    try:
        rows = data.load_split(spec, args.probe_split or spec.train_split, args.data_dir)
    except FileNotFoundError:
        if args.probe_split:
            raise
        rows = data.load_split(spec, "dev", args.data_dir)
    n = data.num_rows(rows)
    if args.probe_size < n:
        rows = data.subsample(rows, args.probe_size, args.seed)
    tok = data.load_tokenizer(base)
    enc = data.encode(spec, rows, tok, args.max_length, model_max_length=model.config.max_length)
    batches = []
    for b in data.eval_batches(enc, args.batch_size):
        mask = b["attention_mask"] * b["weight"][:, None].astype(b["attention_mask"].dtype)  # filler rows: 0
        batches.append({"input_ids": b["input_ids"], "attention_mask": mask.astype(np.int32),
                        "token_type_ids": b["token_type_ids"]})
    return collect(model, params, adapters, batches)


def merged_metadata(ref_meta: dict, config: dict | None, name: str, metas: Sequence[dict], args) -> dict:
    """The reference's model description with one adapter ``name`` and a ``merge`` record."""
    keep = ("base_model", "encoder_config", "compute_dtype", "method")
    meta = {k: ref_meta[k] for k in keep if k in ref_meta}
    if args.model:
        meta["base_model"] = str(args.model)
    meta.update(adapters=[[name, config]] if config else [], active=[name], head=None, fusion=None)
    tracks = {m.get("track") for m in metas}
    if len(tracks) == 1 and None not in tracks:
        meta["track"] = tracks.pop()
    meta["merge"] = {
        "method": args.method, "sources": [str(Path(a).absolute()) for a in args.adapters],
        "tasks": [m.get("task") for m in metas], "weights": args.weights, "reference": args.reference,
        "seed": args.seed, "base": args.base, "density": args.density, "scale": args.scale,
        "sign_method": args.sign_method, "dare_combine": args.dare_combine, "solver": args.solver,
        "ot_cost": args.ot_cost, "exact": args.exact, "epsilon": args.epsilon,
        "sinkhorn_iters": args.sinkhorn_iters, "probe_task": args.probe_task, "probe_size": args.probe_size,
    }
    return meta
