"""The per-image comparison without Streamlit: calls, ensemble, disagreement, thresholds and presets, boxes and CAM
peaks, the out-of-distribution warning and the report data."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import NIH14, dicom, fake_checkpoint, fake_checkpoint_root, write_ood
from PIL import Image

from cxrcore import compare, gate, metrics
from cxrcore.calibration import CalibrationCheck
from cxrcore.checkpoints import find
from cxrcore.compare import ENSEMBLE
from cxrcore.data import Box, Dataset
from cxrcore.explain import CamResult, jet
from cxrcore.imaging import ImageError, Limits, to_dataset_size, to_model_batch
from cxrcore.inference import load_model
from cxrcore.report import case_report_pdf, provenance_rows
from cxrcore.runs import val_operating_points

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fake_checkpoint_root(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def nih(root):
    return [c for c in find(root) if c.dataset == "nih14-local"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# ---- the comparison table ------------------------------------------------------------------------------------------

def three_models() -> compare.Comparison:
    probs = {"m1": [0.9, 0.2, 0.5], "m2": [0.7, 0.6, 0.4], "m3": [0.8, 0.1, 0.3]}
    thresholds = {"m1": [0.5, 0.5, 0.5], "m2": [0.5, 0.5, 0.5], "m3": [0.5, 0.5, 0.5], ENSEMBLE: [0.5, 0.3, 0.5]}
    return compare.compare(probs, thresholds, LABELS, ["m1", "m2", "m3"])


def test_ensemble_is_the_mean_of_its_members_called_at_its_own_threshold():
    comp = three_models()
    assert list(comp.probs.columns) == ["m1", "m2", "m3", ENSEMBLE] and comp.models == ["m1", "m2", "m3"]
    np.testing.assert_allclose(comp.probs[ENSEMBLE], [0.8, 0.3, 0.4])
    assert comp.calls[ENSEMBLE].tolist() == [True, True, False]  # 0.3 >= 0.3: at the threshold is positive


def test_calls_are_at_or_above_the_threshold():
    comp = three_models()
    assert comp.calls.loc["c"].tolist() == [True, False, False, False]  # m1: 0.5 >= 0.5


def test_agreement_counts_votes_and_flags_splits():
    agree = three_models().agreement()
    assert agree["n_positive"].tolist() == [3, 1, 1] and agree["n_negative"].tolist() == [0, 2, 2]
    assert agree["split"].tolist() == [False, True, True]
    np.testing.assert_allclose(agree.loc["a", "sd"], np.std([0.9, 0.7, 0.8]))
    np.testing.assert_allclose(agree.loc["b", "range"], 0.5)


def test_flat_table_has_one_row_per_label_and_every_column():
    flat = three_models().flat()
    assert flat["label"].tolist() == LABELS
    for col in ("m1", "m2", "m3", ENSEMBLE):
        assert {f"{col}_prob", f"{col}_threshold", f"{col}_call"} <= set(flat.columns)
    assert set(flat["m1_call"]) == {"positive", "negative"} and "split" in flat.columns


def test_one_model_has_no_ensemble_and_no_split():
    comp = compare.compare({"m1": [0.9, 0.1, 0.5]}, {"m1": [0.5] * 3}, LABELS)
    assert list(comp.probs.columns) == ["m1"] and not comp.agreement()["split"].any()


@pytest.mark.parametrize(("probs", "thresholds", "members", "match"), [
    ({"m1": [0.1, 0.2]}, {"m1": [0.5] * 3}, [], r"probs\['m1'\]"),
    ({"m1": [0.1] * 3}, {}, [], r"thresholds\['m1'\]"),
    ({"m1": [0.1] * 3, "m2": [0.2] * 3}, {"m1": [0.5] * 3, "m2": [0.5] * 3}, ["m1", "m2"], "ensemble"),
])
def test_misaligned_inputs_are_refused(probs, thresholds, members, match):
    with pytest.raises(ValueError, match=match):
        compare.compare(probs, thresholds, LABELS, members)


def test_top_label():
    assert compare.top_label([0.1, 0.7, 0.3], LABELS) == "b"


# ---- thresholds ----------------------------------------------------------------------------------------------------

def _points(values):
    return [metrics.OperatingPoint(metrics.YOUDEN, None, v, 12, 60, 0.8, 0.7, 0.3, auc_ci=(0.61, 0.8))
            if v is not None else
            metrics.OperatingPoint(metrics.YOUDEN, None, None, 4, 60, reached=False, reason="too few positives (n=4)")
            for v in values]


def test_points_in_force_replace_only_overridden_labels_and_measure_them_on_validation():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, (100, 3)).astype(float), rng.random((100, 3))
    out = compare.points_in_force(_points([0.2, None, 0.6]), LABELS, y, p, {"b": 0.9, "c": float("nan")})
    assert out[0].threshold == 0.2 and out[1].threshold == 0.9 and out[2].threshold is None
    assert out[1].sensitivity == metrics.binary_stats(y[:, 1], p[:, 1], 0.9)["sensitivity"]
    assert out[1].positives == int(y[:, 1].sum())
    assert compare.points_in_force(_points([0.2, None, 0.6]), LABELS, y, p, None) == _points([0.2, None, 0.6])


def test_a_label_without_a_threshold_makes_no_call_and_says_why():
    pts = {"m1": _points([0.5, None, 0.5]), "m2": _points([0.5, 0.5, 0.5])}
    comp = compare.compare({"m1": [0.9, 0.9, 0.1], "m2": [0.9, 0.9, 0.1]},
                           {k: [p.value for p in v] for k, v in pts.items()}, LABELS, [], pts)
    assert comp.calls["m1"].tolist() == [True, False, False] and comp.no_call["m1"].tolist() == [False, True, False]
    assert comp.agreement().loc["b", "n_negative"] == 0 and not comp.agreement().loc["b", "split"]
    assert comp.not_estimable() == {"b": "too few positives (n=4): m1"}
    assert comp.flat()["m1_call"].tolist() == ["positive", "no call", "negative"]
    calls = comp.positive_calls()
    assert len(calls) == 3 and set(calls["ppv"]) == {0.3} and set(calls["positives"]) == {12}
    assert set(calls["auc_ci"]) == {"0.61-0.80"}  # the interval that let the threshold be set


def test_no_call_reasons_fold_into_one_short_line_per_label():
    """Ten models without a threshold for one label give one line naming the reason once, not ten repeats."""
    ids = [f"m{k}" for k in range(10)]
    pts = {i: _points([0.5, None, 0.5]) for i in ids} | {ENSEMBLE: _points([0.5, None, None])}
    comp = compare.compare({i: [0.9, 0.9, 0.1] for i in ids}, {k: [p.value for p in v] for k, v in pts.items()},
                           LABELS, ids, pts)
    assert comp.not_estimable() == {"b": "too few positives (n=4): all 10 models and the mean",
                                    "c": "too few positives (n=4): the mean"}


def test_call_text_states_probability_threshold_and_call():
    pts = {"m1": _points([0.5, None, 0.5])}
    comp = compare.compare({"m1": [0.9, 0.9, 0.1]}, {"m1": [0.5, float("nan"), 0.5]}, LABELS, [], pts)
    assert [comp.call_text(label, "m1") for label in LABELS] == [
        "p=0.90, positive at threshold 0.500", "p=0.90, no call (no threshold)", "p=0.10, negative at threshold 0.500"]


def test_comparable_scores_put_every_threshold_at_half():
    comp = compare.compare({"m1": [0.2, 0.05, 0.9], "m2": [0.6, 0.5, 0.1]},
                           {"m1": [0.2, 0.1, float("nan")], "m2": [0.6, 0.4, 0.5]}, LABELS)
    scores = comp.scores(comparable=True)
    assert scores.loc["a"].tolist() == [0.5, 0.5] and np.isnan(scores.at["c", "m1"])
    assert ((scores >= 0.5) == comp.calls)[~comp.no_call].all().all()
    assert comp.scores().equals(comp.probs)


def test_card_points_come_with_their_evidence(nih):
    card = next(c for c in nih if c.id == "vanilla_cnn").card
    pts = compare.card_points(card)
    assert [p.threshold for p in pts] == card.thresholds["youden_val"]
    assert all(p.positives >= metrics.MIN_POSITIVES for p in pts if p.threshold is not None)


def test_presets_reach_their_targets_or_say_why_not():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.15), 0.01, 0.99)
    card = _points([0.37])[0]
    presets = compare.preset_points(y, s, card)
    assert list(presets) == list(compare.PRESETS)
    assert presets["0.5"].threshold == 0.5 and presets["Card (held-out Youden J)"] == card
    assert metrics.binary_stats(y, s, presets["Sensitivity ≥ 0.90"].threshold)["sensitivity"] >= 0.9
    assert metrics.binary_stats(y, s, presets["Specificity ≥ 0.90"].threshold)["specificity"] >= 0.9
    assert all(p.positives == int(y.sum()) for p in presets.values() if p is not card)
    few = compare.preset_points(np.r_[np.ones(9), np.zeros(100)], np.linspace(0.01, 0.99, 109), card)
    assert all(few[k].threshold is None and few[k].reason == "too few positives (n=9)" for k in
               ("Youden J", "Sensitivity ≥ 0.90", "Specificity ≥ 0.90"))
    assert few["0.5"].threshold == 0.5  # a fixed value is not estimated, so it needs no positives


def test_threshold_source_names_the_users_changes():
    assert compare.threshold_source({}).startswith("held-out Youden J per label (model cards)")
    assert "vanilla_cnn Mass=0.700" in compare.threshold_source({"vanilla_cnn": {"Mass": 0.7}})
    assert "vanilla_cnn Mass=no call" in compare.threshold_source({"vanilla_cnn": {"Mass": float("nan")}})


def test_expected_false_calls_are_measured_on_normal_validation_films():
    y = np.array([[0, 0], [0, 0], [1, 1]], float)
    p = np.array([[0.6, 0.1], [0.6, 0.6], [0.9, 0.9]])
    assert compare.expected_false_calls(y, p, [0.5, 0.5], metrics.TASK_MULTILABEL) == 1.5


# ---- the ensemble column -------------------------------------------------------------------------------------------

def test_ensemble_predictions_average_members_and_refuse_other_images(nih):
    shipped = [c.predictions() for c in nih if c.id in ("vanilla_cnn", "vit_scratch")]
    ens = compare.ensemble_predictions(shipped)
    np.testing.assert_allclose(ens["test_probs"], (shipped[0]["test_probs"] + shipped[1]["test_probs"]) / 2)
    np.testing.assert_array_equal(ens["val_labels"], shipped[0]["val_labels"])
    other = {**shipped[1], "test_labels": 1 - shipped[1]["test_labels"]}
    with pytest.raises(ValueError, match="different test images"):
        compare.ensemble_predictions([shipped[0], other])


def test_ensemble_points_are_youden_on_calibrated_validation_only(nih):
    ens = compare.ensemble_predictions([c.predictions() for c in nih])
    pts = compare.ensemble_points(ens, metrics.TASK_MULTILABEL)
    assert pts == val_operating_points(ens["val_labels"], ens["val_probs"], metrics.TASK_MULTILABEL)
    shuffled = {**ens, "test_probs": ens["test_probs"][::-1]}
    assert compare.ensemble_points(shuffled, metrics.TASK_MULTILABEL) == pts


def test_the_live_mean_of_cross_validated_members_is_thresholded_out_of_fold(tmp_path):
    """Members cross-validated on the same folds: the mean is also taken out of fold, and its thresholds rest on
    every train + val image (480 here) rather than the 80 validation ones."""
    from helpers import fake_checkpoint

    members = [fake_checkpoint(tmp_path, m, seed=s, cv=True).predictions() for m, s in (("vanilla_cnn", 1),
                                                                                         ("cnn_small", 2))]
    ens = compare.ensemble_predictions(members)
    np.testing.assert_allclose(ens["oof_probs"], (members[0]["oof_probs"] + members[1]["oof_probs"]) / 2)
    pts = compare.ensemble_points(ens, metrics.TASK_MULTILABEL)
    assert [q.positives for q in pts] == [int(v) for v in ens["oof_labels"].sum(0)]
    assert len(ens["oof_labels"]) == 480


def test_the_live_mean_is_named_for_what_it_is():
    assert three_models().label(ENSEMBLE) == "mean of 3 selected" and three_models().label("m1") == "m1"


# ---- one image -----------------------------------------------------------------------------------------------------

def test_predict_image_is_the_training_preprocessing(nih):
    m = load_model(next(c for c in nih if c.id == "vanilla_cnn").path)
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)
    expected = m.predict(to_model_batch(to_dataset_size(pixels, 64)))[0]
    np.testing.assert_array_equal(compare.predict_image(m, pixels), expected)
    assert m.square == "crop" and torch.equal(m.input_for(pixels), to_model_batch(to_dataset_size(pixels, 64)))


def test_a_model_trained_on_padded_films_is_served_padded(nih):
    """The dataset entry's square rule, recorded in the card, is the one inference applies (not always the crop)."""
    m = load_model(next(c for c in nih if c.id == "vanilla_cnn").path)
    m.card.dataset.extra["square"] = "pad"
    pixels = np.full((100, 200), 255, np.uint8)  # landscape: padding leaves black bands above and below
    x = m.input_for(pixels)
    assert torch.equal(x, to_model_batch(to_dataset_size(pixels, 64, "pad")))
    assert x[0, 0, 0].max() == 0 and x[0, 0, 32].min() == 255
    np.testing.assert_array_equal(compare.predict_image(m, pixels), m.predict(x)[0])


def test_upload_case_decodes_and_places_nih_boxes_on_the_square():
    pixels = np.random.default_rng(0).integers(0, 256, (200, 300), dtype=np.uint8)
    boxes = {"00001933_000.png": [Box("Infiltrate", 100, 50, 100, 50)]}
    case = compare.upload_case(png(pixels), "uploads/00001933_000.png", Limits(), boxes, 1)
    assert case.source == "upload" and case.truth is None
    np.testing.assert_array_equal(case.image.pixels, pixels)
    (box,) = case.boxes  # the square is x 50..250, so the box spans 0.25..0.75 of it horizontally
    assert box.label == "Infiltration"
    np.testing.assert_allclose([box.x, box.y, box.w, box.h], [0.25, 0.25, 0.5, 0.25])


def test_upload_case_refuses_bad_bytes():
    with pytest.raises(ImageError, match="empty"):
        compare.upload_case(b"", "x.png", Limits(), {}, 1)


def test_dicom_case_keeps_identifiers_apart():
    case = compare.upload_case(dicom(np.arange(128 * 128, dtype=np.uint16).reshape(128, 128)), "scan.dcm",
                               Limits(), {}, 1)
    assert case.image.format == "DICOM" and case.image.identifiers["PatientName"] == "Doe^Jane"
    assert "PatientName" not in case.image.metadata


def test_test_split_case_goes_through_decode_and_knows_its_labels():
    rng = np.random.default_rng(0)
    images = {s: torch.from_numpy(rng.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8))
              for s in ("train", "val", "test")}
    labels = {s: np.array([[0], [1], [0]], np.float32) for s in images}
    ds = Dataset("pneumoniamnist-local", 28, metrics.TASK_BINARY, ["normal", "pneumonia"], images, labels, "", "")
    split = ds.split("test")
    assert split.names == [f"pneumoniamnist-local test #{i}" for i in range(3)]
    case = compare.test_split_case(split, 1, {})
    assert case.truth == ["pneumonia"] and case.boxes == [] and case.source == "pneumoniamnist-local test split"
    np.testing.assert_array_equal(case.image.pixels, images["test"][1, 0].numpy())


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    """A tiny generated colour checkpoint (blood-cells, 3 channels, random weights)."""
    return load_model(fake_checkpoint(tmp_path_factory.mktemp("rgb"), "cnn_small", "blood-cells").path)


def colour_png(h: int = 80, w: int = 100) -> tuple[np.ndarray, bytes]:
    rgb = np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return rgb, buf.getvalue()


def test_the_tasks_channels_decide_how_an_upload_is_decoded_and_read(rgb_model, nih):
    rgb, data = colour_png()
    grey_cards = [c.card for c in nih]
    assert compare.task_channels([rgb_model.card]) == 3 and compare.task_channels(grey_cards) == 1
    assert compare.task_channels([]) == 1
    colour = compare.upload_case(data, "cell.png", Limits(), {}, compare.task_channels([rgb_model.card]))
    np.testing.assert_array_equal(colour.image.pixels, rgb)  # kept in colour for the colour model
    grey = compare.upload_case(data, "cell.png", Limits(), {}, 1)
    assert grey.image.pixels.shape == (80, 100)  # a film task still reads grey
    x = rgb_model.input_for(colour.image.pixels)
    assert x.shape == (1, 3, 32, 32) and torch.equal(x[0, 1], torch.from_numpy(
        to_dataset_size(rgb, 32)[..., 1]))  # channels in order, not a grey copy
    p = compare.predict_image(rgb_model, colour.image.pixels)
    assert p.shape == (4,) and np.isclose(p.sum(), 1, rtol=1e-5)
    assert not np.allclose(p, compare.predict_image(rgb_model, np.repeat(grey.image.pixels[..., None], 3, -1)))
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        compare.read_image(data, "cell.png", Limits(), 4)


def test_a_colour_test_split_pick_is_decoded_and_shown_in_colour(rgb_model):
    rng = np.random.default_rng(5)
    images = {s: torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)) for s in ("train", "val", "test")}
    labels = {s: np.array([[3], [1]], np.float32) for s in images}
    ds = Dataset("blood-cells", 32, metrics.TASK_MULTICLASS, rgb_model.label_names, images, labels, "", "")
    case = compare.test_split_case(ds.split("test"), 0, {})
    np.testing.assert_array_equal(case.image.pixels, images["test"][0].numpy().transpose(1, 2, 0))
    assert case.truth == ["neutrophil"]
    square = compare.display_square(case.image.pixels)
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 1
    for informative in (True, False):
        panel = compare.cam_panel(square, CamResult(heat, (8, 8), informative, "GradCAM", "x", ""))
        assert panel.shape[0] == square.shape[0] and panel.shape[2] == 3
    rep = compare.case_report(compare.compare({"cnn_small": [0.1, 0.2, 0.3, 0.4]},
                                              {"cnn_small": [0.5] * 4}, rgb_model.label_names),
                              case.image.pixels, case.name, [rgb_model.card], "cards")
    assert case_report_pdf(rep).startswith(b"%PDF")


def cam_result(heat: np.ndarray, informative: bool = True) -> CamResult:
    return CamResult(heat, (8, 8), informative, "GradCAM", "layer2", "" if informative else "empty map")


def test_box_on_square_and_peak_hits():
    box = compare.box_on_square(Box("Mass", 612, 512, 100, 100), (1024, 1024), 1)
    np.testing.assert_allclose([box.x, box.y, box.w, box.h], np.array([612, 512, 100, 100]) / 1024)
    cam = np.zeros((64, 64), np.float32)
    cam[35, 40] = 1  # x = 40.5 / 64 = 0.63, y = 35.5 / 64 = 0.55: inside
    assert compare.peak_hits(cam_result(cam), [box]) == {"Mass": True}
    assert compare.peak_hits(cam_result(cam, informative=False), [box]) == {}  # no localisation points nowhere
    cam[35, 40], cam[5, 5] = 0, 1
    assert compare.peak_hits(cam_result(cam), [box, Box("Mass", 0.0, 0.0, 0.01, 0.01)]) == {"Mass": False}


def test_cam_caption_states_the_grid_the_box_verdict_or_no_localisation():
    cam, box = np.zeros((64, 64), np.float32), Box("Mass", 0.5, 0.5, 0.2, 0.2)
    cam[40, 40] = 1
    assert compare.cam_caption("m: p=0.70", cam_result(cam), [box]) == (
        "m: p=0.70 · GradCAM at layer2, native 8x8 grid · peak inside the Mass box")
    flat = compare.cam_caption("m", cam_result(np.zeros((64, 64), np.float32), informative=False), [box, box])
    assert flat == "m · no localisation (empty map; GradCAM at layer2, native 8x8 grid) · no peak to compare with " \
                   "the Mass box"


def test_cam_panel_outlines_boxes_in_green_beside_a_colour_bar():
    square = np.full((100, 100), 128, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1
    panel = compare.cam_panel(square, cam_result(heat), 0.3, [Box("Mass", 0.2, 0.2, 0.5, 0.5)])
    assert panel.shape[0] == 100 and panel.shape[1] > 100  # the film, then the colour bar
    assert tuple(panel[20, 50]) == (0, 255, 0) and tuple(panel[50, 50]) == (128, 128, 128)  # map at 0: clear
    assert tuple(panel[1, 1]) != (128, 128, 128)  # the peak is drawn
    bar = panel[:, 100:]
    assert tuple(bar[0, 4]) == tuple(jet(np.array([[1.0]]))[0, 0]) and tuple(bar[-1, 4]) == tuple(
        jet(np.array([[0.0]]))[0, 0])  # red at the top, blue at the bottom


def test_cam_panel_never_draws_a_map_without_localisation():
    """A constant map is shown as the plain film, grey everywhere but the boxes, with no scale beside it."""
    square = np.random.default_rng(0).integers(0, 256, (160, 160), dtype=np.uint8)
    panel = compare.cam_panel(square, cam_result(np.zeros((8, 8), np.float32), informative=False), 1.0)
    film, bar = panel[:, :160].astype(int), panel[:, 160:]
    assert (film[..., 0] == film[..., 1]).all() and (film[..., 1] == film[..., 2]).all()  # no colour at all
    np.testing.assert_array_equal(film[:40, :, 0], square[:40])  # the film itself, outside the caption band
    assert not bar.any()  # no colour bar for a map that is not drawn
    top = compare.cam_panel(square, cam_result(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), 1.0,
                            top=0.1)
    assert (top[150:, 100:160] != np.repeat(square[150:, 100:160, None], 3, -1)).any()  # the top rows are drawn
    np.testing.assert_array_equal(top[:100, :160], np.repeat(square[:100, :, None], 3, -1))  # the rest is the film


def test_ood_warning_only_when_a_detector_flags_the_image(tmp_path):
    ck = fake_checkpoint(tmp_path, "vanilla_cnn")
    m = load_model(ck.path)
    pixels = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    lenient = gate.Gate(gate.GateNet(), gate.Thresholds(1e-9, 1 - 1e-9, 1e-9, 0.99))  # a gate that never fires
    assert compare.ood_warning([m], pixels, chest_gate=lenient) is None  # no ood.json: skipped silently
    write_ood(ck.path, "vanilla_cnn", 128, flags=True)
    assert "unlike the training films" in compare.ood_warning([m], pixels, chest_gate=lenient)
    write_ood(ck.path, "vanilla_cnn", 128, flags=False)
    assert compare.ood_warning([m], pixels, chest_gate=lenient) is None
    write_ood(ck.path, "vanilla_cnn", 7, flags=True)  # fitted on other features: skipped, not a crash
    assert compare.ood_warning([m], pixels, chest_gate=lenient) is None


# ---- the PDF report ------------------------------------------------------------------------------------------------

def test_case_report_renders_with_models_then_ensemble(nih):
    comp = compare.compare({"vanilla_cnn": [0.6] * 14, "vit_scratch": [0.2] * 14},
                           {"vanilla_cnn": [0.5] * 14, "vit_scratch": [0.5] * 14, ENSEMBLE: [0.5] * 14}, NIH14,
                           ["vanilla_cnn", "vit_scratch"])
    cards = [c.card for c in nih if c.id in comp.models]
    rep = compare.case_report(comp, np.zeros((64, 64), np.uint8), "x.png", cards, "cards",
                              [("vanilla_cnn: Mass", np.zeros((32, 32, 3), np.uint8))], None, "now",
                              {ENSEMBLE: {"Mass": 0.7}, "vit_scratch": {}, "gone": {"Mass": 0.1}})
    assert rep.model_ids == ["vanilla_cnn", "vit_scratch", "mean of 2 selected"]
    assert rep.user_set == {"mean of 2 selected": ["Mass"]}  # by the column's printed name; unchosen models dropped
    assert rep.probs["mean of 2 selected"] == [0.4] * 14
    assert [m.id for m in rep.models] == ["vanilla_cnn", "vit_scratch"] and "400 train" in rep.models[0].dataset
    assert case_report_pdf(rep).startswith(b"%PDF")
    assert rep.models[0].test_ece == f"{cards[0].metrics.test.ece:.3f}"  # no check given: the card's figure alone
    checks = {"vanilla_cnn": CalibrationCheck("vanilla_cnn", 0.131, 0.113, 0.155)}
    rep = compare.case_report(comp, np.zeros((64, 64), np.uint8), "x.png", cards, "cards", calibration=checks)
    assert [m.test_ece for m in rep.models] == ["0.131 (0.113-0.155), above 0.05", f"{cards[1].metrics.test.ece:.3f}"]
    assert "Test ECE (95% CI)" in provenance_rows(rep.models)[0]


def test_predicted_class_is_each_columns_most_probable_class():
    classes = ["normal", "bacterial", "viral"]
    probs = {"a": [0.2, 0.5, 0.3], "b": [0.6, 0.1, 0.3]}
    comp = compare.compare(probs, {c: [0.5] * 3 for c in (*probs, ENSEMBLE)}, classes, ["a", "b"])
    assert compare.predicted_classes(comp) == {"a": "bacterial", "b": "normal", ENSEMBLE: "normal"}  # mean .4/.3/.3
    assert compare.predicted_by(comp) == ["b, mean of 2 selected", "a", ""]  # the live mean by its shown name
