"""Patient-grouped k-fold cross-validation: folds, pooled out-of-fold predictions and the epoch they choose.

With 167 validation images (1-4 positives for several labels) an epoch, a threshold or a calibration chosen on
validation is mostly noise. Cross-validation on train + val scores every one of those images exactly once, by a model
that never saw its patient, so the pooled out-of-fold (OOF) predictions rest on 5-6 times more positives (Hernia: 18
instead of 1). Plain arrays in, plain arrays out.
"""
from __future__ import annotations

import numpy as np

from . import metrics


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
