"""The per-image comparison of models, as plain data: the image being read, each model's probabilities, the
operating thresholds, the ensemble column, Grad-CAM panels with NIH boxes, the out-of-distribution warning and the
PDF report's data.

The Streamlit pages only lay out what these functions return, so every call, threshold, disagreement flag and
summary a radiologist reads about an image is computed here, without Streamlit, and unit-tested. Readable model cards
are in :mod:`cxrcore.cards`, benchmark tables in :mod:`cxrcore.benchmarks`, published numbers in
:mod:`cxrcore.published`.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from . import explain, gate, metrics
from .calibration import CalibrationCheck
from .card import Card
from .cards import calibration_text, training_data
from .data import Box, Split
from .task import is_multilabel
from .imaging import DecodedImage, Limits, decode, to_dataset_size
from .inference import LoadedModel
from .ood import features, load_for, too_coarse
from .report import ENSEMBLE, CaseReport, ReportModel
from .runs import held_out_split, shared_oof, val_operating_points

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
    colour_saturation: float = 0.0  # of the file before its grey conversion (gate.file_saturation); 0: grey


def task_channels(cards: Iterable[Card]) -> int:
    """The channels a task's models read, from their cards (``dataset.channels``, what the network was built for):
    3 for colour tasks (blood-cell smears), 1 for films and when there is no card."""
    return next((c.dataset.channels for c in cards), 1)


def read_image(data: bytes, name: str, limits: Limits, channels: int) -> DecodedImage:
    """The one decode of the image being read, uploaded or picked from a test split: grey (H, W) for a task whose
    models read grey films, colour (H, W, 3) for one whose models read RGB, so a colour model never gets a grey
    conversion; raises imaging.ImageError with a readable message."""
    if channels not in (1, 3):
        raise ValueError(f"a task reads 1 (grey) or 3 (RGB) channels, not {channels}")
    return decode(data, name, limits, rgb=channels == 3)


def upload_case(data: bytes, name: str, limits: Limits, all_boxes: Mapping[str, list[Box]], channels: int) -> Case:
    """Decode an upload as the task's models read it (:func:`read_image`) and attach its NIH boxes, if any."""
    image = read_image(data, name, limits, channels)
    return Case(name, image, "upload", None, boxes_for(name, image.pixels.shape[:2], all_boxes),
                gate.file_saturation(data))


def test_split_case(split: Split, index: int, all_boxes: Mapping[str, list[Box]]) -> Case:
    """A test-split image (one memory-mapped row of :func:`cxrcore.datasets.load_split`) as a case, through the same
    decode path as an upload (:func:`read_image`, in the split's channels); its labels are known."""
    row = np.asarray(split.images[index])
    pixels = row.transpose(1, 2, 0) if split.channels == 3 else row[0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    name = split.names[index]
    shape = NIH_ORIGINAL_SHAPE if split.dataset.startswith("nih14") else pixels.shape[:2]
    return Case(name, read_image(buf.getvalue(), name, Limits(min_side=1), split.channels),
                f"{split.dataset} {split.name} split", split.truth(index), boxes_for(name, shape, all_boxes))


# ---- one image through the models -----------------------------------------------------------------------------------

def predict_image(m: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """One model's probabilities (one per output column) for a decoded image, preprocessed exactly as in training."""
    return m.predict(m.input_for(pixels))[0]


def display_square(pixels: np.ndarray, square: str = "crop", size: int = DISPLAY_SIZE) -> np.ndarray:
    """The square the models see (the task's square rule), at display size, for drawing CAMs and boxes on."""
    return to_dataset_size(pixels, size, square)


@dataclass(frozen=True)
class Comparison:
    """One image read by several models: probabilities and thresholds as labels x columns (models, then ensemble)."""

    probs: pd.DataFrame
    thresholds: pd.DataFrame  # NaN: no threshold, so no call (see :func:`metrics.operating_point`)
    members: list[str]  # the models averaged into the ensemble column
    points: Mapping[str, Sequence[metrics.OperatingPoint]] = field(default_factory=dict)  # the evidence per column

    @property
    def models(self) -> list[str]:
        return [c for c in self.probs.columns if c != ENSEMBLE]

    @cached_property
    def calls(self) -> pd.DataFrame:
        """Positive calls: probability at or above the active threshold (the rule of report.is_positive); a label
        without a threshold is never called. Computed once: the page reads it cell by cell."""
        return self.probs >= self.thresholds

    @cached_property
    def no_call(self) -> pd.DataFrame:
        """Cells without a threshold: the score is shown, no call is made."""
        return self.thresholds.isna()

    def label(self, column: str) -> str:
        """What a column is, in words: a model id, or the live mean of the chosen models."""
        return f"mean of {len(self.members)} selected" if column == ENSEMBLE else column

    def call_text(self, label: str, column: str) -> str:
        """A cell's probability, threshold and call in words, for CAM captions in the app and the PDF."""
        p, t = self.probs.at[label, column], self.thresholds.at[label, column]
        if np.isnan(t):
            return f"p={p:.2f}, no call (no threshold)"
        return f"p={p:.2f}, {'positive' if p >= t else 'negative'} at threshold {t:.3f}"

    def scores(self, comparable: bool = False) -> pd.DataFrame:
        """The calibrated probabilities, or (``comparable``) each column's score moved so its threshold sits at
        0.5 (:func:`metrics.op_norm`): the same value means the same call in every cell; NaN where no call."""
        if not comparable:
            return self.probs
        return pd.DataFrame(metrics.op_norm(self.probs.to_numpy(), self.thresholds.to_numpy()),
                            index=self.probs.index, columns=self.probs.columns)

    def agreement(self) -> pd.DataFrame:
        """Per label, how far the individual models disagree: SD and range of probabilities, and how calls split
        (models that make no call for a label count neither way)."""
        p, c, none = self.probs[self.models], self.calls[self.models], self.no_call[self.models]
        positive = c.sum(axis=1).astype(int)
        negative = (~c & ~none).sum(axis=1).astype(int)
        return pd.DataFrame({
            "sd": p.std(axis=1, ddof=0), "range": p.max(axis=1) - p.min(axis=1),
            "n_positive": positive, "n_negative": negative, "n_no_call": none.sum(axis=1).astype(int),
            "split": (positive > 0) & (negative > 0),
        })

    def positive_calls(self) -> pd.DataFrame:
        """Every positive call with the evidence behind its threshold on the held-out split it was chosen on:
        sensitivity, specificity, PPV, the positives they rest on and the label's AUC interval there."""
        rows = []
        for col in self.probs.columns:
            for j in np.flatnonzero(self.calls[col].to_numpy()):
                name, pt = self.probs.index[j], self.points.get(col, [None] * len(self.probs))[j]
                ci = getattr(pt, "auc_ci", None)
                rows.append({"column": self.label(col), "label": name, "probability": self.probs.at[name, col],
                             "threshold": self.thresholds.at[name, col],
                             **{k: getattr(pt, k, None) for k in ("sensitivity", "specificity", "ppv", "positives")},
                             "auc_ci": None if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"})
        return pd.DataFrame(rows, columns=["column", "label", "probability", "threshold", "sensitivity",
                                           "specificity", "ppv", "positives", "auc_ci"])

    def not_estimable(self) -> dict[str, str]:
        """Per label without a call from some column, one short line: each reason once, with the columns it holds
        for ("too few positives (n=1): all 10 models and the mean"), so ten models never repeat one reason ten times."""
        out = {}
        for j, name in enumerate(self.probs.index):
            by_reason: dict[str, list[str]] = {}
            for col, pts in self.points.items():
                if pts[j].threshold is None:
                    by_reason.setdefault(pts[j].reason, []).append(col)
            if by_reason:
                out[name] = "; ".join(f"{reason}: {self._columns_in_words(cols)}" for reason, cols in by_reason.items())
        return out

    def _columns_in_words(self, cols: list[str]) -> str:
        models = [c for c in cols if c != ENSEMBLE]
        every = len(models) == len(self.models) and len(models) > 1
        named = f"all {len(models)} models" if every else ", ".join(models)
        return " and ".join(filter(None, [named, "the mean" if ENSEMBLE in cols else ""]))

    def flat(self) -> pd.DataFrame:
        """One row per label for the CSV download: each column's probability, threshold and call, then agreement."""
        parts = {}
        for col in self.probs.columns:
            parts[f"{col}_prob"] = self.probs[col]
            parts[f"{col}_threshold"] = self.thresholds[col]
            parts[f"{col}_call"] = np.where(self.no_call[col], "no call",
                                            np.where(self.calls[col], "positive", "negative"))
        out = pd.concat([pd.DataFrame(parts), self.agreement()], axis=1)
        out.index.name = "label"
        return out.reset_index()


def compare(probs: Mapping[str, Sequence[float]], thresholds: Mapping[str, Sequence[float]],
            label_names: Sequence[str], ensemble_members: Sequence[str] = (),
            points: Mapping[str, Sequence[metrics.OperatingPoint]] | None = None) -> Comparison:
    """Build the comparison; with members, an ensemble column is the mean of their calibrated probabilities, called
    at ``thresholds[ENSEMBLE]`` (see :func:`ensemble_points`); ``points``: the evidence behind each threshold."""
    n = len(label_names)
    cols = [c for c in probs if c != ENSEMBLE]
    for col in cols:
        for name, table in (("probs", probs), ("thresholds", thresholds)):
            if col not in table or len(table[col]) != n:
                raise ValueError(f"{name}[{col!r}] must hold {n} values, one per label")
    p = pd.DataFrame({c: np.asarray(probs[c], dtype=float) for c in cols}, index=list(label_names))
    t = pd.DataFrame({c: np.asarray(thresholds[c], dtype=float) for c in cols}, index=list(label_names))
    members = [c for c in ensemble_members if c in cols]
    if members:
        if ENSEMBLE not in thresholds or len(thresholds[ENSEMBLE]) != n:
            raise ValueError(f"an ensemble column needs thresholds[{ENSEMBLE!r}] with {n} values")
        p[ENSEMBLE] = p[members].mean(axis=1)
        t[ENSEMBLE] = np.asarray(thresholds[ENSEMBLE], dtype=float)
    return Comparison(p, t, members, dict(points or {}))


def top_label(probs: Sequence[float], label_names: Sequence[str]) -> str:
    """The label a model rates most likely: what the PDF's Grad-CAM panel of that model explains."""
    return label_names[int(np.nanargmax(np.asarray(probs, dtype=float)))]


def predicted_classes(comp: Comparison) -> dict[str, str]:
    """Each column's predicted class on a multi-class task: the class of highest probability, as the card's
    accuracy and confusion matrix count it (its probabilities sum to 1)."""
    return {c: top_label(comp.probs[c], list(comp.probs.index)) for c in comp.probs.columns}


def predicted_by(comp: Comparison) -> list[str]:
    """Per class, the models (and the live mean, by its label) whose predicted class it is, for the Compare table."""
    predicted = predicted_classes(comp)
    return [", ".join(comp.label(c) for c, k in predicted.items() if k == label) for label in comp.probs.index]


# ---- operating thresholds -------------------------------------------------------------------------------------------

PRESETS = ("0.5", "Youden J", "Sensitivity ≥ 0.90", "Specificity ≥ 0.90", "Card (held-out Youden J)")
_PRESET_RULES = {"0.5": (metrics.FIXED, DEFAULT_THRESHOLD), "Youden J": (metrics.YOUDEN, None),
                 "Sensitivity ≥ 0.90": (metrics.SENSITIVITY, 0.9), "Specificity ≥ 0.90": (metrics.SPECIFICITY, 0.9)}


def card_points(card: Card) -> list[metrics.OperatingPoint]:
    """The validation-chosen operating points stored in a card, with their evidence; a card written before they
    were stored makes no calls until ``train/calibrate.py`` has run on it."""
    stored = (card.extra.get("operating_points") or {}).get("youden_val")
    if not stored:
        return [metrics.OperatingPoint(metrics.YOUDEN, None, None, 0, 0, reached=False,
                                       reason="no operating point in the card (run train/calibrate.py)")
                for _ in card.label_names]
    return [metrics.OperatingPoint.from_dict(p) for p in stored]


def points_in_force(default: Sequence[metrics.OperatingPoint], label_names: Sequence[str], y_val: np.ndarray,
                    p_val: np.ndarray, overrides: Mapping[str, float] | None = None) -> list[metrics.OperatingPoint]:
    """The operating points in force: ``default`` per label, replaced where the user set a threshold (by label name;
    NaN: no call), used as set, with its held-out evidence (``y_val``/``p_val``: one column per label)."""
    out = list(default)
    for j, name in enumerate(label_names):
        if overrides and name in overrides:
            value = float(overrides[name])
            out[j] = (metrics.point_at(y_val[:, j], p_val[:, j], value) if np.isfinite(value)
                      else replace(out[j], threshold=None, reason="a preset without a threshold here was applied"))
    return out


def preset_points(y_true: np.ndarray, y_score: np.ndarray, card_point: metrics.OperatingPoint,
                  groups: np.ndarray | None = None) -> dict[str, metrics.OperatingPoint]:
    """Every preset for one label, chosen on the given (labels, scores) of one split (``groups``: its images'
    patients, where known), each with the positives it rests on and, where it has none, why (too few positives, a
    score that does not separate, a target that cannot be reached, a refused value)."""
    return {**{name: metrics.operating_point(y_true, y_score, rule, target, groups=groups)
               for name, (rule, target) in _PRESET_RULES.items()}, "Card (held-out Youden J)": card_point}


def threshold_source(overrides: Mapping[str, Mapping[str, float]]) -> str:
    """Where the thresholds of a report came from, in one line: the cards, plus any the user changed."""
    changed = [f"{model} {label}={'no call' if np.isnan(value) else f'{value:.3f}'}"
               for model, per in overrides.items() for label, value in per.items()]
    base = (f"held-out Youden J per label (model cards), none where fewer than {metrics.MIN_POSITIVES} held-out "
            "positives or where the label's held-out AUC interval includes 0.5")
    return f"{base}; set by the user: {', '.join(changed)}" if changed else base


def expected_false_calls(y_val: np.ndarray, p_val: np.ndarray, thresholds: Sequence[float], task: str) -> float:
    """Expected false calls per normal film at these thresholds, measured on held-out films without a finding
    (multi-label), or per film of any kind (single-label tasks, where every film has a class)."""
    return metrics.false_calls_per_film(y_val, p_val, np.asarray(thresholds, dtype=float), is_multilabel(task))


# ---- the ensemble column -------------------------------------------------------------------------------------------

def ensemble_predictions(preds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stored predictions of the ensemble of members evaluated on the same images: the mean of their stored
    (calibrated) probabilities, out of fold too where every member was cross-validated on the same folds."""
    if not preds:
        raise ValueError("an ensemble needs at least one member")
    out = {}
    for split in ("val", "test", "oof") if shared_oof(preds) else ("val", "test"):
        labels = preds[0][f"{split}_labels"]
        if any(p[f"{split}_labels"].shape != labels.shape or not np.array_equal(p[f"{split}_labels"], labels)
               for p in preds):
            raise ValueError(f"the members were evaluated on different {split} images; they cannot be averaged")
        out[f"{split}_labels"] = labels
        out[f"{split}_probs"] = np.mean([p[f"{split}_probs"] for p in preds], axis=0)
        groups = [p.get(f"{split}_groups") for p in preds]
        if all(g is not None and np.array_equal(g, groups[0]) for g in groups):
            out[f"{split}_groups"] = np.asarray(groups[0])  # the members' patient codes, where they agree
    return out


def ensemble_points(ensemble_preds: Mapping[str, np.ndarray], task: str) -> list[metrics.OperatingPoint]:
    """Operating points of the ensemble column: Youden J per label on the mean of the members' stored calibrated
    held-out probabilities (out of fold where they share folds, else validation), by the same rule (and evidence)
    that chose each member's, so no test image influences a call."""
    split = held_out_split(ensemble_preds)
    return val_operating_points(ensemble_preds[f"{split}_labels"], ensemble_preds[f"{split}_probs"], task,
                                ensemble_preds.get(f"{split}_groups"))


# ---- Grad-CAM and NIH boxes -----------------------------------------------------------------------------------------

def boxes_for(filename: str, image_shape: tuple[int, int], all_boxes: Mapping[str, list[Box]]) -> list[Box]:
    """The NIH boxes of an image named like an NIH file (in pixels of ``image_shape``), on the centre square as
    fractions of its side, with box labels spelt as the model labels."""
    return [box_on_square(Box(_NIH_BOX_LABELS.get(b.label, b.label), b.x, b.y, b.w, b.h), image_shape, 1)
            for b in all_boxes.get(os.path.basename(filename), [])]


def box_on_square(box: Box, image_shape: tuple[int, int], size: float) -> Box:
    """A box in original pixels, moved onto the centre square the models see, scaled to a side of ``size``."""
    h, w = image_shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    s = size / side
    return Box(box.label, (box.x - left) * s, (box.y - top) * s, box.w * s, box.h * s)


def cam_panel(square: np.ndarray, cam: explain.CamResult, alpha: float = explain.DEFAULT_ALPHA,
              boxes: Sequence[Box] = (), top: float | None = None) -> np.ndarray:
    """A CAM over the display square with its colour bar and the boxes (fractions of the square) outlined in green.
    A map with no localisation is never drawn: the plain film with "no localisation" across it, and no scale."""
    side = square.shape[0]
    plain = square if square.ndim == 3 else np.repeat(square[..., None], 3, -1)
    film = explain.overlay(square, cam.map, alpha, top) if cam.informative else plain
    rgb = Image.fromarray(film)
    draw = ImageDraw.Draw(rgb, "RGBA")
    for b in (box_on_square(b, (1, 1), side) for b in boxes):  # fractions are pixels of a 1 x 1 image
        draw.rectangle([b.x, b.y, b.x + b.w, b.y + b.h], outline=(0, 255, 0), width=max(2, side // 160))
    font = ImageFont.load_default(size=max(9, side // 24))
    if not cam.informative:
        draw.rectangle([0, side * 0.43, side, side * 0.57], fill=(0, 0, 0, 170))
        draw.text((side / 2, side / 2), "no localisation", fill=(255, 255, 255), font=font, anchor="mm")
    return np.concatenate([np.asarray(rgb), _scale(side, cam, top, font)], axis=1)


def _scale(side: int, cam: explain.CamResult, top: float | None, font: ImageFont.FreeTypeFont) -> np.ndarray:
    """The colour bar beside a panel: jet from the map's low (bottom) to its peak (top), grey under the top-x % cut
    when one is set; a blank strip for a map with no localisation."""
    width, bar = max(36, side // 7), max(8, side // 24)
    strip = Image.new("RGB", (width, side), (0, 0, 0))
    if cam.informative:
        values = np.linspace(1, 0, side, dtype=np.float32)[:, None].repeat(bar, 1)
        cut = explain.top_cut(cam.map, top) if top else 0.0
        colours = np.where((values >= cut)[..., None], explain.jet(values), 90).astype(np.uint8)
        strip.paste(Image.fromarray(colours), (2, 0))
        draw = ImageDraw.Draw(strip)
        draw.text((bar + 5, 1), "high", fill=(255, 255, 255), font=font, anchor="la")
        draw.text((bar + 5, side - 1), "low", fill=(255, 255, 255), font=font, anchor="ld")
    return np.asarray(strip)


def peak_hits(cam: explain.CamResult, boxes: Sequence[Box]) -> dict[str, bool]:
    """Per box label (boxes as fractions of the square): does the CAM's peak fall inside a box of that label?
    A map with no localisation points nowhere, so it is judged against no box ({})."""
    out: dict[str, bool] = {}
    if not cam.informative:
        return out
    for b in boxes:
        out[b.label] = out.get(b.label, False) or explain.peak_in_box(cam.map, b, (1, 1))
    return out


def cam_caption(title: str, cam: explain.CamResult, boxes: Sequence[Box] = ()) -> str:
    """A panel's caption, the same in the app and the PDF: what it shows, the map's layer and native grid (or why
    there is no localisation), and whether its peak falls in each NIH box."""
    if cam.informative:
        verdict = "".join(f" · peak {'inside' if inside else 'outside'} the {label} box"
                          for label, inside in peak_hits(cam, boxes).items())
    else:
        labels = dict.fromkeys(b.label for b in boxes)
        verdict = "".join(f" · no peak to compare with the {label} box" for label in labels)
    return f"{title} · {cam.summary}{verdict}"

# ---- out-of-distribution warning ------------------------------------------------------------------------------------

def ood_warning(models: Iterable[LoadedModel], pixels: np.ndarray, saturation: float = 0.0,
                chest_gate: gate.Gate | None = None) -> str | None:
    """A warning naming every check the image fails, None when it passes them all.

    On chest X-ray tasks the chest-film gate (``chest_gate``, default the shipped one) checks colour, orientation,
    inversion, "is it a chest film at all" and the population (adult / paediatric) of the task; an image coarser than
    the first model's input is reported; then the first model with a usable ``ood.json`` checks the distance from its
    training films. A detector that cannot be read or is
    refused is logged and skipped: the warning is advisory and must not stop the comparison."""
    models = iter(models)  # consumed lazily: a caller that loads models on demand loads only those looked at
    first = next(models, None)
    fired: list[str] = []
    pop = gate.population(first.card.dataset.name) if first else None
    chest_gate = chest_gate or (gate.shipped() if pop else None)
    if pop and chest_gate is not None:
        fired += [f"{f.check}: {f.detail}" for f in chest_gate.check(pixels, pop, saturation)]
    if first is not None and (coarse := too_coarse(pixels.shape, first.data_size)):
        fired.append(f"resolution: {coarse}")
    for m in itertools.chain([first] if first else [], models):
        try:
            detector = load_for(m)
            if detector is None:
                continue
            score = float(detector.score(features(m, m.input_for(pixels)))[0])
        except (ValueError, TypeError, OSError) as exc:
            log.warning("skipping %s's out-of-distribution detector: %s", m.id, exc)
            continue
        if score > detector.threshold:
            fired.append(f"unlike the training films: {m.id}'s feature distance {score:.1f} > {detector.threshold:.1f}")
        break
    if not fired:
        return None
    return ("This image may not be a frontal chest X-ray like the ones these models were trained on. Checks that "
            f"fired: {'; '.join(fired)}. Read the results with caution.")


# ---- the PDF case report --------------------------------------------------------------------------------------------

def report_model(card: Card, calibration: CalibrationCheck | None = None) -> ReportModel:
    """Provenance of one model for the report, with its test calibration where ``calibration`` is given."""
    return ReportModel(card.id, card.arch, f"{card.init.kind}: {card.init.source}".strip(": "),
                       training_data(card), card.metrics.test.auc_macro, card.weights_sha256,
                       calibration_text(card.metrics.test.ece, calibration, short=True))


def case_report(comparison: Comparison, image: np.ndarray, filename: str, cards: Sequence[Card], source: str,
                cams: Sequence[tuple[str, np.ndarray]] = (), ood: str | None = None, created: str = "",
                user_set: Mapping[str, Iterable[str]] | None = None,
                calibration: Mapping[str, CalibrationCheck] | None = None) -> CaseReport:
    """The comparison as the report's plain data: model ids as columns, then the live mean, headed as the page heads
    it ("mean of N selected"); a label without a threshold prints no call; ``user_set``: per column (model id or
    ENSEMBLE), the labels whose threshold the user set; ``calibration``: each model's test calibration, by id."""
    cols = list(comparison.probs.columns)
    marked = {comparison.label(c): list(labels) for c, labels in (user_set or {}).items() if c in cols and labels}
    return CaseReport(
        image=image, filename=filename, label_names=list(comparison.probs.index),
        model_ids=[comparison.label(c) for c in cols],
        probs={comparison.label(c): comparison.probs[c].tolist() for c in cols},
        thresholds={comparison.label(c): comparison.thresholds[c].tolist() for c in cols},
        threshold_source=source, models=[report_model(c, (calibration or {}).get(c.id)) for c in cards], cams=list(cams), ood_warning=ood,
        created=created, user_set=marked,
    )
