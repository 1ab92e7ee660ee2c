"""Learning curves: nested, patient-grouped, seeded training subsets with val and test untouched, and a real tiny
sweep through run_all.py whose points the curve table reads."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cxrcore import curves
from cxrcore.data import REPO_ROOT, Dataset

PATIENTS = np.repeat(np.arange(40), np.arange(40) % 4 + 1)  # 40 patients with 1-4 images each: 100 images


def small_dataset() -> Dataset:
    n = {"train": len(PATIENTS), "val": 12, "test": 15}
    rng = np.random.default_rng(0)
    return Dataset("toy", 8, "multi-class", ["a", "b", "c"],
                   {s: torch.from_numpy(rng.integers(0, 256, (k, 1, 8, 8), dtype=np.uint8)) for s, k in n.items()},
                   {s: rng.integers(0, 3, (k, 1)).astype(np.float32) for s, k in n.items()}, "toy", "0" * 32,
                   {"patients": {"train": PATIENTS, "val": np.arange(12) + 100, "test": np.arange(15) + 200}})


def test_sizes_parse_with_all_and_refuse_nonsense():
    assert curves.parse_sizes("100, 250,all") == [100, 250, None]
    for bad in ("", "0", "-5", "ten", "1.5"):
        with pytest.raises(ValueError):
            curves.parse_sizes(bad)


def test_subsets_are_nested_whole_patients_and_seeded():
    sizes = [10, 30, 60, None]
    subsets = curves.nested_subsets(PATIENTS, sizes, seed=3)
    for k, index in zip(sizes, subsets):
        assert (k or len(PATIENTS)) - 4 < len(index) <= (k or len(PATIENTS))  # as close as whole patients allow
        chosen = set(PATIENTS[index])
        assert set(np.flatnonzero(np.isin(PATIENTS, list(chosen)))) == set(index)  # every image of a chosen patient
    assert all(set(a) < set(b) for a, b in zip(subsets, subsets[1:]))
    assert len(subsets[-1]) == len(PATIENTS)
    again, other = curves.nested_subsets(PATIENTS, sizes, seed=3), curves.nested_subsets(PATIENTS, sizes, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again))
    assert not np.array_equal(subsets[0], other[0])
    with pytest.raises(ValueError, match="more than the 100"):
        curves.nested_subsets(PATIENTS, [101])


def test_subset_datasets_keep_val_and_test_and_say_which_subset_they_are():
    data = small_dataset()
    parts = curves.subsets(data, [None, 20, 20, 50], seed=1)  # duplicates and order do not matter
    assert [len(p.labels["train"]) for p in parts] == sorted({len(p.labels["train"]) for p in parts})
    assert len(parts) == 3 and len(parts[-1].labels["train"]) == 100
    for p in parts:
        for s in ("val", "test"):
            assert torch.equal(p.images[s], data.images[s]) and np.array_equal(p.labels[s], data.labels[s])
        assert len(p.images["train"]) == len(p.labels["train"]) == len(p.extras["patients"]["train"])
        assert p.record["train_subset"] == {"images": len(p.labels["train"]), "of": 100, "seed": 1,
                                            "grouped_by": "patient"}
    assert curves.point_root(REPO_ROOT / "curves", parts[0]).name == f"n{len(parts[0].labels['train'])}"


def test_images_without_patients_are_their_own_group():
    data = small_dataset()
    data.extras = {}
    assert [len(p.labels["train"]) for p in curves.subsets(data, [7, 30])] == [7, 30]


@pytest.mark.slow
def test_a_tiny_real_sweep_writes_one_checkpoint_per_size(data_dir, tmp_path):
    """``run_all.py --train-sizes 40,80 --epochs 1 --models cnn_small`` on nih14-local: each size a checkpoint with
    the same val and test images, and the curve table one row per size."""
    cmd = [sys.executable, str(REPO_ROOT / "train" / "run_all.py"), "--train-sizes", "40,80", "--epochs", "1",
           "--models", "cnn_small", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    points = curves.points(tmp_path, "nih14-local")
    rows = curves.curve_rows(points)
    assert [r["train_images"] for r in rows] == [p.card.dataset.counts["train"] for p in points]
    assert len(rows) == 2 and 40 <= rows[0]["train_images"] < rows[1]["train_images"] and rows[0]["model"] == "cnn_small"
    assert all(r["test_auc_lo"] <= r["test_auc"] <= r["test_auc_hi"] for r in rows)
    tests = [p.predictions()["test_labels"] for p in points]
    assert np.array_equal(*tests) and len({p.card.dataset.counts["val"] for p in points}) == 1
    assert (tmp_path / "nih14-local" / f"n{rows[0]['train_images']}" / "cnn_small" / "card.json").is_file()
