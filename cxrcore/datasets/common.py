"""What every image-file layout shares: the item list a source scans, the patient-grouped carving of missing splits,
content fingerprints and the one decode pass (with a progress bar, and every unreadable file named)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import data, imaging
from ..data import SPLITS, DatasetNotFound
from .registry import DatasetEntry, SplitPolicy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
# Dataset images may be small (MedMNIST-sized folders); the byte and pixel caps of uploads still hold.
DATASET_LIMITS = imaging.Limits(min_side=1)
MAX_NAMED = 20  # unreadable files named in an error message (all are counted)


class DatasetError(ValueError):
    """Input that cannot become a dataset (a CSV without a needed column, unknown labels, unreadable images)."""


@dataclass
class Splits:
    """Decoded data of the three splits, as plain arrays: images (N, C, H, W) uint8, labels (N, L) float32."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # e.g. names, patients per split
    record: dict = field(default_factory=dict)  # split policy and anything the card's dataset record should say


@dataclass(frozen=True)
class Scan:
    """A source found on disk: its content fingerprint (the cache key's part), where it is, and how to decode it."""

    fingerprint: str
    origin: str
    build: Callable[[], Splits]


@dataclass(frozen=True)
class Item:
    """One image file with its label row (multi-label 0/1 columns, or the class index as one column)."""

    path: Path
    label: tuple[float, ...]
    split: str | None  # None: the source has no splits
    patient: str  # grouping key for carving; the file's own name when the source names no patient


def root_of(path: str | Path) -> Path:
    """A source path: absolute as given, else under the shared data folder (``$CXR_DATA_DIR``)."""
    from ..data import data_dir

    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else data_dir() / path


def require_dir(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFound(f"{name} needs the folder {path}, which does not exist. Put the data there or set "
                              "CXR_DATA_DIR to the folder that holds it.")
    return path


def split_name(folder: str) -> str | None:
    return SPLIT_ALIASES.get(folder.lower())


def label_index(entry: DatasetEntry) -> dict[str, int]:
    """Label name -> column, case-insensitive (folders are often NORMAL/, labels normal)."""
    return {n.lower(): i for i, n in enumerate(entry.labels)}


def carve(items: list[Item], policy: SplitPolicy) -> tuple[list[Item], dict]:
    """Assign every item a split: the source's own, or carved from train by whole patients (seeded).

    Test is carved first (only for sources without one), then validation from what is left of train; each takes
    patients in a seeded random order until it holds at least its fraction of train's images.
    """
    have = {i.split for i in items}
    if None in have and have != {None}:
        raise DatasetError("some images have a split and others none; give every image a split or none")
    items = [Item(i.path, i.label, i.split or "train", i.patient) for i in items]
    record = policy.record()
    for split, fraction in (("test", policy.test_fraction), ("val", policy.val_fraction)):
        present = any(i.split == split for i in items)
        if fraction is None:
            if not present:
                raise DatasetError(f"the source has no {split} split; the entry's split policy must carve one "
                                   f"(SplitPolicy({split}_fraction=...))")
            continue
        if present:
            raise DatasetError(f"the source has its own {split} split; the entry must not carve another")
        train = [i for i in items if i.split == "train"]
        patients = sorted({i.patient for i in train})
        order = np.random.default_rng([policy.seed, SPLITS.index(split)]).permutation(len(patients))
        per_patient: dict[str, int] = {}
        for i in train:
            per_patient[i.patient] = per_patient.get(i.patient, 0) + 1
        chosen, n = set(), 0
        for k in order:
            if n >= fraction * len(train):
                break
            chosen.add(patients[k])
            n += per_patient[patients[k]]
        if not chosen or len(chosen) == len(patients):
            raise DatasetError(f"cannot carve a {split} split of {fraction:g} from {len(train)} training images of "
                               f"{len(patients)} patients")
        items = [Item(i.path, i.label, split, i.patient) if i.split == "train" and i.patient in chosen else i
                 for i in items]
    return items, record


def file_md5s(paths: Sequence[Path], root: Path) -> dict[Path, str]:
    """MD5 of each file's bytes. Digests are remembered beside the cache by (size, mtime), as git's index does, so
    a second load of a large release stats its files instead of reading them all again."""
    from .cache import cache_root

    memo_path = cache_root() / "file-md5" / f"{hashlib.md5(str(root.resolve()).encode()).hexdigest()}.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    out, fresh = {}, {}
    for p in paths:
        st = p.stat()
        rel = p.relative_to(root).as_posix()
        known = memo.get(rel)
        if known and known[:2] == [st.st_size, st.st_mtime_ns]:
            out[p] = known[2]
        else:
            out[p] = data.md5sum(p)
        fresh[rel] = [st.st_size, st.st_mtime_ns, out[p]]
    if fresh != memo:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(fresh))
        tmp.replace(memo_path)
    return out


def file_md5(path: Path) -> str:
    """One large file's MD5 (a MedMNIST npz: 11 s at 224 px), remembered by (size, mtime) as :func:`file_md5s` does,
    so every rank's and every run's load stats the file instead of reading it."""
    return file_md5s([path], path)[path]


def fingerprint(items: Sequence[Item], root: Path, *parts: object) -> str:
    """MD5 over every file's bytes, relative path, label, split and patient, plus ``parts``: a changed, added,
    removed or relabelled image gives another key."""
    h = hashlib.md5(repr(parts).encode())
    items = sorted(items, key=lambda i: str(i.path))
    digests = file_md5s([i.path for i in items], root)
    for i in items:
        h.update(f"{i.path.relative_to(root).as_posix()}|{i.label}|{i.split}|{i.patient}|".encode())
        h.update(digests[i.path].encode())
    return h.hexdigest()


def decode_items(items: list[Item], entry: DatasetEntry, size: int, record: dict, root: Path) -> Splits:
    """Decode each file once with :func:`cxrcore.imaging.decode` (the decoder uploads go through) and square it
    with the entry's rule; any unreadable file fails the whole load, counted and named."""
    from tqdm import tqdm

    shape = (entry.channels, size, size)
    images = {s: np.empty((sum(i.split == s for i in items), *shape), np.uint8) for s in SPLITS}
    fill = dict.fromkeys(SPLITS, 0)
    bad: list[str] = []
    for item in tqdm(items, desc=f"{entry.name} at {size} px", unit="img", dynamic_ncols=True, mininterval=1.0):
        try:
            if item.path.suffix.lower() not in IMAGE_SUFFIXES:
                raise imaging.ImageError(f"not an image file type ({', '.join(IMAGE_SUFFIXES)})")
            img = imaging.decode(item.path.read_bytes(), item.path.name, DATASET_LIMITS, rgb=entry.channels == 3)
            px = imaging.to_dataset_size(img.pixels, size, entry.square)
        except (imaging.ImageError, OSError) as exc:
            bad.append(f"{item.path.relative_to(root).as_posix()} ({exc})")
            continue
        images[item.split][fill[item.split]] = px.transpose(2, 0, 1) if px.ndim == 3 else px[None]
        fill[item.split] += 1
    if bad:
        more = f", and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise DatasetError(f"{len(bad)} of {len(items)} images of {entry.name} could not be read (nothing was "
                           f"cached): {'; '.join(bad[:MAX_NAMED])}{more}")
    by = {s: [i for i in items if i.split == s] for s in SPLITS}
    labels = {s: np.array([i.label for i in by[s]], np.float32).reshape(len(by[s]), -1) for s in SPLITS}
    extras = {"names": {s: np.array([i.path.relative_to(root).as_posix() for i in by[s]], dtype=str) for s in SPLITS},
              "patients": {s: np.array([i.patient for i in by[s]], dtype=str) for s in SPLITS}}
    return Splits(images, labels, extras, record)


def image_scan(items: list[Item], entry: DatasetEntry, size: int, root: Path, layout: str) -> Scan:
    """The Scan of an image-file source: carve the missing splits, fingerprint the files, decode on demand."""
    if not items:
        raise DatasetError(f"{entry.name}: no image files found under {root}")
    items, record = carve(sorted(items, key=lambda i: str(i.path)), entry.split)
    # Stored in an order fixed by the file names but unrelated to folders and classes, so the first n images of a
    # split (Dataset.subset, smoke runs) hold every class as the whole split does
    items.sort(key=lambda i: hashlib.md5(i.path.relative_to(root).as_posix().encode()).hexdigest())
    record = {**record, "layout": layout, "square": entry.square}
    key = fingerprint(items, root, layout)
    return Scan(key, str(root), lambda: decode_items(items, entry, size, record, root))
