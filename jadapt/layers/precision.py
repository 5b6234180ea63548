"""Matmul precision policies: which dtype a product's operands are rounded to, and which its
result has.

A policy is ``operands[:results]``. ``float32``: exact fp32 everywhere. ``bfloat16``: bf16
operands, fp32 accumulation, and a result dtype chosen for the platform jit lowers for -- fp32
on CPU (XLA:CPU's only fast bf16 kernel is bf16 x bf16 -> fp32) and bf16 on GPU / TPU (cuBLAS
and the MXU accumulate in fp32 anyway; a bf16 result halves the activation traffic and the
saved activations, the numerics of torch autocast). ``bfloat16:float32`` /
``bfloat16:bfloat16`` pin the result dtype. Params, the residual stream, LayerNorm, softmax and
optimizer state stay fp32 in every policy (autocast-like numerics).

fp32 stays the default: bf16 operands are not faster on every CPU (``benchmarks/RESULTS.md``,
"Why: distance to the FLOP floor, and why bf16 does not help here").

jax is imported inside the functions: the CLI reads ``COMPUTE_DTYPES`` for its flags before it
sets XLA's flags and re-executes itself (``jadapt.runtime``).
"""
from __future__ import annotations

COMPUTE_DTYPES = ("float32", "bfloat16", "bfloat16:float32", "bfloat16:bfloat16")
DEFAULT_COMPUTE_DTYPE = "float32"


def check_compute_dtype(compute_dtype: str) -> str:
    """``compute_dtype`` if it names a policy, else ValueError naming the allowed ones."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {compute_dtype!r} is not supported; expected one of {COMPUTE_DTYPES}")
    return compute_dtype


def on_cpu() -> bool:
    """Whether jit lowers for XLA:CPU here (the default backend): picks the CPU matmul forms.

    The CPU-only forms (canonical transposes, optimization barriers) are used only there: on
    GPUs they block XLA's own layout choices and fusions."""
    import jax

    return jax.default_backend() == "cpu"


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def operand_dtype(compute_dtype: str):
    """The dtype matmul operands are rounded to."""
    return _dtype(check_compute_dtype(compute_dtype).split(":")[0])


def result_dtype(compute_dtype: str):
    """The dtype of a Dense result: fp32 for ``float32``; for ``bfloat16``, fp32 on CPU and
    bf16 on accelerators (module docstring); the explicit ``bfloat16:<dtype>`` as named."""
    check_compute_dtype(compute_dtype)
    if ":" in compute_dtype:
        return _dtype(compute_dtype.split(":")[1])
    if compute_dtype == "float32" or on_cpu():
        return _dtype("float32")
    return _dtype("bfloat16")
