"""The in-memory dataset every loop trains on, batch-wise augmentation, the shared preprocess and NIH boxes.

Datasets come from :mod:`cxrcore.datasets` (the registry, one loader per on-disk layout, the decode-once cache);
:func:`load_dataset` is its entry point under the old name.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .task import Task

SPLITS = ("train", "val", "test")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = "nih14-local"


class DatasetNotFound(FileNotFoundError):
    """Raised with a message that says where the file should be and how to get it."""


def data_dir() -> Path:
    """Where the shared local data lives: ``$CXR_DATA_DIR``, else ``../shared/data`` beside the repo."""
    return Path(os.environ.get("CXR_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def medmnist_root() -> Path:
    """Where official MedMNIST npz files are looked for (and downloaded to): ``$MEDMNIST_ROOT`` or ``~/.medmnist``."""
    return Path(os.environ.get("MEDMNIST_ROOT", Path.home() / ".medmnist"))


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksum_splits(images: Mapping[str, torch.Tensor | np.ndarray], labels: Mapping[str, np.ndarray],
                    rows: int = 4096) -> str:
    """sha256 over every split's image bytes then labels, read ``rows`` at a time: the digest of the whole buffers
    without ever copying a memory-mapped split (a slice is copied only when it is not contiguous)."""
    h = hashlib.sha256()
    for s in SPLITS:
        for arr in (images[s], labels[s]):
            arr = arr.numpy() if isinstance(arr, torch.Tensor) else arr
            for i in range(0, len(arr), rows):
                h.update(np.ascontiguousarray(arr[i:i + rows]).data)
    return h.hexdigest()


@dataclass
class Dataset:
    """All three splits of one dataset: images (N, C, H, W) uint8 (memory-mapped from the cache) and labels (N, L)
    float32 (a class index in one column for binary / multi-class). ``task`` is the card's task string;
    ``record`` what the card's dataset record adds (split policy, validation seed and fraction, square rule).
    ``checksum``: the split checksum when already known (the cache stores it); a Dataset made otherwise, by
    ``subset`` or ``dataclasses.replace``, hashes its own arrays once, on first use. Arrays are never changed in
    place, so the digest stays true."""

    name: str
    size: int
    task: str
    label_names: list[str]
    images: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray]
    source: str
    md5: str  # MD5 of the source file, or over the source files' contents (see datasets.common.fingerprint)
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # e.g. file names, patients per split
    record: dict = field(default_factory=dict)
    checksum: InitVar[str | None] = None
    _checksum: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self, checksum: str | None) -> None:
        if isinstance(self.task, Task):  # the registry hands a Task; the dataset keeps the card's string
            self.task = self.task.card
        self._checksum = checksum

    @property
    def typed_task(self) -> Task:
        return Task.parse(self.task, self.label_names)

    @property
    def channels(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def num_outputs(self) -> int:
        """Model outputs: one per label (multi-label), one per class otherwise (binary uses 2-way softmax)."""
        return self.typed_task.num_outputs

    def counts(self) -> dict[str, int]:
        return {s: int(len(self.labels[s])) for s in SPLITS}

    def prevalence(self) -> dict[str, list[int]]:
        """Positives per label and split (multi-label), or images per class."""
        task = self.typed_task
        return {s: task.prevalence(self.labels[s]) for s in SPLITS}

    def split_checksum(self) -> str:
        """sha256 over every split's image bytes and labels (:func:`checksum_splits`), so a card names exactly the
        data it saw; computed at most once per Dataset, and once per cached dataset (stored beside the cache)."""
        if self._checksum is None:
            self._checksum = checksum_splits(self.images, self.labels)
        return self._checksum

    def split(self, name: str) -> "Split":
        """One split as plain arrays (no copy)."""
        return Split(self.name, name, self.size, self.task, self.label_names, self.images[name].numpy(),
                     self.labels[name], split_names(self.name, name, self.extras, len(self.labels[name])))

    def subset(self, n_per_split: dict[str, int]) -> "Dataset":
        """First ``n`` images of each split (for quick smoke runs on real data)."""
        return Dataset(
            self.name, self.size, self.task, self.label_names,
            {s: self.images[s][: n_per_split.get(s)] for s in SPLITS},
            {s: self.labels[s][: n_per_split.get(s)] for s in SPLITS},
            self.source, self.md5,
            {k: {s: v[s][: n_per_split.get(s)] for s in SPLITS} for k, v in self.extras.items()},
            {**self.record, "subset": dict(n_per_split)},
        )


def split_names(dataset: str, split: str, extras: Mapping[str, Mapping[str, np.ndarray]], n: int) -> list[str]:
    """How each image of a split is named: its file name when the source names files, else dataset and index."""
    names = extras.get("names", {}).get(split)
    return [str(x) for x in names] if names is not None else [f"{dataset} {split} #{i}" for i in range(n)]


@dataclass(frozen=True)
class Split:
    """One split of a dataset, for views that need no other (the app's test-image picker): images (N, C, H, W)
    uint8, memory-mapped when read from the cache, labels as in :class:`Dataset`, and each image's name."""

    dataset: str
    name: str
    size: int
    task: str
    label_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def truth(self, index: int) -> list[str]:
        """The label names image ``index`` carries."""
        return Task.parse(self.task, self.label_names).names_of(self.labels[index])


def load_dataset(name: str = DEFAULT_DATASET, size: int | None = None, download: bool = False) -> Dataset:
    """A registered dataset (or any 2D MedMNIST flag) at ``size`` px: see :func:`cxrcore.datasets.load`."""
    from . import datasets

    return datasets.load(name, size, download)


@dataclass(frozen=True)
class Box:
    """An NIH bounding box in the original (1024 px) image's pixel coordinates."""

    label: str
    x: float
    y: float
    w: float
    h: float


def load_boxes(path: Path | None = None) -> dict[str, list[Box]]:
    """NIH ``BBox_List_2017.csv(.gz)``: image file name -> its boxes ({} when the file is not present)."""
    import csv
    import gzip

    path = path or data_dir() / "BBox_List_2017.csv.gz"
    if not path.exists():
        return {}
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, list[Box]] = {}
    with opener(path, "rt") as f:
        rows = csv.reader(f)
        next(rows)
        for r in rows:
            out.setdefault(r[0], []).append(Box(r[1], *map(float, r[2:6])))
    return out


def preprocess(images: torch.Tensor, input_size: int, mean: float, std: float, in_chans: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float (N, in_chans, S, S). The one transform training and inference share.

    It runs where ``images`` are (on the GPU when the batch is there) and creates no tensor anywhere else."""
    x = images.float().div_(255.0)
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    if x.shape[1] != in_chans:
        x = x.mean(1, keepdim=True) if in_chans == 1 else x.expand(-1, in_chans, -1, -1)
    return (x - mean) / std


@dataclass(frozen=True)
class Augment:
    """Random affine (rotation, translation, scale) applied to a whole batch at once; no flips.

    Vertical flips never occur on chest films, and horizontal ones swap the heart's side, so neither is used. The
    random draws come from ``generator`` on its own device (the batch's when none is given) and every tensor built
    from them is moved to the batch's device, so a CUDA batch never meets a CPU transform.
    """

    degrees: float = 10.0
    translate: float = 0.06
    scale: tuple[float, float] = (0.9, 1.1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        u = torch.rand(n, 4, generator=generator, device=generator.device if generator else x.device).to(x.device)
        ang = (u[:, 0] * 2 - 1) * math.radians(self.degrees)
        s = self.scale[0] + u[:, 1] * (self.scale[1] - self.scale[0])
        tx, ty = (u[:, 2] * 2 - 1) * self.translate * 2, (u[:, 3] * 2 - 1) * self.translate * 2
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
