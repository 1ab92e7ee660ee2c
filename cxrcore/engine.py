"""Training and prediction loops.

``fit`` trains one model on a :class:`~cxrcore.data.Dataset` with the paper's recipe (BCE with positive-class weight,
AdamW, cosine schedule, best epoch on validation AUC, early stopping), bf16 autocast and channels_last on CPUs where
they help, fixed seeds, a resumable state after every epoch and DistributedDataParallel under ``torchrun``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, asdict, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .data import Augment, Dataset, preprocess
from .zoo import ModelSpec

RESUME_FILE = ".resume.pt"


@dataclass
class TrainConfig:
    lr: float = 1e-4
    batch_size: int = 32
    epochs: int = 12
    patience: int = 4  # epochs without a better val AUC before stopping; 0 = never stop early
    pos_weight: float | str = 10.0  # a number, or "balanced" (negatives/positives per label)
    optimizer: str = "adamw"  # adamw | adam
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine | step (x0.1 at 50 % and 75 %, MedMNIST) | constant
    warmup_epochs: int = 1
    augment: bool = True
    label_smoothing: float = 0.0  # single-label tasks only
    freeze_all_but: int | None = None  # partial fine-tune: train only the last N parameter groups (and the head)
    seed: int = 0
    bf16: bool | None = None  # None: where the hardware supports it
    channels_last: bool | None = None  # None: for CNNs
    input_size: int | None = None  # override the zoo's input size
    init: str = "auto"

    @classmethod
    def for_model(cls, spec: ModelSpec, scratch: bool = False, **overrides) -> "TrainConfig":
        """The default recipe, then the zoo entry's overrides (and its from-scratch ones when ``scratch``), then the
        caller's (None values ignored)."""
        known = set(cls.__dataclass_fields__)
        zoo = {**spec.hparams, **(spec.scratch_hparams if scratch else {})}
        merged = {**zoo, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**{k: v for k, v in merged.items() if k in known})

    def key(self) -> str:
        """Short hash of the recipe: a checkpoint trained with another recipe is out of date."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", 0)), world)


def cpu_has_bf16() -> bool:
    """avx512_bf16 / amx: bf16 autocast is 1.5-1.8x faster there; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_multilabel(task: str) -> bool:
    return task.startswith("multi-label")


def to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if is_multilabel(task) else torch.softmax(logits, 1)


def make_loss(data: Dataset, cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """BCE-with-logits with a positive-class weight for multi-label tasks; cross-entropy otherwise."""
    if not is_multilabel(data.task):
        return lambda logits, y: F.cross_entropy(logits, y[:, 0].long(), label_smoothing=cfg.label_smoothing)
    y = data.labels["train"]
    if cfg.pos_weight == "balanced":
        pos = y.sum(0).clip(min=1)
        pw = torch.tensor((len(y) - pos) / pos, dtype=torch.float32)
    else:
        pw = torch.full((y.shape[1],), float(cfg.pos_weight))
    return lambda logits, target: F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw.to(logits.device))


def freeze_all_but(model: nn.Module, n: int) -> None:
    """Partial fine-tune: only the last ``n`` parameter groups (timm's block grouping) and the head train."""
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    else:  # e.g. SimpleCNN: each block of a Sequential is a group; parameter-free modules (pooling) are none
        children = [(f"{m}.{c}" if c else m, sub) for m, mod in model.named_children()
                    for c, sub in (mod.named_children() if isinstance(mod, nn.Sequential) else [("", mod)])]
        groups = [g for g in ([f"{m}.{p}" for p, _ in mod.named_parameters()] for m, mod in children) if g]
    keep = {name for g in groups[-(n + 1):] for name in g}
    for name, p in model.named_parameters():
        p.requires_grad = name in keep


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(epoch: float, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at a (fractional) epoch."""
    if cfg.schedule == "step":
        return 0.1 ** ((epoch >= 0.5 * cfg.epochs) + (epoch >= 0.75 * cfg.epochs))
    if epoch < cfg.warmup_epochs:
        return (epoch + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return 1.0
    t = (epoch - cfg.warmup_epochs) / max(1e-9, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@dataclass
class Prepared:
    """What the loops need to turn uint8 images into model input."""

    input_size: int
    mean: float
    std: float
    in_chans: int
    channels_last: bool = False
    bf16: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images, self.input_size, self.mean, self.std, self.in_chans)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=self.bf16)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, prep: Prepared, task: str, batch_size: int = 128,
            progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Probabilities for uint8 images (N, C, H, W), in order."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        with prep.autocast():
            logits = model(prep(images[i: i + batch_size]).to(dev))
        out.append(to_probs(logits.float(), task).cpu())
        if progress:
            progress(min(1.0, (i + batch_size) / len(images)))
    return torch.cat(out).numpy()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: str, prep: Prepared, loss_fn: Callable) -> dict:
    """Loss, AUC, accuracy, sensitivity, specificity (at 0.5) and the probabilities of one split."""
    model.eval()
    dev = next(model.parameters()).device
    probs, losses = [], []
    y_all = torch.from_numpy(data.labels[split])
    for i in range(0, len(y_all), 128):
        with prep.autocast():
            logits = model(prep(data.images[split][i: i + 128]).to(dev)).float()
        losses.append(loss_fn(logits, y_all[i: i + 128].to(dev)).item() * len(logits))
        probs.append(to_probs(logits, data.task).cpu())
    p, y = torch.cat(probs).numpy(), data.labels[split]
    cols = y if is_multilabel(data.task) else np.eye(p.shape[1])[y[:, 0].astype(int)]
    sens, spec = metrics.macro_sens_spec(cols, p, 0.5)
    return {"loss": sum(losses) / len(y), "auc": metrics.get_auc(y, p, data.task),
            "acc": metrics.get_acc(y, p, data.task), "sensitivity": sens, "specificity": spec, "probs": p}


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    stopped_early: bool
    bf16: bool
    channels_last: bool
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def _save_resume(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def fit(model: nn.Module, spec: ModelSpec, data: Dataset, cfg: TrainConfig, work_dir: Path,
        progress: Callable[[dict], None] | None = None, dist: Dist | None = None) -> FitResult:
    """Train ``model`` on ``data``; the best epoch by validation AUC is what comes back.

    After every epoch the full training state goes to ``work_dir/.resume.pt``; a later call with the same recipe
    continues from it (an interrupted run loses at most one epoch).
    """
    dist = dist or Dist()
    seed_everything(cfg.seed)
    dev = device()
    model.to(dev)
    cnn = not spec.vit
    prep = Prepared(
        cfg.input_size or spec.model_input_size(data.size), *spec.norm, in_chans=data.channels,
        channels_last=cnn if cfg.channels_last is None else cfg.channels_last,
        bf16=(torch.cuda.is_available() or cpu_has_bf16()) if cfg.bf16 is None else cfg.bf16,
    )
    # Validation runs in fp32, as the app serves the model: bf16 moved a MobileNet-V2's probabilities by up to 0.17,
    # so an epoch chosen (and metrics stored) in bf16 would describe another model than the one users run.
    serving = dataclasses.replace(prep, bf16=False)
    if prep.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.freeze_all_but is not None:
        freeze_all_but(model, cfg.freeze_all_but)
    loss_fn = make_loss(data, cfg)
    opt = make_optimizer(model, cfg)
    train_model = model
    if dist.world > 1:
        train_model = nn.parallel.DistributedDataParallel(model)
    augment = Augment() if cfg.augment else None

    history: list[dict] = []
    best_auc, best_epoch, best_state, start_epoch, bad, elapsed = -1.0, -1, None, 0, 0, 0.0
    resume_path = work_dir / RESUME_FILE
    resumed_from = None
    if resume_path.exists():
        st = torch.load(resume_path, map_location="cpu", weights_only=True)
        if st.get("config_key") == cfg.key() and st.get("model_id") == spec.id:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            history, best_auc, best_epoch, bad = st["history"], st["best_auc"], st["best_epoch"], st["bad"]
            best_state, start_epoch, elapsed = st["best_state"], st["epoch"] + 1, st["elapsed"]
            torch.set_rng_state(st["rng"])
            resumed_from = start_epoch

    x_train, y_train = data.images["train"], torch.from_numpy(data.labels["train"])
    n = len(y_train)
    per_rank = max(1, cfg.batch_size // dist.world)
    steps = math.ceil(n / cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)  # same permutation on every rank, and after a resume
        perm = torch.randperm(n, generator=gen)
        train_model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step in range(steps):
            batch = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(batch) < dist.world:  # skipped on every rank alike: a rank left out would hang DDP's all-reduce
                continue
            idx = batch[dist.rank::dist.world][:per_rank]
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(epoch + step / steps, cfg)
            x = prep(x_train[idx]).to(dev)
            if augment:
                x = augment(x, gen)
            y = y_train[idx].to(dev)
            with prep.autocast():
                logits = train_model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            if progress and dist.main:
                progress({"epoch": epoch, "step": step + 1, "steps": steps, "loss": loss_sum / seen})
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        if dist.world > 1:  # BatchNorm statistics drift apart per rank: all evaluate rank 0's, so all stop alike
            for buf in model.buffers():
                torch.distributed.broadcast(buf, 0)
        val = evaluate(model, data, "val", serving, loss_fn)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / max(seen, 1),
               "val_loss": val["loss"], "val_acc": val["acc"], "val_sensitivity": val["sensitivity"],
               "val_specificity": val["specificity"], "val_auc": val["auc"], "epoch_seconds": epoch_s}
        history.append(row)
        if val["auc"] > best_auc:
            best_auc, best_epoch, bad = val["auc"], epoch + 1, 0
            best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if progress and dist.main:
            progress({**row, "epoch": epoch, "done": True})  # 0-based like the step events (row["epoch"] is 1-based)
        if dist.main:
            work_dir.mkdir(parents=True, exist_ok=True)
            _save_resume(resume_path, {
                "model_id": spec.id, "config_key": cfg.key(), "epoch": epoch, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "history": history, "best_auc": best_auc, "best_epoch": best_epoch,
                "bad": bad, "best_state": best_state, "elapsed": elapsed, "rng": torch.get_rng_state()})
        if cfg.patience and bad >= cfg.patience:
            stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(model, history, best_epoch, len(history), elapsed, stopped_early, prep.bf16,
                     prep.channels_last, resumed_from)


def clear_resume(work_dir: Path) -> None:
    (work_dir / RESUME_FILE).unlink(missing_ok=True)


def prepared_for(card: dict) -> Prepared:
    """The preprocessing a checkpoint was trained with (from its card), for inference in fp32."""
    return Prepared(card["input_size"], *card["normalisation"], in_chans=card["dataset"]["channels"])
