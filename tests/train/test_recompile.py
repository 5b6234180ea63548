"""The jitted train / eval steps compile once per bucket width, never again.

A recompile costs seconds (tens of seconds for a real encoder) and silently happens when a
batch or the train state changes shape, dtype or weak-type between steps. These tests run
whole epochs of bucketed batches through the steps users run and count compilations.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jadapt.adapters.config import preset
from jadapt.data.batching import epoch_batches, eval_batches
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params
from jadapt.train.optim import linear_schedule, make_optimizer, split, trainable_labels, trainable_rules
from jadapt.train.step import init_state, jit_steps, make_eval_step, make_train_step

CFG = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                    max_position_embeddings=64)


class CompileCounter:
    """Counts XLA compilations (jax.monitoring's backend-compile events) while active."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **kw):
        if self.active and event == self.EVENT:
            self.count += 1

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False


_COUNTER = CompileCounter()  # listeners cannot be removed; one for the module


def _data(n=40, max_len=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, max_len + 1, n)
    lengths[:5] = [3, 10, 31, 33, 64]  # both buckets (32, 64) certainly occur
    ids = np.zeros((n, max_len), np.int32)
    for i, L in enumerate(lengths):
        ids[i, :L] = rng.integers(5, CFG.vocab_size, L)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "labels": rng.integers(0, 2, n).astype(np.int32),
            "lengths": lengths.astype(np.int32)}


def _steps(method, compute_dtype):
    adapters = () if method == "full" else (("a", preset(method, bottleneck=8)),)
    model = AdapterModel(CFG, adapters=adapters, active=tuple(n for n, _ in adapters), head=HeadConfig(num_labels=2),
                         compute_dtype=compute_dtype)
    params = init_params(model, jax.random.key(0))
    labels = trainable_labels(params, trainable_rules(method, [n for n, _ in adapters]))
    trainable, frozen = split(params, labels)
    tl, _ = split(labels, labels)
    tx = make_optimizer(tl, linear_schedule(1e-3, 50, 5))
    train, evaluate = jit_steps(make_train_step(model, tx, regression=False), make_eval_step(model, regression=False))
    return train, evaluate, init_state(trainable, tx, seed=0), frozen


@pytest.mark.parametrize("method,compute_dtype", [("pfeiffer", "float32"), ("lora", "bfloat16")])
def test_train_step_compiles_once_per_bucket(method, compute_dtype):
    data = _data()
    train, _, state, frozen = _steps(method, compute_dtype)
    widths_seen, per_epoch = set(), []
    for epoch in range(2):
        with _COUNTER:
            before = _COUNTER.count
            for batch in epoch_batches(data, batch_size=8, seed=0, epoch=epoch, buckets=(32, 64)):
                widths_seen.add(batch["input_ids"].shape[1])
                state, metrics = train(state, frozen, batch)
            jax.block_until_ready(metrics["loss"])
            per_epoch.append(_COUNTER.count - before)
    assert widths_seen == {32, 64}
    # epoch 0 compiles each bucket once; epoch 1 (same shapes, donated state) compiles nothing
    assert per_epoch == [len(widths_seen), 0], per_epoch
    assert train._cache_size() == len(widths_seen)
    assert int(state["step"]) == 2 * -(-40 // 8)


def test_eval_step_compiles_once_per_bucket():
    data = _data(n=37, seed=1)
    train, evaluate, state, frozen = _steps("pfeiffer", "float32")
    with _COUNTER:
        before = _COUNTER.count
        widths = set()
        for _ in range(2):
            for batch in eval_batches(data, batch_size=8):
                widths.add(batch["input_ids"].shape[1])
                jax.block_until_ready(evaluate(state["trainable"], frozen, batch))
        assert _COUNTER.count - before == len(widths)


def test_counter_sees_a_recompile():
    """The counter itself must notice a shape change (else the tests above prove nothing)."""
    f = jax.jit(lambda x: x * 2)
    a, b = np.ones(3, np.float32), np.ones(4, np.float32)
    with _COUNTER:
        before = _COUNTER.count
        f(a)
        f(a)
        f(b)
        assert _COUNTER.count - before == 2


def test_encoder_layers_are_traced_once(monkeypatch):
    """The layer stack traces one layer and calls it n times (jitted layer): a 4-layer model's
    train-step trace runs the attention code once, not four times (tracing time, issue 10)."""
    from jadapt.models import encoder

    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    model = AdapterModel(cfg, adapters=(("a", preset("pfeiffer", bottleneck=8)),), active=("a",),
                         head=HeadConfig(num_labels=2))
    params = init_params(model, jax.random.key(0))
    calls = []
    original = encoder.SelfAttention.__call__
    monkeypatch.setattr(encoder.SelfAttention, "__call__",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    ids = jax.numpy.ones((2, 12), jax.numpy.int32)
    jax.jit(lambda p, i: model.apply({"params": p}, i, jax.numpy.ones_like(i), deterministic=False,
                                     rngs={"dropout": jax.random.key(1)})).trace(params, ids)
    assert len(calls) == 1
