"""A study runs what a user runs: ``fit`` (``jadapt train``) and ``Runner.run`` (every study)
train through the one epoch loop, so the same config gives the same trained adapter."""
from __future__ import annotations

import numpy as np

from jadapt import data, tree
from jadapt.checkpoint import TrainCheckpointer
from jadapt.train.config import TrainConfig
from jadapt.train.epochs import run_steps
from jadapt.train.loop import fit
from jadapt.train.model_setup import build_model
from jadapt.train.optim import split, trainable_labels, trainable_rules
from jadapt.train.runner import Runner
from tests.conftest import write_synthetic_task


def _encoded(data_dir, model_dir, split: str = "train") -> dict:
    task = data.get_task("rte")
    rows = data.load_split(task, task.train_split if split == "train" else task.dev_split, str(data_dir))
    return data.encode(task, rows, data.load_tokenizer(model_dir), 32)


def test_run_steps_visits_the_data_order_and_epoch_ends(tmp_path, tiny_model_dir):
    train = _encoded(write_synthetic_task(tmp_path / "data", n_train=10, n_dev=4), tiny_model_dir)
    seen, ends = [], []

    def step_fn(state, frozen, batch):
        return state + 1, {"loss": 0.0}

    on_step = lambda step, epoch, state, m: seen.append((step, epoch))  # noqa: E731
    on_end = lambda step, epoch, state: ends.append((step, epoch))  # noqa: E731
    spe = data.num_batches(train, 4)  # 3 steps an epoch (the last batch short)
    state, step = run_steps(step_fn, 0, {}, train, batch_size=4, seed=0, steps_per_epoch=spe, start=2, stop=7,
                            total=8, on_step=on_step, on_epoch_end=on_end)
    assert (state, step) == (5, 7)
    assert seen == [(3, 0), (4, 1), (5, 1), (6, 1), (7, 2)]
    assert ends == [(3, 0), (6, 1)]  # stopped at 7 < total 8: no epoch ended there
    _, _ = run_steps(step_fn, 0, {}, train, batch_size=4, seed=0, steps_per_epoch=spe, start=7, stop=8, total=8,
                     on_epoch_end=on_end)
    assert ends[-1] == (8, 2)  # the run's end counts as an epoch end


def test_fit_and_runner_train_the_same_adapter(tmp_path, tiny_model_dir):
    data_dir = write_synthetic_task(tmp_path / "data", n_train=40, n_dev=16)
    cfg = TrainConfig(task="rte", method="houlsby", model=str(tiny_model_dir), data_dir=str(data_dir),
                      out=str(tmp_path / "run"), epochs=2, batch_size=8, max_length=32, buckets=(16, 32), seed=3,
                      lr=3e-3, progress=False, compile_ahead=False)
    result = fit(cfg)
    ckpt = TrainCheckpointer(tmp_path / "run" / "checkpoints", max_to_keep=None, keep_best=False)
    by_fit = tree.flatten(ckpt.restore()["trainable"])
    ckpt.close()

    task = data.get_task("rte")
    model, params, names = build_model(cfg, task, tiny_model_dir)
    labels = trainable_labels(params, trainable_rules("houlsby", names, train_layer_norms=True))
    runner = Runner(model, params, labels, regression=False, batch_size=8, buckets=(16, 32))
    train, dev = _encoded(data_dir, tiny_model_dir), _encoded(data_dir, tiny_model_dir, "dev")
    out = runner.run(task, train, dev, seed=3, epochs=2, lr=3e-3, return_params=True)
    by_runner = tree.flatten(out["trainable"])

    assert out["steps"] == result["steps"] == 10
    assert sorted(by_fit) == sorted(by_runner)
    assert split(params, labels)[0]  # something trains
    for p in by_fit:  # sharded (fit, 8 CPU devices) vs single-device jit: reduction order only
        np.testing.assert_allclose(np.asarray(by_fit[p]), np.asarray(by_runner[p]), rtol=1e-4, atol=1e-6, err_msg=p)
    moved = [p for p in by_fit if not np.allclose(by_fit[p], tree.flatten(split(params, labels)[0])[p])]
    assert moved, "training moved no adapter leaf: the comparison would be vacuous"
