"""The model spec (``jadapt.models.spec``), ``build`` / ``overlay`` (``jadapt.models.build``), the adapter
paths module, ``--init-adapter`` and ``merge_checkpoints``: round trips, errors that name every problem,
and checkpoints in the version-1 format written before the spec existed."""
from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jadapt import tree
from jadapt import param_paths as paths
from jadapt.adapters.config import preset
from jadapt.checkpoint import load_adapter, load_model, save_adapter
from jadapt.fusion.config import fusion_preset
from jadapt.models.build import build, overlay, param_shapes
from jadapt.models.config import EncoderConfig
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.spec import MetadataError, ModelSpec

ENC = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


def _spec(**kw):
    base = dict(base_model="some/model", encoder=ENC,
                adapters=(("a", preset("houlsby", bottleneck=8)), ("b", preset("houlsby", bottleneck=8)),
                          ("l", preset("lora", lora_r=4, lora_targets=("query", "output")))),
                active=("a", "b"), head=HeadConfig(num_labels=3, pooling="cls"),
                fusion=fusion_preset("dynamic", dropout_prob=0.1), compute_dtype="bfloat16")
    return ModelSpec(**{**base, **kw})


# ------------------------------------------------------------------ the spec and its metadata
@pytest.mark.parametrize("kw", [{}, dict(fusion=None, active=("l",), head=None, encoder=None, base_model=None)])
def test_spec_metadata_round_trip(kw):
    spec = _spec(**kw)
    meta = json.loads(json.dumps(spec.to_metadata()))  # what metadata.json holds
    assert ModelSpec.from_metadata(meta) == spec
    assert ModelSpec.from_metadata({**meta, "task": "rte", "train_config": {"lr": 1.0}}) == spec  # run fields ignored


def test_spec_of_a_model_rebuilds_that_model():
    spec = _spec()
    model = spec.model(ENC)
    assert ModelSpec.of(model, "some/model") == spec and ModelSpec.of(model).model(ENC) == model
    assert ModelSpec(adapters=spec.adapters).active == ("a", "b", "l")  # absent active: every adapter


@pytest.mark.parametrize("field, value, msg", [
    ("adapters", [["a"]], "field 'adapters' is invalid.*name, config"),
    ("adapters", [["a", {"method": "pfeiffer", "bottlenek": 8}]], "field 'adapters' is invalid.*bottlenek"),
    ("head", {"num_labels": 3, "pooling": "max"}, "field 'head' is invalid.*pooling 'max'"),
    ("encoder_config", {"hidden_size": 30, "num_heads": 4}, "field 'encoder_config' is invalid.*not divisible"),
    ("fusion", {"value": "yes"}, "field 'fusion' is invalid.*value"),
    ("active", "a", "field 'active' is invalid.*a list"),
    ("active", ["a", "zz"], r"active names unknown adapter\(s\) \['zz'\]"),
    ("compute_dtype", "float8", "compute_dtype 'float8' is not supported"),
])
def test_bad_metadata_names_the_field(field, value, msg):
    with pytest.raises(MetadataError, match=f"^ckpt X: metadata {msg}"):
        ModelSpec.from_metadata({**_spec().to_metadata(), field: value}, "ckpt X")


def test_must_be_saved_covers_active_adapters_fusion_and_head_output():
    spec = _spec()
    want = {"encoder/layer_0/attn_adapter/a/down/kernel": True, "encoder/layer_1/ffn_adapter/fusion/value/kernel": True,
            "head/out/kernel": True, "head/dense/kernel": False, "encoder/layer_0/attention/lora_query/l/lora_a": False,
            "encoder/layer_0/output_layer_norm/scale": False}
    assert {p: spec.must_be_saved(p) for p in want} == want


# ------------------------------------------------------------------ paths
def test_adapter_paths():
    model = AdapterModel(ENC, adapters=_spec().adapters, active=("a", "b"), head=HeadConfig(3),
                         fusion=fusion_preset("dynamic"))
    shapes = param_shapes(model)
    by_name = {}
    for p in shapes:
        by_name.setdefault(paths.adapter_name(p), set()).add(p)
    assert set(by_name) == {None, "a", "b", "l", "fusion"}
    for name in ("a", "b", "l"):  # the pattern, the name and the sites of a config agree
        assert {p for p in shapes if re.search(paths.adapter_pattern(name), p)} == by_name[name]
        sites = dict(model.adapters)[name].sites()
        assert {s for p in by_name[name] for s in p.split("/")[:-1] if paths.SITE_KEY.match(s)} == set(sites)
    assert {p for p in shapes if re.search(paths.adapter_pattern(), p)} == by_name["a"] | by_name["b"] | by_name["l"]
    assert {p for p in shapes if re.search(paths.FUSION_LAYERS, p)} == by_name["fusion"]
    lora = "encoder/layer_1/lora_output/l/lora_b"
    assert lora in shapes and paths.rename(lora, {"l"}, "m") == "encoder/layer_1/lora_output/m/lora_b"
    assert paths.rename(lora, {"x"}, "m") == lora


# ------------------------------------------------------------------ overlay and build
def test_overlay_reports_every_problem_at_once():
    expected = {"encoder/layer_0/ffn_adapter/a/down/kernel": (32, 8), "encoder/layer_0/ffn_adapter/a/up/kernel": (8, 32),
                "head/out/kernel": (32, 2), "embeddings/x": (4,)}
    saved = {"encoder/layer_0/ffn_adapter/a/down/kernel": np.zeros((32, 4), np.float32),  # wrong shape
             "encoder/layer_0/ffn_adapter/zz/down/kernel": np.zeros((32, 8), np.float32),  # no such param
             "encoder/layer_0/ffn_adapter/a/up/kernel": np.zeros((8, 32), np.float32)}
    with pytest.raises(ValueError) as e:
        overlay({"embeddings": {"x": np.zeros(4, np.float32)}}, tree.unflatten(saved), expected, "checkpoint C",
                lambda p: p.startswith(("head/", "encoder/")))
    msg = str(e.value)
    assert msg.startswith("checkpoint C does not fit")
    assert "ffn_adapter/a/down/kernel: shape (32, 4) in the checkpoint != (32, 8) in the model" in msg
    assert "ffn_adapter/zz/down/kernel: shape (32, 8) in the checkpoint, but the model has no such param" in msg
    assert re.search(r"1 param\(s\) in neither the base model nor the checkpoint .*head/out/kernel", msg)
    ok = overlay({"embeddings": {"x": np.zeros(4, np.float32)}}, {"head": {"out": {"kernel": np.ones((32, 2))}}},
                 expected, dtypes={"head/out/kernel": jnp.float32})
    assert ok["head"]["out"]["kernel"].dtype == jnp.float32 and set(tree.flatten(ok)) == {"embeddings/x",
                                                                                       "head/out/kernel"}


def test_build_refuses_a_base_model_unlike_the_spec(tiny_model_dir):
    spec = ModelSpec(base_model=str(tiny_model_dir), adapters=(("a", preset("pfeiffer", bottleneck=4)),),
                     head=HeadConfig(2))
    with pytest.raises(ValueError, match="differs from the one it was trained on: hidden_size: 48 .trained. vs 32"):
        build(spec.replace(encoder=EncoderConfig.from_pretrained(tiny_model_dir).replace(hidden_size=48)))


# ------------------------------------------------------------------ checkpoints written before the spec
# metadata.json exactly as jadapt.train.loop.run_metadata wrote it (version 1) for
# `jadapt train --task rte --method houlsby --bottleneck 8 --epochs 1 --out runs/rte --model BASE_MODEL_DIR`.
V1_METADATA = """{"format": "jadapt-adapter", "version": 1, "base_model": "BASE_MODEL_DIR", "encoder_config":
{"vocab_size": 30522, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
"max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
"hidden_dropout": 0.1, "attention_dropout": 0.1, "pad_token_id": 0, "model_type": "bert", "initializer_range": 0.02},
"adapters": [["rte", {"method": "houlsby", "bottleneck": 8, "reduction_factor": null, "activation": "swish",
"mh_adapter": true, "output_adapter": true, "original_ln_before": false, "original_ln_after": true,
"residual_before_ln": true, "adapter_residual_before_ln": false, "ln_before": false, "ln_after": false,
"is_parallel": false, "scaling": 1.0, "init": "bert", "dropout": 0.0, "train_layer_norms": true, "lora_r": 8,
"lora_alpha": 8.0, "lora_targets": ["query", "value"]}]], "active": ["rte"], "head": {"num_labels": 2,
"regression": false, "pooling": "mean", "dense": true, "dropout": 0.1}, "fusion": null, "task": "rte",
"track": "nli", "label_names": ["entailment", "not_entailment"], "method": "houlsby", "compute_dtype": "float32",
"train_config": {"task": "rte", "method": "houlsby", "model": "BASE_MODEL_DIR", "data_dir": null, "out": "runs/rte",
"train_size": null, "k_shot": null, "epochs": 1.0, "max_steps": null, "batch_size": 32, "eval_batch_size": 64,
"max_length": 128, "buckets": null, "bottleneck": 8, "reduction_factor": null, "lora_r": 8, "lora_alpha": 16.0,
"train_layer_norms": null, "lr": null, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": 0,
"compute_dtype": "float32", "pooling": "mean", "adapter_name": null, "init_adapter": null, "fusion_adapters": [],
"save_every": 0, "progress": true, "remat": false, "compile_ahead": true, "attention": "matmul", "sharding": "dp"}}"""


def _trained_leaves(model, params, seed=0):
    """The leaves a houlsby run saves (adapter, head, LayerNorms), at values no init draws."""
    from jadapt.train.optim import split, trainable_labels, trainable_rules

    trainable, _ = split(params, trainable_labels(params, trainable_rules("houlsby", ["rte"], train_layer_norms=True)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: (np.asarray(x) + rng.normal(0, 0.1, x.shape)).astype(np.float32), trainable)


def test_version1_checkpoint_loads(tmp_path, tiny_model_dir):
    meta = json.loads(V1_METADATA.replace("BASE_MODEL_DIR", str(tiny_model_dir)))
    spec = ModelSpec.from_metadata(meta)
    model, params = build(spec)
    leaves = _trained_leaves(model, params)
    save_adapter(tmp_path / "v1", leaves, meta)
    assert json.loads((tmp_path / "v1" / "metadata.json").read_text())["version"] == 1
    model2, params2, meta2 = load_model(tmp_path / "v1")
    assert model2 == model and meta2["task"] == "rte" and meta2["train_config"]["bottleneck"] == 8
    got = tree.flatten(params2)
    for p, x in tree.flatten(leaves).items():
        np.testing.assert_array_equal(np.asarray(got[p]), x, err_msg=p)
    backbone = tree.flatten(params)
    assert all(np.array_equal(got[p], backbone[p]) for p in got if p not in tree.flatten(leaves))


def test_run_metadata_is_still_version1(tmp_path, tiny_model_dir):
    """What a run writes today carries exactly the version-1 fields (plus nothing new)."""
    from jadapt import data
    from jadapt.train.config import TrainConfig
    from jadapt.train.model_setup import build_model, run_metadata

    cfg = TrainConfig(task="rte", method="houlsby", model="BASE_MODEL_DIR", bottleneck=8, out="runs/rte", epochs=1.0)
    task = data.get_task("rte")
    model, _, _ = build_model(cfg, task, tiny_model_dir)
    now, v1 = json.loads(json.dumps(run_metadata(cfg, model, tiny_model_dir, task))), json.loads(V1_METADATA)
    # train_config is the run's TrainConfig as it is today (new fields, changed defaults): a record,
    # not part of the format; every other field is exactly version 1's
    assert set(now["train_config"]) >= set(v1["train_config"])
    now.pop("train_config"), v1.pop("train_config")
    assert now == v1


# ------------------------------------------------------------------ --init-adapter
@pytest.mark.parametrize("method", ["houlsby", "lora"])
def test_init_adapter_starts_from_the_saved_adapter(tmp_path, tiny_model_dir, method):
    from jadapt import data
    from jadapt.train.config import TrainConfig
    from jadapt.train.model_setup import build_model

    task = data.get_task("rte")
    src = TrainConfig(task="rte", method=method, bottleneck=8, adapter_name="merged", seed=1)
    model, params, _ = build_model(src, task, tiny_model_dir)
    saved = tree.merge(tree.select(params, paths.adapter_pattern("merged")), tree.select(params, paths.HEAD))
    saved = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.5, saved)
    save_adapter(tmp_path / "m", saved, ModelSpec.of(model, str(tiny_model_dir)).to_metadata())
    cfg = TrainConfig(task="rte", method=method, bottleneck=8, init_adapter=str(tmp_path / "m"))
    model2, params2, names = build_model(cfg, task, tiny_model_dir)
    assert names == ["rte"]
    want = {paths.rename(p, {"merged"}, "rte"): x for p, x in tree.flatten(saved).items() if not p.startswith("head/")}
    got = tree.flatten(params2)
    assert want and all(np.array_equal(got[p], x) for p, x in want.items())
    assert not np.array_equal(got["head/out/kernel"], tree.flatten(saved)["head/out/kernel"])  # the head is new
    wide = dataclasses.replace(cfg, bottleneck=16, lora_r=16)
    with pytest.raises(ValueError, match=r"(?s)init adapter .* does not fit.*in the checkpoint != "):
        build_model(wide, task, tiny_model_dir)


# ------------------------------------------------------------------ merge_checkpoints
def test_merge_checkpoints_returns_params_and_a_loadable_spec(tmp_path, tiny_model_dir):
    from jadapt import merge

    cfg = preset("pfeiffer", bottleneck=4)
    spec = ModelSpec(base_model=str(tiny_model_dir), encoder=EncoderConfig.from_pretrained(tiny_model_dir),
                     adapters=(("x", cfg),), head=HeadConfig(2))
    model, params = build(spec, seed=0)
    dirs = []
    for k, name in enumerate(["x", "y"]):
        own = tree.select(params, paths.adapter_pattern("x"))
        own = jax.tree_util.tree_map(lambda v: np.asarray(v) + k, own)
        own = {paths.rename(p, {"x"}, name): v for p, v in tree.flatten(own).items()}
        meta = {**spec.replace(adapters=((name, cfg),), active=None).to_metadata(), "task": name}
        dirs.append(save_adapter(tmp_path / name, tree.merge(tree.unflatten(own), tree.select(params, paths.HEAD)),
                                 meta))
    merged, meta = merge.merge_checkpoints(dirs, "average", name="avg")
    assert meta["merge"]["tasks"] == ["x", "y"] and meta["head"] is None and meta["active"] == ["avg"]
    a, b = (tree.flatten(load_adapter(d)[0]) for d in dirs)
    for p, v in tree.flatten(merged).items():
        x = p.replace("/avg/", "/x/")
        np.testing.assert_allclose(v, (a[x] + b[x.replace("/x/", "/y/")]) / 2, rtol=1e-6, err_msg=p)
    out = merge.save_merged(tmp_path / "avg", merged, meta)
    assert out["name"] == "avg" and ModelSpec.from_metadata(load_adapter(tmp_path / "avg")[1]).active == ("avg",)
    merged_model, _, _ = load_model(tmp_path / "avg")
    assert merged_model.head is None and merged_model.active == ("avg",)


def test_fusion_loader_reports_adapters_that_do_not_fit(tmp_path, tiny_model_dir):
    from jadapt.fusion import load_for_fusion

    dirs = []
    for name, m in (("s", 8), ("t", 4)):  # t is saved at bottleneck 4 but says 8
        spec = ModelSpec(base_model=str(tiny_model_dir), adapters=((name, preset("pfeiffer", bottleneck=m)),))
        _, params = build(spec, seed=len(dirs))
        meta = spec.replace(adapters=((name, preset("pfeiffer", bottleneck=8)),), active=None).to_metadata()
        dirs.append(str(save_adapter(tmp_path / name, tree.select(params, paths.adapter_pattern(name)), meta)))
    run = SimpleNamespace(fusion_adapters=tuple(dirs), compute_dtype="float32", seed=0, remat=False,
                          attention="matmul")
    with pytest.raises(ValueError, match=r"fusion adapters .* does not fit(.|\n)*ffn_adapter/t/down/kernel: shape "
                                         r"\(32, 4\) in the checkpoint != \(32, 8\)"):
        load_for_fusion(run, tiny_model_dir, HeadConfig(3))
