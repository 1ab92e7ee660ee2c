"""Checkpoints on disk: ``<dir>/model.safetensors`` (fp16), ``card.json``, ``predictions.npz``, ``history.csv``.

Reading is defensive, because a checkpoint folder is a file tree anyone with write access can change: only regular
files are opened (a directory, a FIFO or a symlink to a device where a file should be is refused without blocking),
every file has a size bound, nothing is unpickled, the card is checked against its schema and bounds
(:class:`cxrcore.card.Card`), its AUCs are recomputed from the stored predictions, and the weights are checked
against the sha256 in the card and, where the tree has one, against the trusted hashes in ``MANIFEST.json``.
:func:`scan` returns the broken checkpoints with their reason beside the good ones, so one bad folder never hides or
stops the others.

Writing is crash-safe: :func:`save` writes the whole folder beside the old one and swaps it in with one rename, so a
kill or a full disk mid-save leaves the previous checkpoint as it was and no partial files.
"""
from __future__ import annotations

import csv
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from . import metrics
from .card import MAX_WEIGHTS_BYTES, SPLITS, Card, CardError, CheckpointError
from .task import is_multilabel
from .zoo import list_models

__all__ = ["CardError", "CheckpointError", "Checkpoint", "Broken", "Scan", "scan", "find", "save", "read_card",
           "read_weights", "read_predictions", "read_history", "load_state_into", "weights_ok", "pin"]

WEIGHTS, CARD, PREDICTIONS, HISTORY = "model.safetensors", "card.json", "predictions.npz", "history.csv"
MANIFEST = "MANIFEST.json"
OOD = "ood.json"  # fitted on the weights' features: kept across a save only when the weights did not change
PREDICTION_KEYS = ("val_probs", "val_labels", "test_probs", "test_labels")
# size bounds (bytes): a card is a few hundred KB at most, stored predictions a few MB (uncompressed)
MAX_CARD, MAX_HISTORY, MAX_PREDICTIONS, MAX_MANIFEST = 4 << 20, 4 << 20, 256 << 20, 4 << 20
AUC_TOLERANCE = 0.01  # card AUC vs the AUC recomputed from its stored predictions
log = logging.getLogger(__name__)


# ---- what was found -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """One trained model on disk: its folder and validated card, and what is wrong with it short of being unusable
    (``notes``: no stored predictions, an unreadable history)."""

    path: Path
    card: Card
    notes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def dataset(self) -> str:
        return self.card.dataset.name

    @property
    def has_weights(self) -> bool:
        return os.path.lexists(self.path / WEIGHTS)

    @property
    def has_predictions(self) -> bool:
        return os.path.lexists(self.path / PREDICTIONS)

    def predictions(self) -> dict[str, np.ndarray]:
        """The stored val/test predictions, checked against the card (shapes, ranges, labels)."""
        return stored_predictions(self.path, self.card)

    def history(self) -> list[dict]:
        return read_history(self.path)


@dataclass(frozen=True)
class Broken:
    """A folder with a card.json that cannot be used, why, and its dataset when the card names one."""

    path: Path
    reason: str
    dataset: str | None = None


@dataclass(frozen=True)
class Scan:
    found: list[Checkpoint]
    broken: list[Broken]


# ---- reading files defensively --------------------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most ``max_bytes``. Anything else (a directory, FIFO, socket or device, directly or
    through a symlink) is refused before it is opened, and the file is opened non-blocking and checked again, so a
    file swapped for a FIFO in between cannot hang the reader either."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is {_kind(st.st_mode)}, not a regular file; refused")
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path} is {st.st_size:,} bytes, over the {max_bytes:,} this file may have; refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be opened ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path} changed into {_kind(os.fstat(fd).st_mode)} while being opened; refused")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise CheckpointError(f"{path} grew past {max_bytes:,} bytes while being read; refused")
    return data


def _json(path: Path, max_bytes: int) -> object:
    try:
        return json.loads(read_regular(path, max_bytes))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({str(exc)[:200]})") from None


def read_card(path: Path) -> Card:
    """The folder's card, migrated and validated (:class:`CardError` says what is wrong and how to rebuild)."""
    p = Path(path) / CARD
    if not os.path.lexists(p):
        raise CheckpointError(f"{path} has no {CARD}: not a checkpoint folder")
    try:
        raw = _json(p, MAX_CARD)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; rebuild the checkpoint") from None
    return Card.from_dict(raw, str(p))


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """A predictions.npz as arrays (no pickles; bounded in size, compressed and uncompressed)."""
    p = Path(path) / PREDICTIONS
    if not os.path.lexists(p):
        raise CheckpointError(f"{path} has no {PREDICTIONS}")
    data = read_regular(p, MAX_PREDICTIONS)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_PREDICTIONS:
                raise CheckpointError(f"{p} unpacks to over {MAX_PREDICTIONS:,} bytes; refused")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{p} cannot be read as stored predictions ({str(exc)[:200]})") from None


def stored_predictions(path: Path, card: Card) -> dict[str, np.ndarray]:
    """The four stored arrays, checked against the card: one probability column per label, finite values in [0, 1],
    valid labels, as many rows as the card's split sizes."""
    p = read_predictions(path)
    where = Path(path) / PREDICTIONS
    missing = [k for k in PREDICTION_KEYS if k not in p]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}")
    n_out = len(card.label_names)
    multilabel = is_multilabel(card.task)
    for s in SPLITS:
        probs, labels = p[f"{s}_probs"], p[f"{s}_labels"]
        if probs.ndim != 2 or probs.shape[1] != n_out or not np.issubdtype(probs.dtype, np.floating):
            raise CheckpointError(f"{where}: {s}_probs is {probs.dtype} {probs.shape}, expected (N, {n_out}) floats")
        if not (np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()):
            raise CheckpointError(f"{where}: {s}_probs holds values that are not probabilities")
        width = n_out if multilabel else 1
        if labels.shape != (len(probs), width) or not np.isfinite(labels).all():
            raise CheckpointError(f"{where}: {s}_labels is {labels.shape}, expected ({len(probs)}, {width})")
        valid = np.isin(labels, (0, 1)) if multilabel else np.isin(labels, np.arange(n_out))
        if not valid.all():
            raise CheckpointError(f"{where}: {s}_labels holds values that are not labels of this task")
        if card.metrics.split(s) is not None and len(probs) != card.metrics.split(s).n:
            raise CheckpointError(f"{where}: {len(probs)} {s} predictions, but the card counts "
                                  f"{card.metrics.split(s).n} {s} images")
    return p


def verify_claims(card: Card, preds: dict[str, np.ndarray]) -> None:
    """Refuse a card whose macro AUCs are not those of its own stored predictions (an edited card, or predictions
    of another model), so the Benchmarks page never shows a number nothing supports."""
    for s in SPLITS:
        if card.metrics.split(s) is None:  # a cross-validated run before its test evaluation claims nothing there
            continue
        auc = metrics.get_auc(preds[f"{s}_labels"], preds[f"{s}_probs"], card.task)
        claimed = card.metrics.split(s).auc_macro
        if not abs(auc - claimed) <= AUC_TOLERANCE:
            raise CheckpointError(f"{card.id}: the card claims {s} AUC {claimed:.3f}, its stored predictions give "
                                  f"{auc:.3f}; the card was edited or belongs to other predictions, so it is refused. "
                                  f"Rebuild it with: {card.rebuild}")


def read_history(path: Path) -> list[dict]:
    """The per-epoch history (numbers only); an empty or missing file is no history, anything else unreadable is a
    :class:`CheckpointError`."""
    p = Path(path) / HISTORY if Path(path).is_dir() else Path(path)
    if not os.path.lexists(p):
        return []
    try:
        text = read_regular(p, MAX_HISTORY).decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        out = [{str(k): float(v) for k, v in row.items()} for row in rows]
    except (UnicodeDecodeError, csv.Error, ValueError, TypeError) as exc:
        raise CheckpointError(f"{p} is not a history of numbers ({str(exc)[:120]})") from None
    if any(math.isinf(v) for row in out for v in row.values()):
        raise CheckpointError(f"{p} holds infinite values")
    return out


# ---- weights ---------------------------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights_bytes(path: Path, card: Card) -> bytes:
    """The weights file, checked against the sha256 in its card and against the tree's manifest when it has one."""
    w = Path(path) / WEIGHTS
    if not os.path.lexists(w):
        raise CheckpointError(f"{card.id}: weights are not shipped ({w} missing). Rebuild them with: {card.rebuild}")
    data = read_regular(w, card.weights_bytes or MAX_WEIGHTS_BYTES)
    sha = _sha256(data)
    if sha != card.weights_sha256:
        raise CheckpointError(
            f"{w} does not match its card (sha256 {sha[:12]}... vs {str(card.weights_sha256)[:12]}...): "
            "the file was changed or damaged, so it is refused. Restore it from git or rebuild it."
        )
    _check_pinned(Path(path), sha)
    return data


def weights_ok(path: Path, card: Card) -> bool:
    """Whether the folder's weights are there and match their card (and the manifest): what "up to date" needs."""
    try:
        _weights_bytes(path, card)
    except CheckpointError:
        return False
    return True


def read_weights(path: Path, card: Card | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, from the very bytes that were checked against the card (no second read to race)."""
    from safetensors.torch import load

    card = card or read_card(path)
    data = _weights_bytes(path, card)
    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{Path(path) / WEIGHTS} cannot be read ({exc})") from exc


def load_state_into(model: nn.Module, path: Path) -> Card:
    """Load a checkpoint's full weights (strictly) into a model of the same architecture; returns its card."""
    card = read_card(path)
    state = read_weights(path, card)
    target = model.state_dict()
    try:
        model.load_state_dict({k: v.to(target[k].dtype) if k in target else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the {card.id} architecture ({str(exc)[:300]})") from exc
    return card


def saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: everything, or for a LoRA model only the adapter and the trainable head
    (its base is named in the card instead)."""
    state = model.state_dict()
    if hasattr(model, "peft_config"):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable or "lora_" in k or "modules_to_save" in k}
    # Weight tensors go to fp16; 1-D ones (normalisation statistics, biases: a few KB) stay fp32, because fp16's
    # 3 significant digits and 6e-5 subnormal floor moved a MobileNet-V2's probabilities by up to 0.06.
    return {k: (v.half() if v.is_floating_point() and v.ndim > 1 else v).contiguous() for k, v in state.items()}


@torch.no_grad()
def round_to_stored(model: nn.Module) -> nn.Module:
    """Round the model's weights, in place, to the precision its checkpoint stores, so the predictions and metrics
    written beside the weights are those of the shipped model (fp16 moved an EfficientNet-B0's outputs by 0.3)."""
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    for k, v in saved_state(model).items():
        params[k].copy_(v)
    return model


# ---- the manifest of trusted weights --------------------------------------------------------------------------------

def manifest_root(folder: Path) -> Path | None:
    """The checkpoint tree whose MANIFEST.json covers ``folder`` (``<root>/<id>`` or ``<root>/<dataset>/<id>``)."""
    for d in (Path(folder).parent, Path(folder).parent.parent):
        if os.path.lexists(d / MANIFEST):
            return d
    return None


def _read_manifest(root: Path) -> dict[str, str]:
    raw = _json(root / MANIFEST, MAX_MANIFEST)
    pins = raw.get("weights") if isinstance(raw, dict) else None
    if not isinstance(pins, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pins.items()):
        raise CheckpointError(f"{root / MANIFEST} is not a manifest ({{\"weights\": {{path: sha256}}}}); every "
                              "checkpoint under it is refused until it is restored from git")
    return pins


def is_pinned(folder: Path) -> bool:
    """Whether ``folder``'s weights are among the trusted ones of its tree: in the project's tree, the weights the
    repository ships (a card alone, or weights trained locally and not pinned, are not)."""
    root = manifest_root(folder)
    if root is None:
        return False
    try:
        return (Path(folder) / WEIGHTS).relative_to(root).as_posix() in _read_manifest(root)
    except CheckpointError:
        return False


def _check_pinned(folder: Path, sha: str) -> None:
    root = manifest_root(folder)
    if root is None:
        return
    rel = (folder / WEIGHTS).relative_to(root).as_posix()
    pinned = _read_manifest(root).get(rel)
    if pinned is None:
        raise CheckpointError(f"{folder / WEIGHTS} is not pinned in {root / MANIFEST}, which lists the trusted "
                              "weights of this tree; refused. If you trained it yourself, pin it with: "
                              "python train/run_all.py --pin")
    if pinned != sha:
        raise CheckpointError(f"{folder / WEIGHTS} (sha256 {sha[:12]}...) is not the file pinned in {root / MANIFEST} "
                              f"({pinned[:12]}...): changed since it was pinned, card included, so it is refused. "
                              "Restore it from git, or retrain it (training pins what it writes).")


def pin(root: Path, folders: Iterable[Path] | None = None) -> Path:
    """Record the current weights of ``folders`` (default: every checkpoint with weights under ``root``) as trusted
    in ``root/MANIFEST.json``, after checking each against its card; entries of files gone are dropped."""
    root = Path(root)
    chosen = list(folders) if folders is not None else [c.path for c in scan(root).found if c.has_weights]
    updates = {}
    for folder in chosen:
        card = read_card(folder)
        data = read_regular(folder / WEIGHTS, card.weights_bytes or MAX_WEIGHTS_BYTES)
        if _sha256(data) != card.weights_sha256:
            raise CheckpointError(f"{folder / WEIGHTS} does not match its card; not pinned")
        updates[(folder / WEIGHTS).relative_to(root).as_posix()] = card.weights_sha256
    lock = os.open(root, os.O_RDONLY)  # two trainings writing into one tree take turns (the lock goes with the fd)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pins = _read_manifest(root) if os.path.lexists(root / MANIFEST) else {}
        pins = {k: v for k, v in {**pins, **updates}.items() if (root / k).is_file()}
        doc = {"about": "sha256 of the trusted weights of this checkpoint tree, by path; checked on every load "
                        "(README: Trust). Written by train/run_all.py.", "weights": dict(sorted(pins.items()))}
        tmp = root / (MANIFEST + ".tmp")
        tmp.unlink(missing_ok=True)  # left by a killed pin
        _write(tmp, (json.dumps(doc, indent=2) + "\n").encode())
        tmp.replace(root / MANIFEST)
    finally:
        os.close(lock)
    return root / MANIFEST


# ---- writing a checkpoint folder as a whole -------------------------------------------------------------------------

def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _write(path: Path, data: bytes) -> None:
    """Write and fsync a new file (all of it, or an OSError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite(folder: Path, card: dict, predictions: dict[str, np.ndarray] | None = None) -> None:
    """Replace a checkpoint's card (and stored predictions) in place, weights untouched: for tools that update
    cards after training (calibration, the test-once evaluation). The card is validated before anything is written;
    each file goes to a temporary file and is renamed over the old one, predictions first, so a crash between the two
    leaves a card whose metrics disagree with its predictions, which loading reports as broken."""
    text = json.dumps(card, indent=2, default=_json_default) + "\n"
    Card.from_dict(json.loads(text), str(folder / CARD))  # never write a card that would not load
    files = ([(PREDICTIONS, _predictions_bytes(predictions))] if predictions is not None else []) + [
        (CARD, text.encode())]
    for name, data in files:
        tmp = folder / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            _write(tmp, data)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)


def _history_bytes(history: list[dict]) -> bytes:
    if not history:
        return b""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    return buf.getvalue().encode()


def _predictions_bytes(predictions: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in predictions.items()})
    return buf.getvalue()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the finished folder ``tmp`` at ``out_dir`` in one step; the old folder is removed afterwards."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
    elif _exchange(tmp, out_dir):
        shutil.rmtree(tmp)  # now holds the previous checkpoint
    else:  # two renames: between them (microseconds) the previous folder sits at ``old``
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
        os.rename(out_dir, old / "x")
        os.rename(tmp, out_dir)
        shutil.rmtree(old)


def _carry_over(out_dir: Path, tmp: Path, weights_changed: bool) -> None:
    """Files of the old folder this save does not write (a resume file, an OOD detector fitted on the same weights)
    move into the new folder as hard links (no copy of a large file); ``ood.json`` is dropped when the weights
    changed, since it describes the old weights' features."""
    if not out_dir.is_dir():
        return
    for entry in out_dir.iterdir():
        if entry.name in (WEIGHTS, CARD, PREDICTIONS, HISTORY) or (entry.name == OOD and weights_changed):
            continue
        target = tmp / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        elif entry.is_symlink() or not entry.is_file():
            continue  # never carry a link or special file into a fresh checkpoint
        else:
            try:
                os.link(entry, target)
            except OSError:
                shutil.copy2(entry, target)


def _remove_leftovers(out_dir: Path) -> None:
    """Hidden siblings a killed save of this folder left (``.<name>.tmp-<pid>-*``, ``.<name>.old-<pid>-*``), once
    the process that made them is gone, so a kill costs no disk space for longer than the next save."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*-*-*"):
        kind, _, rest = p.name[len(out_dir.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _previous_sha(out_dir: Path) -> str | None:
    try:
        return read_card(out_dir).weights_sha256
    except CheckpointError:
        return None


def save(out_dir: Path, model: nn.Module | None, card: Card, predictions: dict[str, np.ndarray],
         history: list[dict] | None = None) -> Card:
    """Write a checkpoint folder as a whole: weights (when there is a model), card (gaining the weights' sha256 and
    size), predictions and history go into a hidden sibling folder that then replaces ``out_dir`` in one rename.
    A failure or kill part-way leaves the previous folder untouched; a full disk raises a :class:`CheckpointError`
    that says so. Where the tree has a MANIFEST.json the new weights are pinned in it. Returns the card written."""
    from safetensors.torch import save as safetensors_bytes

    out_dir = Path(out_dir)
    files: dict[str, bytes] = {}
    if model is not None:
        files[WEIGHTS] = safetensors_bytes(saved_state(model), metadata={"id": card.id})
        card = replace(card, weights_sha256=_sha256(files[WEIGHTS]), weights_bytes=len(files[WEIGHTS]))
    else:
        card = replace(card, weights_sha256=None, weights_bytes=None)
    if predictions:
        files[PREDICTIONS] = _predictions_bytes(predictions)
    if history is not None:
        files[HISTORY] = _history_bytes(history)
    text = json.dumps(card.to_dict(), indent=2, default=_json_default) + "\n"
    card = Card.from_dict(json.loads(text), f"the card of {out_dir}")  # never write a card that would not load
    files[CARD] = text.encode()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        for name, data in files.items():
            _write(tmp / name, data)
        _carry_over(out_dir, tmp, _previous_sha(out_dir) != card.weights_sha256)
        _swap_in(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        need = sum(len(d) for d in files.values()) / 1e6
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"disk full while writing {out_dir} (it needs {need:.1f} MB): nothing was written "
                                  "and the previous checkpoint, if any, is unchanged. Free space and rerun.") from None
        raise CheckpointError(f"could not write {out_dir} ({exc}); the previous checkpoint, if any, is "
                              "unchanged") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    root = manifest_root(out_dir)
    if root is not None and model is not None:
        pin(root, [out_dir])
    return card


# ---- finding checkpoints --------------------------------------------------------------------------------------------

def _open(folder: Path) -> Checkpoint:
    """A checkpoint whose card is valid and agrees with its stored predictions; what is merely missing is noted."""
    card = read_card(folder)
    if card.metrics.test is None:  # the app and tables show test figures: none until the test is read
        raise CheckpointError(f"{card.id}: its test split not evaluated yet (training reads no test label); run: "
                              f"python train/evaluate_test.py --root {Path(folder).parent}")
    notes = []
    if os.path.lexists(folder / PREDICTIONS):
        verify_claims(card, stored_predictions(folder, card))
    else:
        notes.append(f"no stored predictions ({PREDICTIONS}): left out of ROC curves, calibration and the ensemble")
    try:
        read_history(folder)
    except CheckpointError as exc:
        notes.append(f"no training curve: {exc}")
    return Checkpoint(folder, card, tuple(notes))


def _dataset_hint(card_path: Path) -> str | None:
    """The dataset a broken card names, when it can be read that far."""
    try:
        raw = _json(card_path, MAX_CARD)
    except CheckpointError:
        return None
    name = raw.get("dataset", {}).get("name") if isinstance(raw, dict) and isinstance(raw.get("dataset"), dict) else None
    return name if isinstance(name, str) else None


def scan(root: Path) -> Scan:
    """Every folder under ``root`` with a card.json: the usable checkpoints (cards without weights included), sorted by
    dataset then zoo order, and the broken ones with their reason. Hidden folders (a save in progress) are skipped."""
    root = Path(root)
    found, broken = [], []
    for card_path in sorted(root.rglob(CARD)):
        folder = card_path.parent
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        try:
            found.append(_open(folder))
        except CheckpointError as exc:
            broken.append(Broken(folder, str(exc), _dataset_hint(card_path)))
    return Scan(sorted(found, key=lambda c: (c.dataset, _registry_order(c), c.id)), broken)


def find(root: Path) -> list[Checkpoint]:
    """The usable checkpoints under ``root`` (see :func:`scan`); each broken one is logged with its reason."""
    result = scan(root)
    for b in result.broken:
        log.warning("checkpoint %s is not usable: %s", b.path, b.reason)
    return result.found


def _registry_order(ck: Checkpoint) -> int:
    """Zoo order (as ``--list`` prints it), so a newly registered model sorts beside its family; unregistered
    folders (the ensemble) keep their card's order."""
    ids = list_models()
    return ids.index(ck.id) if ck.id in ids else (ck.card.order if ck.card.order is not None else len(ids))
