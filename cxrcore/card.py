"""The model card: one typed record per trained model, built, checked, written and read only here.

On disk a card is ``card.json``. :meth:`Card.from_dict` migrates older schema versions, checks every field's type and
bounds (a threshold of 0, an AUC of 3, a 10^9 px input size, a label count that does not match) and refuses a bad card
with a :class:`CardError` naming the field and the command that rebuilds the model, so a damaged or hand-edited card
never reaches the app's pages. :meth:`Card.to_dict` is the one writer. Fields this version does not know are kept in
``extra`` (at the top level, in the dataset record and in each split's metrics) and written back unchanged, so what a
newer writer adds survives a round trip through older code.

Schema versions: 1 is every card written before versioning (no ``schema_version`` key); 2 has the same layout plus
``schema_version`` and an optional ``calibration`` entry.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

SCHEMA_VERSION = 2
MAX_SIDE = 4096  # px: largest image or model input side a card may claim (the zoo's largest input is 224)
MAX_CHANNELS = 4
MAX_LABELS = 1000
MAX_WEIGHTS_BYTES = 4 << 30
SPLITS = ("val", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A checkpoint that is missing, broken or does not match its card."""


class CardError(CheckpointError):
    """A card.json that is not a valid card (wrong shape, out-of-range values, unknown schema version)."""


class _Invalid(CardError):
    """One field's problem, raised while reading; :meth:`Card.from_dict` adds the file and the rebuild command."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")


# ---- field readers: each checks one JSON value and returns it as Python ---------------------------------------------

def _obj(v: object, where: str) -> dict:
    if not isinstance(v, Mapping):
        raise _Invalid(where, f"must be an object, not {type(v).__name__}")
    return dict(v)


def _str(v: object, where: str, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise _Invalid(where, f"must be text, not {type(v).__name__}")
    return v


def _int(v: object, where: str, lo: int = 0, hi: int | None = None, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise _Invalid(where, f"must be a whole number, not {v!r}"[:200])
    if v < lo or (hi is not None and v > hi):
        raise _Invalid(where, f"= {v} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    return int(v)


def _num(v: object, where: str, lo: float = -math.inf, hi: float = math.inf, optional: bool = False,
         open_low: bool = False, nan: bool = False) -> float | None:
    """A number in [lo, hi] (``open_low``: lo excluded); null if ``optional``; NaN (undefined, as 0/0) if ``nan``."""
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isinf(float(v)) or (math.isnan(v) and not nan):
        raise _Invalid(where, f"must be a finite number, not {v!r}"[:200])
    v = float(v)
    if math.isnan(v):
        return v
    if v < lo or v > hi or (open_low and v == lo):
        raise _Invalid(where, f"= {v:g} is outside {'(' if open_low else '['}{lo:g}, {hi:g}]")
    return v


def _prob(v: object, where: str, optional: bool = True, nan: bool = False) -> float | None:
    """A rate, AUC or accuracy: in [0, 1]; null or (``nan``) NaN where it is undefined."""
    return _num(v, where, 0.0, 1.0, optional, nan=nan)


def _rate(v: object, where: str) -> float | None:
    """A rate that can be undefined (a PPV with no positive call is 0/0, stored as NaN)."""
    return _prob(v, where, nan=True)


def _threshold(v: object, where: str) -> float | None:
    """An operating threshold: in (0, 1] (1 calls nothing positive, what Youden's J picks when no cut helps), or
    null; 0 would call every image positive and is refused."""
    return _num(v, where, 0.0, 1.0, optional=True, open_low=True)


def _bool(v: object, where: str, optional: bool = True) -> bool | None:
    if v is None and optional:
        return None
    if not isinstance(v, bool):
        raise _Invalid(where, f"must be true or false, not {v!r}"[:200])
    return v


def _list(v: object, where: str, item: Callable[[object, str], Any], length: int | None = None,
          optional: bool = False) -> list | None:
    if v is None and optional:
        return None
    if not isinstance(v, (list, tuple)):
        raise _Invalid(where, f"must be a list, not {type(v).__name__}")
    if length is not None and len(v) != length:
        raise _Invalid(where, f"has {len(v)} entries, expected {length} (one per label)")
    return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]


def _sha(v: object, where: str) -> str | None:
    if v is not None and not (isinstance(v, str) and _SHA256.fullmatch(v)):
        raise _Invalid(where, "must be a sha256 (64 lowercase hex digits) or null")
    return v


def _scalar_map(v: object, where: str) -> dict:
    """A flat object of JSON scalars (hyperparameters, versions)."""
    d = _obj(v, where)
    for k, x in d.items():
        if x is not None and not isinstance(x, (str, bool, int, float)):
            raise _Invalid(f"{where}.{k}", f"must be a plain value, not {type(x).__name__}")
        if isinstance(x, float) and not math.isfinite(x):
            raise _Invalid(f"{where}.{k}", f"must be finite, not {x}")
    return d


def _rest(raw: Mapping, known: tuple[str, ...]) -> dict:
    return {k: v for k, v in raw.items() if k not in known}


def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "extra")


# ---- the parts of a card --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Init:
    """Where a model's starting weights came from; for LoRA, ``lora_base`` names the frozen base (its id, folder
    relative to the checkpoint root, kind, source and sha256)."""

    kind: str  # imagenet | random | checkpoint | lora | ensemble
    source: str  # where the weights came from, in words
    sha256: str | None = None
    lora_base: dict | None = None

    @property
    def from_project(self) -> bool:
        """Whether it starts from one of the project's own checkpoints (directly, or as a LoRA base): a fine-tune,
        pinned by that checkpoint's sha256, not a random or ImageNet start."""
        return self.kind in ("checkpoint", "lora")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object, where: str = "init") -> "Init":
        d = _obj(raw, where)
        base = d.get("lora_base")
        if base is not None:
            b = _obj(base, f"{where}.lora_base")
            _str(b.get("id"), f"{where}.lora_base.id")
            _str(b.get("kind"), f"{where}.lora_base.kind")
            _str(b.get("path"), f"{where}.lora_base.path", optional=True)
            _sha(b.get("sha256"), f"{where}.lora_base.sha256")
        return cls(_str(d.get("kind"), f"{where}.kind"), _str(d.get("source", ""), f"{where}.source"),
                   _sha(d.get("sha256"), f"{where}.sha256"), base)


@dataclass(frozen=True)
class DatasetRecord:
    """Which images a model learnt from: name, image size and channels, the source file's MD5 and a checksum of the
    exact splits, images per split and positives per label and split."""

    name: str
    size: int
    channels: int
    task: str | None = None
    source_md5: str | None = None
    split_checksum: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    prevalence: dict[str, list[int]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: object, n_labels: int, where: str = "dataset") -> "DatasetRecord":
        d = _obj(raw, where)
        counts = {s: _int(n, f"{where}.counts.{s}") for s, n in _obj(d.get("counts", {}), f"{where}.counts").items()}
        prevalence = {s: _list(v, f"{where}.prevalence.{s}", _int, n_labels)
                      for s, v in _obj(d.get("prevalence", {}), f"{where}.prevalence").items()}
        return cls(_str(d.get("name"), f"{where}.name"), _int(d.get("size"), f"{where}.size", 1, MAX_SIDE),
                   _int(d.get("channels"), f"{where}.channels", 1, MAX_CHANNELS),
                   _str(d.get("task"), f"{where}.task", optional=True),
                   _str(d.get("source_md5"), f"{where}.source_md5", optional=True),
                   _str(d.get("split_checksum"), f"{where}.split_checksum", optional=True),
                   counts, prevalence, _rest(d, _names(cls)))

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in _names(type(self))}, **self.extra}

    @property
    def square(self) -> str:
        """How non-square films became square in training (the dataset entry's rule, which inference repeats); cards
        from before the registry were all built with the centre crop."""
        return self.extra.get("square", "crop")


_RATES = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "auc")
_COUNTS = ("tp", "fp", "tn", "fn", "positives")


def _per_label(raw: object, labels: list[str], where: str) -> dict[str, dict]:
    """Per-label statistics at the card's thresholds: one entry per label, rates in [0, 1], counts non-negative."""
    d = _obj(raw, where)
    if d and list(d) != labels:
        raise _Invalid(where, f"names labels {list(d)[:5]}... that are not the card's label_names")
    out = {}
    for name, stats in d.items():
        s, w = _obj(stats, f"{where}.{name}"), f"{where}.{name}"
        for k in _RATES:
            _rate(s.get(k), f"{w}.{k}")
        for k in _COUNTS:
            _num(s.get(k), f"{w}.{k}", 0.0, optional=True)
        _threshold(s.get("threshold"), f"{w}.threshold")
        out[name] = s
    return out


@dataclass(frozen=True, kw_only=True)
class SplitMetrics:
    """One split's numbers: images, macro AUC (MedMNIST getAUC) with its bootstrap CI, accuracy, macro sensitivity and
    specificity at the card's thresholds, calibration error, and per-label statistics."""

    n: int
    auc_macro: float
    auc_macro_ci: tuple[float, float] | None = None
    acc: float
    sensitivity_macro: float | None = None
    specificity_macro: float | None = None
    exact_match: float | None = None
    hamming_loss: float | None = None
    ece: float | None = None
    per_label: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: object, labels: list[str], where: str) -> "SplitMetrics":
        d = _obj(raw, where)
        ci = _list(d.get("auc_macro_ci"), f"{where}.auc_macro_ci", _prob, 2, optional=True)
        if ci is not None and (None in ci or ci[0] > ci[1]):
            raise _Invalid(f"{where}.auc_macro_ci", f"= {ci} is not an interval")
        return cls(n=_int(d.get("n"), f"{where}.n", 1),
                   auc_macro=_prob(d.get("auc_macro"), f"{where}.auc_macro", optional=False),
                   auc_macro_ci=tuple(ci) if ci else None, acc=_prob(d.get("acc"), f"{where}.acc", optional=False),
                   **{k: _rate(d.get(k), f"{where}.{k}") for k in
                      ("sensitivity_macro", "specificity_macro", "exact_match", "hamming_loss", "ece")},
                   per_label=_per_label(d.get("per_label", {}), labels, f"{where}.per_label"),
                   extra=_rest(d, _names(cls)))

    @property
    def ci_unit(self) -> str:
        """What the AUC's bootstrap resampled: "patient" where the split names patients, else "image"."""
        return self.extra.get("auc_macro_ci_bootstrap", {}).get("unit", "image")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in _names(type(self))}
        d["auc_macro_ci"] = list(self.auc_macro_ci) if self.auc_macro_ci else None
        return {**d, **self.extra}


@dataclass(frozen=True)
class Metrics:
    """Validation and test metrics (the test split touched once), and the final train / validation losses.
    ``test`` is None for a cross-validated run until ``train/evaluate_test.py`` has read the test split."""

    val: SplitMetrics
    test: SplitMetrics | None
    train_loss: float | None = None
    val_loss: float | None = None
    extra: dict = field(default_factory=dict)

    def split(self, name: str) -> SplitMetrics | None:
        return {"val": self.val, "test": self.test}[name]

    @classmethod
    def from_dict(cls, raw: object, labels: list[str], where: str = "metrics") -> "Metrics":
        d = _obj(raw, where)
        if "val" not in d:
            raise _Invalid(where, "has no 'val' split")
        return cls(*(SplitMetrics.from_dict(d[s], labels, f"{where}.{s}") if s in d else None for s in SPLITS),
                   *(_num(d.get(k), f"{where}.{k}", 0.0, optional=True) for k in ("train_loss", "val_loss")),
                   _rest(d, _names(cls)))

    def to_dict(self) -> dict:
        losses = {k: v for k, v in (("train_loss", self.train_loss), ("val_loss", self.val_loss)) if v is not None}
        tested = {"test": self.test.to_dict()} if self.test is not None else {}
        return {"val": self.val.to_dict(), **tested, **losses, **self.extra}


# ---- the card -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Card:
    """Everything known about one trained model (or the stored ensemble), in the order card.json lists it."""

    id: str
    arch: str = ""
    family: str = ""
    reference: str | None = None
    order: int | None = None  # sort position among the task's models (zoo order; the ensemble last)
    members: list[str] | None = None  # the ensemble's member ids
    dataset: DatasetRecord
    label_names: list[str]
    task: str  # MedMNIST's task string: "multi-label, binary-class", "binary-class", "multi-class"
    input_size: int | None = None  # model input side in px (None: the ensemble, which has no network)
    normalisation: tuple[float, float] | None = None  # (mean, std) after scaling to [0, 1]
    init: Init
    hparams: dict = field(default_factory=dict)
    config_key: str | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_early: bool | None = None
    resumed_from_epoch: int | None = None
    params_total: int = 0
    params_trainable: int = 0
    train_seconds: float = 0.0
    wall_seconds: float | None = None
    seconds_per_epoch: float | None = None
    hardware: str | None = None
    world_size: int | None = None
    bf16: bool | None = None
    channels_last: bool | None = None
    precision: str | None = None  # bf16 | fp16 | fp32: the training precision (epochs chosen in it; predictions fp32)
    training_setup: dict = field(default_factory=dict)  # hardware class, threads, compile, global batch, scaled lr
    metrics: Metrics
    thresholds: dict[str, list[float | None]] = field(default_factory=dict)  # rule -> one threshold per label
    calibration: dict | None = None
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    created: str | None = None
    rebuild_command: str | None = None
    weights_sha256: str | None = None
    weights_bytes: int | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def rebuild(self) -> str:
        """The command that rebuilds this checkpoint."""
        return self.rebuild_command or default_rebuild_command(self.id)

    @property
    def held_out_auc(self) -> float:
        """The macro AUC a model is ranked and chosen by: pooled out-of-fold when cross-validated, else validation;
        never test."""
        return self.metrics.extra["oof"]["auc_macro"] if self.cross_validated else self.metrics.val.auc_macro

    @property
    def cross_validated(self) -> bool:
        """Whether the held-out figures are pooled out-of-fold ones (``metrics.oof``), not validation ones."""
        return bool(self.metrics.extra.get("oof"))

    @property
    def recipe(self) -> tuple[bool, str, str | None]:
        """What makes two runs of one model the same recipe, seeds apart: cross-validated or not, and the kind of
        start (a project checkpoint or LoRA base: which one, by sha256)."""
        return self.cross_validated, self.init.kind, self.init.sha256 if self.init.from_project else None

    @property
    def held_out_ci(self) -> tuple[float, float] | None:
        """The bootstrap CI of :attr:`held_out_auc`, where the card stores one."""
        oof = self.metrics.extra.get("oof")
        ci = oof.get("auc_macro_ci") if oof else self.metrics.val.auc_macro_ci
        return tuple(ci) if ci else None

    @property
    def not_converged(self) -> str | None:
        """Why the model did not learn, judged on held-out figures only (never test), or None: its held-out AUC CI
        does not exclude chance, or its best held-out epoch was the first of three or more (training never improved
        on one epoch). Such a model is shown as "did not converge", never ranked or chosen as its architecture's
        result."""
        ci = self.held_out_ci
        if ci and ci[0] <= 0.5:
            return f"held-out AUC {self.held_out_auc:.3f} (CI {ci[0]:.3f}-{ci[1]:.3f}) does not exclude chance"
        if self.best_epoch == 1 and (self.epochs_run or 0) >= 3:
            return f"best held-out AUC at epoch 1 of {self.epochs_run}: later epochs never improved on it"
        return None

    @property
    def trained_precision(self) -> str | None:
        """bf16 | fp16 | fp32 as trained; cards written before ``precision`` was recorded say it by ``bf16``."""
        return self.precision or {True: "bf16", False: "fp32"}.get(self.bf16)

    @property
    def trained_threads(self) -> int | None:
        """Intra-op threads the training ran with (older cards: read from ``hardware``, "..., N threads")."""
        if isinstance(self.training_setup.get("threads"), int):
            return self.training_setup["threads"]
        found = re.search(r"(\d+) threads", self.hardware or "")
        return int(found.group(1)) if found else None

    def to_dict(self) -> dict:
        """The card as card.json holds it (plain JSON values; unknown fields read in kept, after the known ones)."""
        out = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else list(v) if isinstance(v, tuple) else v
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: object, where: str = "card.json") -> "Card":
        """A card from its JSON value, migrated to :data:`SCHEMA_VERSION` and checked; :class:`CardError` otherwise."""
        command = default_rebuild_command(None)
        try:
            d = _obj(raw, "the card")
            if isinstance(d.get("rebuild_command"), str):
                command = d["rebuild_command"]
            elif isinstance(d.get("id"), str):
                command = default_rebuild_command(d["id"])
            return cls._read(migrate(d))
        except _Invalid as exc:
            raise CardError(f"{where}: {exc}; the card is refused. Rebuild the checkpoint with: {command}") from None

    @classmethod
    def _read(cls, d: dict) -> "Card":
        for key in ("id", "dataset", "init", "metrics", "label_names", "task"):
            if key not in d:
                raise _Invalid("the card", f"lacks '{key}'")
        labels = _list(d["label_names"], "label_names", _str)
        if not 1 <= len(labels) <= MAX_LABELS or len(set(labels)) != len(labels):
            raise _Invalid("label_names", f"must be 1-{MAX_LABELS} distinct names")
        n = len(labels)
        norm = _list(d.get("normalisation"), "normalisation", _num, 2, optional=True)
        if norm is not None and norm[1] <= 0:
            raise _Invalid("normalisation", f"std = {norm[1]:g} must be positive")
        thresholds = {rule: _list(v, f"thresholds.{rule}", _threshold, n)
                      for rule, v in _obj(d.get("thresholds", {}), "thresholds").items()}
        calibration = d.get("calibration")
        return cls(
            id=_str(d["id"], "id"), arch=_str(d.get("arch", ""), "arch"), family=_str(d.get("family", ""), "family"),
            reference=_str(d.get("reference"), "reference", optional=True),
            order=_int(d.get("order"), "order", optional=True),
            members=_list(d.get("members"), "members", _str, optional=True),
            dataset=DatasetRecord.from_dict(d["dataset"], n), label_names=labels, task=_str(d["task"], "task"),
            input_size=_int(d.get("input_size"), "input_size", 1, MAX_SIDE, optional=True),
            normalisation=tuple(norm) if norm else None, init=Init.from_dict(d["init"]),
            hparams=_scalar_map(d.get("hparams", {}), "hparams"),
            config_key=_str(d.get("config_key"), "config_key", optional=True),
            epochs_run=_int(d.get("epochs_run"), "epochs_run", optional=True),
            best_epoch=_int(d.get("best_epoch"), "best_epoch", optional=True),
            stopped_early=_bool(d.get("stopped_early"), "stopped_early"),
            resumed_from_epoch=_int(d.get("resumed_from_epoch"), "resumed_from_epoch", optional=True),
            params_total=_int(d.get("params_total", 0), "params_total"),
            params_trainable=_int(d.get("params_trainable", 0), "params_trainable"),
            train_seconds=_num(d.get("train_seconds", 0.0), "train_seconds", 0.0),
            wall_seconds=_num(d.get("wall_seconds"), "wall_seconds", 0.0, optional=True),
            seconds_per_epoch=_num(d.get("seconds_per_epoch"), "seconds_per_epoch", 0.0, optional=True),
            hardware=_str(d.get("hardware"), "hardware", optional=True),
            world_size=_int(d.get("world_size"), "world_size", 1, optional=True),
            bf16=_bool(d.get("bf16"), "bf16"), channels_last=_bool(d.get("channels_last"), "channels_last"),
            precision=_str(d.get("precision"), "precision", optional=True),
            training_setup=_scalar_map(d.get("training_setup", {}), "training_setup"),
            metrics=Metrics.from_dict(d["metrics"], labels), thresholds=thresholds,
            calibration=None if calibration is None else _obj(calibration, "calibration"),
            versions=_scalar_map(d.get("versions", {}), "versions"),
            git_commit=_str(d.get("git_commit"), "git_commit", optional=True),
            created=_str(d.get("created"), "created", optional=True),
            rebuild_command=_str(d.get("rebuild_command"), "rebuild_command", optional=True),
            weights_sha256=_sha(d.get("weights_sha256"), "weights_sha256"),
            weights_bytes=_int(d.get("weights_bytes"), "weights_bytes", 1, MAX_WEIGHTS_BYTES, optional=True),
            schema_version=d["schema_version"], extra=_rest(d, _names(cls)),
        )


def default_rebuild_command(model_id: str | None) -> str:
    return f"python train/run_all.py --models {model_id}" if model_id else "python train/run_all.py --force"


def migrate(d: dict) -> dict:
    """A card's JSON at :data:`SCHEMA_VERSION`: version 1 (no ``schema_version``, every card written before versioning)
    has today's layout and only gains the version number; a version newer than this code is refused."""
    version = d.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _Invalid("schema_version", f"= {version!r} is not a schema version")
    if version > SCHEMA_VERSION:
        raise _Invalid("schema_version", f"= {version} is newer than this code reads ({SCHEMA_VERSION}); update it")
    return {**d, "schema_version": SCHEMA_VERSION}
