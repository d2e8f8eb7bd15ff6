"""Metrics: gAUC against scikit-learn's AUC per group, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankers.metrics import group_auc


def _reference(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float:
    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], p[m])
            den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_auc_is_the_impression_weighted_mean_of_per_group_aucs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    groups = rng.integers(0, 200, n) * 7 - 50  # unsorted, negative, with gaps
    p = np.round(rng.random(n), 1)  # many ties, within and across groups
    y = (rng.random(n) < 0.2 + 0.5 * p).astype(float)
    y[groups == groups[0]] = 1.0  # a group with one class only: skipped
    assert group_auc(y, p, groups) == pytest.approx(_reference(y, p, groups), abs=1e-12)


def test_group_auc_weights_groups_by_impressions() -> None:
    y = np.array([1, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.6, 0.9, 0.5, 0.5])  # group a: AUC 1 (2 rows); group b: 2/3 (4 rows)
    groups = np.array(["a", "a", "b", "b", "b", "b"])
    assert group_auc(y, p, groups) == pytest.approx((2 * 1.0 + 4 * 2 / 3) / 6)


def test_group_auc_without_a_group_of_both_classes_is_none() -> None:
    assert group_auc(np.array([1.0, 0.0]), np.array([0.3, 0.4]), np.array([1, 2])) is None
    assert group_auc(np.array([]), np.array([]), np.array([])) is None
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        group_auc(np.array([1.0, 0.0]), np.array([0.3]), np.array([1, 2]))
