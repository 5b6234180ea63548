"""Checkpoints: bitwise round trips, atomic writes under simulated crashes, clear errors on
foreign / truncated / future checkpoints, and rebuilding a model from adapter metadata."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jadapt import tree
from jadapt.adapters.config import preset
from jadapt.checkpoint import CheckpointError, TrainCheckpointer, load_adapter, load_model, save_adapter
from jadapt.checkpoint import files
from jadapt.models.config import EncoderConfig
from jadapt.models.hf import convert_state_dict, read_state_dict
from jadapt.models.model import AdapterModel, HeadConfig
from jadapt.models.pretrained import param_shapes

# Reading a damaged checkpoint makes a tensorstore callback hit orbax's closed asyncio loop later
# ("Event loop is closed", raised in no test's code): harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Crash(BaseException):
    """Stands for the process dying: no ``except Exception`` cleanup runs."""


def _bits(x) -> np.ndarray:
    x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return np.ascontiguousarray(np.asarray(x)).view(np.uint8)


def assert_bitwise_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(_bits(x), _bits(y), err_msg=jax.tree_util.keystr(path))


def _adapter_tree(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    site = "encoder/layer_0/ffn_adapter/sst2.v1"
    return tree.unflatten({
        f"{site}/down/kernel": jax.random.normal(k[0], (32, 8)),
        f"{site}/down/bias": jax.random.normal(k[1], (8,)).astype(jnp.bfloat16),
        f"{site}/up/kernel": jax.random.normal(k[2], (8, 32)) * 1e-30,  # denormal-ish values survive
        "encoder/layer_0/output_layer_norm/scale": jnp.array([np.nan, -0.0, np.inf, 1.5] * 8, jnp.float32),
        "head/out/kernel": jax.random.normal(k[3], (32, 3)),
        "head/out/bias": jnp.arange(3, dtype=jnp.int32),
    })


META = {"base_model": "x", "adapters": [["sst2.v1", preset("pfeiffer", bottleneck=8).to_dict()]],
        "active": ["sst2.v1"], "head": None, "task": "sst2", "label_names": ["neg", "pos"]}


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ adapter files
def test_adapter_roundtrip_is_bitwise(tmp_path):
    params = _adapter_tree()
    out = save_adapter(tmp_path / "ck", params, {**META, "score": np.float32(0.5)})
    assert out == (tmp_path / "ck").absolute() and (out / "metadata.json").is_file()
    loaded, meta = load_adapter(tmp_path / "ck")
    assert_bitwise_equal(loaded, params)
    assert meta == {**META, "format": "jadapt-adapter", "version": 1, "score": 0.5}
    assert _hidden(tmp_path) == []


def test_save_adapter_replaces_old_checkpoint_and_refuses_foreign_dirs(tmp_path):
    save_adapter(tmp_path / "ck", _adapter_tree(0), META)
    new = _adapter_tree(1)
    save_adapter(tmp_path / "ck", new, META)
    assert_bitwise_equal(load_adapter(tmp_path / "ck")[0], new)
    assert _hidden(tmp_path) == []
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="refusing to overwrite .*hf"):
        save_adapter(tmp_path / "hf", new, META)
    with pytest.raises(ValueError, match="version 7 is not supported"):
        save_adapter(tmp_path / "v", new, {**META, "version": 7})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_adapter(tmp_path / "j", new, {**META, "bad": object()})


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = _adapter_tree(0)
    save_adapter(tmp_path / "ck", old, META)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(files, "write_json", boom)  # arrays written, metadata not
    with pytest.raises(OSError, match="disk full"):
        save_adapter(tmp_path / "ck", _adapter_tree(1), META)
    monkeypatch.undo()
    assert_bitwise_equal(load_adapter(tmp_path / "ck")[0], old)
    assert _hidden(tmp_path) == []  # the failed attempt cleaned up after itself


def test_failed_rename_keeps_previous_checkpoint_in_place(tmp_path, monkeypatch):
    old = _adapter_tree(0)
    save_adapter(tmp_path / "ck", old, META)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".ck.tmp-"):  # publishing fails after the old one was moved aside
            assert any(p.name.startswith(".ck.old-") for p in tmp_path.iterdir())
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        save_adapter(tmp_path / "ck", _adapter_tree(1), META)
    monkeypatch.undo()
    assert_bitwise_equal(load_adapter(tmp_path / "ck")[0], old)
    assert _hidden(tmp_path) == []


def test_hard_crash_leaves_no_visible_half_checkpoint(tmp_path, monkeypatch):
    old = _adapter_tree(0)
    save_adapter(tmp_path / "ck", old, META)

    def die(*a, **k):
        raise Crash()

    monkeypatch.setattr(files, "publish", die)  # everything written, the process dies before publishing
    with pytest.raises(Crash):
        save_adapter(tmp_path / "ck", _adapter_tree(1), META)
    with pytest.raises(Crash):
        save_adapter(tmp_path / "fresh", _adapter_tree(1), META)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["ck"]
    assert_bitwise_equal(load_adapter(tmp_path / "ck")[0], old)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(tmp_path / "fresh")
    assert len(_hidden(tmp_path)) == 2  # hidden staging dirs only ...
    save_adapter(tmp_path / "ck", old, META)
    save_adapter(tmp_path / "fresh", old, META)
    assert _hidden(tmp_path) == []  # ... removed by the next successful save


def test_crash_between_renames_points_to_the_old_copy(tmp_path):
    save_adapter(tmp_path / "ck", _adapter_tree(0), META)
    os.rename(tmp_path / "ck", tmp_path / ".ck.old-123")  # the first of publish's two renames
    with pytest.raises(FileNotFoundError, match=r"previous checkpoint at .*\.ck\.old-123"):
        load_adapter(tmp_path / "ck")


# ------------------------------------------------------------------ bad input
def test_missing_and_foreign_paths(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match=f"no jadapt checkpoint at {re.escape(str(tmp_path / 'nope'))}"):
        load_adapter(tmp_path / "nope")
    hf = re.escape(str(tiny_model_dir))
    with pytest.raises(CheckpointError, match=rf"not a jadapt checkpoint: {hf} \(missing metadata.json\).*Hugging"):
        load_adapter(tiny_model_dir)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "weights.bin").write_bytes(b"\x00" * 10)
    where = re.escape(str(junk))
    with pytest.raises(CheckpointError, match=rf"not a jadapt checkpoint: {where} \(missing metadata.json\); "
                                              r"pass an adapter checkpoint folder or a `jadapt train --out` folder$"):
        load_adapter(junk)
    (junk / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="format 'something-else'"):
        load_adapter(junk)
    with pytest.raises(CheckpointError, match="a file, not a checkpoint directory"):
        load_adapter(junk / "weights.bin")
    with pytest.raises(CheckpointError, match="not a jadapt checkpoint"):
        load_model(junk)


@pytest.fixture()
def saved(tmp_path) -> Path:
    return save_adapter(tmp_path / "ck", _adapter_tree(), META)


def test_cut_metadata_json(saved):
    text = (saved / "metadata.json").read_text()
    (saved / "metadata.json").write_text(text[: len(text) // 2])
    where = re.escape(str(saved / "metadata.json"))
    with pytest.raises(CheckpointError, match=rf"corrupt jadapt checkpoint: {where} is not valid JSON"):
        load_adapter(saved)


def test_unknown_version(saved):
    meta = json.loads((saved / "metadata.json").read_text())
    (saved / "metadata.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match=r"unsupported jadapt checkpoint version 99 .*reads version\(s\) \[1\]"):
        load_adapter(saved)


@pytest.mark.parametrize("damage", ["empty", "delete", "halve", "rmtree"])
def test_damaged_array_files(saved, damage):
    data = [p for p in (saved / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        if damage == "empty":
            p.write_bytes(b"")
        elif damage == "delete":
            p.unlink()
        elif damage == "halve":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    if damage == "rmtree":
        import shutil

        shutil.rmtree(saved / "params")
    with pytest.raises(CheckpointError, match=rf"(truncated|corrupt) jadapt checkpoint: {re.escape(str(saved))}"):
        load_adapter(saved)


def test_manifest_catches_data_that_reads_but_differs(saved):
    meta = json.loads((saved / "metadata.json").read_text())
    meta["arrays"]["head/out/kernel"]["crc32"] ^= 1
    (saved / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="head/out/kernel: checksum mismatch"):
        load_adapter(saved)


# ------------------------------------------------------------------ training checkpoints
@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_state(seed=0, steps=2):
    """A train state as the loop keeps it: clipping + per-group adamw (MaskedNode leaves in its
    state) + a frozen group, after ``steps`` updates."""
    params = {"a": {"kernel": jax.random.normal(jax.random.key(seed), (16, 8)), "bias": jnp.zeros(8)},
              "head": {"kernel": jnp.ones((8, 3), jnp.bfloat16)}, "ln": {"scale": jnp.ones(8)}}
    labels = {"a": {"kernel": "decay", "bias": "no_decay"}, "head": {"kernel": "decay"}, "ln": {"scale": "frozen"}}
    groups = {"decay": optax.adamw(1e-2, weight_decay=0.1), "no_decay": optax.adamw(1e-2, weight_decay=0.0),
              "frozen": optax.set_to_zero()}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform(groups, labels))
    opt_state = tx.init(params)
    for i in range(steps):
        grads = jax.tree_util.tree_map(lambda x: jnp.sin(x.astype(jnp.float32) + i).astype(x.dtype), params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    rng = jax.random.fold_in(jax.random.key(seed), 17)
    return {"step": jnp.asarray(steps, jnp.int32), "trainable": params, "opt_state": opt_state, "rng": rng}


def test_train_state_roundtrip_is_bitwise(tmp_path):
    state = _train_state()
    with TrainCheckpointer(tmp_path / "run") as ck:
        assert ck.save(2, state, {"task": "rte"})
    ck = TrainCheckpointer(tmp_path / "run")  # a fresh process's view
    assert ck.latest_step() == 2 and ck.metadata() == {"task": "rte"}
    restored = ck.restore(like=_train_state(seed=1, steps=0))
    assert_bitwise_equal(restored, state)
    adam = restored["opt_state"][1].inner_states["decay"].inner_state[0]
    assert isinstance(adam, optax.ScaleByAdamState) and int(adam.count) == 2
    # the restored key draws what the original draws
    np.testing.assert_array_equal(jax.random.normal(restored["rng"], (4,)), jax.random.normal(state["rng"], (4,)))
    untyped = ck.restore()  # no template: dicts / lists, but the key is still a key
    assert jax.dtypes.issubdtype(untyped["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(_bits(untyped["trainable"]["a"]["kernel"]), _bits(state["trainable"]["a"]["kernel"]))


def test_train_restore_keeps_template_sharding(tmp_path):
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = _train_state()
    state["trainable"]["a"]["kernel"] = jax.device_put(state["trainable"]["a"]["kernel"], sh)
    ck = TrainCheckpointer(tmp_path / "run")
    ck.save(1, state, {})
    restored = ck.restore(like=state)
    assert restored["trainable"]["a"]["kernel"].sharding == sh
    assert_bitwise_equal(restored, state)


def test_train_keeps_latest_and_best(tmp_path):
    state = _train_state(steps=0)
    ck = TrainCheckpointer(tmp_path / "run", max_to_keep=2, best_metric="acc", best_mode="max")
    for step, acc in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.7), (50, None)]:
        ck.save(step, state, {}, metrics=None if acc is None else {"acc": jnp.float32(acc)})
    assert ck.all_steps() == [20, 40, 50] and ck.best_step() == 20 and ck.latest_step() == 50
    assert ck.save(50, state, {}) is False  # a step already saved is kept as is
    with pytest.raises(ValueError, match="lack best_metric 'acc'"):
        ck.save(60, state, {}, metrics={"loss": 1.0})
    ck.close()
    again = TrainCheckpointer(tmp_path / "run", max_to_keep=2, best_metric="acc", best_mode="max")
    assert again.all_steps() == [20, 40, 50] and again.best_step() == 20
    assert again.metrics(20) == {"acc": pytest.approx(0.9)}
    low = TrainCheckpointer(tmp_path / "low", max_to_keep=1, best_metric="loss", best_mode="min")
    for step, loss in [(1, 0.3), (2, 0.1), (3, 0.2)]:
        low.save(step, state, {}, metrics={"loss": loss})
    assert low.all_steps() == [2, 3] and low.best_step() == 2


def test_train_async_save(tmp_path):
    state = _train_state()
    ck = TrainCheckpointer(tmp_path / "run", async_save=True)
    ck.save(5, state, {"m": 1})
    ck.close()
    assert_bitwise_equal(TrainCheckpointer(tmp_path / "run").restore(5, like=state), state)


def test_train_crash_mid_save_keeps_previous_step(tmp_path, monkeypatch):
    old, new = _train_state(steps=1), _train_state(steps=2)
    ck = TrainCheckpointer(tmp_path / "run")
    ck.save(1, old, {})
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst).name == "2":  # the step directory's final commit
            raise OSError("killed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Exception, match="killed"):
        ck.save(2, new, {})
    monkeypatch.undo()
    assert not (tmp_path / "run" / "2").exists()
    fresh = TrainCheckpointer(tmp_path / "run")
    assert fresh.all_steps() == [1]
    assert_bitwise_equal(fresh.restore(like=old), old)
    fresh.save(2, new, {})  # and the run goes on; the half-written step's directory is gone
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["1", "2"]
    assert_bitwise_equal(TrainCheckpointer(tmp_path / "run").restore(like=new), new)


def test_train_errors(tmp_path):
    state = _train_state(steps=0)
    with pytest.raises(CheckpointError, match=f"no jadapt training checkpoint in {re.escape(str(tmp_path / 'empty'))}"):
        TrainCheckpointer(tmp_path / "empty").restore(like=state)
    ck = TrainCheckpointer(tmp_path / "run")
    ck.save(3, state, {})
    with pytest.raises(CheckpointError, match=r"no step 4 .*saved steps: \[3\]"):
        ck.restore(4, like=state)
    other = dict(state, trainable={"x": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"trainable/x: saved absent vs template \(2, 2\)"):
        ck.restore(like=other)
    for p in (tmp_path / "run" / "3" / "state").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"")
    step_dir = re.escape(str(tmp_path / "run" / "3"))
    with pytest.raises(CheckpointError, match=f"truncated or corrupt jadapt training checkpoint: {step_dir}"):
        TrainCheckpointer(tmp_path / "run").restore(like=state)
    with pytest.raises(ValueError, match="best_mode 'median'"):
        TrainCheckpointer(tmp_path / "x", best_mode="median")


def test_train_checksum_refuses_values_that_read_back_but_differ(tmp_path):
    """Damage that the storage format cannot see (valid chunks, other numbers): the CRC does."""
    import shutil

    import orbax.checkpoint as ocp

    from jadapt.checkpoint.train import _unkey

    state = _train_state()
    with TrainCheckpointer(tmp_path / "run") as ck:
        ck.save(3, state, {})
    stored, _ = _unkey(state)
    stored["trainable"]["a"]["kernel"] = stored["trainable"]["a"]["kernel"].at[0, 0].add(1.0)
    item = tmp_path / "run" / "3" / "state"
    shutil.rmtree(item)
    with ocp.StandardCheckpointer() as writer:
        writer.save(item, stored)
    with pytest.raises(CheckpointError, match=r"run/3: 1 of \d+ leaves fail their checksum \(first: trainable/a/kernel\)"):
        TrainCheckpointer(tmp_path / "run").restore(like=state)


# ------------------------------------------------------------------ load_model
def _trained(model_dir, adapters, active, head, fusion=None, seed=7):
    """(model, params, trainable leaves) as after training: pretrained backbone, random adapter /
    fusion / head leaves (unlike any fresh init), perturbed LayerNorm scales. No init compile."""
    model = AdapterModel(EncoderConfig.from_pretrained(model_dir), adapters=adapters, active=active, head=head,
                         fusion=fusion)
    shapes = param_shapes(model)
    flat = tree.flatten(convert_state_dict(read_state_dict(model_dir), shapes))
    rng = np.random.default_rng(seed)
    trainable = {p: (0.05 * rng.standard_normal(s)).astype(np.float32) for p, s in shapes.items() if p not in flat}
    trainable.update({p: flat[p] * 1.1 for p in flat if p.endswith("output_layer_norm/scale")})
    flat.update(trainable)
    return model, tree.unflatten(flat), tree.unflatten(trainable)


def _metadata(model, base):
    return {"base_model": str(base), "encoder_config": dataclasses.asdict(model.config),
            "adapters": [[n, c.to_dict()] for n, c in model.adapters], "active": list(model.active),
            "head": dataclasses.asdict(model.head) if model.head else None,
            "fusion": model.fusion.to_dict() if model.fusion is not None else None,
            "task": "t", "label_names": ["a", "b", "c"], "method": "x", "compute_dtype": "float32"}


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, ids):
    return model.apply({"params": params}, ids, (ids > 0).astype(jnp.int32))


def _logits(model, params):
    return np.asarray(_apply(model, params, jnp.array([[101, 2000, 2003, 1037, 102, 0], [101, 7592, 102, 0, 0, 0]])))


def test_load_model_rebuilds_the_trained_model(tmp_path, tiny_model_dir):
    adapters = (("t", preset("houlsby", bottleneck=8)), ("l", preset("lora", lora_r=4)))
    model, params, trainable = _trained(tiny_model_dir, adapters, ("t",), HeadConfig(3))
    save_adapter(tmp_path / "ck", trainable, _metadata(model, tiny_model_dir))
    model2, params2, meta = load_model(tmp_path / "ck")
    assert model2 == model and meta["task"] == "t"
    assert_bitwise_equal(params2, jax.tree_util.tree_map(jnp.asarray, params))
    np.testing.assert_array_equal(_logits(model2, params2), _logits(model, params))


def test_load_model_initialises_only_unsaved_inactive_adapters(tmp_path, tiny_model_dir):
    adapters = (("t", preset("pfeiffer", bottleneck=8)), ("idle", preset("lora", lora_r=2)))
    model, params, trainable = _trained(tiny_model_dir, adapters, ("t",), HeadConfig(3))
    part = tree.unflatten({p: x for p, x in tree.flatten(trainable).items() if "/idle/" not in p})
    save_adapter(tmp_path / "ck", part, _metadata(model, tiny_model_dir))
    _, params2, _ = load_model(tmp_path / "ck")
    assert sorted(tree.paths(params2)) == sorted(tree.paths(params))
    got, want = tree.flatten(params2), tree.flatten(params)
    assert all(np.array_equal(got[p], want[p]) == ("/idle/" not in p) for p in want)


def test_load_model_fusion(tmp_path, tiny_model_dir):
    from jadapt.fusion import fusion_preset

    cfg = preset("pfeiffer", bottleneck=8)
    model, params, trainable = _trained(tiny_model_dir, (("a", cfg), ("b", cfg)), ("a", "b"), HeadConfig(3),
                                        fusion=fusion_preset("dynamic", dropout_prob=0.1))
    save_adapter(tmp_path / "ck", trainable, _metadata(model, tiny_model_dir))
    model2, params2, _ = load_model(tmp_path / "ck")
    assert model2 == model and model2.fusion.dropout_prob == 0.1
    assert_bitwise_equal(params2, jax.tree_util.tree_map(jnp.asarray, params))
    np.testing.assert_array_equal(_logits(model2, params2), _logits(model, params))
    # a fusion checkpoint without its fused adapters would run them from random init: refused
    part = {p: x for p, x in tree.flatten(trainable).items() if "/fusion/" in p or p.startswith("head/")}
    save_adapter(tmp_path / "bad", tree.unflatten(part), _metadata(model, tiny_model_dir))
    with pytest.raises(ValueError, match=r"in neither the base model nor the checkpoint .*ffn_adapter/a/"):
        load_model(tmp_path / "bad")


def test_load_model_other_architecture_and_missing_base(tmp_path, tiny_model_dir):
    from tests.conftest import write_tiny_bert

    adapters = (("t", preset("pfeiffer", bottleneck=8)),)
    model, _, trainable = _trained(tiny_model_dir, adapters, ("t",), HeadConfig(3))
    meta = _metadata(model, tiny_model_dir)
    save_adapter(tmp_path / "ck", trainable, meta)
    wide = write_tiny_bert(tmp_path / "wide", hidden=48)
    with pytest.raises(ValueError, match=r"encoder/layer_0/ffn_adapter/t/down/kernel: shape \(32, 8\) in the "
                                         r"checkpoint != \(48, 8\) in the model"):
        load_model(tmp_path / "ck", base_model=str(wide))
    save_adapter(tmp_path / "renamed", trainable, {**meta, "adapters": [["u", meta["adapters"][0][1]]],
                                                   "active": ["u"]})
    with pytest.raises(ValueError, match=r"ffn_adapter/t/down/kernel: shape \(32, 8\) in the checkpoint, but the "
                                         r"model has no such param"):
        load_model(tmp_path / "renamed")
    other = write_tiny_bert(tmp_path / "other", hidden=32, layers=2, intermediate=96)  # same adapter shapes
    with pytest.raises(ValueError, match="differs from the one it was trained on: intermediate_size: 64"):
        load_model(tmp_path / "ck", base_model=str(other))
    gone = tmp_path / "gone_model"
    save_adapter(tmp_path / "orphan", trainable, {**meta, "base_model": str(gone)})
    with pytest.raises(FileNotFoundError, match=f"trained on base model '{re.escape(str(gone))}', which cannot be"):
        load_model(tmp_path / "orphan")
    save_adapter(tmp_path / "badhead", trainable, {**meta, "head": {"num_labels": 3, "pooling": "max"}})
    with pytest.raises(CheckpointError, match="metadata field 'head' is invalid.*pooling 'max'"):
        load_model(tmp_path / "badhead")
