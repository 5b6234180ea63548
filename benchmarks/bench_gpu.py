"""jadapt vs the PyTorch adapter libraries on one GPU, side by side in one call.

The GPU rows of issue 10 in one prepared script (device time is scarce: one run, results
written after every row so a cut-off run still reports what it measured):

1. the card's bf16 matmul rate (jax ``dot_general`` bf16 x bf16 -> fp32, 8192^3), the
   denominator of model FLOPs utilisation (MFU);
2. train step (forward + loss + backward + clip + AdamW, dropout on) and eval forward of
   jadapt (bench_step.py's worker: the code ``jadapt train`` runs) and of the peers
   (peers/peer_step.py: ``adapters`` Pfeiffer / Houlsby, ``peft`` LoRA, plain ``transformers``
   full fine-tuning, bf16 autocast on CUDA), one jadapt worker per ``--variants`` entry
   (precision policy x attention kernel), random models of the MiniLM (6 x 384) and
   BERT-base (12 x 768) shapes, length 128; both processes of a row alive at once, repetitions
   interleaved; medians; tokens/s and MFU by formula FLOPs (benchmarks/flops.py);
3. permutation alignment of K = 8 adapters x 24 sites (bench_align.py) on the GPU.

    python benchmarks/bench_gpu.py --peer-pythonpath /tmp/peersite --out $OUT

The peers need transformers 4.57 (``adapters`` pins it); ``--peer-pythonpath`` puts a folder
holding it (and adapters, peft, tokenizers, huggingface_hub) ahead of the interpreter's own
packages for the peer processes only. ``--smoke`` runs tiny shapes on whatever device there
is (the CPU check before spending device time).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_matmul import median_seconds  # noqa: E402
from bench_step import PEER_NAMES, med_ms, time_workers  # noqa: E402
from flops import BERT_BASE, MINILM, Shape, step_flops  # noqa: E402
from jadapt.machine import machine_line  # noqa: E402

# (model, batch, method), most important first: the targets are bert-base 256 and minilm 32
ROWS = [("bert-base", 256, "pfeiffer"), ("minilm", 32, "pfeiffer"), ("bert-base", 256, "houlsby"),
        ("bert-base", 256, "lora"), ("bert-base", 256, "full"), ("minilm", 32, "houlsby"),
        ("minilm", 32, "lora"), ("minilm", 32, "full"), ("bert-base", 32, "pfeiffer")]
TARGETS = {("bert-base", 256, "pfeiffer"): 0.5, ("minilm", 32, "pfeiffer"): 0.15}


def matmul_rate(n: int, reps: int = 10) -> float:
    """Measured bf16 matmul TFLOP/s (fp32 accumulate and result) of the default device."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    x = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32))
    return 2.0 * n**3 / median_seconds(f, x, x, reps=reps) / 1e12


def parse_variants(text: str) -> list[tuple[str, str]]:
    """``"bfloat16@fused,bfloat16:float32@matmul"`` -> [(compute dtype, attention), ...]."""
    from jadapt.layers.precision import COMPUTE_DTYPES
    from jadapt.models.config import ATTENTION_IMPLS

    out = []
    for item in (x for x in text.split(",") if x):
        dtype, _, attention = item.partition("@")
        if dtype not in COMPUTE_DTYPES or attention not in ATTENTION_IMPLS:
            raise SystemExit(f"--variants: {item!r} is not <compute dtype>@<attention> with a dtype in "
                             f"{COMPUTE_DTYPES} and an attention in {ATTENTION_IMPLS}")
        out.append((dtype, attention))
    return out


def run_row(model, batch, method, args, device):
    common = ["--model", model, "--method", method, "--batch", str(batch),
              "--seq", str(args.seq), "--bottleneck", "64", "--warmup", str(args.warmup), "--model-path", "random"]
    jenv = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # the peer shares the card
    penv = dict(os.environ)
    if args.peer_pythonpath:
        penv["PYTHONPATH"] = os.pathsep.join(x for x in (args.peer_pythonpath, penv.get("PYTHONPATH", "")) if x)
    # one jadapt worker per precision policy x attention kernel, all alive and interleaved
    specs = {f"jadapt {d}@{a}": ([sys.executable, str(HERE / "bench_step.py"), "--worker", "jadapt", *common,
                                 "--dtype", d, "--attention", a], jenv) for d, a in parse_variants(args.variants)}
    if not args.no_peers:
        specs["peer"] = ([args.peer_python, str(HERE / "peers" / "peer_step.py"), *common, "--dtype", "bfloat16",
                          "--device", device], penv)
    info, times, done = time_workers(specs, args.steps, args.steps, args.rounds)
    row = {"model": model, "batch": batch, "method": method}
    for k in specs:
        row[k] = {"train_ms": med_ms(times[k]["train"]), "eval_ms": med_ms(times[k]["eval"]), **info[k], **done[k]}
    return row


def markdown(res) -> str:
    rate = res.get("bf16_tflops")
    lines = [f"# GPU: jadapt vs PyTorch peers ({res['device']})", "",
             f"Command: `{res['command']}`  ", f"Host CPU: {res.get('host_cpu', '?')}  ",
             f"Date: {res['date']}; wall {res.get('wall_s', 0):.0f} s; "
             f"bf16 matmul rate measured in this call: {rate:.0f} TFLOP/s" if rate else "", "",
             "| model | batch x len | method | jadapt step ms | peer | peer step ms | **step ratio** | target "
             "| jadapt tokens/s | jadapt MFU | peer MFU | jadapt eval ms | peer eval ms | eval ratio "
             "| jadapt GPU peak MB | peer GPU peak MB |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} x {res['seq']} | {r['method']} | error: "
                         f"{r['error'][:120]} |" + " |" * 12)
            continue
        shp = Shape(batch=r["batch"], seq=res["seq"], **(MINILM if r["model"] == "minilm" else BERT_BASE))
        fl = step_flops(shp, r["method"])["train"]
        p = r.get("peer")
        mfu = lambda ms: f"{fl / (ms / 1e3) / (rate * 1e12):.1%}" if rate else "-"  # noqa: E731
        tgt = TARGETS.get((r["model"], r["batch"], r["method"]))
        for key in (k for k in r if k.startswith("jadapt")):
            j = r[key]
            label = f"{r['method']} ({key[len('jadapt '):]})"
            cells = [r["model"], f"{r['batch']} x {res['seq']}", label, f"{j['train_ms']:.2f}"]
            if p:
                cells += [PEER_NAMES[r["method"]] + " (bf16 autocast)", f"{p['train_ms']:.2f}",
                          f"**{j['train_ms'] / p['train_ms']:.2f}**", f"<= {tgt}" if tgt else "-"]
            else:
                cells += ["-", "-", "-", "-"]
            cells += [f"{r['batch'] * res['seq'] / (j['train_ms'] / 1e3):,.0f}", mfu(j["train_ms"]),
                      mfu(p["train_ms"]) if p else "-", f"{j['eval_ms']:.2f}", f"{p['eval_ms']:.2f}" if p else "-",
                      f"{j['eval_ms'] / p['eval_ms']:.2f}" if p else "-", f"{j.get('device_peak_mb', 0):,.0f}",
                      f"{p.get('device_peak_mb', 0):,.0f}" if p else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratios are jadapt / peer (below 1: jadapt faster). Both sides: random models of the "
              "named shape, bf16 compute (jadapt: bf16 matmul operands with fp32 accumulation, results in the "
              "dtype the row's policy names -- `bfloat16` on a GPU: bf16, `bfloat16:float32`: fp32 --, fp32 params / "
              "LayerNorm / softmax / AdamW; peers: torch.autocast bf16), dropout on, AdamW, grad clip 1.0; medians over "
              f"{res['rounds']} interleaved rounds x {res['steps']} steps after {res['warmup']} warm-up steps; "
              "each timed step waits for its loss (eval: for its predictions). MFU = formula FLOPs "
              "(benchmarks/flops.py) / time / the measured bf16 matmul rate."]
    if res.get("align"):
        lines += ["", "## Alignment on the GPU (bench_align.py)", "", res["align"]]
    if res.get("software"):
        lines += ["", "Software: " + json.dumps(res["software"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results" / "gpu"))
    p.add_argument("--peer-python", default=sys.executable)
    p.add_argument("--peer-pythonpath", default=None)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--variants", default="bfloat16:float32@matmul,bfloat16@matmul,bfloat16@fused",
                   help="jadapt workers timed side by side in every row: comma list of <compute dtype>@<attention> "
                        "(bfloat16 on a GPU: bf16 matmul results; bfloat16:float32: fp32 results, the CPU form)")
    p.add_argument("--no-align", action="store_true", help="skip the alignment benchmark")
    p.add_argument("--rows", default=None, help="comma list of model:batch:method (default: all, by priority)")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no new row after this many seconds")
    p.add_argument("--align-timeout-s", type=float, default=150.0)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any device (CPU check of this script)")
    args = p.parse_args()
    parse_variants(args.variants)  # refuse a bad list before any device time is spent
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the driver's own jax (matmul rate, alignment) must not grab 75 % of the card that the
    # workers share (the first H200 call lost every peer row to that: CUDA out of memory)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import jax

    device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
    rows = ROWS if not args.rows else [(m, int(b), meth) for m, b, meth in (x.split(":") for x in args.rows.split(","))]
    if args.smoke:
        args.seq, args.steps, args.rounds, args.warmup = 16, 1, 1, 1
        rows = [("minilm", 2, m) for m in ("pfeiffer", "lora")]
    res = {"device": f"{jax.devices()[0].device_kind} ({device})", "date": datetime.datetime.now().isoformat(
        timespec="seconds"), "command": "python " + " ".join(sys.argv), "seq": args.seq, "rounds": args.rounds,
        "steps": args.steps, "warmup": args.warmup, "rows": [], "host_cpu": machine_line(),
        "software": {"python": platform.python_version(), "jax": jax.__version__}}
    res["bf16_tflops"] = matmul_rate(512 if args.smoke else 8192)
    print(f"bf16 matmul: {res['bf16_tflops']:.1f} TFLOP/s on {res['device']}", flush=True)

    def save():
        res["wall_s"] = time.perf_counter() - t0
        (out / "gpu.json").write_text(json.dumps(res, indent=1))
        (out / "gpu.md").write_text(markdown(res))

    for model, batch, method in rows:
        if time.perf_counter() - t0 > args.budget_s:
            res["rows"].append({"model": model, "batch": batch, "method": method, "error": "skipped: time budget"})
            continue
        t = time.perf_counter()
        try:
            row = run_row(model, batch, method, args, device)
        except Exception as e:  # noqa: BLE001 -- one failed row must not lose the others
            row = {"model": model, "batch": batch, "method": method, "error": f"{type(e).__name__}: {e}"[-2000:]}
        row["row_wall_s"] = time.perf_counter() - t
        res["rows"].append(row)
        peer_ms = row["peer"]["train_ms"] if "peer" in row else None
        msg = row.get("error") or ", ".join(
            f"{k} {v['train_ms']:.2f} ms" + (f" ({v['train_ms'] / peer_ms:.2f}x peer)" if peer_ms else "")
            for k, v in row.items() if k.startswith("jadapt")) + (f", peer {peer_ms:.2f} ms" if peer_ms else "")
        print(f"[{time.perf_counter() - t0:5.0f}s] {model} {batch}x{args.seq} {method}: {msg}", flush=True)
        save()

    if args.no_align:
        print((out / "gpu.md").read_text(), flush=True)
        return
    sizes = ["8"] if args.smoke else ["64", "256"]
    cmd = [sys.executable, str(HERE / "bench_align.py"), "--sizes", *sizes, "--reps", "3", "--out", str(out / "align_gpu.md")]
    if args.smoke:
        cmd += ["--layers", "1", "--d", "16", "--k", "2"]
    try:
        subprocess.run(cmd, timeout=args.align_timeout_s, check=True)
        res["align"] = (out / "align_gpu.md").read_text()
    except (subprocess.SubprocessError, OSError) as e:
        res["align"] = f"alignment benchmark failed or timed out: {e}"
    save()
    print((out / "gpu.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
