"""What the app shows, as plain data: one image read by several models, operating thresholds, readable cards and the
tables and series behind the benchmark charts.

The Streamlit pages only lay out what these functions return, so every call, threshold, disagreement flag and
summary a radiologist reads in the app is computed here, without Streamlit, and unit-tested.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from . import explain, metrics, published
from .checkpoints import Checkpoint
from .data import Box, Dataset
from .imaging import DecodedImage, Limits, decode, to_dataset_size, to_model_batch
from .inference import LoadedModel
from .ood import features, load_for
from .report import ENSEMBLE, CaseReport, ReportModel
from .runs import label_columns, val_thresholds

TASKS = {"nih14-local": "NIH ChestX-ray14 (14 findings)", "pneumoniamnist-local": "PneumoniaMNIST (normal / pneumonia)"}
DATA_SOURCES = {
    "nih14-local": "NIH ChestX-ray14 frontal radiographs (adults, NIH Clinical Center), a patient-split local subset; "
                   "labels text-mined from reports",
    "pneumoniamnist-local": "PneumoniaMNIST: paediatric frontal radiographs (ages 1-5, Guangzhou), MedMNIST split",
}
DEFAULT_THRESHOLD = 0.5
DISPLAY_SIZE = 320  # px of the square the app draws images and CAMs at
NIH_ORIGINAL_SHAPE = (1024, 1024)  # every ChestX-ray14 PNG is 1024 x 1024; NIH boxes are in these pixels
_NIH_BOX_LABELS = {"Infiltrate": "Infiltration"}  # BBox_List_2017 names one finding differently from the labels
log = logging.getLogger(__name__)


# ---- the image being read ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """The image being read, decoded, with what is known about it."""

    name: str
    image: DecodedImage
    source: str  # "upload" or "<dataset> test split"
    truth: list[str] | None = None  # the dataset's positive labels, known only for test-split images
    boxes: list[Box] = field(default_factory=list)  # NIH boxes on the models' centre square, as fractions of its side


def upload_case(data: bytes, name: str, limits: Limits, all_boxes: Mapping[str, list[Box]]) -> Case:
    """Decode an upload (raises imaging.ImageError with a readable message) and attach its NIH boxes, if any."""
    image = decode(data, name, limits)
    boxes = [box_on_square(b, image.pixels.shape, 1) for b in boxes_for(name, all_boxes)]
    return Case(name, image, "upload", None, boxes)


def test_image_names(ds: Dataset) -> list[str]:
    """How each test-split image is listed: its NIH file name, or the dataset and index."""
    names = ds.extras.get("names", {}).get("test")
    if names is not None:
        return [str(n) for n in names]
    return [f"{ds.name} test #{i}" for i in range(len(ds.labels["test"]))]


def test_split_case(ds: Dataset, index: int, all_boxes: Mapping[str, list[Box]]) -> Case:
    """A test-split image as a case, through the same decode path as an upload; its labels are known."""
    pixels = ds.images["test"][index, 0].numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    name = test_image_names(ds)[index]
    y = ds.labels["test"][index]
    truth = ([n for n, v in zip(ds.label_names, y) if v > 0.5] if ds.task.startswith("multi-label")
             else [ds.label_names[int(y[0])]])
    shape = NIH_ORIGINAL_SHAPE if ds.name.startswith("nih14") else pixels.shape
    boxes = [box_on_square(b, shape, 1) for b in boxes_for(name, all_boxes)]
    return Case(name, decode(buf.getvalue(), name, Limits(min_side=1)), f"{ds.name} test split", truth, boxes)


# ---- one image through the models -----------------------------------------------------------------------------------

def model_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A decoded upload as a training image: the dataset's centre-square resize, then the (1, 1, S, S) uint8 batch."""
    return to_model_batch(to_dataset_size(pixels, size))


def predict_image(m: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """One model's probabilities (one per output column) for a decoded image, preprocessed exactly as in training."""
    return m.predict(model_input(pixels, m.data_size))[0]


def display_square(pixels: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The square the models see (centre crop), at display size, for drawing CAMs and boxes on."""
    return to_dataset_size(pixels, size)


@dataclass(frozen=True)
class Comparison:
    """One image read by several models: probabilities and thresholds as labels x columns (models, then ensemble)."""

    probs: pd.DataFrame
    thresholds: pd.DataFrame
    members: list[str]  # the models averaged into the ensemble column

    @property
    def models(self) -> list[str]:
        return [c for c in self.probs.columns if c != ENSEMBLE]

    @property
    def calls(self) -> pd.DataFrame:
        """Positive calls: probability at or above the active threshold (the rule of report.is_positive)."""
        return self.probs >= self.thresholds

    def agreement(self) -> pd.DataFrame:
        """Per label, how far the individual models disagree: SD and range of probabilities, and how calls split."""
        p, c = self.probs[self.models], self.calls[self.models]
        positive = c.sum(axis=1).astype(int)
        return pd.DataFrame({
            "sd": p.std(axis=1, ddof=0), "range": p.max(axis=1) - p.min(axis=1),
            "n_positive": positive, "n_negative": len(self.models) - positive,
            "split": (positive > 0) & (positive < len(self.models)),
        })

    def flat(self) -> pd.DataFrame:
        """One row per label for the CSV download: each column's probability, threshold and call, then agreement."""
        parts = {}
        for col in self.probs.columns:
            parts[f"{col}_prob"] = self.probs[col]
            parts[f"{col}_threshold"] = self.thresholds[col]
            parts[f"{col}_call"] = self.calls[col].map({True: "positive", False: "negative"})
        out = pd.concat([pd.DataFrame(parts), self.agreement()], axis=1)
        out.index.name = "label"
        return out.reset_index()


def compare(probs: Mapping[str, Sequence[float]], thresholds: Mapping[str, Sequence[float]],
            label_names: Sequence[str], ensemble_members: Sequence[str] = ()) -> Comparison:
    """Build the comparison; with members, an ensemble column is their mean probability, called at
    ``thresholds[ENSEMBLE]`` (see :func:`ensemble_thresholds`)."""
    n = len(label_names)
    cols = [c for c in probs if c != ENSEMBLE]
    for col in cols:
        for field, table in (("probs", probs), ("thresholds", thresholds)):
            if col not in table or len(table[col]) != n:
                raise ValueError(f"{field}[{col!r}] must hold {n} values, one per label")
    p = pd.DataFrame({c: np.asarray(probs[c], dtype=float) for c in cols}, index=list(label_names))
    t = pd.DataFrame({c: np.asarray(thresholds[c], dtype=float) for c in cols}, index=list(label_names))
    members = [c for c in ensemble_members if c in cols]
    if members:
        if ENSEMBLE not in thresholds or len(thresholds[ENSEMBLE]) != n:
            raise ValueError(f"an ensemble column needs thresholds[{ENSEMBLE!r}] with {n} values")
        p[ENSEMBLE] = p[members].mean(axis=1)
        t[ENSEMBLE] = np.asarray(thresholds[ENSEMBLE], dtype=float)
    return Comparison(p, t, members)


def top_label(probs: Sequence[float], label_names: Sequence[str]) -> str:
    """The label a model rates most likely: what the PDF's Grad-CAM panel of that model explains."""
    return label_names[int(np.nanargmax(np.asarray(probs, dtype=float)))]


# ---- operating thresholds -------------------------------------------------------------------------------------------

PRESETS = ("0.5", "Youden J", "Sensitivity ≥ 0.90", "Specificity ≥ 0.90", "Card (validation Youden J)")


def card_thresholds(card: dict) -> np.ndarray:
    """The validation-chosen thresholds stored in a card (0.5 where a card has none)."""
    stored = card.get("thresholds", {}).get("youden_val")
    return np.asarray(stored if stored else [DEFAULT_THRESHOLD] * len(card["label_names"]), dtype=float)


def active_thresholds(default: Sequence[float], label_names: Sequence[str],
                      overrides: Mapping[str, float] | None = None) -> np.ndarray:
    """The thresholds in force: ``default`` per label, replaced where the user set one (by label name)."""
    out = np.asarray(default, dtype=float).copy()
    for j, name in enumerate(label_names):
        if overrides and name in overrides:
            out[j] = float(overrides[name])
    return out


def preset_thresholds(y_true: np.ndarray, y_score: np.ndarray, card_threshold: float) -> dict[str, float]:
    """Every preset for one label, chosen on the given (labels, scores) of one split."""
    return {
        "0.5": DEFAULT_THRESHOLD,
        "Youden J": metrics.threshold_youden(y_true, y_score),
        "Sensitivity ≥ 0.90": metrics.threshold_for_sensitivity(y_true, y_score, 0.9),
        "Specificity ≥ 0.90": metrics.threshold_for_specificity(y_true, y_score, 0.9),
        "Card (validation Youden J)": float(card_threshold),
    }


def threshold_source(overrides: Mapping[str, Mapping[str, float]]) -> str:
    """Where the thresholds of a report came from, in one line: the cards, plus any the user changed."""
    changed = [f"{model} {label}={value:.3f}" for model, per in overrides.items() for label, value in per.items()]
    base = "validation Youden J per label (model cards)"
    return f"{base}; set by the user: {', '.join(changed)}" if changed else base


# ---- stored predictions (ROC page, ensemble) -------------------------------------------------------------------------

def split_arrays(preds: Mapping[str, np.ndarray], split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels as one column per output, probabilities) of one stored split; binary tasks become one-vs-rest."""
    probs = np.asarray(preds[f"{split}_probs"])
    return label_columns(np.asarray(preds[f"{split}_labels"]), task, probs.shape[1]), probs


def ensemble_predictions(preds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stored predictions of the mean-probability ensemble of members evaluated on the same images."""
    if not preds:
        raise ValueError("an ensemble needs at least one member")
    out = {}
    for split in ("val", "test"):
        labels = preds[0][f"{split}_labels"]
        if any(p[f"{split}_labels"].shape != labels.shape or not np.array_equal(p[f"{split}_labels"], labels)
               for p in preds):
            raise ValueError(f"the members were evaluated on different {split} images; they cannot be averaged")
        out[f"{split}_labels"] = labels
        out[f"{split}_probs"] = np.mean([p[f"{split}_probs"] for p in preds], axis=0)
    return out


def ensemble_thresholds(ensemble_preds: Mapping[str, np.ndarray], task: str) -> np.ndarray:
    """Thresholds of the ensemble column: Youden J per label on the mean of the members' stored *validation*
    probabilities, the same rule that chose each member's card thresholds, so no test image influences a call."""
    return np.asarray(val_thresholds(ensemble_preds["val_labels"], ensemble_preds["val_probs"], task), dtype=float)


# ---- Grad-CAM and NIH boxes -----------------------------------------------------------------------------------------

def boxes_for(filename: str, all_boxes: Mapping[str, list[Box]]) -> list[Box]:
    """The NIH boxes of an image named like an NIH file, with box labels spelt as the model labels."""
    return [Box(_NIH_BOX_LABELS.get(b.label, b.label), b.x, b.y, b.w, b.h)
            for b in all_boxes.get(os.path.basename(filename), [])]


def box_on_square(box: Box, image_shape: tuple[int, int], size: float) -> Box:
    """A box in original pixels, moved onto the centre square the models see, scaled to a side of ``size``."""
    h, w = image_shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    s = size / side
    return Box(box.label, (box.x - left) * s, (box.y - top) * s, box.w * s, box.h * s)


def _scaled(box: Box, size: float) -> Box:
    return Box(box.label, box.x * size, box.y * size, box.w * size, box.h * size)


def cam_panel(square: np.ndarray, cam: np.ndarray, alpha: float, boxes: Sequence[Box] = ()) -> np.ndarray:
    """CAM blended over the display square, with boxes (fractions of the square) outlined in green."""
    rgb = Image.fromarray(explain.overlay(square, cam, alpha))
    draw = ImageDraw.Draw(rgb)
    side = square.shape[0]
    for b in (_scaled(b, side) for b in boxes):
        draw.rectangle([b.x, b.y, b.x + b.w, b.y + b.h], outline=(0, 255, 0), width=max(2, side // 160))
    return np.asarray(rgb)


def peak_hits(cam: np.ndarray, boxes: Sequence[Box]) -> dict[str, bool]:
    """Per box label (boxes as fractions of the square): does the CAM's peak fall inside a box of that label?"""
    out: dict[str, bool] = {}
    for b in boxes:
        out[b.label] = out.get(b.label, False) or explain.peak_in_box(cam, b, (1, 1))
    return out


# ---- out-of-distribution warning ------------------------------------------------------------------------------------

def ood_warning(models: Iterable[LoadedModel], pixels: np.ndarray) -> str | None:
    """A warning when the image does not look like the training X-rays, judged by the first model with a usable
    ``ood.json``; None when it looks fine or no model has a detector (a broken one is logged and skipped: the warning
    is advisory and must not stop the comparison)."""
    for m in models:
        try:
            detector = load_for(m)
            if detector is None:
                continue
            score = float(detector.score(features(m, model_input(pixels, m.data_size)))[0])
        except (ValueError, TypeError, OSError) as exc:
            log.warning("skipping %s's out-of-distribution detector: %s", m.id, exc)
            continue
        if score <= detector.threshold:
            return None
        return (f"This image does not look like the frontal chest X-rays the models were trained on (distance "
                f"{score:.1f} > {detector.threshold:.1f}, judged by {m.id}); read the probabilities with caution.")
    return None


# ---- the PDF case report --------------------------------------------------------------------------------------------

def report_model(card: dict) -> ReportModel:
    """Provenance of one model for the report."""
    init = card["init"]
    return ReportModel(card["id"], card.get("arch", ""), f"{init.get('kind')}: {init.get('source', '')}".strip(": "),
                       training_data(card), card["metrics"]["test"].get("auc_macro"), card.get("weights_sha256"))


def case_report(comparison: Comparison, image: np.ndarray, filename: str, cards: Sequence[dict], source: str,
                cams: Sequence[tuple[str, np.ndarray]] = (), ood: str | None = None, created: str = "") -> CaseReport:
    """The comparison as the report's plain data (model ids as columns, the ensemble last when present)."""
    cols = list(comparison.probs.columns)
    return CaseReport(
        image=image, filename=filename, label_names=list(comparison.probs.index), model_ids=comparison.models,
        probs={c: comparison.probs[c].tolist() for c in cols},
        thresholds={c: comparison.thresholds[c].tolist() for c in cols},
        threshold_source=source, models=[report_model(c) for c in cards], cams=list(cams), ood_warning=ood,
        created=created,
    )


# ---- model cards, readable ------------------------------------------------------------------------------------------

def training_data(card: dict) -> str:
    """One line: which images, at what size, how many per split."""
    d = card["dataset"]
    counts = d.get("counts", {})
    split = " / ".join(f"{counts[s]:,} {s}" for s in ("train", "val", "test") if s in counts)
    return f"{TASKS.get(d['name'], d['name'])}, {d.get('size', '?')} px, {split} images"


def _fmt(value: object, digits: int = 3) -> str:
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


def results_frame(card: dict) -> pd.DataFrame:
    """Per-label test metrics at the card's thresholds."""
    per = card["metrics"]["test"]["per_label"]
    cols = ["positives", "auc", "sensitivity", "specificity", "ppv", "npv", "f1", "threshold"]
    return pd.DataFrame([{c: v.get(c) for c in cols} for v in per.values()], index=list(per), dtype=float)


# ---- benchmark tables and series ------------------------------------------------------------------------------------

def per_label_matrix(cks: Sequence[Checkpoint], metric: str, split: str = "test") -> pd.DataFrame:
    """Models x labels of one per-label card metric (AUC, sensitivity, specificity), NaN where undefined."""
    rows = {ck.id: {k: v.get(metric) for k, v in ck.card["metrics"][split]["per_label"].items()} for ck in cks}
    return pd.DataFrame.from_dict(rows, orient="index").astype(float)


def history_frame(cks: Sequence[Checkpoint]) -> pd.DataFrame:
    """Every model's per-epoch history in long form (model, epoch, train_loss, val_loss, val_auc, ...)."""
    frames = [pd.DataFrame(h).assign(model=ck.id) for ck in cks if (h := ck.history())]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "epoch"])


def prevalence_frame(card: dict) -> pd.DataFrame:
    """Positives per label (or images per class) and split, with their share of the split."""
    d = card["dataset"]
    rows = [{"label": name, "split": split, "positives": int(n), "share": n / d["counts"][split]}
            for split, values in d.get("prevalence", {}).items() for name, n in zip(card["label_names"], values)]
    return pd.DataFrame(rows, columns=["label", "split", "positives", "share"])


def reliability_of(preds: Mapping[str, np.ndarray], task: str, n_bins: int = 10) -> dict:
    """Reliability bins and ECE of stored test predictions (all labels pooled, as in the cards)."""
    y, p = split_arrays(preds, "test", task)
    return metrics.reliability(y, p, n_bins)


@dataclass(frozen=True)
class PublishedTable:
    """Numbers from a paper, never reproduced here: the page shows them apart and says so."""

    title: str
    source: str
    frame: pd.DataFrame


def published_tables(dataset: str) -> list[PublishedTable]:
    """The published reference tables that concern a dataset's task."""
    rows = published.medmnist_rows(dataset)
    out = []
    if rows:
        out.append(PublishedTable(f"MedMNIST v2: {published.flag_for(dataset)}", published.SOURCES["medmnist_v2"],
                                  pd.DataFrame(rows).rename(columns={"auc": "AUC", "acc": "ACC"})))
    if published.flag_for(dataset) == "chestmnist":
        out.append(PublishedTable("CheXNet per-label AUC (DenseNet-121, full-resolution ChestX-ray14)",
                                  published.SOURCES["chexnet"],
                                  pd.DataFrame({"label": list(published.CHEXNET_AUC),
                                                "AUC": list(published.CHEXNET_AUC.values())})))
    return out
