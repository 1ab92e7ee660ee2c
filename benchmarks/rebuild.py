"""Rebuild models from their cards on this machine and compare the rebuilt test AUC with the card's (run by hand).

    python benchmarks/rebuild.py --models cnn_small vanilla_cnn
    python benchmarks/rebuild.py --root checkpoints/kermany-pneumonia3 --models cnn_small

Each model's ``rebuild_command`` runs with ``--models`` narrowed to it, into a temporary folder (the checkpoint tree
is never touched), in the precision and with the thread count its card records (older cards give them as ``bf16``
and ``hardware``). Printed per model: the card's and the rebuilt test macro AUC, their difference beside the target
(|diff| <= 0.005, issue #10), the best epochs, the largest difference of a served test probability, and the commit
the card was trained at beside this checkout's: a rebuild reproduces a card only on the code that wrote it (measured:
cnn_small at its own commit 0.577 against the card's 0.5755, at a later one 0.5828).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cxrcore import checkpoints  # noqa: E402
from cxrcore.data import REPO_ROOT  # noqa: E402
from cxrcore.runs import git_commit  # noqa: E402

TARGET = 0.005
DROP_WITH_VALUE = {"--models", "--out", "--ensemble", "--precision", "--seeds"}  # options whose values follow them
DROP = {"--force"}


def narrowed(command: str, model_id: str, out: Path, precision: str | None) -> list[str]:
    """The card's command for this model alone (its own seed: not the extra ones), into ``out``, in the card's
    precision."""
    args, keep, skipping = shlex.split(command), [], False
    for a in args:
        if a.startswith("--"):
            skipping = a in DROP_WITH_VALUE
            if skipping or a in DROP:
                continue
        elif skipping:
            continue
        keep.append(a)
    extra = ["--precision", precision] if precision else []
    return [*keep, "--models", model_id, "--out", str(out), "--force", *extra]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--models", nargs="+", required=True)
    a = p.parse_args()
    found = {c.id: c for c in checkpoints.find(a.root) if c.path.parent.resolve() == a.root.resolve()}
    rows = []
    for model_id in a.models:
        ck = found[model_id]
        card = ck.card
        with tempfile.TemporaryDirectory() as tmp:
            cmd = narrowed(card.rebuild, model_id, Path(tmp), card.trained_precision)
            threads = card.trained_threads or os.cpu_count()
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            print(f"{model_id}: OMP_NUM_THREADS={threads} {shlex.join(cmd)}", flush=True)
            run = subprocess.run([sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]], cwd=REPO_ROOT,
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if run.returncode:
                sys.exit(f"{model_id}: the rebuild failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
            new = checkpoints.read_card(Path(tmp) / model_id)
            old_p = ck.predictions()["test_probs"]
            new_p = np.load(Path(tmp) / model_id / "predictions.npz")["test_probs"]
        diff = new.metrics.test.auc_macro - card.metrics.test.auc_macro
        rows.append((model_id, card.metrics.test.auc_macro, new.metrics.test.auc_macro, diff,
                     card.best_epoch, new.best_epoch, float(np.abs(new_p - old_p).max()), card.git_commit))
    print(f"\n{'model':<20}{'card AUC':>10}{'rebuilt':>10}{'diff':>9}  target |diff| <= {TARGET}"
          f"{'best epoch':>14}{'max |dp|':>10}  card commit (this checkout: {(git_commit() or '?')[:7]})")
    for m, old, new, d, be_old, be_new, dp, commit in rows:
        ok = "ok" if abs(d) <= TARGET else "MISSED"
        print(f"{m:<20}{old:>10.4f}{new:>10.4f}{d:>+9.4f}  {ok:<22}{be_old!s:>6} -> {be_new!s:<5}{dp:>10.3f}  "
              f"{(commit or '?')[:7]}")


if __name__ == "__main__":
    main()
