"""Metrics agree with MedMNIST's evaluator and scikit-learn; thresholds, CIs and calibration behave as stated."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import (
    accuracy_score, confusion_matrix, f1_score, hamming_loss as sk_hamming_loss, precision_score, recall_score,
    roc_auc_score,
)

from cxrcore import metrics
from cxrcore.metrics import TASK_BINARY, TASK_MULTICLASS, TASK_MULTILABEL

NIH14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]


# ---- data ----------------------------------------------------------------------------------------------------------

def multilabel(n: int = 300, labels: int = 14, seed: int = 0, signal: float = 1.0):
    """Labels with ChestMNIST-like low prevalence and scores that carry some signal (ties included via rounding)."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.03, 0.3, labels)
    y = (rng.uniform(size=(n, labels)) < prevalence).astype(np.float32)
    y[0], y[1] = 1, 0  # every label has both classes
    logits = rng.normal(size=(n, labels)) + signal * y - 1.5
    return y, np.round(1 / (1 + np.exp(-logits)), 3)


def binary(n: int = 300, seed: int = 0):
    """(N, 1) labels and 2-column softmax scores, as PneumoniaMNIST models produce."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1)).astype(np.float32)
    z = rng.normal(size=(n, 2)) + np.hstack([1 - y, y])
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return y, p


def multiclass(n: int = 300, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, (n, 1)).astype(np.float32)
    z = rng.normal(size=(n, classes)) + np.eye(classes)[y[:, 0].astype(int)]
    return y, np.exp(z) / np.exp(z).sum(1, keepdims=True)


TASKS = {TASK_MULTILABEL: multilabel, TASK_BINARY: binary, TASK_MULTICLASS: multiclass}


# ---- MedMNIST semantics --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_acc_equal_medmnist_evaluator(task, seed):
    y, p = TASKS[task](seed=seed)
    assert metrics.get_auc(y, p, task) == pytest.approx(getAUC(y, p, task), abs=1e-12)
    assert metrics.get_acc(y, p, task) == pytest.approx(getACC(y, p, task), abs=1e-12)


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.7])
@pytest.mark.parametrize("task", [TASK_MULTILABEL, TASK_BINARY])
def test_acc_threshold_matches_medmnist(task, threshold):
    y, p = TASKS[task](seed=3)
    assert metrics.get_acc(y, p, task, threshold) == pytest.approx(getACC(y, p, task, threshold), abs=1e-12)


def test_binary_auc_uses_the_positive_column():
    y, p = binary()
    assert metrics.get_auc(y, p, TASK_BINARY) == pytest.approx(roc_auc_score(y[:, 0], p[:, 1]))
    assert metrics.get_auc(y, p[:, ::-1], TASK_BINARY) == pytest.approx(1 - roc_auc_score(y[:, 0], p[:, 1]))


def test_multilabel_auc_skips_a_label_with_one_class_where_medmnist_gives_nan():
    y, p = multilabel()
    y[:, 3] = 0
    with pytest.warns(UserWarning):  # sklearn warns and returns NaN (older versions raised), so MedMNIST's mean is NaN
        assert np.isnan(getAUC(y, p, TASK_MULTILABEL))
    others = [j for j in range(14) if j != 3]
    assert metrics.get_auc(y, p) == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in others]))


# ---- per-label AUC and confusion-based statistics ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_auc_per_label_equals_sklearn(seed):
    y, p = multilabel(seed=seed)
    got = metrics.auc_per_label(y, p)
    assert got.shape == (14,)
    np.testing.assert_allclose(got, [roc_auc_score(y[:, j], p[:, j]) for j in range(14)], atol=1e-12)


def test_auc_per_label_is_nan_where_a_label_has_one_class():
    y, p = multilabel()
    y[:, 0], y[:, 5] = 0, 1
    got = metrics.auc_per_label(y, p)
    assert np.isnan(got[[0, 5]]).all() and np.isfinite(np.delete(got, [0, 5])).all()


def test_auc_per_label_handles_perfect_and_inverted_scores():
    y = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=float)
    np.testing.assert_allclose(metrics.auc_per_label(y, y * 0.8 + 0.1), [1.0, 1.0])
    np.testing.assert_allclose(metrics.auc_per_label(y, 1 - y), [0.0, 0.0])
    np.testing.assert_allclose(metrics.auc_per_label(y, np.full_like(y, 0.5)), [0.5, 0.5])  # all tied


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.8])
def test_binary_stats_equal_sklearn(threshold):
    y, p = multilabel(n=400, seed=4)
    t, s = y[:, 2], p[:, 2]
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(t, pred, labels=[0, 1]).ravel()
    st = metrics.binary_stats(t, s, threshold)
    assert (st["tp"], st["fp"], st["tn"], st["fn"]) == (tp, fp, tn, fn)
    assert st["sensitivity"] == pytest.approx(recall_score(t, pred))
    assert st["specificity"] == pytest.approx(recall_score(1 - t, 1 - pred))
    assert st["ppv"] == pytest.approx(precision_score(t, pred, zero_division=np.nan), nan_ok=True)
    assert st["npv"] == pytest.approx(precision_score(1 - t, 1 - pred, zero_division=np.nan), nan_ok=True)
    assert st["f1"] == pytest.approx(f1_score(t, pred))
    assert st["accuracy"] == pytest.approx(accuracy_score(t, pred))


def test_binary_stats_counts_a_score_equal_to_the_threshold_as_positive_and_is_nan_when_undefined():
    st = metrics.binary_stats(np.array([1, 0]), np.array([0.5, 0.2]), 0.5)
    assert (st["tp"], st["tn"]) == (1, 1)
    st = metrics.binary_stats(np.zeros(5), np.linspace(0, 0.4, 5), 0.5)
    assert math.isnan(st["sensitivity"]) and math.isnan(st["ppv"]) and st["specificity"] == 1.0


def test_macro_sens_spec_averages_per_label_stats_at_per_label_thresholds():
    y, p = multilabel(seed=5)
    th = np.linspace(0.2, 0.6, 14)
    stats = [metrics.binary_stats(y[:, j], p[:, j], th[j]) for j in range(14)]
    sens, spec = metrics.macro_sens_spec(y, p, th)
    assert sens == pytest.approx(np.mean([s["sensitivity"] for s in stats]))
    assert spec == pytest.approx(np.mean([s["specificity"] for s in stats]))


# ---- operating thresholds ------------------------------------------------------------------------------------------

def label_cases(n_cases: int = 12):
    """One-label score sets: continuous, heavily tied (rounded to 0.05) and small ones."""
    rng = np.random.default_rng(6)
    for k in range(n_cases):
        n = [40, 120, 500][k % 3]
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1)
        yield y, (np.round(s / 0.05) * 0.05 if k % 2 else s)


def candidates(s: np.ndarray) -> np.ndarray:
    """Every threshold that gives a different set of calls."""
    return np.unique(s)


@pytest.mark.parametrize("case", range(12))
def test_youden_threshold_maximises_j(case):
    y, s = list(label_cases())[case]
    th = metrics.threshold_youden(y, s)
    j = lambda t: (lambda st: st["sensitivity"] + st["specificity"] - 1)(metrics.binary_stats(y, s, t))  # noqa: E731
    assert j(th) == pytest.approx(max(j(t) for t in candidates(s)), abs=1e-12)
    assert 0 <= th <= 1


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("case", range(12))
def test_sensitivity_preset_is_the_highest_threshold_reaching_the_target(case, target):
    y, s = list(label_cases())[case]
    point = metrics.operating_point(y, s, metrics.SENSITIVITY, target, min_positives=1)
    reaching = [t for t in candidates(s) if metrics.binary_stats(y, s, t)["sensitivity"] >= target]
    if point.threshold is None:  # refused: only calling every image reaches the target
        assert metrics.threshold_refusal(max(reaching), s) is not None and point.reason
    else:
        assert point.sensitivity >= target and point.threshold == pytest.approx(max(reaching))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("case", range(12))
def test_specificity_preset_is_the_lowest_threshold_reaching_the_target(case, target):
    y, s = list(label_cases())[case]
    point = metrics.operating_point(y, s, metrics.SPECIFICITY, target, min_positives=1)
    reaching = [t for t in candidates(s) if metrics.binary_stats(y, s, t)["specificity"] >= target]
    if point.threshold is None:
        assert not reaching or metrics.threshold_refusal(min(reaching), s) is not None
    else:
        assert point.specificity >= target and point.threshold == pytest.approx(min(reaching))


def test_youden_falls_back_to_half_for_a_label_without_both_classes():
    s = np.linspace(0, 1, 10)
    assert metrics.threshold_youden(np.zeros(10), s) == 0.5 and metrics.threshold_youden(np.ones(10), s) == 0.5


# ---- multi-label set metrics ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_exact_match_and_hamming_loss_equal_sklearn(threshold):
    y, p = multilabel(seed=7, labels=3, signal=3.0)  # few labels, so some images are entirely right
    pred = (p >= threshold).astype(int)
    exact = metrics.exact_match_ratio(y, p, threshold)
    assert exact == pytest.approx(accuracy_score(y.astype(int), pred)) and exact > 0
    assert metrics.hamming_loss(y, p, threshold) == pytest.approx(sk_hamming_loss(y.astype(int), pred))


def test_exact_match_and_hamming_loss_take_per_label_thresholds():
    y = np.array([[1, 0], [0, 1]])
    p = np.array([[0.4, 0.6], [0.1, 0.7]])
    assert metrics.exact_match_ratio(y, p, 0.5) == 0.5  # the first image's second label is called positive
    assert metrics.exact_match_ratio(y, p, np.array([0.3, 0.65])) == 1.0
    assert metrics.hamming_loss(y, p, np.array([0.3, 0.65])) == 0.0


# ---- bootstrap -----------------------------------------------------------------------------------------------------

def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    widths = []
    for n in (100, 1600):
        y, p = multilabel(n=n, seed=8)
        point = metrics.get_auc(y, p)
        lo, hi = metrics.bootstrap_ci(metrics.get_auc, y, p, n_boot=300)
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 16x the data, about a quarter of the width


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_bootstrap_ci_is_reproducible_and_skips_undefined_resamples():
    y, p = binary(n=60)
    ci = metrics.bootstrap_ci(lambda a, b: roc_auc_score(a[:, 0], b[:, 1]), y, p, n_boot=100, seed=3)
    assert ci == metrics.bootstrap_ci(lambda a, b: roc_auc_score(a[:, 0], b[:, 1]), y, p, n_boot=100, seed=3)
    y1 = np.zeros((40, 1))
    y1[0] = 1  # one positive: most resamples lack it and make roc_auc_score raise
    lo, hi = metrics.bootstrap_ci(lambda a, b: roc_auc_score(a[:, 0], b[:, 0]), y1, np.linspace(0, 1, 40)[:, None],
                                  n_boot=100)
    assert 0 <= lo <= hi <= 1
    assert all(map(math.isnan, metrics.bootstrap_ci(lambda a, b: float("nan"), y1, y1, n_boot=10)))


@pytest.mark.parametrize("task", [TASK_MULTILABEL, TASK_BINARY, TASK_MULTICLASS])
def test_vectorised_auc_bootstrap_gives_the_loops_interval_for_the_same_seed(task):
    """Same draws as bootstrap_ci, so on data where no resample loses a label's positives the CI is the same."""
    y, p = TASKS[task](n=400, seed=21)
    iv = metrics.auc_intervals(y, p, task, n_boot=150, seed=4)
    assert iv.kept == 150 and iv.dropped == 0 and iv.unit == "image"
    loop = metrics.bootstrap_ci(lambda a, b: metrics.get_auc(a, b, task), y, p, n_boot=150, seed=4)
    assert iv.macro == pytest.approx(loop, abs=1e-12)


def test_bootstrap_aucs_equal_sklearn_on_every_resample_ties_included():
    y, p = multilabel(n=120, labels=5, seed=22)
    p = np.round(p, 1)  # many ties
    aucs = metrics.bootstrap_aucs(y, p, n_boot=20, seed=5)
    rng = np.random.default_rng(5)
    for b in range(20):
        idx = rng.integers(0, len(y), len(y))
        for j in range(5):
            t = y[idx, j]
            expected = roc_auc_score(t, p[idx, j]) if 0 < t.sum() < len(t) else np.nan
            assert aucs[b, j] == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_macro_auc_never_changes_its_labels_between_resamples():
    """A label with one positive is absent from about a third of image resamples: those resamples are dropped and
    counted, instead of averaging the other labels only (what the loop did)."""
    y, p = multilabel(n=200, labels=4, seed=23)
    y[:, 3] = 0
    y[7, 3] = 1
    iv = metrics.auc_intervals(y, p, n_boot=300, seed=6)
    whole = np.isfinite(metrics.bootstrap_aucs(y, p, n_boot=300, seed=6)).all(1)
    assert iv.kept == whole.sum() and iv.kept + iv.dropped == 300 and 60 < iv.dropped < 160
    assert iv.per_column[3] is None and all(c is not None for c in iv.per_column[:3])  # 1 positive: too few


def test_patient_bootstrap_resamples_whole_patients():
    y, p = multilabel(n=150, labels=6, seed=24)
    one_each = metrics.auc_intervals(y, p, n_boot=100, seed=7, groups=np.arange(150) + 1000)
    assert one_each.macro == metrics.auc_intervals(y, p, n_boot=100, seed=7).macro and one_each.unit == "patient"
    # every patient filmed twice, identically: drawing patients is drawing the original images with both copies, so
    # the patient CI of the doubled split is the image CI of the original; an image CI would claim twice the evidence
    twice, groups = np.concatenate([y, y]), np.r_[np.arange(150), np.arange(150)]
    doubled = metrics.auc_intervals(twice, np.concatenate([p, p]), n_boot=100, seed=7, groups=groups)
    assert doubled.macro == pytest.approx(one_each.macro, abs=1e-12)
    naive = metrics.auc_intervals(twice, np.concatenate([p, p]), n_boot=100, seed=7)
    assert naive.macro[1] - naive.macro[0] < 0.85 * (doubled.macro[1] - doubled.macro[0])


def test_paired_auc_diff_gives_the_loops_answer_and_takes_patients():
    y, a = multilabel(n=300, seed=25, signal=1.5)
    _, b = multilabel(n=300, seed=25, signal=0.5)
    fast = metrics.paired_auc_diff(y, a, b, n_boot=120, seed=8)
    loop = metrics.paired_bootstrap_diff(metrics.get_auc, y, a, b, n_boot=120, seed=8)
    assert fast["resamples"] == 120 and all(fast[k] == pytest.approx(loop[k], abs=1e-12) for k in loop)
    by_patient = metrics.paired_auc_diff(y, a, b, n_boot=120, seed=8, groups=np.arange(300) // 3)
    assert by_patient["unit"] == "patient" and by_patient["diff"] == fast["diff"] > 0


def test_roc_band_brackets_the_curve():
    y, p = multilabel(n=400, seed=9, signal=2.0)
    band = metrics.roc_band(y[:, 0], p[:, 0], n_boot=100)
    tpr_on_grid = np.interp(band["grid"], band["fpr"], band["tpr"])
    inside = (np.array(band["tpr_lo"]) - 1e-9 <= tpr_on_grid) & (tpr_on_grid <= np.array(band["tpr_hi"]) + 1e-9)
    assert inside.mean() > 0.9
    assert max(band["thresholds"]) <= 1.0


# ---- calibration ---------------------------------------------------------------------------------------------------

def calibrated(n: int = 20000, seed: int = 10):
    rng = np.random.default_rng(seed)
    s = rng.uniform(size=n)
    return (rng.uniform(size=n) < s).astype(float), s


def test_ece_is_small_for_calibrated_scores_and_large_for_overconfident_ones():
    y, s = calibrated()
    assert metrics.expected_calibration_error(y, s) < 0.02
    overconfident = np.clip(0.5 + 1.8 * (s - 0.5), 0, 1)
    assert metrics.expected_calibration_error(y, overconfident) > 0.1
    assert metrics.expected_calibration_error(y, s ** 3) > 0.1  # under-confident in every bin


def test_reliability_bins_pool_every_score_and_track_the_diagonal():
    y, s = calibrated()
    rel = metrics.reliability(y.reshape(-1, 4), s.reshape(-1, 4), n_bins=10)
    assert sum(rel["count"]) == len(s) and len(rel["edges"]) == 11
    np.testing.assert_allclose(rel["confidence"], np.arange(10) / 10 + 0.05, atol=0.01)
    np.testing.assert_allclose(rel["frequency"], rel["confidence"], atol=0.04)
    assert rel["count"][-1] > 0  # a score of exactly 1 would land in the last bin, not past it
    assert metrics.reliability(np.array([1.0]), np.array([1.0]))["count"][-1] == 1


# ---- summary for the model card ------------------------------------------------------------------------------------

SUMMARY_KEYS = {"n", "auc_macro", "auc_macro_ci", "auc_macro_ci_bootstrap", "acc", "sensitivity_macro",
                "specificity_macro", "exact_match", "hamming_loss", "ece", "per_label"}
PER_LABEL_KEYS = {"threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "tp", "fp", "tn", "fn",
                  "auc", "auc_ci", "too_few", "positives"}


def test_summarize_multilabel_has_every_key_and_no_nan():
    y, p = multilabel(n=315, seed=11)
    th = [metrics.threshold_youden(y[:, j], p[:, j]) for j in range(14)]
    s = metrics.summarize(y, p, NIH14, thresholds=th, n_boot=100)
    assert set(s) == SUMMARY_KEYS and list(s["per_label"]) == NIH14
    assert s["n"] == 315 and s["auc_macro"] == pytest.approx(getAUC(y, p, TASK_MULTILABEL))
    lo, hi = s["auc_macro_ci"]
    assert lo < s["auc_macro"] < hi
    for name, st in s["per_label"].items():
        assert set(st) == PER_LABEL_KEYS
        assert st["threshold"] == pytest.approx(th[NIH14.index(name)])
        assert st["positives"] == int(y[:, NIH14.index(name)].sum())
    flat = [v for k, v in s.items() if k not in ("per_label", "auc_macro_ci_bootstrap")] + [
        v for st in s["per_label"].values() for v in st.values() if v is not None]  # None: too few positives
    assert all(np.isfinite(np.asarray(v, dtype=float)).all() for v in flat)
    json.loads(json.dumps(s, allow_nan=False))  # goes into card.json as strict JSON


def test_summarize_reports_none_auc_for_a_label_without_positives():
    y, p = multilabel(n=167, seed=12)
    y[:, 13] = 0  # e.g. Hernia absent from a small validation split
    s = metrics.summarize(y, p, NIH14, n_boot=50)
    assert s["per_label"]["Hernia"]["auc"] is None and s["per_label"]["Hernia"]["positives"] == 0
    assert np.isnan(metrics.auc_per_label(y, p)[13])
    for name in NIH14[:13]:  # an AUC only where it rests on at least MIN_POSITIVES positives
        st = s["per_label"][name]
        assert (st["auc"] is None) == st["too_few"] == (st["positives"] < metrics.MIN_POSITIVES)
    assert any(s["per_label"][n]["too_few"] for n in NIH14[:13]) and not all(
        s["per_label"][n]["too_few"] for n in NIH14[:13])
    assert math.isfinite(s["auc_macro"]) and math.isfinite(s["sensitivity_macro"])


@pytest.mark.parametrize("task", [TASK_BINARY, TASK_MULTICLASS])
def test_summarize_single_label_tasks_uses_one_column_per_class(task):
    y, p = TASKS[task](seed=13)
    names = [f"class{k}" for k in range(p.shape[1])]
    s = metrics.summarize(y, p, names, task=task, n_boot=50)
    assert s["auc_macro"] == pytest.approx(getAUC(y, p, task)) and s["acc"] == pytest.approx(getACC(y, p, task))
    assert [s["per_label"][n]["positives"] for n in names] == np.bincount(y[:, 0].astype(int)).tolist()
    assert s["per_label"][names[-1]]["auc"] == pytest.approx(roc_auc_score(y[:, 0] == p.shape[1] - 1, p[:, -1]))


# ---- multi-class ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_summary_equals_scikit_learn(seed):
    y, p = multiclass(n=250, classes=4, seed=seed)
    p[:, 3] *= 0.1  # class 3 is rarely predicted, so macro and micro averages differ
    p /= p.sum(1, keepdims=True)
    t, pred = y[:, 0].astype(int), p.argmax(1)
    s = metrics.multiclass_summary(y, p, ["a", "b", "c", "d"])
    assert s["accuracy"] == pytest.approx(accuracy_score(t, pred))
    for avg in ("macro", "micro"):
        assert s[f"precision_{avg}"] == pytest.approx(precision_score(t, pred, average=avg, zero_division=0))
        assert s[f"recall_{avg}"] == pytest.approx(recall_score(t, pred, average=avg, zero_division=0))
        assert s[f"f1_{avg}"] == pytest.approx(f1_score(t, pred, average=avg, zero_division=0))
    assert s["f1_macro"] != pytest.approx(s["f1_micro"])
    assert s["auc_ovr"] == pytest.approx(roc_auc_score(t, p, multi_class="ovr", average="macro"))
    cm = confusion_matrix(t, pred, labels=range(4))
    assert s["confusion"] == cm.tolist()
    for k, name in enumerate("abcd"):
        tn = cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]
        assert s["per_class"][name]["sensitivity"] == pytest.approx(recall_score(t == k, pred == k))
        assert s["per_class"][name]["specificity"] == pytest.approx(tn / (tn + cm[:, k].sum() - cm[k, k]))
        assert s["per_class"][name]["support"] == int((t == k).sum())


def test_multiclass_class_never_predicted_counts_zero_like_scikit_learn():
    y = np.array([0, 1, 2, 2])
    p = np.eye(3)[[0, 1, 1, 1]]  # class 2 is never predicted
    assert metrics.precision_recall_f1(metrics.class_confusion(y, p.argmax(1), 3), "macro") == pytest.approx(
        (precision_score(y, p.argmax(1), average="macro", zero_division=0),
         recall_score(y, p.argmax(1), average="macro", zero_division=0),
         f1_score(y, p.argmax(1), average="macro", zero_division=0)))
    with pytest.raises(ValueError, match="average"):
        metrics.precision_recall_f1(np.eye(2), "weighted")


def test_summarize_adds_multiclass_metrics_only_for_multiclass_tasks():
    y, p = multiclass(n=120, classes=3, seed=5)
    s = metrics.summarize(y, p, ["normal", "bacterial", "viral"], task=TASK_MULTICLASS, n_boot=20)
    assert s["accuracy"] == pytest.approx(s["acc"]) and s["auc_ovr"] == pytest.approx(s["auc_macro"])
    assert np.asarray(s["confusion"]).sum() == 120 and set(s["per_class"]) == {"normal", "bacterial", "viral"}
    json.loads(json.dumps(s, allow_nan=False))
    yb, pb = binary(seed=5)
    assert "confusion" not in metrics.summarize(yb, pb, ["normal", "pneumonia"], task=TASK_BINARY, n_boot=20)


# ---- operating thresholds with evidence ------------------------------------------------------------------------------

def _with_positives(n_pos: int, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    y[:n_pos] = 1
    return y, np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0.01, 0.99)


def test_a_threshold_needs_ten_positives():
    nine = metrics.operating_point(*_with_positives(9))
    assert nine.threshold is None and nine.reason == "too few positives (n=9)" and math.isnan(nine.value)
    ten = metrics.operating_point(*_with_positives(10))
    assert ten.threshold is not None and ten.positives == 10 and ten.reason is None
    y, s = _with_positives(10)
    st = metrics.binary_stats(y, s, ten.threshold)
    assert (ten.sensitivity, ten.specificity, ten.ppv) == (st["sensitivity"], st["specificity"], st["ppv"])


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.2, float("nan"), 0.001, 0.995])
def test_thresholds_at_0_1_or_outside_the_observed_scores_are_refused(threshold):
    s = np.linspace(0.01, 0.99, 50)
    assert metrics.threshold_refusal(threshold, s) is not None
    assert metrics.threshold_refusal(0.5, s) is None
    point = metrics.operating_point((s > 0.5).astype(float), s, metrics.FIXED, threshold)
    assert point.threshold is None and point.reason


def test_youden_at_infinity_is_refused_not_clipped_to_one():
    """A label whose best cut calls nothing (the shipped EfficientNet-Lite0's Pneumonia threshold was 1.00)."""
    y = np.r_[np.ones(12), np.zeros(60)]
    s = np.r_[np.full(12, 0.2), np.linspace(0.1, 0.9, 60)]  # positives sit among the negatives: no cut helps
    point = metrics.operating_point(y, s)
    assert point.threshold is None or 0 < point.threshold < s.max()


def test_presets_say_when_a_target_cannot_be_reached():
    y = np.r_[np.ones(20), np.zeros(80)]
    s = np.r_[np.linspace(0.3, 0.9, 20), np.full(60, 0.1), np.full(20, 0.95)]  # a quarter of the negatives, tied,
    # outscore every positive: the score separates (AUC 0.75) but no cut leaves 90 % of negatives uncalled
    spec = metrics.operating_point(y, s, metrics.SPECIFICITY, 0.9)
    assert spec.threshold is None and not spec.reached and "cannot be reached" in spec.reason
    sens = metrics.operating_point(y, s, metrics.SENSITIVITY, 0.9)
    assert sens.reached and sens.threshold is not None and sens.sensitivity >= 0.9 and sens.positives == 20


def test_a_threshold_needs_a_score_that_separates_positives_from_negatives():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(160)]
    noise = metrics.operating_point(y, rng.random(200))
    assert noise.threshold is None and noise.reason == metrics.NO_SEPARATION and noise.auc_ci[0] <= 0.5
    inverted = metrics.operating_point(y, 1 - np.r_[np.linspace(0.5, 1, 40), np.linspace(0, 0.7, 160)])
    assert inverted.threshold is None and inverted.reason == metrics.NO_SEPARATION and inverted.auc_ci[1] < 0.5
    signal = metrics.operating_point(*_with_positives(40))
    assert signal.threshold is not None and signal.auc_ci[0] > 0.5
    for rule, target in ((metrics.SENSITIVITY, 0.9), (metrics.SPECIFICITY, 0.9)):  # presets: the same rule
        assert metrics.operating_point(y, rng.random(200), rule, target).reason == metrics.NO_SEPARATION
    assert metrics.operating_point(y, rng.random(200), metrics.FIXED, 0.5).threshold == 0.5  # a user's choice


def test_the_separation_rule_resamples_patients_not_images():
    """Ten films of each of 16 patients look like 160 independent films to an image bootstrap, which then claims a
    separation that 16 patients cannot show."""
    rng = np.random.default_rng(3)
    y_patient = np.r_[np.ones(8), np.zeros(8)]
    s_patient = rng.normal(0.55 * y_patient, 0.5)
    y, s, groups = (np.repeat(v, 10) for v in (y_patient, s_patient, np.arange(16)))
    s = s + rng.normal(0, 0.01, len(s))
    by_image, by_patient = metrics.operating_point(y, s), metrics.operating_point(y, s, groups=groups)
    assert by_image.threshold is not None and by_image.auc_ci[0] > 0.5
    assert by_patient.threshold is None and by_patient.reason == metrics.NO_SEPARATION


def test_operating_point_round_trips_through_json():
    point = metrics.operating_point(*_with_positives(30), metrics.SENSITIVITY, 0.9)
    assert metrics.OperatingPoint.from_dict(json.loads(json.dumps(point.to_dict()))) == point


def test_op_norm_maps_the_threshold_to_half_and_is_monotone():
    t = np.array([0.1, 0.5, 0.8, np.nan])
    assert metrics.op_norm(t[None, :3], t[:3]).tolist() == [[0.5, 0.5, 0.5]]
    grid = np.linspace(0, 1, 101)[:, None].repeat(4, 1)
    out = metrics.op_norm(grid, t)
    assert (np.diff(out[:, :3], axis=0) > 0).all() and np.isnan(out[:, 3]).all()
    np.testing.assert_allclose(out[[0, -1], :3], [[0, 0, 0], [1, 1, 1]])
    assert ((out[:, :3] >= 0.5) == (grid[:, :3] >= t[:3])).all()  # the call reads the same from the new score


def test_false_calls_per_normal_film_counts_only_films_without_findings():
    y = np.array([[0, 0], [0, 0], [1, 0]])
    p = np.array([[0.9, 0.9], [0.1, 0.9], [0.9, 0.9]])
    assert metrics.false_calls_per_film(y, p, np.array([0.5, 0.5])) == 1.5
    assert metrics.false_calls_per_film(y, p, np.array([0.5, np.nan])) == 0.5  # no threshold: no call
    assert metrics.false_calls_per_film(y, p, np.array([0.5, 0.5]), normal_only=False) == pytest.approx(4 / 3)


def test_summarize_leaves_labels_without_a_threshold_out_of_the_calls():
    y, p = multilabel(n=200, labels=3, seed=2)
    s = metrics.summarize(y, p, ["a", "b", "c"], thresholds=[0.5, float("nan"), 0.5], n_boot=10)
    assert s["per_label"]["b"]["threshold"] is None and math.isnan(s["per_label"]["b"]["sensitivity"])
    both = [metrics.binary_stats(y[:, j], p[:, j], 0.5)["sensitivity"] for j in (0, 2)]
    assert s["sensitivity_macro"] == pytest.approx(np.mean(both))


def test_ece_ci_is_the_bootstrap_of_the_ece_over_images_or_patients():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, (300, 4))
    y = (rng.uniform(0, 1, p.shape) < p ** 1.5).astype(float)  # over-confident positives: a real miscalibration
    lo, hi = metrics.ece_ci(y, p, n_boot=200, seed=5)
    # exactly the loop over image resamples (the vectorised weights are those draws)
    assert (lo, hi) == pytest.approx(metrics.bootstrap_ci(metrics.expected_calibration_error, y, p, 200, seed=5))
    assert lo < metrics.expected_calibration_error(y, p) < hi
    # each patient's films copied five times: resampling images pretends 1,500 independent films; patients do not
    y5, p5, groups = np.repeat(y, 5, axis=0), np.repeat(p, 5, axis=0), np.repeat(np.arange(300), 5)
    image_lo, image_hi = metrics.ece_ci(y5, p5, n_boot=200)
    patient_lo, patient_hi = metrics.ece_ci(y5, p5, n_boot=200, groups=groups)
    assert patient_hi - patient_lo > 1.5 * (image_hi - image_lo)


def test_prior_shift_moves_probabilities_to_a_new_class_mix_by_bayes_rule():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    np.testing.assert_allclose(metrics.prior_shift(p, [0.5, 0.5], [0.5, 0.5], exclusive=True), p)
    np.testing.assert_allclose(metrics.prior_shift(p[:1], [0.5, 0.5], [0.2, 0.8], exclusive=True), [[0.2, 0.8]])
    np.testing.assert_allclose(metrics.prior_shift(np.array([[0.5, 0.5]]), [0.5, 0.25], [0.1, 0.25],
                                                   exclusive=False), [[0.1, 0.5]])  # each column on its own


def test_prior_shift_restores_calibration_lost_to_a_change_of_class_mix_alone():
    """Scores calibrated where 20 % are positive, read where 60 % are: the same films' likelihoods, another mix.
    Bayes' rule to the new mix brings the ECE back near 0; the unshifted scores are far off."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1, 1, 6000), rng.normal(0, 1, 4000)])  # positives then negatives
    y = np.concatenate([np.ones(6000), np.zeros(4000)])[:, None]
    lr = np.exp(x - 0.5)  # likelihood ratio of N(1, 1) to N(0, 1)
    at_source = (0.25 * lr / (1 + 0.25 * lr))[:, None]  # calibrated at a 20 % prevalence (odds 0.25)
    shifted = metrics.prior_shift(at_source, [0.2], [0.6], exclusive=False)
    assert metrics.expected_calibration_error(y, shifted) < 0.02 < 0.2 < metrics.expected_calibration_error(y, at_source)
