"""Kill a real ``jadapt train`` (SIGKILL, at each moment where it publishes something), rerun
the same command, and check that what the run reports equals an uninterrupted run's: the
``best/`` adapter bitwise, ``metrics.json`` with its eval history, the final train state.

The kills come from the run itself at named points (``JADAPT_FAULT_AT``, jadapt.faults), so
each lands exactly where it is meant to. One chain of killed and resumed runs on one folder
covers every point (and a damaged checkpoint on the way), to keep the compilations few; the
compilation cache is shared by all the runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import REPO, write_synthetic_task, write_tiny_bert

# Reading a damaged checkpoint in-process can leave an orbax callback on a closed loop.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

STEPS = 24  # 64 rows / batch 8 = 8 steps an epoch, 3 epochs; saves at 4, 8, 12, ...


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model = write_tiny_bert(root / "bert")
    data = write_synthetic_task(root / "data", "rte", n_train=64, n_dev=40)
    _add_label_noise(data / "rte")  # so that the best dev epoch is not simply the first or the last
    write_synthetic_task(root / "data", "mrpc", n_train=16, n_dev=16, seed=1)
    return {"root": root, "model": model, "data": data, "cache": root / "xla-cache"}


def _add_label_noise(folder: Path) -> None:
    for f in folder.glob("*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        for r in rows[::5]:
            r["label"] = 1 - r["label"]
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _train_args(setup, out, *extra):
    return ["train", "--task", "rte", "--method", "houlsby", "--model", str(setup["model"]), "--data-dir",
            str(setup["data"]), "--max-length", "32", "--batch-size", "8", "--epochs", "3", "--save-every", "4",
            "--bottleneck", "4", "--lr", "3e-3", "--no-progress", "--out", str(out), *extra]


def _env(setup, fault=None):
    env = dict(os.environ, JADAPT_ALLOCATOR="system", JADAPT_COMPILATION_CACHE=str(setup["cache"]),
               XLA_FLAGS="", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("JADAPT_FAULT_AT", None)
    if fault:
        env["JADAPT_FAULT_AT"] = fault
    return env


def _jadapt(setup, args, fault=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "jadapt.cli", *args], cwd=REPO, env=_env(setup, fault),
                          capture_output=True, text=True, timeout=timeout)


def _bits(tree):
    return {k: np.ascontiguousarray(np.asarray(v)).view(np.uint8) for k, v in tree.items()}


def _best(out: Path):
    from jadapt import tree
    from jadapt.checkpoint import load_adapter

    params, meta = load_adapter(out / "best")
    return _bits(tree.flatten(params)), meta["metrics"]


def _final_state(out: Path):
    from jadapt import tree
    from jadapt.checkpoint import TrainCheckpointer

    ck = TrainCheckpointer(out / "checkpoints", max_to_keep=None, keep_best=False)
    state = ck.restore()
    ck.close()
    return _bits(tree.flatten(jax.device_get(state["trainable"])))


def _report(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("wall_time_s", "config")}


def _consistent(out: Path) -> None:
    """What a reader of a killed run's folder sees agrees with itself."""
    if (out / "best").exists():
        _, metrics = _best(out)
        assert json.loads((out / "best_metrics.json").read_text()) == metrics
    assert not list(out.glob("..best-*")), sorted(p.name for p in out.iterdir())


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["root"] / "reference"
    r = _jadapt(setup, _train_args(setup, out))
    assert r.returncode == 0, r.stderr
    return out


def _killed(setup, out, fault):
    r = _jadapt(setup, _train_args(setup, out), fault=fault)
    assert r.returncode == -signal.SIGKILL, f"{fault}: not killed (rc {r.returncode})\n{r.stderr[-2000:]}"
    _consistent(out)
    return r


def _flip_bytes(step_dir: Path) -> None:
    """16 bytes flipped in the middle of every data file of the step's state."""
    for f in sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"):
        data = bytearray(f.read_bytes())
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
            data[i] ^= 0x5A
        f.write_bytes(bytes(data))


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow  # ten short runs: a few minutes on two cores (.ci/run runs it)
def test_killed_and_resumed_run_reports_what_an_uninterrupted_run_reports(setup, reference):
    out = setup["root"] / "chain"
    ref = _report(reference)
    assert len(ref["history"]) == 3 and ref["steps"] == STEPS and ref["finished"]
    main = [h["accuracy"] for h in ref["history"]]
    improved = sum(a > max(main[:i], default=-1) for i, a in enumerate(main))
    assert improved == 2 and main[2] < main[1], main  # the case that matters: best at 16, not last
    _killed(setup, out, "best-written:1")        # step 8: new best complete, not yet published
    # the last new best: published, the checkpoint recording it not written (at step 16, the
    # restart has to bring back the best of step 8)
    _killed(setup, out, f"best-swapped:{min(improved, 2)}")
    _killed(setup, out, "train-checkpoint:2")    # inside the write of a checkpoint
    _killed(setup, out, "epoch-checkpoint:1")    # right after the checkpoint of an epoch's last step
    *_, before, last = _steps(out)
    _flip_bytes(out / "checkpoints" / str(last))  # a damaged checkpoint: refused, the one before is used
    r = _killed(setup, out, "metrics:1")         # everything written but metrics.json
    assert f"checkpoints/{last}: " in r.stderr and f"resuming from {out}/checkpoints/{before} instead" in r.stderr
    assert not (out / "metrics.json").exists()
    r = _jadapt(setup, _train_args(setup, out))
    assert r.returncode == 0, r.stderr
    assert "nothing to train" in r.stderr
    got = _report(out)
    assert got == ref
    a, b = _best(reference), _best(out)
    assert a[1] == b[1] and a[0].keys() == b[0].keys()
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    fa, fb = _final_state(reference), _final_state(out)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [str(STEPS)]  # stale ones removed
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".best")) == [os.readlink(out / "best")]

    # --- the folder knows its run: the same command reports it, other settings are refused
    r = _jadapt(setup, _train_args(setup, out))
    assert r.returncode == 0 and "already holds this run" in r.stderr, r.stderr
    assert f"dev accuracy = {ref['accuracy']:.4f}" in r.stdout
    r = _jadapt(setup, _train_args(setup, out, "--train-size", "32", "--lr", "1e-3"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "train_size None -> 32" in r.stderr and "lr 0.003 -> 0.001" in r.stderr and "--restart" in r.stderr

    # --- a lock on --out: a second run is refused naming the holder; a dead holder's lock is taken over
    holder = subprocess.Popen([sys.executable, "-m", "jadapt.cli", *_train_args(setup, out)], cwd=REPO,
                              env=_env(setup, "run-start:1:pause"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and f'"pid": {holder.pid}' not in (out / ".lock").read_text():
            time.sleep(0.2)
        r = _jadapt(setup, _train_args(setup, out))
        assert r.returncode == 2 and f"in use by another jadapt run (pid {holder.pid}" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    r = _jadapt(setup, _train_args(setup, out))
    assert r.returncode == 0 and f"taking over the lock of a run that is gone (pid {holder.pid}" in r.stderr

    # --- --restart moves the old run aside and starts over
    r = _jadapt(setup, _train_args(setup, out, "--restart", "--max-steps", "1"))
    assert r.returncode == 0, r.stderr
    aside = [p for p in out.parent.iterdir() if p.name.startswith("chain.old-")]
    assert len(aside) == 1 and f"moved the previous run in {out} aside to {aside[0]}" in r.stderr
    assert _report(aside[0]) == ref
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1 and not (out / "best").exists()


def test_non_finite_loss_stops_the_run(setup):
    out = setup["root"] / "nan"
    r = _jadapt(setup, _train_args(setup, out, "--lr", "inf"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "not finite" in r.stderr or "training loss is nan at step" in r.stderr, r.stderr
    assert not (out / "best").exists() and not (out / "metrics.json").exists()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.isdigit()]


@pytest.mark.slow  # needs the reference run
def test_eval_refuses_another_task_and_a_bare_merge(setup, reference, tmp_path, capsys):
    from jadapt import tree
    from jadapt.checkpoint import load_adapter, save_adapter
    from jadapt.cli import main

    common = ["--data-dir", str(setup["data"]), "--max-length", "32", "--batch-size", "8"]
    assert main(["eval", "--checkpoint", str(reference / "best"), "--task", "mrpc", *common,
                 "--out", str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert "trained on 'rte' (nli), not 'mrpc' (paraphrase)" in err and "--allow-task-mismatch" in err and err.count("\n") == 1
    assert main(["eval", "--checkpoint", str(reference / "best"), "--task", "mrpc", "--allow-task-mismatch",
                 *common, "--out", str(tmp_path / "e2")]) == 0
    params, meta = load_adapter(reference / "best")
    flat = {k: v for k, v in tree.flatten(params).items() if not k.startswith("head/")}
    merged = {k: v for k, v in meta.items() if k not in ("head", "metrics", "task")}
    save_adapter(tmp_path / "merge", tree.unflatten(flat), {**merged, "head": None, "merge": {"method": "avg"}})
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "merge"), "--task", "rte", *common,
                 "--out", str(tmp_path / "e3")]) == 2
    err = capsys.readouterr().err
    assert "merge of adapters" in err and "--init-adapter" in err and err.count("\n") == 1
