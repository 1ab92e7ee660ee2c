"""The test split, read once: the one place where test labels are scored.

Training (single split or cross-validated), calibration and ensembling choose everything on held-out data
(validation or pooled out-of-fold predictions) and store the test probabilities unscored; a card has no
``metrics.test`` until :func:`evaluate_folder` writes it, after all training, at the card's own thresholds, with CIs
that resample patients where they are known, stamped with when it was done (``test_evaluation``). A card already
evaluated is left alone unless ``force``. ``train/evaluate_test.py`` is the command; ``run_all.py`` and
``calibrate.py`` call it as their last, separate step.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from . import checkpoints, curves, metrics
from .card import Card, DatasetRecord
from .data import Dataset, load_dataset
from .runs import group_codes, stored_groups


def test_metrics(preds: Mapping[str, np.ndarray], card: Card, n_boot: int = 1000,
                 groups: np.ndarray | None = None) -> dict:
    """The card's test block from stored predictions: every metric of :func:`metrics.summarize` at the card's
    thresholds (chosen on held-out data; none: no call), CIs over ``groups`` (patients) or else images."""
    th = [float("nan") if t is None else t for t in card.thresholds.get("youden_val", [None] * len(card.label_names))]
    return metrics.summarize(preds["test_labels"], preds["test_probs"], card.label_names, card.task, th, n_boot,
                             groups)


def evaluate_folder(folder: Path, data: Dataset | None = None, n_boot: int = 1000, force: bool = False) -> dict | None:
    """Write the test metrics of one checkpoint folder (a model or an ensemble) into its card; returns them, or None
    when the card already has test metrics and not ``force``. With ``data``, the card must have been trained on its
    splits and the stored test labels must be its own; the patients come from it, else from the stored codes."""
    card = checkpoints.read_card(folder)
    if card.metrics.test is not None and not force:
        return None
    preds = checkpoints.stored_predictions(folder, card)
    groups = stored_groups(preds, "test")
    backfilled = None
    if data is not None:
        if card.dataset.split_checksum != data.split_checksum():
            raise checkpoints.CheckpointError(f"{folder}: trained on other splits than the {data.name} loaded here")
        if not np.array_equal(preds["test_labels"], data.labels["test"]):
            raise checkpoints.CheckpointError(f"{folder}: stored test labels are not the dataset's")
        groups = data.extras.get("patients", {}).get("test", groups)
        backfilled = _with_patient_codes(checkpoints.read_predictions(folder), data)
    test = test_metrics(preds, card, n_boot, groups)
    raw = json.loads((Path(folder) / checkpoints.CARD).read_text())
    raw["metrics"]["test"] = test
    raw["test_evaluation"] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "n_boot": n_boot, "patient_level_ci": groups is not None,
                              "previous": (raw.get("test_evaluation") or {}).get("at")}
    checkpoints.rewrite(folder, raw, backfilled)
    return test


def _with_patient_codes(stored: dict[str, np.ndarray], data: Dataset) -> dict[str, np.ndarray] | None:
    """The stored predictions plus the patient codes of each split whose stored labels are the dataset's, where they
    are missing (checkpoints from before the codes were stored: their paired comparisons resampled images); None
    when nothing is added."""
    patients = data.extras.get("patients", {})
    added = {f"{s}_groups": group_codes(patients[s]) for s in ("val", "test")
             if s in patients and f"{s}_groups" not in stored and f"{s}_labels" in stored
             and np.array_equal(stored[f"{s}_labels"], data.labels[s])}
    return {**stored, **added} if added else None


def evaluate_folders(folders: Iterable[Path], data: Dataset | None = None, n_boot: int = 1000,
                     force: bool = False) -> list[tuple[Path, dict | None]]:
    """:func:`evaluate_folder` over several folders (those without a card are skipped), ensembles after models."""
    todo = [Path(f) for f in folders if (Path(f) / checkpoints.CARD).exists()]
    todo.sort(key=lambda f: bool(checkpoints.read_card(f).members))
    return [(f, evaluate_folder(f, data, n_boot, force)) for f in todo]


def as_trained(data: Dataset, d: DatasetRecord) -> Dataset:
    """The dataset as a card's run saw it: a quick run's subset, a learning-curve point's training subset."""
    if d.extra.get("subset"):
        data = data.subset(d.extra["subset"])
    ts = d.extra.get("train_subset")
    if ts:
        data = curves.subsets(data, [None if ts["images"] >= ts["of"] else ts["images"]], ts["seed"])[0]
    return data


def evaluate_root(root: Path, n_boot: int = 1000, force: bool = False) -> list[tuple[Path, dict | None]]:
    """:func:`evaluate_folders` over every card under ``root``, each against its own dataset (loaded once per name
    and size, then cut as its run cut it)."""
    cache: dict[tuple[str, int], Dataset] = {}
    by_data: dict[str, list[Path]] = {}
    first: dict[str, DatasetRecord] = {}
    for folder in sorted(c.parent for c in Path(root).rglob(checkpoints.CARD)):
        d = checkpoints.read_card(folder).dataset
        by_data.setdefault(d.split_checksum, []).append(folder)
        first.setdefault(d.split_checksum, d)
    out = []
    for checksum, folders in by_data.items():
        if not force and all(checkpoints.read_card(f).metrics.test is not None for f in folders):
            out += [(f, None) for f in folders]  # nothing to read: the dataset need not even be here
            continue
        d = first[checksum]
        if (d.name, d.size) not in cache:
            cache[d.name, d.size] = load_dataset(d.name, d.size)
        data = as_trained(cache[d.name, d.size], d)
        out += evaluate_folders(folders, data, n_boot, force)
    return out


def line(folder: Path, test: dict | None) -> str:
    """One printed line per folder, labelled as the test-once evaluation."""
    if test is None:
        return f"test (read once): {folder}: already evaluated, kept"
    ci = test.get("auc_macro_ci") or (float("nan"),) * 2
    unit = test.get("auc_macro_ci_bootstrap", {}).get("unit", "image")
    return (f"test (read once): {folder}: AUC {test['auc_macro']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
            f"({unit}-level CI, n={test['n']})")
