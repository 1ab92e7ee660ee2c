"""Readable model cards: a card's JSON as the sections, hyperparameters and limits a clinician reads on the Models
page, and the one-line description of the training data every page header and PDF report repeats."""
from __future__ import annotations

from .checkpoints import Checkpoint
from .report import ENSEMBLE

TASKS = {"nih14-local": "NIH ChestX-ray14 (14 findings)", "pneumoniamnist-local": "PneumoniaMNIST (normal / pneumonia)"}
DATA_SOURCES = {
    "nih14-local": "NIH ChestX-ray14 frontal radiographs (adults, NIH Clinical Center), a patient-split local subset; "
                   "labels text-mined from reports",
    "pneumoniamnist-local": "PneumoniaMNIST: paediatric frontal radiographs (ages 1-5, Guangzhou), MedMNIST split",
}


def training_data(card: dict) -> str:
    """One line: which images, at what size, how many per split."""
    d = card["dataset"]
    counts = d.get("counts", {})
    split = " / ".join(f"{counts[s]:,} {s}" for s in ("train", "val", "test") if s in counts)
    return f"{TASKS.get(d['name'], d['name'])}, {d.get('size', '?')} px, {split} images"


def _fmt(value: object, digits: int = 3) -> str:
    """A card value as text: "n/a" where the card has none, so a missing field reads as missing, not as blank."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def card_sections(ck: Checkpoint) -> dict[str, list[tuple[str, str]]]:
    """A card as titled (field, value) lists a clinician can read, in the order they are asked about."""
    c = ck.card
    test, val = c["metrics"]["test"], c["metrics"]["val"]
    lo, hi = test.get("auc_macro_ci", (None, None))
    init = c["init"]
    sections = {
        "Model": [("Architecture", c.get("arch", "")), ("Family", c.get("family", "")),
                  ("Reference", c.get("reference", "")),
                  ("Parameters", f"{c.get('params_total', 0):,} ({c.get('params_trainable', 0):,} trainable)"),
                  ("Input", f"{c.get('input_size') or 'n/a'} px, normalisation {c.get('normalisation')}"),
                  ("Weights shipped", "yes" if ck.has_weights else "no")],
        "Training data": [("Data", training_data(c)), ("Source", DATA_SOURCES.get(c["dataset"]["name"], "")),
                          ("Task", c.get("task", "")), ("Labels", ", ".join(c.get("label_names", [])))],
        "Initialisation": [("Kind", init.get("kind", "")), ("Source", init.get("source", "")),
                           ("Weights SHA-256", _fmt(init.get("sha256")))],
        "Results": [("Test AUC (95% CI)", f"{_fmt(test['auc_macro'])} ({_fmt(lo)}-{_fmt(hi)})"),
                    ("Validation AUC", _fmt(val["auc_macro"])), ("Test accuracy (0.5)", _fmt(test["acc"])),
                    ("Test sensitivity / specificity (card thresholds)",
                     f"{_fmt(test['sensitivity_macro'])} / {_fmt(test['specificity_macro'])}"),
                    ("Test calibration error (ECE)", _fmt(test.get("ece")))],
        "Training": [("Epochs (best)", f"{c.get('epochs_run', 'n/a')} ({c.get('best_epoch', 'n/a')})"),
                     ("Train time", f"{c.get('train_seconds', 0) / 60:.1f} min on {c.get('hardware', 'n/a')}"),
                     ("Train / val loss", f"{_fmt(c['metrics'].get('train_loss'))} / "
                                          f"{_fmt(c['metrics'].get('val_loss'))}")],
        "Provenance": [("Weights SHA-256", _fmt(c.get("weights_sha256"))), ("Git commit", _fmt(c.get("git_commit"))),
                       ("Created", _fmt(c.get("created"))), ("Rebuild", _fmt(c.get("rebuild_command")))],
    }
    if c.get("members"):
        sections["Model"].insert(0, ("Members", ", ".join(c["members"])))
    if init.get("lora_base"):
        base = init["lora_base"]
        sections["Initialisation"].insert(1, ("LoRA base", f"{base['id']} ({base.get('path') or base['source']}); "
                                                           "frozen, only the adapters and the head were trained"))
    return sections


def hparam_rows(card: dict) -> list[tuple[str, str]]:
    """Hyperparameters as (name, value), numbers in their shortest form."""
    return [(k, f"{v:g}" if isinstance(v, float) else _fmt(v)) for k, v in card.get("hparams", {}).items()]


def card_limits(ck: Checkpoint) -> list[str]:
    """What a reader must keep in mind, derived from the card itself."""
    c, d = ck.card, ck.card["dataset"]
    out = [f"Trained on {d['counts']['train']:,} images at {d['size']} px, far below diagnostic resolution; "
           "small findings (nodules, thin pneumothorax) may be invisible to it.",
           f"Evaluated on {d['counts']['test']:,} held-out images of the same source only; "
           "no external or prospective validation.",
           "Thresholds were chosen on the validation split; they are not calibrated to any clinical population."]
    if d["name"].startswith("nih14"):
        out.append("NIH labels were text-mined from reports and are known to be noisy.")
    if d["name"].startswith("pneumoniamnist"):
        out.append("Children aged 1-5 only; not applicable to adult films.")
    if not ck.has_weights and c["id"] != ENSEMBLE:
        out.append("Weights are not shipped: the card and stored predictions are shown, but it cannot read uploads.")
    return out
