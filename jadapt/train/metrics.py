"""Task metrics in plain numpy: accuracy, binary F1, Matthews correlation, Pearson, Spearman.

``compute_metrics(spec, predictions, labels, weights)`` returns the task's metrics under
plain names (``"accuracy"``, ``"f1"``, ``"matthews"``, ``"pearson"``, ``"spearman"``) and,
where GLUE reports two numbers (MRPC, QQP, STS-B), their mean as ``"combined"``.
``spec.metrics[0]`` is the one to select the best dev checkpoint by.

Undefined values follow sklearn's ``zero_division=0`` convention: F1 with no positive
predictions or labels, Matthews and the correlations with a constant input are 0.0 (scipy
would return NaN, which would never win a best-dev comparison and poisons averages).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D and the same shape")
    if not len(p):
        raise ValueError("metrics need at least one example")
    return p, y


def accuracy(predictions, labels) -> float:
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions, labels, positive: int = 1) -> float:
    """Binary F1 of class ``positive``: 2 tp / (2 tp + fp + fn)."""
    p, y = _pair(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def matthews(predictions, labels) -> float:
    """Matthews correlation (multi-class form; equals the binary phi coefficient)."""
    p, y = _pair(predictions, labels)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    yi, pi = inv[: len(y)], inv[len(y):]
    conf = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(conf, (yi, pi), 1.0)
    t, q = conf.sum(1), conf.sum(0)
    s, c = conf.sum(), np.trace(conf)
    denom = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denom) if denom else 0.0


def pearson(predictions, labels) -> float:
    p, y = _pair(predictions, labels)
    p, y = p.astype(np.float64) - p.mean(), y.astype(np.float64) - y.mean()
    denom = np.sqrt((p @ p) * (y @ y))
    return float(np.clip((p @ y) / denom, -1.0, 1.0)) if denom else 0.0


def rankdata(x) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (scipy's ``rankdata`` 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    return ranks


def spearman(predictions, labels) -> float:
    p, y = _pair(predictions, labels)
    return pearson(rankdata(p), rankdata(y))


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: Any, predictions, labels, weights=None) -> dict[str, float]:
    """The task's metrics over the rows whose weight is > 0 (batch filler rows have 0).

    ``task``: a TaskSpec or task name. ``predictions``: class ids ``[N]`` or logits
    ``[N, num_labels]`` (argmax taken) for classification; scores ``[N]`` or ``[N, 1]`` for
    regression. ``weights`` act as a mask, not as example weights.
    """
    from jadapt.data.tasks import get_task

    spec = get_task(task)
    p, y = np.asarray(predictions), np.asarray(labels)
    if spec.regression:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
    elif p.ndim == 2:
        if p.shape[1] != spec.num_labels:
            raise ValueError(f"task {spec.name}: logits have {p.shape[1]} classes, expected {spec.num_labels}")
        p = p.argmax(-1)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"task {spec.name}: predictions {np.shape(predictions)} do not match labels {y.shape}")
    if weights is not None:
        w = np.asarray(weights)
        if w.shape != y.shape:
            raise ValueError(f"task {spec.name}: weights {w.shape} do not match labels {y.shape}")
        keep = w > 0
        p, y = p[keep], y[keep]
    if not len(y):
        raise ValueError(f"task {spec.name}: no examples with weight > 0 to score")
    out = {name: METRICS[name](p, y) for name in spec.metrics}
    if len(spec.metrics) > 1:
        out["combined"] = float(np.mean([out[m] for m in spec.metrics]))
    return out
