"""One training run from model id to checkpoint folder: build, initialise, fit, evaluate, write the card.

Also the ensemble of trained checkpoints (mean probability), whose card is built from their stored predictions.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoints, metrics
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


def dataset_record(data: Dataset) -> dict:
    return {"name": data.name, "size": data.size, "task": data.task, "channels": data.channels,
            "source_md5": data.md5, "split_checksum": data.split_checksum(), "counts": data.counts(),
            "prevalence": data.prevalence(), **data.record}  # split policy, seed, square rule


def val_thresholds(y_val: np.ndarray, p_val: np.ndarray, task: str) -> list[float]:
    """Operating thresholds chosen on validation only: Youden's J per label."""
    cols = label_columns(y_val, task, p_val.shape[1])
    return [metrics.threshold_youden(cols[:, j], p_val[:, j]) for j in range(p_val.shape[1])]


def metrics_block(data: Dataset, probs: dict[str, np.ndarray], thresholds: list[float], n_boot: int) -> dict:
    """Card metrics of val and test, with patient-level CIs where the dataset names each image's patient."""
    patients = data.extras.get("patients", {})
    return {s: metrics.summarize(data.labels[s], probs[s], data.label_names, data.task, thresholds, n_boot,
                                 patients.get(s)) for s in ("val", "test")}


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
    which the zoo may change without a CLI override) on these exact splits, with its weights and predictions."""
    try:
        card = checkpoints.read_card(out_dir)
    except checkpoints.CheckpointError:
        return False
    input_size = cfg.input_size or get_spec(spec_id).model_input_size(data.size)
    return (card.get("config_key") == cfg.key() and card["id"] == spec_id and card.get("input_size") == input_size
            and card["dataset"].get("split_checksum") == data.split_checksum()
            and (out_dir / checkpoints.WEIGHTS).exists() and (out_dir / checkpoints.PREDICTIONS).exists()
            and lora_base_unchanged(card, out_dir.parent))


def lora_base_unchanged(card: dict, root: Path) -> bool:
    """Whether a LoRA adapter's project-checkpoint base is still the one it was trained on (True for other models):
    a retrained base makes its adapter stale."""
    base = (card.get("init") or {}).get("lora_base")
    if not base or base["kind"] != "checkpoint":
        return True
    try:
        return checkpoints.read_card(root / base.get("path", base["id"])).get("weights_sha256") == base["sha256"]
    except checkpoints.CheckpointError:
        return False


def train_one(model_id: str, data: Dataset, cfg: TrainConfig, out_root: Path, command: str,
              progress: Callable[[dict], None] | None = None, dist: Dist | None = None, n_boot: int = 1000) -> dict:
    """Train ``model_id`` and write ``out_root/model_id``; returns the card (rank 0) or {} (other ranks)."""
    dist = dist or Dist()
    spec = get_spec(model_id)
    out_dir = out_root / model_id
    t0 = time.perf_counter()
    input_size = cfg.input_size or spec.model_input_size(data.size)
    seed_everything(cfg.seed)  # the initial weights too, not only the batches, follow the card's seed
    model, init = build(model_id, data.num_outputs, data.channels, data.size, cfg.init, out_root, input_size)
    res = fit(model, spec, data, cfg, out_dir, progress, dist)
    if not dist.main:
        return {}
    model = checkpoints.round_to_stored(res.model)
    # fp32 predictions, as the app serves the model (the epoch was chosen in the training precision)
    res_prep = Prepared(input_size, *spec.norm, in_chans=data.channels, channels_last=res.channels_last)
    val_eval = evaluate(model, data, "val", res_prep, make_loss(data, cfg))
    probs = {"val": val_eval["probs"], "test": predict(model, data.images["test"], res_prep, data.task)}
    thresholds = val_thresholds(data.labels["val"], probs["val"], data.task)
    block = metrics_block(data, probs, thresholds, n_boot)
    # the best epoch's running loss (augmented batches, training mode): no extra pass over the whole train split
    block["train_loss"] = res.history[res.best_epoch - 1]["train_loss"] if res.best_epoch else None
    block["val_loss"] = val_eval["loss"]
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    card = {
        "id": model_id, "arch": spec.arch, "family": spec.family, "reference": spec.paper,
        "order": list_models().index(model_id),
        "dataset": dataset_record(data), "label_names": data.label_names, "task": data.task,
        "input_size": input_size, "normalisation": list(spec.norm),
        "init": init.to_dict(), "hparams": asdict(cfg), "config_key": cfg.key(),
        "epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "stopped_early": res.stopped_early,
        "resumed_from_epoch": res.resumed_from,
        "params_total": n_params, "params_trainable": n_train,
        "train_seconds": res.train_seconds, "wall_seconds": time.perf_counter() - t0,
        "seconds_per_epoch": res.train_seconds / max(1, res.epochs_run),
        "hardware": hardware(), "world_size": dist.world, "bf16": res.bf16, "channels_last": res.channels_last,
        "precision": res.precision, "training_setup": res.settings,
        "metrics": block, "thresholds": {"youden_val": thresholds},
        "versions": versions(), "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rebuild_command": command,
    }
    preds = {"val_probs": probs["val"], "val_labels": data.labels["val"],
             "test_probs": probs["test"], "test_labels": data.labels["test"]}
    card = checkpoints.save(out_dir, model, card, preds, res.history)
    clear_resume(out_dir)
    return card


def build_ensemble(members: list[checkpoints.Checkpoint], out_dir: Path, command: str,
                   n_boot: int = 1000, groups: dict[str, np.ndarray] | None = None) -> dict:
    """Mean-probability ensemble of ``members`` from their stored predictions; writes card and predictions
    (``groups``: split -> patient id per image, for patient-level CIs)."""
    if not members:
        raise ValueError("an ensemble needs at least one member checkpoint")
    first = members[0].card
    preds = [m.predictions() for m in members]
    for m, p in zip(members, preds):
        if m.card["dataset"]["split_checksum"] != first["dataset"]["split_checksum"]:
            raise ValueError(f"{m.id} was trained on other data than {first['id']}; cannot ensemble")
    probs = {s: np.mean([p[f"{s}_probs"] for p in preds], axis=0) for s in ("val", "test")}
    labels = {s: preds[0][f"{s}_labels"] for s in ("val", "test")}
    task, names = first["task"], first["label_names"]
    thresholds = val_thresholds(labels["val"], probs["val"], task)
    block = {s: metrics.summarize(labels[s], probs[s], names, task, thresholds, n_boot, (groups or {}).get(s))
             for s in ("val", "test")}
    card = {
        "id": "ensemble", "arch": "mean probability of " + ", ".join(m.id for m in members), "family": "ensemble",
        "members": [m.id for m in members], "order": 1000,
        "dataset": first["dataset"], "label_names": names, "task": task,
        "input_size": None, "normalisation": None,
        "init": {"kind": "ensemble", "source": "members' own checkpoints", "sha256": None, "lora_base": None},
        "params_total": sum(m.card["params_total"] for m in members),
        "params_trainable": sum(m.card["params_trainable"] for m in members),
        "train_seconds": sum(m.card["train_seconds"] for m in members),
        "metrics": block, "thresholds": {"youden_val": thresholds},
        "versions": versions(), "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rebuild_command": command,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / checkpoints.PREDICTIONS, val_probs=probs["val"], val_labels=labels["val"],
                        test_probs=probs["test"], test_labels=labels["test"])
    (out_dir / checkpoints.CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card
