"""Overfitting (He et al., ACL 2021, sec. 5): train long on small tasks and watch the dev
score / dev loss epoch by epoch, adapters vs full fine-tuning.

    python -m experiments.overfitting --quick        # minutes: RTE 256 rows, 3 epochs
    python -m experiments.overfitting                # CPU-sized full study (resumable)
    python -m experiments.overfitting --train-size 0 --seeds 0,1,2     # whole RTE / MRPC / CoLA

Grid: task (default RTE, MRPC, CoLA) x method (Houlsby adapter, bottleneck 64; full
fine-tuning; each at jadapt's default rate, linear warmup 10 % + decay over all epochs) x
seed, ``--epochs`` (default 20) epochs on a seeded subset of ``--train-size`` rows (0 = the
whole split), dev metric and dev loss after every epoch. The report gives, per task and
method, the best epoch, its score, the last epoch's score and the drop from best to last
(mean over seeds); the plot shows both curves. A method that overfits peaks early and then
falls; note the decaying learning rate damps late-epoch changes for both methods alike.

Every finished run is one line of ``<out>/<name>.jsonl`` (with its per-epoch history); a
restarted study skips what is there. Results: ``<out>/<name>.md`` and ``<out>/<name>.png``.
Cost of the full default (``--dry-run``): 6 runs of 20 epochs, ~2 CPU hours (~1 h on 2 idle cores).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common
from experiments.study import (Cost, Method, Study, add_common_args, cost_line, finish_args, main_metric,
                                      make_tuner, parse_list, parse_methods, settings_of, save_figure, start,
                                      write_report)

QUICK = dict(tasks="rte", seeds="0", methods="adapter64,full", train_size=256, epochs=3.0, max_length=64,
             dev_limit=128)
FULL = dict(tasks="rte,mrpc,cola", seeds="0", methods="adapter64,full", train_size=1000, epochs=20.0,
            max_length=128, dev_limit=None)


def parse_args(argv=None) -> argparse.Namespace:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="overfitting", full=FULL)
    p.add_argument("--tasks", default=None, help=f"comma list (default {FULL['tasks']})")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"seeded train subset per task, 0 = whole split (default {FULL['train_size']})")
    return finish_args(p.parse_args(argv), "overfitting", QUICK, FULL)


def curve(record: dict, key: str) -> list[float]:
    """Per-epoch values of ``key`` (metric name or "loss") of one run, epoch 1 first."""
    return [float(h[key]) for h in record["history"]]


def drop_stats(history: Sequence[float]) -> dict:
    """Best epoch (1-based), best value, last value, and the drop best - last (>= 0)."""
    h = np.asarray(history, dtype=np.float64)
    best = int(np.argmax(h))
    return {"best_epoch": best + 1, "best": float(h[best]), "last": float(h[-1]), "drop": float(h[best] - h[-1])}


def summarize(records: Sequence[dict], tasks: Sequence[str], methods: Sequence[Method]) -> tuple[str, dict]:
    """Markdown table task x method of best / last / drop (x100, mean ± std over seeds)."""
    runs: dict = {}
    for r in records:
        runs.setdefault((r["task"], r["method"]), []).append(r)
    rows = []
    for task in tasks:
        metric = main_metric(task)
        for m in methods:
            rs = runs.get((task, m.name), [])
            if not rs:
                continue
            st = [drop_stats(curve(r, metric)) for r in rs]
            loss = [curve(r, "loss") for r in rs]
            min_loss_epoch = [int(np.argmin(c)) + 1 for c in loss]
            rows.append([task, metric, m.name, common.fmt_mean_std([s["best"] for s in st]),
                         ", ".join(str(s["best_epoch"]) for s in st), common.fmt_mean_std([s["last"] for s in st]),
                         common.fmt_mean_std([s["drop"] for s in st]),
                         ", ".join(str(e) for e in min_loss_epoch),
                         common.fmt_mean_std([c[-1] - min(c) for c in loss], scale=1.0, digits=3)])
    header = ["task", "metric", "method", "best epoch score", "best epoch", "last epoch score", "drop best → last",
              "min dev-loss epoch", "dev loss: last − min"]
    return common.markdown_table(header, rows, align="lll" + "r" * 6), runs


def plot(runs: dict, tasks: Sequence[str], methods: Sequence[Method], path: Path) -> Optional[Path]:
    present = [t for t in tasks if any(k[0] == t for k in runs)]
    if not present:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(present), 6.4), dpi=110)
    FigureCanvasAgg(fig)
    for j, task in enumerate(present):
        metric = main_metric(task)
        top = fig.add_subplot(2, len(present), j + 1)
        bottom = fig.add_subplot(2, len(present), len(present) + j + 1)
        for m in methods:
            rs = runs.get((task, m.name), [])
            if not rs:
                continue
            for ax, key, scale in ((top, metric, 100.0), (bottom, "loss", 1.0)):
                cs = np.asarray([curve(r, key) for r in rs]) * scale
                xs = np.arange(1, cs.shape[1] + 1)
                line, = ax.plot(xs, cs.mean(0), marker=".", label=m.name)
                if len(rs) > 1:
                    ax.fill_between(xs, cs.min(0), cs.max(0), color=line.get_color(), alpha=0.15)
        top.set_title(task)
        top.set_ylabel(f"dev {metric} (x100)")
        bottom.set_ylabel("dev loss")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
        if j == 0:
            top.legend(loc="lower right")
    return save_figure(fig, path)


def run(args: argparse.Namespace, command: str) -> dict:
    t0 = time.time()
    tasks, seeds = parse_list(args.tasks), parse_list(args.seeds, int)
    methods = parse_methods(args.methods, args.adapter, args.adapter_lr, args.full_lr)
    tuner = make_tuner(args)
    out = Path(args.out)
    size = args.train_size or None
    settings = settings_of(args, tuner, epochs=args.epochs, train_size=size)
    grid = [(task, m, seed) for task in tasks for m in methods for seed in seeds]
    specs = [dict(study="overfitting", task=t, method=m.name, kind=m.kind, bottleneck=m.bottleneck, lr=m.lr,
                  seed=seed, **settings) for t, m, seed in grid]
    study = Study(out / f"{args.name}.jsonl", specs, report_only=args.report_only)
    if args.dry_run:
        cost = Cost(tuner)
        for task, m, seed in study.todo(grid, specs):
            train, dev = tuner.task_data(task, train_size=size, seed=seed, dev_limit=args.dev_limit)
            cost.add(m, train, args.epochs, [dev] * math.ceil(args.epochs))
        print(cost.report(), flush=True)
        return {"cost": cost}
    records = []
    for (task, m, seed), spec in zip(grid, specs):
        def one(task=task, m=m, seed=seed):
            train, dev = tuner.task_data(task, train_size=size, seed=seed, dev_limit=args.dev_limit)
            res = tuner.run(m, task, train, dev, seed=seed, epochs=args.epochs, eval_each_epoch=True)
            return dict(task=task, method=m.name, lr=m.lr, seed=seed, history=res["history"], metrics=res["final"],
                        best=res["best"], steps=res["steps"], train_examples=int(len(train["labels"])),
                        dev_examples=int(len(dev["labels"])), wall_s=res["wall_s"], cpu_s=res["cpu_s"])

        def show(r):
            s = drop_stats(curve(r, main_metric(r["task"])))
            return (f"best {s['best']:.4f} at epoch {s['best_epoch']}, last {s['last']:.4f} "
                    f"in {r['wall_s']:.0f} s")
        records.append(study.once(spec, one, what=f"{task} {m.name} seed {seed}", show=show))
    records = [r for r in records if r is not None]  # --report-only: what the log has
    table, runs = summarize(records, tasks, methods)
    png = plot(runs, tasks, methods, out / f"{args.name}.png")
    dev_what = f"first {args.dev_limit} rows of the dev split" if args.dev_limit else "full dev split"
    n_train = sorted({(r["task"], r["train_examples"]) for r in records})
    sections = [
        "He et al. (2021) find full fine-tuning overfits small tasks when trained long, while adapter "
        "tuning's dev score holds up across epochs.",
        f"## Best vs last epoch (x100; mean ± std over {len(seeds)} seed(s))\n\n"
        f"Scores on the {dev_what} after every epoch; 'best epoch' lists each seed's. "
        "Dev loss: mean cross-entropy (MSE for regression).\n\n" + table,
        "Train rows per task: " + ", ".join(f"{t} {n}" for t, n in n_train) + f"; {args.epochs:g} epochs; "
        "learning rates: " + ", ".join(f"{m.name} {m.lr:g}" for m in methods) + ".",
        cost_line(records),
    ]
    if png:
        sections.append(f"![dev score and loss per epoch]({png.name})")
    md = write_report(out / f"{args.name}.md", "Overfitting: adapters vs full fine-tuning over long training "
                      "(He et al. 2021)", sections, command=command, wall_s=time.time() - t0, settings=settings,
                      quick=args.quick)
    print(table)
    print(f"wrote {md}", flush=True)
    return {"records": records, "runs": runs, "markdown": md, "png": png}


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.overfitting", argv)
    args = parse_args(argv)
    return run(args, start("experiments.overfitting", args, argv))


if __name__ == "__main__":
    main()
