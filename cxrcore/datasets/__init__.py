"""Datasets: the registry of entries, one module per on-disk layout, and the decode-once cache.

    from cxrcore import datasets
    ds = datasets.load("kermany-pneumonia3", 128)     # decodes once, then memory-maps the cached arrays
    datasets.get("blood-cells").provenance             # what cards, the app and benchmarks show

Layouts: :class:`MedMNISTFile` / :class:`MedMNISTOfficial` (npz), :class:`ImageFolder`, :class:`LabelsCSV`,
:class:`NIHRelease`. Add a dataset with :func:`register` (see ``builtin.py`` and the README).
"""
from __future__ import annotations

import torch

from ..data import SPLITS, Dataset, DatasetNotFound
from . import cache
from .common import DatasetError
from .image_folder import ImageFolder
from .labels_csv import LabelsCSV
from .medmnist_npz import MedMNISTFile, MedMNISTOfficial
from .nih_release import NIHRelease
from .registry import OFFICIAL, DatasetEntry, SplitPolicy, entries, find, get, names, register
from . import builtin  # noqa: F401,E402 - registers the project's datasets

DEFAULT_DATASET = "nih14-local"

__all__ = ["DEFAULT_DATASET", "DatasetEntry", "DatasetError", "DatasetNotFound", "ImageFolder", "LabelsCSV",
           "MedMNISTFile", "MedMNISTOfficial", "NIHRelease", "OFFICIAL", "SplitPolicy", "entries", "find", "get",
           "load", "names", "register"]


def load(name: str | DatasetEntry = DEFAULT_DATASET, size: int | None = None, download: bool = False) -> Dataset:
    """A dataset by name (or an unregistered entry) at ``size`` px (the entry's default when None), from the cache
    when its sources are unchanged, else decoded once (with a progress bar) and cached."""
    entry = name if isinstance(name, DatasetEntry) else get(name)
    size = size or entry.default_size
    scan = entry.source.scan(entry, size, download)
    key = cache.key(entry.name, size, scan.fingerprint, entry.kind, entry.labels, entry.split, entry.square,
                    entry.channels)
    path = cache.folder(entry.name, size, key)
    cached = cache.read(path)
    if cached is None:
        splits = scan.build()
        shapes = {tuple(splits.images[s].shape[1:]) for s in SPLITS}
        if shapes != {(entry.channels, size, size)}:
            raise DatasetError(f"{scan.origin} holds images of shape {sorted(shapes)}, not {entry.name}'s "
                               f"({entry.channels}, {size}, {size})")
        cache.write(path, splits, {"name": entry.name, "size": size, "fingerprint": scan.fingerprint,
                                   "origin": scan.origin, "loader_version": cache.LOADER_VERSION})
        cached = cache.read(path)
    splits, _ = cached
    return Dataset(entry.name, size, entry.task, list(entry.labels),
                   {s: torch.from_numpy(splits.images[s]) for s in SPLITS}, dict(splits.labels), scan.origin,
                   scan.fingerprint, splits.extras, {**splits.record, "square": entry.square, "cache_key": key},
                   checksum=cache.split_checksum(path, splits))
