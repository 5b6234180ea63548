"""``Dense`` under a precision policy, and the ``compute_dtype`` field every module that runs
matmuls declares.

Why not ``nn.Dense``: with a bf16 dtype it computes a bf16 x bf16 -> bf16 dot, which XLA:CPU
runs in fp32 plus converts. ``Dense`` here keeps fp32 params and routes the product through
``jadapt.layers.matmul``, whose result dtype the policy picks per platform (fp32 on the CPU's
bf16 kernels, bf16 on accelerators).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from jadapt.layers.matmul import matmul
from jadapt.layers.precision import DEFAULT_COMPUTE_DTYPE, check_compute_dtype


class PrecisionModule(nn.Module):
    """A Flax module with a validated ``compute_dtype`` (``jadapt.layers.precision``).

    The field is keyword-only, so subclasses keep their own positional fields and a policy
    can never land in another field by position; it is checked once, on construction."""

    compute_dtype: str = dataclasses.field(default=DEFAULT_COMPUTE_DTYPE, kw_only=True)

    def __post_init__(self):
        check_compute_dtype(self.compute_dtype)
        super().__post_init__()


class Dense(PrecisionModule):
    """``y = x @ kernel + bias`` with fp32 params and a selectable compute precision."""

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.normal(0.02)
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        y = matmul(x, kernel, self.compute_dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(y.dtype)
        return y
