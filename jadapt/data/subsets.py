"""Seeded subsets for low-resource runs: n random rows, or k rows per class.

Both work on any column dict (raw ``Rows`` with ``"label"`` or ``Encoded`` data with
``"labels"``), return rows in their original order, and depend only on (data, n or k, seed).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from jadapt.data.loading import num_rows, take
from jadapt.data.tasks import TaskSpec, get_task


def _label_column(data: Mapping[str, np.ndarray]) -> np.ndarray:
    for key in ("labels", "label"):
        if key in data:
            return np.asarray(data[key])
    raise ValueError(f"data has no 'labels' or 'label' column (columns: {sorted(data)})")


def subsample(data: Mapping[str, np.ndarray], n: int, seed: int) -> dict:
    """``n`` rows drawn without replacement (seeded)."""
    total = num_rows(data)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"subsample size must be a positive int, got {n!r}")
    if n > total:
        raise ValueError(f"cannot subsample {n} rows: only {total} available")
    idx = np.random.default_rng(seed).choice(total, size=n, replace=False)
    return take(data, np.sort(idx))


def k_shot(data: Mapping[str, np.ndarray], k: int, seed: int, num_classes: int | None = None,
           task: str | TaskSpec | None = None) -> dict:
    """``k`` rows of every class (seeded). Classes required: ``0..num_classes-1``, else the
    task's ``num_labels`` classes, else those present in ``data``; any with fewer than ``k``
    rows (absent included) is an error."""
    spec = get_task(task) if task is not None else None
    what = f"task {spec.name}: " if spec else ""
    labels = _label_column(data)
    if (spec is not None and spec.regression) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}k_shot needs integer class labels, got dtype {labels.dtype} (a regression task?)")
    if num_classes is None and spec is not None:
        num_classes = spec.num_labels
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    classes = np.arange(num_classes) if num_classes is not None else np.unique(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < k:
            raise ValueError(f"{what}k_shot: class {int(c)} has {len(pool)} rows, fewer than k={k}")
        picked.append(rng.choice(pool, size=k, replace=False))
    return take(data, np.sort(np.concatenate(picked)))
