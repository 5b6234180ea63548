"""He et al. (ACL 2021), claims A3-A5 -- adapters beat full fine-tuning on small data, are less
sensitive to the learning rate, overfit less -- from one grid of runs under one protocol.

    python -m experiments.effectiveness --quick                          # minutes: plumbing
    python -m experiments.effectiveness --tasks sst2 --sizes 1000        # one cell of the grid
    python -m experiments.effectiveness                                  # the grid (GPU-sized)
    python -m experiments.effectiveness --model models/multilingual-e5-small --name effectiveness_me5
    python -m experiments.effectiveness --dry-run                        # what is left, its cost
    python -m experiments.effectiveness --max-minutes 9 --out DIR        # one chunk (a GPU call)

One grid: task x train size x method x learning rate x seed. Every run is scored on the
held-out split and on the dev split after every epoch, so the same runs give
- A3 low resource: each method at the rate it chose on held-out data, scored on dev at the
  end of the budget, paired with the other method by seed;
- A4 learning-rate robustness: every method's dev score across the one shared rate grid;
- A5 overfitting: the dev curve over the epochs at the chosen rate (best epoch vs last).

Protocol (the same for every method; the report states it with its numbers):
- Held-out split: ``--heldout`` rows drawn once (``protocol.HELDOUT_SEED``) from the task's
  training split; each seed's training subset of ``size`` rows is drawn from the rest. Rates
  are chosen on the held-out rows (mean over seeds of the final held-out score), never on the
  dev split that is reported.
- One rate grid for every method (``--lrs``; the default holds the paper's adapter 1e-4 and
  full fine-tuning 2e-5 / 1e-4, and jadapt's defaults 1e-3 / 5e-5).
- Budget in optimizer steps, the same for every method of a (task, size) row: ``--epochs``
  passes over the subset (or ``--steps``); linear warmup 10 % and decay; the training-loss
  curve of every run is logged and plotted, and the report says which runs had not flattened.
- Seeds (``--seeds``, at least 3 for a verdict): subset, adapter / head init, dropout, batch order.
- Differences are paired by seed (same subset); 95 % intervals by a bootstrap over seeds and
  dev rows (the metric recomputed on each resample); "reproduced" only where the interval
  excludes 0 (``protocol.verdict``). The majority-class baseline (and MRPC's always-positive
  F1) stands beside every score.

Every finished run is one line of ``<out>/<name>.jsonl`` (its curves and per-row dev
predictions); a restarted study skips what is there. Results: ``<out>/<name>.md`` and
``<out>/<name>.png``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common, protocol
from experiments.study import (Cost, Method, Study, Tuner, add_common_args, cost_line, finish_args, main_metric,
                               make_tuner, new_figure, parse_list, parse_methods, predict_rows, save_figure, settings_of,
                               start, write_report)

LRS = "2e-5,5e-5,1e-4,3e-4,1e-3"
QUICK = dict(tasks="rte", sizes="128", seeds="0,1,2", methods="adapter64,full", lrs="1e-4,1e-3", epochs=2.0,
             heldout=64, max_length=64, dev_limit=128)
FULL = dict(tasks="sst2,mrpc,stsb,rte,sick,cola,mr", sizes="1000,2000,4000", seeds="0,1,2",
            methods="adapter64,full", lrs=LRS, epochs=20.0, heldout=500, max_length=128, dev_limit=None)
NEAR_BEST = 0.02  # A4: a rate is "good" when its mean dev score is within 2 points of the method's best


def parse_args(argv=None) -> argparse.Namespace:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="effectiveness", full=FULL, fixed_budget=False)
    p.add_argument("--tasks", default=None, help=f"comma list (default {FULL['tasks']})")
    p.add_argument("--sizes", default=None, help=f"training subset sizes (default {FULL['sizes']})")
    p.add_argument("--lrs", default=None, help=f"the one learning-rate grid of every method (default {LRS})")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"budget: passes over the subset, the same steps for every method (default {FULL['epochs']:g})")
    p.add_argument("--steps", type=int, default=None, help="budget in optimizer steps instead of --epochs")
    p.add_argument("--heldout", type=int, default=None,
                   help=f"training rows held out to choose rates (default {FULL['heldout']})")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--note", action="append", default=[], help="a remark for the report's Notes (repeatable)")
    args = finish_args(p.parse_args(argv), "effectiveness", QUICK, FULL)
    if (args.steps is not None and args.steps < 1) or args.epochs <= 0 or args.heldout < 1:
        p.error("--steps, --epochs and --heldout must be positive")
    return args


# ------------------------------------------------------------------ data
def cells(tuner: Tuner, tasks: Sequence[str], sizes: Sequence[int], heldout: int) -> list[tuple[str, int]]:
    """(task, size) rows of the grid: sizes the training split can give after the held-out rows."""
    from jadapt import data

    out = []
    for task in tasks:
        spec = data.get_task(task)
        n = data.num_rows(tuner.encoded(spec, spec.train_split)) - heldout
        out += [(spec.name, s) for s in sizes if s <= n]
    return out


def cell_data(tuner: Tuner, task: str, size: int, seed: int, heldout: int, dev_limit: Optional[int]):
    """(train subset, held-out, dev): the held-out rows are one fixed draw, the subset the
    seed's draw from the rest."""
    from jadapt import data

    spec = data.get_task(task)
    rest, held = protocol.heldout_split(tuner.encoded(spec, spec.train_split), heldout)
    return data.subsample(rest, size, seed), held, dev_set(tuner, task, dev_limit)


def dev_set(tuner: Tuner, task: str, dev_limit: Optional[int]) -> dict:
    """The dev split (its first ``dev_limit`` rows: quick modes only)."""
    from jadapt import data

    spec = data.get_task(task)
    dev = tuner.encoded(spec, spec.dev_split)
    return data.take(dev, np.arange(dev_limit)) if dev_limit and dev_limit < data.num_rows(dev) else dev


def budget(args, size: int, batch_size: int) -> int:
    """Optimizer steps of every run of a row."""
    return args.steps if args.steps else max(1, math.ceil(args.epochs * math.ceil(size / batch_size)))


def slim(metrics: dict) -> dict:
    return {k: round(float(v), 5) for k, v in metrics.items() if k != "epoch"}


# ------------------------------------------------------------------ analysis
def chosen_rates(records: Sequence[dict]) -> dict:
    """{(task, size, method): (rate, edge warning or None, {rate: mean final held-out score})}."""
    scores: dict = {}
    for r in records:
        main = main_metric(r["task"])
        scores.setdefault((r["task"], r["size"], r["method"]), {}).setdefault(r["lr"], []).append(
            r["evals"][-1]["heldout"][main])
    out = {}
    for key, by_rate in scores.items():
        best, edge = protocol.choose_rate(by_rate)
        out[key] = (best, edge, {lr: float(np.mean(v)) for lr, v in by_rate.items()})
    return out


def dev_labels(tuner: Tuner, task: str, dev_limit: Optional[int]) -> np.ndarray:
    return np.asarray(dev_set(tuner, task, dev_limit)["labels"])


def preds_of(rec: dict) -> np.ndarray:
    from jadapt import data

    return protocol.unpack_predictions(rec["dev_pred"], data.get_task(rec["task"]).regression)


def by_cell(records: Sequence[dict]) -> dict:
    """{(task, size): {(method, lr): {seed: record}}}."""
    out: dict = {}
    for r in records:
        out.setdefault((r["task"], r["size"]), {}).setdefault((r["method"], r["lr"]), {})[r["seed"]] = r
    return out


def low_resource(records, methods, tuner, args) -> tuple[list, list]:
    """A3 rows: per (task, size) the chosen-rate dev score of each method, the baseline, and
    adapter - full paired by seed with a bootstrap interval. Also returns (cell, ci) pairs."""
    rates = chosen_rates(records)
    grid = by_cell(records)
    names = [m.name for m in methods]
    adapters = [m.name for m in methods if m.kind != "full"]
    rows, cis = [], []
    for (task, size), runs in grid.items():
        main = main_metric(task)
        y = dev_labels(tuner, task, args.dev_limit)
        base = protocol.majority_baseline(task, y)
        row = [task, main, size, f"{100 * base[main]:.1f}" + (f" (F1 {100 * base['f1']:.1f})" if "f1" in base and main != "f1" else "")]
        at: dict = {}
        for n in names:
            lr = rates.get((task, size, n), (None,))[0]
            recs = runs.get((n, lr), {})
            at[n] = recs
            vals = [r["evals"][-1]["dev"][main] for r in recs.values()]
            f1 = [r["evals"][-1]["dev"]["f1"] for r in recs.values() if "f1" in r["evals"][-1]["dev"]]
            row.append(f"{common.fmt_mean_std(vals, show_n=True)}" + (f", F1 {common.fmt_mean_std(f1)}" if f1 else "")
                       + f" @ {lr:g}" if vals else "–")
        for a in adapters:
            if "full" not in at:
                continue
            seeds = sorted(set(at[a]) & set(at["full"]))
            if len(seeds) < 2:
                row.append("–")
                continue
            pa = np.stack([preds_of(at[a][s]) for s in seeds])
            pb = np.stack([preds_of(at["full"][s]) for s in seeds])
            ci = protocol.bootstrap_metric_diff(pa, pb, y, protocol.main_metric_fn(task), args.bootstrap)
            cis.append(((task, size, f"{a} − full"), ci, len(seeds)))
            row.append(f"{protocol.fmt_ci(ci)} ({protocol.verdict(ci)}, {len(seeds)} seeds)")
        rows.append(row)
    return rows, cis


def robustness(records, methods, tuner, args) -> tuple[list, list]:
    """A4 rows: per (task, size, method) the mean dev score at every rate, the rates within
    ``NEAR_BEST`` of the best, collapses (at or below the majority class + 1 point); and
    the per-seed spread (std over the shared grid) full - adapter with a bootstrap interval
    over seeds and dev rows."""
    grid = by_cell(records)
    lrs = sorted({r["lr"] for r in records})
    rows, cis = [], []
    for (task, size), runs in grid.items():
        main = main_metric(task)
        y = dev_labels(tuner, task, args.dev_limit)
        floor = protocol.majority_baseline(task, y)[main] + 0.01
        complete = {}
        for m in methods:
            per_rate = {lr: runs.get((m.name, lr), {}) for lr in lrs}
            means = {lr: np.mean([r["evals"][-1]["dev"][main] for r in v.values()]) for lr, v in per_rate.items() if v}
            if not means:
                continue
            best = max(means.values())
            good = [lr for lr, v in means.items() if v >= best - NEAR_BEST]
            collapsed = {lr: sum(r["evals"][-1]["dev"][main] <= floor for r in v.values())
                         for lr, v in per_rate.items() if v}  # runs at the majority class (+1 point) or below
            rows.append([task, size, m.name, *[f"{100 * means[lr]:.1f}" if lr in means else "" for lr in lrs],
                         f"{len(good)}/{len(means)}",
                         ", ".join(f"{lr:g} ({c}/{len(per_rate[lr])} seeds)" for lr, c in collapsed.items() if c)
                         or "none"])
            seeds = set.intersection(*(set(v) for v in per_rate.values())) if all(per_rate.values()) else set()
            if seeds:
                complete[m.name] = (sorted(seeds), per_rate)
        adapters = [m.name for m in methods if m.kind != "full" and m.name in complete]
        if "full" not in complete:
            continue
        fn = protocol.main_metric_fn(task)
        for a in adapters:
            seeds = sorted(set(complete[a][0]) & set(complete["full"][0]))
            if len(seeds) < 2:
                continue
            pa = np.stack([np.stack([preds_of(complete[a][1][lr][s]) for lr in lrs]) for s in seeds])  # [S, R, N]
            pf = np.stack([np.stack([preds_of(complete["full"][1][lr][s]) for lr in lrs]) for s in seeds])
            ci = spread_diff(pf, pa, y, fn, args.bootstrap)
            cis.append(((task, size, f"full − {a}"), ci, len(seeds)))
    return rows, cis


def spread_diff(pf: np.ndarray, pa: np.ndarray, y: np.ndarray, fn, reps: int, seed: int = 0):
    """(mean over seeds of std-over-rates(full) - std-over-rates(adapter), 95 % interval):
    predictions ``[seeds, rates, rows]``; seeds and rows resampled, metrics recomputed."""
    def spread(p, rows):
        return np.std([fn(p[r][rows], y[rows]) for r in range(p.shape[0])], ddof=1)

    return protocol.bootstrap_seeds_rows(lambda i, rows: spread(pf[i], rows) - spread(pa[i], rows),
                                         pf.shape[0], pf.shape[2], reps, seed)


def overfitting(records, methods, args) -> tuple[list, list]:
    """A5 rows at the chosen rate: best epoch, best and last dev score, drop best - last, dev
    loss rise last - min (means over seeds); full - adapter drop paired by seed."""
    rates = chosen_rates(records)
    grid = by_cell(records)
    rows, cis = [], []
    for (task, size), runs in grid.items():
        main = main_metric(task)
        drops = {}
        for m in methods:
            lr = rates.get((task, size, m.name), (None,))[0]
            recs = runs.get((m.name, lr), {})
            if not recs:
                continue
            st = {s: drop_stats([e["dev"][main] for e in r["evals"]]) for s, r in recs.items()}
            rise = [max(0.0, r["evals"][-1]["dev"]["loss"] - min(e["dev"]["loss"] for e in r["evals"]))
                    for r in recs.values()]
            drops[m.name] = {s: v["drop"] for s, v in st.items()}
            rows.append([task, size, m.name, f"{lr:g}", f"{len(recs)}",
                         f"{np.mean([v['best_epoch'] for v in st.values()]):.1f} / {len(next(iter(recs.values()))['evals'])}",
                         common.fmt_mean_std([v["best"] for v in st.values()]),
                         common.fmt_mean_std([v["last"] for v in st.values()]),
                         common.fmt_mean_std([v["drop"] for v in st.values()]), f"{np.mean(rise):.2f}"])
        for a in [m.name for m in methods if m.kind != "full"]:
            if a in drops and "full" in drops:
                seeds = sorted(set(drops[a]) & set(drops["full"]))
                if len(seeds) >= 2:
                    f, ad = [drops["full"][s] for s in seeds], [drops[a][s] for s in seeds]
                    ci = protocol.bootstrap_seed_diff(f, ad, args.bootstrap)
                    cis.append(((task, size, f"full − {a}"), ci, f"{protocol.sign_count(f, ad)} seeds"))
    return rows, cis


def drop_stats(history: Sequence[float]) -> dict:
    """Best epoch (1-based), best value, last value, and the drop best - last (>= 0)."""
    h = np.asarray(history, dtype=np.float64)
    best = int(np.argmax(h))
    return {"best_epoch": best + 1, "best": float(h[best]), "last": float(h[-1]), "drop": float(h[best] - h[-1])}


REFERENCE_RATES = {1e-4: "the paper's adapter rate, top of its full fine-tuning range",
                   2e-5: "bottom of the paper's full fine-tuning range", 5e-5: "jadapt's full fine-tuning default",
                   1e-3: "jadapt's Houlsby default"}


def reference_rates(lrs: Sequence[float]) -> str:
    """Which of the papers' and jadapt's rates the grid holds, and which it lacks."""
    held = [f"{lr:g}: {why}" for lr, why in REFERENCE_RATES.items() if any(math.isclose(lr, x) for x in lrs)]
    lacks = [f"{lr:g}" for lr in REFERENCE_RATES if not any(math.isclose(lr, x) for x in lrs)]
    return "; ".join(held or ["none of the reference rates"]) + (f"; lacks {', '.join(lacks)}" if lacks else "")


def verdict_lines(cis, claim: str, sign_word: str) -> list[str]:
    out = []
    for (task, size, pair), ci, n in cis:
        out.append(f"- {task} n={size}, {pair}: {protocol.fmt_ci(ci)} points ({n}{'' if isinstance(n, str) else ' seeds'})"
                   f" -> **{protocol.verdict(ci)}** ({claim}: {sign_word})")
    return out or ["- no complete paired cells yet"]


# ------------------------------------------------------------------ report
def plot(records, methods, path: Path) -> Optional[Path]:
    rates = chosen_rates(records)
    grid = by_cell(records)
    if not grid:
        return None
    fig, axes = new_figure(len(grid) * 2, width=3.6, height=3.2)
    for j, ((task, size), runs) in enumerate(grid.items()):
        ax, ax2 = axes[2 * j], axes[2 * j + 1]
        main = main_metric(task)
        for i, m in enumerate(methods):
            lr = rates.get((task, size, m.name), (None,))[0]
            for k, r in enumerate(runs.get((m.name, lr), {}).values()):
                c = r.get("curve") or []
                ax.plot(np.linspace(0, r["steps"], len(c) + 1)[1:], c, color=f"C{i}", alpha=0.7,
                        label=f"{m.name} @ {lr:g}" if k == 0 else None)
                ax2.plot([e["epoch"] for e in r["evals"]], [100 * e["dev"][main] for e in r["evals"]],
                         color=f"C{i}", alpha=0.7, label=f"{m.name}" if k == 0 else None)
        ax.set_title(f"{task} n={size}: training loss")
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax2.set_title(f"{task} n={size}: dev {main} (x100)")
        ax2.set_xlabel("epoch")
        ax2.grid(True, alpha=0.3)
    return save_figure(fig, path)


def write(args, command, t0, tuner, methods, records, settings) -> Path:
    out = Path(args.out)
    lrs = sorted({r["lr"] for r in records})
    rates = chosen_rates(records)
    lr_rows, edges = [], []
    for (task, size, name), (best, edge, means) in sorted(rates.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        lr_rows.append([task, size, name, *[(f"**{100 * means[lr]:.1f}**" if lr == best else f"{100 * means[lr]:.1f}")
                                            if lr in means else "" for lr in lrs]])
        if edge:
            edges.append(f"{task} n={size} {name}: {edge}")
    lr_table = common.markdown_table(["task", "size", "method", *[f"{lr:g}" for lr in lrs]], lr_rows)
    a3_rows, a3 = low_resource(records, methods, tuner, args)
    names = [m.name for m in methods]
    adapters = [m.name for m in methods if m.kind != "full"]
    a3_table = common.markdown_table(["task", "metric", "size", "majority class", *[f"{n} (mean ± std @ rate)" for n in names],
                                      *[f"{a} − full [95 % CI]" for a in adapters if "full" in names]], a3_rows)
    a4_rows, a4 = robustness(records, methods, tuner, args)
    a4_table = common.markdown_table(["task", "size", "method", *[f"{lr:g}" for lr in lrs], "rates within 2 of best",
                                      "runs collapsed (dev <= majority + 1)"], a4_rows)
    a5_rows, a5 = overfitting(records, methods, args)
    a5_table = common.markdown_table(["task", "size", "method", "lr", "seeds", "best epoch / epochs", "best dev",
                                      "last dev", "drop best − last", "dev loss rise"], a5_rows)
    not_flat = [f"{r['task']} n={r['size']} {r['method']} lr {r['lr']:g} seed {r['seed']}" for r in records
                if not protocol.flattened(r.get("curve") or [])]
    steps = sorted({(r["task"], r["size"], r["steps"]) for r in records})
    png = plot(records, methods, out / f"{args.name}.png")
    seeds = parse_list(args.seeds, int)
    budget_text = (f"{args.steps} optimizer steps" if args.steps else f"{args.epochs:g} epochs over the subset") + \
        " for every run, batch " + str(args.batch_size) + " (steps per row: " + \
        ", ".join(f"{t} n={s}: {n}" for t, s, n in steps) + ")"
    sections = [
        "He et al. (2021) report that adapter tuning beats full fine-tuning on small training sets (A3), is less "
        "sensitive to the learning rate (A4) and overfits less over long training (A5). One grid of runs tests "
        f"all three here. **Encoder:** {tuner.model_name}.",
        "## Protocol\n\n"
        f"- Held-out split: {args.heldout} rows of each task's training split, one fixed draw (seed "
        f"{protocol.HELDOUT_SEED}); each seed's training subset is drawn from the other rows. Learning rates are "
        "chosen per (task, size, method) by the mean over seeds of the final held-out score; the dev split "
        "reported below is never used to choose anything.\n"
        f"- One rate grid for every method: {{{args.lrs}}} ({reference_rates(parse_list(args.lrs, float))}). "
        "AdamW, linear warmup 10 % and decay, weight decay 0.01, "
        f"max length {args.max_length}, compute {args.compute_dtype}.\n"
        f"- Budget: {budget_text}. Held-out and dev scored after every epoch.\n"
        f"- Seeds {args.seeds} (subset, adapter / head init, dropout, batch order). Methods: "
        + ", ".join(f"{m.name} ({m.kind}{', bottleneck ' + str(m.bottleneck) if m.bottleneck else ''})" for m in methods)
        + "; Houlsby adapters train their LayerNorms too, as in He et al.\n"
        f"- Differences paired by seed; 95 % intervals from {args.bootstrap} bootstrap resamples of seeds and dev "
        "rows (the metric recomputed on each). A claim is **reproduced** only where its interval excludes 0 on the "
        "claimed side.\n"
        f"- Dev: {'first ' + str(args.dev_limit) + ' rows of ' if args.dev_limit else ''}each task's dev split; "
        "majority-class baseline beside every score.",
        "## Learning-rate choice (mean final held-out score x100 over seeds; bold: chosen)\n\n" + lr_table
        + ("\n\nChosen at an end of the grid (the best rate may lie outside it): " + "; ".join(edges) if edges else ""),
        "## A3 low resource: dev score at the chosen rate (x100)\n\n" + a3_table + "\n\n"
        + "\n".join(verdict_lines(a3, "adapter better", "interval of adapter − full above 0")),
        "## A4 learning-rate robustness: mean dev score (x100) at every rate\n\n" + a4_table + "\n\n"
        "Spread = sample std of a seed's dev scores over the shared grid; the claim holds where full fine-tuning's "
        "spread exceeds the adapter's.\n\n" + "\n".join(verdict_lines(a4, "adapter less sensitive",
                                                                       "interval of full − adapter spread above 0")),
        "## A5 overfitting: dev score over the epochs at the chosen rate (x100, mean ± std over seeds)\n\n"
        + a5_table + "\n\n" + "\n".join(verdict_lines(a5, "full fine-tuning drops more",
                                                       "interval of full − adapter drop above 0"))
        + "\n\nThe learning rate decays linearly to 0, which damps late-epoch change for both methods alike.",
        "## Convergence\n\n" + (f"Training loss not flattened by the end of the budget (last 20 % of the curve "
                                f"more than 5 % of the first value away from the 20 % before) in {len(not_flat)} of "
                                f"{len(records)} runs" + (": " + "; ".join(not_flat[:30]) + (" ..." if len(not_flat) > 30 else "")
                                                          if not_flat else "") + "."),
        cost_line(records),
    ]
    if png:
        sections.append(f"![training loss and dev curves at the chosen rates]({png.name})")
    if args.note:
        sections.append("## Notes\n\n" + "\n".join(f"- {n}" for n in args.note))
    md = write_report(out / f"{args.name}.md", "Adapters vs full fine-tuning: low resource, learning rate, "
                      "overfitting (He et al. 2021)", sections, command=command, wall_s=time.time() - t0,
                      settings=settings, quick=args.quick)
    print(a3_table)
    print(f"wrote {md}", flush=True)
    return md


# ------------------------------------------------------------------ run
def run(args: argparse.Namespace, command: str) -> dict:
    t0 = time.time()
    tasks, seeds = parse_list(args.tasks), parse_list(args.seeds, int)
    sizes, lrs = parse_list(args.sizes, int), parse_list(args.lrs, float)
    methods = parse_methods(args.methods, args.adapter)  # their .lr is unused: every method runs the grid
    tuner = make_tuner(args)
    settings = settings_of(args, tuner, heldout=args.heldout, budget=f"{args.steps} steps" if args.steps else
                           f"{args.epochs:g} epochs")
    grid = [(task, size, seed, m, lr) for task, size in cells(tuner, tasks, sizes, args.heldout)
            for seed in seeds for m in methods for lr in lrs]
    specs = [dict(study="effectiveness", task=t, size=s, method=m.name, kind=m.kind, bottleneck=m.bottleneck,
                  lr=lr, seed=seed, **settings) for t, s, seed, m, lr in grid]
    study = Study(Path(args.out) / f"{args.name}.jsonl", specs, report_only=args.report_only,
                  max_minutes=args.max_minutes)
    if args.dry_run:
        cost = Cost(tuner)
        for task, size, seed, m, lr in study.todo(grid, specs):
            train, held, dev = cell_data(tuner, task, size, seed, args.heldout, args.dev_limit)
            n_epochs = budget(args, size, args.batch_size) / math.ceil(size / args.batch_size)
            cost.add(m, train, n_epochs, [held, dev] * max(1, math.ceil(n_epochs)))
        print(cost.report(), flush=True)
        logged = [r for r in study.log if r.get("steps")]
        if logged:
            per = np.median([r["wall_s"] / r["steps"] for r in logged])
            left = sum(cost.train.values())
            print(f"measured in the log: {per:.3f} s wall per step, everything included (median of {len(logged)} "
                  f"runs, on {logged[-1].get('host', 'the machine that made them')}): the {left} steps left take "
                  f"~{common.fmt_duration(per * left)} there (the table's CPU costs are fp32 on a loaded 2-core "
                  "machine; the logged rate is the one to trust on the machine that made it)", flush=True)
        return {"cost": cost}
    records = []
    for (task, size, seed, m, lr), spec in zip(grid, specs):
        def one(task=task, size=size, seed=seed, m=m, lr=lr):
            train, held, dev = cell_data(tuner, task, size, seed, args.heldout, args.dev_limit)
            runner = tuner.setup(m, task)["runner"]
            total = budget(args, size, args.batch_size)

            def hook(epoch, step, trainable):
                if step >= total:
                    return {}  # the last one is scored below, with the dev predictions
                return {"heldout": slim(runner.evaluate(task, held, trainable)),
                        "dev": slim(runner.evaluate(task, dev, trainable))}

            epochs = total / math.ceil(size / args.batch_size)
            res = tuner.run(m, task, train, held, seed=seed, epochs=epochs, lr=lr, return_params=True, epoch_hook=hook)
            with common.Timer() as t:
                preds, dev_metrics = predict_rows(runner, task, dev, res["trainable"])
            evals = [e for e in res["epoch_log"] if "dev" in e]
            evals.append({"epoch": round(res["steps"] / math.ceil(size / args.batch_size), 3), "step": res["steps"],
                          "heldout": slim(res["final"]), "dev": slim(dev_metrics)})
            return dict(task=task, size=size, method=m.name, lr=lr, seed=seed, steps=res["steps"],
                        train_examples=size, heldout_examples=args.heldout, dev_examples=len(dev["labels"]),
                        evals=evals, curve=protocol.loss_curve(res["train_loss"]),
                        dev_pred=protocol.pack_predictions(preds, tuner.head(task).regression),
                        host=common.run_host(),
                        wall_s=round(res["wall_s"] + t.wall, 2), cpu_s=round(res["cpu_s"] + t.cpu, 2))

        rec = study.once(spec, one, what=f"{task} n={size} seed {seed} {m.name} lr {lr:g}",
                         show=lambda r: f"held-out {r['evals'][-1]['heldout'][main_metric(r['task'])]:.3f}, dev "
                                        f"{r['evals'][-1]['dev'][main_metric(r['task'])]:.3f} in {r['wall_s']:.0f} s")
        if rec is not None:
            records.append(rec)
    if study.stopped:
        print(f"time limit: {study.stopped} runs left for the next chunk (rerun the same command)", flush=True)
    md = write(args, command, t0, tuner, methods, records, settings)
    return {"records": records, "markdown": md, "left": study.stopped}


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.effectiveness", argv)
    args = parse_args(argv)
    return run(args, start("experiments.effectiveness", args, argv))


if __name__ == "__main__":
    main()
