"""Benchmark tables built from model cards: the papers' Table 1 layout, per-label metrics, training histories, label
prevalence and calibration, as plain rows for the Benchmarks and Models pages and for BENCHMARKS.md.

Every number comes from a card (or is recomputed from stored predictions); published reference numbers live in
:mod:`cxrcore.published` and are always labelled as such.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import checkpoints, curves, localisation, metrics, published
from .calibration import CalibrationCheck
from .card import Card
from .data import REPO_ROOT
from .runs import held_out_split, pretrain_root, seed_roots, stored_groups
from .task import is_multilabel, label_columns
from .task import kind_of
from .zoo import get_spec


TABLE1_COLUMNS = ["model", "init", "params_M", "train_loss", "val_loss", "test_acc", "test_sensitivity",
                  "test_specificity", "val_auc", "held_out", "held_out_auc", "test_auc", "test_auc_ci", "epochs",
                  "best_epoch", "converged", "train_minutes", "weights_shipped"]


def _fmt(x: float | None, nd: int = 3) -> str:
    """A table cell: blank where there is no figure (None, or NaN such as the sensitivity of a model without one
    threshold)."""
    return "" if x is None or x != x else f"{x:.{nd}f}"


def table1_row(ck: checkpoints.Checkpoint) -> dict:
    c, m = ck.card, ck.card.metrics
    ci = m.test.auc_macro_ci
    return {
        "model": c.id,
        "init": c.init.kind,
        "params_M": round(c.params_total / 1e6, 2),
        "train_loss": m.train_loss,
        "val_loss": m.val_loss,
        "test_acc": m.test.acc,
        "test_sensitivity": m.test.sensitivity_macro,
        "test_specificity": m.test.specificity_macro,
        "val_auc": m.val.auc_macro,
        # what the model is ranked and chosen by: pooled out-of-fold (every train + val image) or validation
        "held_out": "out-of-fold" if c.cross_validated else "validation",
        "held_out_auc": c.held_out_auc,
        "test_auc": m.test.auc_macro,
        "test_auc_ci": f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else None,
        "epochs": c.epochs_run,
        "best_epoch": c.best_epoch,
        "converged": "no" if c.not_converged else "yes",
        "train_minutes": round(train_minutes(c), 1),
        # pinned in the tree's MANIFEST.json: what the repository ships; an ensemble, all its members
        "weights_shipped": all(checkpoints.is_pinned(ck.path.parent / i) for i in c.members or [c.id]),
    }


def train_minutes(card: Card) -> float:
    """What training a model cost: for a cross-validated one its folds and refit (wall time), not the refit alone."""
    return (card.wall_seconds if card.cross_validated and card.wall_seconds else card.train_seconds) / 60


def table1(cks: list[checkpoints.Checkpoint]) -> list[dict]:
    return [{**table1_row(c), **multiclass_columns(c)} for c in cks]


# ---- multi-class tasks: argmax calls, macro averages, confusion matrices -------------------------------------------

MULTICLASS_COLUMNS = ["model", "init", "params_M", "train_loss", "val_loss", "test_acc", "test_precision_macro",
                      "test_recall_macro", "test_f1_macro", "val_auc", "held_out", "held_out_auc", "test_auc",
                      "test_auc_ci", "epochs", "best_epoch", "converged", "train_minutes", "weights_shipped"]


def multiclass_metrics(ck: checkpoints.Checkpoint, split: str = "test") -> dict:
    """A split's multi-class metrics (:func:`metrics.multiclass_summary`) from the card; {} for other tasks."""
    extra = ck.card.metrics.split(split).extra
    return extra if "confusion" in extra else {}


def multiclass_columns(ck: checkpoints.Checkpoint) -> dict:
    """Table 1's extra columns of a multi-class model: test macro precision, recall and F1 (its test_acc is the
    argmax accuracy and its AUC one-vs-rest)."""
    m = multiclass_metrics(ck)
    return {f"test_{k}": m[k] for k in ("precision_macro", "recall_macro", "f1_macro")} if m else {}


def table1_columns(task: str) -> list[str]:
    return MULTICLASS_COLUMNS if kind_of(task) == "multi-class" else TABLE1_COLUMNS


def confusion_frame(ck: checkpoints.Checkpoint, split: str = "test") -> list[dict]:
    """A multi-class model's confusion matrix as rows (true class) of counts per predicted class ([] otherwise)."""
    m = multiclass_metrics(ck, split)
    names = ck.card.label_names
    return [{"true": t, **dict(zip(names, row))} for t, row in zip(names, m["confusion"])] if m else []


def per_class_rows(ck: checkpoints.Checkpoint, split: str = "test") -> list[dict]:
    """Per-class sensitivity (recall), specificity, precision and support of the argmax calls."""
    m = multiclass_metrics(ck, split)
    return [{"class": k, **v} for k, v in m.get("per_class", {}).items()]


def multiclass_section(cks: Sequence[checkpoints.Checkpoint]) -> list[str]:
    """BENCHMARKS.md's confusion matrices (test split, argmax calls) and per-class rates, one model after another."""
    out = []
    for ck in cks:
        if multiclass_metrics(ck):
            out += [f"#### {ck.id}: test confusion matrix (rows: true class, columns: predicted)", "",
                    markdown(confusion_frame(ck)), "", markdown(per_class_rows(ck)), ""]
    return ["### Confusion matrices", "", *out] if out else []


# ---- learning curves --------------------------------------------------------------------------------------------

CURVE_COLUMNS = ["model", "train_images", "test_auc", "test_auc_lo", "test_auc_hi", "val_auc", "epochs"]


def learning_curve(curves_root: Path, dataset: str) -> tuple[list[dict], list[str]]:
    """A dataset's learning-curve rows (:func:`curves.curve_rows`) and the commands that trained its points."""
    points = curves.points(curves_root, dataset)
    return curves.curve_rows(points), sorted({p.card.rebuild for p in points})


def curve_section(curves_root: Path, dataset: str) -> list[str]:
    """BENCHMARKS.md's learning-curve table of a dataset (test AUC with its 95 % CI against training images)."""
    rows, commands = learning_curve(curves_root, dataset)
    if not rows:
        return []
    return ["### Learning curve (test AUC against training images)", "",
            "Nested, patient-grouped subsets of the training split, the same validation and test images for every "
            "point. Commands: " + "; ".join(f"`{c}`" for c in commands) + ".", "",
            markdown(rows, CURVE_COLUMNS), ""]


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or (list(rows[0]) if rows else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [(_fmt(v) if isinstance(v, float) else "" if v is None else str(v)) for v in (r.get(k) for k in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PER_LABEL_COLUMNS = ["positives", "auc", "sensitivity", "specificity", "ppv", "npv", "f1", "threshold"]


def per_label_rows(card: Card, split: str = "test") -> list[dict]:
    """One model's per-label metrics at its card's thresholds, a row per label (None where undefined)."""
    per = card.metrics.split(split).per_label
    return [{"label": k, **{c: v.get(c) for c in PER_LABEL_COLUMNS}} for k, v in per.items()]


def per_label_table(cks: Sequence[checkpoints.Checkpoint], metric: str = "auc", split: str = "test") -> list[dict]:
    """One per-label card metric (AUC, sensitivity, specificity) of several models of one dataset: a row per label,
    a column per model, None where undefined."""
    names = cks[0].card.label_names
    return [{"label": n, **{c.id: c.card.metrics.split(split).per_label.get(n, {}).get(metric) for c in cks}}
            for n in names]


def history_rows(cks: Sequence[checkpoints.Checkpoint]) -> list[dict]:
    """Every model's per-epoch history in long form (model, epoch, train_loss, val_loss, val_auc, ...); a model whose
    history cannot be read has no rows (its checkpoint's ``notes`` say why)."""
    rows = []
    for ck in cks:
        try:
            rows += [{"model": ck.id, **row} for row in ck.history()]
        except checkpoints.CheckpointError:
            continue
    return rows


def direct(root: Path) -> list[checkpoints.Checkpoint]:
    """Checkpoints directly under ``root`` (not those of other datasets in sub-folders)."""
    return [c for c in checkpoints.find(root) if c.path.parent == Path(root)]


def write_tables(root: Path) -> None:
    cks = direct(root)
    rows = table1(cks)
    if not rows:
        return
    columns = table1_columns(cks[0].card.task)  # a multi-class task has its own columns
    with open(root / "benchmarks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")  # rows carry every task's columns
        w.writeheader()
        w.writerows(rows)
    (root / "benchmarks.md").write_text(markdown(rows, columns) + "\n")


def convergence_notes(cks: Sequence[checkpoints.Checkpoint]) -> list[str]:
    """One line per model that did not converge (:attr:`Card.not_converged`), for the tables' readers."""
    return [f"{c.id}: {why}" for c in cks if (why := c.card.not_converged)]


CONVERGENCE_NOTE = ("Did not converge (judged on held-out figures; shown for completeness, not as its architecture's "
                    "result, and never ranked or chosen as best single):")


def rankable(cks: Sequence[checkpoints.Checkpoint]) -> list[checkpoints.Checkpoint]:
    """The models whose held-out AUCs can be ranked against each other: the cross-validated ones where any are
    (pooled out-of-fold AUC over every train + val image), else all (validation AUC). The two are never compared:
    on NIH, validation AUC (167 images, 1-4 positives for several labels) ran 0.04 above test on average."""
    oof = [c for c in cks if c.card.cross_validated]
    return oof or list(cks)


def best_single(cks: list[checkpoints.Checkpoint], exclude: tuple[str, ...] = ("ensemble", "medmnist_baseline")):
    """The single model with the highest held-out AUC (:attr:`Card.held_out_auc`; never test), among those that
    learned (:attr:`Card.not_converged`) and can be ranked together (:func:`rankable`)."""
    pool = rankable([c for c in cks if c.id not in exclude and not c.card.not_converged])
    return max(pool, key=lambda c: c.card.held_out_auc) if pool else None


def baseline_comparison(cks: list[checkpoints.Checkpoint], n_boot: int = 1000) -> list[dict]:
    """Best single model and ensemble against the MedMNIST-recipe baseline: a paired bootstrap of the test macro AUC
    over patients (the patient codes stored beside the predictions; images for checkpoints that have none, and the
    row says which), with the label set fixed across resamples.

    Recomputed from stored predictions, so the table checks the cards rather than repeating them."""
    by_id = {c.id: c for c in cks if c.has_predictions}
    base, best = by_id.get("medmnist_baseline"), best_single(list(by_id.values()))
    if base is None or best is None:
        return []
    task = base.card.task
    bp = base.predictions()
    y, groups = bp["test_labels"], stored_groups(bp, "test")
    rows = []
    for label, c in (("best single (by held-out AUC): " + best.id, best), ("ensemble", by_id.get("ensemble"))):
        if c is None:
            continue
        p = c.predictions()["test_probs"]
        d = metrics.paired_auc_diff(y, p, bp["test_probs"], task, n_boot, groups=groups)
        rows.append({"model": label, "test_auc": metrics.get_auc(y, p, task),
                     "baseline_test_auc": metrics.get_auc(y, bp["test_probs"], task),
                     "diff": d["diff"], "diff_ci": f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}",
                     "p_not_better": d["p_not_better"], "resampled": d["unit"] + "s"})
    return rows


# ---- seeds: mean +- sd, and rankings only where seeds and a patient-level bootstrap agree ---------------------------

SEED_COLUMNS = ["model", "seeds", "test_auc_mean", "test_auc_sd", "test_auc_min", "test_auc_max", "val_auc_seed0",
                "val_auc_others", "oof_auc_mean", "oof_auc_sd", "commits"]


SEED0 = "seed0"


def seed_checkpoints(main: Sequence[checkpoints.Checkpoint], seeds_root: Path | None,
                     dataset: str) -> dict[str, list[checkpoints.Checkpoint]]:
    """Every model's seeds of one recipe, seed 0 first, then ``<seeds_root>/<dataset>/seed<k>/<id>`` in seed order
    (``run_all.py --seeds N``). Seed 0 is the main checkpoint, or ``<seeds_root>/<dataset>/seed0/<id>`` where one is
    kept: seed 0 of a recipe the shipped model has since left (single split, random init). A seed whose recipe
    (:attr:`Card.recipe`: cross-validated or not, and what it started from) differs from its row's seed 0 is left
    out, so a row never mixes recipes. The ensemble is left out (it has no seed of its own)."""
    inside = (lambda c: seeds_root is not None and Path(seeds_root).resolve() in c.path.resolve().parents)
    out = {c.id: [c] for c in main if not c.card.members and not inside(c)}
    if seeds_root is None or not (Path(seeds_root) / dataset).is_dir():
        return out
    extra = [c for c in checkpoints.find(Path(seeds_root) / dataset) if c.path.parent.name.startswith("seed")]
    for c in sorted(extra, key=lambda c: int(c.path.parent.name[4:])):
        if c.id in out and c.card.dataset.split_checksum == out[c.id][0].card.dataset.split_checksum:
            if c.path.parent.name == SEED0:
                out[c.id][0] = c
            elif c.card.recipe == out[c.id][0].card.recipe:
                out[c.id].append(c)
    return out


def recipe_baselines(main: Sequence[checkpoints.Checkpoint], seeds_roots: Iterable[Path],
                     dataset: str) -> list[checkpoints.Checkpoint]:
    """Each model of the task in every recipe it was trained by: the shipped checkpoint and, where a seed tree keeps
    one, its single-split seed 0 (:func:`seed_checkpoints`), so a chest X-ray fine-tune is compared with the
    random-init run of its own recipe and its gain is one of init only."""
    kept = [v[0] for root in seeds_roots for v in seed_checkpoints(main, root, dataset).values()]
    out = list(main)
    for c in kept:
        if all(c.path != m.path for m in out):
            out.append(c)
    return out


def seed_summary(values: Sequence[float]) -> dict:
    """n, mean, sample sd (None below two seeds), min and max of one figure over seeds."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return {"n": len(v), "mean": float(v.mean()) if len(v) else None,
            "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()) if len(v) else None, "max": float(v.max()) if len(v) else None}


def seed_rows(groups: Mapping[str, Sequence[checkpoints.Checkpoint]]) -> list[dict]:
    """Per model: test macro AUC mean +- sd (and min, max) over its seeds, the out-of-fold AUC's where
    cross-validated, the validation AUC of seed 0 (the model whose recipe was chosen on it) beside the other seeds'
    mean (how much choosing on it flattered seed 0), and how many code commits the seeds were trained at (a seed
    trained by other code differs by more than its seed)."""
    rows = []
    for model, cks in groups.items():
        t, o = seed_summary([c.card.metrics.test.auc_macro for c in cks]), seed_summary(
            [c.card.metrics.extra["oof"]["auc_macro"] for c in cks if "oof" in c.card.metrics.extra])
        others = seed_summary([c.card.metrics.val.auc_macro for c in cks[1:]])
        rows.append({"model": model, "seeds": t["n"], "test_auc_mean": t["mean"], "test_auc_sd": t["sd"],
                     "test_auc_min": t["min"], "test_auc_max": t["max"],
                     "val_auc_seed0": cks[0].card.metrics.val.auc_macro, "val_auc_others": others["mean"],
                     "oof_auc_mean": o["mean"], "oof_auc_sd": o["sd"],
                     "commits": len({c.card.git_commit for c in cks})})
    return rows


def ranking_claim(a: Sequence[checkpoints.Checkpoint], b: Sequence[checkpoints.Checkpoint],
                  n_boot: int = 1000) -> dict:
    """Whether model a (its seeds) ranks above or below model b on test AUC, claimed only where both say so: every
    seed of one above every seed of the other (at least two seeds each), and the paired patient-level bootstrap
    interval of the seed-averaged difference (:func:`metrics.paired_auc_diff` over both models' seeds) excluding 0
    the same way. ``winner`` is the
    model id, or None: "not separated"."""
    ta, tb = ([c.card.metrics.test.auc_macro for c in x] for x in (a, b))
    by_seeds = None
    if len(ta) >= 2 and len(tb) >= 2:
        by_seeds = a[0].id if min(ta) > max(tb) else b[0].id if min(tb) > max(ta) else None
    pa = [c.predictions() for c in a]
    pb = [c.predictions()["test_probs"] for c in b]
    d = metrics.paired_auc_diff(pa[0]["test_labels"], [p["test_probs"] for p in pa], pb, a[0].card.task, n_boot,
                                groups=stored_groups(pa[0], "test"))
    by_boot = a[0].id if d["ci_low"] > 0 else b[0].id if d["ci_high"] < 0 else None
    winner = by_seeds if by_seeds is not None and by_seeds == by_boot else None
    return {"a": a[0].id, "b": b[0].id, "seeds": f"{len(ta)} / {len(tb)}", "diff": d["diff"],
            "diff_ci": f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}", "resampled": d["unit"] + "s",
            "seeds_separate": by_seeds is not None, "bootstrap_separates": by_boot is not None,
            "winner": winner, "claim": f"{winner} ranks higher" if winner else "not separated"}


def ranking_rows(groups: Mapping[str, Sequence[checkpoints.Checkpoint]], n_boot: int = 1000) -> list[dict]:
    """:func:`ranking_claim` for each neighbouring pair of models ordered by mean test AUC over seeds (models with
    stored predictions that converged, :attr:`Card.not_converged`): the ranking claims a table may make, and where
    it may not."""
    pool = {m: list(cks) for m, cks in groups.items()
            if all(c.has_predictions for c in cks) and not cks[0].card.not_converged}
    order = sorted(pool, key=lambda m: -np.mean([c.card.metrics.test.auc_macro for c in pool[m]]))
    return [ranking_claim(pool[a], pool[b], n_boot) for a, b in zip(order, order[1:])]


# ---- chest X-ray pretraining against random init --------------------------------------------------------------

PRETRAIN_COLUMNS = ["model", "recipe", "base", "init_main", "recipe_change", "held_out_auc_main",
                    "held_out_auc_pretrained", "held_out_gain", "test_auc_main", "test_auc_pretrained", "test_gain"]
RECIPE_NAMES = {True: "cross-validated (out-of-fold)", False: "single split (validation)"}
RECIPE_KEYS = ("lr", "epochs", "patience", "weight_decay", "batch_size")
PRETRAIN_NOTE = ("Each architecture fine-tuned from a chest X-ray base (the project's own checkpoint of another task) "
                 "against the task's own random-init model of that id and recipe (cross-validated against "
                 "cross-validated, single split against single split), same precision; recipe_change: what the "
                 "zoo's recipe for a pretrained start changes (a from-scratch start gets a higher learning rate and "
                 "more epochs). The init a task ships is chosen on the held-out gain only; the seeds table shows how "
                 "far validation AUC moves with the seed alone.")


def fine_tunes(main: Sequence[checkpoints.Checkpoint], root: Path | None,
               dataset: str) -> list[tuple[checkpoints.Checkpoint, str, bool]]:
    """Every chest X-ray fine-tune of a task, with its base's folder and whether it is the shipped model: the
    experiments under ``<root>/<dataset>/from-<base folder>/<id>`` and the task's models that start from their zoo
    entry's chest X-ray base (:attr:`ModelSpec.chest_base`)."""
    folder = Path(root) / dataset if root is not None else None
    tried = [(ck, f"pretrain/{ck.path.parent.name.removeprefix('from-')}/{ck.id}", False)  # the card's sha256 pins it
             for ck in (checkpoints.find(folder) if folder is not None and folder.is_dir() else [])
             if ck.path.parent.name.startswith("from-")]
    for c in main:
        base = get_spec(c.id).chest_base if c.card.init.kind == "checkpoint" else None
        if base and not c.path.parent.name.startswith("seed"):
            tried.append((c, base.path(c.id), True))
    return tried


def pretraining_rows(main: Sequence[checkpoints.Checkpoint], root: Path | None, dataset: str) -> list[dict]:
    """Per chest X-ray fine-tune (:func:`fine_tunes`): its held-out and test AUC beside the task's own model of the
    same id and recipe that starts from random init or ImageNet (``main``: see :func:`recipe_baselines`;
    cross-validated against cross-validated, single split against single split), and the gains."""
    by_recipe = {(c.id, c.card.cross_validated): c.card for c in main  # the model's own start: random or ImageNet
                 if not c.card.members and not c.card.init.from_project}
    rows = []
    for ck, base_path, is_shipped in fine_tunes(main, root, dataset):
        base = by_recipe.get((ck.id, ck.card.cross_validated))
        if base is None or ck.card.metrics.test is None:
            continue
        test = base.metrics.test.auc_macro if base.metrics.test else None
        change = ", ".join(f"{k} {base.hparams.get(k)} -> {ck.card.hparams.get(k)}" for k in RECIPE_KEYS
                           if k in ck.card.hparams and base.hparams.get(k) != ck.card.hparams.get(k))
        if base.trained_precision != ck.card.trained_precision:
            change = ", ".join(filter(None, [change, f"precision {base.trained_precision} -> "
                                                     f"{ck.card.trained_precision}"]))
        rows.append({"model": ck.id,
                     "recipe": RECIPE_NAMES[ck.card.cross_validated] + (", shipped" if is_shipped else ""),
                     "base": base_path, "init_main": base.init.kind, "recipe_change": change or "none",
                     "held_out_auc_main": base.held_out_auc, "held_out_auc_pretrained": ck.card.held_out_auc,
                     "held_out_gain": ck.card.held_out_auc - base.held_out_auc, "test_auc_main": test,
                     "test_auc_pretrained": ck.card.metrics.test.auc_macro,
                     "test_gain": None if test is None else ck.card.metrics.test.auc_macro - test})
    return rows


def pretraining_section(main: Sequence[checkpoints.Checkpoint], root: Path | None, dataset: str) -> list[str]:
    rows = pretraining_rows(main, root, dataset)
    if not rows:
        return []
    commands = sorted({ck.card.rebuild for ck, _, _ in fine_tunes(main, root, dataset)})
    return ["### Chest X-ray pretraining against random init", "", PRETRAIN_NOTE, "",
            markdown(rows, PRETRAIN_COLUMNS), "", "Commands (each base's own card gives the command that built it):",
            "", *[f"- `{c}`" for c in commands], ""]


def limits_text(card: Card) -> list[str]:
    d = card.dataset
    prev = d.prevalence
    names = card.label_names
    rare = [f"{n} ({prev['test'][i]} test / {prev['val'][i]} val positives)" for i, n in enumerate(names)
            if "test" in prev and "val" in prev and (prev["test"][i] < 10 or prev["val"][i] < 5)]
    n_train = d.counts.get("train", "an unknown number of")
    out = [f"- {n_train} training images. Small data: models from random initialisation see far less "
           "than the 78,468 training images of the full ChestMNIST, so their AUCs sit well below published ones."
           if is_multilabel(card.task) else
           f"- {n_train} training images (the official split)."]
    if rare:
        out.append("- Labels whose AUC rests on very few positives (wide CIs; treat as anecdotal): " + ", ".join(rare)
                   + f". Labels with fewer than {metrics.MIN_POSITIVES} held-out positives, or whose held-out AUC "
                   "interval includes 0.5, get no operating threshold and no call.")
    if is_multilabel(card.task):
        out.append("- Accuracy is not informative here (always answering 'negative' scores above 0.9); "
                   "read AUC and sensitivity/specificity at the chosen thresholds.")
    return out


def prevalence_rows(card: Card) -> list[dict]:
    """Positives per label (or images per class) and split, with their share of the split, in long form."""
    d = card.dataset
    return [{"label": name, "split": split, "positives": int(n), "share": n / d.counts[split] if d.counts.get(split)
             else None} for split, values in d.prevalence.items() for name, n in zip(card.label_names, values)]


def _prevalence_by_label(rows: list[dict]) -> list[dict]:
    """Prevalence rows as BENCHMARKS.md lays them out: one row per label, the positives of each split beside."""
    wide: dict[str, dict] = {}
    for r in rows:
        wide.setdefault(r["label"], {"label": r["label"]})[r["split"]] = r["positives"]
    return list(wide.values())


def split_arrays(preds: Mapping[str, np.ndarray], split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels as one column per output, probabilities) of one stored split; binary tasks become one-vs-rest."""
    probs = np.asarray(preds[f"{split}_probs"])
    return label_columns(np.asarray(preds[f"{split}_labels"]), task, probs.shape[1]), probs


def reliability_of(preds: Mapping[str, np.ndarray], task: str, n_bins: int = 10, raw: bool = False) -> dict:
    """Reliability bins and ECE of stored test predictions (all labels pooled, as in the cards): the served
    (calibrated) probabilities, or with ``raw`` the models' own outputs (``test_raw_probs``, where stored)."""
    y, p = split_arrays(preds, "test", task)
    if raw:
        p = np.asarray(preds.get("test_raw_probs", p))
    return metrics.reliability(y, p, n_bins)


def _members_fitted_on(card: Card) -> str:
    """Where an ensemble's members were calibrated and its thresholds chosen: out of fold when all were
    cross-validated on the same folds, else validation; "" for a single model without calibration."""
    return ("oof" if card.cross_validated else "val") if card.members else ""


def calibration_on_test(ck: checkpoints.Checkpoint, n_boot: int = 1000) -> CalibrationCheck:
    """The served (calibrated) probabilities' test ECE with its CI: what the app's "calibrated p" rests on."""
    preds = ck.predictions()
    y, p = split_arrays(preds, "test", ck.card.task)
    lo, hi = metrics.ece_ci(y, p, n_boot=n_boot, groups=stored_groups(preds, "test"))
    return CalibrationCheck(ck.id, metrics.reliability(y, p)["ece"], lo, hi)


AT_TEST_MIX_NOTE = (
    "test_ece_at_test_mix: the calibrated probabilities moved by Bayes' rule from the held-out class mix to the test "
    "split's (a diagnostic that reads test labels, never served). A held-out fit cannot follow a test split whose "
    "class mix differs (see Data and its limits); where this figure stays above the target too, the miss is not the "
    "class mix alone but a change in the films themselves.")


def ece_at_test_mix(preds: Mapping[str, np.ndarray], task: str) -> float:
    """Test ECE of the served probabilities moved by Bayes' rule from the held-out class mix (where calibration was
    fitted) to the test split's: what is left of a miss once the class mix is accounted for. Reads test labels, so
    it explains a miss; it is never served."""
    y, p = split_arrays(preds, "test", task)
    source = split_arrays(preds, held_out_split(preds), task)[0].mean(axis=0)
    return metrics.reliability(y, metrics.prior_shift(p, source, y.mean(axis=0), not is_multilabel(task)))["ece"]


def calibration_rows(cks: Sequence[checkpoints.Checkpoint], n_boot: int = 1000) -> list[dict]:
    """Per model: test ECE of the raw outputs and of the served calibrated probabilities (with its 95 % bootstrap CI
    over test patients, where named), the latter moved to the test split's class mix, and how it was fitted."""
    rows = []
    for ck in cks:
        preds, cal = ck.predictions(), ck.card.calibration or {}
        check = calibration_on_test(ck, n_boot)
        method = ({"platt": f"pos-weight prior + Platt (prior strength {cal.get('prior_strength', 0):g})",
                   "temperature": f"temperature {cal.get('temperature', 1):.2f}"
                                  + (f" ({cal['note']})" if cal.get("note") else "")}.get(cal.get("kind"))
                  or ("mean of calibrated members" if ck.card.members else "none"))
        rows.append({"model": ck.id, "test_ece_raw": reliability_of(preds, ck.card.task, raw=True)["ece"],
                     "test_ece_calibrated": check.ece, "test_ece_calibrated_ci": f"[{check.lo:.3f}, {check.hi:.3f}]",
                     "test_ece_at_test_mix": ece_at_test_mix(preds, ck.card.task), "calibration": method,
                     "fitted_on": cal.get("fitted_on", _members_fitted_on(ck.card))})
    return rows


LOCALISATION_COLUMNS = ["model", "subset", "cam_layer", "boxes", "no_localisation", "pointing", "chance",
                        "precision", "recall", "f1"]
LOCALISATION_NOTE = (
    "Grad-CAM of each box's own label on the NIH images with radiologists' boxes, as the app serves the models. "
    "Pointing: share of boxes with the map's peak inside; chance: the share a random point would reach (the boxes' "
    "mean share of the image). Precision / recall / F1: the transfer report's area overlap of the CAM region (where the "
    "map reaches {level:g} of its peak) with the box (its custom CNN: P 0.173, R 0.213, F1 0.191 on 880 images). A map "
    "with no localisation (empty or constant) counts as a miss with P = R = 0. Subsets: test = test-split boxes "
    "(never trained on; the 1024 px sample among them); held_out = every box on an image the model never trained "
    "on (validation too, except for a cross-validated model refit on train + val); all = with the training boxes, "
    "which the models saw (labels only, not the boxes). PneumoniaMNIST models are paediatric models read on adult NIH "
    "films, for the Pneumonia boxes only. So few boxes give no precision: read these as a check, not a ranking.")


def localisation_rows(root: Path, dataset: str, subsets: Sequence[str] = ("test", "all")) -> list[dict]:
    """The localisation table of a dataset's models (``benchmarks/localisation.py`` writes it under the checkpoint
    root), one row per model and subset; [] when it has not been run."""
    table = localisation.load(root)
    return [{"model": r["model"], "subset": r["subset"], "cam_layer": f"{r['layer']} ({r['grid']})",
             **{k: r[k] for k in LOCALISATION_COLUMNS[3:]}}
            for r in (table or {}).get("rows", []) if r["dataset"] == dataset and r["subset"] in subsets]


def localisation_section(root: Path, dataset: str) -> list[str]:
    """BENCHMARKS.md's Grad-CAM localisation table of a dataset, with how it was made."""
    rows = localisation_rows(root, dataset)
    if not rows:
        return []
    table = localisation.load(root)
    return ["### Grad-CAM localisation against the NIH boxes", "",
            LOCALISATION_NOTE.format(level=table["region_level"]) + f" Command: `{table['command']}`.", "",
            markdown(rows, LOCALISATION_COLUMNS), ""]


def published_section(dataset: str) -> list[str]:
    """BENCHMARKS.md's published tables of a dataset's task (:func:`published.tables`, as the Benchmarks page shows
    them), each headed as not reproduced here, with its source and what it was measured on."""
    out = []
    for table in published.tables(dataset):
        out += [f"### Published (not reproduced here): {table.title}", "", f"Source: {table.source}. {table.note}",
                "", markdown([{k: f"{v:g}" if isinstance(v, float) else v for k, v in r.items()} for r in table.rows]), ""]
    return out


SEED_NOTE = ("A model ranks above its neighbour only where every seed of it beats every seed of the other and the "
             "paired bootstrap of the seed-averaged test AUC difference, over patients, excludes 0. Val AUC seed 0 "
             "(val_auc_seed0): the validation AUC of seed 0, the shipped model whose recipe was chosen on validation; "
             "Val AUC others (val_auc_others): the other seeds' mean (a positive gap is what that choice may have "
             "flattered it by). Code versions (commits): how many code versions trained the seeds (more than one: the "
             "spread includes code changes). Each table is one recipe: the shipped one (seed 0 is the shipped model, "
             "seeds 1-2 under seeds/), the single-split recipe of the models since retrained cross-validated (seeds "
             "0-2 under seeds-single-split/), and the random-init recipe of the models since fine-tuned from a chest "
             "X-ray base (seeds 0-2 under seeds-random-init/).")


def seed_report(cks: Sequence[checkpoints.Checkpoint], seeds_root: Path | None, dataset: str,
                n_boot: int = 1000) -> tuple[list[dict], list[dict]]:
    """The seeds table (:func:`seed_rows`) and the ranking claims it allows (:func:`ranking_rows`) of the models
    that have more than one seed; ([], []) when none has."""
    groups = {m: v for m, v in seed_checkpoints(cks, seeds_root, dataset).items() if len(v) > 1}
    return (seed_rows(groups), ranking_rows(groups, n_boot)) if groups else ([], [])


def seed_section(cks: Sequence[checkpoints.Checkpoint], seeds_root: Path | None, dataset: str,
                 n_boot: int = 1000, recipe: str | None = None) -> list[str]:
    """BENCHMARKS.md's seeds table of one recipe's seed tree (mean +- sd of test AUC over seeds) and the ranking
    claims it allows."""
    rows, claims = seed_report(cks, seeds_root, dataset, n_boot)
    if not rows:
        return []
    return [f"### Seeds{f' ({recipe})' if recipe else ''}: test AUC over seeds and the rankings they allow", "",
            SEED_NOTE, "", markdown(rows, SEED_COLUMNS), "", *([markdown(claims), ""] if claims else [])]


def write_report(root: Path, path: Path, curves_root: Path | None = None,
                 seeds_roots: Mapping[str, Path] | None = None, pretrain_root: Path | None = None) -> None:
    """BENCHMARKS.md: every dataset's Table 1 with CIs, provenance, limits, confusion matrices (multi-class), seeds
    (a table per recipe's tree in ``seeds_roots``), pretraining against random init (under ``pretrain_root``), the
    learning curve (points under ``curves_root``) and the published numbers beside."""
    groups: dict[str, list[checkpoints.Checkpoint]] = {}
    for c in checkpoints.find(root):
        groups.setdefault(c.dataset, []).append(c)
    out = ["# Benchmarks", "",
           "Generated by `python train/run_all.py` from the model cards in `checkpoints/`; do not edit by hand.",
           "Every number in the tables of our models comes from this project's runs (stored predictions and cards);",
           "published numbers are in their own, labelled tables. AUC is MedMNIST's getAUC (mean per-label ROC AUC),",
           "with a 95 % bootstrap CI over test patients where the dataset names them (else images); accuracy is MedMNIST's getACC (threshold 0.5, or argmax);",
           "sensitivity/specificity are label means at each model's thresholds chosen on held-out predictions (Youden",
           "J; pooled out-of-fold where the model was cross-validated, else validation), over the labels with at least",
           f"{metrics.MIN_POSITIVES} held-out positives and a held-out AUC whose 95 % CI excludes 0.5 (the others get",
           "no threshold and no call). Probabilities are calibrated on the same held-out predictions (see Calibration).",
           ""]
    for name, cks in groups.items():
        first = cks[0].card
        d = first.dataset
        counts = "/".join(str(d.counts.get(s, "?")) for s in ("train", "val", "test"))
        out += [f"## {name} ({d.size} px): {first.task}", "",
                f"Images train/val/test: {counts}"
                f"{' (split by patient)' if name.startswith('nih14') else ''}. Source file MD5 `{d.source_md5}`, "
                f"split checksum `{(d.split_checksum or 'n/a')[:16]}`. Hardware: {first.hardware or 'n/a'}. Epochs were chosen on "
                "held-out AUC (pooled out-of-fold when cross-validated, else validation); the test split was read once, "
                "after all training (`train/evaluate_test.py`).", "",
                "### Table 1", "", markdown(table1(cks), table1_columns(first.task)), ""]
        notes = convergence_notes(cks)
        out += [CONVERGENCE_NOTE, "", *[f"- {n}" for n in notes], ""] if notes else []
        comparison = baseline_comparison(cks)
        if comparison:
            out += ["### Against the MedMNIST-recipe peer baseline (paired bootstrap of test AUC over patients)", "",
                    markdown(comparison), ""]
        for recipe, seeds_root in (seeds_roots or {}).items():
            out += seed_section(cks, seeds_root, name, recipe=recipe)
        out += pretraining_section(recipe_baselines(cks, (seeds_roots or {}).values(), name), pretrain_root, name)
        if is_multilabel(first.task):
            out += ["### Per-label test AUC", "", markdown(per_label_table(cks)), ""]
        out += multiclass_section(cks)
        out += ["### Calibration (test ECE, all labels pooled, 10 bins)", "",
                "Fitted on held-out predictions (fitted_on: oof = pooled out-of-fold, val = validation); raw: the "
                "networks' own outputs"
                + (" (BCE with a positive weight inflates every score)" if is_multilabel(first.task)
                   else "") + "; calibrated: what the app serves and the tables above measure; its 95 % CI "
                "is a bootstrap over test patients (else images). " + AT_TEST_MIX_NOTE, "",
                markdown(calibration_rows([c for c in cks if c.has_predictions])), ""]
        out += ["### Data and its limits", "", *limits_text(first), "",
                markdown(_prevalence_by_label(prevalence_rows(first))), ""]
        out += ["### Reproduce", "", "Commands (the cards' `rebuild_command`) and training minutes on this machine:",
                ""]
        by_command: dict[str, list[str]] = {}
        for c in cks:
            by_command.setdefault(c.card.rebuild, []).append(
                c.id if c.id == "ensemble" else f"{c.id} {train_minutes(c.card):.1f} min")
        out += [f"- `{cmd}`: {', '.join(runs)}" for cmd, runs in by_command.items()]
        out.append("")
        out += curve_section(curves_root, name) if curves_root else []
        out += localisation_section(root, name)
        out += published_section(name)
    path.write_text("\n".join(out) + "\n")


def write_project_report() -> None:
    """The project's BENCHMARKS.md: every task under checkpoints/, with its learning curves, seeds and pretraining
    comparisons (what ``run_all.py`` and ``calibrate.py`` regenerate after changing any card)."""
    write_report(REPO_ROOT / "checkpoints", REPO_ROOT / "BENCHMARKS.md", curves.curves_root(), seed_roots(),
                 pretrain_root())
