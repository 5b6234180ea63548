"""The two attention kernels (``matmul``, ``fused`` = jax.nn.dot_product_attention) agree."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params

CFG = EncoderConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=40)


def _models(cfg=CFG, compute_dtype="float32"):
    kw = dict(adapters=(("a", preset("houlsby", bottleneck=8)),), active=("a",), head=HeadConfig(num_labels=3),
              compute_dtype=compute_dtype)
    matmul, fused = AdapterModel(cfg, **kw), AdapterModel(cfg, attention="fused", **kw)
    return matmul, fused, init_params(matmul, jax.random.key(0))


def _batch():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 120, (3, 16)), jnp.int32)
    mask = jnp.asarray(np.arange(16)[None, :] < np.array([16, 9, 4])[:, None], jnp.int32)  # padded rows
    return ids, mask


def test_fused_matches_matmul_at_inference():
    matmul, fused, params = _models()
    ids, mask = _batch()
    a = matmul.apply({"params": params}, ids, mask, return_hidden=True)
    b = fused.apply({"params": params}, ids, mask, return_hidden=True)
    np.testing.assert_allclose(b[0], a[0], atol=1e-5, rtol=1e-5)
    for ha, hb in zip(a[1], b[1]):  # every layer, padded positions included
        np.testing.assert_allclose(hb, ha, atol=1e-5, rtol=1e-5)


def test_fused_gradients_match_without_attention_dropout():
    cfg = dataclasses.replace(CFG, attention_dropout=0.0)  # hidden dropout stays on, same rng
    matmul, fused, params = _models(cfg)
    ids, mask = _batch()

    def loss(model, p):
        logits = model.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])

    la, ga = jax.value_and_grad(lambda p: loss(matmul, p))(params)
    lb, gb = jax.value_and_grad(lambda p: loss(fused, p))(params)
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(gb), jax.tree_util.tree_leaves(ga)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-4)


def test_fused_bf16_runs_forward_and_backward():
    _, fused, params = _models(compute_dtype="bfloat16")
    matmul32, _, _ = _models()
    ids, mask = _batch()
    ref = matmul32.apply({"params": params}, ids, mask)
    out = fused.apply({"params": params}, ids, mask)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=3e-2)
    g = jax.grad(lambda p: jnp.sum(fused.apply({"params": p}, ids, mask, deterministic=False,
                                               rngs={"dropout": jax.random.key(0)})))(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention 'flash' is not supported"):
        AdapterModel(CFG, attention="flash")


def test_train_config_and_cli_refuse_unknown_attention():
    from jadapt.cli import build_parser
    from jadapt.train.config import TrainConfig

    with pytest.raises(ValueError, match="attention 'flash' is not supported"):
        TrainConfig(task="rte", attention="flash")
    args = build_parser().parse_args(["train", "--task", "rte", "--attention", "fused", "--out", "x"])
    assert args.attention == "fused"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--checkpoint", "c", "--attention", "flash", "--out", "x"])


def test_fused_attention_asks_cudnn_on_gpu_and_falls_back(monkeypatch):
    """On a GPU, bf16 inputs go to cuDNN (JAX's default is XLA's unfused form) with the mask
    as a [B, 1, T, S] bias; where cuDNN is missing or refuses (here: a CPU pretending to be a
    GPU, cuDNN raises), the XLA form runs and gives the same numbers."""
    from jadapt.layers.attention import fused_attention

    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 8, 2, 16)), jnp.bfloat16) for _ in range(3))
    keep = jnp.asarray(np.arange(8)[None, :] < np.array([8, 5])[:, None])[:, None, None, :]
    want = jax.nn.dot_product_attention(q, k, v, mask=keep, scale=1.0)
    calls = []
    real = jax.nn.dot_product_attention

    def spy(*a, **kw):
        calls.append((kw.get("implementation"), None if kw.get("bias") is None else kw["bias"].shape))
        return real(*a, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    got = fused_attention(q, k, v, keep)
    assert calls == [("cudnn", (2, 1, 8, 8)), (None, None)]  # cuDNN asked first, then the fallback
    assert (got == want).all()
    calls.clear()
    fused_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), keep)
    assert calls == [(None, None)]  # fp32: cuDNN's flash attention takes bf16 / fp16 only


# ------------------------------------------------------------- matmul attention's lean backward
def _plain_attention(q, k, v, bias, seeds, rate, compute_dtype="float32"):
    """The same function by plain autodiff (what ``matmul_attention`` replaced)."""
    from jadapt.layers.dropout import keep_mask
    from jadapt.layers.einsum import einsum

    p = jax.nn.softmax(einsum("bqhd,bkhd->bhqk", q, k, compute_dtype) + bias, axis=-1)
    if seeds is not None:
        p = jnp.where(keep_mask(seeds, p.shape, rate), p / (1.0 - rate), jnp.zeros_like(p))
    return einsum("bhqk,bkhd->bqhd", p, v, compute_dtype)


def _qkv_bias():
    from jadapt.models.encoder import attention_bias

    q, k, v = (jax.random.normal(jax.random.key(i), (3, 16, 4, 8)) for i in range(3))
    return q, k, v, attention_bias(_batch()[1])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_matmul_attention_vjp_matches_autodiff(rate):
    from jadapt.layers.attention import matmul_attention
    from jadapt.layers.dropout import dropout_seeds

    q, k, v, bias = _qkv_bias()
    seeds = dropout_seeds(jax.random.key(4)) if rate else None
    w = jax.random.normal(jax.random.key(9), (3, 16, 4, 8))
    new = lambda q, k, v: jnp.sum(w * matmul_attention(q, k, v, bias, seeds, rate))  # noqa: E731
    old = lambda q, k, v: jnp.sum(w * _plain_attention(q, k, v, bias, seeds, rate))  # noqa: E731
    assert float(new(q, k, v)) == float(old(q, k, v))  # the forward is the same arithmetic
    for a, b in zip(jax.grad(new, argnums=(0, 1, 2))(q, k, v), jax.grad(old, argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dropout_vjp_recomputes_the_mask():
    from jadapt.layers.dropout import dropout, dropout_seeds, keep_mask

    x = jax.random.normal(jax.random.key(0), (64, 48))
    seeds = dropout_seeds(jax.random.key(1))
    g = jax.grad(lambda x: jnp.sum(jnp.sin(dropout(x, seeds, 0.3))))(x)
    keep = keep_mask(seeds, x.shape, 0.3)
    ref = jax.grad(lambda x: jnp.sum(jnp.sin(jnp.where(keep, x / 0.7, 0.0))))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-5)
    # nothing of x's size is kept for the backward pass: only the two seeds
    res = jax.vjp(lambda x: dropout(x, seeds, 0.3), x)[1]
    assert max(leaf.size for leaf in jax.tree_util.tree_leaves(res)) <= 2


_TEMP_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp
from jadapt.adapters.config import preset
from jadapt.models import encoder
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params
from jadapt.train.optim import make_optimizer, split, trainable_labels, trainable_rules
from jadapt.train.step import init_state, make_train_step
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "plain":
    from test_attention import _plain_attention
    encoder.matmul_attention = _plain_attention
cfg = EncoderConfig(vocab_size=120, hidden_size=128, num_layers=3, num_heads=4, intermediate_size=512,
                    max_position_embeddings=128)
model = AdapterModel(cfg, adapters=(("a", preset("pfeiffer", bottleneck=8)),), active=("a",),
                     head=HeadConfig(num_labels=2))
params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
labels = trainable_labels(params, trainable_rules("pfeiffer", ["a"]))
trainable, frozen = split(params, labels)
tx = make_optimizer(split(labels, labels)[0], 1e-3)
state = jax.eval_shape(lambda t: init_state(t, tx, 0), trainable)
spec = jax.ShapeDtypeStruct
batch = {k: spec((8, 128), jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
batch.update(labels=spec((8,), jnp.int32), weight=spec((8,), jnp.float32))
step = jax.jit(make_train_step(model, tx, regression=False), donate_argnums=0)
print(step.lower(state, frozen, batch).compile().memory_analysis().temp_size_in_bytes)
"""


def _train_step_temp_bytes(form: str) -> int:
    """Temp buffer of a compiled train step in a process set up as the CLI sets it up (XLA:CPU's
    memory-minimising scheduler, ``jadapt.runtime``): the default concurrency scheduler keeps
    forward values alive regardless."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from jadapt import runtime

    env = dict(os.environ, XLA_FLAGS=runtime.xla_flags({}, accelerator=False), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _TEMP_SCRIPT, str(Path(__file__).parent), form], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_lean_attention_backward_shrinks_the_compiled_train_step():
    """The saving must survive XLA: its CSE once found the forward's dropped probabilities in
    the backward pass and kept them alive (one attention tensor more per layer than plain
    autodiff). Measured here: 1.8 attention tensors less over the two layers that backprop."""
    lean, plain = _train_step_temp_bytes("lean"), _train_step_temp_bytes("plain")
    probs = 8 * 4 * 128 * 128 * 4  # batch x heads x seq x seq (the script's model), fp32
    assert plain - lean >= probs, (plain, lean)
