"""One-to-two page PDF case report for a single image, built in memory from plain data.

The report is what a radiologist can print or attach: the image as shown, every model's probability per label
with the positive calls marked, the operating thresholds and where they came from, the Grad-CAM panels and the
provenance of each model. It uses only fpdf2's core fonts, so every string is squeezed into latin-1 first.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from fpdf import FPDF
from PIL import Image

TITLE = "CXR Compare: case report"
NOTICE = "Research tool, not a medical device. Not for diagnosis or treatment decisions."
ENSEMBLE = "ensemble"
POSITIVE = "+"

_FONT = "Helvetica"
_MARGIN = 10.0  # mm, all sides
_FOOTER_H = 8.0  # mm reserved at the bottom for the footer
_IMAGE_W = 80.0  # mm, width of the image column on page 1
_GAP = 5.0  # mm between blocks
_CAM_COLS = 5
CAM_NOTE = ("Colour: where the map raises the label's score, relative to its own peak (the bar right of each panel: "
            "low at the bottom to the map's peak at the top; not a probability); the film shows through where the map "
            "is low. 'No localisation': the map was empty or constant and is not drawn. Each caption gives the "
            "model's probability, threshold and call for the label, the layer's native grid (a map is no finer than "
            "that) and whether the peak falls in an NIH box.")
_TABLE_PT = 7
_HEAD_PT = 6.5
_ROW_H = 3.0  # mm a line in the label table (a row holds the probability and its threshold)
_MAX_HEAD_H = 30.0  # mm: a longer model name is set smaller
_HEAD_FILL = (225, 225, 225)
_POSITIVE_FILL = (255, 214, 190)
USER_MARK = "*"
AUC_NOTE = ("Test AUC: how well the model ranks films on this project's test split, averaged over labels; the "
            "chance that a film with the finding scores above one without it. 0.5 is chance, 1.0 is perfect; it "
            "describes the model over many films, not this film. Test ECE: how far its calibrated probabilities "
            "were, on average, from the observed rates on that split (95 % CI); where the whole interval is above "
            "0.05, read its probabilities as rankings, not as rates.")
_ASCII_FALLBACKS = str.maketrans({
    "\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2026": "...", "\u2264": "<=", "\u2265": ">=", "\u2212": "-", "\u2192": "->",
})


@dataclass(frozen=True)
class ReportModel:
    """Provenance of one model in the comparison, so a printed report says what produced each column."""

    id: str
    arch: str
    init: str
    dataset: str
    test_auc: float | None
    weights_sha256: str | None
    test_ece: str = "n/a"  # the served probabilities' test ECE with its CI and verdict, in words


@dataclass(frozen=True)
class CaseReport:
    """Everything the report shows, as plain data; the caller decides what is identifying and when it was made."""

    image: np.ndarray
    filename: str
    label_names: list[str]
    model_ids: list[str]
    probs: dict[str, list[float]]
    thresholds: dict[str, list[float]]
    threshold_source: str
    models: list[ReportModel]
    cams: Sequence[tuple[str, np.ndarray]] = ()
    ood_warning: str | None = None
    created: str = ""
    user_set: Mapping[str, Sequence[str]] = field(default_factory=dict)  # column -> labels whose threshold the user set


def latin1(text: str) -> str:
    """Core PDF fonts only cover latin-1: map common typography to ASCII and replace the rest with '?'."""
    return text.translate(_ASCII_FALLBACKS).encode("latin-1", "replace").decode("latin-1")


def report_columns(report: CaseReport) -> list[str]:
    """Model columns in the caller's order, plus the ensemble when it has probabilities."""
    extra = [ENSEMBLE] if ENSEMBLE in report.probs and ENSEMBLE not in report.model_ids else []
    return [*report.model_ids, *extra]


def validate(report: CaseReport) -> None:
    """Fail early with a message naming the bad entry, rather than printing a misaligned table."""
    if not (report.image.ndim == 2 or (report.image.ndim == 3 and report.image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) colour, got shape {report.image.shape}")
    n = len(report.label_names)
    for name, table in (("probs", report.probs), ("thresholds", report.thresholds)):
        for col in report_columns(report):
            if col not in table:
                raise ValueError(f"{name} has no entry for model {col!r}")
            if len(table[col]) != n:
                raise ValueError(
                    f"{name}[{col!r}] has {len(table[col])} values, expected {n} (one per label)")
    for caption, overlay in report.cams:
        if overlay.ndim != 3 or overlay.shape[2] != 3:
            raise ValueError(f"CAM panel {caption!r} must be (H, W, 3) RGB, got shape {overlay.shape}")


def is_positive(prob: float, threshold: float) -> bool:
    """A positive call is a probability at or above the active operating threshold."""
    return math.isfinite(prob) and math.isfinite(threshold) and prob >= threshold


def _num(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "n/a"


def probability_cell(prob: float, threshold: float) -> str:
    """Probability to 2 decimals, with the positive-call marker so the call survives grayscale printing."""
    return f"{_num(prob)} {POSITIVE}" if is_positive(prob, threshold) else _num(prob)


def threshold_cell(threshold: float, user_set: bool = False) -> str:
    """The threshold under each probability: 3 decimals ('*': set by the user), or 'no call' without one."""
    return "no call" if not math.isfinite(threshold) else f"{threshold:.3f}{USER_MARK if user_set else ''}"


def probability_rows(report: CaseReport) -> list[list[str]]:
    """Header plus one row per label: label name, then one probability cell per model column."""
    cols = report_columns(report)
    return [["Label", *cols]] + [
        [label, *(probability_cell(report.probs[c][i], report.thresholds[c][i]) for c in cols)]
        for i, label in enumerate(report.label_names)
    ]


def threshold_rows(report: CaseReport) -> list[list[str]]:
    """Header plus one row per label of the thresholds that produced the calls ('*': set by the user)."""
    cols = report_columns(report)
    return [["Label", *cols]] + [
        [label, *(threshold_cell(report.thresholds[c][i], label in report.user_set.get(c, ())) for c in cols)]
        for i, label in enumerate(report.label_names)
    ]


def shared_training_data(models: Sequence[ReportModel]) -> str | None:
    """The training data when every model shares it (then it is said once, above the table), else None."""
    data = {m.dataset for m in models}
    return data.pop() if len(data) == 1 else None


def provenance_rows(models: Sequence[ReportModel]) -> list[list[str]]:
    """Header plus one row per model; the weights hash is cut to 12 hex, enough to tell checkpoints apart. The
    training data gets a column only when the models differ in it."""
    per_model = shared_training_data(models) is None
    head = ["Model", "Architecture", "Init", *(["Training data"] if per_model else []), "Test AUC",
            "Test ECE (95% CI)", "Weights SHA-256"]
    return [head] + [
        [m.id, m.arch, m.init, *([m.dataset] if per_model else []), _num(m.test_auc, 3), m.test_ece,
         (m.weights_sha256 or "n/a")[:12]] for m in models
    ]


def ood_verdict(warning: str | None) -> str:
    """The out-of-distribution verdict, stated whether or not a check fired."""
    return (f"Out-of-distribution warning: {warning}" if warning else
            "Out-of-distribution checks: passed (no check fired: the film looks like the models' training films).")


def _png(array: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    return buf


class _ReportPDF(FPDF):
    """Repeats the research-use notice and the page count on every page, so no page travels without it."""

    def footer(self) -> None:
        self.set_y(-_FOOTER_H)
        self.set_font(_FONT, "", 7)
        self.set_text_color(110)
        self.cell(0, 4, f"{TITLE}. {NOTICE}", align="L")
        self.cell(0, 4, f"Page {self.page_no()}/{{nb}}", align="R")
        self.set_text_color(0)


def _bottom(pdf: FPDF) -> float:
    return pdf.h - pdf.b_margin


def _ensure_room(pdf: FPDF, height: float) -> None:
    """A new page unless ``height`` mm fit below the cursor: blocks (tables, CAM rows) are never split."""
    if pdf.y + height > _bottom(pdf):
        pdf.add_page()


def _paragraph(pdf: FPDF, text: str, width: float, size: float = 8, style: str = "", line: float | None = None,
               x: float | None = None) -> None:
    """Left-aligned wrapped text (never justified, so no stretched gaps), inside ``width`` mm."""
    pdf.set_x(_MARGIN if x is None else x)
    pdf.set_font(_FONT, style, size)
    pdf.multi_cell(width, line or size * 0.45, latin1(text), align="L", new_x="LMARGIN", new_y="NEXT")


def _lines(pdf: FPDF, text: str, width: float, size: float) -> int:
    pdf.set_font(_FONT, "", size)
    return len(pdf.multi_cell(width, 1, latin1(text), align="L", dry_run=True, output="LINES"))


def _banner(pdf: FPDF, text: str, fill: tuple[int, int, int], color: tuple[int, int, int], size: int) -> None:
    pdf.set_font(_FONT, "B", size)
    pdf.set_fill_color(*fill)
    pdf.set_text_color(*color)
    pdf.multi_cell(0, size * 0.5, latin1(text), fill=True, padding=1.2, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.set_fill_color(255)
    pdf.ln(1.5)


def _header(pdf: FPDF, report: CaseReport) -> None:
    pdf.set_font(_FONT, "B", 16)
    pdf.cell(0, 8, TITLE, new_x="LMARGIN", new_y="NEXT")
    _banner(pdf, NOTICE, fill=(180, 0, 0), color=(255, 255, 255), size=11)
    _paragraph(pdf, f"Date: {report.created or 'not given'}    Image: {report.filename}", pdf.epw, 9)
    pdf.ln(1)
    if report.ood_warning:
        _banner(pdf, ood_verdict(report.ood_warning), fill=(255, 224, 130), color=(90, 50, 0), size=9)
    else:
        _banner(pdf, ood_verdict(None), fill=(222, 240, 222), color=(20, 80, 20), size=9)


def _fit_font(pdf: FPDF, text: str, width: float, size: float, style: str = "") -> None:
    """The largest font size up to ``size`` (down to 4.5 pt) at which ``text`` fits ``width`` on one line: a name
    is made smaller, never broken."""
    pdf.set_font(_FONT, style, size)
    while pdf.get_string_width(text) > width and size > 4.5:
        size -= 0.25
        pdf.set_font(_FONT, style, size)


def _cell(pdf: FPDF, x: float, y: float, w: float, h: float, text: str, size: float, style: str = "",
          align: str = "C", fill: tuple[int, int, int] | None = None, color: int = 0) -> None:
    """One table cell: an outlined box and one line of text, shrunk to fit, never wrapped."""
    if fill:
        pdf.set_fill_color(*fill)
    pdf.set_draw_color(170)
    pdf.rect(x, y, w, h, style="DF" if fill else "D")
    text = latin1(text)
    _fit_font(pdf, text, w - 1.2, size, style)
    pdf.set_text_color(color)
    pdf.set_xy(x + 0.6, y)
    pdf.cell(w - 1.2, h, text, align=align)
    pdf.set_text_color(0)
    pdf.set_fill_color(255)


def _vertical_heading(pdf: FPDF, x: float, bottom: float, w: float, h: float, text: str) -> None:
    """A column heading set bottom-to-top, so ten or more model names fit side by side, each whole."""
    pdf.set_fill_color(*_HEAD_FILL)
    pdf.set_draw_color(170)
    pdf.rect(x, bottom - h, w, h, style="DF")
    text = latin1(text)
    _fit_font(pdf, text, h - 1.5, _HEAD_PT, "B")
    base_x, base_y = x + w / 2 + pdf.font_size * 0.35, bottom - 0.8
    with pdf.rotation(90, base_x, base_y):
        pdf.text(base_x, base_y, text)
    pdf.set_fill_color(255)


def _heading_height(pdf: FPDF, names: Sequence[str]) -> float:
    pdf.set_font(_FONT, "B", _HEAD_PT)
    return min(_MAX_HEAD_H, max(pdf.get_string_width(latin1(n)) for n in names) + 2.5)


def _label_table(pdf: FPDF, report: CaseReport, x: float, width: float) -> None:
    """Per label and model: the calibrated probability ('+', bold and shaded: a positive call) with the threshold
    beneath it in grey; kept whole on one page."""
    cols = report_columns(report)
    pdf.set_font(_FONT, "B", _TABLE_PT)
    label_w = max(20.0, max(pdf.get_string_width(latin1(n)) for n in report.label_names) + 2.5)
    col_w = min(16.0, (width - label_w) / max(len(cols), 1))
    head_h = _heading_height(pdf, cols)
    row_h = 2 * _ROW_H
    _ensure_room(pdf, 6 + head_h + row_h * len(report.label_names))
    _paragraph(pdf, "Calibrated probability per label and model, its threshold beneath", width, 9, "B", x=x)
    top = pdf.y + head_h
    _cell(pdf, x, top - head_h, label_w, head_h, "", _TABLE_PT, fill=_HEAD_FILL)
    pdf.set_xy(x + 0.6, top - 4)
    pdf.set_font(_FONT, "B", _TABLE_PT)
    pdf.cell(label_w - 1.2, 4, "Label")
    for k, col in enumerate(cols):
        _vertical_heading(pdf, x + label_w + k * col_w, top, col_w, head_h, col)
    for i, label in enumerate(report.label_names):
        y = top + i * row_h
        _cell(pdf, x, y, label_w, row_h, label, _TABLE_PT, "B", align="L")
        for k, col in enumerate(cols):
            cx, p, t = x + label_w + k * col_w, report.probs[col][i], report.thresholds[col][i]
            positive = is_positive(p, t)
            pdf.set_fill_color(*(_POSITIVE_FILL if positive else (255, 255, 255)))
            pdf.set_draw_color(170)
            pdf.rect(cx, y, col_w, row_h, style="DF")
            _fit_font(pdf, probability_cell(p, t), col_w - 1, _TABLE_PT, "B" if positive else "")
            pdf.set_xy(cx + 0.5, y + 0.2)
            pdf.cell(col_w - 1, _ROW_H, probability_cell(p, t), align="C")
            text = threshold_cell(t, label in report.user_set.get(col, ()))
            _fit_font(pdf, text, col_w - 1, _TABLE_PT - 1.5)
            pdf.set_text_color(105)
            pdf.set_xy(cx + 0.5, y + _ROW_H - 0.3)
            pdf.cell(col_w - 1, _ROW_H, text, align="C")
            pdf.set_text_color(0)
    pdf.set_fill_color(255)
    pdf.set_xy(x, top + row_h * len(report.label_names) + 1)


def table_note(report: CaseReport) -> str:
    """How to read the label table, and where its thresholds came from."""
    users = sum(len(v) for v in report.user_set.values())
    return (f"'{POSITIVE}', bold and shaded: a positive call, the probability at or above the threshold printed beneath "
            f"it. 'no call': no threshold with enough held-out evidence, the score is shown only. Thresholds: "
            f"{report.threshold_source}."
            + (f" {USER_MARK} set by the user on the ROC page ({users} in force)." if users else ""))


def _image_block(pdf: FPDF, report: CaseReport, top: float) -> float:
    """The image as the user saw it, with its name and size and the table's key; returns the y where it ends."""
    w, h = _fit(report.image, _IMAGE_W, min(_IMAGE_W, _bottom(pdf) - top - 30))
    pdf.image(_png(report.image), x=_MARGIN, y=top, w=w, h=h)
    pdf.set_y(top + h + 1)
    rows, cols = report.image.shape[:2]
    _paragraph(pdf, f"{report.filename} ({cols} x {rows} px)", _IMAGE_W, 7)
    pdf.ln(1)
    _paragraph(pdf, table_note(report), _IMAGE_W, 7)
    return pdf.y


def _fit(array: np.ndarray, max_w: float, max_h: float) -> tuple[float, float]:
    """Largest (width, height) in mm inside the box that keeps the array's aspect ratio."""
    scale = min(max_w / array.shape[1], max_h / array.shape[0])
    return array.shape[1] * scale, array.shape[0] * scale


def _cam_grid(pdf: FPDF, cams: Sequence[tuple[str, np.ndarray]]) -> None:
    """CAM panels (each with its colour bar) in rows, captions in full underneath; a row is never split across
    pages, and the heading and note stay with the first row."""
    cell_w = (pdf.epw - (_CAM_COLS - 1) * _GAP) / _CAM_COLS
    note_h = _lines(pdf, CAM_NOTE, pdf.epw, 7) * 3.2 + 7
    for start in range(0, len(cams), _CAM_COLS):
        row = cams[start:start + _CAM_COLS]
        sizes = [_fit(overlay, cell_w, 48.0) for _, overlay in row]
        caption_h = max(_lines(pdf, caption, cell_w, 7) for caption, _ in row) * 3.1
        image_h = max(h for _, h in sizes)
        _ensure_room(pdf, image_h + caption_h + 3 + (note_h if start == 0 else 0))
        if start == 0:
            _paragraph(pdf, "Class activation maps (Grad-CAM) of each model's most likely label", pdf.epw, 9, "B")
            _paragraph(pdf, CAM_NOTE, pdf.epw, 7, line=3.2)
            pdf.ln(1)
        top = pdf.y
        for k, ((caption, overlay), (w, h)) in enumerate(zip(row, sizes)):
            x = _MARGIN + k * (cell_w + _GAP)
            pdf.image(_png(overlay), x=x, y=top, w=w, h=h)
            pdf.set_xy(x, top + image_h + 0.8)
            pdf.set_font(_FONT, "", 7)
            pdf.multi_cell(cell_w, 3.1, latin1(caption), align="L")
        pdf.set_xy(_MARGIN, top + image_h + caption_h + 3)


def _provenance(pdf: FPDF, models: Sequence[ReportModel]) -> None:
    """Which checkpoint produced each column, one line a model, the table kept whole on one page."""
    rows = provenance_rows(models)
    shared = shared_training_data(models)
    pdf.set_font(_FONT, "", _TABLE_PT)
    natural = [max(pdf.get_string_width(latin1(r[c])) for r in rows) + 3 for c in range(len(rows[0]))]
    widths = [w * min(1.0, pdf.epw / sum(natural)) for w in natural]
    intro = " ".join(filter(None, [f"All models trained on: {shared}." if shared else "", AUC_NOTE]))
    intro_h = _lines(pdf, intro, pdf.epw, 7.5) * 3.4
    _ensure_room(pdf, 6 + intro_h + 4.2 * len(rows) + 2)
    _paragraph(pdf, "Model provenance", pdf.epw, 9, "B")
    _paragraph(pdf, intro, pdf.epw, 7.5, line=3.4)
    pdf.ln(1)
    for r, cells in enumerate(rows):
        y, x = pdf.y, _MARGIN
        for text, w in zip(cells, widths):
            _cell(pdf, x, y, w, 4.2, text, _TABLE_PT, "B" if r == 0 else "", align="L",
                  fill=_HEAD_FILL if r == 0 else None)
            x += w
        pdf.set_xy(_MARGIN, y + 4.2)


def case_report_pdf(report: CaseReport, *, compress: bool = True) -> bytes:
    """Render the case report to PDF bytes; ``compress=False`` leaves text streams readable for tests."""
    validate(report)
    pdf = _ReportPDF(orientation="landscape", format="A4")
    pdf.set_compression(compress)
    pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
    pdf.set_auto_page_break(True, margin=_MARGIN + _FOOTER_H)
    pdf.set_title(TITLE)
    pdf.set_creator("cxrcore.report")
    pdf.add_page()
    _header(pdf, report)
    top = pdf.y
    image_end = _image_block(pdf, report, top)
    right = _MARGIN + _IMAGE_W + _GAP
    pdf.set_y(top)
    _label_table(pdf, report, right, pdf.w - _MARGIN - right)
    pdf.set_xy(_MARGIN, (pdf.y if pdf.page > 1 else max(image_end, pdf.y)) + _GAP)
    if report.cams:
        _cam_grid(pdf, report.cams)
        pdf.ln(2)
    _provenance(pdf, report.models)
    return bytes(pdf.output())
