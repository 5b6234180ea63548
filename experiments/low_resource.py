"""Low-resource study (He et al., ACL 2021, sec. 4): adapters vs full fine-tuning on small
training subsets, several seeds, mean ± std of the task metric on the full dev set.

    python -m experiments.low_resource --quick                  # minutes: RTE 256 rows, 2 seeds
    python -m experiments.low_resource                          # CPU-sized full study (resumable)
    python -m experiments.low_resource --tasks rte,mrpc,stsb,sst2,cola --sizes 1000,2000,4000,full \
        --seeds 0,1,2,3,4 --epochs 10                           # the paper-sized grid (GPU/TPU)

Grid: task x train size x method x seed. Sizes above a task's train split are skipped; "full"
is the whole split, used only for small tasks (<= ``--full-max`` rows). The subset of size
n for seed s is ``jadapt.data.subsample(train, n, s)``: each seed draws its own subset, own
adapter/head init, dropout and batch order. Methods: Houlsby adapters (bottleneck 64, 256;
LayerNorms train, as He et al.) and full fine-tuning, each at jadapt's default learning rate.

Every finished run is one line of ``<out>/<name>.jsonl``; a restarted study skips what is
there (same settings), so it can be stopped and resumed at any time; work can be split with
``--tasks`` and the full command rerun at the end writes the combined report. Cost of the full
default (``--dry-run``): 117 runs, ~10 CPU hours, i.e. ~5 h on 2 idle cores (the quick mode:
~1.5 CPU min; on this shared machine wall time was 4-7x the CPU time / 2). Results: ``<out>/<name>.md``
(table, command, hardware, wall time) and ``<out>/<name>.png``.

``--dry-run`` counts the runs still to do (train steps and forward batches by sequence width)
and estimates their CPU time from per-step costs measured on this machine (``CPU_COST``).

What every effectiveness study shares (``Method``, ``Tuner``, ``Study``, ``Cost``, options and
report helpers) lives in ``experiments.study``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments import common

from experiments.study import (Cost, Method, Study, Tuner, add_common_args, cost_line, finish_args, main_metric,
                               make_tuner, new_figure, parse_list, parse_methods, save_figure, settings_of, start,
                               write_report)


# =============================================================================== study
QUICK = dict(tasks="rte", sizes="256", seeds="0,1", methods="adapter64,full", epochs=1.0, max_length=64,
             dev_limit=128)
FULL = dict(tasks="rte,mrpc,stsb,sst2", sizes="1000,2000,4000,full", seeds="0,1,2",
            methods="adapter64,adapter256,full", epochs=3.0, max_length=128, dev_limit=None)


def parse_args(argv=None) -> argparse.Namespace:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="low_resource", full=FULL)
    p.add_argument("--tasks", default=None, help=f"comma list (default {FULL['tasks']})")
    p.add_argument("--sizes", default=None, help=f"train subset sizes, 'full' = whole split (default {FULL['sizes']})")
    p.add_argument("--full-max", type=int, default=6000, help="'full' only for tasks with at most this many train rows")
    return finish_args(p.parse_args(argv), "low_resource", QUICK, FULL)


def plan(tuner: Tuner, tasks: Sequence[str], sizes: Sequence[str], full_max: int) -> list[tuple[str, Any]]:
    """(task, size) cells: int sizes below the split size, "full" for small splits."""
    from jadapt import data

    cells = []
    for task in tasks:
        spec = data.get_task(task)
        n = data.num_rows(tuner.encoded(spec, spec.train_split))
        for s in sizes:
            if s == "full":
                if n <= full_max:
                    cells.append((task, "full"))
            elif int(s) < n:
                cells.append((task, int(s)))
    return cells


def summarize(records: Sequence[dict], tasks: Sequence[str], methods: Sequence[Method]) -> tuple[str, dict]:
    """Markdown table (task, size) x method of mean ± std of the main metric, and the numbers."""
    stats: dict = {}
    for r in records:
        stats.setdefault((r["task"], r["size"], r["method"]), []).append(r["metrics"][main_metric(r["task"])])
    cells = sorted({(t, s) for t, s, _ in stats},
                   key=lambda c: (tasks.index(c[0]), math.inf if c[1] == "full" else c[1]))
    names = [m.name for m in methods]
    adapters = [m.name for m in methods if m.kind != "full"]
    rows = []
    for task, size in cells:
        n_train = next(r["train_examples"] for r in records if r["task"] == task and r["size"] == size)
        vals = {n: stats.get((task, size, n), []) for n in names}
        row = [task, main_metric(task), str(size) if size != "full" else f"full ({n_train})"]
        row += [common.fmt_mean_std(vals[n], show_n=True) for n in names]
        if "full" in names and vals["full"] and adapters and vals[adapters[0]]:
            row.append(f"{100 * (np.mean(vals[adapters[0]]) - np.mean(vals['full'])):+.1f}")
        elif "full" in names and adapters:
            row.append("–")
        rows.append(row)
    header = ["task", "metric", "train size", *names]
    if "full" in names and adapters:
        header.append(f"{adapters[0]} − full")
    return common.markdown_table(header, rows, align="lll" + "r" * (len(header) - 3)), stats


def plot(stats: dict, tasks: Sequence[str], methods: Sequence[Method], path: Path) -> Optional[Path]:
    present = [t for t in tasks if any(k[0] == t for k in stats)]
    if not present:
        return None
    fig, axes = new_figure(len(present))
    for ax, task in zip(axes, present):
        sizes = sorted({k[1] for k in stats if k[0] == task}, key=lambda s: math.inf if s == "full" else s)
        xs = np.arange(len(sizes), dtype=float)
        for j, m in enumerate(methods):
            ys = [stats.get((task, s, m.name), []) for s in sizes]
            ok = [i for i, y in enumerate(ys) if y]
            ax.errorbar(xs[ok] + (j - (len(methods) - 1) / 2) * 0.06, [100 * np.mean(ys[i]) for i in ok],
                        yerr=[100 * np.std(ys[i], ddof=1) if len(ys[i]) > 1 else 0.0 for i in ok],
                        marker="o", capsize=3, label=m.name)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("train examples")
        ax.set_ylabel(f"dev {main_metric(task)} (x100)")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower right")
    return save_figure(fig, path)


def run(args: argparse.Namespace, command: str) -> dict:
    t0 = time.time()
    tasks, seeds, sizes = parse_list(args.tasks), parse_list(args.seeds, int), parse_list(args.sizes)
    methods = parse_methods(args.methods, args.adapter, args.adapter_lr, args.full_lr)
    tuner = make_tuner(args)
    out = Path(args.out)
    settings = settings_of(args, tuner, epochs=args.epochs)
    grid = [(task, size, m, seed) for task, size in plan(tuner, tasks, sizes, args.full_max)
            for m in methods for seed in seeds]
    specs = [dict(study="low_resource", task=t, size=s, method=m.name, kind=m.kind, bottleneck=m.bottleneck,
                  lr=m.lr, seed=seed, **settings) for t, s, m, seed in grid]
    study = Study(out / f"{args.name}.jsonl", specs, report_only=args.report_only)
    if args.dry_run:
        cost = Cost(tuner)
        for task, size, m, seed in study.todo(grid, specs):
            train, dev = tuner.task_data(task, train_size=None if size == "full" else size, seed=seed,
                                         dev_limit=args.dev_limit)
            cost.add(m, train, args.epochs, [dev])
        print(cost.report(), flush=True)
        return {"cost": cost}
    records = []
    for (task, size, m, seed), spec in zip(grid, specs):
        def one(task=task, size=size, m=m, seed=seed):
            train, dev = tuner.task_data(task, train_size=None if size == "full" else size, seed=seed,
                                         dev_limit=args.dev_limit)
            res = tuner.run(m, task, train, dev, seed=seed, epochs=args.epochs)
            return dict(task=task, size=size, method=m.name, seed=seed, metrics=res["final"], steps=res["steps"],
                        train_examples=int(len(train["labels"])), dev_examples=int(len(dev["labels"])),
                        wall_s=res["wall_s"], cpu_s=res["cpu_s"])
        records.append(study.once(spec, one, what=f"{task} n={size} {m.name} seed {seed}",
                                  show=lambda r: f"{main_metric(r['task'])} {r['metrics'][main_metric(r['task'])]:.4f}"
                                                 f" in {r['wall_s']:.0f} s"))
    records = [r for r in records if r is not None]  # --report-only: what the log has
    table, stats = summarize(records, tasks, methods)
    png = plot(stats, tasks, methods, out / f"{args.name}.png")
    params = common.markdown_table(
        ["method", "kind", "bottleneck", "lr", "trainable params"],
        [[m.name, m.kind, m.bottleneck or "–", m.lr, f"{tuner.trainable_count(m, tasks[0]):,}"] for m in methods])
    dev_what = f"first {args.dev_limit} rows of the dev split" if args.dev_limit else "full dev split"
    sections = [
        "He et al. (2021) find adapters better than full fine-tuning when training data is scarce, "
        "with the gap closing as data grows. Here: Houlsby-style adapters (LayerNorms train too) vs full "
        "fine-tuning of the packaged encoder unless `--model` says otherwise.",
        f"## Dev {', '.join(sorted({main_metric(t) for t in tasks}))} (x100), mean ± sample std over seeds\n\n"
        f"Each seed draws its own training subset, adapter/head init, dropout and batch order; the score is the "
        f"task's main metric on the {dev_what} after the last epoch (no early stopping, no model selection).\n\n"
        + table,
        "## Methods\n\n" + params,
        cost_line(records),
    ]
    if png:
        sections.append(f"![dev metric vs train size]({png.name})")
    md = write_report(out / f"{args.name}.md", "Low-resource: adapters vs full fine-tuning (He et al. 2021)",
                      sections, command=command, wall_s=time.time() - t0, settings=settings, quick=args.quick)
    print(table)
    print(f"wrote {md}" + (f" and {png}" if png else ""), flush=True)
    return {"records": records, "stats": stats, "markdown": md, "png": png}


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.low_resource", argv)
    args = parse_args(argv)
    return run(args, start("experiments.low_resource", args, argv))


if __name__ == "__main__":
    main()
