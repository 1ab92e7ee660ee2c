"""Does an upload look like the frontal chest X-rays the models were trained on?

A Mahalanobis distance in a PCA space of one model's pooled features, fitted on the training split; the warning
threshold is a high percentile of the validation split's scores, so about 1 % of real validation images would be
flagged. It is a warning, never a refusal: the radiologist decides.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch

from .inference import LoadedModel
from .zoo import resolve_module

OOD_FILE = "ood.json"


@torch.no_grad()
def features(m: LoadedModel, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Pooled activations of the model's Grad-CAM layer (its last feature map, or last ViT block's tokens):
    one hook that works for every zoo architecture."""
    layer = resolve_module(m.model, m.spec.cam_layer)
    grabbed: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: grabbed.append(out.float()))
    try:
        m.predict(images)
    finally:
        handle.remove()
    return torch.cat([g.mean(1) if g.ndim == 3 else g.mean((2, 3)) for g in grabbed]).cpu().numpy()


@dataclass(frozen=True)
class OODModel:
    model_id: str
    mean: list[float]
    components: list[list[float]]  # (k, d) principal axes
    variances: list[float]  # (k,) variance along each axis
    threshold: float
    percentile: float

    def score(self, feats: np.ndarray) -> np.ndarray:
        z = (np.asarray(feats) - np.asarray(self.mean)) @ np.asarray(self.components).T
        return np.sqrt((z ** 2 / np.asarray(self.variances)).sum(1))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "OODModel":
        return cls(**json.loads(path.read_text()))


def fit(model_id: str, train_feats: np.ndarray, val_feats: np.ndarray, k: int = 32,
        percentile: float = 99.0) -> OODModel:
    """PCA (k axes) on training features; threshold = ``percentile`` of validation scores."""
    mean = train_feats.mean(0)
    _, s, vt = np.linalg.svd(train_feats - mean, full_matrices=False)
    k = min(k, len(s))
    var = (s[:k] ** 2) / max(1, len(train_feats) - 1) + 1e-6
    draft = OODModel(model_id, mean.tolist(), vt[:k].tolist(), var.tolist(), 0.0, percentile)
    threshold = float(np.percentile(draft.score(val_feats), percentile))
    return OODModel(model_id, mean.tolist(), vt[:k].tolist(), var.tolist(), threshold, percentile)


def fit_checkpoint(m: LoadedModel, data) -> OODModel:
    """Fit the detector of one loaded checkpoint on its dataset's train split, threshold on val; saved beside it."""
    det = fit(m.id, features(m, data.images["train"]), features(m, data.images["val"]))
    det.save(m.path / OOD_FILE)
    return det


def load_for(m: LoadedModel) -> OODModel | None:
    path = m.path / OOD_FILE
    return OODModel.load(path) if path.exists() else None
