"""train/evaluate_test.py: the test split is read once, after a cross-validated training, and only when asked."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import evaluate_test  # noqa: E402

from cxrcore import checkpoints, crossval, metrics  # noqa: E402
from cxrcore.data import load_dataset  # noqa: E402
from cxrcore.runs import recipe  # noqa: E402


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    data = load_dataset("nih14-local").subset({"train": 48, "val": 18, "test": 24})
    root = tmp_path_factory.mktemp("cv")
    crossval.cross_validate("vanilla_cnn", data, recipe("vanilla_cnn", epochs=1, batch_size=16), root, "test", k=2,
                            n_boot=20)
    return root, data


def test_test_metrics_written_only_when_asked_and_once(trained):
    root, data = trained
    folder = root / "vanilla_cnn"
    assert checkpoints.read_card(folder).metrics.test is None
    assert "evaluate_test.py" in checkpoints.scan(root).broken[0].reason  # the app shows no untested model
    assert evaluate_test.main(["--root", str(root), "--n-boot", "30"]) == 0
    assert [c.id for c in checkpoints.scan(root).found] == ["vanilla_cnn"]
    card = checkpoints.read_card(folder)
    preds = checkpoints.read_predictions(folder)
    assert card.metrics.test.n == 24
    assert card.metrics.test.auc_macro == pytest.approx(
        metrics.get_auc(data.labels["test"], preds["test_probs"], card.task))
    stamp = card.extra["test_evaluation"]
    assert stamp["at"] and stamp["patient_level_ci"] and stamp["previous"] is None
    assert evaluate_test.evaluate_folder(folder, data, 30) is None  # evaluated once: a second call is refused
    first = json.loads((folder / checkpoints.CARD).read_text())
    assert first["test_evaluation"] == stamp
    assert evaluate_test.evaluate_folder(folder, data, 30, force=True) is not None
    assert checkpoints.read_card(folder).extra["test_evaluation"]["previous"] == stamp["at"]


def test_other_splits_are_refused(trained):
    root, data = trained
    other = load_dataset("nih14-local").subset({"train": 48, "val": 18, "test": 23})
    with pytest.raises(checkpoints.CheckpointError, match="other splits"):
        evaluate_test.evaluate_folder(root / "vanilla_cnn", other, 30, force=True)
