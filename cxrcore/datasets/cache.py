"""The decoded-dataset cache: one folder per (dataset, size, content key) holding an uncompressed ``.npy`` per split
array, memory-mapped on load so every process of a node (DDP ranks, app workers) shares one copy in the page cache.

A folder appears whole or not at all: it is written under a temporary name and renamed into place. The split
checksum the cards record is computed once per folder, streaming, and stored in it (``split_checksum``), so it goes
with the folder when its sources change.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..data import SPLITS, checksum_splits
from .common import Splits

LOADER_VERSION = 2  # bump when decoding or the layout of the cache changes: old folders are then never read
META = "meta.json"
CHECKSUM = "split_checksum"


def cache_root() -> Path:
    """``$CXR_CACHE_DIR``, else ``~/.cache/cxr-compare``."""
    return Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr-compare"))


def key(name: str, size: int, fingerprint: str, *parts: object) -> str:
    """The cache key: the sources' content fingerprint, size, loader version and the entry facts that shape arrays."""
    return hashlib.sha256(repr((name, size, fingerprint, LOADER_VERSION, parts)).encode()).hexdigest()[:20]


def folder(name: str, size: int, cache_key: str) -> Path:
    return cache_root() / name / f"{size}px-{cache_key}"


def read(path: Path) -> tuple[Splits, dict] | None:
    """The cached splits (arrays memory-mapped copy-on-write) and meta, or None when not cached."""
    meta_path = path / META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    load = lambda f: np.load(path / f"{f}.npy", mmap_mode="c", allow_pickle=False)  # noqa: E731
    images = {s: load(f"{s}_images") for s in SPLITS}
    labels = {s: load(f"{s}_labels") for s in SPLITS}
    extras = {k: {s: np.load(path / f"{s}_{k}.npy", allow_pickle=False) for s in SPLITS} for k in meta["extras"]}
    return Splits(images, labels, extras, meta["record"]), meta


def read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
    """One split's images (memory-mapped read-only), labels and extras, reading no other split; None when the folder
    is not cached."""
    meta_path = path / META
    if not meta_path.is_file():
        return None
    extras = json.loads(meta_path.read_text())["extras"]
    return (np.load(path / f"{split}_images.npy", mmap_mode="r", allow_pickle=False),
            np.load(path / f"{split}_labels.npy", allow_pickle=False),
            {k: np.load(path / f"{split}_{k}.npy", allow_pickle=False) for k in extras})


def write(path: Path, splits: Splits, meta: dict) -> None:
    """Write the splits under a temporary folder beside ``path`` and rename it into place; a concurrent writer of
    the same key (another rank) may win, which is fine: both wrote the same content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for s in SPLITS:
            np.save(tmp / f"{s}_images.npy", np.ascontiguousarray(splits.images[s]))
            np.save(tmp / f"{s}_labels.npy", np.ascontiguousarray(splits.labels[s], dtype=np.float32))
            for k, v in splits.extras.items():
                np.save(tmp / f"{s}_{k}.npy", np.asarray(v[s]).astype(str))
        (tmp / META).write_text(json.dumps({**meta, "extras": sorted(splits.extras), "record": splits.record},
                                           indent=1))
        try:
            tmp.rename(path)
        except OSError:
            if not (path / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def split_checksum(path: Path, splits: Splits) -> str:
    """The folder's stored split checksum; hashed from the mapped arrays and stored (atomically) when the folder has
    none yet (written before checksums were stored, or by a writer that lost the race)."""
    stored = path / CHECKSUM
    try:
        digest = stored.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    digest = checksum_splits(splits.images, splits.labels)
    tmp = path / f".{CHECKSUM}.{os.getpid()}"
    try:
        tmp.write_text(digest)
        tmp.replace(stored)
    except OSError:  # a read-only cache still loads; the digest is then recomputed by the next process
        tmp.unlink(missing_ok=True)
    return digest
