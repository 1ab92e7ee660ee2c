"""Decode a registered dataset once into the cache (a progress bar; seconds when it is already there), so training,
the app's test-split picker and the tests start from memory-mapped arrays.

    python train/prepare_data.py --dataset kermany-pneumonia3 --size 128
    python train/prepare_data.py --dataset blood-cells          # the entry's default size
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrcore import datasets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=datasets.names())
    p.add_argument("--size", type=int, default=None, help="image size in px (default: the entry's)")
    p.add_argument("--download", action="store_true", help="download MedMNIST files when missing (needs internet)")
    a = p.parse_args(argv)
    try:
        ds = datasets.load(a.dataset, a.size, a.download)
    except (datasets.DatasetNotFound, datasets.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s} {len(ds.labels[s])}" for s in ds.labels)
    print(f"{ds.name} at {ds.size} px: {counts} images, cache key {ds.record['cache_key']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
