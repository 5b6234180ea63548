"""Two-operand einsum under a precision policy, planned as one canonical batched matmul on CPU.

XLA:CPU hands only one dot form to YNNPACK's kernels, ``[B, m, k] x [B, k, n]`` (or
``[B, n, k]``) with row-major operands. For any other dot it falls back to Eigen, which has no
bf16 x bf16 -> fp32 kernel (the step fails with UNIMPLEMENTED), and it upcasts bf16 dots whose
operand arrives as a bare transpose (``operand_upcaster``). The planner here groups each
operand's indices into (batch, free, contracted), picks the lhs / rhs roles that move the
fewest elements, and transposes explicitly; the custom VJP writes both backward products the
same way. In fp32 the same form is also faster for attention than ``jnp.einsum``, whose two
products XLA fuses with the softmax into one slow kernel (``benchmarks/RESULTS.md``, "What
changed in jadapt").

Off the CPU it is ``jnp.einsum`` with an fp32 result, so the GPU compiler keeps its own layouts
and fusions.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jadapt.layers import precision
from jadapt.layers.matmul import rounded_residuals


def _parse(spec: str) -> tuple[str, str, str]:
    ins, out = spec.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    for name, s in (("first", sa), ("second", sb), ("output", out)):
        if len(set(s)) != len(s):
            raise ValueError(f"einsum {spec!r}: repeated index in the {name} operand is not supported")
    for name, s, other in (("first", sa, sb), ("second", sb, sa)):
        lost = [c for c in s if c not in other and c not in out]
        if lost:
            raise ValueError(f"einsum {spec!r}: index {lost} of the {name} operand appears nowhere else")
    if any(c not in sa + sb for c in out):
        raise ValueError(f"einsum {spec!r}: output index missing from the operands")
    return sa, sb, out


def _moved(order: str, target: str, size: int) -> int:
    """Elements copied to bring an operand from index order ``order`` to ``target``."""
    return 0 if order == target else size


def _canonical_dot(spec: str, a: jax.Array, b: jax.Array, dtype=jnp.bfloat16) -> jax.Array:
    """``einsum(spec, a, b)`` as one batched matmul ``[B, m, k] x [B, k, n]`` (or ``[B, n, k]``).

    Operands are grouped into (batch, free, contracted) indices and transposed explicitly,
    choosing the lhs / rhs roles that move the fewest elements (module docstring); merging the
    batch indices into one axis forces a real row-major copy, and optimization barriers stop
    XLA from folding the transposes back into the dot or fusing softmax between the two
    attention products (one slow kernel). ``dtype`` bf16: operands rounded, fp32
    accumulation; fp32: exact.
    """
    sa, sb, out = _parse(spec)
    size = dict(zip(sa, a.shape)) | dict(zip(sb, b.shape))
    batch = "".join(c for c in out if c in sa and c in sb)
    contract = "".join(c for c in sa if c in sb and c not in out)
    free = {id(a): "".join(c for c in out if c in sa and c not in sb),
            id(b): "".join(c for c in out if c in sb and c not in sa)}
    prod = lambda idx: math.prod(size[c] for c in idx)  # noqa: E731
    plans = []
    for (lhs, sl), (rhs, sr) in (((a, sa), (b, sb)), ((b, sb), (a, sa))):
        fl, fr = free[id(lhs)], free[id(rhs)]
        for rhs_nt in (False, True):
            lo, ro = batch + fl + contract, batch + (fr + contract if rhs_nt else contract + fr)
            cost = _moved(sl, lo, lhs.size) + _moved(sr, ro, rhs.size) + _moved(batch + fl + fr, out, prod(out))
            plans.append((cost, len(plans), lhs, sl, lo, rhs, sr, ro, fl, fr, rhs_nt))
    _, _, lhs, sl, lo, rhs, sr, ro, fl, fr, rhs_nt = min(plans, key=lambda p: p[:2])
    m, n, k = prod(fl), prod(fr), prod(contract)
    nbatch = prod(batch)
    lead = (nbatch,) if batch else ()

    def arrange(x, s, order, groups):
        # Merging the batch indices into one axis after a transpose forces XLA to copy into
        # row-major order; a bare transpose stays a layout change, which makes XLA upcast
        # the dot to fp32 (``operand_upcaster``) before YNNPACK can take it.
        x = x.astype(dtype)
        if s != order:
            x = jnp.transpose(x, [s.index(c) for c in order])
        return x.reshape(lead + groups)

    x = arrange(lhs, sl, lo, (m, k))
    y = arrange(rhs, sr, ro, (n, k) if rhs_nt else (k, n))
    nb = len(lead)
    bd = tuple(range(nb))
    dims = (((nb + 1,), (nb + 1 if rhs_nt else nb,)), (bd, bd))
    if dtype == jnp.float32:
        z = lax.optimization_barrier(lax.dot_general(*lax.optimization_barrier((x, y)), dims,
                                                     precision=lax.Precision.HIGHEST))
    elif min(m, n) == 1 or max(m, n, k) < 8:
        # YNNPACK rejects vector and tiny dots; bf16 products are exact in fp32, so this
        # fp32 dot gives the same numbers the bf16 kernel would.
        z = lax.dot_general(x.astype(jnp.float32), y.astype(jnp.float32), dims,
                            precision=lax.Precision.HIGHEST)
    else:
        x, y = lax.optimization_barrier((x, y))
        z = lax.optimization_barrier(lax.dot_general(x, y, dims, preferred_element_type=jnp.float32))
    res = batch + fl + fr
    z = z.reshape(tuple(size[c] for c in res))
    return z if res == out else jnp.transpose(z, [res.index(c) for c in out])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _einsum(spec, dtype, a, b):
    return _canonical_dot(spec, a, b, dtype)


def _einsum_fwd(spec, dtype, a, b):
    (ra, rb), marks = rounded_residuals(dtype, a, b)
    return _canonical_dot(spec, a, b, dtype), (ra, rb, marks)


def _einsum_bwd(spec, dtype, res, g):
    a, b, (ta, tb) = res
    sa, sb, out = _parse(spec)
    da = _canonical_dot(f"{out},{sb}->{sa}", g, b, dtype).astype(ta.dtype)
    db = _canonical_dot(f"{out},{sa}->{sb}", g, a, dtype).astype(tb.dtype)
    return da, db


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


def einsum(spec: str, a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """Two-operand einsum in the requested precision (fp32 result). Every index of one
    operand must appear in the other or in the output (true for attention products).

    On CPU, forward and backward run as canonical batched matmuls (``_canonical_dot``), in
    both precisions: ``bfloat16`` rounds the operands and accumulates in fp32; ``float32`` is
    exact fp32. Elsewhere it is ``jnp.einsum`` with an fp32 result (module docstring).
    """
    dt = precision.operand_dtype(compute_dtype)
    if precision.on_cpu():
        return _einsum(spec, dt, a, b)
    return jnp.einsum(spec, a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32,
                      precision=lax.Precision.HIGHEST if dt == jnp.float32 else None)
