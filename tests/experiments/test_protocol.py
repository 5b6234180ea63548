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
