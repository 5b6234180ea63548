"""MerA study, part 1: train the pool of source adapters that part 2 merges / fuses.

    python -m experiments.mera_pool                 # full pool: 14 tasks, <= 20,000 rows x 2 epochs each
    python -m experiments.mera_pool --quick         # tiny budgets (64 rows x 1 epoch): plumbing + timing

One Pfeiffer adapter (bottleneck 64, relu, after the FFN; AdapterHub ``seq_bn``) per source
task on the packaged all-MiniLM-L6-v2, all with the same config so that they can be merged
position by position. Pfeiffer rather than Houlsby because (1) its trainable leaves are the
adapter alone -- Houlsby's preset also trains the encoder LayerNorms, which are not part of
the adapter, differ per task and would have to be dropped or merged separately; (2) it is
the configuration AdapterFusion was defined over (Pfeiffer et al. 2021); (3) one site per
layer instead of two halves the CPU cost of every fused / merged forward.

Each source task is trained with ``jadapt.train.loop.fit`` (the code behind ``jadapt
train``), learning rate 1e-3 (jadapt's measured Pfeiffer default), batch 32, max length 128,
linear warmup 10 % + decay, source task i with seed i + 1 (distinct initial units, so that
alignment has something to align; ``--shared-seed`` trains all from seed 0, whose units stay
in matching order); the best of the per-epoch dev evaluations is kept at
``<pool>/<task>/best`` (adapter + head + metadata with task and track). Every adapter is
named ``adapter`` inside its checkpoint (so all pool runs of one head shape share compiled
steps); the task is in the metadata.

Data per source task (files written under ``<pool>/_data/<task>/``, read by ``fit``):
- train: a seeded sample of ``--train-cap`` rows of the task's train split;
- dev (best-epoch selection only): a seeded sample of ``--dev-cap`` rows of its dev split.
Where a split is missing (``shared/data/README.md``):
- **mnli**: no train split: train on ``validation_mismatched`` minus a seeded held-out
  ``--holdout`` rows, which are the dev; ``validation_matched`` is never read here (it is
  the few-shot MNLI evaluation set);
- **qnli**: validation only: the same carve-out of ``validation`` (QNLI is a source task
  only, never a target or a reported number);
- **snli**: the train split here is a 1,666-row sample: train on it plus ``validation`` minus
  a seeded held-out ``--holdout`` rows, which are the dev (SNLI is a source task only);
- **mr / cr / mpqa**: no official split: jadapt's seeded 10 % hold-out of train is the dev.
The pool's own dev scores are in ``experiments/results/mera_pool.md``, beside each source's
majority-class score on the same rows: a source whose best dev score is not at least 2 points
above it learned nothing worth merging, and ``experiments.mera_fewshot`` leaves it out of the
pool and lists it (the MerA claims are about merging adapters that learned something).

The adapters (~100 k params, ~0.4 MB each) go under ``runs/`` (git-ignored); a rerun skips
tasks whose ``metrics.json`` exists with the same settings, and ``fit`` itself resumes a
task killed mid-run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common

RESULTS = Path(__file__).resolve().parent / "results"
POOL_TASKS = ("mnli", "snli", "sick", "rte", "qnli", "mrpc", "stsb", "sick-relatedness", "sst2", "mr", "cr",
              "mpqa", "imdb", "cola")
ADAPTER_NAME = "adapter"
METHOD = "pfeiffer"
BOTTLENECK = 64
LR = 1e-3  # jadapt.train.config.DEFAULT_LR["pfeiffer"]
FULL = dict(train_cap=20000, dev_cap=1000, holdout=1000, epochs=2.0)  # "the most data available offline"
# Source-only tasks (never a few-shot target) whose train split here is a small sample: their
# validation split joins the training rows, minus the held-out rows that become the dev.
POOL_ONLY_MERGED = ("snli",)
LEARNED_MARGIN = 0.02  # a source must beat its majority class by this much to join the merge
QUICK = dict(train_cap=64, dev_cap=64, holdout=64, epochs=1.0)


# ---------------------------------------------------------------- data
def source_splits(task: str, data_dir, *, train_cap: int, dev_cap: int, holdout: int, seed: int = 0):
    """(train rows, dev rows, note) of a source task, following the module docstring."""
    from jadapt import data

    spec = data.get_task(task)
    note, base_split = "", None
    if spec.name == "mnli":
        base_split = "validation_mismatched"  # validation_matched is the few-shot evaluation set
    else:
        try:
            train = data.load_split(spec, spec.train_split, data_dir)
            dev = data.load_split(spec, spec.dev_split, data_dir)
        except FileNotFoundError:
            base_split = spec.dev_split
    if spec.name in POOL_ONLY_MERGED:  # train sample + validation minus the held-out dev rows
        n = data.num_rows(dev)
        keep, held = data.holdout_split(n, min(holdout, n // 2) / n, seed)
        rest, dev = data.take(dev, keep), data.take(dev, held)
        train = {k: np.concatenate([np.asarray(train[k]), np.asarray(rest[k])]) for k in train}
        note = (f"train split is a sample: train = it + {spec.dev_split} minus {len(held)} held-out rows "
                f"(seed {seed}), dev = those rows")
    if base_split is not None:  # carve train and dev out of the one labelled split
        rows = data.load_split(spec, base_split, data_dir)
        n = data.num_rows(rows)
        n_dev = min(holdout, n // 2)
        keep, held = data.holdout_split(n, n_dev / n, seed)
        train, dev = data.take(rows, keep), data.take(rows, held)
        note = f"no train split: train = {base_split} minus {len(held)} held-out rows (seed {seed}), dev = those rows"
    n_train, n_dev = data.num_rows(train), data.num_rows(dev)
    if n_train > train_cap:
        train = data.subsample(train, train_cap, seed)
    if n_dev > dev_cap:
        dev = data.subsample(dev, dev_cap, seed)
    if spec.holdout and not note:
        note = f"no official split: dev = jadapt's seeded {spec.holdout:.0%} hold-out of train"
    return train, dev, note


def write_split(spec, rows: dict, path: Path) -> None:
    """Rows back to the task's JSON Lines layout (its HF field names), for ``fit`` to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(rows["label"])
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            rec = {fld: str(rows[fld][i]) for fld in spec.text_fields}
            lab = rows["label"][i]
            rec[spec.label_field] = float(lab) if spec.regression else int(lab)
            rec["idx"] = int(rows["row"][i])
            f.write(json.dumps(rec) + "\n")


def prepare_source_data(task: str, data_dir, root: Path, **caps) -> dict:
    """Write ``<root>/<local_dir>/{train,<dev>}.jsonl``; returns {rows, note}."""
    from jadapt import data

    from experiments import protocol

    spec = data.get_task(task)
    train, dev, note = source_splits(task, data_dir, **caps)
    write_split(spec, train, root / spec.local_dir / f"{spec.train_split}.jsonl")
    write_split(spec, dev, root / spec.local_dir / f"{spec.dev_split}.jsonl")
    majority = protocol.majority_baseline(spec, np.asarray(dev["label"]))[spec.main_metric]
    return {"train_rows": int(data.num_rows(train)), "dev_rows": int(data.num_rows(dev)), "note": note,
            "majority": float(majority)}


# ---------------------------------------------------------------- one source adapter
def train_source(task: str, *, pool: Path, data_dir, model: Optional[str], budget: dict, seed: int = 0,
                 batch_size: int = 32, max_length: int = 128, compute_dtype: str = "float32") -> dict:
    """Train (or find already trained) the pool adapter of ``task``; returns its manifest entry."""
    from jadapt import data
    from jadapt.train.config import TrainConfig
    from jadapt.train.loop import fit

    spec = data.get_task(task)
    out = pool / task
    settings = {"task": task, "model": model, "method": METHOD, "bottleneck": BOTTLENECK, "lr": LR, "seed": seed,
                "batch_size": batch_size, "max_length": max_length, "compute_dtype": compute_dtype, **budget}
    if task in POOL_ONLY_MERGED:
        settings["train_rows_from"] = f"{spec.train_split}+{spec.dev_split}"
    done_file = out / "pool_entry.json"
    if done_file.is_file():
        entry = json.loads(done_file.read_text())
        if entry.get("settings") == settings and (out / "best" / "metadata.json").is_file():
            return entry
    marker = out / "pool_settings.json"
    if out.exists() and (not marker.is_file() or json.loads(marker.read_text()) != settings):
        # trained (or begun) with other settings or data: ``fit`` would resume that run, so start over
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    common.write_text_atomic(marker, json.dumps(settings, indent=1, default=float))
    data_root = pool / "_data" / task
    caps = {k: budget[k] for k in ("train_cap", "dev_cap", "holdout")}
    info = prepare_source_data(task, data_dir, data_root, seed=0, **caps)  # same rows whatever the init seed
    cfg = TrainConfig(task=task, method=METHOD, model=model, data_dir=str(data_root), out=str(out),
                      epochs=budget["epochs"], batch_size=batch_size, max_length=max_length, bottleneck=BOTTLENECK,
                      lr=LR, seed=seed, compute_dtype=compute_dtype, adapter_name=ADAPTER_NAME, progress=False)
    with common.Timer() as t:
        result = fit(cfg)
    entry = {
        "task": task, "track": spec.track, "dataset": spec.local_dir, "num_labels": spec.num_labels,
        "regression": spec.regression, "checkpoint": str((out / "best").absolute()),
        "metric": spec.main_metric, "dev_score": result.get(spec.main_metric),
        "dev_metrics": {k: result[k] for k in spec.metrics if k in result},
        **info, "steps": result["steps"], "wall_s": round(t.wall, 1), "cpu_s": round(t.cpu, 1),
        "settings": settings,
    }
    entry["learned"] = bool(entry["dev_score"] is not None and entry["dev_score"] > info["majority"] + LEARNED_MARGIN)
    common.write_text_atomic(done_file, json.dumps(entry, indent=1, default=float))
    return entry


# ---------------------------------------------------------------- report
def write_report(entries: list[dict], path: Path, *, command: str, wall_s: float, budget: dict, quick: bool,
                 seeds: str = "seed 0") -> None:
    rows = [[e["task"], e["track"], e["train_rows"], e["dev_rows"], e["steps"], e["metric"],
             f"{100 * e['dev_score']:.1f}" if e.get("dev_score") is not None else None,
             f"{100 * e['majority']:.1f}" if "majority" in e else "?",
             "yes" if e.get("learned", True) else "**no: dropped from the merge**",
             common.fmt_duration(e["wall_s"]), e["note"] or ""] for e in entries]
    hw = common.hardware()
    sw = common.software()
    text = [
        "# MerA source adapter pool" + (" (QUICK MODE: tiny budgets, not a result)" if quick else ""),
        "",
        f"Pfeiffer adapters (bottleneck {BOTTLENECK}), packaged all-MiniLM-L6-v2, lr {LR}, batch 32, max length 128, "
        f"{seeds}, <= {budget['train_cap']} train rows x {budget['epochs']:g} epochs, best of per-epoch dev "
        f"evaluations on <= {budget['dev_cap']} dev rows. See `experiments/mera_pool.py` for the data protocol.",
        "",
        common.markdown_table(["task", "track", "train rows", "dev rows", "steps", "metric", "dev (best epoch)",
                               "majority class", "learned", "wall", "note"], rows, align="llrrrlrrlrl"),
        "",
        "Dev scores select the source checkpoint only; they are not study results. This is not a comparison "
        "of methods (one adapter per source, so no paired interval): the one use of these scores is the filter "
        f"against the majority class on the same dev rows (a source must beat it by {100 * LEARNED_MARGIN:.0f} "
        "points to join the merge).",
        "",
        "## Provenance",
        "",
        f"- command: `{command}`",
        f"- wall time (this invocation; tasks already done are skipped): {common.fmt_duration(wall_s)}; "
        f"per-task wall/CPU seconds are in each `pool_entry.json`",
        f"- hardware: {hw['cpu_model']} ({hw['cpu_bf16']}), {hw['cores_available']} cores, {hw.get('memory_gb')} GB, "
        f"load average {hw.get('load_average_1m')} at the end (machine shared with other jobs)",
        "- software: " + ", ".join(f"{k} {v}" for k, v in sw.items()),
    ]
    common.write_text_atomic(path, "\n".join(text) + "\n")


# ---------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets (64 rows x 1 epoch per task)")
    p.add_argument("--tasks", default=",".join(POOL_TASKS), help="comma-separated source tasks")
    p.add_argument("--pool", default=None, help="output dir (default runs/mera/pool, quick: runs/mera_quick/pool)")
    p.add_argument("--model", default=None, help="HF model dir (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", default=None, help="task data (default $JADAPT_DATA_DIR or ../shared/data)")
    p.add_argument("--train-cap", type=int, default=None)
    p.add_argument("--dev-cap", type=int, default=None)
    p.add_argument("--holdout", type=int, default=None, help="rows held out as dev where a task has one split")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--shared-seed", action="store_true",
                   help="train every task with seed 0 instead of task i with seed i + 1: units of adapters from one "
                        "shared init stay in matching order, so alignment has nothing to do (for that comparison)")
    p.add_argument("--report", default=None,
                   help="markdown summary (default experiments/results/mera_pool.md; quick: mera_pool_quick.md)")
    p.add_argument("--compile-cache", default="runs/jax_cache",
                   help="XLA persistent compilation cache dir ('' = off)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    common.reexec_with_allocator("experiments.mera_pool", argv)
    args = parse_args(argv)
    command = common.command_line(["experiments/mera_pool.py", *(sys.argv[1:] if argv is None else argv)])
    common.enable_compile_cache(args.compile_cache)
    budget = dict(QUICK if args.quick else FULL)
    for k in budget:
        if getattr(args, k, None) is not None:
            budget[k] = getattr(args, k)
    pool = Path(args.pool or ("runs/mera_quick/pool" if args.quick else "runs/mera/pool"))
    data_dir = args.data_dir or common.default_data_dir()
    if data_dir is None:
        raise SystemExit("no task data: pass --data-dir or set $JADAPT_DATA_DIR")
    tasks = [t for t in args.tasks.split(",") if t]
    from jadapt import data

    for t in tasks:
        data.get_task(t)  # unknown names fail before any training
    t0 = time.time()
    entries = []
    for i, task in enumerate(tasks):
        print(f"[pool {i + 1}/{len(tasks)}] {task} ...", flush=True)
        e = train_source(task, pool=pool, data_dir=data_dir, model=args.model, budget=budget,
                         compute_dtype=args.compute_dtype, seed=0 if args.shared_seed else i + 1)
        print(f"[pool {i + 1}/{len(tasks)}] {task}: dev {e['metric']} {e['dev_score']:.4f}, {e['steps']} steps, "
              f"{e['wall_s']:.0f} s wall / {e['cpu_s']:.0f} s CPU", flush=True)
        entries.append(e)
    manifest = {"adapter_name": ADAPTER_NAME, "method": METHOD, "bottleneck": BOTTLENECK, "model": args.model,
                "budget": budget, "quick": args.quick, "command": command, "adapters": entries}
    common.write_text_atomic(pool / "pool.json", json.dumps(manifest, indent=1, default=float))
    report = Path(args.report or (RESULTS / ("mera_pool_quick.md" if args.quick else "mera_pool.md")))
    write_report(entries, report, command=command, wall_s=time.time() - t0, budget=budget, quick=args.quick,
                 seeds="seed 0 for every task" if args.shared_seed else "task i: seed i + 1")
    print(f"pool manifest: {pool / 'pool.json'}; report: {report}", flush=True)
    return entries


if __name__ == "__main__":
    main()
