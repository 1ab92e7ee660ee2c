"""The app on a multi-class task, driven headlessly: a tiny real checkpoint (cnn_small, 1 epoch on 300 training images
of kermany-pneumonia3, trained here by ``run_all.py --train-sizes``) beside a multi-label one. The sidebar lists both
tasks; Compare shows class probabilities that sum to 1 with the predicted class, ROC one-vs-rest curves, Explain a
chosen class, Benchmarks the confusion matrix, the learning-curve point and the three-class report's numbers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import fake_checkpoint, results, start
from streamlit.testing.v1 import AppTest

from cxrcore.data import REPO_ROOT

pytestmark = pytest.mark.slow
TASK, CLASSES, TRAIN = "kermany-pneumonia3", ["normal", "bacterial", "viral"], 300


@pytest.fixture(scope="module")
def roots(tmp_path_factory, data_dir):
    """(checkpoint root, curves root): the tiny curve point, used as the task's checkpoint, and a fake NIH model."""
    curves_root = tmp_path_factory.mktemp("curves")
    cmd = [sys.executable, str(REPO_ROOT / "train" / "run_all.py"), "--dataset", TASK, "--size", "64", "--models",
           "cnn_small", "--epochs", "1", "--train-sizes", str(TRAIN), "--out", str(curves_root)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    root = curves_root / TASK / f"n{TRAIN}"
    fake_checkpoint(root, "vanilla_cnn", seed=1)
    return root, curves_root


@pytest.fixture(autouse=True)
def env(roots, monkeypatch):
    monkeypatch.setenv("CXR_CHECKPOINTS", str(roots[0]))
    monkeypatch.setenv("CXR_CURVES", str(roots[1]))


@pytest.fixture(scope="module")
def xray(data_dir) -> tuple[str, bytes]:
    path = sorted((data_dir / "kermany_pneumonia" / "test" / "PNEUMONIA").glob("*virus*"))[0]
    return path.name, path.read_bytes()


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="upload").set_value((name, data, "image/jpeg")).run()
    assert not at.exception, at.exception
    return at


def test_sidebar_lists_every_task_with_checkpoints_by_its_registry_title():
    at = AppTest.from_file("../app.py", default_timeout=300).run()
    assert at.radio(key="task").options == ["NIH ChestX-ray14 (14 findings)",
                                            "Kermany chest X-rays (normal / bacterial / viral)"]


def test_compare_shows_class_probabilities_summing_to_one_and_the_predicted_class(xray):
    at = upload(start(TASK), *xray)
    table = results(at)
    assert list(table.index) == CLASSES
    np.testing.assert_allclose(table["cnn_small"].sum(), 1, rtol=1e-5)
    predicted = table["cnn_small"].astype(float).idxmax()
    assert table.at[predicted, "Predicted by"] == "cnn_small" and table["Predicted by"].notna().sum() == 1  # empty cells read as NaN
    assert any(f"Predicted class (cnn_small): {predicted}" in m.value for m in at.markdown)


def test_roc_draws_one_vs_rest_curves_for_each_class(xray):
    at = upload(start(TASK), *xray)
    at.switch_page("pages/roc.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="settings::roc.label").options == CLASSES
    at.selectbox(key="settings::roc.label").set_value("normal").run()
    assert not at.exception, at.exception
    assert any("One-vs-rest: **normal** against the other 2 classes" in c.value for c in at.caption)
    assert at.get("plotly_chart")


def test_explain_explains_a_chosen_class(xray):
    at = upload(start(TASK), *xray)
    at.switch_page("pages/explain.py").run()
    at.multiselect(key="settings::explain.labels").set_value(["viral"]).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="settings::explain.labels").options == CLASSES
    assert list(at.dataframe[0].value["label"]) == ["viral"]  # one map: the chosen class


def test_benchmarks_show_confusion_matrix_learning_curve_and_published_numbers():
    at = start(TASK)
    at.switch_page("pages/benchmarks.py").run()
    assert not at.exception, at.exception
    table1 = at.dataframe[0].value
    assert {"test_acc", "test_f1_macro", "test_auc"} <= set(table1.columns) and list(table1.index) == ["cnn_small"]
    charts = at.get("plotly_chart")
    keys = {c.proto.id for c in charts}
    assert any("confusion" in k for k in keys) and any("learning_curve" in k for k in keys), keys
    shown = "\n".join(m.value for m in at.markdown)
    assert "Three-class pneumonia report" in shown and "(published)" in shown
