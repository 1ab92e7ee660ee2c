"""Calls per film on the 12 sample films, before and after calibration with evidence-backed thresholds.

    python benchmarks/sample_calls.py                  # ../shared/data/samples, every shipped NIH model

Before (the app until calibration): each model's raw probabilities called at Youden J on its raw validation
probabilities, for every label however few positives chose it; the ensemble column the mean of the raw probabilities
of every shipped model, called at Youden J on their mean raw validation probabilities.
After: calibrated probabilities called at the card's operating points (none below 10 validation positives); the
ensemble column the mean of the calibrated probabilities, called at its own evidence-backed points.
Printed as Markdown: per film, the ensemble's calls; per model, calls per film and false calls on the normal films.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrcore import compare, imaging, metrics  # noqa: E402
from cxrcore.benchmarks import split_arrays  # noqa: E402
from cxrcore.checkpoints import read_predictions  # noqa: E402
from cxrcore.data import REPO_ROOT  # noqa: E402
from cxrcore.inference import load_all  # noqa: E402
from cxrcore.runs import raw_predictions  # noqa: E402

MEAN = "mean of all"


def films(folder: Path) -> list[tuple[str, np.ndarray, set[str]]]:
    """(name, decoded pixels, positive labels) of every film listed in ``labels.csv``."""
    with open(folder / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    return [(r["Image Index"], imaging.decode((folder / r["Image Index"]).read_bytes(), r["Image Index"]).pixels,
             {x for x in r["Finding Labels"].split("|") if x != "No Finding"}) for r in rows]


def count(calls: np.ndarray, truth: list[set[str]], names: list[str]) -> dict[str, float]:
    """Calls per film, false calls per film, and false calls on the films without a finding."""
    false = np.array([[c and names[j] not in t for j, c in enumerate(row)] for row, t in zip(calls, truth)])
    normal = np.array([not t for t in truth])
    return {"calls_per_film": calls.sum(1).mean(), "false_per_film": false.sum(1).mean(),
            "false_on_normals": int(false[normal].sum()), "n_normals": int(normal.sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "samples")
    p.add_argument("--root", type=Path, default=REPO_ROOT / "checkpoints")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    models = {m.id: m for m in load_all(a.root, "nih14-local")[0].values()}
    sample = films(a.samples)
    truth = [t for _, _, t in sample]
    names = next(iter(models.values())).label_names
    task = metrics.TASK_MULTILABEL
    probs = {"before": {}, "after": {}}
    thresholds = {"before": {}, "after": {}}
    val = {"before": {}, "after": {}}
    for mid, m in models.items():
        x = torch.cat([m.input_for(px) for _, px, _ in sample])
        probs["before"][mid], probs["after"][mid] = m.predict_raw(x), m.predict(x)
        preds = read_predictions(m.path)
        val["before"][mid] = split_arrays(raw_predictions(preds), "val", task)
        val["after"][mid] = split_arrays(preds, "val", task)
        y, pv = val["before"][mid]
        thresholds["before"][mid] = np.array([metrics.threshold_youden(y[:, j], pv[:, j]) for j in range(len(names))])
        thresholds["after"][mid] = np.array([pt.value for pt in compare.card_points(m.card)])
    for when in ("before", "after"):
        probs[when][MEAN] = np.mean([probs[when][i] for i in models], axis=0)
        y = next(iter(val[when].values()))[0]
        pv = np.mean([val[when][i][1] for i in models], axis=0)
        if when == "before":
            thresholds[when][MEAN] = np.array([metrics.threshold_youden(y[:, j], pv[:, j]) for j in range(len(names))])
        else:
            thresholds[when][MEAN] = np.array([pt.value for pt in compare.ensemble_points(
                {"val_labels": y, "val_probs": pv}, task)])
    print(f"{len(sample)} films ({sum(not t for t in truth)} 'No Finding'), {len(models)} shipped NIH models; "
          f"'{MEAN}': the mean of all {len(models)}.\n")
    print("| film | truth | ensemble calls before | ensemble calls after |\n|---|---|---|---|")
    for k, (name, _, t) in enumerate(sample):
        cells = []
        for when in ("before", "after"):
            called = [names[j] for j in range(len(names)) if probs[when][MEAN][k, j] >= thresholds[when][MEAN][j]]
            cells.append(f"{len(called)}: " + ", ".join(f"{c}{'' if c in t else '*'}" for c in called))
        print(f"| {name} | {', '.join(sorted(t)) or 'No Finding'} | {cells[0]} | {cells[1]} |")
    print("\n(* a false call)\n")
    print("| model | calls/film before | after | false calls/film before | after | false calls on the normal films "
          "before | after |\n|---|---|---|---|---|---|---|")
    for mid in [*models, MEAN]:
        r = {w: count(probs[w][mid] >= thresholds[w][mid], truth, names) for w in ("before", "after")}
        print(f"| {mid} | {r['before']['calls_per_film']:.2f} | {r['after']['calls_per_film']:.2f} | "
              f"{r['before']['false_per_film']:.2f} | {r['after']['false_per_film']:.2f} | "
              f"{r['before']['false_on_normals']} | {r['after']['false_on_normals']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
