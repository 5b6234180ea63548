"""Where the time of one jadapt train step goes, kernel by kernel (any device; made for a GPU).

Builds the step ``bench_step.py`` times (the code ``jadapt train`` runs), warms it up, traces
``--steps`` steps with ``jax.profiler`` and sums the device's XLA ops by name and by kind
(matmul, attention, fusion, copy / transpose, reduction, ...), read back with
``jax.profiler.ProfileData`` (no TensorBoard needed). The train step's optimized HLO is saved
beside the table so each fusion can be read.

    python benchmarks/profile_step.py --model bert-base --batch 256 --method pfeiffer \\
        --dtype bfloat16 --attention fused --out $OUT
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_step import build_jadapt_steps  # noqa: E402
from flops import BERT_BASE, MINILM, Shape, step_flops  # noqa: E402

KINDS = [("matmul", r"gemm|cublas|nvjet|dot|matmul|cutlass"), ("attention", r"cudnn|fmha|flash|attention"),
         ("copy / transpose", r"copy|transpose"), ("reduce", r"reduce"), ("fusion", r"fusion|loop|input"),
         ("other", r".")]


def kind(name: str, hlo_kinds: dict[str, str]) -> str:
    """An op's kind, from the optimized HLO where it names the op, else from its name."""
    if name in hlo_kinds:
        return hlo_kinds[name]
    return next(k for k, pat in KINDS if re.search(pat, name, re.I))


def hlo_op_kinds(hlo: str) -> dict[str, str]:
    """op name -> kind for the ENTRY computation's instructions (the launched kernels) of an
    optimized HLO module; a fusion is classed by what it calls (a gemm fusion is a matmul)."""
    entry = re.search(r"^ENTRY [^\n]*\n(.*?)^}", hlo, re.M | re.S)
    with_dot = {m.group(1) for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)^}", hlo, re.M | re.S)
                if re.search(r" (dot|convolution)\(", m.group(2))}
    out = {}
    for line in (entry.group(1).splitlines() if entry else []):
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$", line)
        if not m:
            continue
        name, op, rest = m.groups()
        if op in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            continue
        attrs = " ".join(" ".join(g) for g in re.findall(r'custom_call_target="([^"]+)"|kind=(k\w+)', rest))
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        if op == "fusion" and calls and calls.group(1) in with_dot:
            out[name] = "matmul"
            continue
        out[name] = next(k for k, pat in KINDS if re.search(pat, f"{op} {attrs}", re.I))
    return out


def summarize(xplane: str, hlo_kinds: dict[str, str], steps: int) -> dict:
    from jax.profiler import ProfileData

    data = ProfileData.from_file(xplane)
    by_name, count = collections.Counter(), collections.Counter()
    lines_seen = []
    for plane in data.planes:
        if not plane.name.startswith("/device:"):
            continue
        lines = list(plane.lines)
        lines_seen += [f"{plane.name}: {ln.name}" for ln in lines]
        ops = [ln for ln in lines if ln.name == "XLA Ops"] or [ln for ln in lines if "Module" not in ln.name]
        for ln in ops:
            for ev in ln.events:
                by_name[ev.name] += ev.duration_ns / 1e6 / steps
                count[ev.name] += 1
    by_kind = collections.Counter()
    for name, ms in by_name.items():
        by_kind[kind(name, hlo_kinds)] += ms
    return {"device_ms_per_step": sum(by_name.values()), "by_kind_ms": dict(by_kind.most_common()),
            "top_ops_ms": [(n, round(ms, 4), count[n] // steps, kind(n, hlo_kinds))
                           for n, ms in by_name.most_common(60)], "lines": lines_seen}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bert-base", choices=("minilm", "bert-base"))
    p.add_argument("--method", default="pfeiffer")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attention", default="fused")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model-path", default="random")
    p.add_argument("--out", default=str(HERE / "results" / "profile"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.model}_{args.batch}_{args.method}_{args.dtype.replace(':', '-')}_{args.attention}"
    dump = tempfile.mkdtemp()
    # the optimized HLO of the step, from its one compilation (no second compile to read it)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump} --xla_dump_hlo_as_text"
                               " --xla_dump_hlo_module_re=.*step.*").strip()
    import jax

    t0 = time.perf_counter()
    train_step, _, _ = build_jadapt_steps(args)
    for _ in range(args.warmup):
        train_step()
    ready = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    wall_ms = (time.perf_counter() - t) / args.steps * 1e3
    trace = tempfile.mkdtemp()
    with jax.profiler.trace(trace):
        for _ in range(args.steps):
            train_step()
    hlo_files = sorted(glob.glob(f"{dump}/*train*after_optimizations.txt") or
                       glob.glob(f"{dump}/*after_optimizations.txt"), key=os.path.getsize)
    hlo = Path(hlo_files[-1]).read_text() if hlo_files else ""
    (out / f"hlo_{tag}.txt").write_text(hlo)
    xplanes = glob.glob(f"{trace}/**/*.xplane.pb", recursive=True)
    res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "args": vars(args),
           "compile_and_warmup_s": ready, "wall_ms_per_step": wall_ms, **summarize(xplanes[0], hlo_op_kinds(hlo),
                                                                               args.steps)}
    shape = Shape(batch=args.batch, seq=args.seq, **(MINILM if args.model == "minilm" else BERT_BASE))
    res["train_gflop"] = step_flops(shape, args.method)["train"] / 1e9
    (out / f"profile_{tag}.json").write_text(json.dumps(res, indent=1))
    print(f"{tag}: wall {wall_ms:.2f} ms/step, device ops {res['device_ms_per_step']:.2f} ms/step, "
          f"{res['train_gflop']:.0f} GFLOP/step; compile + warm-up {ready:.0f} s")
    for k, ms in res["by_kind_ms"].items():
        print(f"  {k:18s} {ms:8.2f} ms")
    for n, ms, c, k in res["top_ops_ms"][:25]:
        print(f"  {ms:8.3f} ms  x{c:<3d} {k:16s} {n}")


if __name__ == "__main__":
    main()
