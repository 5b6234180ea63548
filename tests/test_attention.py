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
    from jadapt.models import encoder

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
    got = encoder.fused_attention(q, k, v, keep)
    assert calls == [("cudnn", (2, 1, 8, 8)), (None, None)]  # cuDNN asked first, then the fallback
    assert (got == want).all()
    calls.clear()
    encoder.fused_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), keep)
    assert calls == [(None, None)]  # fp32: cuDNN's flash attention takes bf16 / fp16 only
