"""Calibrate existing checkpoints from their stored predictions: no retraining, weights untouched.

    python train/calibrate.py                       # every checkpoint under checkpoints/, then the ensembles
    python train/calibrate.py --root runs/quick

Per model: the calibration is fitted on the stored raw validation probabilities (``runs.served_outputs``, the
function training calls), the card gains ``calibration``, thresholds with their evidence and metrics of the
calibrated probabilities, and ``predictions.npz`` stores the calibrated probabilities under the usual keys with the
raw ones beside them (``*_raw_probs``). Rerunning starts again from the raw ones. Each ensemble is then rebuilt from
its (now calibrated) members, and the benchmark tables and BENCHMARKS.md are regenerated.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cxrcore import benchmarks, checkpoints, metrics  # noqa: E402
from cxrcore.calibration import prior_shift  # noqa: E402
from cxrcore.data import REPO_ROOT  # noqa: E402
from cxrcore.engine import is_multilabel  # noqa: E402
from cxrcore.runs import build_ensemble, label_columns, raw_predictions, served_outputs  # noqa: E402

ENSEMBLE = "ensemble"


def test_ece(preds: dict[str, np.ndarray], task: str, key: str) -> float:
    """Test ECE of one stored probability array, all labels pooled (as the cards report it)."""
    probs = preds[key]
    return metrics.expected_calibration_error(label_columns(preds["test_labels"], task, probs.shape[1]), probs)


def calibrate_folder(folder: Path, n_boot: int) -> tuple[float, float]:
    """Calibrate one model folder in place (card.json and predictions.npz only); returns test ECE before, after."""
    card = json.loads((folder / checkpoints.CARD).read_text())
    raw = raw_predictions(checkpoints.read_predictions(folder))
    d, task = card["dataset"], card["task"]
    shift = (prior_shift(card.get("hparams", {}).get("pos_weight"), d["prevalence"]["train"], d["counts"]["train"])
             if is_multilabel(task) else None)
    served = served_outputs(raw, task, card["label_names"], shift, n_boot)
    losses = {k: card["metrics"].get(k) for k in ("train_loss", "val_loss")}
    card.update(calibration=served.calibration, thresholds=served.thresholds,
                operating_points=served.operating_points, metrics={**served.metrics, **losses})
    preds = {k: np.asarray(v, dtype=np.float32) for k, v in served.predictions.items()}
    checkpoints.rewrite(folder, card, preds)
    return test_ece(preds, task, "test_raw_probs"), test_ece(preds, task, "test_probs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the AUC CIs in the cards")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the tables and BENCHMARKS.md")
    a = p.parse_args(argv)
    folders = sorted(c.parent for c in a.root.rglob(checkpoints.CARD))
    print(f"{'model':45s} test ECE raw -> calibrated")
    for folder in (f for f in folders if f.name != ENSEMBLE):
        before, after = calibrate_folder(folder, a.n_boot)
        print(f"{str(folder.relative_to(a.root)):45s} {before:.3f} -> {after:.3f}")
    for folder in (f for f in folders if f.name == ENSEMBLE):
        old = json.loads((folder / checkpoints.CARD).read_text())
        members = [checkpoints.Checkpoint(folder.parent / m, checkpoints.read_card(folder.parent / m))
                   for m in old["members"]]
        build_ensemble(members, folder, old["rebuild_command"], a.n_boot)
        preds = checkpoints.read_predictions(folder)
        print(f"{str(folder.relative_to(a.root)):45s} {test_ece(preds, old['task'], 'test_raw_probs'):.3f} -> "
              f"{test_ece(preds, old['task'], 'test_probs'):.3f}  (mean of {', '.join(old['members'])})")
    if not a.no_report:
        for root in sorted({f.parent for f in folders}):
            benchmarks.write_tables(root)
        benchmarks.write_report(a.root, REPO_ROOT / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
