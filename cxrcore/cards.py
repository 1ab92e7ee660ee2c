"""Readable model cards: a card's JSON as the sections, hyperparameters and limits a clinician reads on the Models
page, and the one-line description of the training data every page header and PDF report repeats."""
from __future__ import annotations

from . import datasets, metrics
from .calibration import CalibrationCheck
from .card import Card
from .checkpoints import Checkpoint
from .report import ENSEMBLE

# The registry's titles and provenance texts by dataset name (cards of unregistered datasets show their name)
TASKS = {e.name: e.title for e in datasets.entries()}
DATA_SOURCES = {e.name: e.provenance for e in datasets.entries()}


def training_data(card: Card) -> str:
    """One line: which images, at what size, how many per split."""
    d = card.dataset
    split = " / ".join(f"{d.counts[s]:,} {s}" for s in ("train", "val", "test") if s in d.counts)
    return f"{TASKS.get(d.name, d.name)}, {d.size} px, {split or 'unknown numbers of'} images"


def _fmt(value: object, digits: int = 3) -> str:
    """A card value as text: "n/a" where the card has none, so a missing field reads as missing, not as blank."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


CALIBRATION_VERDICTS = {"held": "within", "missed": "above", "unsettled": "not settled against"}


def calibration_text(ece: float | None, check: CalibrationCheck | None, short: bool = False) -> str:
    """The served probabilities' test ECE in words: with its CI and where that lies against the target when
    ``check`` is given, else the card's figure alone; ``short`` for a table cell."""
    if check is None:
        return _fmt(ece)
    from_target = CALIBRATION_VERDICTS[check.verdict]
    if short:
        return f"{check.ece:.3f} ({check.lo:.3f}-{check.hi:.3f}), {from_target} {check.target:g}"
    return (f"{check.ece:.3f} ({check.lo:.3f}-{check.hi:.3f}): {from_target} the {check.target:g} target"
            + (": read its scores as rankings, not observed rates" if check.verdict == "missed" else ""))


def card_sections(ck: Checkpoint, calibration: CalibrationCheck | None = None) -> dict[str, list[tuple[str, str]]]:
    """A card as titled (field, value) lists a clinician can read, in the order they are asked about;
    ``calibration``: the served probabilities' test ECE with its CI (:func:`benchmarks.calibration_on_test`)."""
    c = ck.card
    test = c.metrics.test
    lo, hi = test.auc_macro_ci or (None, None)
    h_lo, h_hi = c.held_out_ci or (None, None)
    init = c.init
    norm = "n/a" if c.normalisation is None else f"mean {c.normalisation[0]:g}, std {c.normalisation[1]:g}"
    sections = {
        "Model": [("Architecture", c.arch), ("Family", c.family), ("Reference", c.reference or ""),
                  ("Parameters", f"{c.params_total:,} ({c.params_trainable:,} trainable)"),
                  ("Input", f"{c.input_size or 'n/a'} px, normalisation {norm}"),
                  ("Weights shipped", "yes" if ck.has_weights else "no")],
        "Training data": [("Data", training_data(c)), ("Source", DATA_SOURCES.get(c.dataset.name, "")),
                          ("Task", c.task), ("Labels", ", ".join(c.label_names))],
        "Initialisation": [("Kind", init.kind), ("Source", init.source), ("Weights SHA-256", _fmt(init.sha256))],
        "Results": [("Test AUC (95% CI)", f"{_fmt(test.auc_macro)} ({_fmt(lo)}-{_fmt(hi)})"),
                    (f"Held-out AUC ({held_out_split(c)}; 95% CI)",
                     f"{_fmt(c.held_out_auc)} ({_fmt(h_lo)}-{_fmt(h_hi)})"),
                    ("Test accuracy (0.5)", _fmt(test.acc)),
                    ("Test sensitivity / specificity (card thresholds)",
                     f"{_fmt(test.sensitivity_macro)} / {_fmt(test.specificity_macro)}"),
                    ("Test calibration error (ECE; 95% CI)" if calibration else "Test calibration error (ECE)",
                     calibration_text(test.ece, calibration))],
        "Training": [("Epochs (best)", f"{_fmt(c.epochs_run)} ({_fmt(c.best_epoch)})"),
                     ("Train time", f"{c.train_seconds / 60:.1f} min on {_fmt(c.hardware)}"),
                     ("Train / val loss", f"{_fmt(c.metrics.train_loss)} / {_fmt(c.metrics.val_loss)}")],
        "Provenance": [("Weights SHA-256", _fmt(c.weights_sha256)), ("Git commit", _fmt(c.git_commit)),
                       ("Created", _fmt(c.created)), ("Rebuild", c.rebuild), ("Card schema", str(c.schema_version))],
    }
    if c.members:
        how = c.extra.get("how_chosen", {}).get("members")
        sections["Model"].insert(0, ("Members", ", ".join(c.members) + (f" ({how})" if how else "")))
    if init.lora_base:
        base = init.lora_base
        sections["Initialisation"].insert(1, ("LoRA base", f"{base['id']} ({base.get('path') or base.get('source')}); "
                                                           "frozen, only the adapters and the head were trained"))
    return sections


def held_out_split(card: Card) -> str:
    """What the card's held-out figures were measured on, in words."""
    return "out-of-fold, every train + val image" if card.cross_validated else "validation"


def threshold_limit(card: Card) -> str:
    """How many labels the model makes calls for, and on what its thresholds rest."""
    th = next(iter(card.thresholds.values()), [])
    n = sum(t is not None for t in th)
    return (f"Calls are made for {n} of {len(card.label_names)} labels: thresholds were chosen on held-out "
            f"predictions ({held_out_split(card)}), only where a label has at least {metrics.MIN_POSITIVES} positives "
            "there and a held-out AUC whose 95% CI excludes 0.5. They are not tuned to any clinical population.")


def hparam_rows(card: Card) -> list[tuple[str, str]]:
    """Hyperparameters as (name, value), numbers in their shortest form."""
    return [(k, f"{v:g}" if isinstance(v, float) else _fmt(v)) for k, v in card.hparams.items()]


def card_limits(ck: Checkpoint) -> list[str]:
    """What a reader must keep in mind, derived from the card itself."""
    c, d = ck.card, ck.card.dataset
    n_train, n_test = (f"{d.counts[s]:,}" if s in d.counts else "an unknown number of" for s in ("train", "test"))
    out = [f"Trained on {n_train} images at {d.size} px, far below diagnostic resolution; "
           "small findings (nodules, thin pneumothorax) may be invisible to it.",
           f"Evaluated on {n_test} held-out images of the same source only; "
           "no external or prospective validation.",
           threshold_limit(c)]
    entry = datasets.find(d.name)
    out += list(entry.limits if entry else ())
    out += [f"Checkpoint note: {n}." for n in ck.notes]
    if why := c.not_converged:
        out.append(f"Did not converge: {why}. Its scores are not its architecture's result.")
    if not ck.has_weights and c.id != ENSEMBLE:
        out.append("Weights are not shipped: the card and stored predictions are shown, but it cannot read uploads.")
    return out
