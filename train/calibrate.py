"""Calibrate existing checkpoints from their stored predictions: no retraining, weights untouched.

    python train/calibrate.py                       # every checkpoint under checkpoints/, then the ensembles
    python train/calibrate.py --root runs/quick

Per model: the calibration is fitted on the stored raw held-out probabilities with the function training calls
(``runs.served_outputs`` on validation; for a cross-validated card ``runs.oof_served`` on the pooled out-of-fold
``oof_raw_probs``), the card gains ``calibration``, thresholds with their evidence and held-out metrics of the
calibrated probabilities, and ``predictions.npz`` stores the calibrated probabilities under the usual keys with the
raw ones beside them (``*_raw_probs``). Rerunning starts again from the raw ones. Each ensemble is then rebuilt from
its (now calibrated) members. The served probabilities changed, so the test metrics are dropped and, as a last,
separate step, read again by ``cxrcore.evaluation`` (the test-once evaluation; nothing above looks at them); then
the benchmark tables and BENCHMARKS.md are regenerated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cxrcore import benchmarks, checkpoints, evaluation, metrics  # noqa: E402
from cxrcore.calibration import prior_shift  # noqa: E402
from cxrcore.data import REPO_ROOT  # noqa: E402
from cxrcore.task import is_multilabel  # noqa: E402
from cxrcore.runs import (MEMBERS_BY_NAME, Served, build_ensemble, label_columns, oof_served, oof_shift,  # noqa: E402
                          raw_predictions, served_outputs, stored_groups, stored_val_rows)

ENSEMBLE = "ensemble"


def held_out_ece(labels: np.ndarray, probs: np.ndarray, task: str) -> float:
    """ECE of held-out probabilities, all labels pooled (as the cards report it)."""
    return metrics.expected_calibration_error(label_columns(labels, task, probs.shape[1]), probs)


def served_again(card: dict, raw: dict[str, np.ndarray], n_boot: int) -> tuple[Served, str]:
    """What training would have stored from these raw predictions, and the held-out split it was fitted on."""
    d, task, names = card["dataset"], card["task"], card["label_names"]
    pos_weight = card.get("hparams", {}).get("pos_weight")
    if "oof_raw_probs" in raw:  # cross-validated: the pooled out-of-fold predictions, as cross_validate fits them
        y = raw["oof_labels"]
        served = oof_served(y, raw["oof_raw_probs"], stored_val_rows(raw), raw["test_raw_probs"],
                            raw["test_labels"], task, names, oof_shift(pos_weight, y, task), n_boot,
                            stored_groups(raw, "oof"), stored_groups(raw, "test"))
        return dataclasses.replace(served, predictions={**served.predictions, "oof_folds": raw["oof_folds"]}), "oof"
    shift = (prior_shift(pos_weight, d["prevalence"]["train"], d["counts"]["train"]) if is_multilabel(task) else None)
    return served_outputs(raw, task, names, shift, n_boot), "val"


def calibrate_folder(folder: Path, n_boot: int) -> tuple[str, float, float]:
    """Calibrate one model folder in place (card.json and predictions.npz only); returns the held-out split and its
    ECE before and after."""
    card = json.loads((folder / checkpoints.CARD).read_text())
    stored = checkpoints.read_predictions(folder)
    raw = {**raw_predictions(stored), **{k: v for k, v in stored.items() if k.endswith("_raw_probs")}}
    served, split = served_again(card, raw, n_boot)
    losses = {k: card["metrics"][k] for k in ("train_loss", "val_loss")
              if card["metrics"].get(k) is not None}  # as the card writer does: no key for a loss it has not got
    card.update(calibration=served.calibration, thresholds=served.thresholds,
                operating_points=served.operating_points, metrics={**served.metrics, **losses})
    preds = {k: np.asarray(v, dtype=np.float32) for k, v in served.predictions.items()}
    checkpoints.rewrite(folder, card, preds)
    y = preds[f"{split}_labels"]
    return (split, held_out_ece(y, preds[f"{split}_raw_probs"], card["task"]),
            held_out_ece(y, preds[f"{split}_probs"], card["task"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the AUC CIs in the cards")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the tables and BENCHMARKS.md")
    a = p.parse_args(argv)
    folders = sorted(c.parent for c in a.root.rglob(checkpoints.CARD))
    print(f"{'model':45s} held-out ECE raw -> calibrated")
    for folder in (f for f in folders if f.name != ENSEMBLE):
        split, before, after = calibrate_folder(folder, a.n_boot)
        print(f"{str(folder.relative_to(a.root)):45s} {before:.3f} -> {after:.3f} ({split})")
    for folder in (f for f in folders if f.name == ENSEMBLE):
        old = json.loads((folder / checkpoints.CARD).read_text())
        members = [checkpoints.Checkpoint(folder.parent / m, checkpoints.read_card(folder.parent / m))
                   for m in old["members"]]
        build_ensemble(members, folder, old["rebuild_command"], a.n_boot,
                       how_members=old.get("how_chosen", {}).get("members", MEMBERS_BY_NAME))
        preds = checkpoints.read_predictions(folder)
        print(f"{str(folder.relative_to(a.root)):45s} {held_out_ece(preds['val_labels'], preds['val_raw_probs'], old['task']):.3f}"
              f" -> {held_out_ece(preds['val_labels'], preds['val_probs'], old['task']):.3f} (val; mean of "
              f"{', '.join(old['members'])})")
    for folder, test in evaluation.evaluate_root(a.root, a.n_boot):  # last and separate: the test split, read once
        print(evaluation.line(folder, test))
    if not a.no_report:
        for root in sorted({f.parent for f in folders}):
            benchmarks.write_tables(root)
        benchmarks.write_project_report()  # all tasks, whichever root was recalibrated
    return 0


if __name__ == "__main__":
    sys.exit(main())
