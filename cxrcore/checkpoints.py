"""Checkpoints on disk: ``<dir>/model.safetensors`` (fp16), ``card.json``, ``predictions.npz``, ``history.csv``.

Nothing here unpickles: weights are safetensors and their sha256 in the card is checked before they are used, so a
truncated or tampered file is refused with a message instead of being half-loaded.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .pretrained import file_sha256
from .zoo import list_models

WEIGHTS, CARD, PREDICTIONS, HISTORY = "model.safetensors", "card.json", "predictions.npz", "history.csv"


class CheckpointError(ValueError):
    """A checkpoint that is missing, broken or does not match its card."""


@dataclass(frozen=True)
class Checkpoint:
    """One trained model on disk: its folder and card, and whether its weights are present."""

    path: Path
    card: dict

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def has_weights(self) -> bool:
        return (self.path / WEIGHTS).exists()

    @property
    def dataset(self) -> str:
        return self.card["dataset"]["name"]

    def predictions(self) -> dict[str, np.ndarray]:
        return read_predictions(self.path)

    def history(self) -> list[dict]:
        return read_history(self.path)


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


def save(out_dir: Path, model: nn.Module, card: dict, predictions: dict[str, np.ndarray], history: list[dict]) -> dict:
    """Write all four files; the card gains the weights' sha256 and size. Returns the card written."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS + ".tmp")
    save_file(saved_state(model), str(tmp), metadata={"id": card["id"]})
    tmp.replace(out_dir / WEIGHTS)
    card = {**card, "weights_sha256": file_sha256(out_dir / WEIGHTS),
            "weights_bytes": (out_dir / WEIGHTS).stat().st_size}
    np.savez_compressed(out_dir / PREDICTIONS, **{k: np.asarray(v, dtype=np.float32) for k, v in predictions.items()})
    write_history(out_dir / HISTORY, history)
    (out_dir / CARD).write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
    return card


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_history(path: Path, history: list[dict]) -> None:
    if not history:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def read_history(path: Path) -> list[dict]:
    p = path / HISTORY if path.is_dir() else path
    if not p.exists() or not p.read_text().strip():
        return []
    with open(p) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_card(path: Path) -> dict:
    p = path / CARD
    if not p.exists():
        raise CheckpointError(f"{path} has no {CARD}: not a checkpoint folder")
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p} is not valid JSON ({exc}); rebuild the checkpoint") from exc
    for key in ("id", "dataset", "init", "metrics"):
        if key not in card:
            raise CheckpointError(f"{p} lacks '{key}'; rebuild the checkpoint")
    return card


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    p = path / PREDICTIONS
    if not p.exists():
        raise CheckpointError(f"{path} has no {PREDICTIONS}")
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_weights(path: Path, card: dict | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, after checking the file against the sha256 in its card."""
    from safetensors.torch import load_file

    card = card or read_card(path)
    w = path / WEIGHTS
    if not w.exists():
        raise CheckpointError(
            f"{card['id']}: weights are not shipped ({w} missing). Rebuild them with: {card.get('rebuild_command', 'python train/run_all.py --models ' + card['id'])}"
        )
    sha = file_sha256(w)
    if sha != card.get("weights_sha256"):
        raise CheckpointError(
            f"{w} does not match its card (sha256 {sha[:12]}... vs {str(card.get('weights_sha256'))[:12]}...): "
            "the file was changed or damaged, so it is refused. Restore it from git or rebuild it."
        )
    try:
        return load_file(str(w))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{w} cannot be read ({exc})") from exc


def load_state_into(model: nn.Module, path: Path) -> dict:
    """Load a checkpoint's full weights (strictly) into a model of the same architecture; returns its card."""
    card = read_card(path)
    state = read_weights(path, card)
    target = model.state_dict()
    try:
        model.load_state_dict({k: v.to(target[k].dtype) if k in target else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the {card['id']} architecture ({str(exc)[:300]})") from exc
    return card


def find(root: Path) -> list[Checkpoint]:
    """Every checkpoint folder under ``root`` (cards without weights included), sorted by dataset then id."""
    out = []
    for card_path in sorted(Path(root).rglob(CARD)):
        try:
            out.append(Checkpoint(card_path.parent, read_card(card_path.parent)))
        except CheckpointError:
            continue
    return sorted(out, key=lambda c: (c.dataset, _registry_order(c), c.id))


def _registry_order(ck: Checkpoint) -> int:
    """Zoo order (as ``--list`` prints it), so a newly registered model sorts beside its family; unregistered
    folders (the ensemble) keep their card's order."""
    ids = list_models()
    return ids.index(ck.id) if ck.id in ids else ck.card.get("order", len(ids))
