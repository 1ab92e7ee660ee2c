"""Benchmark tables built from model cards: the papers' Table 1 layout, per-label metrics, and BENCHMARKS.md.

Every number comes from a card (or is recomputed from stored predictions); published reference numbers live in
:mod:`cxrcore.published` and are always labelled as such.
"""
from __future__ import annotations

import csv
from pathlib import Path

from . import checkpoints, metrics, published

TABLE1_COLUMNS = ["model", "init", "params_M", "train_loss", "val_loss", "test_acc", "test_sensitivity",
                  "test_specificity", "val_auc", "test_auc", "test_auc_ci", "epochs", "best_epoch",
                  "train_minutes", "weights_shipped"]


def _fmt(x: float | None, nd: int = 3) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def table1_row(ck: checkpoints.Checkpoint) -> dict:
    c, m = ck.card, ck.card["metrics"]
    lo, hi = m["test"]["auc_macro_ci"]
    return {
        "model": c["id"],
        "init": c["init"]["kind"],
        "params_M": round(c["params_total"] / 1e6, 2),
        "train_loss": m.get("train_loss"),
        "val_loss": m.get("val_loss"),
        "test_acc": m["test"]["acc"],
        "test_sensitivity": m["test"]["sensitivity_macro"],
        "test_specificity": m["test"]["specificity_macro"],
        "val_auc": m["val"]["auc_macro"],
        "test_auc": m["test"]["auc_macro"],
        "test_auc_ci": f"{lo:.3f}-{hi:.3f}",
        "epochs": c.get("epochs_run"),
        "best_epoch": c.get("best_epoch"),
        "train_minutes": round(c["train_seconds"] / 60, 1),
        "weights_shipped": ck.has_weights or c["id"] == "ensemble",
    }


def table1(cks: list[checkpoints.Checkpoint]) -> list[dict]:
    return [table1_row(c) for c in cks]


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or (list(rows[0]) if rows else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [(_fmt(v) if isinstance(v, float) else "" if v is None else str(v)) for v in (r.get(k) for k in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_label_rows(ck: checkpoints.Checkpoint, split: str = "test") -> list[dict]:
    per = ck.card["metrics"][split]["per_label"]
    return [{"label": k, "positives": v["positives"], "auc": v["auc"], "sensitivity": v["sensitivity"],
             "specificity": v["specificity"], "threshold": v["threshold"]} for k, v in per.items()]


def direct(root: Path) -> list[checkpoints.Checkpoint]:
    """Checkpoints directly under ``root`` (not those of other datasets in sub-folders)."""
    return [c for c in checkpoints.find(root) if c.path.parent == Path(root)]


def write_tables(root: Path) -> None:
    rows = table1(direct(root))
    if not rows:
        return
    with open(root / "benchmarks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE1_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (root / "benchmarks.md").write_text(markdown(rows, TABLE1_COLUMNS) + "\n")


def per_label_auc_table(cks: list[checkpoints.Checkpoint], split: str = "test") -> list[dict]:
    """Labels x models test AUC (rows per label), for the models of one dataset."""
    names = cks[0].card["label_names"]
    return [{"label": n, **{c.id: c.card["metrics"][split]["per_label"][n]["auc"] for c in cks}} for n in names]


def best_single(cks: list[checkpoints.Checkpoint], exclude: tuple[str, ...] = ("ensemble", "medmnist_baseline")):
    """The single model with the highest validation AUC (chosen on val, never on test)."""
    pool = [c for c in cks if c.id not in exclude]
    return max(pool, key=lambda c: c.card["metrics"]["val"]["auc_macro"]) if pool else None


def baseline_comparison(cks: list[checkpoints.Checkpoint], n_boot: int = 1000) -> list[dict]:
    """Best single model and ensemble against the MedMNIST-recipe baseline, paired bootstrap on the test split.

    Recomputed from stored predictions, so the table checks the cards rather than repeating them."""
    by_id = {c.id: c for c in cks}
    base, best = by_id.get("medmnist_baseline"), best_single(cks)
    if base is None or best is None:
        return []
    task = base.card["task"]
    bp = base.predictions()
    y = bp["test_labels"]
    auc = lambda a, b: metrics.get_auc(a, b, task)  # noqa: E731
    rows = []
    for label, c in (("best single (by val AUC): " + best.id, best), ("ensemble", by_id.get("ensemble"))):
        if c is None:
            continue
        p = c.predictions()["test_probs"]
        d = metrics.paired_bootstrap_diff(auc, y, p, bp["test_probs"], n_boot=n_boot)
        rows.append({"model": label, "test_auc": auc(y, p), "baseline_test_auc": auc(y, bp["test_probs"]),
                     "diff": d["diff"], "diff_ci": f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}",
                     "p_not_better": d["p_not_better"]})
    return rows


def limits_text(card: dict) -> list[str]:
    d = card["dataset"]
    prev = d["prevalence"]
    names = card["label_names"]
    rare = [f"{n} ({prev['test'][i]} test / {prev['val'][i]} val positives)" for i, n in enumerate(names)
            if prev["test"][i] < 10 or prev["val"][i] < 5]
    out = [f"- {d['counts']['train']} training images. Small data: models from random initialisation see far less "
           "than the 78,468 training images of the full ChestMNIST, so their AUCs sit well below published ones."
           if card["task"].startswith("multi-label") else
           f"- {d['counts']['train']} training images (the official split)."]
    if rare:
        out.append("- Labels whose AUC rests on very few positives (wide CIs; treat as anecdotal): " + ", ".join(rare)
                   + ". Validation-chosen thresholds for them are especially unstable.")
    if card["task"].startswith("multi-label"):
        out.append("- Accuracy is not informative here (always answering 'negative' scores above 0.9); "
                   "read AUC and sensitivity/specificity at the chosen thresholds.")
    return out


def prevalence_table(card: dict) -> list[dict]:
    prev = card["dataset"]["prevalence"]
    return [{"label": n, **{s: prev[s][i] for s in ("train", "val", "test")}} for i, n in enumerate(card["label_names"])]


def write_report(root: Path, path: Path) -> None:
    """BENCHMARKS.md: every dataset's Table 1 with CIs, provenance, limits and the published numbers beside."""
    groups: dict[str, list[checkpoints.Checkpoint]] = {}
    for c in checkpoints.find(root):
        groups.setdefault(c.dataset, []).append(c)
    out = ["# Benchmarks", "",
           "Generated by `python train/run_all.py` from the model cards in `checkpoints/`; do not edit by hand.",
           "Every number in the tables of our models comes from this project's runs (stored predictions and cards);",
           "published numbers are in their own, labelled tables. AUC is MedMNIST's getAUC (mean per-label ROC AUC),",
           "with a 95 % bootstrap CI over test images; sensitivity/specificity are label means at 0.5.", ""]
    for name, cks in groups.items():
        first = cks[0].card
        d = first["dataset"]
        out += [f"## {name} ({d['size']} px): {d['task']}", "",
                f"Images train/val/test: {d['counts']['train']}/{d['counts']['val']}/{d['counts']['test']} "
                f"(split by patient for the NIH data). Source file MD5 `{d['source_md5']}`, split checksum "
                f"`{d['split_checksum'][:16]}`. Hardware: {first.get('hardware', 'n/a')}. Epochs were chosen on "
                "validation AUC; the test split was touched once per run.", "",
                "### Table 1", "", markdown(table1(cks), TABLE1_COLUMNS), ""]
        comparison = baseline_comparison(cks)
        if comparison:
            out += ["### Against the MedMNIST-recipe peer baseline (paired bootstrap on the test split)", "",
                    markdown(comparison), ""]
        shipped = [c for c in cks if c.has_weights or c.id == "ensemble"]
        if shipped and first["task"].startswith("multi-label"):
            out += ["### Per-label test AUC (models with shipped weights)", "", markdown(per_label_auc_table(shipped)), ""]
        out += ["### Data and its limits", "", *limits_text(first), "", markdown(prevalence_table(first)), ""]
        out += ["### Reproduce", "", "Commands (each card's `rebuild_command`) and wall time on this machine:", ""]
        out += [f"- `{c.card.get('rebuild_command')}`: {c.id}, {c.card['train_seconds'] / 60:.1f} min training"
                for c in cks if c.id != "ensemble"]
        out.append("")
        out += published.report_section(name, first)
    path.write_text("\n".join(out) + "\n")
