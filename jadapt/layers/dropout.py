"""Dropout with counter-hash masks: cheap to draw, and recomputed in the backward pass
instead of stored.

``jax.random.bernoulli`` (threefry) is expensive per element on CPU, a visible share of a
train step; a murmur3-style hash of (element index, two seeds) fuses into its consumer, and
the backward pass can re-hash the mask from the two seeds rather than keep it alive.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _mix32(h: jax.Array) -> jax.Array:
    """murmur3 finaliser: a cheap, well-mixed 32-bit hash."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def dropout_seeds(key: jax.Array) -> jax.Array:
    """The two 32-bit seeds a dropout mask is hashed from (``hash_dropout_mask``)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def keep_mask(seeds: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Boolean keep-mask of ``shape`` from ``dropout_seeds``: a counter hash of (element
    index, seeds), so the backward pass can recompute it instead of storing it."""
    idx = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    h = _mix32(idx ^ seeds[0])
    h = _mix32(h + seeds[1])
    threshold = jnp.uint32(min(int(rate * 2**32), 2**32 - 1))
    return h >= threshold


def hash_dropout_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Boolean keep-mask from a counter hash of (element index, seed) (module docstring).

    Two keyed rounds keep masks of related seeds from being shifted copies of each other.
    Deterministic given ``key``.
    """
    return keep_mask(dropout_seeds(key), shape, rate)


def _apply_keep(x: jax.Array, seeds: jax.Array, rate: float) -> jax.Array:
    return jnp.where(keep_mask(seeds, x.shape, rate), x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dropout(x: jax.Array, seeds: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout with a ``keep_mask`` from ``seeds`` (``dropout_seeds(key)``).

    Custom VJP: autodiff keeps the boolean mask (and a zeros tensor) for the backward pass;
    this keeps only the two seeds and re-hashes the mask where the backward needs it. XLA
    fuses most of autodiff's copies away for hidden states, but not for the attention
    probabilities, which ``jadapt.layers.attention`` drops through this function.
    """
    return _apply_keep(x, seeds, rate)


def _dropout_fwd(x, seeds, rate):
    return _apply_keep(x, seeds, rate), seeds


def _dropout_bwd(rate, seeds, g):
    return _apply_keep(g, seeds, rate), None


dropout.defvjp(_dropout_fwd, _dropout_bwd)


class Dropout(nn.Module):
    """Inverted dropout with hash masks; needs the ``dropout`` RNG stream when training."""

    rate: float

    def seeds(self, deterministic: bool) -> jax.Array | None:
        """This site's mask seeds, or None when it drops nothing (for ops that apply the
        mask themselves, such as ``jadapt.layers.attention.matmul_attention``)."""
        if deterministic or self.rate == 0.0:
            return None
        return dropout_seeds(self.make_rng("dropout"))

    @nn.compact
    def __call__(self, x, deterministic: bool):
        seeds = self.seeds(deterministic)
        return x if seeds is None else dropout(x, seeds, self.rate)
