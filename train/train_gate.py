"""Rebuild the chest-film gate (checkpoints/gate/): python train/train_gate.py [--steps N] [--seed S]

Trains on the local NIH and Kermany train films and synthetic / microscopy negatives (no test image), fits the zoom
and population probes on its pooled features (whole train films vs crops of them, adult vs paediatric), chooses the thresholds on validation films, and writes fp16 weights and a card with the data, recipe and validation figures.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cxrcore import gate, gate_training as gt  # noqa: E402
from cxrcore.data import data_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=gt.Recipe.steps)
    p.add_argument("--seed", type=int, default=gt.Recipe.seed)
    p.add_argument("--out", type=Path, default=gate.GATE_DIR)
    p.add_argument("--thresholds-only", action="store_true",
                   help="keep the weights in --out; fit the probes and choose the thresholds again")
    a = p.parse_args(argv)
    r = replace(gt.Recipe(), steps=a.steps, seed=a.seed)
    torch.manual_seed(r.seed)
    root = data_dir()
    t0 = time.perf_counter()
    val = {"nih": gt.nih(root, "val"), "kermany": gt.kermany(root, "val"),
           "pneumoniamnist_28": gt.pneumoniamnist(root, "val")}
    blood_val = gt.blood_cells(root, "TRAIN", 300, r.seed, skip=r.n_blood)
    if a.thresholds_only:
        old, net = json.loads((a.out / gate.CARD).read_text()), gate.load(a.out).net
        pd = gt.probe_data(root, r.seed)
        probes = gt.fit_probes(net, pd)
        thresholds, rates = gt.choose_thresholds(net, val, blood_val, probes, pd.zoomed_val)
        counts = {**old["data"]["counts"], "pneumoniamnist_val": len(val["pneumoniamnist_28"]), **pd.counts}
        card = gt.card(gt.Recipe(**old["recipe"]), thresholds, rates, counts, old["train_seconds"],
                       old["rebuild_command"], probes)
        gate.save(a.out, net, {**card, "thresholds_command": "python train/train_gate.py --thresholds-only"})
        print(f"thresholds {thresholds}\nvalidation {rates}")
        return 0
    films = [gt.nih(root, "train"), gt.kermany(root, "train")]
    blood = gt.blood_cells(root, "TRAIN", r.n_blood, r.seed)
    negatives = gt.not_chest(np.random.default_rng(r.seed), r.n_synthetic, blood)
    counts = {"nih_train": len(films[0]), "kermany_train": len(films[1]), "negatives": len(negatives),
              "nih_val": len(val["nih"]), "kermany_val": len(val["kermany"]),
              "pneumoniamnist_val": len(val["pneumoniamnist_28"]), "blood_val": len(blood_val)}
    print(f"data loaded in {time.perf_counter() - t0:.0f} s: {counts}")
    t1 = time.perf_counter()
    net = gt.train(films, negatives, r)
    seconds = time.perf_counter() - t1
    pd = gt.probe_data(root, r.seed)
    probes = gt.fit_probes(net, pd)
    thresholds, rates = gt.choose_thresholds(net, val, blood_val, probes, pd.zoomed_val)
    counts.update(pd.counts)
    cmd = " ".join(shlex.quote(x) for x in ["python", "train/train_gate.py", *(argv if argv is not None else sys.argv[1:])])
    gate.save(a.out, net, gt.card(r, thresholds, rates, counts, seconds, cmd, probes))
    print(f"thresholds {thresholds}\nvalidation {rates}\nwritten to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
