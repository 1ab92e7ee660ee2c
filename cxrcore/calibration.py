"""Calibration of stored scores into probabilities that mean what they say, fitted on held-out predictions.

A model trained with BCE and positive weight w learns odds inflated by w (the loss counts each positive w times), so
its sigmoid outputs overstate every finding: test ECE 0.22-0.37 on the shipped NIH models. The correction starts from
that known prior, ``logit - log(w)`` per label, then fits a Platt scaling ``a * z + b`` on the corrected logit ``z``
with a Gaussian prior that pulls ``(log a, b)`` towards the identity ``(0, 0)``: a label with 1-4 held-out positives
carries little evidence and stays near the prior correction, a label with many moves to its own fit. Softmax models
(binary and multi-class tasks, trained without a positive weight) get one temperature, fitted only where the held-out
set has at least ``MIN_ERRORS`` misclassified images: on a set the model separates (blood cells' validation, carved
from augmentations of the training crops: 4 errors in 996) the NLL keeps falling as the temperature falls, so the
"fit" is set by a handful of images and sharpens a model that is not that sure elsewhere; it stays at 1 and says so.

Plain arrays in, plain numbers out; :class:`Calibration` is what a card stores (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar

PLATT, TEMPERATURE = "platt", "temperature"
STRENGTHS = (1.0, 2.0, 5.0, 10.0, 20.0)  # candidate prior precisions on (log a, b), in units of held-out positives
PRIOR_STRENGTH = 10.0  # the default when the held-out set is too small to choose one by cross-validation
MIN_ERRORS = 10  # held-out misclassifications a temperature needs, as a threshold needs 10 positives (metrics)
_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def prior_shift(pos_weight: float | str | None, train_positives: Sequence[int], n_train: int) -> list[float]:
    """log(pos_weight) per label: what BCE with that weight adds to every logit. ``"balanced"`` is the engine's
    negatives/positives per label of the training split; None (unknown or no weight) is no shift."""
    k = len(train_positives)
    if pos_weight is None:
        return [0.0] * k
    if pos_weight == "balanced":
        pos = np.maximum(np.asarray(train_positives, dtype=float), 1)
        return np.log((n_train - pos) / pos).tolist()
    return [float(np.log(float(pos_weight)))] * k


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: per label ``sigmoid(slope * (logit(p) - shift) + intercept)``, or for softmax models
    ``softmax(log(p) / temperature)``; with what it was fitted on."""

    kind: str
    shift: tuple[float, ...] = ()
    slope: tuple[float, ...] = ()
    intercept: tuple[float, ...] = ()
    temperature: float = 1.0
    fitted_on: str = "val"
    n: int = 0
    positives: tuple[int, ...] = ()
    prior_strength: float = PRIOR_STRENGTH
    errors: int | None = None  # held-out misclassifications behind a temperature (None: not recorded, Platt)
    note: str = ""  # why the fit is the identity, where it is

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Raw model probabilities (N, outputs) -> calibrated probabilities, float32 as stored."""
        p = np.asarray(probs, dtype=np.float64)
        if self.kind == TEMPERATURE:
            out = softmax(np.log(np.clip(p, _EPS, 1)) / self.temperature)
        elif self.kind == PLATT:
            z = logit(p) - np.asarray(self.shift)
            out = sigmoid(np.asarray(self.slope) * z + np.asarray(self.intercept))
        else:
            raise ValueError(f"unknown calibration kind {self.kind!r}")
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Calibration":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _platt_label(y: np.ndarray, z: np.ndarray, strength: float) -> tuple[float, float]:
    """MAP (slope, intercept) of a logistic fit of ``y`` on ``z``, slope = exp(s) > 0 so the map stays monotone,
    with the penalty ``strength / 2 * (s^2 + b^2)``."""

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s, b = theta
        a = np.exp(s)
        u = a * z + b
        nll = np.sum(np.logaddexp(0, u) - y * u)  # -sum[y log sigmoid(u) + (1-y) log(1-sigmoid(u))]
        r = sigmoid(u) - y
        grad = np.array([np.sum(r * z) * a + strength * s, np.sum(r) + strength * b])
        return nll + 0.5 * strength * (s * s + b * b), grad

    res = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-3, 3), (-10, 10)])
    return float(np.exp(res.x[0])), float(res.x[1])


def fit_platt(y: np.ndarray, probs: np.ndarray, shift: Sequence[float], strength: float = PRIOR_STRENGTH,
              fitted_on: str = "val") -> Calibration:
    """Per-label Platt scaling on the prior-corrected logit, shrunk towards that correction (multi-label models)."""
    y, p = np.asarray(y, dtype=float) > 0.5, np.asarray(probs, dtype=float)
    z = logit(p) - np.asarray(shift, dtype=float)
    fits = [_platt_label(y[:, j].astype(float), z[:, j], strength) for j in range(p.shape[1])]
    return Calibration(PLATT, tuple(float(s) for s in shift), tuple(a for a, _ in fits), tuple(b for _, b in fits),
                       fitted_on=fitted_on, n=len(p), positives=tuple(int(v) for v in y.sum(0)),
                       prior_strength=strength)


def fit_temperature(y_class: np.ndarray, probs: np.ndarray, fitted_on: str = "val",
                    min_errors: int = MIN_ERRORS) -> Calibration:
    """One temperature for a softmax model (``y_class``: the class index per image), by held-out NLL; 1 (the raw
    softmax), with a note, where fewer than ``min_errors`` held-out images are misclassified (see the module)."""
    idx = np.asarray(y_class).ravel().astype(int)
    logp = np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1))
    errors = int((logp.argmax(1) != idx).sum())
    counts = tuple(int(c) for c in np.bincount(idx, minlength=logp.shape[1]))
    if errors < min_errors:
        return Calibration(TEMPERATURE, temperature=1.0, fitted_on=fitted_on, n=len(idx), positives=counts,
                           prior_strength=0.0, errors=errors,
                           note=f"not fitted: {errors} misclassified held-out images, a temperature needs "
                                f"{min_errors}; raw softmax served")

    def nll(log_t: float) -> float:
        q = softmax(logp / np.exp(log_t))
        return float(-np.log(np.clip(q[np.arange(len(idx)), idx], _EPS, 1)).sum())

    t = float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))
    return Calibration(TEMPERATURE, temperature=t, fitted_on=fitted_on, n=len(idx), positives=counts,
                       prior_strength=0.0, errors=errors)


def choose_strength(y: np.ndarray, probs: np.ndarray, shift: Sequence[float], k: int = 5, seed: int = 0,
                    grid: Sequence[float] = STRENGTHS) -> float:
    """The prior strength with the lowest k-fold cross-validated NLL of the held-out set itself (all labels
    pooled), so how far labels may move from the prior correction is chosen without touching the test split."""
    y, p = np.asarray(y, dtype=float), np.asarray(probs, dtype=float)
    if len(p) < 5 * k:
        return PRIOR_STRENGTH
    fold = np.random.default_rng(seed).permutation(len(p)) % k
    scores = []
    for strength in grid:
        nll = 0.0
        for f in range(k):
            cal = fit_platt(y[fold != f], p[fold != f], shift, strength)
            q = np.clip(cal.apply(p[fold == f]).astype(float), _EPS, 1 - _EPS)
            yf = y[fold == f] > 0.5
            nll -= float(np.sum(np.where(yf, np.log(q), np.log1p(-q))))
        scores.append(nll)
    return float(grid[int(np.argmin(scores))])


def fit(y: np.ndarray, probs: np.ndarray, multilabel: bool, shift: Sequence[float] | None = None,
        fitted_on: str = "val") -> Calibration:
    """The calibration of a model from its held-out labels and raw probabilities: Platt on the prior-corrected
    logit per label, shrunk with a cross-validated strength (multi-label, ``y`` one column per label), else one
    temperature (``y`` the class index)."""
    if multilabel:
        shift = shift if shift is not None else [0.0] * np.shape(probs)[1]
        return fit_platt(y, probs, shift, choose_strength(y, probs, shift), fitted_on)
    return fit_temperature(y, probs, fitted_on)


ECE_TARGET = 0.05  # what a served probability may be off by, on average, on the test split


@dataclass(frozen=True)
class CalibrationCheck:
    """How far a model's served probabilities were from the observed rates on its test split: pooled ECE and its
    95 % bootstrap CI over test patients (else images), against :data:`ECE_TARGET`."""

    model: str
    ece: float
    lo: float
    hi: float
    target: float = ECE_TARGET

    @property
    def verdict(self) -> str:
        """``held`` (the CI lies at or under the target), ``missed`` (wholly above it) or ``unsettled``."""
        return "held" if self.hi <= self.target else "missed" if self.lo > self.target else "unsettled"

    def describe(self) -> str:
        return f"{self.model}: test ECE {self.ece:.3f}, 95 % CI {self.lo:.3f}-{self.hi:.3f}"
