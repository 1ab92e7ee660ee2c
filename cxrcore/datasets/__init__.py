"""Datasets: the registry of entries, one module per on-disk layout, and the decode-once cache.

    from cxrcore import datasets
    ds = datasets.load("kermany-pneumonia3", 128)     # decodes once, then memory-maps the cached arrays
    datasets.get("blood-cells").provenance             # what cards, the app and benchmarks show
    datasets.load_split("nih14-local", 64, "test", card.dataset.extra["cache_key"])   # one split, no scan

Layouts: :class:`MedMNISTFile` / :class:`MedMNISTOfficial` (npz), :class:`ImageFolder`, :class:`LabelsCSV`,
:class:`NIHRelease`. Add a dataset with :func:`register` (see ``builtin.py`` and the README).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import SPLITS, Dataset, DatasetNotFound, Split, split_names
from . import cache
from .common import DatasetError, Scan
from .image_folder import ImageFolder
from .labels_csv import LabelsCSV
from .medmnist_npz import MedMNISTFile, MedMNISTOfficial
from .nih_release import NIHRelease
from .registry import OFFICIAL, DatasetEntry, SplitPolicy, entries, find, get, names, register
from . import builtin  # noqa: F401,E402 - registers the project's datasets

DEFAULT_DATASET = "nih14-local"

__all__ = ["DEFAULT_DATASET", "DatasetEntry", "DatasetError", "DatasetNotFound", "ImageFolder", "LabelsCSV",
           "MedMNISTFile", "MedMNISTOfficial", "NIHRelease", "OFFICIAL", "SplitNotCached", "SplitPolicy", "entries",
           "find", "get", "load", "load_split", "names", "prepare_command", "register"]


def _locate(entry: DatasetEntry, size: int, download: bool) -> tuple[Scan, str, Path]:
    """The entry's sources found on disk, their cache key and cache folder."""
    scan = entry.source.scan(entry, size, download)
    key = cache.key(entry.name, size, scan.fingerprint, entry.kind, entry.labels, entry.split, entry.square,
                    entry.channels)
    return scan, key, cache.folder(entry.name, size, key)


def load(name: str | DatasetEntry = DEFAULT_DATASET, size: int | None = None, download: bool = False) -> Dataset:
    """A dataset by name (or an unregistered entry) at ``size`` px (the entry's default when None), from the cache
    when its sources are unchanged, else decoded once (with a progress bar) and cached."""
    entry = name if isinstance(name, DatasetEntry) else get(name)
    size = size or entry.default_size
    scan, key, path = _locate(entry, size, download)
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


class SplitNotCached(DatasetNotFound):
    """The dataset's sources are here but not yet decoded into the cache (``load_split(..., decode=False)``)."""


def prepare_command(name: str, size: int) -> str:
    """The command that decodes a dataset once into the cache (what the app asks for rather than decoding itself)."""
    return f"python train/prepare_data.py --dataset {name} --size {size}"


def load_split(name: str, size: int, split: str = "test", cache_key: str | None = None,
               decode: bool = True) -> Split:
    """One split, memory-mapped from the cache without reading the others. With the ``cache_key`` a card records,
    the folder is opened directly: no source is scanned or hashed. Otherwise (older cards, or that folder gone) the
    sources are scanned for the key, and decoded once into the cache, as training does, when they are not there;
    ``decode=False`` raises :class:`SplitNotCached` instead (the app's page must not wait minutes for a picker)."""
    entry = get(name)
    path = cache.folder(entry.name, size, cache_key) if cache_key else None
    found = cache.read_split(path, split) if path else None
    if found is None:
        _, _, path = _locate(entry, size, False)
        found = cache.read_split(path, split)
    if found is None:
        if not decode:
            raise SplitNotCached(f"{entry.name} at {size} px is on this machine but not decoded yet; decode it once "
                                 f"with: {prepare_command(entry.name, size)}")
        load(entry, size)
        found = cache.read_split(path, split)
    images, labels, extras = found
    return Split(entry.name, split, size, entry.task.card, list(entry.labels), images, labels,
                 split_names(entry.name, split, {k: {split: v} for k, v in extras.items()}, len(labels)))
