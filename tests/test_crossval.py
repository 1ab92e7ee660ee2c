"""cxrcore.crossval: patient-grouped folds, OOF pooling, epoch choice."""
from __future__ import annotations

import numpy as np
import pytest

from cxrcore import crossval


def _toy(n_patients=120, per=3, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per)
    y = (rng.random((len(groups), labels)) < [0.3, 0.2, 0.1, 0.05, 0.02]).astype(float)
    return groups, y


def test_no_patient_in_two_folds_and_every_fold_used():
    groups, y = _toy()
    folds = crossval.patient_folds(groups, y, k=5, seed=1)
    assert set(folds) == set(range(5))
    for p in np.unique(groups):
        assert len(set(folds[groups == p])) == 1


def test_rare_label_positives_spread_over_folds():
    groups, y = _toy()
    folds = crossval.patient_folds(groups, y, k=5)
    rare = [y[folds == f, 4].sum() for f in range(5)]
    assert max(rare) - min(rare) <= max(2, 0.5 * np.mean(rare))  # a random split puts them anywhere


def test_folds_are_seeded():
    groups, y = _toy()
    assert np.array_equal(crossval.patient_folds(groups, y, seed=3), crossval.patient_folds(groups, y, seed=3))
    assert not np.array_equal(crossval.patient_folds(groups, y, seed=3), crossval.patient_folds(groups, y, seed=4))


def test_too_few_patients_is_an_error():
    with pytest.raises(ValueError, match="at least 5 patients"):
        crossval.patient_folds(np.array([1, 1, 2, 3]), np.zeros((4, 1)))


def test_pool_oof_restores_image_order():
    folds = np.array([1, 0, 1, 0, 2])
    per_fold = [np.array([[10.0], [30.0]]), np.array([[0.0], [20.0]]), np.array([[40.0]])]
    assert crossval.pool_oof(folds, per_fold)[:, 0].tolist() == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError, match="no out-of-fold"):
        crossval.pool_oof(folds, per_fold[:2])
    with pytest.raises(ValueError, match="fold 2 scores 0 images but holds 1"):
        crossval.pool_oof(folds, per_fold[:2] + [np.empty((0, 1))])


def test_choose_epochs_ignores_a_single_lucky_epoch():
    auc = np.array([0.60, 0.62, 0.64, 0.65, 0.66, 0.80, 0.55, 0.55, 0.55])  # epoch 6 alone is high
    assert crossval.choose_epochs(auc, smooth=1) == 6
    assert crossval.choose_epochs(auc, smooth=3) == 5
