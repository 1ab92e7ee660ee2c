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

OOD_FILE = "ood.json"


@torch.no_grad()
def features(m: LoadedModel, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Pooled penultimate features (timm ``forward_head(pre_logits=True)``) for uint8 images."""
    model = m.model.get_base_model() if hasattr(m.model, "get_base_model") else m.model
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = m.prep(images[i: i + batch_size]).to(dev)
        f = model.forward_features(x)
        out.append(model.forward_head(f, pre_logits=True).float().cpu())
    return torch.cat(out).numpy()


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
