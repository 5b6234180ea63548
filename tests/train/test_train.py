"""Only adapters train: labels, optimizer state, frozen leaves bitwise identical; full FT."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jadapt import tree
from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import init_params
from jadapt.train.optim import (linear_schedule, make_optimizer, split, trainable_labels,
                                trainable_rules)
from jadapt.train.step import init_state, make_eval_step, make_train_step

CFG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                    max_position_embeddings=32)


def _setup(method, **kw):
    adapters = () if method in ("full", "head") else (("t", preset(method, **kw)),)
    model = AdapterModel(CFG, adapters=adapters, active=tuple(n for n, _ in adapters), head=HeadConfig(2))
    params = init_params(model, jax.random.key(0))
    ln = any(c.train_layer_norms for _, c in adapters)
    labels = trainable_labels(params, trainable_rules(method, ["t"] if adapters else [], train_layer_norms=ln))
    return model, params, labels


def _batch(seed=0, b=8, s=6):
    rng = np.random.default_rng(seed)
    return {"input_ids": jnp.asarray(rng.integers(1, 50, (b, s)), jnp.int32),
            "attention_mask": jnp.ones((b, s), jnp.int32),
            "labels": jnp.asarray(rng.integers(0, 2, b), jnp.int32),
            "weight": jnp.ones((b,), jnp.float32)}


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "parallel", "lora"])
def test_labels_select_adapter_head_and_layernorms(method):
    _, params, labels = _setup(method, **({} if method == "lora" else {"bottleneck": 4}))
    flat = tree.flatten(labels)
    trains = {p for p, lab in flat.items() if lab != "frozen"}
    for p in trains:
        assert p.startswith("head/") or "/t/" in p or (method == "houlsby" and "layer_norm" in p), p
    assert any("/t/" in p for p in trains) and any(p.startswith("head/") for p in trains)
    assert flat["encoder/layer_0/attention/query/kernel"] == "frozen"
    assert flat["embeddings/word_embeddings/embedding"] == "frozen"
    ln = flat["encoder/layer_1/output_layer_norm/scale"]
    assert ln == ("no_decay" if method == "houlsby" else "frozen")


def test_rules_must_cover_every_leaf():
    with pytest.raises(ValueError, match="match no rule"):
        trainable_labels({"a": {"b": jnp.zeros(2)}}, [(r"^head/", True)])
    with pytest.raises(ValueError, match="method 'bitfit'"):
        trainable_rules("bitfit")


def test_optimizer_state_holds_only_trainable_leaves():
    _, params, labels = _setup("pfeiffer", bottleneck=4)
    tx = make_optimizer(labels, 1e-3)
    state_leaves = jax.tree_util.tree_leaves(tx.init(params))
    n_trainable = tree.count(split(params, labels)[0])
    # Adam: mu and nu per trainable leaf (+ scalar counts); frozen leaves: nothing.
    assert sum(x.size for x in state_leaves if x.ndim > 0) == 2 * n_trainable
    assert n_trainable < tree.count(params) / 3


def test_frozen_leaves_bitwise_identical_after_training():
    model, params, labels = _setup("houlsby", bottleneck=4)
    trainable, frozen = split(params, labels)
    tlabels, _ = split(labels, labels)
    tx = make_optimizer(tlabels, linear_schedule(1e-2, 10, 2))
    step = jax.jit(make_train_step(model, tx, regression=False), donate_argnums=(0,))
    frozen_before = jax.tree_util.tree_map(np.array, frozen)
    trainable_before = jax.tree_util.tree_map(np.array, trainable)
    state = init_state(trainable, tx, seed=0)
    losses = []
    for i in range(10):
        state, m = step(state, frozen, _batch(i % 2))
        losses.append(float(m["loss"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, frozen_before, jax.tree_util.tree_map(np.array, frozen))
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state["trainable"],
                                   trainable_before)
    assert min(jax.tree_util.tree_leaves(moved)) > 0  # every trainable leaf moved
    assert losses[-1] < losses[0]
    # the full tree's optimizer, applied to full params, leaves frozen leaves bitwise unchanged too
    _, params, labels = _setup("houlsby", bottleneck=4)  # the step donated the first copy
    full_tx = make_optimizer(labels, 1e-2)
    grads = jax.grad(lambda p: make_eval_step(model, regression=False)({}, p, _batch())[0])(params)
    upd, _ = full_tx.update(grads, full_tx.init(params), params)
    new = optax.apply_updates(params, upd)
    for p, lab in tree.flatten(labels).items():
        if lab == "frozen":
            np.testing.assert_array_equal(tree.flatten(new)[p], tree.flatten(params)[p])


def test_full_finetuning_trains_everything():
    _, params, labels = _setup("full")
    assert all(lab != "frozen" for lab in tree.flatten(labels).values())
    trainable, frozen = split(params, labels)
    assert frozen == {} and tree.count(trainable) == tree.count(params)


def test_dropout_key_depends_on_step_not_call_order():
    model, params, labels = _setup("pfeiffer", bottleneck=4)
    trainable, frozen = split(params, labels)
    tx = make_optimizer(split(labels, labels)[0], 1e-3)
    step = jax.jit(make_train_step(model, tx, regression=False))
    s = init_state(trainable, tx, seed=3)
    a, _ = step(s, frozen, _batch())
    b, _ = step(s, frozen, _batch())
    jax.tree_util.tree_map(np.testing.assert_array_equal, a["trainable"], b["trainable"])


def test_state_schedule_matches_optax_adamw_with_linear_schedule():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    labels = {"w": "decay", "b": "decay"}
    ours = make_optimizer(labels, 1e-2, total_steps=7, warmup_steps=2, weight_decay=0.1, max_grad_norm=None)
    ref = optax.adamw(linear_schedule(1e-2, 7, 2), weight_decay=0.1)
    so, sr, po, pr = ours.init(params), ref.init(params), params, params
    for i in range(7):
        g = jax.tree_util.tree_map(lambda x: jnp.sin(x + i), params)
        uo, so = ours.update(g, so, po)
        ur, sr = ref.update(g, sr, pr)
        po, pr = optax.apply_updates(po, uo), optax.apply_updates(pr, ur)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), po, pr)


def test_runner_reuses_one_compiled_step_across_runs():
    from jadapt.train.runner import Runner

    model, params, labels = _setup("pfeiffer", bottleneck=4)
    rng = np.random.default_rng(0)
    n = 40
    ids = rng.integers(1, 50, (n, 8)).astype(np.int32)
    train = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "lengths": np.full(n, 8, np.int32),
             "labels": (ids[:, 1] > 25).astype(np.int32)}
    runner = Runner(model, params, labels, regression=False, batch_size=8, eval_batch_size=8)
    a = runner.run("sst2", train, train, seed=0, epochs=2, lr=1e-2)
    b = runner.run("sst2", train, train, seed=1, epochs=3, lr=3e-3, eval_each_epoch=True)
    assert runner.train_step._cache_size() == 1  # other lr / length / seed: same executable
    assert len(b["history"]) == 3 and a["steps"] == 10
    again = runner.run("sst2", train, train, seed=0, epochs=2, lr=1e-2)
    assert again["final"] == a["final"]  # deterministic given the seed
