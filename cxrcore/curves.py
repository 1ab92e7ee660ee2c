"""Learning curves (the transfer report's training-set-size sweep): a model trained on growing subsets of train,
validated and tested on the same images, so test AUC against the number of training images shows how much the
architecture gains from more data.

Subsets are nested (each contains the smaller ones) and grouped by patient (a patient's images are all in or all
out), drawn in one seeded patient order that is the same for every architecture. Each point is an ordinary
checkpoint folder, ``<curves root>/<dataset>/n<images>/<model id>``, kept apart from the task's models (the app lists
those from the checkpoint root) so a curve point never shows up as a model to compare.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import checkpoints
from .data import REPO_ROOT, Dataset

ALL = "all"
DEFAULT_SEED = 0


def curves_root() -> Path:
    """``$CXR_CURVES`` (relative paths from the repo root), else ``curves/`` beside ``checkpoints/``."""
    path = Path(os.environ.get("CXR_CURVES", "curves"))
    return path if path.is_absolute() else REPO_ROOT / path


def parse_sizes(text: str) -> list[int | None]:
    """``"100,250,500,all"`` -> ``[100, 250, 500, None]`` (None: the whole training split)."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == ALL:
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ValueError(f"training-set sizes are positive whole numbers or '{ALL}', got {part!r}")
    if not out:
        raise ValueError("no training-set size given")
    return out


def nested_subsets(groups: Sequence, sizes: Sequence[int | None], seed: int = DEFAULT_SEED) -> list[np.ndarray]:
    """Sorted train indices for each size: whole patients (``groups``, one id per image) taken in one seeded order,
    each smaller subset inside every larger one. A patient who would take a subset past its size waits for the next
    one, so a subset holds at most its size and usually exactly it (one patient with 60 images does not turn 50
    into 110); None takes every image."""
    groups = np.asarray(groups)
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    for k in sizes:
        if k is not None and k > len(groups):
            raise ValueError(f"a training subset of {k} images asks for more than the {len(groups)} in train")
    pending = list(np.random.default_rng(seed).permutation(len(unique)))
    chosen: list[int] = []
    total, by_size = 0, {}
    for k in sorted({len(groups) if k is None else k for k in sizes}):
        for g in list(pending):
            if total == k:
                break
            if total + counts[g] <= k:
                chosen.append(g)
                pending.remove(g)
                total += counts[g]
        by_size[k] = np.flatnonzero(np.isin(inverse, chosen))
    return [by_size[len(groups) if k is None else k] for k in sizes]


def train_groups(data: Dataset) -> np.ndarray:
    """Patient id of every training image; each image its own group where the dataset names no patients."""
    patients = data.extras.get("patients", {}).get("train")
    return np.asarray(patients) if patients is not None else np.arange(len(data.labels["train"]))


def with_train(data: Dataset, index: np.ndarray, seed: int) -> Dataset:
    """The dataset with only these training images (val and test untouched); its record, and so the card, says
    which subset it is."""
    index = np.asarray(index)
    subset = {"images": len(index), "of": len(data.labels["train"]), "seed": seed, "grouped_by": "patient"}
    return dataclasses.replace(
        data, images={**data.images, "train": data.images["train"][index]},
        labels={**data.labels, "train": data.labels["train"][index]},
        extras={k: {**v, "train": np.asarray(v["train"])[index]} for k, v in data.extras.items()},
        record={**data.record, "train_subset": subset})


def subsets(data: Dataset, sizes: Sequence[int | None], seed: int = DEFAULT_SEED) -> list[Dataset]:
    """The dataset on each nested, patient-grouped training subset, smallest first, one per distinct subset."""
    seen, out = set(), []
    for index in sorted(nested_subsets(train_groups(data), sizes, seed), key=len):
        if len(index) not in seen:
            seen.add(len(index))
            out.append(with_train(data, index, seed))
    return out


def point_root(root: Path, data: Dataset) -> Path:
    """Where the models of one subset go: ``<root>/<dataset>/n<training images>``."""
    return Path(root) / data.name / f"n{len(data.labels['train'])}"


def points(root: Path, dataset: str) -> list[checkpoints.Checkpoint]:
    """Every trained curve point of a dataset under a curves root ([] when there is none)."""
    folder = Path(root) / dataset
    return [c for c in checkpoints.find(folder) if c.dataset == dataset] if folder.is_dir() else []


def curve_rows(cks: Sequence[checkpoints.Checkpoint]) -> list[dict]:
    """One row per point: architecture, training images, test AUC with its 95 % CI and validation AUC, sorted by
    architecture then size."""
    rows = []
    for ck in cks:
        test = ck.card.metrics.test
        lo, hi = test.auc_macro_ci or (None, None)
        rows.append({"model": ck.id, "train_images": ck.card.dataset.counts["train"], "test_auc": test.auc_macro,
                     "test_auc_lo": lo, "test_auc_hi": hi, "val_auc": ck.card.metrics.val.auc_macro,
                     "epochs": ck.card.epochs_run})
    return sorted(rows, key=lambda r: (r["model"], r["train_images"]))
