"""End to end: one epoch of Pfeiffer adapter training on real SST-2 (8,000 examples, max
length 128, batch 32, bottleneck 64, lr 1e-3, AdamW + linear schedule with 10 % warmup),
``jadapt train`` (length buckets) vs AdapterHub ``AdapterTrainer`` (dynamic padding), in
fresh processes, ``--reps`` times each, interleaved (jadapt, peer, peer, jadapt, ...) so both
sides see the same background load; wall time, peak memory (the child's ``ru_maxrss``) and
final dev accuracy of each. jadapt's first
run starts from an empty persistent compilation cache (cold), its later runs reuse it (warm):
both are reported.

    python benchmarks/bench_e2e.py --data-dir ../shared/data [--peer-python PATH] [--reps 2]

The peers' venv: --peer-python or $JADAPT_PEER_PYTHON (see bench_step.py to create one).
Writes benchmarks/results/e2e.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jadapt.machine import machine_line

HERE = Path(__file__).resolve().parent


def run_child(cmd, env=None, capture=False) -> tuple[str, float, float]:
    """Run ``cmd`` to the end: (stdout if ``capture``, wall seconds, peak RSS in MB of that
    process; ``os.wait4`` reports the child's own ``ru_maxrss``, across the CLI's re-exec)."""
    with tempfile.TemporaryFile("w+") as err:  # captured output stays off the terminal, kept for errors
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if capture else None,
                                stderr=err if capture else None, text=True)
        out = proc.stdout.read() if capture else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise subprocess.CalledProcessError(proc.returncode, cmd, out, err.read()[-3000:])
    return out, wall, usage.ru_maxrss / 1024


def run_jadapt(args, out: Path) -> dict:
    # The real subset jadapt draws differs from the peer's shuffle: both are seeded random 8k subsets.
    cmd = [sys.executable, "-m", "jadapt.cli", "train", "--task", "sst2", "--method", "pfeiffer", "--train-size",
           str(args.train_size), "--epochs", "1", "--batch-size", "32", "--max-length", "128", "--bottleneck", "64",
           "--lr", "1e-3", "--data-dir", args.data_dir, "--no-progress", "--out", str(out)]
    # a fresh persistent compilation cache per benchmark: the first run compiles (cold), later
    # runs reuse its programs (warm), as a user's second run of the same shapes does
    env = dict(os.environ, JADAPT_COMPILATION_CACHE=str(out.parent / "xla_cache"))
    _, wall, peak = run_child(cmd, env=env)
    m = json.loads((out / "metrics.json").read_text())
    return {"side": "jadapt", "total_s": round(wall, 1), "peak_mb": round(peak), "dev_accuracy": m["accuracy"],
            "cmd": shlex.join(cmd[1:])}


def run_peer(args, out: Path) -> dict:
    from jadapt.models.hf import packaged_model_path

    cmd = [args.peer_python, str(HERE / "peers" / "e2e_adapters.py"), "--model", str(packaged_model_path()),
           "--data-dir", args.data_dir, "--train-size", str(args.train_size), "--out", str(out)]
    stdout, wall, peak = run_child(cmd, capture=True)
    line = [x for x in stdout.splitlines() if x.startswith("{")][-1]
    return {**json.loads(line), "wall_s": round(wall, 1), "peak_mb": round(peak)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("JADAPT_DATA_DIR", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--peer-python", default=os.environ.get("JADAPT_PEER_PYTHON", str(HERE / ".peervenv/bin/python")))
    ap.add_argument("--train-size", type=int, default=8000)
    ap.add_argument("--reps", type=int, default=2, help="runs per side, interleaved")
    args = ap.parse_args(argv)
    print(f"machine: {machine_line()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="e2e_"))
    load0 = os.getloadavg()[0]
    js, ps = [], []
    for r in range(args.reps):
        order = ("jadapt", "peer") if r % 2 == 0 else ("peer", "jadapt")
        for side in order:
            if side == "jadapt":
                js.append(run_jadapt(args, tmp / f"jadapt{r}"))
            else:
                ps.append(run_peer(args, tmp / f"peer{r}"))
    load1 = os.getloadavg()[0]
    cold, warm = js[0]["total_s"], [x["total_s"] for x in js[1:]]
    warm_med = statistics.median(warm) if warm else None
    p_wall = statistics.median(x["wall_s"] for x in ps)
    p_train = statistics.median(x["train_s"] for x in ps)
    j = js[0]
    p_mem = statistics.median(x["peak_mb"] for x in ps)
    accs = lambda runs: " / ".join(f"{x['dev_accuracy']:.4f}" for x in runs)  # noqa: E731
    mems = lambda runs: " / ".join(f"{x['peak_mb']:,}" for x in runs)  # noqa: E731
    mem_ratio = lambda runs: statistics.median(x["peak_mb"] for x in runs) / p_mem  # noqa: E731
    rows = [f"| jadapt train, first run (compiles; cold cache) | {cold:.1f} | {cold} | {accs(js[:1])} | "
            f"**{cold / p_wall:.2f}** | {mems(js[:1])} | {mem_ratio(js[:1]):.2f} |"]
    if warm:
        rows.append(f"| jadapt train, later runs (compiled programs from the persistent cache) | {warm_med:.1f} | "
                    f"{' / '.join(str(w) for w in warm)} | {accs(js[1:])} | **{warm_med / p_wall:.2f}** | "
                    f"{mems(js[1:])} | {mem_ratio(js[1:]):.2f} |")
    rows.append(f"| adapters AdapterTrainer (dynamic padding; training {p_train:.1f} s) | {p_wall:.1f} | "
                f"{' / '.join(str(x['wall_s']) for x in ps)} | {accs(ps)} | 1 | {mems(ps)} | 1 |")
    text = (f"# End to end: one SST-2 epoch, {args.train_size} examples (jadapt vs AdapterHub AdapterTrainer)\n\n"
            f"Command: `python benchmarks/bench_e2e.py --data-dir {args.data_dir} --reps {args.reps}`  \n"
            f"Date: {time.strftime('%Y-%m-%d %H:%M')}; {machine_line()}; load average {load0:.1f} "
            f"before, {load1:.1f} after; {args.reps} runs per side, interleaved (jadapt, peer, peer, jadapt, ...).\n\n"
            "| side | wall time, whole process (s), median | runs (s) | dev accuracy per run | jadapt / peer | "
            "peak RSS per run (MB) | memory ratio (medians) |\n"
            "|---|---:|---|---|---:|---|---:|\n" + "\n".join(rows) + "\n\n"
            "Wall time covers the whole process: imports, model load, tokenisation, compilation, training and the "
            "dev evaluation.  \n"
            f"jadapt command: `jadapt {j['cmd'].split(' ', 2)[2]}`\n")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "e2e.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
