"""Is this an upright frontal chest film, and of the population the task's models learnt from?

A tiny CNN (64 px, grey) trained self-supervised on local chest films (see :mod:`cxrcore.gate_training`) tells an
upright film from the same film rotated, flipped or inverted, and from images that are no chest film at all
(documents, noise, photographs); a second output tells adult (NIH) from paediatric (Kermany / PneumoniaMNIST) films.
Colour is judged before the grey conversion, from the upload's colour saturation. Two logistic probes on the CNN's
pooled features (:class:`Probe`, fitted with the CNN fixed) tell a whole film from a zoomed-in or cropped part of one,
and adult from paediatric films as uploads reach the gate (full-size films and PneumoniaMNIST's 28 px ones); where
the card has the population probe it replaces the domain output (on validation it caught 99 % of adult films on a
paediatric task at 1 % false alarms, the domain output 93 %). Every threshold was chosen on validation images and is
stored in the gate's card. The gate warns; it never refuses: the radiologist decides.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors, save as save_safetensors
from torch import nn

from . import datasets
from .imaging import to_dataset_size
from .zoo import SimpleCNN

SIZE = 64  # px the gate reads, whatever the task's size
WIDTHS = [8, 16, 32, 64]
GRID = 4  # the last feature map is pooled to 4x4, not 1x1: orientation is a question of where things are
TRANSFORMS = ("rot90", "rot180", "rot270", "hflip", "vflip", "inverted")
CLASSES = ("upright", *TRANSFORMS, "not_xray")
DOMAIN_OUTPUT = len(CLASSES)  # the last output: logit of "paediatric" (vs adult)
GATE_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "gate"
WEIGHTS, CARD = "gate.safetensors", "gate.json"
DESCRIBE = {"rot90": "rotated by 90 degrees", "rot180": "rotated by 180 degrees (upside down)",
            "rot270": "rotated by 270 degrees", "hflip": "mirrored left-right", "vflip": "mirrored top-bottom",
            "inverted": "inverted (a negative: bone dark, air bright)",
            "not_xray": "not a chest radiograph (a document, a photograph, noise or another image)"}
log = logging.getLogger(__name__)


def orient(pixels: np.ndarray, kind: str) -> np.ndarray:
    """An (H, W) uint8 film as ``kind`` (one of CLASSES[:-1]) would deliver it: the transforms the gate detects."""
    if kind == "upright":
        return pixels.copy()
    if kind.startswith("rot"):
        return np.ascontiguousarray(np.rot90(pixels, int(kind[3:]) // 90))
    if kind == "hflip":
        return np.ascontiguousarray(pixels[:, ::-1])
    if kind == "vflip":
        return np.ascontiguousarray(pixels[::-1])
    if kind == "inverted":
        return 255 - pixels
    raise ValueError(f"unknown transform {kind!r}; known: {', '.join(CLASSES[:-1])}")


def population(dataset: str) -> str | None:
    """'adult' or 'paediatric' for a chest X-ray dataset name, None for other tasks (the chest gate does not apply):
    the dataset entry says (an unregistered name, e.g. a MedMNIST flag without an entry, is not a chest task)."""
    entry = datasets.find(dataset)
    return entry.population if entry else None


def colour_saturation(rgb: np.ndarray) -> float:
    """Mean chroma (max - min of R, G, B over 255) of an (H, W, 3) uint8 image: ~0 for a grey film in any file."""
    rgb = np.asarray(rgb)
    return float((rgb.max(-1).astype(np.int16) - rgb.min(-1)).mean() / 255.0) if rgb.ndim == 3 else 0.0


_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def file_saturation(data: bytes) -> float:
    """Colour saturation of an uploaded PNG/JPEG/TIFF/BMP before its grey conversion (0 for grey modes, read from the
    header alone, and for DICOM or anything PIL cannot open: the decoder judges those). Colour files are read as a
    256 px thumbnail, so this costs little beside the full decode."""
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "TIFF", "BMP")) as im:
            if im.mode in _GREY_MODES:
                return 0.0
            im.draft("RGB", (256, 256))  # JPEG: decode at reduced scale
            im.thumbnail((256, 256))
            return colour_saturation(np.asarray(im.convert("RGB")))
    except Exception:  # noqa: BLE001 - an unreadable file is the decoder's to refuse, with its own message
        return 0.0


class GateNet(SimpleCNN):
    """SimpleCNN whose last map is pooled to GRID x GRID (kept in place) before the linear head."""

    def __init__(self) -> None:
        super().__init__(WIDTHS, len(CLASSES) + 1, 1, dropout=0.1)
        self.pool = nn.AdaptiveAvgPool2d(GRID)
        self.head = nn.Linear(WIDTHS[-1] * GRID * GRID, len(CLASSES) + 1)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 64, 64) -> the gate's float input in [-1, 1]."""
    return images.float() / 127.5 - 1.0


@dataclass(frozen=True)
class Thresholds:
    """Chosen on validation images only (see the card's ``threshold_rule``)."""

    upright: float  # flag when P(upright) is below it
    adult_max_paediatric: float  # on an adult task, flag when P(paediatric) is above it
    paediatric_min_paediatric: float  # on a paediatric task, flag when P(paediatric) is below it
    colour: float  # flag when the upload's colour saturation is above it
    upright_paediatric: float | None = None  # on a paediatric task, flag when P(upright) is below it (None: upright)
    zoomed: float | None = None  # flag when P(zoomed in or cropped) is above it (None: no zoom probe)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name in ("upright_paediatric", "zoomed") and value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
                raise ValueError(f"gate threshold {name}={value!r} is not a number strictly between 0 and 1")


@dataclass(frozen=True)
class Reading:
    """What the gate saw in one image."""

    probs: dict[str, float]  # per class of CLASSES
    paediatric: float  # P(paediatric film)
    zoomed: float = 0.0  # P(a zoomed-in or cropped film), 0 without a zoom probe


@dataclass(frozen=True)
class Probe:
    """Logistic regression on the standardised pooled features of the gate's CNN (P(zoomed in or cropped), or
    P(paediatric))."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    def prob(self, pooled: np.ndarray) -> np.ndarray:
        z = ((np.asarray(pooled) - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.weights)
        return 1.0 / (1.0 + np.exp(-(z + self.bias)))


@dataclass(frozen=True)
class Finding:
    """One check that fired: its name (orientation, inverted, not a chest film, colour, population) and why."""

    check: str
    detail: str


def pooled_and_logits(net: GateNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 1, 64, 64) -> the pooled features the head reads (N, 64*GRID*GRID) and the logits, in eval mode."""
    feats = net.pool(net.features(to_input(images))).flatten(1)
    return feats, net.head(feats)


@dataclass
class Gate:
    net: GateNet
    thresholds: Thresholds
    zoom: Probe | None = None
    population: Probe | None = None  # replaces the domain output's P(paediatric) when present

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 512) -> list[Reading]:
        """uint8 (N, 1, 64, 64) -> one reading per image."""
        self.net.eval()
        out = []
        for i in range(0, len(images), batch_size):
            feats, logits = pooled_and_logits(self.net, images[i:i + batch_size])
            probs = torch.softmax(logits[:, :DOMAIN_OUTPUT], 1).numpy()
            paed = (self.population.prob(feats.numpy()) if self.population
                    else torch.sigmoid(logits[:, DOMAIN_OUTPUT]).numpy())
            zoomed = self.zoom.prob(feats.numpy()) if self.zoom else np.zeros(len(feats))
            out += [Reading(dict(zip(CLASSES, map(float, p))), float(q), float(z))
                    for p, q, z in zip(probs, paed, zoomed)]
        return out

    def findings(self, reading: Reading, population: str | None, saturation: float = 0.0) -> list[Finding]:
        """The checks one reading fails, given the task's population ('adult', 'paediatric' or None: not judged)."""
        t, found = self.thresholds, []
        upright = t.upright_paediatric if population == "paediatric" and t.upright_paediatric is not None else t.upright
        if saturation > t.colour:
            found.append(Finding("colour", f"a colour image (saturation {saturation:.2f} > {t.colour:.2f}), "
                                           "not a radiograph"))
        if reading.probs["upright"] < upright:
            worst = max(CLASSES[1:], key=reading.probs.get)
            check = {"inverted": "inverted", "not_xray": "not a chest film"}.get(worst, "orientation")
            found.append(Finding(check, f"looks {DESCRIBE[worst]} (P(upright frontal film) "
                                        f"{reading.probs['upright']:.2f} < {upright:.2f})"))
            return found  # the population of a film that is not upright is not worth judging
        if t.zoomed is not None and reading.zoomed > t.zoomed:
            found.append(Finding("zoom", f"looks zoomed in or cropped, not a whole film (P {reading.zoomed:.2f} > "
                                         f"{t.zoomed:.2f}); these models learnt from whole films"))
        if population == "adult" and reading.paediatric > t.adult_max_paediatric:
            found.append(Finding("population", f"looks like a paediatric film (P {reading.paediatric:.2f}); these "
                                               "models learnt from adult films"))
        if population == "paediatric" and reading.paediatric < t.paediatric_min_paediatric:
            found.append(Finding("population", f"looks like an adult film (P(paediatric) {reading.paediatric:.2f}); "
                                               "these models learnt from paediatric films"))
        return found

    def check(self, pixels: np.ndarray, population: str | None, saturation: float = 0.0) -> list[Finding]:
        """The checks an (H, W) uint8 grey image at any size fails."""
        x = torch.from_numpy(to_dataset_size(pixels, SIZE))[None, None]
        return self.findings(self.read(x)[0], population, saturation)


def save(folder: Path, net: GateNet, card: dict) -> None:
    """fp16 safetensors and the card (recipe, data, thresholds, validation figures, the weights' sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = save_safetensors({k: v.detach().half().contiguous() for k, v in net.state_dict().items()})
    (folder / WEIGHTS).write_bytes(data)
    card = {**card, "weights_sha256": hashlib.sha256(data).hexdigest()}
    (folder / CARD).write_text(json.dumps(card, indent=1) + "\n")


@functools.lru_cache(maxsize=1)
def shipped() -> Gate | None:
    """The committed gate, loaded once; None (logged) when it is missing or refused."""
    try:
        return load(GATE_DIR)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        log.warning("chest-film gate not used: %s", exc)
        return None


def load(folder: Path = GATE_DIR) -> Gate:
    """The gate in ``folder``; raises ValueError (with the reason) when its card, weights or thresholds are unusable."""
    card = json.loads((folder / CARD).read_text())
    data = (folder / WEIGHTS).read_bytes()
    if hashlib.sha256(data).hexdigest() != card.get("weights_sha256"):
        raise ValueError(f"{folder / WEIGHTS} does not match the sha256 in its card")
    net = GateNet()
    net.load_state_dict({k: v.float() for k, v in load_safetensors(data).items()})
    probe = lambda key: Probe(**card[key]) if card.get(key) else None  # noqa: E731
    return Gate(net.eval(), Thresholds(**card["thresholds"]), probe("zoom_probe"), probe("population_probe"))
