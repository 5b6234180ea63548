"""Activations by their Hugging Face names; GELU is the exact (erf) form, as torch / HF compute it."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SQRT_HALF = np.float32(np.sqrt(0.5))
_INV_SQRT_2PI = np.float32(1.0 / np.sqrt(2.0 * np.pi))


def _gelu_cdf(x):
    # torch's form, 0.5 (1 + erf(x / sqrt 2)): XLA expands ``erfc`` (jax.nn.gelu's form) into
    # exp, divides and selects, a visible share of a GPU train step; ``erf`` is one clamped
    # rational polynomial. fp32 inside (bf16 inputs too), as torch.
    return (0.5 + 0.5 * lax.erf(x.astype(jnp.float32) * _SQRT_HALF)).astype(x.dtype)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, ``x * Phi(x)``, as torch / HF compute it.

    Custom VJP: autodiff saves three FFN-sized intermediates (erf, exp, product) for the
    backward pass; this saves only the input and recomputes them. The backward recomputes
    behind an optimization barrier: without it XLA's CSE merges the recomputed erf with the
    forward's and keeps that alive instead, undoing the saving.
    """
    return x * _gelu_cdf(x)


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    x, g = lax.optimization_barrier((x, g))  # else XLA's CSE keeps the forward's erf alive instead
    cdf = _gelu_cdf(x)
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI.astype(x.dtype)
    return (g * (cdf + x * pdf),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """HF activation names -> functions (exact erf GELU for ``gelu``, as HF does)."""
    table = {
        "gelu": gelu,
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
        "linear": lambda x: x,
        "identity": lambda x: x,
        "sigmoid": jax.nn.sigmoid,
        "leakyrelu": jax.nn.leaky_relu,
    }
    if name.lower() not in table:
        raise ValueError(f"activation {name!r} is not supported; expected one of {sorted(table)}")
    return table[name.lower()]
