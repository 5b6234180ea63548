"""A training run folder (``jadapt train --out``) is accepted wherever a checkpoint is asked
for: it stands for its ``best/`` checkpoint, said in one line on stderr; a folder that is
neither gets one error naming what was found and what to pass."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from jadapt import tree
from jadapt.checkpoint import CheckpointError, load_adapter, load_model, save_adapter
from jadapt.checkpoint.files import resolve_checkpoint

META = {"task": "rte", "adapters": []}


def _tiny_checkpoint(path):
    return save_adapter(path, {"encoder": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}}, META)


# ------------------------------------------------------------------ the resolver
def test_a_checkpoint_is_itself(tmp_path, capsys):
    ck = _tiny_checkpoint(tmp_path / "ck")
    assert resolve_checkpoint(ck) == ck
    assert capsys.readouterr().err == ""


def test_a_run_folder_stands_for_its_best_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    best = _tiny_checkpoint(run / "best")
    (run / "checkpoints").mkdir()
    (run / "metrics.json").write_text("{}")
    assert resolve_checkpoint(run) == best
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run} is a training run folder: using its best checkpoint {best}" in err
    params, meta = load_adapter(run)
    assert meta["task"] == "rte"
    np.testing.assert_array_equal(np.asarray(tree.flatten(params)["encoder/a"]), np.arange(6).reshape(2, 3))


def test_a_run_without_an_evaluation_yet_is_named(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "log.jsonl").write_text("")
    msg = rf"{re.escape(str(run))} is a training run folder \(it holds checkpoints/, log.jsonl\) but has no best/: " \
          r"the run has not finished an evaluation yet"
    with pytest.raises(CheckpointError, match=msg):
        load_adapter(run)


def test_other_folders_say_what_to_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"missing metadata.json\); pass an adapter checkpoint folder or a "
                                              r"`jadapt train --out` folder"):
        load_adapter(tmp_path / "empty")
    (tmp_path / "run" / "checkpoints" / "8").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=rf"pass the run folder {re.escape(str(tmp_path / 'run'))} or its best/"):
        load_adapter(tmp_path / "run" / "checkpoints")


# ------------------------------------------------------------------ every reader and command
def test_load_model_takes_a_run_folder(tiny_runs, capsys):
    model, params, meta = load_model(tiny_runs.rte)
    assert meta["task"] == "rte" and model.head.num_labels == 2
    assert "using its best checkpoint" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _system_allocator(monkeypatch):
    monkeypatch.setenv("JADAPT_ALLOCATOR", "system")  # main() would re-exec itself with tcmalloc


def _run_cli(argv, capsys):
    from jadapt.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out


NOTE = "is a training run folder: using its best checkpoint"


def test_eval_takes_a_run_folder(tiny_runs, tmp_path, capsys):
    out = _run_cli(["eval", "--checkpoint", tiny_runs.rte, "--data-dir", tiny_runs.data, "--max-length", 16,
                    "--out", tmp_path / "ev"], capsys)
    assert NOTE in out.err
    best = json.loads((tiny_runs.rte / "best_metrics.json").read_text())["accuracy"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == pytest.approx(best, abs=1e-6)


def test_merge_takes_run_folders(tiny_runs, tmp_path, capsys):
    rte, mrpc = tiny_runs.rte, tiny_runs.mrpc
    out = _run_cli(["merge", "--adapters", rte, mrpc, "--method", "average", "--out", tmp_path / "merged"], capsys)
    assert out.err.count(NOTE) == 2
    merged = tree.flatten(load_adapter(tmp_path / "merged")[0])
    a, b = (tree.flatten(load_adapter(r / "best")[0]) for r in (rte, mrpc))
    key = next(p for p in merged if p.endswith("/up/kernel"))
    np.testing.assert_allclose(np.asarray(merged[key]),
                               (np.asarray(a[key]) + np.asarray(b[key.replace("/rte/", "/mrpc/")])) / 2, rtol=1e-6)


def test_export_takes_a_run_folder_and_states_the_head_it_leaves_out(tiny_runs, tmp_path, capsys):
    out = _run_cli(["export", "--checkpoint", tiny_runs.rte, "--format", "adapterhub", "--out", tmp_path / "hub"],
                   capsys)
    assert NOTE in out.err
    notes = [line for line in out.err.splitlines() if line.startswith("jadapt: note:")]
    assert len(notes) == 1 and "head not exported: it pools by 'mean'" in notes[0]
    assert (tmp_path / "hub" / "adapter_config.json").is_file()
    assert not (tmp_path / "hub" / "head_config.json").exists()


def test_rsa_takes_a_run_folder(tiny_runs, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("\n".join(f"sentence number {i} is good" for i in range(6)))
    out = _run_cli(["rsa", "--tuned", tiny_runs.rte, "--base", tiny_runs.model, "--text-file", tmp_path / "texts.txt",
                    "--max-length", 16, "--out", tmp_path / "rsa"], capsys)
    assert NOTE in out.err and (tmp_path / "rsa" / "metrics.json").is_file()


def _train_args(tiny_runs):
    return ["--model", tiny_runs.model, "--data-dir", tiny_runs.data, "--max-length", 16, "--batch-size", 16,
            "--bottleneck", 4, "--max-steps", 1, "--no-progress", "--no-compile-ahead"]


@pytest.mark.slow
def test_train_init_adapter_takes_a_run_folder(tiny_runs, tmp_path, capsys):
    out = _run_cli(["train", "--task", "rte", "--init-adapter", tiny_runs.mrpc, "--out", tmp_path / "init",
                    *_train_args(tiny_runs)], capsys)
    assert NOTE in out.err


@pytest.mark.slow
def test_train_fusion_adapters_take_run_folders(tiny_runs, tmp_path, capsys):
    out = _run_cli(["train", "--task", "rte", "--method", "fusion", "--fusion-adapters", tiny_runs.rte,
                    tiny_runs.mrpc, "--out", tmp_path / "fuse", *_train_args(tiny_runs)], capsys)
    assert out.err.count(NOTE) == 2
