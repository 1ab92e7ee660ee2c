"""Read the test split once, after training, and write its metrics into the cards.

    python train/evaluate_test.py --root checkpoints/nih14-local            # cards without test metrics
    python train/evaluate_test.py --root runs/cv --force                    # re-evaluate every card

Cross-validated training (``run_all.py --cv K``) chooses epochs, calibration and thresholds out of fold and computes
no test metric; its shipped model's test probabilities are stored beside the card. This command is the only place
that reads the test labels: per card it computes the test metrics at the card's thresholds, with CIs that resample
patients, and records when it did so (``test_evaluation``). A card already evaluated is left alone unless
``--force``: the test split is meant to be looked at once.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cxrcore import checkpoints, metrics  # noqa: E402
from cxrcore.data import REPO_ROOT, Dataset, load_dataset  # noqa: E402


def evaluate_folder(folder: Path, data: Dataset, n_boot: int = 1000, force: bool = False) -> dict | None:
    """Write the test metrics of one checkpoint folder into its card; returns them, or None when the card already
    has test metrics and not ``force``."""
    card = checkpoints.read_card(folder)
    if card.metrics.test is not None and not force:
        return None
    if card.dataset.split_checksum != data.split_checksum():
        raise checkpoints.CheckpointError(f"{folder}: trained on other splits than the {data.name} loaded here")
    preds = checkpoints.stored_predictions(folder, card)
    y = data.labels["test"]
    if not np.array_equal(preds["test_labels"], y):
        raise checkpoints.CheckpointError(f"{folder}: stored test labels are not the dataset's")
    th = [float("nan") if t is None else t for t in card.thresholds.get("youden_val", [None] * len(card.label_names))]
    test = metrics.summarize(y, preds["test_probs"], card.label_names, card.task, th, n_boot,
                             data.extras.get("patients", {}).get("test"))
    raw = json.loads((folder / checkpoints.CARD).read_text())
    raw["metrics"]["test"] = test
    raw["test_evaluation"] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "n_boot": n_boot, "patient_level_ci": "patients" in data.extras,
                              "previous": (raw.get("test_evaluation") or {}).get("at")}
    checkpoints.rewrite(folder, raw)
    return test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (over patients) of the CIs")
    p.add_argument("--force", action="store_true", help="re-evaluate cards that already have test metrics")
    a = p.parse_args(argv)
    cache: dict[tuple[str, int], Dataset] = {}
    for folder in sorted(c.parent for c in a.root.rglob(checkpoints.CARD)):
        card = checkpoints.read_card(folder)
        if card.members:  # an ensemble is rebuilt from its members' stored predictions, not evaluated here
            continue
        key = (card.dataset.name, card.dataset.size)
        if key not in cache:
            cache[key] = load_dataset(*key)
        data = cache[key]
        if card.dataset.extra.get("subset"):
            data = data.subset(card.dataset.extra["subset"])
        test = evaluate_folder(folder, data, a.n_boot, a.force)
        if test is None:
            print(f"{folder}: already has test metrics ({card.extra.get('test_evaluation', {}).get('at')}), kept")
            continue
        ci = test.get("auc_macro_ci") or (float("nan"),) * 2
        print(f"{folder}: test AUC {test['auc_macro']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n={test['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
