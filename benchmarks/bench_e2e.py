"""End to end: one epoch of Pfeiffer adapter training on real SST-2 (8,000 examples, max
length 128, batch 32, bottleneck 64, lr 1e-3, AdamW + linear schedule with 10 % warmup),
``jadapt train`` (length buckets) vs AdapterHub ``AdapterTrainer`` (dynamic padding), one
after the other in fresh processes, with wall time and final dev accuracy of each.

    python benchmarks/bench_e2e.py --data-dir ../shared/data [--peer-python PATH]

The peers' venv: --peer-python or $JADAPT_PEER_PYTHON (see bench_step.py to create one).
Writes benchmarks/results/e2e.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_jadapt(args, out: Path) -> dict:
    # The real subset jadapt draws differs from the peer's shuffle: both are seeded random 8k subsets.
    cmd = [sys.executable, "-m", "jadapt.cli", "train", "--task", "sst2", "--method", "pfeiffer", "--train-size",
           str(args.train_size), "--epochs", "1", "--batch-size", "32", "--max-length", "128", "--bottleneck", "64",
           "--lr", "1e-3", "--data-dir", args.data_dir, "--no-progress", "--out", str(out)]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {"side": "jadapt", "total_s": round(wall, 1), "dev_accuracy": m["accuracy"], "cmd": shlex.join(cmd[1:])}


def run_peer(args, out: Path) -> dict:
    from jadapt.models.hf import packaged_model_path

    cmd = [args.peer_python, str(HERE / "peers" / "e2e_adapters.py"), "--model", str(packaged_model_path()),
           "--data-dir", args.data_dir, "--train-size", str(args.train_size), "--out", str(out)]
    t0 = time.time()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("{")][-1]
    return {**json.loads(line), "wall_s": round(time.time() - t0, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("JADAPT_DATA_DIR", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--peer-python", default=os.environ.get("JADAPT_PEER_PYTHON", str(HERE / ".peervenv/bin/python")))
    ap.add_argument("--train-size", type=int, default=8000)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="e2e_"))
    load0 = os.getloadavg()[0]
    j = run_jadapt(args, tmp / "jadapt")
    p = run_peer(args, tmp / "peer")
    load1 = os.getloadavg()[0]
    ratio = j["total_s"] / p["wall_s"]
    text = (f"# End to end: one SST-2 epoch, {args.train_size} examples (jadapt vs AdapterHub AdapterTrainer)\n\n"
            f"Command: `python benchmarks/bench_e2e.py --data-dir {args.data_dir}`  \n"
            f"Date: {time.strftime('%Y-%m-%d %H:%M')}; 2-core CPU; load average {load0:.1f} before, {load1:.1f} after "
            "(other jobs shared the CPU: absolute times are inflated, both sides alike).\n\n"
            "| side | wall time, whole process (s) | of which training (s) | dev accuracy |\n|---|---|---|---|\n"
            f"| jadapt train (length buckets, tcmalloc) | {j['total_s']} | - | {j['dev_accuracy']:.4f} |\n"
            f"| adapters AdapterTrainer (dynamic padding) | {p['wall_s']} | {p['train_s']} | {p['dev_accuracy']:.4f} |\n\n"
            f"Ratio jadapt / peer (whole process, including model load, tokenisation and compilation): **{ratio:.2f}**.  \n"
            f"jadapt command: `jadapt {j['cmd'].split(' ', 2)[2]}`\n")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "e2e.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
