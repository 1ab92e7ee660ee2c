"""Does an upload look like the films one model was trained on?

A Mahalanobis distance in a PCA space of the model's final pooled features (what its classifier reads), fitted on a
fixed-size sample of the training split, so memory does not grow with the number of training images; the warning
threshold is a high percentile of validation scores, so about 1 % of real validation images would be flagged. A
detector whose numbers cannot be right (a threshold that is not finite, not positive, or far beyond any distance a
real film reaches) is refused with the reason, never trusted. It is a warning, never a refusal: the radiologist
decides. The model-independent checks (orientation, inversion, colour, population) are in :mod:`cxrcore.gate`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .inference import LoadedModel

OOD_FILE = "ood.json"
FEATURES = "pre-logits"  # what a detector was fitted on; one fitted on anything else is stale
MAX_FIT_IMAGES = 2048  # training images sampled for the fit (and validation images for the threshold)
MAX_THRESHOLD_PER_SQRT_K = 50.0  # a real film's distance is about sqrt(k); a threshold past 50 sqrt(k) flags nothing


def classifier(model: nn.Module) -> nn.Module:
    """The final linear layer of any zoo model (timm ``get_classifier``, SimpleCNN ``head``), through a LoRA wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_classifier() if hasattr(base, "get_classifier") else base.head


@torch.no_grad()
def features(m: LoadedModel, images: torch.Tensor) -> np.ndarray:
    """(N, d) pre-logits: the pooled features the classifier reads, caught on its input, batch by batch, so only
    d floats per image are ever kept (never a feature map)."""
    grabbed: list[torch.Tensor] = []
    handle = classifier(m.model).register_forward_pre_hook(
        lambda _m, args: grabbed.append(args[0].detach().float().flatten(1).cpu()))
    try:
        m.predict(images)
    finally:
        handle.remove()
    return torch.cat(grabbed).numpy()


def sample(n: int, max_images: int = MAX_FIT_IMAGES, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded draw of at most ``max_images`` of ``n`` images."""
    if n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))


@dataclass(frozen=True)
class OODModel:
    model_id: str
    mean: list[float]
    components: list[list[float]]  # (k, d) principal axes
    variances: list[float]  # (k,) variance along each axis
    threshold: float
    percentile: float
    features: str = FEATURES
    n_fit: int = 0  # training images the fit used

    def __post_init__(self) -> None:
        """Refuse numbers that cannot describe a fitted detector (ValueError with the reason)."""
        k, d = len(self.variances), len(self.mean)
        if self.features != FEATURES:
            raise ValueError(f"fitted on {self.features!r} features, not {FEATURES!r}: refit it")
        if k == 0 or np.shape(self.components) != (k, d):
            raise ValueError(f"components {np.shape(self.components)} do not fit {k} variances of {d} features")
        if not all(math.isfinite(v) and v > 0 for v in self.variances):
            raise ValueError("variances must be finite and positive")
        limit = MAX_THRESHOLD_PER_SQRT_K * math.sqrt(k)
        t = self.threshold
        if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 < t <= limit):
            raise ValueError(f"threshold {t!r} is not in (0, {limit:.0f}] (50 sqrt(k) for k={k} axes): refused")

    def score(self, feats: np.ndarray) -> np.ndarray:
        z = (np.asarray(feats) - np.asarray(self.mean)) @ np.asarray(self.components).T
        return np.sqrt((z ** 2 / np.asarray(self.variances)).sum(1))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "OODModel":
        """Raises ValueError when the file holds a detector that cannot be trusted (one from before ``features``
        was recorded was fitted on the Grad-CAM layer: refused as stale)."""
        return cls(**{"features": "unrecorded", **json.loads(path.read_text())})


def fit(model_id: str, train_feats: np.ndarray, val_feats: np.ndarray, k: int = 32,
        percentile: float = 99.0) -> OODModel:
    """PCA (k axes) on training features; threshold = ``percentile`` of validation scores."""
    mean = train_feats.mean(0)
    _, s, vt = np.linalg.svd(train_feats - mean, full_matrices=False)
    k = min(k, len(s))
    var = (s[:k] ** 2) / max(1, len(train_feats) - 1) + 1e-6
    z = (val_feats - mean) @ vt[:k].T
    threshold = float(np.percentile(np.sqrt((z ** 2 / var).sum(1)), percentile))
    return OODModel(model_id, mean.tolist(), vt[:k].tolist(), var.tolist(), threshold, percentile,
                    n_fit=len(train_feats))


def fit_checkpoint(m: LoadedModel, data, max_images: int = MAX_FIT_IMAGES) -> OODModel:
    """Fit one loaded checkpoint's detector on a sample of its train split, threshold on val; saved beside it."""
    train, val = data.images["train"], data.images["val"]
    pick = lambda images: images[torch.from_numpy(sample(len(images), max_images))]  # noqa: E731
    det = fit(m.id, features(m, pick(train)), features(m, pick(val)))
    det.save(m.path / OOD_FILE)
    return det


def load_for(m: LoadedModel) -> OODModel | None:
    """The model's detector, None when it has none; ValueError when it has one that is refused."""
    path = m.path / OOD_FILE
    return OODModel.load(path) if path.exists() else None


def is_current(path: Path) -> bool:
    """Does ``path`` hold a detector of the current kind that passes the checks (else it should be refitted)?"""
    try:
        OODModel.load(path)
    except (ValueError, TypeError, OSError, json.JSONDecodeError):
        return False
    return True
