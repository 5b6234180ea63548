"""jadapt.sharding on 8 forced CPU devices: rules, fallbacks, and training parity with 1 device."""
from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jadapt import distributed, sharding, tree
from jadapt.adapters.config import preset
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import param_shapes

from tests.distributed import multihost_worker as worker

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")

QUERY = "encoder/layer_0/attention/query/kernel"
DOWN = "encoder/layer_0/ffn_adapter/a/down/kernel"


def _shapes(**cfg):
    config = EncoderConfig(**{**dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                     intermediate_size=64, max_position_embeddings=64), **cfg})
    model = AdapterModel(config, adapters=(("a", preset("houlsby", bottleneck=8)),
                                           ("l", preset("lora", lora_targets=("query", "value", "intermediate",
                                                                              "output", "attention_output")))),
                         active=("a",), head=HeadConfig(num_labels=3))
    return param_shapes(model)


def test_logical_axes_cover_every_param_with_matching_rank():
    shapes = _shapes()
    axes = sharding.logical_axes(shapes)
    assert set(axes) == set(shapes)
    for p, a in axes.items():
        assert a is None or len(a) == len(shapes[p]), p
    assert axes[QUERY] == ("embed", "heads")
    assert axes["encoder/layer_1/attention/output/kernel"] == ("heads", "embed")
    assert axes["encoder/layer_1/output/kernel"] == ("mlp", "embed")
    assert axes[DOWN] == ("embed", "bottleneck")


def test_unknown_param_path_is_an_error():
    with pytest.raises(ValueError, match="match no rule"):
        sharding.logical_axes({"encoder": {"layer_0": {"mystery": {"kernel": (4, 4)}}}})


def test_make_mesh_shapes_and_errors():
    n = jax.device_count()
    assert dict(sharding.make_mesh().shape) == {"data": n, "model": 1}
    if n % 2 == 0:
        assert dict(sharding.make_mesh(model=2).shape) == {"data": n // 2, "model": 2}
    with pytest.raises(ValueError, match="model"):
        sharding.make_mesh(model=n + 1)
    with pytest.raises(ValueError, match="data"):
        sharding.make_mesh(data=n + 1, model=1)


def test_unknown_strategy_names_the_allowed_ones():
    with pytest.raises(ValueError, match="fsdp\\+tp"):
        sharding.get_strategy("zero3")


@needs8
def test_tp_is_megatron_and_non_divisible_dims_replicate():
    mesh = sharding.make_mesh(data=2, model=4)
    specs = tree.flatten(sharding.param_specs(_shapes(), mesh, "tp", replicated=None))
    assert specs[QUERY] == P(None, "model")  # column-parallel
    assert specs["encoder/layer_0/attention/output/kernel"] == P("model", None)  # row-parallel
    assert specs["encoder/layer_0/intermediate/kernel"] == P(None, "model")
    assert specs["encoder/layer_0/output/kernel"] == P("model", None)
    assert specs["encoder/layer_0/output_layer_norm/scale"] == P(None)
    assert specs[DOWN] == P(None, "model")
    # vocab 30522 and bottleneck 6 do not divide by 4: those dims stay replicated
    odd = tree.flatten(sharding.param_specs(_shapes(vocab_size=30522), mesh, "tp", replicated=None))
    assert odd["embeddings/word_embeddings/embedding"] == P(None, None)
    assert sharding.spec_for((32, 6), ("embed", "bottleneck"), mesh, "tp") == P(None, None)


@needs8
def test_fsdp_shards_largest_divisible_axis_and_adapters_stay_replicated_by_default():
    mesh = sharding.make_mesh(data=8, model=1)
    shapes = _shapes()
    specs = tree.flatten(sharding.param_specs(shapes, mesh, "fsdp"))
    assert specs["encoder/layer_0/intermediate/kernel"] == P(None, "data")  # [32, 64]: 64 is larger
    assert specs["embeddings/word_embeddings/embedding"] == P(None, "data")  # 100 % 8 != 0 -> next axis
    assert specs["embeddings/token_type_embeddings/embedding"] == P(None, "data")
    for p, s in specs.items():
        if "_adapter/" in p or "/lora_" in p or p.startswith("head/"):
            assert s == P(*([None] * len(shapes[p]))), p
    both = tree.flatten(sharding.param_specs(shapes, sharding.make_mesh(data=2, model=4), "fsdp+tp"))
    assert both[QUERY] == P("data", "model")
    assert both["encoder/layer_0/output/kernel"] == P("model", "data")


def test_rank_mismatch_and_missing_mesh_axis_are_errors():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="rank mismatch"):
        sharding.spec_for((4,), ("embed", "heads"), mesh, "tp", "x")
    with pytest.raises(ValueError, match="mesh axis 'rows'"):
        sharding.spec_for((4,), ("embed",), mesh, sharding.Strategy("odd", (("embed", "rows"),)))


# ------------------------------------------------------------------ training parity with 1 device

@pytest.fixture(scope="module")
def reference():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    losses, trainable, _, _ = worker.train(mesh, "dp")
    return np.asarray(losses), jax.device_get(trainable)


CASES = [  # (strategy, model axis, replicated)
    ("dp", 1, "default"),
    ("fsdp", 1, "default"),
    ("tp", 4, None),
    ("fsdp+tp", 2, None),
]


@needs8
@pytest.mark.parametrize("strategy,model_size,replicated", CASES)
def test_training_matches_one_device(reference, strategy, model_size, replicated):
    mesh = sharding.make_mesh(model=model_size)
    losses, trainable, opt_state, frozen = worker.train(mesh, strategy, replicated=replicated)
    ref_losses, ref_trainable = reference
    np.testing.assert_allclose(np.asarray(losses), ref_losses, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(jax.device_get(trainable), ref_trainable, atol=1e-5, rtol=0)

    # the outputs are laid out as requested, and really split
    kw = {} if replicated == "default" else {"replicated": replicated}
    want = tree.flatten(sharding.param_specs(tree.merge(frozen, trainable), mesh, strategy, **kw))
    for p, x in {**tree.flatten(trainable), **tree.flatten(frozen)}.items():
        assert x.sharding.spec == want[p], p
    q, down = tree.flatten(frozen)[QUERY], tree.flatten(trainable)[DOWN]
    if strategy == "tp":
        assert q.addressable_shards[0].data.shape == (32, 32 // model_size)
        assert down.addressable_shards[0].data.shape == (32, 8 // model_size)
    elif strategy.startswith("fsdp"):
        assert np.prod(q.addressable_shards[0].data.shape) == 32 * 32 // 8
    else:
        assert q.is_fully_replicated and down.is_fully_replicated
    # Adam moments follow their params; step counts are replicated
    moments, others = _param_leaves(opt_state)
    assert set(moments) == set(tree.flatten(trainable))
    assert all(x.sharding.spec == want[p] for p, x in moments.items())
    assert others and all(x.sharding.is_fully_replicated for x in others)


def _param_leaves(state) -> tuple[dict, list]:
    """({param path: leaf} for leaves ending in dict keys (Adam mu / nu), [other leaves])."""
    params, others = {}, []

    def visit(keypath, x):
        keys = []
        for k in reversed(keypath):
            if not isinstance(k, jax.tree_util.DictKey):
                break
            keys.insert(0, str(k.key))
        (params.__setitem__("/".join(keys), x) if keys else others.append(x))

    jax.tree_util.tree_map_with_path(visit, state)
    return params, others


@needs8
def test_opt_state_shardings_follow_params_through_multi_transform():
    from jadapt.train.optim import make_optimizer

    mesh = sharding.make_mesh(data=2, model=4)
    shapes = {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in _shapes().items()}
    params = tree.unflatten(shapes)
    shardings = sharding.param_shardings(params, mesh, "tp", replicated=None)
    lab = worker.labels(params)  # the full label tree: frozen leaves carry MaskedNode, no state
    state_sh = sharding.opt_state_shardings(jax.eval_shape(make_optimizer(lab, 1e-3).init, params), shardings, mesh)
    flat, (got, others) = tree.flatten(shardings), _param_leaves(state_sh)
    assert set(got) == {p for p, l in tree.flatten(lab).items() if l != "frozen"}
    assert all(got[p] == flat[p] for p in got)
    assert any(not s.is_fully_replicated for s in got.values())  # some moments really split
    assert others and all(s.is_fully_replicated for s in others)


# ------------------------------------------------------------------ batches

@needs8
def test_shard_batch_and_single_process_global_batch_agree():
    mesh = sharding.make_mesh(data=4, model=2)
    batch = worker.global_batches(1)[0]
    a = sharding.shard_batch(batch, mesh)
    b = distributed.global_batch(distributed.host_shard(batch, mesh), mesh)
    for k in batch:
        assert a[k].sharding.spec == P("data") and b[k].sharding == a[k].sharding
        np.testing.assert_array_equal(np.asarray(b[k]), batch[k])
    assert distributed.local_rows(16, mesh) == slice(0, 16)
    with pytest.raises(ValueError, match="data=4"):
        sharding.shard_batch({"x": np.zeros((6, 2))}, mesh)
