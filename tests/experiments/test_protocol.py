"""The studies' shared statistics: held-out split, trivial baselines, paired intervals, verdicts."""
from __future__ import annotations

import numpy as np
import pytest

from experiments import protocol


def test_bootstrap_interval_covers_a_true_gap_and_is_antisymmetric():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 400)) < 0.7).astype(float)
    b = (rng.random((3, 400)) < 0.5).astype(float)
    point, lo, hi = protocol.bootstrap_diff(a, b, 500)
    assert lo < point < hi and 0.05 < lo and hi < 0.35  # a true gap of 0.2
    assert protocol.bootstrap_diff(a, a, 200) == (0.0, 0.0, 0.0)
    p2, lo2, hi2 = protocol.bootstrap_diff(b, a, 500)
    assert p2 == pytest.approx(-point) and hi2 < 0
    with pytest.raises(ValueError, match="paired"):
        protocol.bootstrap_diff(a, b[:2], 10)


def test_verdict_needs_the_interval_to_exclude_zero():
    assert protocol.verdict((0.02, 0.001, 0.04)) == "reproduced"
    assert protocol.verdict((0.02, -0.001, 0.04)) == "not reproduced"
    assert protocol.verdict((-0.02, -0.04, -0.001)) == "reversed"
    assert protocol.fmt_ci((0.0123, -0.004, 0.03)) == "+1.2 [-0.4, +3.0]"


def test_majority_baselines():
    mrpc = np.array([1] * 68 + [0] * 32)
    b = protocol.majority_baseline("mrpc", mrpc)
    assert b["accuracy"] == pytest.approx(0.68) and b["majority_label"] == 1
    assert b["f1"] == pytest.approx(2 * 68 / (2 * 68 + 32))  # always "paraphrase": precision .68, recall 1
    sst = protocol.majority_baseline("sst2", np.array([0, 0, 0, 1]))
    assert sst["accuracy"] == 0.75 and "f1" not in sst
    assert protocol.majority_baseline("cola", np.array([1, 1, 0]))["matthews"] == 0.0
    assert protocol.majority_baseline("stsb", np.array([0.5, 2.0])) == {"pearson": 0.0, "spearman": 0.0}


def test_choose_rate_by_mean_heldout_score_and_flags_the_grid_edge():
    rate, edge = protocol.choose_rate({1e-4: [0.6, 0.62], 3e-4: [0.7, 0.69], 1e-3: [0.65, 0.66]})
    assert rate == 3e-4 and edge is None
    rate, edge = protocol.choose_rate({1e-4: [0.6], 3e-4: [0.7]})
    assert rate == 3e-4 and "top" in edge


def test_heldout_split_is_one_fixed_disjoint_draw():
    pool = {"input_ids": np.arange(50)[:, None] * np.ones((1, 4), int), "labels": np.arange(50) % 2}
    train, held = protocol.heldout_split(pool, 10)
    train2, held2 = protocol.heldout_split(pool, 10)
    assert np.array_equal(held["input_ids"], held2["input_ids"])
    assert len(held["labels"]) == 10 and len(train["labels"]) == 40
    assert not set(held["input_ids"][:, 0]) & set(train["input_ids"][:, 0])
    with pytest.raises(ValueError, match="0 < n < 50"):
        protocol.heldout_split(pool, 50)


def test_predictions_pack_round_trip():
    labels = np.array([0, 2, 1, 1, 0])
    assert np.array_equal(protocol.unpack_predictions(protocol.pack_predictions(labels, False), False), labels)
    scores = np.array([0.0, 1.25, 4.999, 2.5])
    back = protocol.unpack_predictions(protocol.pack_predictions(scores, True), True)
    assert np.allclose(back, scores, atol=3e-3)  # float16


def test_bootstrap_metric_diff_recomputes_the_metric_per_resample():
    from jadapt.train.metrics import f1

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    better = np.stack([np.where(rng.random(400) < 0.85, y, 1 - y) for _ in range(3)])
    worse = np.stack([np.where(rng.random(400) < 0.6, y, 1 - y) for _ in range(3)])
    point, lo, hi = protocol.bootstrap_metric_diff(better, worse, y, f1, 300)
    assert lo < point < hi and lo > 0.1
    assert point == pytest.approx(np.mean([f1(better[i], y) - f1(worse[i], y) for i in range(3)]))
    assert protocol.verdict(protocol.bootstrap_metric_diff(worse, better, y, f1, 300)) == "reversed"
    with pytest.raises(ValueError, match="paired"):
        protocol.bootstrap_metric_diff(better, worse[:2], y, f1, 10)


def test_seed_diffs_sign_counts_and_flattened_curves():
    point, lo, hi = protocol.bootstrap_seed_diff([3.0, 2.0, 4.0], [1.0, 1.0, 1.0], 300)
    assert point == pytest.approx(2.0) and lo >= 1.0 and hi <= 3.0
    assert protocol.sign_count([3, 0, 4], [1, 1, 1]) == "2/3"
    assert protocol.loss_curve([4.0, 2.0, 1.0, 1.0], points=2) == [3.0, 1.0]
    assert protocol.flattened([2.0, 1.0, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert not protocol.flattened([2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert not protocol.flattened([1.0])
