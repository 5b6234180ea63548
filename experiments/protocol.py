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


def main_metric_fn(task):
    """``fn(predictions, labels)`` -> the task's main metric: what a row bootstrap recomputes."""
    from jadapt import data
    from jadapt.train.metrics import compute_metrics

    spec = data.get_task(task)
    return lambda p, y: compute_metrics(spec, p, y, np.ones(len(y)))[spec.main_metric]


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


# ------------------------------------------------------------------ per-row predictions
def pack_predictions(preds: np.ndarray, regression: bool) -> str:
    """A run's per-row dev predictions as text for its JSONL line (class ids as bytes,
    regression outputs as float16): what the row bootstrap of a metric needs, small enough
    to keep for every run."""
    p = np.asarray(preds)
    return (p.astype(np.float16) if regression else p.astype(np.uint8)).tobytes().hex()


def unpack_predictions(text: str, regression: bool) -> np.ndarray:
    raw = bytes.fromhex(text)
    return np.frombuffer(raw, np.float16).astype(np.float64) if regression else np.frombuffer(raw, np.uint8).astype(int)


def bootstrap_seeds_rows(stat, n_seeds: int, n_rows: int, reps: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """(mean over seeds of ``stat(i, rows)``, 2.5 %, 97.5 %): each resample draws seeds and
    evaluation rows with replacement; ``stat(seed index, row indices)`` recomputes a seed's
    number (a metric difference, a spread difference) on the drawn rows."""
    allrows = np.arange(n_rows)
    point = float(np.mean([stat(i, allrows) for i in range(n_seeds)]))
    rng = np.random.default_rng(seed)
    boots = np.empty(reps)
    for k in range(reps):
        seeds, rows = rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_rows, n_rows)
        per = {i: stat(i, rows) for i in set(seeds.tolist())}
        boots[k] = np.mean([per[i] for i in seeds])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)


def bootstrap_metric_diff(a: np.ndarray, b: np.ndarray, labels: np.ndarray, metric, reps: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:
    """(mean over seeds of metric(A) - metric(B), 2.5 %, 97.5 %) for metrics that are not a
    mean over rows (F1, Matthews, Pearson): ``a``, ``b`` are per-row predictions ``[seeds,
    rows]`` paired by seed (same subset, same init) and row; the metric is recomputed on
    every resample's rows."""
    a, b, y = np.asarray(a), np.asarray(b), np.asarray(labels)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != len(y):
        raise ValueError(f"paired predictions must be [seeds, rows] of one shape with one label per row, got "
                         f"{a.shape}, {b.shape} and {y.shape}")
    return bootstrap_seeds_rows(lambda i, r: metric(a[i, r], y[r]) - metric(b[i, r], y[r]), a.shape[0], a.shape[1],
                                reps, seed)


def bootstrap_seed_diff(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean of A - B, 2.5 %, 97.5 %) for one number per seed (a drop, a spread): seeds
    resampled. With 3 seeds the interval is coarse; the sign count beside it is the plainer
    summary."""
    a, b = np.asarray(a, float).reshape(-1, 1), np.asarray(b, float).reshape(-1, 1)
    return bootstrap_diff(a, b, reps, seed)


def sign_count(a: np.ndarray, b: np.ndarray) -> str:
    """"A > B in k of n seeds"."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return f"{int((d > 0).sum())}/{len(d)}"


def loss_curve(losses, points: int = 40) -> list[float]:
    """The per-step training loss averaged over ``points`` equal windows (what reports plot to
    show whether a budget was long enough)."""
    if not len(losses):
        return []
    chunks = np.array_split(np.asarray(losses, float), min(points, len(losses)))
    return [round(float(c.mean()), 4) for c in chunks]


def flattened(curve, tail: float = 0.2, tol: float = 0.05) -> bool:
    """Whether a loss curve has flattened: the mean of its last ``tail`` share is within ``tol``
    (relative, of the curve's first value) of the mean of the ``tail`` share before it."""
    c = np.asarray(curve, float)
    k = max(1, int(round(tail * len(c))))
    if len(c) < 2 * k or not c[0]:
        return False
    return abs(c[-2 * k:-k].mean() - c[-k:].mean()) <= tol * abs(c[0])
