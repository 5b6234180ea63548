"""Two local processes x 4 CPU devices train together and match one process x 8 devices.

Each process runs tests/distributed/multihost_worker.py, joins through jadapt.distributed.initialize
(env JADAPT_COORDINATOR / JADAPT_NUM_PROCESSES / JADAPT_PROCESS_ID, a localhost coordinator
on a free port), feeds only its half of every global batch (host_shard +
make_array_from_process_local_data) and the cross-process collectives run over gloo.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jadapt import distributed, sharding, tree
from jadapt.train.optim import split

import multihost_worker as worker

WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT_S = 240

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices for the 1-process reference")
ENV = ("JADAPT_COORDINATOR", "JADAPT_NUM_PROCESSES", "JADAPT_PROCESS_ID", "JADAPT_DISTRIBUTED",
       "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri")


@pytest.fixture
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_initialize_is_a_no_op_for_one_process(clean_env):
    assert distributed.initialize() is False
    clean_env.setenv("JADAPT_COORDINATOR", "localhost:1234")
    clean_env.setenv("JADAPT_NUM_PROCESSES", "1")
    clean_env.setenv("JADAPT_PROCESS_ID", "0")
    assert distributed.initialize() is False
    clean_env.setenv("JADAPT_DISTRIBUTED", "off")
    clean_env.setenv("JADAPT_NUM_PROCESSES", "4")
    assert distributed.initialize() is False
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize("env,match", [
    ({"JADAPT_DISTRIBUTED": "yes"}, "'auto' or 'off'"),
    ({"JADAPT_COORDINATOR": "h:1"}, "num_processes"),
    ({"JADAPT_COORDINATOR": "h:1", "JADAPT_NUM_PROCESSES": "2", "JADAPT_PROCESS_ID": "2"}, r"\[0, 2\)"),
    ({"JADAPT_NUM_PROCESSES": "2", "JADAPT_PROCESS_ID": "1"}, "JADAPT_COORDINATOR"),
    ({"JADAPT_NUM_PROCESSES": "two"}, "integer"),
])
def test_initialize_rejects_incomplete_settings_before_touching_jax(clean_env, env, match):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        distributed.initialize()
    assert not jax.distributed.is_initialized()


def test_detect_cluster(clean_env):
    assert distributed.detect_cluster() is None
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t0")  # one host: nothing to join
    assert distributed.detect_cluster() is None
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    assert distributed.detect_cluster() == "tpu"
    clean_env.delenv("TPU_WORKER_HOSTNAMES")
    clean_env.setenv("SLURM_JOB_ID", "7")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.detect_cluster() is None
    clean_env.setenv("SLURM_NTASKS", "4")
    assert distributed.detect_cluster() == "slurm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, *args: str, num_processes: int = 2) -> dict:
    """Run the worker in ``num_processes`` processes; returns process 0's npz."""
    out, init = tmp_path / "result.npz", tmp_path / "params.npz"
    np.savez(init, **tree.flatten(worker.initial_params()))
    port = _free_port()
    procs = []
    for pid in range(num_processes):
        env = {**os.environ,
               "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // num_processes}",
               "JADAPT_COORDINATOR": f"localhost:{port}",
               "JADAPT_NUM_PROCESSES": str(num_processes),
               "JADAPT_PROCESS_ID": str(pid)}
        log = open(tmp_path / f"process{pid}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), "--params", str(init), *args],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for p, _ in procs:
            p.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = "\n".join(f"--- process {i} (rc {p.returncode})\n" + (tmp_path / f"process{i}.log").read_text()[-3000:]
                     for i, (p, _) in enumerate(procs))
    assert all(p.returncode == 0 for p, _ in procs), logs
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference():
    losses, trainable, _, _ = worker.train(sharding.make_mesh(), "dp")
    return np.asarray(losses), {p: np.asarray(x) for p, x in tree.flatten(trainable).items()}


@needs8
@pytest.mark.parametrize("args", [
    pytest.param((), id="dp"),
    # a 4 x 2 mesh: each process holds 2 data rows x 2 model columns; params sharded across hosts
    pytest.param(("--strategy", "fsdp+tp", "--model", "2", "--shard-adapters"), id="fsdp+tp",
                 marks=pytest.mark.slow),
])
def test_two_processes_match_one_process(tmp_path, reference, args):
    got = _launch(tmp_path, *args)
    assert int(got["process_count"]) == 2 and int(got["device_count"]) == 8
    ref_losses, ref_params = reference
    np.testing.assert_allclose(got["losses"], ref_losses, atol=1e-5, rtol=0)
    params = {k[len("param:"):]: v for k, v in got.items() if k.startswith("param:")}
    assert set(params) == set(ref_params)
    chex.assert_trees_all_close(params, ref_params, atol=1e-5, rtol=0)
    # training did move the params, so the comparison is not vacuous
    init = worker.initial_params()
    init = tree.flatten(split(init, worker.labels(init))[0])
    assert max(np.abs(params[p] - init[p]).max() for p in init) > 1e-3
