"""MedMNIST's npz layout: ``{split}_images`` (N, H, W[, C]) and ``{split}_labels`` (N, L) uint8, official splits.

:class:`MedMNISTFile` reads a local file of that layout (``nih14_local_64.npz``, which adds ``{split}_names``,
``{split}_patients`` and ``label_names``); :class:`MedMNISTOfficial` the official files through ``medmnist``
(MD5-checked, downloaded when asked and online).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import data
from ..data import SPLITS, DatasetNotFound
from ..task import kind_of
from .common import DatasetError, Scan, Splits, file_md5, root_of
from .registry import DatasetEntry

MEDMNIST_PROVENANCE = "MedMNIST v2 (Yang et al., Scientific Data 2023; CC BY 4.0), the official split"


def read_npz(path: Path, entry: DatasetEntry) -> Splits:
    """The three splits of a MedMNIST-layout file, images as (N, C, H, W); label names must match the entry's."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for s in SPLITS for k in (f"{s}_images", f"{s}_labels") if k not in z]
        if missing:
            raise DatasetError(f"{path} is not in MedMNIST's layout: no {', '.join(missing)}")
        if "label_names" in z and [str(n) for n in z["label_names"]] != list(entry.labels):
            raise DatasetError(f"{path} holds labels {[str(n) for n in z['label_names']]}, but {entry.name} "
                               f"expects {list(entry.labels)}")
        images, labels = {}, {}
        for s in SPLITS:
            x = z[f"{s}_images"]
            images[s] = np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))
            labels[s] = z[f"{s}_labels"].astype(np.float32).reshape(len(x), -1)
        extras = {k: {s: z[f"{s}_{k}"] for s in SPLITS} for k in ("names", "patients") if f"train_{k}" in z}
    return Splits(images, labels, extras, {"split_policy": "official", "layout": "medmnist-npz"})


@dataclass(frozen=True)
class MedMNISTFile:
    """A local MedMNIST-layout file; ``pattern`` names it per size (``nih14_local_{size}.npz``), under
    ``$CXR_DATA_DIR`` unless absolute."""

    pattern: str

    def scan(self, entry: DatasetEntry, size: int, download: bool) -> Scan:
        path = root_of(self.pattern.format(size=size))
        if not path.exists():
            raise DatasetNotFound(f"{entry.name} at {size} px needs {path}. Set CXR_DATA_DIR to the folder holding "
                                  f"{Path(self.pattern.format(size=size)).name} (the project's shared data folder).")
        return Scan(file_md5(path), str(path), lambda: read_npz(path, entry))


@dataclass(frozen=True)
class MedMNISTOfficial:
    """An official MedMNIST file from ``$MEDMNIST_ROOT``, checked against MedMNIST's MD5."""

    flag: str

    def scan(self, entry: DatasetEntry, size: int, download: bool) -> Scan:
        import medmnist

        info = medmnist.INFO[self.flag]
        suffix = "" if size == 28 else f"_{size}"
        if f"MD5{suffix}" not in info:
            raise ValueError(f"{self.flag} has no {size} px version; sizes: 28, 64, 128, 224")
        root = data.medmnist_root()
        path = root / f"{self.flag}{suffix}.npz"
        if not path.exists() and download:
            root.mkdir(parents=True, exist_ok=True)
            try:  # medmnist's own downloader (needs the network)
                getattr(medmnist, info["python_class"])(split="test", download=True, root=str(root), size=size)
            except Exception as exc:  # noqa: BLE001 - any network failure becomes the clear message below
                raise DatasetNotFound(f"Could not download {self.flag} ({exc}). Put {path.name} (from "
                                      f"{info[f'url{suffix}']}) in {root} or set MEDMNIST_ROOT.") from exc
        if not path.exists():
            raise DatasetNotFound(f"{path} not found and download is off. Download {info[f'url{suffix}']} into "
                                  f"{root} (or set MEDMNIST_ROOT), or pass --download on a machine with internet.")
        md5 = file_md5(path)
        if md5 != info[f"MD5{suffix}"]:
            raise ValueError(f"{path} has MD5 {md5}, expected {info[f'MD5{suffix}']}: the file is corrupt or not "
                             "official")
        return Scan(md5, str(path), lambda: read_npz(path, entry))


@lru_cache(maxsize=1)
def medmnist_flags() -> tuple[str, ...]:
    """Every 2D MedMNIST flag (3D volumes are not images this project reads)."""
    import medmnist

    return tuple(sorted(k for k in medmnist.INFO if not k.endswith("3d")))


def medmnist_labels(flag: str) -> tuple[str, ...]:
    import medmnist

    return tuple(medmnist.INFO[flag]["label"].values())


def medmnist_entry(flag: str) -> DatasetEntry | None:
    """A generic entry for a 2D MedMNIST flag from MedMNIST's INFO (None for anything else)."""
    import medmnist

    if flag not in medmnist.INFO:
        return None
    if flag.endswith("3d"):
        raise ValueError(f"{flag} is a 3D dataset; only 2D MedMNIST datasets are supported")
    info = medmnist.INFO[flag]
    return DatasetEntry(
        name=flag, title=f"{info['python_class']} (MedMNIST)", kind=kind_of(info["task"]), labels=medmnist_labels(flag),
        provenance=f"{MEDMNIST_PROVENANCE}: {info['description'].split('. ')[0]}.", source=MedMNISTOfficial(flag),
        default_size=28, channels=int(info["n_channels"]), published=(), extra={"medmnist_flag": flag})
