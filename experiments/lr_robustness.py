"""Learning-rate robustness (He et al., ACL 2021, sec. 5): how much does the dev score of
adapter tuning vs full fine-tuning move across a wide learning-rate grid?

    python -m experiments.lr_robustness --quick         # minutes: RTE 256 rows, 2 rates, 1 epoch
    python -m experiments.lr_robustness                 # CPU-sized full study (resumable)
    python -m experiments.lr_robustness --tasks rte,mrpc,stsb,sst2,cola --train-size 0 --seeds 0,1,2

Grid: task x method (Houlsby adapter, bottleneck 64; full fine-tuning) x learning rate
(default 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3; linear warmup 10 % + decay, AdamW) x seed. Each
task trains on a seeded subset of ``--train-size`` rows (0 = the whole split), so that every
cell costs the same number of steps, and is scored on its full dev split after the last
epoch. Per task and method the report gives the score at every rate and the spread over the
grid: sample std, range (max - min) and the best rate; the box plot shows the spread.

Every finished run is one line of ``<out>/<name>.jsonl``; a restarted study skips what is
there. Results: ``<out>/<name>.md``, ``<out>/<name>.png`` (box plot) and
``<out>/<name>_curves.png`` (score vs rate).
Cost of the full default (``--dry-run``): 48 runs, ~4 CPU hours (~2 h on 2 idle cores).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common
from experiments.study import (Cost, Method, Study, add_common_args, cost_line, finish_args, main_metric,
                                      make_tuner, new_figure, parse_list, parse_methods, settings_of, save_figure,
                                      start, write_report)

LRS = "1e-5,3e-5,1e-4,3e-4,1e-3,3e-3"
QUICK = dict(tasks="rte", lrs="1e-4,1e-3", seeds="0", methods="adapter64,full", train_size=256, epochs=1.0,
             max_length=64, dev_limit=128)
FULL = dict(tasks="rte,mrpc,stsb,sst2", lrs=LRS, seeds="0", methods="adapter64,full", train_size=2000, epochs=3.0,
            max_length=128, dev_limit=None)


def parse_args(argv=None) -> argparse.Namespace:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="lr_robustness", full=FULL)
    p.add_argument("--tasks", default=None, help=f"comma list (default {FULL['tasks']})")
    p.add_argument("--lrs", default=None, help=f"learning rates (default {LRS})")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"seeded train subset per task, 0 = whole split (default {FULL['train_size']})")
    return finish_args(p.parse_args(argv), "lr_robustness", QUICK, FULL)


NEAR_BEST = 0.02  # "a good rate": within 2 points (x100) of the method's best on the grid


def spread(values: Sequence[float], near: float = NEAR_BEST) -> dict:
    """Spread of one method's scores over the grid: sample std, range, mean, max, min, and how
    many rates score within ``near`` of the best (a grid-independent view: how wide the good
    region is, where std / range also count rates at which a method cannot learn at all)."""
    v = np.asarray(values, dtype=np.float64)
    return {"std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "range": float(v.max() - v.min()),
            "mean": float(v.mean()), "max": float(v.max()), "min": float(v.min()),
            "near_best": int((v >= v.max() - near - 1e-12).sum())}


def summarize(records: Sequence[dict], tasks: Sequence[str], methods: Sequence[Method],
              lrs: Sequence[float]) -> tuple[str, str, dict]:
    """(score table task x method x lr, spread table, {(task, method): {lr: [scores]}})."""
    scores: dict = {}
    for r in records:
        scores.setdefault((r["task"], r["method"]), {}).setdefault(r["lr"], []).append(
            r["metrics"][main_metric(r["task"])])
    rows, srows = [], []
    for task in tasks:
        for m in methods:
            by_lr = scores.get((task, m.name))
            if not by_lr:
                continue
            rows.append([task, m.name, *[common.fmt_mean_std(by_lr.get(lr, [])) for lr in lrs]])
            means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
            s = spread(list(means.values()))
            best = max(means, key=means.get)
            srows.append([task, main_metric(task), m.name, f"{100 * s['mean']:.1f}", f"{100 * s['std']:.1f}",
                          f"{100 * s['range']:.1f}", f"{100 * s['min']:.1f}", f"{100 * s['max']:.1f}", f"{best:g}",
                          f"{s['near_best']} / {len(means)}"])
    table = common.markdown_table(["task", "method", *[f"lr {lr:g}" for lr in lrs]], rows)
    stable = common.markdown_table(["task", "metric", "method", "mean", "std", "range", "min", "max", "best lr",
                                    f"rates within {100 * NEAR_BEST:g} of best"], srows, align="lll" + "r" * 7)
    return table, stable, scores


def plot_box(scores: dict, tasks: Sequence[str], methods: Sequence[Method], path: Path) -> Optional[Path]:
    present = [t for t in tasks if any(k[0] == t for k in scores)]
    if not present:
        return None
    fig, axes = new_figure(len(present), width=3.2)
    for ax, task in zip(axes, present):
        names = [m.name for m in methods if (task, m.name) in scores]
        data = [[100 * float(np.mean(v)) for v in scores[(task, n)].values()] for n in names]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names)
        for i, d in enumerate(data, 1):  # every rate as a dot beside its box
            ax.scatter(np.full(len(d), i + 0.18), d, s=10, alpha=0.6)
        ax.set_title(task)
        ax.set_ylabel(f"dev {main_metric(task)} (x100) over the lr grid")
        ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_curves(scores: dict, tasks: Sequence[str], methods: Sequence[Method], path: Path) -> Optional[Path]:
    present = [t for t in tasks if any(k[0] == t for k in scores)]
    if not present:
        return None
    fig, axes = new_figure(len(present))
    for ax, task in zip(axes, present):
        for m in methods:
            by_lr = scores.get((task, m.name))
            if not by_lr:
                continue
            lrs = sorted(by_lr)
            ys = [100 * np.mean(by_lr[lr]) for lr in lrs]
            es = [100 * np.std(by_lr[lr], ddof=1) if len(by_lr[lr]) > 1 else 0.0 for lr in lrs]
            ax.errorbar(lrs, ys, yerr=es, marker="o", capsize=3, label=m.name)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(f"dev {main_metric(task)} (x100)")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower left")
    return save_figure(fig, path)


def run(args: argparse.Namespace, command: str) -> dict:
    t0 = time.time()
    tasks, seeds = parse_list(args.tasks), parse_list(args.seeds, int)
    lrs = sorted(parse_list(args.lrs, float))
    methods = parse_methods(args.methods, args.adapter, args.adapter_lr, args.full_lr)
    tuner = make_tuner(args)
    out = Path(args.out)
    size = args.train_size or None
    settings = settings_of(args, tuner, epochs=args.epochs, train_size=size)
    grid = [(task, m, lr, seed) for task in tasks for m in methods for lr in lrs for seed in seeds]
    specs = [dict(study="lr_robustness", task=t, method=m.name, kind=m.kind, bottleneck=m.bottleneck, lr=lr,
                  seed=seed, **settings) for t, m, lr, seed in grid]
    study = Study(out / f"{args.name}.jsonl", specs, report_only=args.report_only)
    if args.dry_run:
        cost = Cost(tuner)
        for task, m, lr, seed in study.todo(grid, specs):
            train, dev = tuner.task_data(task, train_size=size, seed=seed, dev_limit=args.dev_limit)
            cost.add(m, train, args.epochs, [dev])
        print(cost.report(), flush=True)
        return {"cost": cost}
    records = []
    for (task, m, lr, seed), spec in zip(grid, specs):
        def one(task=task, m=m, lr=lr, seed=seed):
            train, dev = tuner.task_data(task, train_size=size, seed=seed, dev_limit=args.dev_limit)
            res = tuner.run(m, task, train, dev, seed=seed, epochs=args.epochs, lr=lr)
            return dict(task=task, method=m.name, lr=lr, seed=seed, metrics=res["final"], steps=res["steps"],
                        train_examples=int(len(train["labels"])), dev_examples=int(len(dev["labels"])),
                        wall_s=res["wall_s"], cpu_s=res["cpu_s"])
        records.append(study.once(spec, one, what=f"{task} {m.name} lr {lr:g} seed {seed}",
                                  show=lambda r: f"{main_metric(r['task'])} {r['metrics'][main_metric(r['task'])]:.4f}"
                                                 f" in {r['wall_s']:.0f} s"))
    records = [r for r in records if r is not None]  # --report-only: what the log has
    table, stable, scores = summarize(records, tasks, methods, lrs)
    box = plot_box(scores, tasks, methods, out / f"{args.name}.png")
    curves = plot_curves(scores, tasks, methods, out / f"{args.name}_curves.png")
    dev_what = f"first {args.dev_limit} rows of the dev split" if args.dev_limit else "full dev split"
    n_train = sorted({(r["task"], r["train_examples"]) for r in records})
    sections = [
        "He et al. (2021) report that adapter tuning is more robust to the learning rate than full "
        "fine-tuning: its score moves less across a wide grid. Adapters: Houlsby-style "
        f"({methods[0].name if methods[0].kind != 'full' else 'adapter'}; LayerNorms train too).",
        f"## Spread over the learning-rate grid (x100)\n\nStatistics over the per-rate scores (mean over "
        f"{len(seeds)} seed(s) at each rate) on the {dev_what}, after the last epoch.\n\n" + stable,
        "## Score at every learning rate (x100, mean ± std over seeds)\n\n" + table,
        "Train rows per task: " + ", ".join(f"{t} {n}" for t, n in n_train) + f"; {args.epochs:g} epochs.",
        cost_line(records),
    ]
    if box:
        sections.append(f"![spread over learning rates]({box.name})")
    if curves:
        sections.append(f"![score vs learning rate]({curves.name})")
    md = write_report(out / f"{args.name}.md", "Learning-rate robustness: adapters vs full fine-tuning "
                      "(He et al. 2021)", sections, command=command, wall_s=time.time() - t0, settings=settings,
                      quick=args.quick)
    print(stable)
    print(f"wrote {md}", flush=True)
    return {"records": records, "scores": scores, "markdown": md, "png": box, "curves": curves}


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.lr_robustness", argv)
    args = parse_args(argv)
    return run(args, start("experiments.lr_robustness", args, argv))


if __name__ == "__main__":
    main()
