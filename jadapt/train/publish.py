"""What a training run shows: ``best/`` + ``best_metrics.json`` (switched together) and ``metrics.json``.

``best`` is a symlink to a complete hidden folder ``.best-<step>-<id>/`` that holds the
adapter checkpoint and its ``best_metrics.json``; ``<out>/best_metrics.json`` is a link
through ``best``. A new best is written in full beside the old one, then published by one
atomic ``os.replace`` of the link: a reader, or a crash, sees the old adapter with the old
metrics or the new with the new, never one of each.

The train checkpoint records the eval history and the best step (``jadapt.train.loop``):
it is the truth, and the links follow it. A folder the link no longer names is deleted only
after a checkpoint recorded the new best, since a restart from the checkpoint before may
need the old one back (``reconcile_best``).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from jadapt.checkpoint import files, save_adapter
from jadapt.faults import fault_point

BEST = "best"
BEST_METRICS = "best_metrics.json"


def publish_best(out: Path, step: int, params: Mapping[str, Any], metadata: Mapping[str, Any],
                 metrics: Mapping[str, Any]) -> Path:
    """Write the adapter of ``step`` with its metrics, then make ``best`` name it."""
    name = f".best-{int(step)}-{uuid.uuid4().hex[:8]}"
    folder = save_adapter(out / name, params, {**metadata, "metrics": dict(metrics)})
    files.write_json(folder / BEST_METRICS, dict(metrics))
    fault_point("best-written")
    _point_best_at(out, name)
    fault_point("best-swapped")
    return folder


def _replace_link(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.link-{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _point_best_at(out: Path, name: str) -> None:
    best = out / BEST
    if best.is_dir() and not best.is_symlink():  # a folder written before best was a link
        os.rename(best, out / f".best-legacy-{uuid.uuid4().hex[:8]}")
    _replace_link(name, best)
    if not (out / BEST_METRICS).is_symlink():
        _replace_link(f"{BEST}/{BEST_METRICS}", out / BEST_METRICS)
    files.fsync_dir(out)


def best_step(folder: Path) -> Optional[int]:
    """The step whose adapter ``folder`` holds (from its ``best_metrics.json``), or None."""
    try:
        return int(json.loads((folder / BEST_METRICS).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reconcile_best(out: Path, step: Optional[int]) -> None:
    """Make ``best`` name the adapter of ``step``, the best that the checkpoint a run resumes
    from records (None: no eval recorded yet, so no ``best``), and delete the other folders.

    A crash between publishing a best and checkpointing it leaves ``best`` ahead of the
    checkpoint; the resumed run redoes those steps (bitwise) and publishes the same adapter
    again, and until then ``best`` must not show what the checkpoint has not reached.
    """
    best = out / BEST
    if step is None:
        for p in (best, out / BEST_METRICS):
            if p.is_symlink():
                p.unlink()
        remove_losers(out)
        return
    if not (best.is_symlink() and best_step(best) == step):
        found = [p for p in out.glob(".best-*") if p.is_dir() and best_step(p) == step]
        if found:
            _point_best_at(out, found[0].name)
        elif best.is_symlink() or not best.exists():
            files.notice(f"{out}: the best adapter (step {step}) recorded by the checkpoint is missing; "
                         f"{BEST}/ will be written at the next better dev evaluation")
    remove_losers(out)


def remove_losers(out: Path) -> None:
    """Delete best folders that ``best`` does not name, and leftovers of interrupted writes."""
    best = out / BEST
    keep = os.readlink(best) if best.is_symlink() else None
    for pattern in (".best-*", "..best-*", f".{BEST}.link-*", f".{BEST_METRICS}.link-*"):
        for p in out.glob(pattern):
            if p.name == keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
