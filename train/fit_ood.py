"""Refit the per-model out-of-distribution detectors (ood.json) of existing checkpoints: weights untouched.

    python train/fit_ood.py --root checkpoints/pneumoniamnist-local
    python train/fit_ood.py --root checkpoints --dataset nih14-local

Each detector is fitted on its dataset's train split and, where the dataset is distributed at another size than its
films are uploaded at (PneumoniaMNIST), on those full-size films through the app's upload path
(:func:`cxrcore.ood.upload_sources`); thresholds from validation films only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrcore import ood  # noqa: E402
from cxrcore.data import data_dir, load_dataset  # noqa: E402
from cxrcore.inference import load_all  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--dataset", help="only the checkpoints of this dataset")
    a = p.parse_args(argv)
    models, problems = load_all(a.root, a.dataset)
    for key, why in problems.items():
        print(f"{key}: not loadable, no detector ({why})")
    cache: dict[tuple[str, int], tuple] = {}
    for key, m in models.items():
        name, size = m.card.dataset.name, m.data_size
        if (name, size) not in cache:
            cache[name, size] = (load_dataset(name, size), ood.upload_sources(name, size, data_dir()))
        data, extra = cache[name, size]
        det = ood.fit_checkpoint(m, data, extra=extra)
        parts = ", ".join(f"{k} {v['val_percentile_score']:.2f}" for k, v in det.sources.items())
        print(f"{key}: threshold {det.threshold:.2f} (val {det.percentile:g}th percentile per kind of film: {parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
