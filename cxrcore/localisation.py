"""Do the models' class activation maps point at the finding? Scored against the NIH radiologists' boxes.

Two measures per box, for the box's own label: the pointing game (is the CAM's peak inside the box?) and the
transfer-learning report's area overlap of the thresholded CAM region with the box (precision = mean area(box and
region) / area(region), recall = mean area(box and region) / area(box), F1 = 2PR/(P+R)). A map with no localisation
(empty or constant) counts as a miss with zero precision and recall, and is counted apart. Chance is stated beside:
a uniformly random point lands in a box with probability equal to its share of the image.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import compare, explain
from .data import Box
from .imaging import Limits, decode
from .inference import LoadedModel

EVAL_SIZE = 256  # px a side of the grid areas are measured on (a 60 px nodule in 1024 px is 15 px here)
REGION_LEVEL = 0.5  # the CAM region: where the map reaches half its peak
SPLITS = ("train", "val", "test")
# which boxes each figure pools; held out: images the model never trained on (validation too, unless it was
# cross-validated and refit on train + val)
SUBSETS = {"test": lambda s: s.split == "test", "held_out": lambda s: not s.trained_on, "all": lambda s: True}
LOCALISATION_FILE = "localisation.json"


@dataclass(frozen=True)
class BoxedImage:
    """One NIH image with boxes: every copy of it there is, by side in px, and its boxes on the models' square."""

    name: str
    split: str
    copies: Mapping[int, np.ndarray]  # side -> (side, side) uint8 pixels
    boxes: list[Box]  # fractions of the centre square, labels spelt as the model labels

    def pixels_for(self, data_size: int) -> np.ndarray:
        """The copy a model is served: the one at its dataset's size (the npz copies are the originals resized as
        uploads are), else the largest, to be resized as an upload."""
        return self.copies.get(data_size, self.copies[max(self.copies)])


def box_mask(box: Box, size: int = EVAL_SIZE) -> np.ndarray:
    """(size, size) bool: pixels whose centre lies in a box given as fractions of the square."""
    centres = (np.arange(size) + 0.5) / size
    cols = (centres >= box.x) & (centres <= box.x + box.w)
    rows = (centres >= box.y) & (centres <= box.y + box.h)
    return rows[:, None] & cols[None, :]


def cam_region(cam: explain.CamResult, size: int = EVAL_SIZE, level: float = REGION_LEVEL) -> np.ndarray:
    """(size, size) bool: where the upsampled map reaches ``level`` of its peak; empty with no localisation."""
    if not cam.informative:
        return np.zeros((size, size), bool)
    return explain.resize_map(cam.map, (size, size)) >= level * float(cam.map.max())


def area_overlap(region: np.ndarray, box: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of a region against a box on the same grid; an empty region scores 0 for both."""
    both = float((region & box).sum())
    return (both / region.sum() if region.any() else 0.0), (both / box.sum() if box.any() else 0.0)


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@dataclass(frozen=True)
class BoxScore:
    """One model's CAM for one box's label."""

    dataset: str
    model: str
    image: str
    split: str
    label: str
    method: str
    layer: str
    grid: str
    informative: bool
    hit: bool
    precision: float
    recall: float
    box_share: float  # the box's share of the image: the chance of a random point landing in it
    trained_on: bool = False  # the image was in the model's training data


def score_box(cam: explain.CamResult, box: Box) -> tuple[bool, float, float]:
    """(pointing hit, area precision, area recall) of one map against one box."""
    hit = cam.informative and explain.peak_in_box(cam.map, box, (1, 1))
    return hit, *area_overlap(cam_region(cam), box_mask(box))


def model_label(m: LoadedModel, box_label: str) -> int | None:
    """The model's output for a box's finding (case-insensitive: PneumoniaMNIST's "pneumonia"), None if it has none."""
    names = [n.lower() for n in m.label_names]
    return names.index(box_label.lower()) if box_label.lower() in names else None


def trained_on(m: LoadedModel, split: str) -> bool:
    """Whether a split's images trained the model: train always, validation too for a cross-validated refit."""
    return split == "train" or (split == "val" and m.card.cross_validated)


def score_model(m: LoadedModel, images: Iterable[BoxedImage], method: str = "GradCAM") -> list[BoxScore]:
    """Every box whose label the model predicts, scored with the CAM of that label on the image it is served."""
    out = []
    for img in images:
        x = m.input_for(img.pixels_for(m.data_size))
        for box in img.boxes:
            label = model_label(m, box.label)
            if label is None:
                continue
            cam = explain.cam_map(m, x, label, method)
            hit, precision, recall = score_box(cam, box)
            out.append(BoxScore(m.card.dataset.name, m.id, img.name, img.split, box.label, method, cam.layer,
                                f"{cam.grid[0]}x{cam.grid[1]}", cam.informative, bool(hit), precision, recall,
                                float(box_mask(box).mean()), trained_on(m, img.split)))
    return out


def summarise(scores: Sequence[BoxScore]) -> list[dict]:
    """One row per (dataset, model, method, subset): boxes behind it, maps with no localisation, pointing-game hit
    rate beside chance, and the area precision / recall / F1."""
    rows = []
    keys = dict.fromkeys((s.dataset, s.model, s.method) for s in scores)
    for dataset, model, method in keys:
        mine = [s for s in scores if (s.dataset, s.model, s.method) == (dataset, model, method)]
        for subset, keep in SUBSETS.items():
            part = [s for s in mine if keep(s)]
            if not part:
                continue
            p, r = float(np.mean([s.precision for s in part])), float(np.mean([s.recall for s in part]))
            rows.append({"dataset": dataset, "model": model, "method": method, "subset": subset,
                         "layer": part[0].layer, "grid": part[0].grid, "boxes": len(part),
                         "no_localisation": sum(not s.informative for s in part),
                         "pointing": float(np.mean([s.hit for s in part])),
                         "chance": float(np.mean([s.box_share for s in part])),
                         "precision": p, "recall": r, "f1": f1(p, r)})
    return rows


# ---- the boxed images on this machine ------------------------------------------------------------------------------

def boxed_images(data_dir: Path, all_boxes: Mapping[str, list[Box]]) -> list[BoxedImage]:
    """Every image of the local NIH files and samples with an NIH box: its copies at each size (the 1024 px sample
    PNG, decoded as an upload; the npz copies) and its boxes on the square."""
    copies: dict[str, dict[int, np.ndarray]] = {}
    split_of: dict[str, str] = {}
    for path in sorted(data_dir.glob("nih14_local_*.npz")):
        with np.load(path) as z:
            for split in SPLITS:
                images = None
                for k, name in enumerate(z[f"{split}_names"]):
                    if str(name) in all_boxes:
                        images = z[f"{split}_images"] if images is None else images
                        copies.setdefault(str(name), {})[images.shape[-1]] = images[k]
                        split_of[str(name)] = split
    for path in sorted((data_dir / "samples").glob("*.png")):
        if path.name in all_boxes:
            pixels = decode(path.read_bytes(), path.name, Limits()).pixels
            copies.setdefault(path.name, {})[pixels.shape[0]] = pixels
            split_of.setdefault(path.name, "test")  # the samples are test-split films
    return [BoxedImage(name, split_of[name], sides,
                       compare.boxes_for(name, compare.NIH_ORIGINAL_SHAPE, all_boxes))
            for name, sides in copies.items()]


def write(path: Path, scores: Sequence[BoxScore], command: str) -> dict:
    """The localisation table as JSON: the summary rows, every box's score, and how it was made."""
    table = {"command": command, "region_level": REGION_LEVEL, "eval_size": EVAL_SIZE,
             "rows": summarise(scores), "boxes": [asdict(s) for s in scores]}
    path.write_text(json.dumps(table, indent=1) + "\n")
    return table


def load(root: Path) -> dict | None:
    """The table written under a checkpoint root (None when no one has run the benchmark)."""
    path = root / LOCALISATION_FILE
    return json.loads(path.read_text()) if path.exists() else None
