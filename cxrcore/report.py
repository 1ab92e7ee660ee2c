"""One-to-two page PDF case report for a single image, built in memory from plain data.

The report is what a radiologist can print or attach: the image as shown, every model's probability per label
with the positive calls marked, the operating thresholds and where they came from, the Grad-CAM panels and the
provenance of each model. It uses only fpdf2's core fonts, so every string is squeezed into latin-1 first.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from fpdf import FPDF, FontFace
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
_CAM_COLS = 4
CAM_NOTE = ("Colour: where the map raises the label's score, relative to its own peak (bar: low to high); the film shows "
            "through where the map is low. 'No localisation': the map was empty or constant and is not drawn. Each "
            "caption gives the layer's native grid: a map is no finer than that.")
_TABLE_PT = 7
_HEAD_STYLE = FontFace(emphasis="BOLD", fill_color=(225, 225, 225))
_POSITIVE_STYLE = FontFace(emphasis="BOLD", fill_color=(255, 214, 190))
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


def latin1(text: str) -> str:
    """Core PDF fonts only cover latin-1: map common typography to ASCII and replace the rest with '?'."""
    return text.translate(_ASCII_FALLBACKS).encode("latin-1", "replace").decode("latin-1")


def report_columns(report: CaseReport) -> list[str]:
    """Model columns in the caller's order, plus the ensemble when it has probabilities."""
    extra = [ENSEMBLE] if ENSEMBLE in report.probs and ENSEMBLE not in report.model_ids else []
    return [*report.model_ids, *extra]


def validate(report: CaseReport) -> None:
    """Fail early with a message naming the bad entry, rather than printing a misaligned table."""
    if report.image.ndim != 2:
        raise ValueError(f"image must be (H, W) grayscale, got shape {report.image.shape}")
    n = len(report.label_names)
    for field, table in (("probs", report.probs), ("thresholds", report.thresholds)):
        for col in report_columns(report):
            if col not in table:
                raise ValueError(f"{field} has no entry for model {col!r}")
            if len(table[col]) != n:
                raise ValueError(
                    f"{field}[{col!r}] has {len(table[col])} values, expected {n} (one per label)")
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


def probability_rows(report: CaseReport) -> list[list[str]]:
    """Header plus one row per label: label name, then one probability cell per model column."""
    cols = report_columns(report)
    return [["Label", *cols]] + [
        [label, *(probability_cell(report.probs[c][i], report.thresholds[c][i]) for c in cols)]
        for i, label in enumerate(report.label_names)
    ]


def threshold_rows(report: CaseReport) -> list[list[str]]:
    """Header plus one row per label of the thresholds that produced the calls."""
    cols = report_columns(report)
    return [["Label", *cols]] + [
        [label, *(_num(report.thresholds[c][i]) for c in cols)] for i, label in enumerate(report.label_names)
    ]


def provenance_rows(models: Sequence[ReportModel]) -> list[list[str]]:
    """Header plus one row per model; the weights hash is cut to 12 hex, enough to tell checkpoints apart."""
    return [["Model", "Architecture", "Init", "Training data", "Test AUC", "Weights SHA-256"]] + [
        [m.id, m.arch, m.init, m.dataset, _num(m.test_auc, 3), (m.weights_sha256 or "n/a")[:12]] for m in models
    ]


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


def _banner(pdf: FPDF, text: str, fill: tuple[int, int, int], color: tuple[int, int, int], size: int) -> None:
    pdf.set_font(_FONT, "B", size)
    pdf.set_fill_color(*fill)
    pdf.set_text_color(*color)
    pdf.multi_cell(0, size * 0.5, latin1(text), fill=True, padding=1.2, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.set_fill_color(255)
    pdf.ln(1.5)


def _header(pdf: FPDF, report: CaseReport) -> None:
    pdf.set_font(_FONT, "B", 16)
    pdf.cell(0, 8, TITLE, new_x="LMARGIN", new_y="NEXT")
    _banner(pdf, NOTICE, fill=(180, 0, 0), color=(255, 255, 255), size=11)
    pdf.set_font(_FONT, "", 9)
    meta = f"Date: {report.created or 'not given'}    Image: {report.filename}    Thresholds: {report.threshold_source}"
    pdf.multi_cell(0, 4.5, latin1(meta), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1.5)
    if report.ood_warning:
        _banner(pdf, f"Warning: {report.ood_warning}", fill=(255, 224, 130), color=(90, 50, 0), size=9)


def _heading(pdf: FPDF, text: str, x: float) -> None:
    pdf.set_x(x)
    pdf.set_font(_FONT, "B", 9)
    pdf.cell(0, 5, latin1(text), new_x="LEFT", new_y="NEXT")


def _table(pdf: FPDF, rows: list[list[str]], x: float, widths: Sequence[float],
           styles: list[list[FontFace | None]] | None = None, align: str = "CENTER") -> None:
    """Small-font table at ``x``; ``styles`` (per body cell) highlights positive calls."""
    pdf.set_x(x)
    pdf.set_font(_FONT, "", _TABLE_PT)
    with pdf.table(width=sum(widths), col_widths=tuple(widths), align="LEFT", text_align=align,
                   line_height=3.1, padding=(0.5, 1), headings_style=_HEAD_STYLE) as table:
        for r, cells in enumerate(rows):
            row = table.row()
            for c, text in enumerate(cells):
                style = styles[r - 1][c] if styles and r > 0 else None
                row.cell(latin1(text), style=style, align="LEFT" if c == 0 else None)
    pdf.ln(2)


def _label_tables(pdf: FPDF, report: CaseReport, x: float, width: float) -> float:
    """Probability and threshold tables side by side with the image; returns the y where they end."""
    cols = report_columns(report)
    label_w = 27.0
    col_w = min(32.0, (width - label_w) / max(len(cols), 1))
    widths = [label_w, *([col_w] * len(cols))]
    styles = [
        [None, *(_POSITIVE_STYLE if is_positive(report.probs[c][i], report.thresholds[c][i]) else None for c in cols)]
        for i in range(len(report.label_names))
    ]
    _heading(pdf, f"Probabilities ('{POSITIVE}' and shaded: at or above the operating threshold)", x)
    _table(pdf, probability_rows(report), x, widths, styles)
    _heading(pdf, f"Operating thresholds (source: {report.threshold_source})", x)
    _table(pdf, threshold_rows(report), x, widths)
    return pdf.y


def _image_block(pdf: FPDF, report: CaseReport, top: float) -> float:
    """The image as the user saw it, with its name and size; returns the y where it ends."""
    w, h = _fit(report.image, _IMAGE_W, pdf.h - pdf.b_margin - top - 10)
    pdf.image(_png(report.image), x=_MARGIN, y=top, w=w, h=h)
    pdf.set_xy(_MARGIN, top + h + 1)
    pdf.set_font(_FONT, "", 7)
    rows, cols = report.image.shape
    pdf.multi_cell(_IMAGE_W, 3.2, latin1(f"{report.filename} ({cols} x {rows} px)"), new_x="LMARGIN", new_y="NEXT")
    return pdf.y


def _fit(array: np.ndarray, max_w: float, max_h: float) -> tuple[float, float]:
    """Largest (width, height) in mm inside the box that keeps the array's aspect ratio."""
    scale = min(max_w / array.shape[1], max_h / array.shape[0])
    return array.shape[1] * scale, array.shape[0] * scale


def _ensure_room(pdf: FPDF, height: float) -> None:
    if pdf.y + height > pdf.h - pdf.b_margin:
        pdf.add_page()


def _cam_grid(pdf: FPDF, cams: Sequence[tuple[str, np.ndarray]]) -> None:
    """Grad-CAM overlays in rows of four, captions underneath, a row never split across pages."""
    cell_w = (pdf.epw - (_CAM_COLS - 1) * _GAP) / _CAM_COLS
    for start in range(0, len(cams), _CAM_COLS):
        row = cams[start:start + _CAM_COLS]
        sizes = [_fit(overlay, cell_w, 55.0) for _, overlay in row]
        row_h = max(h for _, h in sizes) + 8
        _ensure_room(pdf, row_h + (14 if start == 0 else 0))
        if start == 0:
            _heading(pdf, "Grad-CAM", _MARGIN)
            pdf.set_font(_FONT, "", 7)
            pdf.multi_cell(0, 3.2, latin1(CAM_NOTE), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        top = pdf.y
        for k, ((caption, overlay), (w, h)) in enumerate(zip(row, sizes)):
            x = _MARGIN + k * (cell_w + _GAP)
            pdf.image(_png(overlay), x=x, y=top, w=w, h=h)
            pdf.set_xy(x, top + h + 0.5)
            pdf.set_font(_FONT, "", 7)
            pdf.multi_cell(cell_w, 3.2, latin1(caption))
        pdf.set_xy(_MARGIN, top + row_h)


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
    tables_end = _label_tables(pdf, report, right, pdf.w - _MARGIN - right)
    pdf.set_xy(_MARGIN, (tables_end if pdf.page > 1 else max(image_end, tables_end)) + _GAP)
    if report.cams:
        _cam_grid(pdf, report.cams)
        pdf.ln(_GAP)
    _ensure_room(pdf, 25)
    _heading(pdf, "Model provenance", _MARGIN)
    _table(pdf, provenance_rows(report.models), _MARGIN, [40, 45, 62, 75, 18, 37], align="LEFT")
    return bytes(pdf.output())
