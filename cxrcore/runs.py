"""One training run from model id to checkpoint folder: build, initialise, fit, evaluate, write the card.

Also the ensemble of trained checkpoints (mean probability), whose card is built from their stored predictions.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from . import calibration, checkpoints, metrics
from .card import Card, DatasetRecord, Init, Metrics
from .data import DEFAULT_DATASET, REPO_ROOT, Dataset
from .task import is_multilabel, label_columns
from .engine import (Dist, FitResult, Prepared, TrainConfig, clear_resume, evaluate, fit, hardware, make_loss,
                     predict, resolve_precision, seed_everything)
from .pretrained import build, starts_pretrained
from .zoo import get_spec, list_models


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import peft
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "peft": peft.__version__, "numpy": np.__version__}


def dataset_record(data: Dataset) -> DatasetRecord:
    return DatasetRecord(name=data.name, size=data.size, task=data.task, channels=data.channels,
                         source_md5=data.md5, split_checksum=data.split_checksum(), counts=data.counts(),
                         prevalence=data.prevalence(), extra=dict(data.record))  # split policy, seed, square rule


def val_operating_points(y_val: np.ndarray, p_val: np.ndarray, task: str,
                         groups: np.ndarray | None = None) -> list[metrics.OperatingPoint]:
    """Operating points chosen on held-out data only: Youden's J per label, none where it rests on fewer than
    ``metrics.MIN_POSITIVES`` positives, where the label's AUC interval (over ``groups``, the images' patients,
    where known) includes 0.5, or where it would sit at 0, 1 or outside the observed scores."""
    cols = label_columns(y_val, task, p_val.shape[1])
    return [metrics.operating_point(cols[:, j], p_val[:, j], groups=groups) for j in range(p_val.shape[1])]


def raw_predictions(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored predictions with the models' raw (uncalibrated) probabilities under the usual keys: a folder written
    before calibration holds only those; a calibrated one keeps them as ``*_raw_probs``."""
    return {k: np.asarray(preds.get(k.replace("_probs", "_raw_probs"), v)) for k, v in preds.items()
            if not k.endswith("_raw_probs")}


TEST_READ_ONCE = ("only by cxrcore.evaluation (run_all.py's last step, train/evaluate_test.py), once, after all "
                  "training; no recipe decision looks at it")


def group_codes(groups: np.ndarray) -> np.ndarray:
    """A patient id per image as small integer codes (the same patient, the same code), so stored predictions carry
    what a patient-level bootstrap needs without the ids themselves (``predictions.npz`` holds numbers only)."""
    g = np.asarray(groups)
    keys = g if np.issubdtype(g.dtype, np.number) else g.astype(str)  # codes stay codes when coded again
    return np.unique(keys, return_inverse=True)[1].ravel().astype(np.float32)


def stored_groups(preds: Mapping[str, np.ndarray], split: str) -> np.ndarray | None:
    """The patient codes stored beside a split's predictions (``<split>_groups``), or None (older checkpoints, or a
    dataset that names no patients: CIs then resample images)."""
    g = preds.get(f"{split}_groups")
    return None if g is None else np.asarray(g)


@dataclass(frozen=True)
class Served:
    """What a run stores about its served (calibrated) probabilities: the card's calibration, thresholds, operating
    points and held-out metrics entries (no test metric: :mod:`cxrcore.evaluation` alone scores the test split),
    and the predictions file (served probabilities under the usual keys, raw beside, patient codes where known)."""

    calibration: dict | None
    thresholds: dict[str, list[float | None]]
    operating_points: dict[str, list[dict]]
    metrics: dict
    predictions: dict[str, np.ndarray]


def fit_serving(y_fit: np.ndarray, p_fit: np.ndarray, task: str, shift: list[float] | None, calibrate: bool = True,
                fitted_on: str = "val", groups: np.ndarray | None = None,
                ) -> tuple[calibration.Calibration | None, list[metrics.OperatingPoint]]:
    """The calibration (unless ``calibrate`` is False) and operating points fitted on held-out labels and raw
    probabilities (validation, or pooled out-of-fold; ``groups``: their patients): every recipe decision after
    training, on held-out data only."""
    cal = None
    n = p_fit.shape[1]
    if calibrate:
        y = label_columns(y_fit, task, n) if is_multilabel(task) else np.asarray(y_fit)[:, 0]
        cal = calibration.fit(y, p_fit, is_multilabel(task), shift, fitted_on=fitted_on)
        p_fit = cal.apply(p_fit)
    return cal, val_operating_points(y_fit, p_fit, task, groups)


def served_outputs(raw: Mapping[str, np.ndarray], task: str, label_names: list[str], shift: list[float] | None,
                   n_boot: int = 1000, calibrate: bool = True,
                   groups: Mapping[str, np.ndarray] | None = None) -> Served:
    """Calibrate a run's raw validation/test probabilities on validation (``shift``: the pos-weight prior
    correction, see :func:`calibration.prior_shift`), choose the operating points on the calibrated validation
    probabilities and measure validation there; the test probabilities are calibrated and stored, not scored.
    ``calibrate=False`` (an ensemble of calibrated members) keeps the given probabilities as served. ``groups``
    (split -> patient id per image) makes the CIs patient-level and is stored as codes (``*_groups``); without it,
    codes already in ``raw`` are kept."""
    probs = {s: np.asarray(raw[f"{s}_probs"], dtype=np.float32) for s in ("val", "test")}
    codes = ({f"{s}_groups": group_codes(groups[s]) for s in probs} if groups else
             {k: np.asarray(raw[k]) for k in ("val_groups", "test_groups") if k in raw})
    cal, points = fit_serving(raw["val_labels"], probs["val"], task, shift, calibrate, groups=codes.get("val_groups"))
    if cal is not None:
        probs = {s: cal.apply(p) for s, p in probs.items()}
    th = [p.value for p in points]
    block = {"val": metrics.summarize(raw["val_labels"], probs["val"], label_names, task, th, n_boot,
                                      codes.get("val_groups"))}
    preds = {"val_probs": probs["val"], "val_labels": raw["val_labels"], "test_probs": probs["test"],
             "test_labels": raw["test_labels"], **codes,
             **{f"{s}_raw_probs": np.asarray(raw[f"{s}_raw_probs" if f"{s}_raw_probs" in raw else f"{s}_probs"],
                                             dtype=np.float32) for s in ("val", "test")}}
    return Served(cal.to_dict() if cal else None, {"youden_val": [p.threshold for p in points]},
                  {"youden_val": [p.to_dict() for p in points]}, block, preds)


def oof_shift(pos_weight, labels: np.ndarray, task: str) -> list[float] | None:
    """The pos-weight prior correction of a model trained on the cross-validation pool (multi-label only)."""
    if not is_multilabel(task):
        return None
    return calibration.prior_shift(pos_weight, [int(v) for v in np.asarray(labels).sum(0)], len(labels))


def stored_val_rows(preds: Mapping[str, np.ndarray]) -> np.ndarray:
    """The validation images' rows among a cross-validated model's stored out-of-fold predictions: the pool is train
    then val (``crossval.pool``), so they are its last ``len(val_labels)`` rows."""
    n, n_val = len(preds["oof_labels"]), len(preds["val_labels"])
    return np.arange(n - n_val, n)


def oof_served(labels: np.ndarray, oof_raw: np.ndarray, val_rows: np.ndarray, test_raw: np.ndarray,
               test_labels: np.ndarray, task: str, names: list[str], shift: list[float] | None, n_boot: int = 1000,
               groups: np.ndarray | None = None, test_groups: np.ndarray | None = None,
               calibrate: bool = True) -> Served:
    """Calibration and thresholds fitted on the pooled out-of-fold raw probabilities (``labels``/``oof_raw``: every
    train + val image, ``val_rows`` the validation ones), applied to the shipped model's test probabilities (stored,
    not scored). ``metrics.val`` holds the validation images' OOF predictions, ``metrics.oof`` all of them (CIs over
    ``groups``, the pool's patients). What ``cross_validate``, ``train/calibrate.py`` and a cross-validated ensemble
    (``calibrate=False``: the mean of calibrated members is served as it is) store."""
    g = None if groups is None else group_codes(groups)
    cal, points = fit_serving(labels, oof_raw, task, shift, calibrate, fitted_on="oof", groups=g)
    oof_cal, test_cal = (cal.apply(oof_raw), cal.apply(test_raw)) if cal else (oof_raw, test_raw)
    th = [q.value for q in points]
    block = {"val": metrics.summarize(labels[val_rows], oof_cal[val_rows], names, task, th, n_boot,
                                      None if g is None else g[val_rows]),
             "oof": metrics.summarize(labels, oof_cal, names, task, th, n_boot, g)}
    codes = {} if g is None else {"oof_groups": g, "val_groups": g[val_rows]}
    if test_groups is not None:
        codes["test_groups"] = group_codes(test_groups)
    preds = {"val_probs": oof_cal[val_rows], "val_labels": labels[val_rows], "test_probs": test_cal,
             "test_labels": test_labels, "val_raw_probs": oof_raw[val_rows], "test_raw_probs": test_raw,
             "oof_probs": oof_cal, "oof_labels": labels, "oof_raw_probs": oof_raw, **codes}
    return Served(cal.to_dict() if cal else None, {"youden_val": [q.threshold for q in points]},
                  {"youden_val": [q.to_dict() for q in points]}, block, preds)


SEEDS_ENV = "CXR_SEEDS"


def seeds_root() -> Path:
    """``$CXR_SEEDS`` (relative paths from the repo root), else ``seeds/`` beside ``checkpoints/``: extra seeds are
    kept apart from the task's models (cards and predictions; weights not shipped), as learning-curve points are."""
    path = Path(os.environ.get(SEEDS_ENV, "seeds"))
    return path if path.is_absolute() else REPO_ROOT / path


SINGLE_SPLIT_SEEDS = "seeds-single-split"
RANDOM_INIT_SEEDS = "seeds-random-init"


def seed_roots() -> dict[str, Path]:
    """Every recipe's seed tree, by the recipe it holds: the shipped recipe's seeds 1-2 under :func:`seeds_root`
    (where ``run_all.py --seeds`` writes); seeds 0-2 of the single-split recipe of models since retrained
    cross-validated under ``seeds-single-split/``, and of the random-init cross-validated recipe of models since
    fine-tuned from a chest X-ray base under ``seeds-random-init/`` (kept so their spread over seeds, and what a
    chest X-ray fine-tune is compared with, stay readable)."""
    return {"shipped recipe": seeds_root(), "single split, before cross-validation": REPO_ROOT / SINGLE_SPLIT_SEEDS,
            "random init, before chest X-ray pretraining": REPO_ROOT / RANDOM_INIT_SEEDS}


def pretrain_root() -> Path:
    """``pretrain/`` beside ``checkpoints/``: chest X-ray pretraining bases (``<base dataset>-<size>/<id>``) and the
    models fine-tuned from them to compare with random init (``<dataset>/from-<base folder>/<id>``); cards,
    predictions and histories, no weights."""
    return REPO_ROOT / "pretrain"


def seed_root(root: Path, dataset: str, k: int) -> Path:
    """Checkpoint root of seed ``k`` (1, 2, ...; seed 0 is the main model): ``<root>/<dataset>/seed<k>/<id>``."""
    return Path(root) / dataset / f"seed{k}"


def seed_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """The recipe of seed ``k``: the same but for its seed (weights initialisation, batches, augmentation)."""
    return cfg if k == 0 else dataclasses.replace(cfg, seed=cfg.seed + k)


def recipe(model_id: str, dataset: str = DEFAULT_DATASET, **overrides) -> TrainConfig:
    """The training recipe of a zoo id on ``dataset``: it starts from the zoo's chest X-ray base where one is named
    (:meth:`ModelSpec.default_init`); the zoo's from-scratch overrides apply when no pretrained weights can be had
    for it here (offline, every architecture but EfficientNet-Lite0)."""
    spec = get_spec(model_id)
    init = overrides.get("init") or spec.default_init(dataset)
    cfg = TrainConfig.for_model(spec, scratch=not starts_pretrained(spec, init), **{**overrides, "init": init})
    # the precision this machine will train in, in the recipe (its key) and the card, never left to detection later
    kind = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, kind))


def is_up_to_date(out_dir: Path, spec_id: str, cfg: TrainConfig, data: Dataset, base_root: Path | None = None) -> bool:
    """Whether ``out_dir`` holds ``spec_id`` trained with this recipe (hyperparameters and the model input size,
    which the zoo may change without a CLI override) on these exact splits, with weights that match their card (and
    the tree's manifest) and predictions that agree with it: a crash mid-save or damaged weights mean "retrain".
    ``base_root``: where a LoRA adapter's base lives (default: beside ``out_dir``; a seed's is the main tree's)."""
    try:
        card = checkpoints.read_card(out_dir)
        checkpoints.verify_claims(card, checkpoints.stored_predictions(out_dir, card))
    except checkpoints.CheckpointError:
        return False
    input_size = cfg.input_size or get_spec(spec_id).model_input_size(data.size)
    return (card.config_key == cfg.key() and card.id == spec_id and card.input_size == input_size
            and card.dataset.split_checksum == data.split_checksum()
            and checkpoints.weights_ok(out_dir, card) and lora_base_unchanged(card, base_root or out_dir.parent)
            and init_checkpoint_unchanged(card, cfg))


def lora_base_unchanged(card: Card, root: Path) -> bool:
    """Whether a LoRA adapter's project-checkpoint base is still the one it was trained on (True for other models):
    a retrained base makes its adapter stale."""
    base = card.init.lora_base
    if not base or base["kind"] != "checkpoint":
        return True
    try:
        return checkpoints.read_card(root / base.get("path", base["id"])).weights_sha256 == base["sha256"]
    except checkpoints.CheckpointError:
        return False


def init_checkpoint_unchanged(card: Card, cfg: TrainConfig) -> bool:
    """Whether the project checkpoint a model was fine-tuned from (``--init PATH``, a chest X-ray base) is still the
    one it started from: a retrained base makes the fine-tune stale. A base that is absent (a fresh clone: bases are
    not shipped) cannot say so, and the fine-tune's recorded sha256 stands."""
    if card.init.kind != "checkpoint" or not (Path(cfg.init) / checkpoints.WEIGHTS).exists():
        return True
    try:
        return checkpoints.read_card(Path(cfg.init)).weights_sha256 == card.init.sha256
    except checkpoints.CheckpointError:
        return False


def make_card(model_id: str, data: Dataset, cfg: TrainConfig, res: FitResult, model: torch.nn.Module, init: Init,
              input_size: int, served: Served, block: dict, t0: float, command: str, world: int = 1,
              best_epoch: int | None = None, extra: dict | None = None) -> Card:
    """The card of one trained model, single split or cross-validated alike: recipe, data, how it ran (precision,
    threads, hardware class in ``training_setup``), the held-out metrics ``block`` and what ``served`` fitted."""
    spec = get_spec(model_id)
    return Card(
        id=model_id, arch=spec.arch, family=spec.family, reference=spec.paper, order=list_models().index(model_id),
        dataset=dataset_record(data), label_names=list(data.label_names), task=data.task,
        input_size=input_size, normalisation=tuple(spec.norm),
        init=init, hparams=asdict(cfg), config_key=cfg.key(),
        epochs_run=res.epochs_run, best_epoch=res.best_epoch if best_epoch is None else best_epoch,
        stopped_early=res.stopped_early, resumed_from_epoch=res.resumed_from,
        params_total=sum(p.numel() for p in model.parameters()),
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        train_seconds=res.train_seconds, wall_seconds=time.perf_counter() - t0,
        seconds_per_epoch=res.train_seconds / max(1, res.epochs_run),
        hardware=hardware(), world_size=world, bf16=res.bf16, channels_last=res.channels_last,
        precision=res.precision, training_setup={**res.settings, **run_environment()},
        metrics=Metrics.from_dict(block, list(data.label_names)), thresholds=served.thresholds,
        calibration=served.calibration, versions=versions(), git_commit=git_commit(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), rebuild_command=command,
        extra={"operating_points": served.operating_points, **(extra or {})},
    )


def run_environment() -> dict:
    """What besides the recipe can move a result on the same kind of machine: intra- and inter-op threads, the
    thread variables they came from, and whether deterministic algorithms were asked for."""
    return {"interop_threads": torch.get_num_interop_threads(),
            **{k.lower(): os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def train_one(model_id: str, data: Dataset, cfg: TrainConfig, out_root: Path, command: str,
              progress: Callable[[dict], None] | None = None, dist: Dist | None = None,
              n_boot: int = 1000, base_root: Path | None = None) -> Card | None:
    """Train ``model_id`` on train, choosing the epoch, calibration and thresholds on validation, and write
    ``out_root/model_id``; returns the card (rank 0) or None (other ranks). The test images are scored by the model
    and stored, their labels not read: the card has no test metrics until :mod:`cxrcore.evaluation` adds them.
    ``base_root``: the tree a LoRA base is read from (default ``out_root``)."""
    dist = dist or Dist()
    spec = get_spec(model_id)
    out_dir = out_root / model_id
    t0 = time.perf_counter()
    input_size = cfg.input_size or spec.model_input_size(data.size)
    seed_everything(cfg.seed)  # the initial weights too, not only the batches, follow the card's seed
    model, init = build(model_id, data.num_outputs, data.channels, data.size, cfg.init, base_root or out_root,
                        input_size)
    res = fit(model, spec, data, cfg, out_dir, progress, dist)
    if not dist.main:
        return None
    model = checkpoints.round_to_stored(res.model)
    # fp32 predictions, as the app serves the model (the epoch was chosen in the training precision)
    res_prep = Prepared(input_size, *spec.norm, in_chans=data.channels, channels_last=res.channels_last)
    val_eval = evaluate(model, data, "val", res_prep, make_loss(data, cfg))
    probs = {"val": val_eval["probs"], "test": predict(model, data.images["test"], res_prep, data.task)}
    shift = (calibration.prior_shift(cfg.pos_weight, data.prevalence()["train"], len(data.labels["train"]))
             if is_multilabel(data.task) else None)
    served = served_outputs({**{f"{s}_probs": p for s, p in probs.items()},
                             **{f"{s}_labels": data.labels[s] for s in probs}}, data.task, list(data.label_names),
                            shift, n_boot, groups=data.extras.get("patients"))
    block = dict(served.metrics)
    # the best epoch's running loss (augmented batches, training mode): no extra pass over the whole train split
    block["train_loss"] = res.history[res.best_epoch - 1]["train_loss"] if res.best_epoch else None
    block["val_loss"] = val_eval["loss"]
    how_chosen = {
        "epochs": "the epoch of best validation macro AUC, in the training precision"
                  + (f" (stopped after {cfg.patience} epochs without gain)" if cfg.patience else ""),
        "calibration": "fitted on the validation raw probabilities",
        "thresholds": "Youden's J on the calibrated validation probabilities",
        "metrics.val": "the shipped model on the validation images, which also chose its epoch (optimistic)",
        "metrics.test": TEST_READ_ONCE,
    }
    card = make_card(model_id, data, cfg, res, model, init, input_size, served, block, t0, command, dist.world,
                     extra={"how_chosen": how_chosen})
    card = checkpoints.save(out_dir, model, card, served.predictions, res.history)
    clear_resume(out_dir)
    return card


def held_out_split(preds: Mapping[str, np.ndarray]) -> str:
    """The stored split a model's thresholds and their evidence come from: ``oof`` (every train + val image, out
    of fold) where it was cross-validated, else ``val``."""
    return "oof" if "oof_probs" in preds else "val"


def shared_oof(preds: Sequence[Mapping[str, np.ndarray]]) -> bool:
    """Whether every member was cross-validated on the same pool with the same folds, so their out-of-fold
    predictions can be averaged image by image (the ensemble is then chosen and thresholded out of fold too)."""
    first = preds[0]
    return all("oof_probs" in p and "oof_folds" in p and np.array_equal(p["oof_labels"], first["oof_labels"])
               and np.array_equal(p["oof_folds"], first["oof_folds"]) for p in preds)


MEMBERS_BY_NAME = ("by the caller, on held-out AUC (run_all.py: the best shipped models out of fold, else on "
                   "validation) or by name")


@dataclass(frozen=True)
class EnsembleChoice:
    """The ensemble :func:`ensemble_by_held_out` chose: its members, the held-out split it was chosen on (``oof``
    or ``val``) and the held-out macro AUC of the mean of every leading subset tried, by size."""

    members: list[checkpoints.Checkpoint]
    split: str
    auc_by_size: dict[int, float]

    @property
    def how(self) -> str:
        """The card's words for how the members were chosen."""
        where = "pooled out-of-fold" if self.split == "oof" else "validation"
        sizes = ", ".join(f"{k}: {v:.4f}" for k, v in self.auc_by_size.items())
        return (f"the top {len(self.members)} shipped models by {where} AUC: the size whose mean has the best "
                f"{where} macro AUC (size: AUC {sizes}); the test split was not read")


def ensemble_by_held_out(ranked: list[checkpoints.Checkpoint], min_size: int = 2) -> EnsembleChoice:
    """The leading members of ``ranked`` (best held-out AUC first) whose mean calibrated probability has the best
    held-out macro AUC, trying ``min_size`` up to all. Held-out is the pooled out-of-fold predictions where every
    model was cross-validated on the same folds, else validation: the size is a recipe decision and never reads the
    test split. Ties go to the smaller ensemble."""
    preds = [c.predictions() for c in ranked]
    split = "oof" if shared_oof(preds) else "val"
    y, task = preds[0][f"{split}_labels"], ranked[0].card.task
    sizes = range(min(min_size, len(ranked)), len(ranked) + 1)
    aucs = {k: float(metrics.get_auc(y, np.mean([p[f"{split}_probs"] for p in preds[:k]], axis=0), task))
            for k in sizes}
    best = max(aucs, key=lambda k: (round(aucs[k], 6), -k))
    return EnsembleChoice(ranked[:best], split, aucs)


def build_ensemble(members: list[checkpoints.Checkpoint], out_dir: Path, command: str,
                   n_boot: int = 1000, groups: Mapping[str, np.ndarray] | None = None,
                   how_members: str = MEMBERS_BY_NAME) -> Card:
    """Mean-probability ensemble of ``members`` from their stored predictions; writes card and predictions
    (``groups``: split -> patient id per image, for patient-level CIs; else the members' stored codes). Like a
    trained model's, its card has no test metrics until :mod:`cxrcore.evaluation` reads the test split. When every
    member was cross-validated on the same folds, its thresholds and held-out metrics come from the mean of their
    pooled out-of-fold predictions (every train + val image) instead of the 167 validation images."""
    if not members:
        raise ValueError("an ensemble needs at least one member checkpoint")
    first = members[0].card
    preds = [m.predictions() for m in members]
    raws = [raw_predictions(p) for p in preds]
    for m, p in zip(members, preds):
        if m.card.dataset.split_checksum != first.dataset.split_checksum:
            raise ValueError(f"{m.id} was trained on other data than {first.id}; cannot ensemble")
    task, names = first.task, first.label_names
    splits = ("val", "test", "oof") if shared_oof(preds) else ("val", "test")
    mean = {f"{s}_{kind}": np.mean([p[f"{s}_probs"] for p in views], axis=0) if kind != "labels" else
            preds[0][f"{s}_labels"] for s in splits
            for kind, views in (("probs", preds), ("raw_probs", raws), ("labels", preds))}
    if "oof" in splits:  # the mean of calibrated members is served as it is (calibrate=False)
        y = mean["oof_labels"]
        test_groups = groups["test"] if groups else preds[0].get("test_groups")
        served = oof_served(y, mean["oof_probs"], stored_val_rows(mean), mean["test_probs"],
                            mean["test_labels"], task, names, None, n_boot, preds[0].get("oof_groups"), test_groups,
                            calibrate=False)
        served = dataclasses.replace(served, predictions={
            **served.predictions, "oof_folds": preds[0]["oof_folds"],
            **{f"{s}_raw_probs": mean[f"{s}_raw_probs"].astype(np.float32) for s in splits}})
        fitted_on = f"the mean calibrated out-of-fold probabilities of all {len(y)} train + val images"
    else:
        mean.update({k: preds[0][k] for k in ("val_groups", "test_groups") if k in preds[0]})
        served = served_outputs(mean, task, names, None, n_boot, calibrate=False, groups=groups)
        fitted_on = "the mean calibrated validation probabilities"
    card = Card(
        id="ensemble", arch="mean calibrated probability of " + ", ".join(m.id for m in members), family="ensemble",
        members=[m.id for m in members], order=1000, dataset=first.dataset, label_names=names, task=task,
        init=Init("ensemble", "members' own checkpoints"),
        params_total=sum(m.card.params_total for m in members),
        params_trainable=sum(m.card.params_trainable for m in members),
        train_seconds=sum(m.card.train_seconds for m in members),
        metrics=Metrics.from_dict(served.metrics, names), thresholds=served.thresholds,
        versions=versions(), git_commit=git_commit(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), rebuild_command=command,
        extra={"operating_points": served.operating_points,
               "how_chosen": {"members": how_members,
                              "thresholds": f"Youden's J on {fitted_on}",
                              "metrics.test": TEST_READ_ONCE}},
    )
    return checkpoints.save(out_dir, None, card, served.predictions)
