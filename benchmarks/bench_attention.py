"""jadapt's attention kernels side by side: forward + backward time and the difference to the
matmul form, at one shape (BERT-base 256 x 128 by default).

``matmul``: two products + fp32 softmax (``--attention matmul``); ``fused``:
``jadapt.layers.attention.fused_attention`` (cuDNN flash attention on a GPU); ``xla``:
``jax.nn.dot_product_attention`` with JAX's default (unfused XLA) implementation. Exit status 1
when ``fused`` differs from ``matmul`` by more than bf16 rounding allows (the GPU run gates its
``--attention fused`` rows on that).

    python benchmarks/bench_attention.py --batch 256 --seq 128 --heads 12 --head-dim 64
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_matmul import median_seconds  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args()
    import jax
    import jax.numpy as jnp

    from jadapt.layers.attention import fused_attention
    from jadapt.layers.einsum import einsum

    b, s, n, h = args.batch, args.seq, args.heads, args.head_dim
    ks = jax.random.split(jax.random.key(0), 4)
    q, k, v, ct = (jax.random.normal(x, (b, s, n, h), jnp.float32).astype(jnp.bfloat16) for x in ks)
    q = q * h ** -0.5
    keep = (jnp.arange(s)[None, :] < jnp.linspace(s // 2, s, b).astype(jnp.int32)[:, None])[:, None, None, :]

    def matmul_form(q, k, v):
        scores = einsum("bqhd,bkhd->bhqk", q, k, "bfloat16") + jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)
        return einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v, "bfloat16").astype(q.dtype)

    forms = {"matmul": matmul_form, "fused": lambda q, k, v: fused_attention(q, k, v, keep),
             "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=keep, scale=1.0)}
    from jadapt.machine import machine_line

    res = {"device": jax.devices()[0].device_kind, "machine": machine_line(), "shape": [b, s, n, h]}
    outs = {}
    for name, f in forms.items():
        fwd_bwd = jax.jit(lambda q, k, v, f=f: jax.vjp(f, q, k, v)[1](ct))
        fwd = jax.jit(f)
        outs[name] = fwd(q, k, v).astype(jnp.float32)
        res[name] = {"fwd_ms": median_seconds(fwd, q, k, v, reps=args.reps) * 1e3,
                     "fwd_bwd_ms": median_seconds(fwd_bwd, q, k, v, reps=args.reps) * 1e3,
                     "uses_cudnn": "cudnn" in fwd.lower(q, k, v).as_text()}
    rows = keep[:, 0, 0, :, None, None]  # padded query rows differ by design between forms
    for name in ("fused", "xla"):
        res[name]["max_abs_diff_vs_matmul"] = float(jnp.abs(jnp.where(rows, outs[name] - outs["matmul"], 0)).max())
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    sys.exit(0 if res["fused"]["max_abs_diff_vs_matmul"] < 0.05 else 1)


if __name__ == "__main__":
    main()
