"""Does an upload look like the films one model was trained on?

A Mahalanobis distance in a PCA space of the model's final pooled features (what its classifier reads), fitted on a
fixed-size sample of the training split, so memory does not grow with the number of training images; the warning
threshold is a high percentile of validation scores, so about 1 % of real validation images would be flagged. A
dataset distributed at another size than its films are uploaded at (PneumoniaMNIST: 28 px, made from full-size
Kermany films) is also fitted on those films as the app's upload path delivers them (decoded, centre square, resized
by :func:`cxrcore.imaging.to_dataset_size`), each kind of film with its own held-out validation films; the threshold
is the highest of their percentiles. Without them a paediatric film uploaded at full size looked foreign to the
paediatric models (14 % of Kermany test films flagged). An upload with fewer pixels across than the model reads is
reported apart (:func:`too_coarse`): upscaled, it is blurrier than any training film. A
detector whose numbers cannot be right (a threshold that is not finite, not positive, or far beyond any distance a
real film reaches) is refused with the reason, never trusted. It is a warning, never a refusal: the radiologist
decides. The model-independent checks (orientation, inversion, colour, population) are in :mod:`cxrcore.gate`.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import gate_training, imaging
from .inference import LoadedModel

OOD_FILE = "ood.json"
FEATURES = "pre-logits"  # what a detector was fitted on; one fitted on anything else is stale
MAX_FIT_IMAGES = 2048  # training images sampled for the fit (and validation images for the threshold)
MAX_THRESHOLD_PER_SQRT_K = 50.0  # a real film's distance is about sqrt(k); a threshold past 50 sqrt(k) flags nothing
NOISE_CHECK_IMAGES = 64  # generated noise images every detector is tried on after its fit
MIN_NOISE_FLAGGED = 0.5  # a detector that lets most of them through cannot vouch for a film
UPLOADED_AS = {"pneumoniamnist": "Kermany"}  # dataset-name prefix -> the full-size films it was made from
log = logging.getLogger(__name__)


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
    sources: dict[str, dict] = field(default_factory=dict)  # per kind of film: images fitted, validated, percentile
    noise_flagged: float | None = None  # share of generated noise images it flags (None: fitted before the check)

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


@dataclass(frozen=True)
class Source:
    """One kind of film a detector learns: uint8 (N, 1, S, S) images at the model's data size, training ones for the
    fit and held-out ones for the threshold."""

    name: str
    train: torch.Tensor
    val: torch.Tensor


def fit(model_id: str, train_feats: np.ndarray, val_feats: np.ndarray | dict[str, np.ndarray], k: int = 32,
        percentile: float = 99.0, n_fit: dict[str, int] | None = None) -> OODModel:
    """PCA (k axes) on training features; threshold = the highest ``percentile`` of validation scores over the kinds
    of film in ``val_feats`` (one array: a single kind), so no kind is flagged more often than that."""
    vals = val_feats if isinstance(val_feats, dict) else {"val": val_feats}
    mean = train_feats.mean(0)
    _, s, vt = np.linalg.svd(train_feats - mean, full_matrices=False)
    k = min(k, len(s))
    var = (s[:k] ** 2) / max(1, len(train_feats) - 1) + 1e-6
    score = lambda f: np.sqrt(((((f - mean) @ vt[:k].T) ** 2) / var).sum(1))  # noqa: E731
    at = {name: float(np.percentile(score(f), percentile)) for name, f in vals.items()}
    sources = {name: {"n_fit": (n_fit or {}).get(name, 0), "n_val": len(vals[name]), "val_percentile_score": at[name]}
               for name in vals}
    return OODModel(model_id, mean.tolist(), vt[:k].tolist(), var.tolist(), max(at.values()), percentile,
                    n_fit=len(train_feats), sources=sources)


def _pick(images: torch.Tensor, max_images: int) -> torch.Tensor:
    return images[torch.from_numpy(sample(len(images), max_images))]


def noise_films(n: int, size: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """(n, channels, size, size) uint8 generated noise (the gate's four kinds), at a model's data size: what any
    detector must flag before it may vouch for a film."""
    noise = gate_training.noise(np.random.default_rng(seed), n)
    films = np.stack([imaging.to_dataset_size(x, size) for x in noise])[:, None]
    return torch.from_numpy(np.repeat(films, channels, axis=1))


def fit_checkpoint(m: LoadedModel, data, max_images: int = MAX_FIT_IMAGES, extra: tuple[Source, ...] = ()) -> OODModel:
    """Fit one loaded checkpoint's detector on a sample of its train split (and of each ``extra`` source), threshold
    on their validation images, and record how much generated noise it flags (:func:`load_for` refuses one that
    lets most through); saved beside it."""
    own = Source(m.card.dataset.name, data.images["train"], data.images["val"])
    srcs = (own, *extra)
    train = {s.name: features(m, _pick(s.train, max_images)) for s in srcs}
    val = {s.name: features(m, _pick(s.val, max_images)) for s in srcs}
    det = fit(m.id, np.concatenate(list(train.values())), val, n_fit={k: len(v) for k, v in train.items()})
    noise = noise_films(NOISE_CHECK_IMAGES, m.data_size, own.train.shape[1])
    det = replace(det, noise_flagged=float((det.score(features(m, noise)) > det.threshold).mean()))
    det.save(m.path / OOD_FILE)
    return det


def _films_at(paths: list[Path], size: int) -> torch.Tensor:
    """Files through the app's upload path: decoded, centre square, resized to ``size`` (uint8 (N, 1, size, size))."""
    pixels = [imaging.to_dataset_size(imaging.decode(p.read_bytes(), p.name).pixels, size) for p in paths]
    return torch.from_numpy(np.stack(pixels))[:, None]


def upload_sources(dataset: str, size: int, data_dir: Path, max_images: int = MAX_FIT_IMAGES,
                   seed: int = 0) -> tuple[Source, ...]:
    """The full-size films a dataset was made from, as uploads of them reach a model of ``size`` px: () for a dataset
    distributed at its upload size (NIH), or when those films are not on this machine (logged)."""
    name = next((v for k, v in UPLOADED_AS.items() if dataset.startswith(k)), None)
    if name is None:
        return ()
    if not (data_dir / gate_training.KERMANY_FOLDER).is_dir():
        log.warning("%s films not found under %s: the detector learns %s's own images only", name, data_dir, dataset)
        return ()
    split = {s: gate_training.kermany_paths(data_dir, s) for s in ("train", "val")}
    picked = {s: [p[i] for i in sample(len(p), max_images, seed)] for s, p in split.items()}
    return (Source(f"{name} train films, uploaded", _films_at(picked["train"], size), _films_at(picked["val"], size)),)


def too_coarse(shape: tuple[int, ...], data_size: int) -> str | None:
    """Why an (H, W) upload is coarser than the films a model of ``data_size`` px learnt from, None when it is not:
    the square the model reads has fewer pixels across than its input, so it is upscaled (a 28 px PneumoniaMNIST
    film on a 64 px model), blurrier than any training film."""
    side = min(shape[:2])
    if side >= data_size:
        return None
    return (f"the image is {side} px across, fewer than the {data_size} px these models read: upscaled, it is "
            "blurrier than any film they learnt from")


def detector(folder: Path) -> OODModel | None:
    """The detector stored in a checkpoint folder, None when it has none; ValueError when it has one that is refused:
    damaged, of an older kind, or one whose features do not tell generated noise from films (ImageNet
    EfficientNet-Lite0's pooled features put noise nearer the films' mean than the films themselves: it flagged none).
    Reads only the detector file, so a caller can pass over a refused one without loading its model."""
    path = folder / OOD_FILE
    if not path.exists():
        return None
    det = OODModel.load(path)
    if det.noise_flagged is not None and det.noise_flagged < MIN_NOISE_FLAGGED:
        raise ValueError(f"it flags {det.noise_flagged:.0%} of generated noise images (at least "
                         f"{MIN_NOISE_FLAGGED:.0%} needed): its features do not tell non-films from films")
    return det


def usable(folder: Path) -> bool:
    """Does the checkpoint folder hold a detector that :func:`detector` accepts?"""
    try:
        return detector(folder) is not None
    except (ValueError, TypeError, OSError, json.JSONDecodeError):
        return False


def load_for(m: LoadedModel) -> OODModel | None:
    """The loaded model's detector (see :func:`detector`)."""
    return detector(m.path)


def is_current(path: Path) -> bool:
    """Does ``path`` hold a detector of the current kind that passes the checks (else it should be refitted)?"""
    try:
        OODModel.load(path)
    except (ValueError, TypeError, OSError, json.JSONDecodeError):
        return False
    return True
