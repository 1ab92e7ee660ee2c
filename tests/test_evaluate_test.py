"""cxrcore.evaluation and train/evaluate_test.py: training reads no test label, on either path; the test split is
read once, afterwards, and only when asked."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import evaluate_test  # noqa: E402

from cxrcore import checkpoints, crossval, evaluation, metrics  # noqa: E402
from cxrcore.data import load_dataset  # noqa: E402
from cxrcore.runs import build_ensemble, recipe, train_one  # noqa: E402

SUBSET = {"train": 48, "val": 18, "test": 24}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """One cross-validated and one single-split model of the same data, and their ensemble, none evaluated."""
    data = load_dataset("nih14-local").subset(SUBSET)
    root = tmp_path_factory.mktemp("cv")
    cfg = recipe("vanilla_cnn", epochs=1, batch_size=16)
    crossval.cross_validate("vanilla_cnn", data, cfg, root, "test", k=2, n_boot=20)
    train_one("cnn_small", data, recipe("cnn_small", epochs=1, batch_size=16), root, "test", n_boot=20)
    members = [checkpoints.Checkpoint(root / i, checkpoints.read_card(root / i)) for i in ("vanilla_cnn", "cnn_small")]
    build_ensemble(members, root / "ensemble", "test", n_boot=20, groups=data.extras["patients"])
    return root, data


@pytest.mark.parametrize("model_id", ["vanilla_cnn", "cnn_small", "ensemble"])
def test_training_and_ensembling_compute_no_test_metric(trained, model_id):
    root, data = trained
    folder = root / model_id
    raw = json.loads((folder / checkpoints.CARD).read_text())
    assert "test" not in raw["metrics"] and "test_evaluation" not in raw
    assert "once" in raw["how_chosen"]["metrics.test"]  # every card says where its test figures come from
    preds = checkpoints.read_predictions(folder)
    assert preds["test_probs"].shape == (SUBSET["test"], 14)  # the probabilities are stored, for the app to serve
    # patient codes beside the predictions: one code per patient, the same partition as the dataset's ids
    codes, ids = preds["test_groups"], np.asarray(data.extras["patients"]["test"])
    assert len(np.unique(codes)) == len(np.unique(ids))
    assert all(len(np.unique(codes[ids == i])) == 1 for i in np.unique(ids))


def test_test_metrics_written_only_when_asked_and_once(trained):
    root, data = trained
    folder = root / "vanilla_cnn"
    assert "evaluate_test.py" in {b.path.name: b for b in checkpoints.scan(root).broken}["vanilla_cnn"].reason
    assert evaluate_test.main(["--root", str(root), "--n-boot", "30"]) == 0
    assert sorted(c.id for c in checkpoints.scan(root).found) == ["cnn_small", "ensemble", "vanilla_cnn"]
    card = checkpoints.read_card(folder)
    preds = checkpoints.read_predictions(folder)
    assert card.metrics.test.n == 24
    assert card.metrics.test.auc_macro == pytest.approx(
        metrics.get_auc(data.labels["test"], preds["test_probs"], card.task))
    assert card.metrics.test.extra["auc_macro_ci_bootstrap"]["unit"] == "patient"
    stamp = card.extra["test_evaluation"]
    assert stamp["at"] and stamp["patient_level_ci"] and stamp["previous"] is None
    assert evaluation.evaluate_folder(folder, data, 30) is None  # evaluated once: a second call is refused
    first = json.loads((folder / checkpoints.CARD).read_text())
    assert first["test_evaluation"] == stamp
    assert evaluation.evaluate_folder(folder, data, 30, force=True) is not None
    assert checkpoints.read_card(folder).extra["test_evaluation"]["previous"] == stamp["at"]


def test_without_the_dataset_the_stored_patient_codes_give_the_same_intervals(trained):
    root, data = trained
    folder = root / "cnn_small"
    with_data = evaluation.evaluate_folder(folder, data, 30, force=True)
    without = evaluation.evaluate_folder(folder, None, 30, force=True)
    assert without["auc_macro_ci"] == with_data["auc_macro_ci"]
    assert without["auc_macro_ci_bootstrap"]["unit"] == "patient"


def test_an_older_checkpoint_gets_its_patient_codes_when_evaluated_with_its_data(trained):
    """Predictions stored before the codes existed: evaluating with the dataset adds them, so later paired
    comparisons (the Benchmarks page's) resample patients too."""
    root, data = trained
    folder = root / "cnn_small"
    stored = checkpoints.read_predictions(folder)
    card = json.loads((folder / checkpoints.CARD).read_text())
    checkpoints.rewrite(folder, card, {k: v for k, v in stored.items() if not k.endswith("_groups")})
    assert evaluation.evaluate_folder(folder, None, 30, force=True)["auc_macro_ci_bootstrap"]["unit"] == "image"
    assert "test_groups" not in checkpoints.read_predictions(folder)
    assert evaluation.evaluate_folder(folder, data, 30, force=True)["auc_macro_ci_bootstrap"]["unit"] == "patient"
    again = checkpoints.read_predictions(folder)
    for split in ("val", "test"):
        np.testing.assert_array_equal(again[f"{split}_groups"], stored[f"{split}_groups"])
    np.testing.assert_array_equal(again["test_probs"], stored["test_probs"])


def test_other_splits_are_refused(trained):
    root, data = trained
    other = load_dataset("nih14-local").subset({**SUBSET, "test": 23})
    with pytest.raises(checkpoints.CheckpointError, match="other splits"):
        evaluation.evaluate_folder(root / "vanilla_cnn", other, 30, force=True)


def test_a_learning_curve_point_is_evaluated_on_the_data_its_run_saw(data_dir):
    """``evaluate_root`` rebuilds a curve point's training subset (and a quick run's subset) from the card alone, so
    its split checksum matches and the test split can be read without the run."""
    from cxrcore import curves
    from cxrcore.runs import dataset_record

    full = load_dataset("nih14-local")
    for seen in (curves.subsets(full, [100])[0], full.subset(SUBSET), curves.subsets(full.subset(SUBSET), [30])[0]):
        assert evaluation.as_trained(full, dataset_record(seen)).split_checksum() == seen.split_checksum()
