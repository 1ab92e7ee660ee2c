"""Calibration fitted on held-out predictions: the pos-weight prior, the shrunk Platt fit, temperature scaling, the
card round trip, and that runs store and serve calibrated probabilities."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import fake_checkpoint_root

from cxrcore import calibration, metrics
from cxrcore.calibration import Calibration
from cxrcore.checkpoints import find, read_predictions
from cxrcore.imaging import to_model_batch
from cxrcore.inference import load_model
from cxrcore.runs import raw_predictions, served_outputs


def inflated(n: int, k: int = 4, pos_weight: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities, and the scores a BCE model with ``pos_weight`` would give:
    the true logit plus log(pos_weight)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.0, 1.5, (n, k))
    y = (rng.random((n, k)) < calibration.sigmoid(z)).astype(np.float32)
    return y, calibration.sigmoid(z + np.log(pos_weight)).astype(np.float32)


def test_prior_shift_is_log_pos_weight_or_balanced_per_label():
    assert calibration.prior_shift(10.0, [5, 50], 100) == pytest.approx([np.log(10)] * 2)
    assert calibration.prior_shift("balanced", [5, 50], 100) == pytest.approx([np.log(95 / 5), 0.0])
    assert calibration.prior_shift(None, [5, 50], 100) == [0.0, 0.0]


def test_platt_fit_improves_ece_on_generated_miscalibrated_data():
    y_val, p_val = inflated(2000, seed=1)
    y_test, p_test = inflated(4000, seed=2)
    cal = calibration.fit(y_val, p_val, True, calibration.prior_shift(10.0, [0] * 4, 1))
    before = metrics.expected_calibration_error(y_test, p_test)
    after = metrics.expected_calibration_error(y_test, cal.apply(p_test))
    assert before > 0.15 and after < 0.03
    np.testing.assert_allclose(cal.slope, 1, atol=0.15)
    np.testing.assert_allclose(cal.intercept, 0, atol=0.2)


def test_a_label_with_few_positives_stays_near_the_prior_correction():
    """Two positives, both with low scores: an unregularised fit would drag the intercept far down."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, (160, 2)).astype(np.float32)
    y = np.zeros((160, 2), np.float32)
    y[:2, 0] = 1
    y[:, 1] = rng.random(160) < p[:, 1]  # a calibrated label with plenty of positives
    shift = [0.0, 0.0]
    cal = calibration.fit_platt(y, p, shift, strength=10.0)
    free = calibration.fit_platt(y, p, shift, strength=1e-6)
    assert abs(cal.intercept[0]) < abs(free.intercept[0]) / 2
    assert abs(np.log(cal.slope[1])) < 0.3 and abs(cal.intercept[1]) < 0.3


def test_calibration_is_monotone_per_label_and_keeps_auc():
    y, p = inflated(500, seed=3)
    cal = calibration.fit(y, p, True, [np.log(10)] * 4)
    grid = np.tile(np.linspace(0.001, 0.999, 200)[:, None], (1, 4)).astype(np.float32)
    assert (np.diff(cal.apply(grid), axis=0) >= 0).all() and all(a > 0 for a in cal.slope)
    np.testing.assert_allclose(metrics.auc_per_label(y, cal.apply(p)), metrics.auc_per_label(y, p), atol=1e-3)


def test_temperature_scaling_fixes_overconfident_softmax_and_sums_to_one():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1, (3000, 3))
    y = np.array([rng.choice(3, p=q) for q in calibration.softmax(logits)])
    overconfident = calibration.softmax(3 * logits).astype(np.float32)
    cal = calibration.fit(y[:, None], overconfident, False)
    onehot = np.eye(3)[y]
    assert cal.kind == calibration.TEMPERATURE and cal.temperature == pytest.approx(3, rel=0.15)
    served = cal.apply(overconfident)
    np.testing.assert_allclose(served.sum(1), 1, rtol=1e-5)
    assert (metrics.expected_calibration_error(onehot, served)
            < metrics.expected_calibration_error(onehot, overconfident) / 2)


def test_a_temperature_is_not_fitted_on_a_held_out_set_the_model_separates():
    """With 4 of 400 images misclassified the NLL keeps falling as T falls: the fit would sharpen on 4 images."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(0, 0.3, (400, 3))
    logits[np.arange(400), y] += 2.0
    wrong = np.arange(4)
    logits[wrong, y[wrong]] -= 4.0  # these four now score their true class lowest
    p = calibration.softmax(logits).astype(np.float32)
    cal = calibration.fit(y[:, None], p, False)
    assert cal.errors == 4 and cal.temperature == 1.0 and "4 misclassified" in cal.note
    np.testing.assert_allclose(cal.apply(p), p, atol=1e-6)
    refit = calibration.fit_temperature(y, p, min_errors=4)  # the same set, allowed: it sharpens
    assert refit.temperature < 1 and refit.note == ""
    assert calibration.Calibration.from_dict(cal.to_dict()) == cal


def test_calibration_round_trips_through_json():
    y, p = inflated(300, seed=5)
    cal = calibration.fit(y, p, True, [np.log(10)] * 4)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    np.testing.assert_array_equal(back.apply(p), cal.apply(p))


def test_served_outputs_store_calibrated_and_raw_and_measure_the_calibrated():
    y_val, p_val = inflated(400, seed=6)
    y_test, p_test = inflated(400, seed=7)
    raw = {"val_probs": p_val, "val_labels": y_val, "test_probs": p_test, "test_labels": y_test}
    served = served_outputs(raw, metrics.TASK_MULTILABEL, list("abcd"), [np.log(10)] * 4, n_boot=10)
    preds = served.predictions
    np.testing.assert_array_equal(preds["test_raw_probs"], p_test)
    cal = Calibration.from_dict(served.calibration)
    np.testing.assert_allclose(preds["test_probs"], cal.apply(p_test))
    assert served.metrics["val"]["ece"] == pytest.approx(metrics.expected_calibration_error(y_val, preds["val_probs"]))
    assert "test" not in served.metrics  # stored, not scored: the test split is read once, by cxrcore.evaluation
    again = served_outputs(raw_predictions(preds), metrics.TASK_MULTILABEL, list("abcd"), [np.log(10)] * 4, n_boot=10)
    np.testing.assert_array_equal(again.predictions["test_probs"], preds["test_probs"])  # rerunning starts from raw


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fake_checkpoint_root(tmp_path_factory.mktemp("checkpoints"))


def test_a_trained_checkpoint_serves_what_it_stores(root):
    ck = next(c for c in find(root) if c.id == "vanilla_cnn")
    assert ck.card.calibration and ck.card.calibration["kind"] == calibration.PLATT
    stored = read_predictions(ck.path)
    assert {"val_raw_probs", "test_raw_probs"} <= set(stored)
    m = load_model(ck.path)
    x = to_model_batch(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    np.testing.assert_allclose(m.predict(x), m.calibration.apply(m.predict_raw(x)), rtol=1e-6)
    np.testing.assert_allclose(m.predict(x, raw=True), m.predict_raw(x))
    assert isinstance(x, torch.Tensor)


@pytest.mark.parametrize("lo, hi, verdict", [(0.01, 0.05, "held"), (0.04, 0.06, "unsettled"), (0.051, 0.09, "missed")])
def test_a_calibration_verdict_needs_the_whole_interval_on_one_side_of_the_target(lo, hi, verdict):
    assert calibration.CalibrationCheck("m", (lo + hi) / 2, lo, hi).verdict == verdict
