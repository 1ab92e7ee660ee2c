"""Images plus a labels CSV: a path column (relative to the CSV's folder), one label column (multi-label as
``|``-separated names, as NIH's ``Finding Labels``), optional patient and split columns."""
from __future__ import annotations

import csv
from dataclasses import dataclass

from .common import DatasetError, Item, Scan, image_scan, label_index, require_dir, root_of, split_name
from .registry import DatasetEntry


@dataclass(frozen=True)
class LabelsCSV:
    """``csv`` under ``$CXR_DATA_DIR`` unless absolute. ``none_label`` is the name that means "no label" in a
    multi-label column (NIH's ``No Finding``) unless the entry lists it as a label itself. With
    ``patients_per_split`` patient ids only identify a patient within one split (Kermany numbers its test files
    on their own), so the split becomes part of the id."""

    csv: str
    path_column: str = "path"
    label_column: str = "label"
    patient_column: str | None = "patient"  # used when the CSV has it
    split_column: str | None = "split"  # used when the CSV has it
    none_label: str | None = None
    patients_per_split: bool = False
    separator: str = "|"

    def scan(self, entry: DatasetEntry, size: int, download: bool) -> Scan:
        path = root_of(self.csv)
        require_dir(path.parent, entry.name)
        if not path.is_file():
            raise DatasetError(f"{entry.name} needs the labels CSV {path}, which does not exist")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
        missing = [c for c in (self.path_column, self.label_column) if c not in columns]
        if missing:
            raise DatasetError(f"{path} has no column {', '.join(missing)} (columns: {', '.join(columns)})")
        root = path.parent
        items = [self._item(r, n, entry, root, columns) for n, r in enumerate(rows, start=2)]
        unknown = sorted({u for i in items if isinstance(i, set) for u in i})
        if unknown:
            raise DatasetError(f"{path}: labels {', '.join(unknown)} are not labels of {entry.name} "
                               f"({', '.join(entry.labels)})")
        absent = [i.path.relative_to(root).as_posix() for i in items if not i.path.is_file()]
        if absent:
            raise DatasetError(f"{path} lists {len(absent)} images that are not there: {', '.join(absent[:10])}"
                               + (" ..." if len(absent) > 10 else ""))
        return image_scan(items, entry, size, root, "labels-csv")

    def _item(self, row: dict, line: int, entry: DatasetEntry, root, columns) -> Item | set[str]:
        """The row's item, or the set of its unknown label names."""
        index = label_index(entry)
        raw = (row[self.label_column] or "").strip()
        if entry.kind == "multi-label":
            names = [n.strip() for n in raw.split(self.separator) if n.strip()]
            if self.none_label and self.none_label.lower() not in index:
                names = [n for n in names if n != self.none_label]
            unknown = {n for n in names if n.lower() not in index}
            if unknown:
                return unknown
            label = [0.0] * len(entry.labels)
            for n in names:
                label[index[n.lower()]] = 1.0
        else:
            if raw.lower() not in index:
                return {raw or f"(empty, line {line})"}
            label = [float(index[raw.lower()])]
        split = None
        if self.split_column in columns:
            split = split_name(row[self.split_column].strip())
            if split is None:
                raise DatasetError(f"line {line}: split {row[self.split_column]!r} is none of train, val, test")
        path = root / row[self.path_column].strip()
        if not path.resolve().is_relative_to(root.resolve()):
            raise DatasetError(f"line {line}: {row[self.path_column]!r} is outside the CSV's folder {root}")
        patient = (row.get(self.patient_column) or "").strip() if self.patient_column in columns else ""
        patient = patient or path.relative_to(root).as_posix()
        if self.patients_per_split:
            patient = f"{split}:{patient}"
        return Item(path, tuple(label), split, patient)
