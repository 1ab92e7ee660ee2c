"""Read the test split once, after training, and write its metrics into the cards (``cxrcore.evaluation``).

    python train/evaluate_test.py --root checkpoints/nih14-local            # cards without test metrics
    python train/evaluate_test.py --root runs/cv --force                    # re-evaluate every card

Training (``run_all.py``, cross-validated or not), calibration and ensembling choose epochs, calibration, thresholds
and members on held-out data and compute no test metric; the test probabilities are stored beside each card. This
command is the only place that reads the test labels: per card (ensembles included) it computes the test metrics at
the card's thresholds, with CIs that resample patients, and records when it did so (``test_evaluation``). A card
already evaluated is left alone unless ``--force``: the test split is meant to be looked at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrcore import evaluation  # noqa: E402
from cxrcore.data import REPO_ROOT  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (over patients) of the CIs")
    p.add_argument("--force", action="store_true", help="re-evaluate cards that already have test metrics")
    a = p.parse_args(argv)
    for folder, test in evaluation.evaluate_root(a.root, a.n_boot, a.force):
        print(evaluation.line(folder, test))
    return 0


if __name__ == "__main__":
    sys.exit(main())
