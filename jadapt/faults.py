"""Test-only fault injection: die (or hang) at a named moment of a run, deterministically.

The publishing code of a training run (train checkpoints, ``best/``, ``metrics.json``) calls
``fault_point(name)`` at each moment where a crash could leave the run folder half-updated.
Normally that is one environment lookup and nothing else. With

    JADAPT_FAULT_AT=<name>:<n>          the n-th time ``name`` is reached: SIGKILL this process
    JADAPT_FAULT_AT=<name>:<n>:pause    the n-th time: sleep until killed (holds the run's lock)

a test can kill a real ``jadapt train`` subprocess exactly there (no cleanup handler runs,
as with ``kill -9`` or a lost machine) and check what a restart makes of the folder.
The names in use are listed in ``POINTS``.
"""
from __future__ import annotations

import os
import signal
import time

ENV = "JADAPT_FAULT_AT"
POINTS = (
    "run-start",          # lock taken, nothing written yet
    "train-checkpoint",   # inside a train checkpoint write: items written, step not committed
    "best-written",       # a new best adapter folder is complete, ``best`` still names the old one
    "best-swapped",       # ``best`` names the new folder; the checkpoint recording it is not written
    "epoch-checkpoint",   # right after the checkpoint of an epoch's last step
    "metrics",            # the final checkpoint is written, ``metrics.json`` not yet
)
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    n, _, action = rest.partition(":")
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(n or 1):
        return
    if action == "pause":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
