"""One training run from model id to checkpoint folder: build, initialise, fit, evaluate, write the card.

Also the ensemble of trained checkpoints (mean probability), whose card is built from their stored predictions.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from . import calibration, checkpoints, metrics
from .card import Card, DatasetRecord, Init, Metrics
from .data import Dataset
from .task import is_multilabel, label_columns
from .engine import (Dist, Prepared, TrainConfig, clear_resume, evaluate, fit, hardware, make_loss,
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


def val_operating_points(y_val: np.ndarray, p_val: np.ndarray, task: str) -> list[metrics.OperatingPoint]:
    """Operating points chosen on validation only: Youden's J per label, none where it rests on fewer than
    ``metrics.MIN_POSITIVES`` positives or would sit at 0, 1 or outside the observed scores."""
    cols = label_columns(y_val, task, p_val.shape[1])
    return [metrics.operating_point(cols[:, j], p_val[:, j]) for j in range(p_val.shape[1])]


def raw_predictions(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored predictions with the models' raw (uncalibrated) probabilities under the usual keys: a folder written
    before calibration holds only those; a calibrated one keeps them as ``*_raw_probs``."""
    return {k: np.asarray(preds.get(k.replace("_probs", "_raw_probs"), v)) for k, v in preds.items()
            if not k.endswith("_raw_probs")}


@dataclass(frozen=True)
class Served:
    """What a run stores about its served (calibrated) probabilities: the card's calibration, thresholds, operating
    points and metrics entries, and the predictions file (served probabilities under the usual keys, raw beside)."""

    calibration: dict | None
    thresholds: dict[str, list[float | None]]
    operating_points: dict[str, list[dict]]
    metrics: dict
    predictions: dict[str, np.ndarray]


def served_outputs(raw: Mapping[str, np.ndarray], task: str, label_names: list[str], shift: list[float] | None,
                   n_boot: int = 1000, calibrate: bool = True,
                   groups: Mapping[str, np.ndarray] | None = None) -> Served:
    """Calibrate a run's raw validation/test probabilities on validation (``shift``: the pos-weight prior
    correction, see :func:`calibration.prior_shift`), choose the operating points on the calibrated validation
    probabilities and measure both splits there. ``calibrate=False`` (an ensemble of calibrated members) keeps the
    given probabilities as served. ``groups`` (split -> patient id per image) makes the CIs patient-level."""
    n = len(label_names)
    probs = {s: np.asarray(raw[f"{s}_probs"], dtype=np.float32) for s in ("val", "test")}
    cal = None
    if calibrate:
        y_val = np.asarray(raw["val_labels"])
        y_fit = label_columns(y_val, task, n) if is_multilabel(task) else y_val[:, 0]
        cal = calibration.fit(y_fit, probs["val"], is_multilabel(task), shift)
        probs = {s: cal.apply(p) for s, p in probs.items()}
    points = val_operating_points(raw["val_labels"], probs["val"], task)
    th = [p.value for p in points]
    block = {s: metrics.summarize(raw[f"{s}_labels"], probs[s], label_names, task, th, n_boot, (groups or {}).get(s))
             for s in probs}
    preds = {"val_probs": probs["val"], "val_labels": raw["val_labels"], "test_probs": probs["test"],
             "test_labels": raw["test_labels"],
             **{f"{s}_raw_probs": np.asarray(raw[f"{s}_raw_probs" if f"{s}_raw_probs" in raw else f"{s}_probs"],
                                             dtype=np.float32) for s in ("val", "test")}}
    return Served(cal.to_dict() if cal else None, {"youden_val": [p.threshold for p in points]},
                  {"youden_val": [p.to_dict() for p in points]}, block, preds)


def recipe(model_id: str, **overrides) -> TrainConfig:
    """The training recipe of a zoo id: the zoo's from-scratch overrides apply when no pretrained weights can be had
    for it here (offline, every architecture but EfficientNet-Lite0)."""
    spec = get_spec(model_id)
    init = overrides.get("init") or spec.hparams.get("init", "auto")
    cfg = TrainConfig.for_model(spec, scratch=not starts_pretrained(spec, init), **overrides)
    # the precision this machine will train in, in the recipe (its key) and the card, never left to detection later
    kind = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, kind))


def is_up_to_date(out_dir: Path, spec_id: str, cfg: TrainConfig, data: Dataset) -> bool:
    """Whether ``out_dir`` holds ``spec_id`` trained with this recipe (hyperparameters and the model input size,
    which the zoo may change without a CLI override) on these exact splits, with weights that match their card (and
    the tree's manifest) and predictions that agree with it: a crash mid-save or damaged weights mean "retrain"."""
    try:
        card = checkpoints.read_card(out_dir)
        checkpoints.verify_claims(card, checkpoints.stored_predictions(out_dir, card))
    except checkpoints.CheckpointError:
        return False
    input_size = cfg.input_size or get_spec(spec_id).model_input_size(data.size)
    return (card.config_key == cfg.key() and card.id == spec_id and card.input_size == input_size
            and card.dataset.split_checksum == data.split_checksum()
            and checkpoints.weights_ok(out_dir, card) and lora_base_unchanged(card, out_dir.parent))


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


def train_one(model_id: str, data: Dataset, cfg: TrainConfig, out_root: Path, command: str,
              progress: Callable[[dict], None] | None = None, dist: Dist | None = None,
              n_boot: int = 1000) -> Card | None:
    """Train ``model_id`` and write ``out_root/model_id``; returns the card (rank 0) or None (other ranks)."""
    dist = dist or Dist()
    spec = get_spec(model_id)
    out_dir = out_root / model_id
    t0 = time.perf_counter()
    input_size = cfg.input_size or spec.model_input_size(data.size)
    seed_everything(cfg.seed)  # the initial weights too, not only the batches, follow the card's seed
    model, init = build(model_id, data.num_outputs, data.channels, data.size, cfg.init, out_root, input_size)
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
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    card = Card(
        id=model_id, arch=spec.arch, family=spec.family, reference=spec.paper, order=list_models().index(model_id),
        dataset=dataset_record(data), label_names=list(data.label_names), task=data.task,
        input_size=input_size, normalisation=tuple(spec.norm),
        init=init, hparams=asdict(cfg), config_key=cfg.key(),
        epochs_run=res.epochs_run, best_epoch=res.best_epoch, stopped_early=res.stopped_early,
        resumed_from_epoch=res.resumed_from,
        params_total=n_params, params_trainable=n_train,
        train_seconds=res.train_seconds, wall_seconds=time.perf_counter() - t0,
        seconds_per_epoch=res.train_seconds / max(1, res.epochs_run),
        hardware=hardware(), world_size=dist.world, bf16=res.bf16, channels_last=res.channels_last,
        precision=res.precision, training_setup=res.settings,
        metrics=Metrics.from_dict(block, list(data.label_names)), thresholds=served.thresholds,
        calibration=served.calibration, versions=versions(), git_commit=git_commit(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), rebuild_command=command,
        extra={"operating_points": served.operating_points},
    )
    card = checkpoints.save(out_dir, model, card, served.predictions, res.history)
    clear_resume(out_dir)
    return card


def build_ensemble(members: list[checkpoints.Checkpoint], out_dir: Path, command: str,
                   n_boot: int = 1000, groups: Mapping[str, np.ndarray] | None = None) -> Card:
    """Mean-probability ensemble of ``members`` from their stored predictions; writes card and predictions
    (``groups``: split -> patient id per image, for patient-level CIs)."""
    if not members:
        raise ValueError("an ensemble needs at least one member checkpoint")
    first = members[0].card
    preds = [m.predictions() for m in members]
    raws = [raw_predictions(p) for p in preds]
    for m, p in zip(members, preds):
        if m.card.dataset.split_checksum != first.dataset.split_checksum:
            raise ValueError(f"{m.id} was trained on other data than {first.id}; cannot ensemble")
    task, names = first.task, first.label_names
    mean = {f"{s}_{kind}": np.mean([p[f"{s}_probs"] for p in views], axis=0) if kind != "labels" else
            preds[0][f"{s}_labels"] for s in ("val", "test")
            for kind, views in (("probs", preds), ("raw_probs", raws), ("labels", preds))}
    served = served_outputs(mean, task, names, None, n_boot, calibrate=False, groups=groups)  # the mean of calibrated members
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
        extra={"operating_points": served.operating_points},
    )
    return checkpoints.save(out_dir, None, card, served.predictions)
