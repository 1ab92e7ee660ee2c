"""Patient-grouped k-fold cross-validation: folds, pooled out-of-fold predictions and the epoch they choose.

With 167 validation images (1-4 positives for several labels) an epoch, a threshold or a calibration chosen on
validation is mostly noise. Cross-validation on train + val scores every one of those images exactly once, by a model
that never saw its patient, so the pooled out-of-fold (OOF) predictions rest on 5-6 times more positives (Hernia: 18
instead of 1). Plain arrays in, plain arrays out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoints, metrics
from .card import Card
from .data import Dataset
from .engine import TrainConfig, clear_resume, fit, predict, Prepared, seed_everything
from .pretrained import build
from .runs import TEST_READ_ONCE, make_card, oof_served, oof_shift
from .task import label_columns
from .zoo import get_spec


def patient_folds(groups: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) of every image: all images of a patient in one fold, label positives spread evenly.

    Greedy stratification: patients in a seeded random order, those with the rarest labels first, each placed in the
    fold that holds the fewest positives of its rarest label (ties: the fewest images). ``y`` is one column per label
    (one-hot for single-label tasks).
    """
    groups, y = np.asarray(groups), np.asarray(y, dtype=float).reshape(len(groups), -1)
    patients, inverse = np.unique(groups, return_inverse=True)
    if len(patients) < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} patients; there are {len(patients)}")
    per_patient = np.zeros((len(patients), y.shape[1]))
    np.add.at(per_patient, inverse, y > 0.5)
    size = np.bincount(inverse, minlength=len(patients))
    rarity = 1.0 / np.maximum(y.sum(0), 1)  # rare labels weigh most
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    key = (per_patient[order] > 0) @ rarity
    order = order[np.argsort(-key, kind="stable")]
    fold_pos, fold_size = np.zeros((k, y.shape[1])), np.zeros(k)
    fold_of = np.empty(len(patients), dtype=int)
    for p in order:
        has = per_patient[p] > 0
        if has.any():
            rarest = int(np.argmax(np.where(has, rarity, -1)))
            f = int(np.lexsort((fold_size, fold_pos[:, rarest]))[0])
        else:
            f = int(np.argmin(fold_size))
        fold_of[p] = f
        fold_pos[f] += per_patient[p]
        fold_size[f] += size[p]
    return fold_of[inverse]


def pool_oof(folds: np.ndarray, fold_probs: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold probabilities in the original image order: ``fold_probs[f]`` scores the images of fold ``f``
    (in their order), shape (n_f, L) or (epochs, n_f, L)."""
    folds = np.asarray(folds)
    first = np.asarray(fold_probs[0])
    out = np.full(first.shape[:-2] + (len(folds), first.shape[-1]), np.nan, dtype=np.float32)
    for f, p in enumerate(fold_probs):
        p = np.asarray(p)
        if p.shape[-2] != int((folds == f).sum()):
            raise ValueError(f"fold {f} scores {p.shape[-2]} images but holds {int((folds == f).sum())}")
        out[..., folds == f, :] = p
    if np.isnan(out).any():
        raise ValueError("some images have no out-of-fold prediction (a fold is missing)")
    return out


def oof_auc_by_epoch(y: np.ndarray, oof: np.ndarray, task: str) -> np.ndarray:
    """Macro AUC of the pooled OOF predictions after each epoch: ``oof`` is (epochs, N, L)."""
    return np.array([metrics.get_auc(y, oof[e], task) for e in range(len(oof))])


def choose_epochs(auc_by_epoch: np.ndarray, smooth: int = 3) -> int:
    """Number of epochs (1-based) with the best pooled OOF AUC, after a centred moving average over ``smooth``
    epochs, so one lucky epoch does not decide."""
    a = np.asarray(auc_by_epoch, dtype=float)
    if smooth > 1 and len(a) >= smooth:
        pad = smooth // 2
        padded = np.pad(a, pad, mode="edge")
        a = np.convolve(padded, np.ones(smooth) / smooth, mode="valid")[: len(auc_by_epoch)]
    return int(np.nanargmax(a)) + 1


# ---- the cross-validated training run ------------------------------------------------------------------------------

CV_DIR = "cv"  # inside the model's folder while it trains; replaced by the checkpoint when it is saved
PLAN_FILE = "plan.json"
FOLD_FILE = "oof.npz"


@dataclass(frozen=True)
class Pool:
    """Train + val as one pool of images, in that order, with the group (patient) of each image."""

    images: torch.Tensor
    labels: np.ndarray
    groups: np.ndarray
    by_patient: bool  # False: the dataset names no patients, each image is its own group


def pool(data: Dataset) -> Pool:
    pats = data.extras.get("patients")
    n = len(data.labels["train"]) + len(data.labels["val"])
    groups = (np.concatenate([np.asarray(pats["train"]), np.asarray(pats["val"])]).astype(str) if pats
              else np.array([f"image-{i}" for i in range(n)]))
    return Pool(torch.cat([data.images["train"], data.images["val"]]),
                np.concatenate([data.labels["train"], data.labels["val"]]), groups, bool(pats))


def _split_data(data: Dataset, p: Pool, train: np.ndarray, val: np.ndarray, test: bool) -> Dataset:
    """``data`` with pool rows ``train`` / ``val`` as its train / val splits (and no test images unless ``test``)."""
    t = torch.from_numpy
    rows = {"train": train, "val": val}
    images = {s: p.images[t(i)] for s, i in rows.items()}
    labels = {s: p.labels[i] for s, i in rows.items()}
    images["test"] = data.images["test"] if test else data.images["test"][:0]
    labels["test"] = data.labels["test"] if test else data.labels["test"][:0]
    return Dataset(data.name, data.size, data.task, data.label_names, images, labels, data.source, data.md5,
                   {"patients": {**{s: p.groups[i] for s, i in rows.items()}, "test": p.groups[:0]}}, data.record)


def _plan(data: Dataset, cfg: TrainConfig, folds: np.ndarray, k: int, seed: int) -> dict:
    return {"split_checksum": data.split_checksum(), "config_key": cfg.key(), "k": k, "seed": seed,
            "folds_sha256": hashlib.sha256(folds.astype(np.int64).tobytes()).hexdigest()}


def _fold(model_id: str, data: Dataset, cfg: TrainConfig, work: Path, base_root: Path, f: int,
          progress: Callable[[dict], None] | None) -> np.ndarray:
    """Validation probabilities of every epoch (epochs, n_f, L) of fold ``f``'s model; a finished fold is read back,
    a killed one resumes from its last epoch (the engine's state and one file per finished epoch)."""
    done = work / FOLD_FILE
    if done.exists():
        return np.load(done)["probs"]
    spec = get_spec(model_id)
    seed_everything(cfg.seed)
    model, _ = build(model_id, data.num_outputs, data.channels, data.size, cfg.init, base_root,
                     cfg.input_size or spec.model_input_size(data.size))

    def keep(ev: dict) -> None:
        if ev.get("done"):
            work.mkdir(parents=True, exist_ok=True)
            np.save(work / f"epoch{ev['epoch'] + 1:03d}.npy", ev["val_probs"])
        if progress:
            progress({**ev, "fold": f})

    fit(model, spec, data, cfg, work, keep)
    epochs = sorted(work.glob("epoch*.npy"))
    probs = np.stack([np.load(e) for e in epochs])
    if len(probs) != cfg.epochs:
        raise RuntimeError(f"fold {f} kept {len(probs)} epochs of {cfg.epochs}")
    np.savez(work / "tmp.npz", probs=probs)
    (work / "tmp.npz").replace(done)
    clear_resume(work)
    for e in epochs:
        e.unlink()
    return probs


def cross_validate(model_id: str, data: Dataset, cfg: TrainConfig, out_root: Path, command: str, k: int = 5,
                   seed: int = 0, progress: Callable[[dict], None] | None = None, n_boot: int = 1000,
                   smooth: int = 3, base_root: Path | None = None) -> Card:
    """Train ``model_id`` by patient-grouped ``k``-fold cross-validation on train + val and write
    ``out_root/model_id``; returns its card, which has no test metrics (``train/evaluate_test.py`` adds them).

    Each fold trains the recipe's full epochs without early stopping and keeps every epoch's probabilities for its
    held-out patients; the pooled out-of-fold (OOF) AUC per epoch gives the number of epochs (:func:`choose_epochs`).
    The shipped model is one refit on all of train + val, stopped at that epoch of the same schedule: one model
    within the checkpoint budget instead of a k-model ensemble. Calibration and thresholds are fitted on the pooled
    OOF predictions at that epoch (5-6x the positives of the validation split). The test images are scored by the
    shipped model (so the app can serve them) but no test metric is computed here. ``base_root``: the tree a LoRA
    base is read from (default ``out_root``)."""
    t0 = time.perf_counter()
    spec, out_dir = get_spec(model_id), out_root / model_id
    p = pool(data)
    n_out, names = data.num_outputs, list(data.label_names)
    folds = patient_folds(p.groups, label_columns(p.labels, data.task, n_out), k, seed)
    fold_cfg = dataclasses.replace(cfg, patience=0)
    work = out_dir / CV_DIR
    plan = _plan(data, fold_cfg, folds, k, seed)
    if (work / PLAN_FILE).exists() and json.loads((work / PLAN_FILE).read_text()) != plan:
        shutil.rmtree(work)  # another recipe, data or fold assignment: its folds cannot be pooled with these
        clear_resume(out_dir)  # nor can its refit continue
    work.mkdir(parents=True, exist_ok=True)
    (work / PLAN_FILE).write_text(json.dumps(plan))
    idx = np.arange(len(folds))
    base_root = base_root or out_root
    fold_probs = [_fold(model_id, _split_data(data, p, idx[folds != f], idx[folds == f], test=False), fold_cfg,
                        work / f"fold{f}", base_root, f, progress) for f in range(k)]
    oof = pool_oof(folds, fold_probs)
    auc_by_epoch = oof_auc_by_epoch(p.labels, oof, data.task)
    n_epochs = choose_epochs(auc_by_epoch, smooth)

    # the shipped model: all of train + val, the chosen number of epochs of the recipe's schedule; its "val" split
    # (inside its training set) is only the engine's bookkeeping
    n_train = len(data.labels["train"])
    full = _split_data(data, p, idx, idx[n_train:], test=True)
    input_size = cfg.input_size or spec.model_input_size(data.size)
    seed_everything(cfg.seed)
    model, init = build(model_id, n_out, data.channels, data.size, cfg.init, base_root, input_size)
    res = fit(model, spec, full, fold_cfg, out_dir, None if progress is None else
              (lambda ev: progress({**ev, "fold": "refit"})), select_best=False, stop_after=n_epochs)
    model = checkpoints.round_to_stored(res.model)
    prep = Prepared(input_size, *spec.norm, in_chans=data.channels, channels_last=res.channels_last)
    test_raw = predict(model, data.images["test"], prep, data.task)

    oof_raw = oof[n_epochs - 1]
    groups = p.groups if p.by_patient else None
    served = oof_served(p.labels, oof_raw, idx[n_train:], test_raw, data.labels["test"], data.task,
                        names, oof_shift(cfg.pos_weight, p.labels, data.task), n_boot, groups,
                        data.extras.get("patients", {}).get("test") if p.by_patient else None)
    block = {**served.metrics, "train_loss": res.history[-1]["train_loss"] if res.history else None}
    cols = label_columns(p.labels, data.task, n_out)
    cv = {
        "k": k, "seed": seed, "smooth": smooth,
        "groups": "patients" if p.by_patient else "images (the dataset names no patients: each image is its own "
                                                   "group, so images of one patient may sit in two folds)",
        "fold_images": [int((folds == f).sum()) for f in range(k)],
        "fold_patients": [int(len(np.unique(p.groups[folds == f]))) for f in range(k)],
        "oof_positives": {n: int(cols[:, j].sum()) for j, n in enumerate(names)},
        "oof_positive_patients": {n: int(len(np.unique(p.groups[cols[:, j] > 0.5]))) for j, n in enumerate(names)},
        "oof_auc_by_epoch": [float(a) for a in auc_by_epoch],
        "chosen_epochs": n_epochs,
        "oof_auc_at_chosen": float(auc_by_epoch[n_epochs - 1]),
        "shipped": "one refit on all of train + val for the chosen epochs: one model within the checkpoint budget "
                   f"instead of a {k}-model fold ensemble",
    }
    how_chosen = {
        "epochs": f"best centred {smooth}-epoch moving average of the pooled out-of-fold macro AUC "
                  f"(each fold trained all {cfg.epochs} epochs, no early stopping)",
        "calibration": "fitted on the pooled out-of-fold raw probabilities at the chosen epoch",
        "thresholds": "Youden's J on the calibrated pooled out-of-fold probabilities at the chosen epoch "
                      "(the 'youden_val' rule name is kept for the app)",
        "metrics.val": "out-of-fold predictions of the validation images (fold models, not the shipped one)",
        "metrics.oof": "pooled out-of-fold predictions of every train + val image (calibrated in-sample)",
        "metrics.test": TEST_READ_ONCE,
    }
    card = make_card(model_id, data, cfg, res, model, init, input_size, served, block, t0, command,
                     best_epoch=n_epochs, extra={"cv": cv, "how_chosen": how_chosen})
    preds = {**served.predictions, "oof_folds": folds.astype(np.int64)}
    card = checkpoints.save(out_dir, model, card, preds, res.history)
    clear_resume(out_dir)
    shutil.rmtree(out_dir / CV_DIR, ignore_errors=True)  # the folds' work: the checkpoint now holds what it gave
    return card
