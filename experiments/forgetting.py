"""Forgetting (He et al., ACL 2021, sec. 3): how far does tuning move the encoder away from the
pretrained one, adapters vs full fine-tuning?

    python -m experiments.forgetting --quick          # minutes: SST-2 256 rows, 1 epoch, 64 probes
    python -m experiments.forgetting                  # CPU-sized full study (resumable)
    python -m experiments.forgetting --tasks sst2:8000,mrpc,rte,stsb,cola --seeds 0,1,2 --probe-size 2000

Per task (``name`` or ``name:train_rows``) x method (Houlsby adapter, bottleneck 64; full
fine-tuning) x seed, the tuned encoder is compared with the original on inputs neither saw
in tuning:

1. **Representations** -- layer-wise RSA (He et al.'s measure) and linear CKA between the
   original and the tuned encoder (head removed) on ``--probe-size`` sentences of
   ``--probe-task`` (default: MNLI matched-dev premises; no study task is NLI-3), one
   mean-pooled row per sentence (``--level token`` samples tokens instead). 1.0 = unchanged
   geometry; entry 0 is the embedding output (frozen under adapter tuning).
2. **Behaviour** -- what the original model was trained for: all-MiniLM-L6-v2 is a sentence
   embedder, so the Spearman correlation between the cosine similarity of mean-pooled
   sentence embeddings and the STS-B dev gold scores (no training on STS-B), before vs after
   tuning. A drop is forgetting of the original skill. Every layer's value is in the JSONL;
   the report gives the last layer (the one the embedder uses).

The tuned models' own dev scores are reported too (to show the comparison is between models
that learned their task). Every finished run is one line of ``<out>/<name>.jsonl``; a
restarted study skips what is there. Results: ``<out>/<name>.md`` and ``<out>/<name>.png``.
Cost of the full default (``--dry-run``): 6 runs, ~1 CPU hour (~30 min on 2 idle cores).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common
from experiments.study import (Cost, Method, Study, Tuner, add_common_args, cost_line, finish_args,
                                      main_metric, make_tuner, parse_list, parse_methods, settings_of, save_figure,
                                      start, write_report)

QUICK = dict(tasks="sst2:256", seeds="0", methods="adapter64,full", epochs=1.0, max_length=64, dev_limit=128,
             probe_size=64, sts_size=128)
FULL = dict(tasks="sst2:2000,mrpc,rte", seeds="0", methods="adapter64,full", epochs=3.0, max_length=128,
            dev_limit=None, probe_size=500, sts_size=None)


def parse_args(argv=None) -> argparse.Namespace:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="forgetting", full=FULL)
    p.add_argument("--tasks", default=None, help=f"task or task:train_rows, comma list (default {FULL['tasks']})")
    p.add_argument("--probe-task", default="mnli", help="held-out sentences for RSA/CKA (default mnli)")
    p.add_argument("--probe-split", default="dev", help="its split ('dev' = the task's dev split)")
    p.add_argument("--probe-size", type=int, default=None, help=f"sentences (default {FULL['probe_size']})")
    p.add_argument("--level", default="sentence", choices=("sentence", "token"), help="RSA/CKA rows")
    p.add_argument("--sts-task", default="stsb", help="sentence-similarity task for the behaviour check")
    p.add_argument("--sts-size", type=int, default=None, help="pairs of its dev split (default: all)")
    p.add_argument("--rates-from", default=None,
                   help="an effectiveness grid's JSONL (experiments.effectiveness): tune each task:size with the "
                        "rate each method chose there on held-out rows, the same subsets and step budget (the "
                        "protocol); without it, --adapter-lr / --full-lr / --epochs are fixed by hand")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    return finish_args(p.parse_args(argv), "forgetting", QUICK, FULL)


def parse_tasks(text: str) -> list[tuple[str, Optional[int]]]:
    """"sst2:2000,mrpc" -> [("sst2", 2000), ("mrpc", None)]."""
    out = []
    for item in parse_list(text):
        name, _, n = item.partition(":")
        out.append((name, int(n) if n else None))
    return out


def grid_plan(path: str, tasks: Sequence[tuple[str, Optional[int]]], methods: Sequence[Method]) -> dict:
    """{(task, size, method): {"lr", "steps", "heldout", "dev": {seed: the grid's final dev score}}}
    from an effectiveness grid: the rate each method chose on held-out rows, its budget."""
    from experiments import effectiveness

    recs = list(common.RunLog(path))
    if not recs:
        raise ValueError(f"--rates-from {path}: no runs in it")
    rates = effectiveness.chosen_rates(recs)
    plan = {}
    for task, size in tasks:
        for m in methods:
            if size is None or (task, size, m.name) not in rates:
                have = sorted({(t, s) for t, s, _ in rates})
                raise ValueError(f"--rates-from {path} has no {m.name} runs for {task}:{size} (it has {have})")
            lr = rates[(task, size, m.name)][0]
            runs = [r for r in recs if (r["task"], r["size"], r["method"], r["lr"]) == (task, size, m.name, lr)]
            plan[(task, size, m.name)] = {"lr": lr, "steps": runs[0]["steps"], "heldout": runs[0]["heldout_examples"],
                                          "dev": {r["seed"]: r["evals"][-1]["dev"] for r in runs}}
    return plan


# ---------------------------------------------------------------- probes
def probe_sentences(task: str, split: str, n: int, data_dir) -> list[str]:
    """``n`` seeded sentences: the first text field of ``task``'s ``split``, duplicates dropped."""
    from jadapt import data

    spec = data.get_task(task)
    rows = data.load_split(spec, spec.dev_split if split == "dev" else split, data_dir)
    texts = list(dict.fromkeys(str(t) for t in rows[spec.text_fields[0]]))
    if len(texts) < 3:
        raise ValueError(f"probe task {task}: need at least 3 distinct sentences, found {len(texts)}")
    idx = np.sort(np.random.default_rng(0).choice(len(texts), size=min(n, len(texts)), replace=False))
    return [texts[i] for i in idx]


def sts_pairs(task: str, n: Optional[int], data_dir) -> tuple[list[str], list[str], np.ndarray]:
    """(first sentences, second sentences, gold scores) of ``task``'s dev split (first ``n``)."""
    from jadapt import data

    spec = data.get_task(task)
    if not spec.is_pair:
        raise ValueError(f"--sts-task {task} is not a sentence-pair task")
    rows = data.load_split(spec, spec.dev_split, data_dir)
    k = data.num_rows(rows) if n is None else min(n, data.num_rows(rows))
    a, b = spec.text_fields
    return [str(x) for x in rows[a][:k]], [str(x) for x in rows[b][:k]], np.asarray(rows["label"][:k], np.float64)


def layer_embeddings(model, params, tokenizer, texts: Sequence[str], max_length: int,
                     batch_size: int = 64) -> np.ndarray:
    """Mean-pooled hidden states of every layer: [L+1, len(texts), hidden] (entry 0 = embeddings)."""
    import jax.numpy as jnp

    from jadapt.analysis import encoder_of, layer_rows, tokenize_batches

    enc, out = encoder_of(model), []
    for b in tokenize_batches(tokenizer, list(texts), batch_size, max_length):
        rows = layer_rows(enc, params, jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]),
                          jnp.asarray(b["token_type_ids"]))
        out.append(np.asarray(rows)[:, b["valid"]])
    return np.concatenate(out, axis=1)


def sts_spearman(model, params, tokenizer, pairs, max_length: int) -> list[float]:
    """Per layer: Spearman(cosine of mean-pooled embeddings of each pair, gold score)."""
    from jadapt.train.metrics import spearman

    first, second, gold = pairs
    ea = layer_embeddings(model, params, tokenizer, first, max_length)
    eb = layer_embeddings(model, params, tokenizer, second, max_length)
    cos = (ea * eb).sum(-1) / np.maximum(np.linalg.norm(ea, axis=-1) * np.linalg.norm(eb, axis=-1), 1e-12)
    return [spearman(c, gold) for c in cos]


def compare_to_base(tuner: Tuner, model, params, probes: Sequence[str], level: str) -> dict:
    """Per-layer RSA / CKA of (model, params) vs the original encoder on ``probes``."""
    from jadapt.analysis import CompareConfig, compare_models, tokenize_batches

    base, base_params = tuner.base()
    res = compare_models(base, base_params, model, params,
                         tokenize_batches(tuner.tokenizer, list(probes), 32, tuner.max_length),
                         CompareConfig(level=level))
    return {"rsa": [float(x) for x in res["rsa"]], "cka": [float(x) for x in res["cka"]], "rows": res["num_rows"]}


# ---------------------------------------------------------------- report
def paired(records: Sequence[dict], methods: Sequence[Method], tuner: Tuner, args) -> tuple[str, str]:
    """(table of adapter - full by seed: top-layer RSA, mean RSA over layers 1..L, STS-B
    Spearman after tuning; table of task dev scores beside the majority class, flagging a
    method within 2 points of it: its small movement may only mean it learned little)."""
    from experiments import protocol
    from experiments.effectiveness import dev_set

    by = {}
    for r in records:
        by.setdefault((r["task"], r["method"]), {})[r["seed"]] = r
    rows, learned = [], []
    for task in dict.fromkeys(r["task"] for r in records):
        main = main_metric(task)
        y = np.asarray(dev_set(tuner, task, args.dev_limit)["labels"])
        base = protocol.majority_baseline(task, y)[main]
        for m in methods:
            rs = by.get((task, m.name), {})
            if rs:
                vals = [r["metrics"][main] for r in rs.values()]
                grid = [r["grid_dev"][main] for r in rs.values() if r.get("grid_dev")]
                ok = np.mean(vals) > base + 0.02
                learned.append([task, m.name, f"{rs[min(rs)]['lr']:g}", common.fmt_mean_std(vals, show_n=True),
                                common.fmt_mean_std(grid) if grid else "–", f"{100 * base:.1f}",
                                "yes" if ok else "**no**: within 2 points of the majority class"])
        for a in [m.name for m in methods if m.kind != "full"]:
            ad, full = by.get((task, a), {}), by.get((task, "full"), {})
            seeds = sorted(set(ad) & set(full))
            if len(seeds) < 2:
                continue
            cells = [task, f"{a} − full", str(len(seeds))]
            for get in (lambda r: r["rsa"][-1], lambda r: float(np.mean(r["rsa"][1:])), lambda r: r["sts"][-1]):
                x, z = [get(ad[s]) for s in seeds], [get(full[s]) for s in seeds]
                ci = protocol.bootstrap_seed_diff(x, z, args.bootstrap)
                cells.append(f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}] {protocol.verdict(ci)}, "
                             f"{protocol.sign_count(x, z)} seeds")
            rows.append(cells)
    pairs = common.markdown_table(["task", "pair", "seeds", "top-layer RSA", "mean RSA layers 1..L",
                                   "STS-B Spearman after tuning"], rows) if rows else "no paired seeds yet"
    learned_t = common.markdown_table(["task", "method", "lr", "task dev score x100", "grid dev", "majority class",
                                       "learned"], learned)
    return pairs, learned_t



def summarize(records: Sequence[dict], base: dict, tasks: Sequence[str], methods: Sequence[Method]) -> dict:
    """Markdown tables: RSA per layer, CKA per layer, STS-B behaviour + task dev score."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    order = [(t, m.name) for t in tasks for m in methods if (t, m.name) in groups]
    n_layers = len(base["sts"])
    tables = {}
    for key, label in (("rsa", "RSA"), ("cka", "linear CKA")):
        rows = []
        for t, m in order:
            vals = np.asarray([r[key] for r in groups[(t, m)]])
            rows.append([t, m, *[f"{v:.3f}" for v in vals.mean(0)], f"{vals[:, 1:].mean():.3f}"])
        header = ["task", "method", "emb", *[f"layer {i}" for i in range(1, n_layers)], "mean 1..L"]
        tables[key] = (label, common.markdown_table(header, rows, align="ll" + "r" * (len(header) - 2)))
    rows = [["original encoder", "–", "–", f"{100 * base['sts'][-1]:.1f}", "–"]]
    for t, m in order:
        rs = groups[(t, m)]
        metric = main_metric(t)
        last = [r["sts"][-1] for r in rs]
        rows.append([t, m, f"{metric} {common.fmt_mean_std([r['metrics'][metric] for r in rs])}",
                     common.fmt_mean_std(last), f"{100 * (np.mean(last) - base['sts'][-1]):+.1f}"])
    tables["sts"] = ("behaviour", common.markdown_table(
        ["task", "method", "task dev score (x100)", "STS-B Spearman x100 (last layer)", "Δ vs original"], rows,
        align="lllrr"))
    return {"tables": tables, "groups": groups, "order": order}


def plot(summary: dict, base: dict, path: Path) -> Optional[Path]:
    if not summary["order"]:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.5, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    tasks = list(dict.fromkeys(t for t, _ in summary["order"]))
    colors = {t: f"C{i}" for i, t in enumerate(tasks)}
    for t, m in summary["order"]:
        rs = summary["groups"][(t, m)]
        style = "--" if m == "full" else "-"
        for ax, key in zip(axes, ("rsa", "cka", "sts")):
            ys = np.asarray([r[key] for r in rs]).mean(0)
            ax.plot(range(len(ys)), ys, style, marker="o", color=colors[t], label=f"{t} {m}")
    axes[2].plot(range(len(base["sts"])), base["sts"], ":", marker="s", color="k", label="original")
    for ax, title in zip(axes, ("RSA to the original encoder", "linear CKA to the original encoder",
                                "STS-B Spearman of mean-pooled cosine")):
        ax.set_title(title)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_xticks(range(len(base["sts"])))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("similarity")
    axes[2].legend(loc="lower right", fontsize=7)
    return save_figure(fig, path)


# ---------------------------------------------------------------- study
def run(args: argparse.Namespace, command: str) -> dict:
    t0 = time.time()
    tasks, seeds = parse_tasks(args.tasks), parse_list(args.seeds, int)
    methods = parse_methods(args.methods, args.adapter, args.adapter_lr, args.full_lr)
    tuner = make_tuner(args)
    out = Path(args.out)
    probes = probe_sentences(args.probe_task, args.probe_split, args.probe_size, tuner.data_dir)
    pairs = sts_pairs(args.sts_task, args.sts_size, tuner.data_dir)
    settings = settings_of(args, tuner, probe=f"{args.probe_task}/{args.probe_split}",
                           probe_size=len(probes), level=args.level, sts=args.sts_task, sts_size=len(pairs[2]))
    plan = grid_plan(args.rates_from, tasks, methods) if args.rates_from else None

    def lr_of(task, n, m):
        return plan[(task, n, m.name)]["lr"] if plan else m.lr

    def budget_of(task, n):
        if not plan:
            return {"epochs": args.epochs}
        p = next(v for (t, s, _), v in plan.items() if (t, s) == (task, n))
        return {"steps": p["steps"], "heldout": p["heldout"]}

    grid = [(task, n, m, seed) for task, n in tasks for m in methods for seed in seeds]
    specs = [dict(study="forgetting", what="base", **settings)]
    specs += [dict(study="forgetting", task=t, train_size=n, method=m.name, kind=m.kind, bottleneck=m.bottleneck,
                   lr=lr_of(t, n, m), seed=seed, **budget_of(t, n), **settings) for t, n, m, seed in grid]
    study = Study(out / f"{args.name}.jsonl", specs, report_only=args.report_only,
                  max_minutes=args.max_minutes)
    if args.dry_run:  # comparison forwards: probes + both STS sides, through the tuned and the original model
        probe_enc = {"input_ids": np.zeros((len(probes), tuner.max_length), np.int32),
                     "lengths": np.full(len(probes), tuner.max_length // 2, np.int32)}
        sts_enc = {"input_ids": np.zeros((2 * len(pairs[2]), tuner.max_length), np.int32),
                   "lengths": np.full(2 * len(pairs[2]), tuner.max_length // 2, np.int32)}
        cost = Cost(tuner)
        for task, n, m, seed in study.todo(grid, specs[1:]):
            train, dev = tuner.task_data(task, train_size=n, seed=seed, dev_limit=args.dev_limit)
            cost.add(m, train, args.epochs, [dev, probe_enc, probe_enc, sts_enc])
        print(cost.report() + "\n(probe / STS forwards counted at half the max length)", flush=True)
        return {"cost": cost}
    base_model, base_params = tuner.base()
    base = study.once(specs[0], lambda: {"sts": sts_spearman(base_model, base_params, tuner.tokenizer, pairs,
                                                             tuner.max_length)},
                      what="original encoder", show=lambda r: f"STS-B Spearman {r['sts'][-1]:.4f}")
    records = []
    for (task, n, m, seed), spec in zip(grid, specs[1:]):
        def one(task=task, n=n, m=m, seed=seed):
            budget = budget_of(task, n)
            if plan:  # the grid's subset (outside its held-out rows) and step budget
                from experiments.effectiveness import cell_data

                train, _, dev = cell_data(tuner, task, n, seed, budget["heldout"], args.dev_limit)
                epochs = budget["steps"] / -(-n // args.batch_size)
            else:
                train, dev = tuner.task_data(task, train_size=n, seed=seed, dev_limit=args.dev_limit)
                epochs = args.epochs
            res = tuner.run(m, task, train, dev, seed=seed, epochs=epochs, lr=lr_of(task, n, m), return_params=True)
            model, params = tuner.tuned(m, task, res["trainable"])
            with common.Timer() as t:
                sim = compare_to_base(tuner, model, params, probes, args.level)
                sts = sts_spearman(model, params, tuner.tokenizer, pairs, tuner.max_length)
            grid_dev = plan[(task, n, m.name)]["dev"].get(seed) if plan else None
            return dict(task=task, method=m.name, seed=seed, lr=lr_of(task, n, m), metrics=res["final"],
                        steps=res["steps"], grid_dev=grid_dev,
                        train_examples=int(len(train["labels"])), dev_examples=int(len(dev["labels"])),
                        **sim, sts=sts, wall_s=round(res["wall_s"] + t.wall, 2), cpu_s=round(res["cpu_s"] + t.cpu, 2))
        records.append(study.once(spec, one, what=f"{task} {m.name} seed {seed}",
                                  show=lambda r: f"dev {r['metrics'][main_metric(r['task'])]:.4f}, RSA mean "
                                                 f"{np.mean(r['rsa'][1:]):.3f}, STS-B {r['sts'][-1]:.4f} "
                                                 f"in {r['wall_s']:.0f} s"))
    records = [r for r in records if r is not None]  # --report-only: what the log has
    if base is None:
        raise SystemExit("--report-only: the original encoder's run is not in the log yet")
    summary = summarize(records, base, [t for t, _ in tasks], methods)
    pairs, learned = paired(records, methods, tuner, args)
    png = plot(summary, base, out / f"{args.name}.png")
    dev_what = f"first {args.dev_limit} rows of the dev split" if args.dev_limit else "full dev split"
    n_train = sorted({(r["task"], r["train_examples"]) for r in records})
    (rsa_label, rsa), (cka_label, cka), (_, sts) = (summary["tables"][k] for k in ("rsa", "cka", "sts"))
    sections = [
        "He et al. (2021) find that adapter tuning keeps the tuned model's representations much closer to "
        "the pretrained model's than full fine-tuning (higher RSA, especially in the top layers), i.e. it "
        "forgets less.",
        f"## {rsa_label} to the original encoder, per layer\n\n{len(probes)} sentences of "
        f"{args.probe_task}/{args.probe_split}, {args.level}-level rows, mean over {len(seeds)} seed(s). "
        "Adapter tuning leaves the embeddings (layer 0) untouched by construction.\n\n" + rsa,
        f"## {cka_label} to the original encoder, per layer\n\n" + cka,
        f"## Behaviour: the original skill (sentence similarity) before vs after tuning\n\n"
        f"Spearman x100 between the cosine of mean-pooled last-layer embeddings and {args.sts_task} dev gold "
        f"scores ({len(pairs[2])} pairs, no training on them); task dev scores on the {dev_what}.\n\n" + sts,
        "## Paired differences (adapter − full fine-tuning, by seed)\n\n" + pairs + "\n\n"
        "Claim A1 (adapters move the representations less) is reproduced where the interval of the top-layer "
        "RSA difference is above 0; A2 (they forget less of the original skill) where the STS-B difference is. "
        "Intervals: bootstrap over seeds (coarse with 3); the seed counts beside them are the plainer summary.",
        "## Did both methods learn their task?\n\n" + learned,
        "## Protocol\n\n" + (
            f"Rates, subsets and step budgets from the effectiveness grid `{args.rates_from}`: each method at the "
            "rate it chose there on held-out training rows, each seed on that seed's subset, the same number of "
            "steps; `grid dev` beside each run is the grid's own score for the same run (equal when rerun on the "
            "same machine)." if plan else
            "Rates fixed by hand (no held-out choice): " + ", ".join(f"{m.name} {m.lr:g}" for m in methods)
            + f"; {args.epochs:g} epochs.") + " Train rows per task: " + ", ".join(f"{t} {n}" for t, n in n_train)
        + ".",
        cost_line(records),
    ]
    if png:
        sections.append(f"![RSA, CKA and STS-B per layer]({png.name})")
    md = write_report(out / f"{args.name}.md", "Forgetting: how far tuning moves the encoder (He et al. 2021)",
                      sections, command=command, wall_s=time.time() - t0, settings=settings, quick=args.quick)
    print(rsa)
    print(sts)
    print(f"wrote {md}", flush=True)
    return {"records": records, "base": base, "summary": summary, "markdown": md, "png": png}


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.forgetting", argv)
    args = parse_args(argv)
    return run(args, start("experiments.forgetting", args, argv))


if __name__ == "__main__":
    main()
