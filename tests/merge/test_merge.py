"""Linear merges, TIES, DARE, name handling, the method dispatcher and ``jadapt merge``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jadapt import merge, tree
from jadapt.merge import checkpoints, command


def _bottleneck(seed, name="a", d=12, m=6, layers=2, lora=False):
    """A random adapter tree with the real path layout (bottleneck sites, or LoRA banks)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
    out = {}
    for layer in range(layers):
        if lora:
            out[f"encoder/layer_{layer}/attention/lora_query/{name}/lora_a"] = normal(d, m)
            out[f"encoder/layer_{layer}/attention/lora_query/{name}/lora_b"] = normal(m, d)
            continue
        site = f"encoder/layer_{layer}/ffn_adapter/{name}"
        out[f"{site}/down/kernel"] = normal(d, m)
        out[f"{site}/down/bias"] = normal(m)
        out[f"{site}/up/kernel"] = normal(m, d)
        out[f"{site}/up/bias"] = normal(d)
    return tree.unflatten(out)


def _stack(trees):
    return np.stack([np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)]) for t in trees])


# ------------------------------------------------------------------ names and checks
def test_rename_and_unify_names():
    a, b = _bottleneck(0, "sst2"), _bottleneck(1, "mr", lora=True)
    assert merge.adapter_names(a) == ("sst2",) and merge.adapter_names(b) == ("mr",)
    r = merge.rename_adapter(a, "sst2", "x")
    assert merge.adapter_names(r) == ("x",)
    chex.assert_trees_all_equal(jax.tree_util.tree_leaves(r), jax.tree_util.tree_leaves(a))
    u = merge.unify_names([a, merge.rename_adapter(_bottleneck(2), "a", "mr")])
    assert [merge.adapter_names(t) for t in u] == [("sst2",), ("sst2",)]
    assert merge.unit_sites(b) == {f"encoder/layer_{i}/attention/lora_query/mr": "lora" for i in range(2)}
    with pytest.raises(KeyError, match="no adapter 'zz'"):
        merge.rename_adapter(a, "zz", "y")
    with pytest.raises(ValueError, match="holds 2 adapters"):
        merge.unify_names([tree.merge(a, _bottleneck(3, "other"))])


def test_mismatch_errors_name_path_and_shapes():
    a = _bottleneck(0)
    wide = _bottleneck(1, d=16)
    with pytest.raises(ValueError, match=r"adapter #1 does not match adapter #0 at encoder/layer_0/ffn_adapter/a/"
                                         r"down/kernel: shape \(16, 6\) vs \(12, 6\)"):
        merge.average([a, wide])
    fewer = _bottleneck(1, layers=1)
    with pytest.raises(ValueError, match=r"2 path\(s\) missing|4 path\(s\) missing"):
        merge.ties([a, fewer])
    with pytest.raises(ValueError, match="dtype"):
        merge.average([a, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), a)])
    with pytest.raises(ValueError, match="one entry per adapter"):
        merge.average([a, a], weights=[1.0, 2.0, 3.0])


# ------------------------------------------------------------------ linear merges
def test_average_sum_and_task_arithmetic_match_numpy():
    adapters = [_bottleneck(k, name=f"n{k}") for k in range(3)]
    w = np.array([0.5, 1.0, 2.5], np.float32)
    x = _stack(adapters)
    np.testing.assert_allclose(_stack([merge.average(adapters)]), x.mean(0, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(_stack([merge.average(adapters, w)]), (w @ x / w.sum())[None], atol=1e-5)
    np.testing.assert_allclose(_stack([merge.weighted_sum(adapters)]), x.sum(0, keepdims=True), atol=1e-5)
    base = _bottleneck(9, name="b")
    xb = _stack([base])[0]
    ta = merge.task_arithmetic(adapters, base, weights=w, scale=0.3)
    np.testing.assert_allclose(_stack([ta])[0], xb + 0.3 * (w @ (x - xb)), atol=1e-5)
    assert merge.adapter_names(ta) == ("n0",)  # the first adapter's name


def test_linear_merges_are_jit_and_weights_can_be_traced():
    adapters = [_bottleneck(k) for k in range(3)]
    f = jax.jit(lambda ads, w: merge.average(ads, w))
    out = f(adapters, jnp.array([1.0, 0.0, 0.0]))
    chex.assert_trees_all_close(out, adapters[0], atol=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_merging_identical_adapters_returns_it(lora):
    a = _bottleneck(0, lora=lora)
    base = _bottleneck(5, lora=lora)
    k = 3
    same = [a] * k
    key = jax.random.key(1)

    @jax.jit
    def all_cases(a, base):
        same = [a] * k
        return {
            "average": merge.average(same),
            "average-weighted": merge.average(same, [0.2, 0.3, 0.5]),
            "sum-normalised": merge.weighted_sum(same, [0.2, 0.3, 0.5]),
            "task-arithmetic": merge.task_arithmetic(same, scale=1 / k),
            "task-arithmetic-base": merge.task_arithmetic(same, base, weights=[1 / k] * k),
            "ties-density-1": merge.ties(same, density=1.0),
            "ties-density-1-base": merge.ties(same, base, density=1.0),
            "dare-density-1": merge.dare(same, key, density=1.0, weights=[1 / k] * k),
            "dare-ties-density-1": merge.dare(same, key, base, density=1.0, combine="ties"),
            "align-weights": merge.merge_aligned(same),
            "ot-exact": merge.ot_merge(same, exact=True),
        }

    for name, out in all_cases(a, base).items():
        chex.assert_trees_all_close(out, a, atol=1e-5, custom_message=name)
    # and the sum of K copies is K times the adapter (it is not an identity method)
    chex.assert_trees_all_close(merge.weighted_sum(same), jax.tree_util.tree_map(lambda x: k * x, a), atol=1e-5)


# ------------------------------------------------------------------ TIES
def _ties_reference(x, density, method="total"):
    """Per-task global trim, sign election and disjoint mean, written plainly in numpy."""
    x = np.array(x, np.float64)
    k, n = x.shape
    keep = int(round(density * n))
    trimmed = np.zeros_like(x)
    for t in range(k):
        idx = np.argsort(-np.abs(x[t]), kind="stable")[:keep]
        trimmed[t, idx] = x[t, idx]
    score = trimmed.sum(0) if method == "total" else np.sign(trimmed).sum(0)
    sign = np.where(score >= 0, 1.0, -1.0)
    out = np.zeros(n)
    for j in range(n):
        agree = [trimmed[t, j] for t in range(k) if np.sign(trimmed[t, j]) == sign[j]]
        out[j] = np.mean(agree) if agree else 0.0
    return out


def test_ties_sign_election_by_hand():
    taus = [{"w": jnp.array([3.0, -1.0, 2.0, 0.0, -4.0])},
            {"w": jnp.array([-1.0, -2.0, 2.0, 5.0, 1.0])},
            {"w": jnp.array([-1.0, 4.0, -1.0, 0.0, 1.0])}]
    # total: sums [1, 1, 3, 5, -2] -> signs [+, +, +, +, -]; disjoint means of the agreeing entries
    np.testing.assert_allclose(merge.ties(taus, density=1.0)["w"], [3.0, 4.0, 2.0, 5.0, -4.0])
    # frequency: sign counts [-1, -1, 1, 1, 1] -> [-, -, +, +, +]
    np.testing.assert_allclose(merge.ties(taus, density=1.0, sign_method="frequency")["w"],
                               [-1.0, -1.5, 2.0, 5.0, 1.0])
    np.testing.assert_array_equal(merge.elect_sign(jnp.stack([t["w"] for t in taus])), [1, 1, 1, 1, -1])


@pytest.mark.parametrize("method", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.2, 0.5])
def test_ties_matches_numpy_reference(method, density):
    adapters = [_bottleneck(k) for k in range(4)]
    got = jax.jit(lambda a: merge.ties(a, density=density, sign_method=method))(adapters)
    np.testing.assert_allclose(_stack([got])[0], _ties_reference(_stack(adapters), density, method), atol=1e-5)


def test_ties_trim_scopes():
    t = {"a": jnp.array([10.0, 9.0, 8.0, 7.0]), "b": jnp.array([1.0, -2.0, 3.0, -4.0])}
    glob = merge.trim(t, 0.5, scope="global")
    np.testing.assert_array_equal(glob["a"], t["a"])
    np.testing.assert_array_equal(glob["b"], 0)
    leaf = merge.trim(t, 0.5, scope="leaf")
    np.testing.assert_array_equal(leaf["a"], [10, 9, 0, 0])
    np.testing.assert_array_equal(leaf["b"], [0, 0, 3, -4])
    with pytest.raises(ValueError, match="density"):
        merge.trim(t, 1.5)


# ------------------------------------------------------------------ DARE
def test_dare_is_seeded_and_keeps_the_expected_fraction():
    a, b = _bottleneck(0, m=64), _bottleneck(1, m=64)
    f = jax.jit(lambda ads, key: merge.dare(ads, key, density=0.3))
    one = f([a, b], jax.random.key(3))
    chex.assert_trees_all_equal(one, f([a, b], jax.random.key(3)))
    assert not np.array_equal(_stack([one]), _stack([f([a, b], jax.random.key(4))]))
    dropped = merge.drop_and_rescale(a, jax.random.key(5), density=0.3)
    x, y = _stack([a])[0], _stack([dropped])[0]
    kept = y != 0
    assert abs(kept.mean() - 0.3) < 0.03
    np.testing.assert_allclose(y[kept], x[kept] / 0.3, rtol=1e-6)


def test_dare_is_unbiased():
    a = _bottleneck(0, d=8, m=4)
    x = _stack([a])[0]
    n, p = 4000, 0.25
    keys = jax.random.split(jax.random.key(1), n)
    draws = jax.jit(jax.vmap(lambda k: merge.drop_and_rescale(a, k, density=p)))(keys)
    mean = _stack([jax.tree_util.tree_map(lambda d: d.mean(0), draws)])[0]
    stderr = np.abs(x) * np.sqrt((1 - p) / p / n)
    z = np.abs(mean - x) / stderr
    assert z.max() < 5.0, z.max()
    # without rescaling it is biased by the factor p: the check above can fail
    biased = jax.jit(jax.vmap(lambda k: merge.drop_and_rescale(a, k, density=p, rescale=False)))(keys)
    zb = np.abs(_stack([jax.tree_util.tree_map(lambda d: d.mean(0), biased)])[0] - x) / stderr
    assert zb.max() > 5.0


def test_dare_ties_combine_and_errors():
    adapters = [_bottleneck(k) for k in range(3)]
    key = jax.random.key(0)
    out = merge.dare(adapters, key, density=0.5, combine="ties")
    dropped = [merge.drop_and_rescale(t, jax.random.fold_in(key, k), 0.5) for k, t in enumerate(adapters)]
    np.testing.assert_allclose(_stack([out])[0], _ties_reference(_stack(dropped), 1.0), atol=1e-5)
    with pytest.raises(ValueError, match="combine 'mean'"):
        merge.dare(adapters, key, combine="mean")
    with pytest.raises(ValueError, match="keep probability"):
        merge.dare(adapters, key, density=0.0)


# ------------------------------------------------------------------ dispatcher, jit, sharding
@pytest.mark.parametrize("method", merge.METHODS)
def test_every_method_jits_and_matches_eager(method):
    if method == "align-activations":
        pytest.skip("needs a model; covered in test_alignment")
    adapters = [_bottleneck(k) for k in range(3)]
    kw = dict(key=jax.random.key(0)) if method == "dare" else {}
    jitted = jax.jit(lambda a: merge.merge_adapters(a, method, **kw))(adapters)
    chex.assert_trees_all_close(jitted, merge.merge_adapters(adapters, method, **kw), atol=1e-5)
    chex.assert_trees_all_equal_shapes(jitted, adapters[0])


def test_dispatcher_errors():
    adapters = [_bottleneck(k) for k in range(2)]
    with pytest.raises(ValueError, match="merge method 'mean' is not supported"):
        merge.merge_adapters(adapters, "mean")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        merge.merge_adapters(adapters, "dare")


def test_merges_run_on_sharded_leaves():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    adapters = [_bottleneck(k, d=16, m=8) for k in range(3)]
    sharded = [jax.device_put(a, spec) for a in adapters]
    for method in ("average", "ties", "dare", "align-weights"):
        kw = dict(key=jax.random.key(0)) if method == "dare" else {}
        f = jax.jit(lambda a: merge.merge_adapters(a, method, **kw))
        chex.assert_trees_all_close(f(sharded), f(adapters), atol=1e-5)


# ------------------------------------------------------------------ the CLI
class _FakeCheckpoints:
    """The jadapt.checkpoint interface the command is written against, in npz + json."""

    @staticmethod
    def save_adapter(directory, params, metadata):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "params.npz", **{p.replace("/", "|"): np.asarray(x) for p, x in tree.flatten(params).items()})
        (d / "metadata.json").write_text(json.dumps(metadata))
        return d

    @staticmethod
    def load_adapter(directory):
        d = Path(directory)
        with np.load(d / "params.npz") as z:
            flat = {k.replace("|", "/"): jnp.asarray(z[k]) for k in z.files}
        return tree.unflatten(flat), json.loads((d / "metadata.json").read_text())


def _meta(name, task="sst2", bottleneck=6, base="minilm"):
    return {"base_model": base, "encoder_config": {"hidden_size": 12, "hidden_dropout": 0.1},
            "adapters": [[name, {"method": "pfeiffer", "bottleneck": bottleneck, "dropout": 0.1}]],
            "active": [name], "head": {"num_labels": 2}, "task": task, "track": "sentiment"}


def _args(argv):
    p = argparse.ArgumentParser()
    command.add_merge_args(p)
    return p.parse_args(argv)


@pytest.fixture
def fake_ckpt(monkeypatch, tmp_path):
    fake = _FakeCheckpoints
    monkeypatch.setattr(checkpoints, "save_adapter", fake.save_adapter)
    monkeypatch.setattr(checkpoints, "load_adapter", fake.load_adapter)
    dirs = []
    for k, (name, task) in enumerate([("sst2", "sst2"), ("mr", "mr"), ("cr", "cr")]):
        params = tree.merge(_bottleneck(k, name=name),
                            {"head": {"out": {"kernel": jnp.ones((12, 2))}},
                             "encoder": {"layer_0": {"output_layer_norm": {"scale": jnp.full((12,), 1.0 + k)}}}})
        d = tmp_path / name
        fake.save_adapter(d, params, _meta(name, task))
        dirs.append(str(d))
    return fake, dirs, tmp_path


@pytest.mark.parametrize("method", ["average", "align-weights", "ties", "dare", "task-arithmetic", "ot"])
def test_cli_merges_checkpoints(fake_ckpt, method):
    fake, dirs, tmp = fake_ckpt
    out = tmp / f"merged-{method}"
    summary = command.run_merge(_args(["--adapters", *dirs, "--method", method, "--out", str(out), "--seed", "3"]))
    params, meta = fake.load_adapter(out)
    loaded = [fake.load_adapter(d)[0] for d in dirs]
    adapters = [checkpoints.split_leaves(p, d)[0] for p, d in zip(loaded, dirs)]
    kw = dict(key=jax.random.key(3)) if method == "dare" else {}
    expected = merge.merge_adapters(adapters, method, **kw)
    got, shared = checkpoints.split_leaves(params, out)
    chex.assert_trees_all_close(got, expected, atol=1e-5)
    # trained LayerNorms are averaged whatever the method; heads are dropped
    np.testing.assert_allclose(shared["encoder"]["layer_0"]["output_layer_norm"]["scale"], 2.0)
    assert "head" not in params
    assert meta["adapters"][0][0] == "sst2" and meta["active"] == ["sst2"] and meta["head"] is None
    assert meta["merge"]["method"] == method and meta["merge"]["tasks"] == ["sst2", "mr", "cr"]
    assert meta["track"] == "sentiment" and summary["name"] == "sst2"
    assert json.loads((out / "metrics.json").read_text())["method"] == method


def test_cli_weights_name_and_base(fake_ckpt):
    fake, dirs, tmp = fake_ckpt
    out = tmp / "ta"
    command.run_merge(_args(["--adapters", *dirs[:2], "--method", "task-arithmetic", "--out", str(out),
                             "--weights", "0.5", "2", "--scale", "0.5", "--base", dirs[2], "--name", "merged"]))
    params, meta = fake.load_adapter(out)
    assert merge.adapter_names(params) == ("merged",) and meta["adapters"][0][0] == "merged"
    a, b, c = [checkpoints.split_leaves(fake.load_adapter(d)[0], d)[0] for d in dirs]
    xa, xb, xc = _stack([a])[0], _stack([b])[0], _stack([c])[0]
    got = _stack([checkpoints.split_leaves(params, out)[0]])[0]
    np.testing.assert_allclose(got, xc + 0.5 * (0.5 * (xa - xc) + 2 * (xb - xc)), atol=1e-5)


def test_cli_refuses_mismatched_checkpoints(fake_ckpt):
    fake, dirs, tmp = fake_ckpt
    odd = tmp / "odd"
    fake.save_adapter(odd, _bottleneck(7, name="odd", m=4), _meta("odd", bottleneck=4))
    with pytest.raises(ValueError, match=r"adapter configs differ between .*odd and .*sst2: bottleneck: 4 vs 6"):
        command.run_merge(_args(["--adapters", dirs[0], str(odd), "--method", "average", "--out", str(tmp / "x")]))
    other_base = tmp / "other_base"
    fake.save_adapter(other_base, _bottleneck(8, name="ob"), _meta("ob", base="bert-base"))
    with pytest.raises(ValueError, match="base models differ.*'bert-base'.*--allow-base-mismatch"):
        command.run_merge(_args(["--adapters", dirs[0], str(other_base), "--method", "average",
                                 "--out", str(tmp / "y")]))
    no_meta = tmp / "no_meta"
    fake.save_adapter(no_meta, _bottleneck(9, name="nm", m=4), {"base_model": "minilm"})
    with pytest.raises(ValueError,
                       match=r"no_meta does not match .*sst2 at .*down/kernel: shape \(12, 4\) vs \(12, 6\)"):
        command.run_merge(_args(["--adapters", dirs[0], str(no_meta), "--method", "average", "--out", str(tmp / "z")]))
    with pytest.raises(ValueError, match="needs --probe-task"):
        command.run_merge(_args(["--adapters", *dirs, "--method", "align-activations", "--out", str(tmp / "w")]))
    with pytest.raises(ValueError, match="--weights has 1 values for 3 adapters"):
        command.run_merge(_args(["--adapters", *dirs, "--method", "average", "--out", str(tmp / "v"),
                                 "--weights", "1"]))


def test_cli_round_trip_with_the_real_checkpoint_module(tmp_path):
    ckpt = pytest.importorskip("jadapt.checkpoint")
    if not (hasattr(ckpt, "save_adapter") and hasattr(ckpt, "load_adapter")):
        pytest.skip("jadapt.checkpoint has no save_adapter / load_adapter")
    dirs = []
    for k, name in enumerate(["x", "y"]):
        params = tree.merge(_bottleneck(k, name=name), {"head": {"out": {"kernel": jnp.ones((12, 2))}}})
        dirs.append(str(ckpt.save_adapter(tmp_path / name, params, _meta(name))))
    out = tmp_path / "merged"
    command.run_merge(_args(["--adapters", *dirs, "--method", "align-weights", "--out", str(out)]))
    merged, meta = ckpt.load_adapter(out)
    expected = merge.merge_aligned([_bottleneck(0, name="x"), _bottleneck(1, name="y")])
    chex.assert_trees_all_close(merged, expected, atol=1e-5)
    assert meta["adapters"][0][0] == "x" and meta["merge"]["method"] == "align-weights"


def _data_dir() -> Path | None:
    import os

    env = os.environ.get("JADAPT_DATA_DIR")
    p = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return p if (p / "sst2").is_dir() else None


@pytest.mark.data
@pytest.mark.slow
def test_cli_align_activations_with_real_checkpoints_and_data(tmp_path):
    """End to end with the real checkpoint module, the packaged model and real probe sentences."""
    data_dir = _data_dir()
    if data_dir is None:
        pytest.skip("shared/data is absent")
    ckpt = pytest.importorskip("jadapt.checkpoint")
    if not hasattr(ckpt, "save_adapter"):
        pytest.skip("jadapt.checkpoint has no save_adapter")
    from jadapt.adapters.config import preset
    from jadapt.models.hf import packaged_model_path
    from jadapt.models.pretrained import adapter_params, add_adapter, load_pretrained

    try:
        base = str(packaged_model_path())
    except FileNotFoundError:
        pytest.skip("packaged model not installed")
    cfg = preset("pfeiffer", bottleneck=8)
    model, params = load_pretrained(base)
    dirs = []
    for k in range(2):
        _, p = add_adapter(model, params, "t", cfg, jax.random.key(k))
        a = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(100 + k), x.shape),
                                   adapter_params(p, "t"))
        meta = {"base_model": base, "adapters": [["t", cfg.to_dict()]], "active": ["t"], "head": None, "task": "sst2"}
        dirs.append(str(ckpt.save_adapter(tmp_path / f"a{k}", a, meta)))
    copy = merge.permute_adapter(a, merge.random_permutations(a, jax.random.key(5)))
    dirs.append(str(ckpt.save_adapter(tmp_path / "copy", copy, meta)))
    out = tmp_path / "merged"
    command.run_merge(_args(["--adapters", dirs[1], dirs[2], "--method", "align-activations", "--out", str(out),
                             "--probe-task", "sst2", "--data-dir", str(data_dir), "--probe-size", "16",
                             "--max-length", "32", "--batch-size", "8"]))
    merged, meta = ckpt.load_adapter(out)
    chex.assert_trees_all_close(merged, a, atol=1e-5)  # a and its permuted copy merge back to a
    assert meta["merge"]["probe_task"] == "sst2"
