"""Training and prediction loops.

``fit`` trains one model on a :class:`~cxrcore.data.Dataset` with the paper's recipe (BCE with positive-class weight,
AdamW, cosine schedule, best epoch on validation AUC, early stopping) in an explicit precision (bf16 or fp16 autocast,
or fp32), channels_last for CNNs, fixed seeds, a resumable state after every epoch and DistributedDataParallel under
``torchrun`` (one process per GPU on ``cuda:$LOCAL_RANK``; gloo on CPUs).

The data path stays on the device: a uint8 split lives on the GPU when it fits (else each batch is gathered into
pinned memory and copied without blocking), resizing, normalising and augmenting run there, and the loss is read back
every :data:`LOSS_EVERY` steps, so the host queues steps without waiting for the GPU in between.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pickle
import platform
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, asdict, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .data import Augment, Dataset, preprocess
from .task import is_multilabel, label_columns, probs as to_probs
from .zoo import ModelSpec

RESUME_FILE = ".resume.pt"  # the training state after the last finished epoch (no weights but the current ones)
BEST_FILE = ".best.pt"  # the best epoch's weights, rewritten only when validation improves
LOSS_EVERY = 25  # steps between host reads of the running loss (each read waits for the GPU)
DEVICE_DATA_SHARE = 0.5  # a uint8 split is kept on the GPU when it takes at most this share of the free memory
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    lr: float = 1e-4  # for one process's batch: under DDP it is multiplied by the number of processes (linear rule)
    batch_size: int = 32  # per process (per GPU): the global batch is batch_size x the number of processes
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
    precision: str = "auto"  # bf16 | fp16 | fp32, or auto: resolve_precision picks this hardware's fast one
    compile: bool = False  # torch.compile the training forward pass
    sync_batchnorm: bool = False  # DDP on GPUs: BatchNorm statistics over the global batch, not each GPU's
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
    """This process's place in a torchrun job (rank 0 of 1 without torchrun), and the few collectives fit needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the GPU of this process on its node

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        d = cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
        if d.world > 1 and not torch.distributed.is_initialized():
            if torch.cuda.is_available():  # NCCL bound to this rank's GPU, never every rank on cuda:0
                torch.distributed.init_process_group("nccl", device_id=device(d))
            else:
                torch.distributed.init_process_group("gloo")
        return d

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (ceil(n / world) each, the last ones shorter or empty)."""
        size = math.ceil(n / self.world)
        return slice(min(n, self.rank * size), min(n, (self.rank + 1) * size))

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's :meth:`shard` of ``n`` rows, concatenated in order, on every rank."""
        if self.world == 1:
            return part
        size = math.ceil(n / self.world)
        padded = part.new_zeros((size, *part.shape[1:]))
        padded[: len(part)] = part
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat(parts)[:n]  # only shards after the first short one are short, so the padding is all at the end

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (decisions every rank must take alike)."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, 0)
        return box[0]


def cpu_has_bf16() -> bool:
    """avx512_bf16 / amx: bf16 autocast is 1.5-1.8x faster there; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device(dist: Dist | None = None) -> torch.device:
    """``cuda:$LOCAL_RANK``, made the current device (so NCCL and every default CUDA allocation use this rank's own
    GPU), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = (dist or Dist()).local_rank
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def resolve_precision(requested: str, dev: torch.device) -> str:
    """The precision a run uses, never left to chance: ``auto`` is bf16 on GPUs that have it (fp16 with a gradient
    scaler on older ones) and on CPUs with avx512_bf16/AMX, fp32 on other CPUs (where bf16 is emulated and slower)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if dev.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if requested == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 training needs a GPU; on a CPU use bf16 or fp32")
    if requested == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        warnings.warn("bf16 on a CPU without avx512_bf16/AMX is emulated: training runs several times slower than "
                      "in fp32 (a Kermany epoch of vanilla_cnn at one thread: about 6.5 min against 51 s), and the card "
                      "records bf16, so its rebuild asks for it too", RuntimeWarning, stacklevel=2)
    return requested


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def hardware_class(dev: torch.device) -> str:
    """The kind of machine a result depends on: the GPU model, or the CPU architecture and whether it has bf16."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.machine()}{', avx512_bf16' if cpu_has_bf16() else ''}"


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loss(data: Dataset, cfg: TrainConfig, dev: torch.device | None = None
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """BCE-with-logits with a positive-class weight for multi-label tasks; cross-entropy otherwise. The weight is put
    on ``dev`` once, not copied there every step."""
    if not is_multilabel(data.task):
        return lambda logits, y: F.cross_entropy(logits, y[:, 0].long(), label_smoothing=cfg.label_smoothing)
    y = data.labels["train"]
    if cfg.pos_weight == "balanced":
        pos = y.sum(0).clip(min=1)
        pw = torch.tensor((len(y) - pos) / pos, dtype=torch.float32)
    else:
        pw = torch.full((y.shape[1],), float(cfg.pos_weight))
    pw = pw.to(dev or "cpu")
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
    """What the loops need to turn uint8 images into model input, and the precision the model runs in."""

    input_size: int
    mean: float
    std: float
    in_chans: int
    channels_last: bool = False
    precision: str = "fp32"  # bf16 | fp16 | fp32 (resolved: never "auto")

    def __call__(self, images: torch.Tensor, augment: Augment | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Model input on the images' device: resized and normalised, augmented when asked, then in the layout the
        model was put in (after the augmentation, whose output is plain NCHW)."""
        x = preprocess(images, self.input_size, self.mean, self.std, self.in_chans)
        if augment is not None:
            x = augment(x, generator)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self, dev: torch.device):
        dtype = AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()


def fits_on_device(nbytes: int, dev: torch.device) -> bool:
    """Whether a split of ``nbytes`` should live on ``dev`` (a GPU with room to spare for the model)."""
    return dev.type == "cuda" and nbytes <= DEVICE_DATA_SHARE * torch.cuda.mem_get_info(dev)[0]


class DeviceRows:
    """One split's rows (uint8 images or labels) as the loops read them: on the GPU when they fit, gathered there;
    otherwise left where they are (on the CPU, for a memory-mapped dataset file that all ranks of a node share in the
    page cache), gathered into pinned memory and copied without blocking. On a CPU device nothing is copied."""

    def __init__(self, rows: torch.Tensor, dev: torch.device):
        self.dev = dev
        self.resident = dev.type == "cpu" or fits_on_device(rows.nbytes, dev)
        self.rows = rows.to(dev) if self.resident else rows

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (a CPU index tensor) on the device."""
        if self.resident:
            return self.rows[idx.to(self.dev, non_blocking=True)]
        # the caching host allocator keeps a pinned block until its copy has finished, so this cannot race
        out = torch.empty((len(idx), *self.rows.shape[1:]), dtype=self.rows.dtype, pin_memory=True)
        torch.index_select(self.rows, 0, idx, out=out)
        return out.to(self.dev, non_blocking=True)


@torch.no_grad()
def _logits(model: nn.Module, images: DeviceRows, prep: Prepared, n_out: int = 0, batch_size: int = 128,
            progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """fp32 logits of every image, in order, on the device ((0, n_out) for no images: a rank's empty shard)."""
    model.eval()
    out = [] if len(images) else [torch.empty(0, n_out, device=images.dev)]
    for i in range(0, len(images), batch_size):
        with prep.autocast(images.dev):
            out.append(model(prep(images.take(torch.arange(i, min(i + batch_size, len(images)))))).float())
        if progress:
            progress(min(1.0, (i + batch_size) / len(images)))
    return torch.cat(out)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, prep: Prepared, task: str, batch_size: int = 128,
            progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Probabilities for uint8 images (N, C, H, W), in order (preprocessed on the model's device)."""
    dev = next(model.parameters()).device
    return to_probs(_logits(model, DeviceRows(images, dev), prep, 0, batch_size, progress), task).cpu().numpy()


def evaluate(model: nn.Module, data: Dataset, split: str, prep: Prepared, loss_fn: Callable,
             dist: Dist | None = None) -> dict:
    """Loss, AUC, accuracy, sensitivity, specificity (at 0.5) and the probabilities of one split.

    Under DDP every rank scores its :meth:`Dist.shard` of the split and the logits are gathered, so every rank
    returns the numbers of the whole split (in the time of one shard)."""
    dist = dist or Dist()
    dev = next(model.parameters()).device
    y = data.labels[split]
    part = DeviceRows(data.images[split][dist.shard(len(y))], dev)
    logits = dist.gather_rows(_logits(model, part, prep, data.num_outputs), len(y))
    loss = loss_fn(logits, torch.from_numpy(y).to(dev)).item()
    p = to_probs(logits, data.task).cpu().numpy()
    cols = label_columns(y, data.task, p.shape[1])
    sens, spec = metrics.macro_sens_spec(cols, p, 0.5)
    return {"loss": loss, "auc": metrics.get_auc(y, p, data.task), "acc": metrics.get_acc(y, p, data.task),
            "sensitivity": sens, "specificity": spec, "probs": p}


@dataclass
class TrainStep:
    """One optimisation step, from a uint8 batch on the device to updated weights: preprocess and augment there,
    forward under the run's autocast, loss in fp32, backward (through the gradient scaler in fp16), optimiser step.
    Returns the loss as a device tensor: reading it is the caller's choice (it waits for the GPU)."""

    model: nn.Module  # what runs the forward pass: the DDP wrapper and/or the compiled module
    opt: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    prep: Prepared
    augment: Augment | None
    scaler: torch.amp.GradScaler

    def __call__(self, images: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = self.prep(images, self.augment, generator)
        with self.prep.autocast(x.device):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()


def wrap_ddp(model: nn.Module, dev: torch.device) -> nn.Module:
    """DistributedDataParallel on this rank's own GPU (``device_ids``), or over CPU processes."""
    return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    stopped_early: bool
    precision: str
    channels_last: bool
    resumed_from: int | None = None
    settings: dict = field(default_factory=dict)  # how it ran: device, compile, batch and lr after scaling, ...

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


class StateWriteError(OSError):
    """The resume state or the best weights could not be written (typically a full disk)."""


def _save(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` atomically: the old file stays whole until the new one is complete, and a failed
    write (a full disk) leaves no partial temporary file behind."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:  # torch reports a short write as RuntimeError
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 1e6
        raise StateWriteError(
            f"could not write {path} ({exc}); {free:.0f} MB free on that disk. Nothing partial was left behind: "
            "free some space (or train into another --out) and rerun; training resumes from the last state written."
        ) from exc


def _read_state(work_dir: Path, spec: ModelSpec, cfg: TrainConfig, set_aside: bool) -> dict | None:
    """The resume state of this model and recipe with its best weights (``state["best"]``), or None.

    An unreadable file (or best weights that do not match it) is reported by path and, when ``set_aside``, renamed
    to ``*.corrupt`` so the next start does not trip on it again; training then restarts from scratch."""
    path, best_path = work_dir / RESUME_FILE, work_dir / BEST_FILE
    if not path.exists():
        return None
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
        if st.get("config_key") != cfg.key() or st.get("model_id") != spec.id:
            return None  # another recipe's state: this run starts afresh (and overwrites it)
        st["best"] = None
        if st["best_epoch"] > 0:
            best = torch.load(best_path, map_location="cpu", weights_only=True)
            if best["epoch"] != st["best_epoch"]:
                raise ValueError(f"{best_path} holds epoch {best['epoch']}, the state names {st['best_epoch']}")
            st["best"] = best["model"]
        return st
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        if not set_aside:
            raise
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        warnings.warn(f"{path} could not be used ({type(exc).__name__}: {exc}); set aside as {aside}. "
                      "Training restarts from scratch.", RuntimeWarning, stacklevel=3)
        return None


def fit(model: nn.Module, spec: ModelSpec, data: Dataset, cfg: TrainConfig, work_dir: Path,
        progress: Callable[[dict], None] | None = None, dist: Dist | None = None,
        select_best: bool = True, stop_after: int | None = None) -> FitResult:
    """Train ``model`` on ``data``; the best epoch by validation AUC is what comes back (the last epoch when not
    ``select_best``: a cross-validated refit, whose epochs were chosen out of fold and whose "val" it trains on).
    ``stop_after`` ends training after that many epochs of the recipe's schedule (the refit stops where the folds
    peaked, with the learning rate they had there).

    Epochs are chosen in the training precision; stored predictions are the caller's, in fp32. After every epoch
    rank 0 writes the training state to ``work_dir/.resume.pt`` (and the best weights to ``.best.pt`` when they
    improve); a later call with the same recipe, under torchrun too, continues from it.
    """
    dist = dist or Dist()
    seed_everything(cfg.seed)
    dev = device(dist)
    prep = Prepared(
        cfg.input_size or spec.model_input_size(data.size), *spec.norm, in_chans=data.channels,
        channels_last=not spec.vit if cfg.channels_last is None else cfg.channels_last,
        precision=resolve_precision(cfg.precision, dev),
    )
    model.to(dev)
    if prep.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.freeze_all_but is not None:
        freeze_all_but(model, cfg.freeze_all_but)
    sync_bn = cfg.sync_batchnorm and dist.world > 1
    if sync_bn:
        if dev.type != "cuda":
            raise ValueError("SyncBatchNorm runs on GPUs only; train without sync_batchnorm on CPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loss_fn = make_loss(data, cfg, dev)
    lr = cfg.lr * dist.world  # linear scaling: the global batch grows with the number of processes
    opt = make_optimizer(model, dataclasses.replace(cfg, lr=lr))
    scaler = torch.amp.GradScaler(dev.type, enabled=prep.precision == "fp16")

    history: list[dict] = []
    best_auc, best_epoch, best_state, start_epoch, bad, elapsed, resumed_from = -1.0, 0, None, 0, 0, 0.0, None
    st = _read_state(work_dir, spec, cfg, set_aside=True) if dist.main else None
    if dist.broadcast(st is not None):
        st = st if dist.main else _read_state(work_dir, spec, cfg, set_aside=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        scaler.load_state_dict(st["scaler"])
        history, best_auc, best_epoch, bad = st["history"], st["best_auc"], st["best_epoch"], st["bad"]
        best_state, start_epoch, elapsed = st["best"], st["epoch"] + 1, st["elapsed"]
        torch.set_rng_state(st["rng"])
        if dev.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"], dev)
        resumed_from = start_epoch
    train_model = wrap_ddp(model, dev) if dist.world > 1 else model
    step_fn = TrainStep(torch.compile(train_model) if cfg.compile else train_model, opt, loss_fn, prep,
                        Augment() if cfg.augment else None, scaler)

    x_train = DeviceRows(data.images["train"], dev)
    y_train = DeviceRows(torch.from_numpy(data.labels["train"]), dev)
    n, global_batch = len(y_train), cfg.batch_size * dist.world
    steps = math.ceil(n / global_batch)
    gen, aug_gen = torch.Generator(), torch.Generator(device=dev)
    stopped_early = False
    for epoch in range(start_epoch, min(cfg.epochs, stop_after or cfg.epochs)):
        gen.manual_seed(cfg.seed * 1000 + epoch)  # same permutation on every rank, and after a resume
        aug_gen.manual_seed(cfg.seed * 1000 + epoch + 10 ** 6)
        perm = torch.randperm(n, generator=gen)
        model.train()
        t0, running, seen, shown = time.perf_counter(), torch.zeros((), device=dev), 0, float("nan")
        for step in range(steps):
            batch = perm[step * global_batch:(step + 1) * global_batch]
            if len(batch) < dist.world:  # skipped on every rank alike: a rank left out would hang DDP's all-reduce
                continue
            idx = batch[dist.rank::dist.world]
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(epoch + step / steps, cfg)
            running += step_fn(x_train.take(idx), y_train.take(idx), aug_gen) * len(idx)
            seen += len(idx)
            if progress and dist.main:
                if step % LOSS_EVERY == 0 or step == steps - 1:
                    shown = running.item() / seen
                progress({"epoch": epoch, "step": step + 1, "steps": steps, "loss": shown})
        totals = dist.sum(torch.stack([running, torch.tensor(float(seen), device=dev)]))
        train_loss = (totals[0] / totals[1].clamp(min=1)).item()
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        if dist.world > 1:  # BatchNorm statistics drift apart per rank: every shard is scored with rank 0's
            for buf in model.buffers():
                torch.distributed.broadcast(buf, 0)
        val = evaluate(model, data, "val", prep, loss_fn, dist)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": train_loss,
               "val_loss": val["loss"], "val_acc": val["acc"], "val_sensitivity": val["sensitivity"],
               "val_specificity": val["specificity"], "val_auc": val["auc"], "epoch_seconds": epoch_s}
        improved = row["val_auc"] > best_auc
        row, improved = dist.broadcast((row, improved))  # rank 0 decides; every rank follows
        history.append(row)
        if improved:
            best_auc, best_epoch, bad = row["val_auc"], epoch + 1, 0
            best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if progress and dist.main:
            # 0-based like the step events (row["epoch"] is 1-based); the epoch's validation probabilities for
            # callers that keep them (cross-validation pools them out of fold)
            progress({**row, "epoch": epoch, "done": True, "val_probs": val["probs"]})
        if dist.main:
            work_dir.mkdir(parents=True, exist_ok=True)
            if improved:  # before the state that names it, so a state never points at weights not yet written
                _save({"epoch": best_epoch, "model": best_state}, work_dir / BEST_FILE)
            _save({"model_id": spec.id, "config_key": cfg.key(), "epoch": epoch, "model": model.state_dict(),
                   "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "history": history,
                   "best_auc": best_auc, "best_epoch": best_epoch, "bad": bad, "elapsed": elapsed,
                   "rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
                  work_dir / RESUME_FILE)
        if cfg.patience and bad >= cfg.patience:
            stopped_early = True
            break
    if best_state is not None and select_best:
        model.load_state_dict(best_state)
    best_epoch = best_epoch if select_best else len(history)
    settings = {"device": str(dev), "hardware_class": hardware_class(dev), "threads": torch.get_num_threads(),
                "compile": cfg.compile, "sync_batchnorm": sync_bn, "global_batch_size": global_batch, "lr": lr,
                "data_on_device": x_train.resident and dev.type != "cpu"}
    return FitResult(model, history, best_epoch, len(history), elapsed, stopped_early, prep.precision,
                     prep.channels_last, resumed_from, settings)


def clear_resume(work_dir: Path) -> None:
    """Remove the resume state and the best weights (the checkpoint now holds them)."""
    for name in (RESUME_FILE, BEST_FILE):
        (work_dir / name).unlink(missing_ok=True)


def prepared_for(card: dict) -> Prepared:
    """The preprocessing a checkpoint was trained with (from its card), for inference in fp32."""
    return Prepared(card["input_size"], *card["normalisation"], in_chans=card["dataset"]["channels"])
