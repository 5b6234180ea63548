"""One run folder (``--out``), one run: its lock, its stored settings, starting over.

A run folder is resumed by rerunning the same command, so the folder has to know what
"the same" is: ``run_config.json`` holds the settings that decide the result, and a
rerun with other ones is refused (naming the fields) instead of silently continuing, or
reporting, the old run under the new settings. ``--restart`` moves the old run aside.

Two processes writing one folder corrupt each other's checkpoints, so a run holds an
``fcntl.flock`` on ``<out>/.lock`` from start to end; the file names the holder (pid, host,
start time) for the message a second run gets. The kernel drops the lock when its process
dies, however it dies, so a lock left by a killed run is taken over (with a notice); the
file itself is never deleted, so two runs can never lock two different files.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from jadapt.checkpoint.files import METRICS_FILE as METRICS
from jadapt.checkpoint.files import notice

LOCK = ".lock"
CONFIG = "run_config.json"
# Settings that change how a run is carried out or where it reads from, not what it computes:
# a rerun may change them and still resume (max_steps: stopping early and going on is resuming).
RUNTIME_FIELDS = frozenset({"out", "data_dir", "max_steps", "eval_batch_size", "save_every", "progress", "remat",
                            "compile_ahead", "sharding", "restart"})
_PATH_FIELDS = ("model", "init_adapter")


def prepare_out(out: Path) -> Path:
    """Create ``out``; one ``ValueError`` naming ``--out`` where that is impossible."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"--out {out}: exists and is not a directory") from None
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write there (read-only file system or no permission)")
    return out


# ---------------------------------------------------------------- the lock
class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` for the block (``enabled=False``: no-op,
    for the non-coordinating processes of a multi-host run)."""

    def __init__(self, out: Path, enabled: bool = True):
        self.path, self.enabled, self._fd = Path(out) / LOCK, enabled, None

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"--out {self.path.parent}: cannot write there ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise ValueError(f"--out {self.path.parent}: cannot lock {self.path} ({e.strerror or e})") from None
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise ValueError(f"--out {self.path.parent} is in use by another jadapt run ({holder}); "
                             f"wait for it, or give another --out") from None
        stale = _read_holder(fd)
        if stale:
            notice(f"--out {self.path.parent}: taking over the lock of a run that is gone ({_describe(stale)})")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv[1:]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # empty = free; a kill leaves the holder's line (stale, noticed)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> Optional[dict]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "?"}


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


# ---------------------------------------------------------------- the stored settings
def _settings(config: dict) -> dict:
    """The settings that decide a run's result, JSON-shaped, paths made absolute."""
    from jadapt.checkpoint.files import finite_json

    out = finite_json({k: v for k, v in config.items() if k not in RUNTIME_FIELDS})[0]  # as run_config.json has it
    for k in _PATH_FIELDS:
        if isinstance(out.get(k), str) and os.path.exists(out[k]):
            out[k] = os.path.abspath(out[k])
    if out.get("fusion_adapters"):
        out["fusion_adapters"] = [os.path.abspath(p) if os.path.exists(p) else p for p in out["fusion_adapters"]]
    return out


def stored_settings(out: Path) -> Optional[dict]:
    """The settings the run in ``out`` was started with (``run_config.json``; for folders
    from before it, the config in ``metrics.json``), or None for a new folder."""
    for name, key in ((CONFIG, None), (METRICS, "config")):
        f = out / name
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"--out {out}: {name} is unreadable ({e}); pass --restart to start over") from None
            data = data.get(key) if key else data
            if isinstance(data, dict):
                return data
    return None


def differences(stored: dict, cfg) -> list[str]:
    """``name stored -> now`` for every result-deciding field that differs; a field the stored
    config lacks (written by an older jadapt) counts as its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    old, new = _settings(stored), _settings(cfg.to_dict())
    diffs = []
    for k, v in new.items():
        was = old.get(k, _settings({k: defaults.get(k)}).get(k))
        if was != v:
            diffs.append(f"{k} {was!r} -> {v!r}")
    return diffs


def move_aside(out: Path) -> Optional[Path]:
    """Move everything in ``out`` but the lock into a new sibling ``<out>.old-<time>``."""
    entries = [p for p in out.iterdir() if p.name != LOCK]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.old-{stamp}-{n}")
    try:
        aside.mkdir()
        for p in entries:
            os.rename(p, aside / p.name)
    except OSError as e:
        raise ValueError(f"--restart: cannot move the previous run in {out} aside to {aside} "
                         f"({e.strerror or e})") from None
    return aside


def open_run(out: Path, cfg, *, write: bool = True) -> Optional[dict]:
    """Check ``cfg`` against the run already in ``out`` (or start over: ``cfg.restart``).

    Returns the stored result when ``out`` holds this very run, finished (nothing is
    retrained); None when the caller should train (from scratch or resuming).
    """
    if cfg.restart and write:
        aside = move_aside(out)
        if aside is not None:
            notice(f"--restart: moved the previous run in {out} aside to {aside}")
    stored = stored_settings(out)
    if stored is not None:
        diffs = differences(stored, cfg)
        if diffs:
            raise ValueError(f"--out {out} holds a run with other settings ({'; '.join(diffs)}); rerun it with "
                             f"its settings to resume it, or pass --restart to move it aside and start over")
        done = finished_result(out)
        if done is not None:
            notice(f"{out} already holds this run, finished at step {done.get('steps')}: reporting its stored "
                   f"result (pass --restart to train again)")
            return done
    if write:
        from jadapt.checkpoint import files

        tmp = out / f".{CONFIG}.tmp"
        files.write_json(tmp, cfg.to_dict())
        os.replace(tmp, out / CONFIG)
    return None


def finished_result(out: Path) -> Optional[dict[str, Any]]:
    f = out / METRICS
    if not f.is_file():
        return None
    try:
        result = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("finished") else None
