"""Measured matmul rate of this machine under XLA:CPU: the FLOP floor for bench_step.

bf16 operands with an fp32 result (what jadapt's bfloat16 path runs) and fp32, on the
shapes of a MiniLM / BERT-base step at 32 x 128 tokens.

    python benchmarks/bench_matmul.py            # prints a table and one JSON line
"""
from __future__ import annotations

import json
import statistics
import time

SHAPES = {  # name: (batch, m, k, n)
    "ffn-up 4096x384x1536": (1, 4096, 384, 1536),
    "ffn-down 4096x1536x384": (1, 4096, 1536, 384),
    "proj 4096x384x384": (1, 4096, 384, 384),
    "bert ffn-up 4096x768x3072": (1, 4096, 768, 3072),
    "attn scores 384x(128x32x128)": (384, 128, 32, 128),
}


def median_seconds(f, *args, reps: int = 10) -> float:
    """Median wall time of ``f(*args)`` over ``reps`` calls after one untimed (compiling) call."""
    import jax

    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matmul_rates(reps: int = 10) -> dict[str, dict[str, float]]:
    """{shape: {"bfloat16": GFLOP/s, "float32": GFLOP/s}} (medians over ``reps`` calls)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    out = {}
    for name, (b, m, k, n) in SHAPES.items():
        row = {}
        for dt in ("bfloat16", "float32"):
            x = jnp.ones((b, m, k), dt)
            y = jnp.ones((b, k, n), dt)
            dims = (((2,), (1,)), ((0,), (0,)))
            f = jax.jit(lambda x, y: lax.dot_general(x, y, dims, preferred_element_type=jnp.float32))
            row[dt] = 2.0 * b * m * k * n / median_seconds(f, x, y, reps=reps) / 1e9
        out[name] = row
    return out


def main() -> None:
    from jadapt.machine import machine_line

    print(f"machine: {machine_line()}")
    rates = matmul_rates()
    for name, r in rates.items():
        print(f"{name:32s} bf16 {r['bfloat16']:7.1f} GFLOP/s   fp32 {r['float32']:7.1f} GFLOP/s")
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
