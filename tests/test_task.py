"""Task: the one place that knows what a task's kind means for probabilities, label columns and card strings."""
from __future__ import annotations

import medmnist
import numpy as np
import pytest
import torch

from cxrcore import metrics
from cxrcore.task import CARD_STRINGS, Task, is_multilabel, kind_of, label_columns, probs


@pytest.mark.parametrize("card, kind", [("multi-label, binary-class", "multi-label"), ("binary-class", "binary"),
                                        ("multi-class", "multi-class"), ("ordinal-regression", "multi-class")])
def test_card_strings_map_to_kinds(card, kind):
    assert kind_of(card) == kind
    assert is_multilabel(card) == (kind == "multi-label")


def test_every_medmnist_2d_task_string_is_understood_and_round_trips():
    for flag, info in medmnist.INFO.items():
        if flag.endswith("3d"):
            continue
        task = Task.parse(info["task"], list(info["label"].values()))
        assert Task.parse(task.card, task.labels) == task
    assert Task("multi-label", ("a", "b")).card == metrics.TASK_MULTILABEL
    assert Task("binary", ("n", "p")).card == metrics.TASK_BINARY
    assert Task("multi-class", ("a", "b", "c")).card == metrics.TASK_MULTICLASS
    assert set(CARD_STRINGS.values()) == {metrics.TASK_MULTILABEL, metrics.TASK_BINARY, metrics.TASK_MULTICLASS}


def test_unknown_strings_kinds_and_bad_labels_are_refused():
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        kind_of("segmentation")
    with pytest.raises(ValueError, match="unknown task kind"):
        Task("regression", ("a",))
    with pytest.raises(ValueError, match="two classes"):
        Task("binary", ("normal", "bacterial", "viral"))
    with pytest.raises(ValueError, match="repeat"):
        Task("multi-class", ("a", "b", "a"))


def test_probs_are_sigmoids_for_multi_label_and_a_softmax_otherwise():
    logits = torch.randn(5, 3)
    torch.testing.assert_close(Task("multi-label", ("a", "b", "c")).probs(logits), torch.sigmoid(logits))
    p = Task("multi-class", ("a", "b", "c")).probs(logits)
    torch.testing.assert_close(p, torch.softmax(logits, 1))
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    torch.testing.assert_close(probs(logits[:, :2], "binary-class").sum(1), torch.ones(5))


def test_label_columns_one_hot_for_single_label_and_unchanged_for_multi_label():
    three = Task("multi-class", ("normal", "bacterial", "viral"))
    y = np.array([[2], [0], [1], [2]], np.float32)
    cols = three.label_columns(y)
    np.testing.assert_array_equal(cols, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert three.prevalence(y) == [1, 1, 2]
    assert three.names_of(y[0]) == ["viral"]
    multi = Task("multi-label", ("a", "b", "c"))
    ym = np.array([[1, 0, 1], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(multi.label_columns(ym), ym)
    assert multi.prevalence(ym) == [1, 0, 1] and multi.names_of(ym[0]) == ["a", "c"] and multi.names_of(ym[1]) == []
    np.testing.assert_array_equal(label_columns(np.array([1, 0]), "binary-class", 2), [[0, 1], [1, 0]])
    assert Task("binary", ("normal", "pneumonia")).num_outputs == 2  # a 2-way softmax, not one sigmoid
