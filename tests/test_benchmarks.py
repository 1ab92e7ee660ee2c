"""Benchmark tables from cards and stored predictions: per-label metrics, histories, prevalence, calibration, and
the published section of BENCHMARKS.md."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import NIH14, fake_checkpoint_root

from cxrcore import benchmarks, metrics, published
from cxrcore.checkpoints import find


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fake_checkpoint_root(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def nih(root):
    return [c for c in find(root) if c.dataset == "nih14-local"]


def test_binary_split_arrays_are_one_column_per_class(root):
    ck = next(c for c in find(root) if c.dataset == "pneumoniamnist-local")
    y, p = benchmarks.split_arrays(ck.predictions(), "test", ck.card.task)
    assert y.shape == p.shape == (120, 2)
    np.testing.assert_array_equal(y[:, 1], ck.predictions()["test_labels"][:, 0])
    np.testing.assert_array_equal(y.sum(1), 1)


def test_per_label_rows_of_one_card(nih):
    unshipped = next(c for c in nih if c.id == "resnet18")
    rows = benchmarks.per_label_rows(unshipped.card)
    assert [r["label"] for r in rows] == NIH14 and all(0 <= r["auc"] <= 1 for r in rows)


def test_benchmark_tables(nih):
    table = benchmarks.per_label_table(nih, "auc")
    assert [r["label"] for r in table] == NIH14 and set(table[0]) - {"label"} == {c.id for c in nih}
    history = benchmarks.history_rows(nih)
    assert {r["model"] for r in history} == {"vanilla_cnn", "vit_scratch", "resnet18"}  # the ensemble has no history
    prevalence = benchmarks.prevalence_rows(nih[0].card)
    assert len(prevalence) == 3 * 14 and np.allclose([r["share"] for r in prevalence], 0.3)
    rel = benchmarks.reliability_of(nih[0].predictions(), metrics.TASK_MULTILABEL)
    assert 0 <= rel["ece"] <= 1 and sum(rel["count"]) == 120 * 14


@pytest.mark.parametrize("dataset", ["nih14-local", "pneumoniamnist-local"])
def test_benchmarks_md_shows_every_published_table_of_the_task(dataset):
    section = "\n".join(benchmarks.published_section(dataset))
    tables = published.tables(dataset)
    assert tables and all(f"Published (not reproduced here): {t.title}" in section for t in tables)
    assert all(t.source in section for t in tables)
    assert all(t.note in section for t in tables) and "not transcribed" not in section
    assert "| DenseNet-121 | 75.93 | 78.7 | 81.21 | 82.22 |" in section or dataset != "nih14-local"


def test_write_report_lays_prevalence_out_per_label(root, tmp_path):
    benchmarks.write_report(root, tmp_path / "BENCHMARKS.md")
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| label | train | val | test |" in md and "| Hernia | 120 | 24 | 36 |" in md
    assert "Published (not reproduced here): CheXNet" in md


# ---- multi-class tasks and learning curves --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    from helpers import fake_checkpoint

    return fake_checkpoint(tmp_path_factory.mktemp("multiclass"), "cnn_small", "kermany-pneumonia3", seed=5)


def test_multiclass_table1_confusion_matrix_and_per_class_rates(three_class):
    row = benchmarks.table1([three_class])[0]
    test = three_class.card.metrics.test
    assert row["test_f1_macro"] == test.extra["f1_macro"] and row["test_auc"] == pytest.approx(test.extra["auc_ovr"])
    assert {"test_acc", "test_f1_macro", "test_auc"} <= set(benchmarks.table1_columns(three_class.card.task))
    frame = benchmarks.confusion_frame(three_class)
    y = three_class.predictions()["test_labels"][:, 0].astype(int)
    assert [r["true"] for r in frame] == ["normal", "bacterial", "viral"]
    assert [sum(v for k, v in r.items() if k != "true") for r in frame] == np.bincount(y, minlength=3).tolist()
    rates = benchmarks.per_class_rows(three_class)
    assert [r["support"] for r in rates] == np.bincount(y, minlength=3).tolist()
    section = "\n".join(benchmarks.multiclass_section([three_class]))
    assert "cnn_small: test confusion matrix" in section and "| true | normal | bacterial | viral |" in section


def test_multilabel_models_have_no_confusion_section(nih):
    assert benchmarks.multiclass_section(nih) == [] and benchmarks.confusion_frame(nih[0]) == []
    assert "test_f1_macro" not in benchmarks.table1(nih)[0]


def test_learning_curve_section_reads_the_curve_points(tmp_path):
    from helpers import fake_checkpoint

    fake_checkpoint(tmp_path / "nih14-local" / "n400", "resnet18", seed=6)
    section = "\n".join(benchmarks.curve_section(tmp_path, "nih14-local"))
    assert "Learning curve" in section and "| resnet18 | 400 |" in section
    assert benchmarks.curve_section(tmp_path, "pneumoniamnist-local") == []


def test_localisation_section_shows_the_task_rows_with_the_command(tmp_path):
    import json

    assert benchmarks.localisation_section(tmp_path, "nih14-local") == []  # not run: no section
    row = {"dataset": "nih14-local", "model": "resnet18", "method": "GradCAM", "subset": "test", "layer": "layer2",
           "grid": "8x8", "boxes": 6, "no_localisation": 0, "pointing": 0.5, "chance": 0.022, "precision": 0.1,
           "recall": 0.2, "f1": 0.133}
    other = {**row, "dataset": "pneumoniamnist-local", "model": "vanilla_cnn"}
    (tmp_path / "localisation.json").write_text(json.dumps(
        {"command": "python benchmarks/localisation.py", "region_level": 0.5, "rows": [row, other], "boxes": []}))
    text = "\n".join(benchmarks.localisation_section(tmp_path, "nih14-local"))
    assert "### Grad-CAM localisation against the NIH boxes" in text and "`python benchmarks/localisation.py`" in text
    assert "| resnet18 | test | layer2 (8x8) | 6 | 0 | 0.500 | 0.022 | 0.100 | 0.200 | 0.133 |" in text
    assert "vanilla_cnn" not in text and "0.5 of its peak" in text
