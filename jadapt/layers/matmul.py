"""``x @ w`` under a precision policy (``jadapt.layers.precision``), with a backward pass that
stays on the bf16 kernels.

On XLA:CPU a bf16 x bf16 dot with a bf16 result silently runs in fp32 plus converts, while
``dot_general(bf16, bf16, preferred_element_type=f32)`` runs on the bf16 kernels. JAX's
automatic transpose of that dot has a bf16 result again, so the backward pass would fall back
to the slow form: ``bf16_matmul``'s custom VJP writes the two backward products the same way.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jadapt.layers.precision import operand_dtype, result_dtype


def _dot(x, w, dims, dtype):
    return lax.dot_general(x.astype(dtype), w.astype(dtype), dims, preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` over the last axis of x, bf16 operands, fp32 result. x: [..., k], w: [k, n]."""
    return _dot(x, w, (((x.ndim - 1,), (0,)), ((), ())), jnp.bfloat16)


def _bf16_matmul_fwd(x, w):
    return bf16_matmul(x, w), (x, w)


def _bf16_matmul_bwd(res, g):
    x, w = res
    dx = _dot(g, w, (((g.ndim - 1,), (1,)), ((), ())), jnp.bfloat16).astype(x.dtype)
    lead = tuple(range(x.ndim - 1))
    dw = _dot(x, g, ((lead, lead), ((), ())), jnp.bfloat16).astype(w.dtype)
    return dx, dw


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def matmul(x: jax.Array, w: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """Dense product ``x @ w`` (over x's last axis) under a precision policy; the result has
    ``result_dtype(compute_dtype)``."""
    if operand_dtype(compute_dtype) == jnp.float32:
        return jnp.matmul(x, w, precision=lax.Precision.HIGHEST)
    if result_dtype(compute_dtype) == jnp.float32:
        return bf16_matmul(x, w)
    # bf16 result: plain autodiff (its transposes have bf16 results too, as wanted here)
    return lax.dot_general(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (((x.ndim - 1,), (0,)), ((), ())),
                           preferred_element_type=jnp.bfloat16)


def rounded_residuals(dtype, *xs: jax.Array) -> tuple[tuple, tuple]:
    """Matmul operands ``xs`` rounded to ``dtype`` for a custom VJP's residuals (bf16: half
    the saved activation memory, no re-rounding later), and zero-size markers of their own
    dtypes, which the backward casts its cotangents back to."""
    return tuple(x.astype(dtype) for x in xs), tuple(jnp.zeros((0,), x.dtype) for x in xs)
