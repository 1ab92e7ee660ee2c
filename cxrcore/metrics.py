"""Classification metrics: plain arrays in, plain numbers out.

Semantics follow MedMNIST's ``getAUC`` / ``getACC`` so that our numbers are comparable with the published tables:
multi-label AUC is the mean of per-label AUCs (labels with one class only are skipped), multi-label ACC is the
mean element-wise accuracy at 0.5, binary/multi-class use the positive-class column / argmax.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from .task import kind_of, label_columns

TASK_MULTILABEL = "multi-label, binary-class"
TASK_BINARY = "binary-class"
TASK_MULTICLASS = "multi-class"


def _as2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(len(a), -1)


def auc_per_label(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC per label column; NaN where a label has only one class in ``y_true``."""
    from scipy.stats import rankdata

    # Mann-Whitney U from tie-averaged ranks: equal to sklearn's roc_auc_score, vectorised over labels, which
    # keeps thousands of bootstrap resamples cheap.
    y_true, y_score = _as2d(y_true) > 0.5, _as2d(y_score)
    n_pos = y_true.sum(0)
    n_neg = len(y_true) - n_pos
    ranks = rankdata(y_score, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y_true).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan).astype(float)


def get_auc(y_true: np.ndarray, y_score: np.ndarray, task: str = TASK_MULTILABEL) -> float:
    """MedMNIST ``getAUC``: macro AUC over labels (multi-label), positive column (binary), OvR mean (multi-class)."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    if task == TASK_MULTILABEL:
        return float(np.nanmean(auc_per_label(y_true, y_score)))
    if task == TASK_BINARY:
        return float(auc_per_label(y_true[:, :1], y_score[:, -1:])[0])
    onehot = label_columns(y_true, task, y_score.shape[1])
    return float(np.nanmean(auc_per_label(onehot, y_score)))


def get_acc(y_true: np.ndarray, y_score: np.ndarray, task: str = TASK_MULTILABEL, threshold: float = 0.5) -> float:
    """MedMNIST ``getACC``: element-wise accuracy at ``threshold`` (multi-label), else accuracy of the prediction."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    if task == TASK_MULTILABEL:
        return float(((y_score > threshold) == (y_true > 0.5)).mean())
    if task == TASK_BINARY:
        return float(((y_score[:, -1] > threshold) == (y_true[:, 0] > 0.5)).mean())
    return float((y_score.argmax(1) == y_true[:, 0]).mean())


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int


def confusion(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> Confusion:
    """Confusion counts of one label (1-D arrays); a score >= threshold is a positive call."""
    t = np.asarray(y_true).ravel() > 0.5
    p = np.asarray(y_score).ravel() >= threshold
    return Confusion(int((t & p).sum()), int((~t & p).sum()), int((~t & ~p).sum()), int((t & ~p).sum()))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_stats(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, F1 and accuracy of one label at a threshold (NaN when undefined, and
    every statistic NaN at a NaN threshold: no call is made, so nothing is measured)."""
    if not np.isfinite(threshold):
        return {k: float("nan") for k in ("threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy",
                                          "tp", "fp", "tn", "fn")}
    c = confusion(y_true, y_score, threshold)
    sens, ppv = _ratio(c.tp, c.tp + c.fn), _ratio(c.tp, c.tp + c.fp)
    f1 = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "ppv": ppv,
        "npv": _ratio(c.tn, c.tn + c.fn),
        "f1": f1,
        "accuracy": _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
        **{k: float(v) for k, v in asdict(c).items()},
    }


def macro_sens_spec(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray | float = 0.5) -> tuple[float, float]:
    """Mean sensitivity and specificity over labels (labels without positives/negatives are skipped)."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    th = np.broadcast_to(np.asarray(thresholds, dtype=float), (y_true.shape[1],))
    stats = [binary_stats(y_true[:, j], y_score[:, j], th[j]) for j in range(y_true.shape[1])]
    if all(np.isnan(s["sensitivity"]) for s in stats):
        return float("nan"), float("nan")
    return float(np.nanmean([s["sensitivity"] for s in stats])), float(np.nanmean([s["specificity"] for s in stats]))


def roc_curve(y_true: np.ndarray, y_score: np.ndarray,
              drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ``roc_curve``, imported on first use: sklearn takes about a second to import, and the app's
    first page draws no curve."""
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    return sklearn_roc_curve(y_true, y_score, drop_intermediate=drop_intermediate)


def roc(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, list[float]]:
    """One label's ROC curve as lists, thresholds capped at 1 (sklearn puts an infinite one first)."""
    fpr, tpr, thr = roc_curve(np.asarray(y_true).ravel(), np.asarray(y_score).ravel())
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.minimum(thr, 1.0).tolist()}


def threshold_youden(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (0.5 if the label has one class only), with
    no evidence rule: the app's rule before :func:`operating_point`, kept to measure what that rule did."""
    y_true = np.asarray(y_true).ravel()
    if y_true.min() == y_true.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, np.asarray(y_score).ravel())
    i = int(np.argmax(tpr - fpr))
    return float(min(thr[i], 1.0))


# ---- operating thresholds with evidence ---------------------------------------------------------------------------

MIN_POSITIVES = 10  # a threshold chosen on fewer held-out positives than this is noise (Pneumothorax: 4 -> sens 0.26-0.87)
YOUDEN, SENSITIVITY, SPECIFICITY, FIXED = "youden", "sensitivity", "specificity", "fixed"


@dataclass(frozen=True)
class OperatingPoint:
    """A label's threshold and the evidence behind it, on the split it was chosen on: ``threshold`` is None when no
    call can be made (``reason`` says why); ``reached`` is False when a target rule could not meet its target."""

    rule: str
    target: float | None
    threshold: float | None
    positives: int
    negatives: int
    sensitivity: float | None = None
    specificity: float | None = None
    ppv: float | None = None
    reached: bool = True
    reason: str | None = None
    auc_ci: tuple[float, float] | None = None  # the label's AUC interval on the same data, where it was measured

    @property
    def value(self) -> float:
        """The threshold as a number for calls: NaN when none (a NaN threshold makes no call)."""
        return float("nan") if self.threshold is None else self.threshold

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingPoint":
        ci = d.get("auc_ci")
        return cls(**{**d, "auc_ci": None if ci is None else (float(ci[0]), float(ci[1]))})


def threshold_refusal(threshold: float, y_score: np.ndarray) -> str | None:
    """Why a threshold cannot be used, or None: 0 or 1 (every or no image called), or outside the observed scores
    (it would call all or none of the images it was chosen on)."""
    s = np.asarray(y_score, dtype=float).ravel()
    if not np.isfinite(threshold) or threshold <= 0 or threshold >= 1:
        return f"threshold {threshold:.3g} is at or beyond 0 or 1"
    if threshold > s.max():
        return f"threshold {threshold:.3g} is above every observed score (max {s.max():.3g}): it would never call"
    if threshold <= s.min():
        return f"threshold {threshold:.3g} is at or below every observed score (min {s.min():.3g}): it would call all"
    return None


def _candidate(y_true: np.ndarray, y_score: np.ndarray, rule: str, target: float | None) -> tuple[float, bool]:
    """The threshold a rule picks (possibly one to refuse) and whether its target is met there."""
    if rule == FIXED:
        return float(target), True
    fpr, tpr, thr = roc_curve(y_true, y_score, drop_intermediate=False)
    thr = np.where(np.isfinite(thr), thr, np.inf)
    if rule == YOUDEN:
        return float(thr[int(np.argmax(tpr - fpr))]), True
    if rule == SENSITIVITY:
        ok = np.flatnonzero(tpr >= target)
        return float(thr[ok[0]]), True  # tpr reaches 1 at the lowest positive score, so some threshold always does
    if rule == SPECIFICITY:
        ok = np.flatnonzero((1 - fpr >= target) & np.isfinite(thr))
        return (float(thr[ok[-1]]), True) if len(ok) else (float("inf"), False)
    raise ValueError(f"unknown threshold rule {rule!r}")


NO_SEPARATION = "the score does not separate positives from negatives (its AUC's 95 % CI includes 0.5)"


def label_auc_ci(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000,
                 seed: int = 0, min_positives: int = MIN_POSITIVES) -> tuple[float, float] | None:
    """One label's 95 % bootstrap AUC interval (over patients when ``groups`` is given); None below
    ``min_positives`` positives or without both classes."""
    y = np.asarray(y_true).ravel()[:, None]
    return auc_intervals(y, np.asarray(y_score, dtype=float).ravel()[:, None], TASK_MULTILABEL, n_boot,
                         seed=seed, groups=groups, min_positives=min_positives).per_column[0]


def operating_point(y_true: np.ndarray, y_score: np.ndarray, rule: str = YOUDEN, target: float | None = None,
                    min_positives: int = MIN_POSITIVES, groups: np.ndarray | None = None,
                    n_boot: int = 1000) -> OperatingPoint:
    """A label's threshold by ``rule`` (Youden J, lowest sensitivity >= target, specificity >= target, or a fixed
    value) with its sensitivity, specificity and PPV on the same data, refused with a reason where it lies at 0, 1
    or outside the observed scores. A rule-chosen threshold (a fixed one is not estimated) is also refused where it
    rests on fewer than ``min_positives`` positives, or where the label's bootstrap AUC interval (over ``groups``,
    each image's patient, where given) includes 0.5: a threshold on a score that does not rank positives above
    negatives calls findings at random (weak models called 6-9 of 14 labels per film that way, 4-10 % of them
    true)."""
    y, s = np.asarray(y_true).ravel() > 0.5, np.asarray(y_score, dtype=float).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    base = dict(rule=rule, target=target, positives=n_pos, negatives=n_neg)
    if rule != FIXED:
        if n_pos < min_positives or n_neg == 0:
            why = f"too few positives (n={n_pos})" if n_pos < min_positives else "no negatives"
            return OperatingPoint(threshold=None, reached=False, reason=why, **base)
        base["auc_ci"] = ci = label_auc_ci(y, s, groups, n_boot, min_positives=min_positives)
        if ci is None or ci[0] <= 0.5:
            return OperatingPoint(threshold=None, reached=False, reason=NO_SEPARATION, **base)
    threshold, reached = _candidate(y, s, rule, target)
    refusal = threshold_refusal(threshold, s)
    if refusal:
        return OperatingPoint(threshold=None, reached=False,
                              reason=refusal if reached else f"target {target:.2f} cannot be reached", **base)
    return replace(point_at(y, s, threshold, rule, target), reached=reached, auc_ci=base.get("auc_ci"))


def point_at(y_true: np.ndarray, y_score: np.ndarray, threshold: float, rule: str = FIXED,
             target: float | None = None) -> OperatingPoint:
    """The evidence at a given threshold, used as given (a user's choice): sensitivity, specificity and PPV on
    (``y_true``, ``y_score``) and the positives behind them; see :func:`threshold_refusal` for whether data supports
    it."""
    y = np.asarray(y_true).ravel() > 0.5
    st = binary_stats(y, y_score, threshold)
    return OperatingPoint(rule, target, float(threshold), int(y.sum()), int((~y).sum()), st["sensitivity"],
                          st["specificity"], None if np.isnan(st["ppv"]) else st["ppv"])


def op_norm(y_score: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Scores rescaled piecewise linearly so each column's threshold sits at 0.5 (torchxrayvision's ``op_norm``):
    [0, t] -> [0, 0.5], [t, 1] -> [0.5, 1], so a value means the same call in every column; NaN where there is no
    threshold."""
    p = np.asarray(y_score, dtype=float)
    t = np.broadcast_to(np.asarray(thresholds, dtype=float), p.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(p < t, p / (2 * t), 1 - (1 - p) / (2 * (1 - t)))
    return np.where(np.isfinite(t), out, np.nan)


def false_calls_per_film(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray,
                         normal_only: bool = True) -> float:
    """Mean number of false positive calls per film at per-label thresholds (NaN: no call), over the films with no
    positive label (``normal_only``) or over all films: what a reader should expect on a normal film."""
    y, p = _as2d(y_true) > 0.5, _as2d(y_score)
    calls = p >= np.asarray(thresholds, dtype=float)[None, :]  # NaN compares False: no call
    rows = ~y.any(1) if normal_only else np.ones(len(y), bool)
    return float((calls & ~y)[rows].sum(1).mean()) if rows.any() else float("nan")


def exact_match_ratio(y_true: np.ndarray, y_score: np.ndarray, threshold: float | np.ndarray = 0.5) -> float:
    """Share of images whose every label call is right (subset accuracy)."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    return float(((y_score >= threshold) == (y_true > 0.5)).all(1).mean())


def hamming_loss(y_true: np.ndarray, y_score: np.ndarray, threshold: float | np.ndarray = 0.5) -> float:
    """Share of wrong label calls."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    return float(((y_score >= threshold) != (y_true > 0.5)).mean())


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_score: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric`` over images (resamples where the metric is undefined are dropped)."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            v = metric(y_true[idx], y_score[idx])
        except ValueError:
            continue
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---- vectorised bootstrap of AUCs: over images or over patients -----------------------------------------------------
# One sort per label, then every resample at once as a row of draw counts (a weighted Mann-Whitney U), so 1000
# resamples of a 22,433 x 14 split take seconds instead of a Python loop over 1000 AUC calls.

BOOTSTRAP_CHUNK = 64  # resamples per block of counts: (64, n) float64, 11 MB at n = 22,433


def resample_counts(n: int, n_boot: int, seed: int = 0, groups: np.ndarray | None = None,
                    chunk: int = BOOTSTRAP_CHUNK):
    """Blocks of (b, n) draw counts, one row per resample. Images are drawn with replacement, exactly the draws of
    :func:`bootstrap_ci` with the same seed; with ``groups`` (a patient id per image) patients are drawn with
    replacement and each drawn patient brings all of its images, as often as it is drawn (a cluster bootstrap:
    images of one patient are not independent evidence)."""
    rng = np.random.default_rng(seed)
    inverse = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    units = n if inverse is None else int(inverse.max()) + 1
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, units, (b, units)) + units * np.arange(b)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * units).reshape(b, units).astype(float)
        yield counts if inverse is None else counts[:, inverse]


def _auc_columns(y_true: np.ndarray, y_score: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """The (labels, scores) columns whose mean AUC is :func:`get_auc`: every label (multi-label), the positive column
    (binary), one-vs-rest per class (multi-class)."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    if task == TASK_MULTILABEL:
        return y_true > 0.5, y_score
    if task == TASK_BINARY:
        return y_true[:, :1] > 0.5, y_score[:, -1:]
    return label_columns(y_true, TASK_MULTICLASS, y_score.shape[1]) > 0.5, y_score


def bootstrap_aucs(y_true: np.ndarray, y_score: np.ndarray, task: str = TASK_MULTILABEL, n_boot: int = 1000,
                   seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """(n_boot, columns) AUC of every :func:`_auc_columns` column in every resample of :func:`resample_counts`;
    NaN where a resample holds no positive or no negative of that column. Ties count one half, as in sklearn.

    Per column the scores are sorted once; a resample's AUC is then sum over positives of weight x (negative weight
    below its score + half the negative weight tied with it), read off one cumulative sum over the negatives."""
    y, s = _auc_columns(y_true, y_score, task)
    n = len(y)
    cols = []
    for j in range(y.shape[1]):
        order = np.argsort(s[:, j], kind="stable")
        ss, pos = s[order, j], y[order, j]
        first = np.r_[True, ss[1:] != ss[:-1]]
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        neg_before = np.r_[0, np.cumsum(~pos)]  # negatives at sorted positions < k
        lo = neg_before[starts[group]][pos]  # per positive: negatives below its tie group, and up to its end
        hi = neg_before[np.r_[starts[1:], n][group]][pos]
        cols.append((order[pos], order[~pos], lo, hi))
    out = []
    for w in resample_counts(n, n_boot, seed, groups):
        w = w.astype(np.float32)  # counts: exact in float32, and half the memory traffic
        block = np.empty((len(w), y.shape[1]))
        for j, (pos_idx, neg_idx, lo, hi) in enumerate(cols):
            c = np.zeros((len(w), len(neg_idx) + 1), np.float32)
            np.cumsum(w[:, neg_idx], axis=1, out=c[:, 1:])
            wp = w[:, pos_idx]
            num = 0.5 * np.einsum("bp,bp->b", wp, c[:, lo] + c[:, hi], dtype=np.float64)
            n_pos, n_neg = wp.sum(1, dtype=np.float64), c[:, -1].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                block[:, j] = np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)
        out.append(block)
    return np.concatenate(out) if out else np.empty((0, y.shape[1]))


@dataclass(frozen=True)
class AucIntervals:
    """Percentile bootstrap intervals of the macro AUC and of each column's AUC.

    The macro AUC is the mean over the columns that have both classes in the full split, the set
    :func:`get_auc` averages, and that set never changes: a resample in which one of those columns lacks a positive
    or a negative is dropped (and counted) rather than averaged over fewer labels. A column's own interval is given
    only where it has at least ``MIN_POSITIVES`` positives; with fewer it is None (too few to say)."""

    macro: tuple[float, float] | None
    per_column: list[tuple[float, float] | None]
    unit: str  # "patient" or "image": what was resampled
    kept: int  # resamples that had both classes of every column in the macro
    dropped: int

    def to_dict(self) -> dict:
        return {"unit": self.unit, "resamples": self.kept, "dropped": self.dropped}


def _percentiles(v: np.ndarray, alpha: float) -> tuple[float, float] | None:
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def auc_intervals(y_true: np.ndarray, y_score: np.ndarray, task: str = TASK_MULTILABEL, n_boot: int = 1000,
                  alpha: float = 0.05, seed: int = 0, groups: np.ndarray | None = None,
                  min_positives: int = MIN_POSITIVES) -> AucIntervals:
    """Bootstrap CIs of the macro AUC and per-column AUCs (see :class:`AucIntervals`), over patients when ``groups``
    gives each image's patient, over images otherwise."""
    y, _ = _auc_columns(y_true, y_score, task)
    aucs = bootstrap_aucs(y_true, y_score, task, n_boot, seed, groups)
    in_macro = (y.sum(0) > 0) & ((~y).sum(0) > 0)
    whole = np.isfinite(aucs[:, in_macro]).all(1) if in_macro.any() else np.zeros(len(aucs), bool)
    macro = _percentiles(aucs[whole][:, in_macro].mean(1), alpha) if whole.any() else None
    per = [_percentiles(aucs[:, j], alpha) if y[:, j].sum() >= min_positives and in_macro[j] else None
           for j in range(y.shape[1])]
    return AucIntervals(macro, per, "image" if groups is None else "patient", int(whole.sum()),
                        int(len(aucs) - whole.sum()))


def paired_auc_diff(y_true: np.ndarray, score_a, score_b, task: str = TASK_MULTILABEL,
                    n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                    groups: np.ndarray | None = None) -> dict[str, float]:
    """Macro AUC of a minus that of b on the same resamples (of patients when ``groups`` is given), with a paired
    percentile CI and the share of resamples in which a is not better (a one-sided bootstrap p-value); the macro's
    label set is fixed as in :class:`AucIntervals`. The vectorised, patient-aware :func:`paired_bootstrap_diff`.
    ``score_a`` / ``score_b`` may each be a list of score arrays (seeds of one model): a resample's macro AUC is then
    their mean, so seed noise and sampling noise both enter the interval."""
    sa, sb = ([s] if np.ndim(s) < 3 else list(s) for s in (score_a, score_b))
    y, _ = _auc_columns(y_true, sa[0], task)
    in_macro = (y.sum(0) > 0) & ((~y).sum(0) > 0)

    def macro(scores: list) -> np.ndarray:  # (n_boot,) seed-mean macro AUC per resample; NaN where not whole
        per = np.stack([bootstrap_aucs(y_true, s, task, n_boot, seed, groups)[:, in_macro] for s in scores])
        return np.where(np.isfinite(per).all((0, 2)), per.mean(2).mean(0), np.nan)

    a, b = macro(sa), macro(sb)  # a and b share the resamples, so the same ones are whole
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    lo, hi = _percentiles(d, alpha) or (float("nan"), float("nan"))
    point = np.mean([get_auc(y_true, s, task) for s in sa]) - np.mean([get_auc(y_true, s, task) for s in sb])
    return {"diff": float(point), "ci_low": lo, "ci_high": hi,
            "p_not_better": float(np.mean(d <= 0)) if len(d) else float("nan"),
            "resamples": int(len(d)), "unit": "image" if groups is None else "patient"}


def roc_band(
    y_true: np.ndarray, y_score: np.ndarray, n_boot: int = 200, alpha: float = 0.05, seed: int = 0
) -> dict[str, list[float]]:
    """ROC curve plus a bootstrap band of TPR on a fixed FPR grid, for drawing confidence bands."""
    y_true, y_score = np.asarray(y_true).ravel(), np.asarray(y_score).ravel()
    grid = np.linspace(0, 1, 101)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        if y_true[idx].min() == y_true[idx].max():
            continue
        f, t, _ = roc_curve(y_true[idx], y_score[idx])
        curves.append(np.interp(grid, f, t))
    lo, hi = (np.quantile(curves, [alpha / 2, 1 - alpha / 2], axis=0) if curves else (grid * np.nan, grid * np.nan))
    return {**roc(y_true, y_score), "grid": grid.tolist(), "tpr_lo": np.asarray(lo).tolist(),
            "tpr_hi": np.asarray(hi).tolist()}


def pr_curve(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, list[float]]:
    """Precision-recall curve of one label."""
    from sklearn.metrics import precision_recall_curve  # on first use, as roc_curve

    p, r, t = precision_recall_curve(np.asarray(y_true).ravel(), np.asarray(y_score).ravel())
    return {"precision": p.tolist(), "recall": r.tolist(), "thresholds": t.tolist()}


def reliability(y_true: np.ndarray, y_score: np.ndarray, n_bins: int = 10) -> dict[str, list[float] | float]:
    """Reliability bins (mean confidence, observed frequency, count) and expected calibration error.

    All labels' probabilities are pooled (multi-label calibration); equal-width bins over [0, 1].
    """
    t, s = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_score, dtype=float).ravel()
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.clip(np.digitize(s, edges[1:-1]), 0, n_bins - 1)
    conf, freq, count = [], [], []
    ece = 0.0
    for k in range(n_bins):
        m = b == k
        n = int(m.sum())
        count.append(n)
        conf.append(float(s[m].mean()) if n else float("nan"))
        freq.append(float(t[m].mean()) if n else float("nan"))
        if n:
            ece += n / len(s) * abs(conf[-1] - freq[-1])
    return {"edges": edges.tolist(), "confidence": conf, "frequency": freq, "count": count, "ece": float(ece)}


def expected_calibration_error(y_true: np.ndarray, y_score: np.ndarray, n_bins: int = 10) -> float:
    return float(reliability(y_true, y_score, n_bins)["ece"])


def prior_shift(y_score: np.ndarray, source: np.ndarray, target: np.ndarray, exclusive: bool) -> np.ndarray:
    """Probabilities moved from one class mix to another by Bayes' rule (Saerens et al. 2002): each class's odds
    scale by target / source. ``exclusive``: one class per image (rows renormalised); else each column is its own
    yes / no. Used to ask whether a calibration miss is the class mix alone: it needs the target mix, so it is a
    diagnostic on labelled data, never what the app serves."""
    p = np.clip(np.asarray(y_score, dtype=float), 1e-12, 1 - 1e-12)
    s, t = (np.clip(np.asarray(v, dtype=float), 1e-12, 1 - 1e-12) for v in (source, target))
    if exclusive:
        w = p * (t / s)
        return w / w.sum(axis=1, keepdims=True)
    odds = p / (1 - p) * (t / (1 - t)) / (s / (1 - s))
    return odds / (1 + odds)


def ece_ci(y_true: np.ndarray, y_score: np.ndarray, n_bins: int = 10, n_boot: int = 1000, alpha: float = 0.05,
           seed: int = 0, groups: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`expected_calibration_error` (all labels pooled), over images or, with
    ``groups``, over patients: a test ECE of 0.06 on a few hundred films may not differ from a 0.05 target.
    An image's labels move together: ECE is sum over bins of |sum of (score - label)| / entries, so each image
    contributes one row of per-bin residual sums and every resample is a weighted sum of those rows."""
    t, s = _as2d(y_true).astype(float), _as2d(y_score).astype(float)
    bins = np.clip(np.digitize(s, np.linspace(0, 1, n_bins + 1)[1:-1]), 0, n_bins - 1)
    residual = np.zeros((len(s), n_bins))
    for k in range(n_bins):
        residual[:, k] = np.where(bins == k, s - t, 0.0).sum(axis=1)
    eces = np.concatenate([np.abs(w @ residual).sum(axis=1) / (w.sum(axis=1) * s.shape[1])
                           for w in resample_counts(len(s), n_boot, seed, groups)])
    lo, hi = np.quantile(eces, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---- multi-class (one class per image, predicted by argmax) ---------------------------------------------------------

def class_indices(y_true: np.ndarray) -> np.ndarray:
    """Class indices (N,) from (N,) or MedMNIST's (N, 1) labels."""
    return np.asarray(y_true).reshape(len(y_true), -1)[:, 0].astype(int)


def class_confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows the true class and columns the predicted one (scikit-learn's confusion_matrix)."""
    out = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(out, (class_indices(y_true), class_indices(y_pred)), 1)
    return out


def precision_recall_f1(cm: np.ndarray, average: str = "macro") -> tuple[float, float, float]:
    """Precision, recall and F1 from a confusion matrix, macro (mean over classes; a class never predicted or never
    present counts 0, as scikit-learn's zero_division=0) or micro (pooled counts, = accuracy for one class per image)."""
    tp, pred, true = np.diag(cm).astype(float), cm.sum(0).astype(float), cm.sum(1).astype(float)
    if average == "micro":
        tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)
    elif average != "macro":
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(pred > 0, tp / pred, 0.0)
        r = np.where(true > 0, tp / true, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(p.mean()), float(r.mean()), float(f.mean())


def auc_ovr(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """One-vs-rest ROC AUC, the unweighted mean over classes (scikit-learn's multi_class="ovr", average="macro";
    MedMNIST's getAUC for multi-class); classes absent from ``y_true`` are skipped."""
    y_score = _as2d(y_score)
    return float(np.nanmean(auc_per_label(label_columns(y_true, TASK_MULTICLASS, y_score.shape[1]), y_score)))


def multiclass_summary(y_true: np.ndarray, y_score: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro and micro precision / recall / F1, one-vs-rest AUC, the confusion matrix and per-class
    sensitivity, specificity, precision and support, with the class of highest probability as the prediction."""
    y_score = _as2d(y_score)
    cm = class_confusion(y_true, y_score.argmax(1), y_score.shape[1])
    n = cm.sum()
    per_class = {}
    for k, name in enumerate(class_names):
        tp, fn, fp = cm[k, k], cm[k].sum() - cm[k, k], cm[:, k].sum() - cm[k, k]
        tn = n - tp - fn - fp
        per_class[name] = {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
                           "precision": _ratio(tp, tp + fp), "support": int(tp + fn)}
    (p_ma, r_ma, f_ma), (p_mi, r_mi, f_mi) = precision_recall_f1(cm, "macro"), precision_recall_f1(cm, "micro")
    return {"accuracy": _ratio(np.trace(cm), n), "precision_macro": p_ma, "recall_macro": r_ma, "f1_macro": f_ma,
            "precision_micro": p_mi, "recall_micro": r_mi, "f1_micro": f_mi, "auc_ovr": auc_ovr(y_true, y_score),
            "confusion": cm.tolist(), "per_class": per_class}


def summarize(
    y_true: np.ndarray,
    y_score: np.ndarray,
    label_names: list[str],
    task: str = TASK_MULTILABEL,
    thresholds: list[float] | None = None,
    n_boot: int = 1000,
    groups: np.ndarray | None = None,
) -> dict:
    """Everything a model card stores for one split: macro metrics with CIs and per-label metrics at thresholds;
    a multi-class task adds :func:`multiclass_summary` (argmax calls, confusion matrix).

    The CIs resample patients when ``groups`` gives each image's patient (images otherwise), under the fixed-label-set
    rule of :class:`AucIntervals` (``auc_macro_ci_bootstrap`` says what was resampled and how many resamples were
    kept). A label with fewer than ``MIN_POSITIVES`` positives gets no AUC and no CI, only ``too_few``."""
    y_true, y_score = _as2d(y_true), _as2d(y_score)
    if task != TASK_MULTILABEL:  # binary and multi-class keep a column per class; label stats are one-vs-rest
        y_cols = label_columns(y_true, task, y_score.shape[1])
    else:
        y_cols = y_true
    th = np.asarray(thresholds if thresholds is not None else [0.5] * y_cols.shape[1], dtype=float)
    auc = get_auc(y_true, y_score, task)
    ci = auc_intervals(y_true, y_score, task, n_boot, groups=groups)
    per_ci = ci if task == TASK_MULTILABEL else auc_intervals(y_cols, y_score, TASK_MULTILABEL, n_boot, groups=groups)
    sens, spec = macro_sens_spec(y_cols, y_score, th)  # over labels with a threshold (NaN: no call)
    has = np.isfinite(th)
    per_auc = auc_per_label(y_cols, y_score)
    per_label = {}
    for j, name in enumerate(label_names):
        st = binary_stats(y_cols[:, j], y_score[:, j], th[j])
        if not np.isfinite(th[j]):  # no call: no threshold and no counts (null in the card), rates NaN
            st.update({k: None for k in ("threshold", "tp", "fp", "tn", "fn")})
        st["positives"] = int(y_cols[:, j].sum())
        st["too_few"] = st["positives"] < MIN_POSITIVES
        st["auc"] = None if st["too_few"] or np.isnan(per_auc[j]) else float(per_auc[j])
        st["auc_ci"] = list(per_ci.per_column[j]) if per_ci.per_column[j] and not st["too_few"] else None
        per_label[name] = st
    return {
        "n": int(len(y_true)),
        "auc_macro": auc,
        "auc_macro_ci": list(ci.macro) if ci.macro else None,
        "auc_macro_ci_bootstrap": ci.to_dict(),
        "acc": get_acc(y_true, y_score, task),
        "sensitivity_macro": sens,
        "specificity_macro": spec,
        "exact_match": exact_match_ratio(y_cols[:, has], y_score[:, has], th[has]) if has.any() else None,
        "hamming_loss": hamming_loss(y_cols[:, has], y_score[:, has], th[has]) if has.any() else None,
        "ece": expected_calibration_error(y_cols, y_score),
        "per_label": per_label,
        **(multiclass_summary(y_true, y_score, list(label_names)) if kind_of(task) == "multi-class" else {}),
    }


def paired_bootstrap_diff(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """metric(a) - metric(b) on the same images, with a paired percentile-bootstrap CI and the share of
    resamples in which a is not better (a one-sided bootstrap p-value)."""
    rng = np.random.default_rng(seed)
    n, diffs = len(y_true), []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        d = metric(y_true[idx], score_a[idx]) - metric(y_true[idx], score_b[idx])
        if np.isfinite(d):
            diffs.append(d)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(metric(y_true, score_a) - metric(y_true, score_b)), "ci_low": float(lo),
            "ci_high": float(hi), "p_not_better": float(np.mean(np.asarray(diffs) <= 0))}
