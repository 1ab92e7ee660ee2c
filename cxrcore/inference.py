"""One-call model API: load a checkpoint folder, get probabilities for images.

    from cxrcore.inference import load_model
    m = load_model("checkpoints/densenet121")
    probs = m.predict(images_uint8)          # (N, 1, 64, 64) uint8 -> (N, 14) probabilities
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoints
from .calibration import Calibration
from .card import Card
from .engine import Prepared, predict
from .imaging import to_dataset_size, to_model_batch
from .pretrained import WeightsNotFound, load_imagenet, load_lora_base, wrap_lora
from .zoo import ModelSpec, get_spec


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    card: Card
    prep: Prepared
    path: Path

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def label_names(self) -> list[str]:
        return self.card.label_names

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def data_size(self) -> int:
        return self.card.dataset.size

    @property
    def square(self) -> str:
        return self.card.dataset.square

    def input_for(self, pixels: np.ndarray) -> torch.Tensor:
        """A decoded film, (H, W) or (H, W, 3) uint8 at any size, as this model's (1, C, S, S) uint8 input: resized to
        the dataset's size with its square rule, exactly as the training images were built."""
        return to_model_batch(to_dataset_size(pixels, self.data_size, self.square))

    @property
    def calibration(self) -> Calibration | None:
        """The calibration fitted on held-out predictions and stored in the card (None: a card from before it)."""
        return Calibration.from_dict(self.card.calibration) if self.card.calibration else None

    def predict(self, images: torch.Tensor, raw: bool = False) -> np.ndarray:
        """uint8 (N, C, size, size) at the dataset's size -> calibrated probabilities (N, outputs), the ones the app
        serves and ``predictions.npz`` stores; ``raw=True`` (or :meth:`predict_raw`): the network's own outputs."""
        probs = self.predict_raw(images)
        return probs if raw or self.calibration is None else self.calibration.apply(probs)

    def predict_raw(self, images: torch.Tensor) -> np.ndarray:
        """The network's uncalibrated sigmoid/softmax outputs (inflated by the positive weight for BCE models)."""
        return predict(self.model, images, self.prep, self.task)


def _lora_model(spec: ModelSpec, card: Card, path: Path) -> nn.Module:
    """Rebuild a LoRA model: its pretrained base first (checked against the hash in the card), then the adapter."""
    base_rec = card.init.lora_base
    if not base_rec:
        raise checkpoints.CheckpointError(f"{card.id}: a LoRA card without its base (init.lora_base); rebuild it with: "
                                          f"{card.rebuild}")
    channels = card.dataset.channels
    base = spec.build(len(card.label_names), channels, card.input_size)
    if base_rec["kind"] == "imagenet":
        rec = load_imagenet(spec, base, channels)
        if base_rec["sha256"] and rec.sha256 and rec.sha256 != base_rec["sha256"]:
            raise checkpoints.CheckpointError(f"{card.id}: ImageNet base weights differ from those it was trained on")
    else:
        base_dir = path.parent / base_rec.get("path", base_rec["id"])
        if not (base_dir / checkpoints.WEIGHTS).exists():
            raise WeightsNotFound(
                f"{card.id} is a LoRA adapter on the project's {base_rec['id']} checkpoint, whose weights are not "
                f"here ({base_dir}). Rebuild it with: {spec.lora_base.train_command}, then retrain the adapter "
                f"(python train/run_all.py --force --models {card.id})"
            )
        rec = load_lora_base(spec, base, base_dir, channels)
        if rec.sha256 != base_rec["sha256"]:
            raise checkpoints.CheckpointError(
                f"{card.id} was trained on a different {base_rec['id']} checkpoint than the one in {base_dir}; "
                "retrain the adapter or restore that base."
            )
    model = wrap_lora(base)
    state = checkpoints.read_weights(path, card)
    target = model.state_dict()
    unknown = [k for k in state if k not in target]
    if unknown:
        raise checkpoints.CheckpointError(f"{path}: adapter tensors do not fit the model ({unknown[:3]})")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=False)
    return model


def load_model(path: str | Path) -> LoadedModel:
    """Build the architecture named in the card and load its verified weights (fp32, eval mode, CPU/GPU)."""
    path = Path(path)
    card = checkpoints.read_card(path)
    if card.input_size is None or card.normalisation is None:
        raise checkpoints.CheckpointError(f"{card.id}: its card names no input size or normalisation, so it is not a "
                                          f"network that can read images; rebuild it with: {card.rebuild}")
    spec = get_spec(card.id)
    if card.init.kind == "lora":
        model = _lora_model(spec, card, path)
    else:
        model = spec.build(len(card.label_names), card.dataset.channels, card.input_size)
        checkpoints.load_state_into(model, path)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(dev).eval()
    prep = Prepared(card.input_size, *card.normalisation, in_chans=card.dataset.channels)
    if not spec.vit:  # channels_last: 1.4-1.8x faster CPU inference for CNNs, same numbers
        model.to(memory_format=torch.channels_last)
        prep.channels_last = True
    return LoadedModel(model, spec, card, prep, path)


def load_all(root: str | Path, dataset: str | None = None) -> tuple[dict[str, LoadedModel], dict[str, str]]:
    """Every loadable model under ``root`` (optionally of one dataset), and why each other one is not loadable."""
    loaded, problems = {}, {}
    for ck in checkpoints.find(Path(root)):
        if ck.id == "ensemble" or (dataset and ck.dataset != dataset):
            continue
        key = f"{ck.dataset}/{ck.id}"
        try:
            loaded[key] = load_model(ck.path)
        except Exception as exc:  # noqa: BLE001 - one checkpoint that cannot load must not stop the others; the
            problems[key] = str(exc)  # reason is shown on the Models page
    return loaded, problems
