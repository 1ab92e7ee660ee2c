"""Datasets in MedMNIST's npz layout, preloaded as uint8 tensors, plus batch-wise augmentation.

One loader reads the official MedMNIST files (through the ``medmnist`` package, MD5-checked, downloaded when online)
and the local MedMNIST-layout files in ``../shared/data`` (``nih14-local``, ``pneumoniamnist-local``).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "val", "test")
REPO_ROOT = Path(__file__).resolve().parents[1]

# Local MedMNIST-layout files: dataset name -> (file pattern, MedMNIST flag whose task/labels they share)
LOCAL_DATASETS = {
    "nih14-local": ("nih14_local_{size}.npz", "chestmnist"),
    "pneumoniamnist-local": ("pneumoniamnist_{size}.npz", "pneumoniamnist"),
}
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


@dataclass
class Dataset:
    """All three splits of one dataset in memory: images (N, C, H, W) uint8 and labels (N, L) float32."""

    name: str
    size: int
    task: str
    label_names: list[str]
    images: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray]
    source: str
    md5: str
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # e.g. NIH file names per split

    @property
    def channels(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def num_outputs(self) -> int:
        """Model outputs: one per label (multi-label), one per class otherwise (binary uses 2-way softmax)."""
        return len(self.label_names)

    def counts(self) -> dict[str, int]:
        return {s: int(len(self.labels[s])) for s in SPLITS}

    def prevalence(self) -> dict[str, list[int]]:
        """Positives per label and split (multi-label), or images per class."""
        out = {}
        for s in SPLITS:
            y = self.labels[s]
            if self.task.startswith("multi-label"):
                out[s] = y.sum(0).astype(int).tolist()
            else:
                out[s] = np.bincount(y[:, 0].astype(int), minlength=len(self.label_names)).tolist()
        return out

    def split_checksum(self) -> str:
        """sha256 over every split's labels and image bytes, so a card names exactly the data it saw."""
        h = hashlib.sha256()
        for s in SPLITS:
            h.update(self.images[s].numpy().tobytes())
            h.update(self.labels[s].tobytes())
        return h.hexdigest()

    def subset(self, n_per_split: dict[str, int]) -> "Dataset":
        """First ``n`` images of each split (for quick smoke runs on real data)."""
        return Dataset(
            self.name, self.size, self.task, self.label_names,
            {s: self.images[s][: n_per_split.get(s)] for s in SPLITS},
            {s: self.labels[s][: n_per_split.get(s)] for s in SPLITS},
            self.source, self.md5,
            {k: {s: v[s][: n_per_split.get(s)] for s in SPLITS} for k, v in self.extras.items()},
        )


def _from_npz(path: Path, name: str, size: int, flag: str, md5: str) -> Dataset:
    import medmnist

    info = medmnist.INFO[flag]
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["label_names"]] if "label_names" in z else list(info["label"].values())
        images, labels, extras = {}, {}, {}
        for s in SPLITS:
            x = z[f"{s}_images"]
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
            images[s] = torch.from_numpy(np.ascontiguousarray(x))
            labels[s] = z[f"{s}_labels"].astype(np.float32).reshape(len(x), -1)
        for key in ("names", "patients"):
            if f"train_{key}" in z:
                extras[key] = {s: z[f"{s}_{key}"] for s in SPLITS}
    return Dataset(name, size, info["task"], names, images, labels, str(path), md5, extras)


def load_dataset(name: str = DEFAULT_DATASET, size: int = 64, download: bool = False) -> Dataset:
    """Load a dataset by name: a local file (``nih14-local``) or any MedMNIST 2D flag (``chestmnist``).

    MedMNIST files are read from :func:`medmnist_root`, checked against the official MD5, and downloaded there when
    ``download`` is true and the network allows it. Without a file the error says where to put one.
    """
    if name in LOCAL_DATASETS:
        pattern, flag = LOCAL_DATASETS[name]
        path = data_dir() / pattern.format(size=size)
        if not path.exists():
            raise DatasetNotFound(
                f"{name} at {size} px needs {path}. Set CXR_DATA_DIR to the folder holding "
                f"{pattern.format(size=size)} (the project's shared data folder)."
            )
        return _from_npz(path, name, size, flag, md5sum(path))

    import medmnist

    if name not in medmnist.INFO:
        known = sorted(LOCAL_DATASETS) + sorted(k for k in medmnist.INFO if not k.endswith("3d"))
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(known)}")
    if name.endswith("3d"):
        raise ValueError(f"{name} is a 3D dataset; only 2D MedMNIST datasets are supported")
    info = medmnist.INFO[name]
    suffix = "" if size == 28 else f"_{size}"
    if f"MD5{suffix}" not in info:
        raise ValueError(f"{name} has no {size} px version; sizes: 28, 64, 128, 224")
    root = medmnist_root()
    path = root / f"{name}{suffix}.npz"
    if not path.exists() and download:
        root.mkdir(parents=True, exist_ok=True)
        try:  # medmnist's own downloader (needs the network)
            getattr(medmnist, info["python_class"])(split="test", download=True, root=str(root), size=size)
        except Exception as exc:  # noqa: BLE001 - any network failure becomes the clear message below
            raise DatasetNotFound(
                f"Could not download {name} ({exc}). Put {path.name} (from {info[f'url{suffix}']}) in {root} "
                f"or set MEDMNIST_ROOT."
            ) from exc
    if not path.exists():
        raise DatasetNotFound(
            f"{path} not found and download is off. Download {info[f'url{suffix}']} into {root} "
            f"(or set MEDMNIST_ROOT), or pass --download on a machine with internet."
        )
    md5 = md5sum(path)
    if md5 != info[f"MD5{suffix}"]:
        raise ValueError(f"{path} has MD5 {md5}, expected {info[f'MD5{suffix}']}: the file is corrupt or not official")
    return _from_npz(path, name, size, name, md5)


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
