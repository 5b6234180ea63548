"""The training run: learns a synthetic task, resumes bitwise exactly, writes metrics.json."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jadapt.checkpoint import load_adapter
from jadapt.train.config import TrainConfig
from jadapt.train.loop import fit


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(task="rte", method="houlsby", model=str(tiny_model_dir), data_dir=str(data_dir), out=str(out),
                epochs=2, batch_size=16, eval_batch_size=16, max_length=32, bottleneck=8, lr=3e-3,
                progress=False, save_every=0)
    base.update(kw)
    return TrainConfig(**base)


def _final_trainable(out):
    from jadapt.checkpoint import TrainCheckpointer

    ck = TrainCheckpointer(out / "checkpoints", max_to_keep=1, keep_best=False)
    state = ck.restore()
    ck.close()
    return jax.tree_util.tree_map(np.asarray, state["trainable"])


def test_fit_learns_and_writes_metrics(tiny_model_dir, synthetic_data_dir, tmp_path):
    res = fit(_cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "run", epochs=4))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["accuracy"] == res["accuracy"] and len(m["history"]) == 4
    assert m["accuracy"] >= 0.8, m["history"]  # the synthetic task is easy
    assert m["trainable_params"] < m["total_params"] / 5
    params, meta = load_adapter(tmp_path / "run" / "best")
    assert meta["task"] == "rte" and meta["method"] == "houlsby"
    assert "head" in params and "encoder" in params


def test_resume_is_bitwise_identical(tiny_model_dir, synthetic_data_dir, tmp_path):
    """Stop mid-epoch (as a kill after a checkpoint would), restart, compare with one run."""
    full = tmp_path / "full"
    fit(_cfg(tiny_model_dir, synthetic_data_dir, full, save_every=3))
    part = tmp_path / "part"
    fit(_cfg(tiny_model_dir, synthetic_data_dir, part, save_every=3, max_steps=3))  # 3 of 12 steps
    fit(_cfg(tiny_model_dir, synthetic_data_dir, part, save_every=3, max_steps=8))  # resumes at 3
    res = fit(_cfg(tiny_model_dir, synthetic_data_dir, part, save_every=3))  # resumes at 8, ends at 12
    assert res["steps"] == 12
    a, b = _final_trainable(full), _final_trainable(part)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_bad_inputs_fail_before_work(tiny_model_dir, synthetic_data_dir, tmp_path):
    with pytest.raises(ValueError, match="nosuchtask"):
        fit(_cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "a", task="nosuchtask"))
    with pytest.raises(ValueError, match="max_length 9999 exceeds"):
        fit(_cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "b", max_length=9999))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(_cfg(tmp_path / "nomodel", synthetic_data_dir, tmp_path / "c"))
    with pytest.raises(ValueError, match="method 'nosuchmethod'"):
        _cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "d", method="nosuchmethod")
    with pytest.raises(ValueError, match="train_size 1000 is larger|1000"):
        fit(_cfg(tiny_model_dir, synthetic_data_dir, tmp_path / "e", train_size=1000))


def test_cli_errors_are_one_line(tmp_path, capsys):
    from jadapt.cli import main

    assert main(["train", "--task", "nosuchtask", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "nosuchtask" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["train", "--task", "rte", "--method", "nosuchmethod", "--out", str(tmp_path / "b")]) == 2
    assert "nosuchmethod" in capsys.readouterr().err
    assert main(["train", "--task", "rte", "--model", str(tmp_path / "no/model"), "--out", str(tmp_path / "c")]) == 2
    assert str(tmp_path / "no/model") in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nock"), "--out", str(tmp_path / "d")]) == 2
    assert "nock" in capsys.readouterr().err


def test_cli_train_then_eval(tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch):
    from jadapt.cli import main

    monkeypatch.setenv("JADAPT_ALLOCATOR", "system")
    out = tmp_path / "run"
    rc = main(["train", "--task", "rte", "--method", "pfeiffer", "--model", str(tiny_model_dir), "--data-dir",
               str(synthetic_data_dir), "--epochs", "1", "--batch-size", "16", "--max-length", "32",
               "--bottleneck", "4", "--no-progress", "--out", str(out)])
    assert rc == 0
    trained = json.loads((out / "metrics.json").read_text())
    rc = main(["eval", "--checkpoint", str(out / "best"), "--data-dir", str(synthetic_data_dir), "--batch-size", "16",
               "--max-length", "32", "--out", str(tmp_path / "ev")])
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["task"] == "rte" and abs(ev["accuracy"] - trained["accuracy"]) < 1e-6
