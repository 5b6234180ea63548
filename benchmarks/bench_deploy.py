"""What deploying K task adapters costs: one adapter vs a merged adapter vs AdapterFusion.

Merging (MerA) turns K adapters into one adapter of the same shape, so it serves at the cost
of a single adapter; AdapterFusion keeps all K adapters plus a fusion layer (Q, K, V
projections) at every site and runs K adapters + the K-way attention per token. This
measures both on the packaged MiniLM (6 x 384, Pfeiffer adapters, bottleneck 64, a 2-way
head): parameter counts and jitted inference latency (batch 32 x length 128 by default,
median over interleaved repetitions after warm-up; the machine is shared, so every variant
is timed in every round).

    python benchmarks/bench_deploy.py                     # K = 3 and 8, 10 rounds
    python benchmarks/bench_deploy.py --ks 2,4 --rounds 20 --dtype bfloat16

Writes benchmarks/results/deploy.md (and prints the same table).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jadapt import merge, tree
from jadapt.adapters.config import preset
from jadapt.fusion import fuse, fusion_params
from jadapt.machine import machine_line
from jadapt.models.model import HeadConfig
from jadapt.models.pretrained import adapter_params, load_pretrained, param_shapes

HERE = Path(__file__).resolve().parent


def restrict(model, params):
    """``params`` cut down to the leaves ``model`` has (drops unused adapters)."""
    want = param_shapes(model)
    flat = tree.flatten(params)
    return tree.unflatten({p: flat[p] for p in want})


def build(ks: list[int], bottleneck: int, dtype: str, seed: int):
    """{variant: (model, params)} for single, merged and fusion over each K."""
    kmax = max(ks + [3])
    names = tuple(f"task{i}" for i in range(kmax))
    cfg = preset("pfeiffer", bottleneck=bottleneck)
    full, params = load_pretrained(adapters=tuple((n, cfg) for n in names), active=names[:1],
                                   head=HeadConfig(num_labels=2), compute_dtype=dtype, seed=seed)
    # distinct adapters, as K separately trained ones would be
    flat = tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    params = tree.unflatten({p: x + 0.02 * jax.random.normal(k, x.shape) if "_adapter/" in p else x
                             for k, (p, x) in zip(keys, flat.items())})
    single = full.clone(adapters=((names[0], cfg),), active=(names[0],))
    variants = {"single adapter": (single, restrict(single, params))}
    merged = merge.average([adapter_params(params, n) for n in names[:3]])
    variants["merged adapter (3 -> 1)"] = (single, restrict(single, tree.merge(params, merged)))
    for k in ks:
        fm, fp = fuse(full.clone(adapters=tuple((n, cfg) for n in names[:k])), params, names[:k], "dynamic",
                      jax.random.key(seed + k))
        variants[f"AdapterFusion K={k}"] = (fm, restrict(fm, fp))
    return variants


def time_variants(variants, batch: int, seq: int, rounds: int, warmup: int, seed: int):
    ids = jax.random.randint(jax.random.key(seed), (batch, seq), 1000, 30000)
    mask = jnp.ones((batch, seq), jnp.int32)
    fns, flops = {}, {}
    for name, (model, params) in variants.items():
        f = jax.jit(model.apply)
        t = time.perf_counter()
        f({"params": params}, ids, mask).block_until_ready()
        print(f"  compiled {name} in {time.perf_counter() - t:.1f}s", flush=True)
        fns[name] = (f, params)
        flops[name] = (f.lower({"params": params}, ids, mask).cost_analysis() or {}).get("flops", float("nan"))
    for _ in range(warmup):
        for f, p in fns.values():
            f({"params": p}, ids, mask).block_until_ready()
    times = {n: [] for n in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]  # interleave, alternating order
        for n in order:
            f, p = fns[n]
            t = time.perf_counter()
            f({"params": p}, ids, mask).block_until_ready()
            times[n].append(time.perf_counter() - t)
    return times, flops


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="3,8", help="fusion sizes K, comma-separated")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bottleneck", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "deploy.md"))
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    command = "python benchmarks/bench_deploy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print("command:", command.strip(), flush=True)
    print("machine:", machine_line(), flush=True)

    variants = build(ks, args.bottleneck, args.dtype, args.seed)
    load0 = os.getloadavg()[0]
    times, flops = time_variants(variants, args.batch, args.seq, args.rounds, args.warmup, args.seed)
    load1 = os.getloadavg()[0]

    base_model, base_params = variants["single adapter"]
    backbone = tree.count(tree.select(base_params, r"^(embeddings|encoder)/(?!.*_adapter/)"))
    ref = statistics.median(times["single adapter"])
    rows = []
    for name, (model, params) in variants.items():
        total = tree.count(params)
        added = total - backbone
        fus = tree.count(fusion_params(params))
        med = statistics.median(times[name])
        q1, _, q3 = statistics.quantiles(times[name], n=4, method="inclusive") if len(times[name]) > 1 else (med, med, med)
        rows.append((name, total, added, fus, med, q1, q3, min(times[name]), flops[name]))
    ref_added, ref_min, ref_flops = rows[0][2], rows[0][7], rows[0][8]
    lines = [
        "# Deployment cost: single vs merged adapter vs AdapterFusion",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {machine_line()}",
        "",
        f"MiniLM-L6 (6 x 384) from `load_pretrained()`, Pfeiffer adapters (bottleneck {args.bottleneck}), "
        f"2-way head, dynamic fusion; inference `jax.jit(model.apply)`, batch {args.batch} x length "
        f"{args.seq}, compute {args.dtype}; median (IQR) over {args.rounds} interleaved rounds after "
        f"{args.warmup} warm-up rounds. Device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average {load0:.1f} -> "
        f"{load1:.1f}: the machine is shared). jax {jax.__version__}, {datetime.date.today()}.",
        "",
        "| variant | params total | params beyond backbone (adapters, fusion, head) | of which fusion | x single "
        "| GFLOP / batch (XLA) | x single | latency ms: median (IQR) | min | x single (median) | x single (min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, total, added, fus, med, q1, q3, fastest, fl in rows:
        lines.append(f"| {name} | {total:,} | {added:,} | {fus:,} | {added / ref_added:.2f} | {fl / 1e9:.1f} "
                     f"| {fl / ref_flops:.2f} | {med * 1e3:.0f} ({q1 * 1e3:.0f}-{q3 * 1e3:.0f}) | {fastest * 1e3:.0f} "
                     f"| {med / ref:.2f} | {fastest / ref_min:.2f} |")
    lines += ["", "GFLOP: XLA's cost analysis of the jitted forward (independent of machine load). "
              "A merged adapter has exactly the single adapter's shape, so it deploys at the same cost; "
              "its row is a separate measurement of the same computation (a check on timing noise)."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
