"""The ImageFolder layout: ``root/<split>/<class>/*`` or, without split folders, ``root/<class>/*``.

Class folders map onto the entry's labels case-insensitively (``NORMAL/`` is ``normal``); split folders are
``train``, ``val``/``valid``/``validation`` and ``test`` unless the source names them (``{"train": "TRAIN"}``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .common import DatasetError, Item, Scan, image_scan, label_index, require_dir, root_of, split_name
from .registry import DatasetEntry


@dataclass(frozen=True)
class ImageFolder:
    """``root`` (under ``$CXR_DATA_DIR`` unless absolute). ``splits`` maps split -> folder name when they are not
    the usual ones; folders it leaves out are ignored (say so in the entry's provenance). ``patient_pattern`` is a
    regex whose first group is the patient (or other grouping) id in a file name; without it each image is its
    own group."""

    root: str
    splits: tuple[tuple[str, str], ...] | None = None  # ((split, folder), ...)
    patient_pattern: str | None = None
    patients_per_split: bool = False  # ids only identify a patient within one split: the split joins the id

    def scan(self, entry: DatasetEntry, size: int, download: bool) -> Scan:
        if entry.kind == "multi-label":
            raise DatasetError(f"{entry.name}: an image folder holds one class per image; a multi-label dataset "
                               "needs a labels CSV")
        root = require_dir(root_of(self.root), entry.name)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if self.splits is not None:
            split_dirs = []
            for split, name in self.splits:
                split_dirs.append((split, require_dir(root / name, entry.name)))
        elif any(split_name(p.name) for p in folders):
            unknown = [p.name for p in folders if not split_name(p.name)]
            if unknown:
                raise DatasetError(f"{root} has split folders and also {', '.join(unknown)}, which is no split "
                                   "(train, val, test); name the split folders in the entry's source")
            split_dirs = [(split_name(p.name), p) for p in folders]
        else:
            split_dirs = [(None, root)]
        items = [item for split, d in split_dirs for item in self._items(d, split, entry, root)]
        return image_scan(items, entry, size, root, "image-folder")

    def _items(self, folder: Path, split: str | None, entry: DatasetEntry, root: Path) -> list[Item]:
        index = label_index(entry)
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [p.name for p in classes if p.name.lower() not in index]
        if unknown:
            raise DatasetError(f"{folder}: class folders {', '.join(unknown)} are not labels of {entry.name} "
                               f"({', '.join(entry.labels)})")
        loose = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            raise DatasetError(f"{folder} holds files outside class folders ({', '.join(sorted(loose)[:5])}); "
                               "put each image in its class folder")
        pattern = re.compile(self.patient_pattern) if self.patient_pattern else None
        items = []
        for c in classes:
            for f in sorted(c.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    group = self._group(f, root, pattern)
                    group = f"{split}:{group}" if self.patients_per_split else group
                    items.append(Item(f, (float(index[c.name.lower()]),), split, group))
        return items

    @staticmethod
    def _group(f: Path, root: Path, pattern: re.Pattern | None) -> str:
        if pattern is None:
            return f.relative_to(root).as_posix()
        m = pattern.search(f.name)
        if not m:
            raise DatasetError(f"{f.relative_to(root)}: the file name does not match the patient pattern "
                               f"{pattern.pattern!r}")
        return m.group(1)
