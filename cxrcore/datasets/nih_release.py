"""The raw NIH ChestX-ray14 release: ``images*/`` folders of PNGs, ``Data_Entry_2017*.csv`` and the official
patient-wise split in ``train_val_list*.txt`` / ``test_list*.txt``.

The labels are the 14 findings in ChestMNIST's order; ``No Finding`` is a 15th label only when the entry lists it.
A partial download (some of the 12 image archives) is usable: rows whose image is not on disk are left out and
counted in the card's dataset record; an image on disk that the CSV or the split lists do not name is an error.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .common import DatasetError, Item, Scan, image_scan, label_index, require_dir, root_of
from .registry import DatasetEntry

NO_FINDING = "No Finding"
CSV_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise DatasetError(f"{root} needs exactly one {pattern} (the NIH release's), found "
                           f"{', '.join(p.name for p in found) or 'none'}")
    return found[0]


@dataclass(frozen=True)
class NIHRelease:
    """``root`` under ``$CXR_DATA_DIR`` unless absolute."""

    root: str

    def scan(self, entry: DatasetEntry, size: int, download: bool) -> Scan:
        root = require_dir(root_of(self.root), entry.name)
        split_of = {}
        for split, pattern in (("train", "train_val_list*.txt"), ("test", "test_list*.txt")):
            for name in _one(root, pattern).read_text().split():
                split_of[name] = split
        files = {p.name: p for d in sorted(root.glob("images*")) if d.is_dir() for p in sorted(d.rglob("*.png"))}
        if not files:
            raise DatasetError(f"{root} has no PNG under images*/ (the release's image folders)")
        table = _one(root, "Data_Entry_2017*.csv")
        with open(table, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{table} has no column {', '.join(missing)}")
            rows = {r["Image Index"]: r for r in reader}
        unlisted = sorted(n for n in files if n not in rows or n not in split_of)
        if unlisted:
            raise DatasetError(f"{len(unlisted)} images are not in {table.name} or in the split lists: "
                               f"{', '.join(unlisted[:10])}")
        index = label_index(entry)
        items, unknown = [], set()
        for name, path in files.items():
            found = [n for n in rows[name]["Finding Labels"].split("|") if n]
            if NO_FINDING.lower() not in index:
                found = [n for n in found if n != NO_FINDING]
            unknown |= {n for n in found if n.lower() not in index}
            label = [0.0] * len(entry.labels)
            for n in found:
                if n.lower() in index:
                    label[index[n.lower()]] = 1.0
            items.append(Item(path, tuple(label), split_of[name], rows[name]["Patient ID"].strip()))
        if unknown:
            raise DatasetError(f"{table.name}: labels {', '.join(sorted(unknown))} are not labels of {entry.name}")
        scan = image_scan(items, entry, size, root, "nih-release")
        not_on_disk = sum(n not in files for n in rows)
        return Scan(scan.fingerprint, scan.origin,
                    lambda: _with(scan.build(), listed_not_on_disk=not_on_disk, listed=len(rows)))


def _with(splits, **record):
    splits.record.update(record)
    return splits
