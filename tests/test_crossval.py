"""cxrcore.crossval: patient-grouped folds, OOF pooling, epoch choice."""
from __future__ import annotations

import json

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


# ---- a real (tiny) cross-validated run -----------------------------------------------------------------------------

from cxrcore import checkpoints  # noqa: E402
from cxrcore.data import load_dataset  # noqa: E402
from cxrcore.runs import recipe  # noqa: E402

SUBSET = {"train": 60, "val": 24, "test": 20}
K, EPOCHS = 3, 2


@pytest.fixture(scope="module")
def tiny_nih(data_dir):
    return load_dataset("nih14-local").subset(SUBSET)


def _cfg():
    return recipe("vanilla_cnn", epochs=EPOCHS, batch_size=16)


@pytest.fixture(scope="module")
def cv_run(tiny_nih, tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    events = []
    card = crossval.cross_validate("vanilla_cnn", tiny_nih, _cfg(), root, "test", k=K, seed=0,
                                   progress=events.append, n_boot=20)
    return root, card, events


def test_cv_folds_are_patient_grouped_and_oof_covers_every_image_once(cv_run, tiny_nih):
    root, card, _ = cv_run
    preds = checkpoints.read_predictions(root / "vanilla_cnn")
    p = crossval.pool(tiny_nih)
    folds = preds["oof_folds"]
    assert len(folds) == len(preds["oof_probs"]) == SUBSET["train"] + SUBSET["val"]
    assert np.array_equal(preds["oof_labels"], p.labels)
    for g in np.unique(p.groups):
        assert len(set(folds[p.groups == g])) == 1
    cv = card.extra["cv"]
    assert sum(cv["fold_images"]) == len(folds) and cv["k"] == K and cv["groups"] == "patients"
    assert cv["oof_positives"] == {n: int(v) for n, v in zip(card.label_names, p.labels.sum(0))}


def test_cv_card_records_the_chosen_epoch_and_fits_on_oof(cv_run):
    root, card, _ = cv_run
    cv = card.extra["cv"]
    assert len(cv["oof_auc_by_epoch"]) == EPOCHS
    assert cv["chosen_epochs"] == crossval.choose_epochs(np.array(cv["oof_auc_by_epoch"]), cv["smooth"])
    assert card.best_epoch == card.epochs_run == cv["chosen_epochs"]
    assert cv["oof_auc_at_chosen"] == cv["oof_auc_by_epoch"][cv["chosen_epochs"] - 1]
    assert card.calibration["fitted_on"] == "oof" and card.calibration["n"] == SUBSET["train"] + SUBSET["val"]
    assert "oof" in card.metrics.extra and card.metrics.test is None  # training computes no test metric
    preds = checkpoints.read_predictions(root / "vanilla_cnn")
    assert preds["val_probs"].shape == (SUBSET["val"], 14) and preds["test_probs"].shape == (SUBSET["test"], 14)
    reread = checkpoints.read_card(root / "vanilla_cnn")
    checkpoints.verify_claims(reread, checkpoints.stored_predictions(root / "vanilla_cnn", reread))
    assert not (root / "vanilla_cnn" / crossval.CV_DIR).exists()  # the fold work is gone once the model is saved


class _Killed(Exception):
    pass


def test_a_killed_cv_run_resumes_fold_by_fold(tiny_nih, tmp_path):
    def kill(ev):
        if ev.get("done") and ev["fold"] == 1 and ev["epoch"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        crossval.cross_validate("vanilla_cnn", tiny_nih, _cfg(), tmp_path, "test", k=K, progress=kill, n_boot=20)
    assert (tmp_path / "vanilla_cnn" / crossval.CV_DIR / "fold0" / crossval.FOLD_FILE).exists()
    events = []
    card = crossval.cross_validate("vanilla_cnn", tiny_nih, _cfg(), tmp_path, "test", k=K, progress=events.append,
                                   n_boot=20)
    done = [(e["fold"], e["epoch"]) for e in events if e.get("done")]
    assert done == [(1, 1), (2, 0), (2, 1)] + [("refit", e) for e in range(card.extra["cv"]["chosen_epochs"])]


def test_calibrate_refits_a_cv_card_on_its_stored_oof_predictions(cv_run, tmp_path):
    """train/calibrate.py on a cross-validated card fits on the pooled out-of-fold raw probabilities, as training
    did (the same function), so rerunning it reproduces what training stored."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import calibrate

    root, card, _ = cv_run
    folder = tmp_path / "vanilla_cnn"
    shutil.copytree(root / "vanilla_cnn", folder)
    before = checkpoints.read_predictions(folder)
    split, _, _ = calibrate.calibrate_folder(folder, n_boot=20)
    after, again = checkpoints.read_predictions(folder), checkpoints.read_card(folder)
    assert split == "oof" and again.calibration == card.calibration
    assert again.calibration["n"] == SUBSET["train"] + SUBSET["val"]
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], atol=1e-6, err_msg=k)
    assert again.thresholds == card.thresholds and again.metrics.test is None
    written = json.loads((folder / checkpoints.CARD).read_text())["metrics"]
    assert "val_loss" not in written  # a cross-validated card has no validation loss; none is invented as null


def test_the_card_says_how_each_number_was_chosen(cv_run):
    _, card, _ = cv_run
    how = card.extra["how_chosen"]
    assert {"epochs", "calibration", "thresholds", "metrics.val", "metrics.oof", "metrics.test"} <= set(how)
    assert "out-of-fold" in how["epochs"] and "once" in how["metrics.test"]
