"""The statistics every study reports by: a held-out split for choosing learning rates,
trivial baselines, paired bootstrap intervals and the one rule that turns an interval into
a verdict.

Why one module: a reader compares verdicts across studies, so "reproduced" has to mean the
same thing in each (the 95 % interval of a paired difference excludes 0), the baselines have
to be computed the same way, and no study may choose its rates on the dev set it reports.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

HELDOUT_SEED = 1234  # one fixed draw: every method and seed chooses its rate on the same rows


def heldout_split(pool: Mapping[str, np.ndarray], n: int, seed: int = HELDOUT_SEED) -> tuple[dict, dict]:
    """(train, held-out) columns: ``n`` rows of the training data set aside by one seeded draw,
    for choosing each method's learning rate (the reported dev set is never used for that)."""
    from jadapt import data

    total = data.num_rows(pool)
    if not 0 < n < total:
        raise ValueError(f"a held-out split of {n} rows needs 0 < n < {total} (the training rows)")
    order = np.random.default_rng(seed).permutation(total)
    return data.take(pool, np.sort(order[n:])), data.take(pool, np.sort(order[:n]))


def majority_baseline(task, labels: np.ndarray) -> dict[str, float]:
    """What predicting without reading the input scores on ``labels``: the majority class's
    accuracy (and Matthews 0, F1 of always predicting it); for a task whose first metric is F1
    (MRPC, QQP) also "f1": always predicting the positive class, the stronger trivial F1.
    Regression tasks: a constant has no correlation, reported as 0."""
    from jadapt import data

    spec = data.get_task(task)
    if spec.regression:
        return {m: 0.0 for m in spec.metrics}
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=spec.num_labels)
    majority = int(counts.argmax())
    out = {"accuracy": float(counts[majority] / counts.sum()), "majority_label": majority}
    if "matthews" in spec.metrics:
        out["matthews"] = 0.0
    if "f1" in spec.metrics and spec.num_labels == 2:
        positives = int(counts[1])
        out["f1"] = float(2 * positives / (positives + counts.sum())) if positives else 0.0  # always 1
    return out


def bootstrap_diff(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean of A - B, 2.5 %, 97.5 %): ``a``, ``b`` are ``[seeds, values per seed]`` paired by
    seed and by value (same rows, same subsets); seeds and values are resampled together."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired scores must be [seeds, values] of one shape, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    diff = a - b
    s, v = diff.shape
    boots = np.array([diff[rng.integers(0, s, s)][:, rng.integers(0, v, v)].mean() for _ in range(reps)])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def verdict(ci: tuple[float, float, float]) -> str:
    """The one rule: "reproduced" only where the interval of (claimed better - other) is above
    0, "reversed" where it is below, else "not reproduced"."""
    _, lo, hi = ci
    return "reproduced" if lo > 0 else "reversed" if hi < 0 else "not reproduced"


def fmt_ci(ci: tuple[float, float, float], scale: float = 100.0) -> str:
    return f"{scale * ci[0]:+.1f} [{scale * ci[1]:+.1f}, {scale * ci[2]:+.1f}]"


def choose_rate(heldout_scores: Mapping[float, list[float]]) -> tuple[float, Optional[str]]:
    """(the rate with the best mean held-out score, a warning when it lies at an end of the
    grid: the best rate may lie outside what was tried)."""
    if not heldout_scores:
        raise ValueError("no held-out scores to choose a rate from")
    rates = sorted(heldout_scores)
    best = max(rates, key=lambda r: (float(np.mean(heldout_scores[r])), -r))
    edge = None
    if len(rates) > 1 and best in (rates[0], rates[-1]):
        edge = f"rate {best:g} is at the {'top' if best == rates[-1] else 'bottom'} of the grid {rates}"
    return best, edge
