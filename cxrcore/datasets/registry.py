"""The dataset registry: one :class:`DatasetEntry` per dataset says everything the project knows about it.

Cards (title, provenance, limits), the app's task list, benchmarks and the published tables read the entry; the loader
turns it into a :class:`~cxrcore.data.Dataset`. Adding a dataset is one :func:`register` call (see ``builtin.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..imaging import SQUARE_RULES
from ..task import Kind, Task

if TYPE_CHECKING:
    from .common import Scan


class Source(Protocol):
    """An on-disk layout (one module each): finds the files and fingerprints them cheaply; decoding happens only when
    the cache has no copy at that size."""

    def scan(self, entry: "DatasetEntry", size: int, download: bool) -> "Scan": ...


@dataclass(frozen=True)
class SplitPolicy:
    """Where train / val / test come from: the source's own splits ("official"), or a validation split (and, for a
    source without splits, a test split) carved from train, grouped by patient so no patient is in two splits."""

    val_fraction: float | None = None  # None: the source's own validation split
    test_fraction: float | None = None  # None: the source's own test split
    seed: int = 0

    @property
    def kind(self) -> str:
        return "official" if self.val_fraction is None and self.test_fraction is None else "carved by patient"

    def record(self) -> dict:
        """What the card's dataset record says about the split."""
        return {"split_policy": self.kind, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "val_seed": None if self.kind == "official" else self.seed}


OFFICIAL = SplitPolicy()


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset.

    ``published`` holds the keys of the published tables that concern it (:mod:`cxrcore.published` defines them);
    ``square`` says how non-square images become square, the rule :func:`cxrcore.imaging.to_dataset_size` applies
    at training and at inference alike; ``limits`` are the sentences a model card adds about this data.
    """

    name: str
    title: str  # short, for the app's task list and card headers: "NIH ChestX-ray14 (14 findings)"
    kind: Kind
    labels: tuple[str, ...]
    provenance: str  # where the images come from, their licence and caveats, as a card shows them
    source: Source
    default_size: int = 64
    split: SplitPolicy = OFFICIAL
    square: str = "crop"
    channels: int = 1
    published: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    checkpoint_dir: str | None = None  # under checkpoints/ (default: the entry's name)
    population: str | None = None  # chest films of "adult" or "paediatric" patients (the gate's checks); None: other
    extra: dict = field(default_factory=dict, compare=False)  # free-form facts a view may need (e.g. medmnist flag)

    def __post_init__(self) -> None:
        if self.square not in SQUARE_RULES:
            raise ValueError(f"{self.name}: square must be one of {SQUARE_RULES}, got {self.square!r}")
        if self.population not in (None, "adult", "paediatric"):
            raise ValueError(f"{self.name}: population must be 'adult', 'paediatric' or None, got {self.population!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"{self.name}: channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        Task(self.kind, self.labels)  # validates kind and labels now, not at the first load

    @property
    def task(self) -> Task:
        return Task(self.kind, self.labels)


_REGISTRY: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    """Add an entry (a second entry under one name is a mistake, not an override)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def entries() -> list[DatasetEntry]:
    """The registered entries, in registration order (the app's task order)."""
    return list(_REGISTRY.values())


def names() -> list[str]:
    """Every name :func:`get` knows: the registered entries, then the other 2D MedMNIST flags."""
    from .medmnist_npz import medmnist_flags

    return [*_REGISTRY, *(f for f in medmnist_flags() if f not in _REGISTRY)]


def find(name: str) -> DatasetEntry | None:
    """The registered entry of a name (no MedMNIST fallback, no medmnist import): for views that only read facts."""
    return _REGISTRY.get(name)


def get(name: str) -> DatasetEntry:
    """The entry of a name; any 2D MedMNIST flag without its own entry gets a generic one from MedMNIST's INFO."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    from .medmnist_npz import medmnist_entry

    entry = medmnist_entry(name)
    if entry is None:
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(names())}")
    return entry
