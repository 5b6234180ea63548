"""How jadapt's defaults (learning rate, head pooling) were chosen: measured at the peers' budgets.

The budgets of ../shared/PEERS.md ("Accuracy at small budgets"): SST-2 1,000 train examples,
Pfeiffer, 2 epochs; MRPC 2,000 train examples, Houlsby, 3 epochs; batch 32, max length 128,
bottleneck 64, seed 0, AdamW with linear schedule and 10 % warmup. Dev = the full dev set.

    python -m experiments.defaults --data-dir ../shared/data            # full (CPU: ~30 min)
    python -m experiments.defaults --data-dir ../shared/data --quick    # one run per row group
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.common import command_line, hardware, markdown_table, write_text_atomic

RESULTS = Path(__file__).parent / "results"

# (task, method, train size, epochs, pooling, learning rates)
GRID = [
    ("sst2", "pfeiffer", 1000, 2, "mean", (3e-4, 1e-3, 3e-3)),
    ("sst2", "pfeiffer", 1000, 2, "cls", (1e-3,)),
    ("mrpc", "houlsby", 2000, 3, "mean", (3e-4, 1e-3, 3e-3)),
    ("mrpc", "houlsby", 2000, 3, "cls", (1e-3,)),
    ("sst2", "full", 1000, 2, "mean", (2e-5, 5e-5, 1e-4)),
]

NOT_A_CLAIM_STUDY = (
    "> **Not a claim study.** An engineering record of how jadapt's defaults were picked: one seed, "
    "scores on the dev set that also chose, no intervals. No paper claim rests on it; the claim studies "
    "(`effectiveness_*.md`, `forgetting_*.md`, `cross_lingual.md`, `mera*.md`) follow the protocol of "
    "`experiments/protocol.py` (rates chosen on held-out training rows, >= 3 seeds, paired intervals). "
    "Majority class on the same dev sets: SST-2 0.509, MRPC 0.684 (always-positive F1 0.812).")


def build(task_name, method, pooling, model_path):
    from jadapt.adapters.config import preset
    from jadapt.data import get_task
    from jadapt.models.model import HeadConfig
    from jadapt.models.pretrained import load_pretrained
    from jadapt.train.optim import trainable_labels, trainable_rules

    task = get_task(task_name)
    adapters = () if method == "full" else ((task_name, preset(method, bottleneck=64)),)
    model, params = load_pretrained(model_path, adapters=adapters, head=HeadConfig(task.num_labels, pooling=pooling))
    ln = any(c.train_layer_norms for _, c in adapters)
    labels = trainable_labels(params, trainable_rules(method, [n for n, _ in adapters], train_layer_norms=ln))
    return task, model, params, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true", help="first learning rate of each row group only")
    ap.add_argument("--out", default=str(RESULTS / "defaults.md"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the saved runs")
    args = ap.parse_args(argv)

    from jadapt import data
    from jadapt.models.hf import resolve_model_path
    from jadapt.train.runner import Runner

    model_dir = resolve_model_path(args.model)
    raw = Path(args.out).with_suffix(".jsonl")
    done = {}
    if raw.is_file():
        for line in raw.read_text().splitlines():
            r = json.loads(line)
            done[(r["task"], r["method"], r["pooling"], r["lr"])] = r
    t0 = time.time()
    for task_name, method, size, epochs, pooling, lrs in GRID:
        todo = [lr for lr in (lrs[:1] if args.quick else lrs) if (task_name, method, pooling, lr) not in done]
        if not todo or args.report_only:
            continue
        task, model, params, labels = build(task_name, method, pooling, model_dir)
        train = data.encode(task, data.subsample(data.load_split(task, "train", args.data_dir), size, 0),
                            str(model_dir), 128)
        dev = data.encode(task, data.load_split(task, task.dev_split, args.data_dir), str(model_dir), 128)
        runner = Runner(model, params, labels, regression=task.regression)
        for lr in todo:
            t = time.time()
            out = runner.run(task, train, dev, seed=0, epochs=epochs, lr=lr, eval_each_epoch=True)
            rec = {"task": task_name, "method": method, "pooling": pooling, "lr": lr, "train_size": size,
                   "epochs": epochs, "final": out["final"], "best": out["best"], "seconds": round(time.time() - t, 1)}
            done[(task_name, method, pooling, lr)] = rec
            with open(raw, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{task_name} {method} {pooling} lr={lr:g}: final acc {out['final']['accuracy']:.4f} "
                  f"({rec['seconds']} s)", flush=True)
    rows = [[r["task"], r["method"], r["train_size"], r["epochs"], r["pooling"], f"{r['lr']:g}",
             f"{r['final']['accuracy']:.3f}", f"{r['best']['accuracy']:.3f}", r["seconds"]]
            for r in sorted(done.values(), key=lambda r: (r["task"], r["method"], r["pooling"], r["lr"]))]
    hw = hardware()
    text = (f"# How the defaults were chosen\n\n{NOT_A_CLAIM_STUDY}\n\nCommand: `{command_line(argv, python='python')}`  \n"
            f"Hardware: {hw['cpu_model']} ({hw['cpu_bf16']}), {hw['cores_available']} cores, load average {hw.get('load_average_1m')} at the end (other jobs shared the CPU); this run's wall time "
            f"{time.time() - t0:.0f} s (excluding rows reused from `{raw.name}`).\n\n"
            "Packaged all-MiniLM-L6-v2, batch 32, max length 128, bottleneck 64, seed 0, AdamW "
            "(wd 0.01, clip 1.0), linear schedule with 10 % warmup; dev accuracy on the full dev set "
            "after the last epoch (final) and the best epoch. Peer (`adapters`, same budgets, "
            "../shared/PEERS.md): SST-2 Pfeiffer 0.510 / 0.703 / 0.786 / 0.783 at lr 1e-4 / 3e-4 / 1e-3 / "
            "3e-3; MRPC Houlsby 0.689 / 0.716 / 0.748 / 0.733.\n\n"
            + markdown_table(["task", "method", "train", "epochs", "pooling", "lr", "final acc", "best acc", "s"], rows)
            + "\n")
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
