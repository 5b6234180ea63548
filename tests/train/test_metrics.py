"""jadapt.train.metrics against scipy and textbook formulas written out independently."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from jadapt.train import metrics as M


def rand_classes(n, k, seed, agree=0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < agree, y, rng.integers(0, k, n))
    return p, y


def mcc_by_covariance(p, y, k):
    """Gorodkin's R_K: cov(P, Y) / sqrt(cov(P, P) cov(Y, Y)) over one-hot matrices."""
    P, Y = np.eye(k)[p], np.eye(k)[y]
    P, Y = P - P.mean(0), Y - Y.mean(0)
    return np.sum(P * Y) / np.sqrt(np.sum(P * P) * np.sum(Y * Y))


@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_match_counts(seed):
    p, y = rand_classes(200, 2, seed)
    tp = sum(1 for a, b in zip(p, y) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(p, y) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(p, y) if a == 1 and b == 0)
    fn = sum(1 for a, b in zip(p, y) if a == 0 and b == 1)
    assert M.accuracy(p, y) == pytest.approx((tp + tn) / 200)
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    assert M.f1(p, y) == pytest.approx(2 * prec * rec / (prec + rec))
    phi = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews(p, y) == pytest.approx(phi)
    assert M.f1(p, y, positive=0) == pytest.approx(2 * tn / (2 * tn + fn + fp))


@pytest.mark.parametrize("k,seed", [(3, 0), (3, 1), (5, 2)])
def test_multiclass_matthews(k, seed):
    p, y = rand_classes(300, k, seed)
    assert M.matthews(p, y) == pytest.approx(mcc_by_covariance(p, y, k))
    assert M.matthews(y, y) == pytest.approx(1.0)


def test_degenerate_cases_are_zero_not_nan():
    y = np.array([0, 1, 1, 0])
    assert M.matthews(np.zeros(4, int), y) == 0.0  # constant prediction
    assert M.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0  # no positives anywhere
    assert M.pearson(np.ones(4), y) == 0.0 and M.spearman(np.ones(4), y) == 0.0
    assert M.matthews(1 - y, y) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least one"):
        M.accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="same shape"):
        M.accuracy(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("seed", range(4))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(0, 5, 150), 1)  # many ties, like STS-B
    p = (y + rng.normal(0, 1.5, 150)).astype(np.float32)
    if seed % 2:
        p = np.round(p)  # ties in predictions too
    assert M.pearson(p, y) == pytest.approx(scipy.stats.pearsonr(p.astype(np.float64), y)[0], abs=1e-9)
    assert M.spearman(p, y) == pytest.approx(scipy.stats.spearmanr(p, y)[0], abs=1e-9)
    np.testing.assert_array_equal(M.rankdata(p), scipy.stats.rankdata(p))


def test_compute_metrics_names_and_combined():
    from jadapt.data import get_task

    p, y = rand_classes(100, 2, 7)
    mrpc = M.compute_metrics("mrpc", p, y)
    assert set(mrpc) == {"accuracy", "f1", "combined"}
    assert mrpc["combined"] == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2)
    assert set(M.compute_metrics(get_task("cola"), p, y)) == {"matthews"}
    assert set(M.compute_metrics("sst2", p, y)) == {"accuracy"}
    rng = np.random.default_rng(0)
    s = rng.normal(size=50)
    pred = s + rng.normal(size=50)
    stsb = M.compute_metrics("stsb", pred[:, None], s)  # [N, 1] regression output
    assert set(stsb) == {"pearson", "spearman", "combined"}
    assert stsb["pearson"] == pytest.approx(scipy.stats.pearsonr(pred, s)[0])
    assert stsb["spearman"] == pytest.approx(scipy.stats.spearmanr(pred, s)[0])
    assert stsb["combined"] == pytest.approx((stsb["pearson"] + stsb["spearman"]) / 2)
    for v in (*mrpc.values(), *stsb.values()):
        assert isinstance(v, float)


def test_compute_metrics_logits_and_weights():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    w = (rng.random(40) < 0.7).astype(np.float32)
    got = M.compute_metrics("mnli", logits, y, w)["accuracy"]
    keep = w > 0
    assert got == pytest.approx(np.mean(logits.argmax(1)[keep] == y[keep]))
    # filler rows (weight 0) cannot change the result, whatever they hold
    junk = np.concatenate([logits, rng.normal(size=(8, 3))]), np.concatenate([y, np.zeros(8, int)])
    assert M.compute_metrics("mnli", *junk, np.concatenate([w, np.zeros(8)]))["accuracy"] == pytest.approx(got)
    with pytest.raises(ValueError, match="mnli.*2 classes, expected 3"):
        M.compute_metrics("mnli", logits[:, :2], y)
    with pytest.raises(ValueError, match="mnli.*no examples"):
        M.compute_metrics("mnli", logits, y, np.zeros(40))
    with pytest.raises(ValueError, match="weights"):
        M.compute_metrics("mnli", logits, y, np.ones(39))
