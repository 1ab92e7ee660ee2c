"""Out-of-distribution checks, measured (run by hand): detection rate per transform, crop and kind of non-film,
false-alarm rate on real test films, for the chest-film gate alone, the resolution check alone, the task's distance
detector alone (the first model with a usable one, as the Compare page uses), and all of them (what the Compare page shows),
beside the targets; with ``--every-detector``, each model's distance detector alone. No image used here trained the gate or a detector or
chose a threshold. Kermany films go through the app's upload path (file bytes, decode, centre square, resize).

    python benchmarks/ood_gate.py
    python benchmarks/ood_gate.py --n 100        # fewer images per set (quicker)
    python benchmarks/ood_gate.py --datasets pneumoniamnist-local --every-detector
"""
from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cxrcore import gate, gate_training as gt, imaging, ood  # noqa: E402
from cxrcore.data import REPO_ROOT, data_dir, load_dataset  # noqa: E402
from cxrcore.inference import load_all  # noqa: E402
from helpers import dicom  # noqa: E402  (the tests' in-memory DICOM writer)

DETECT_TARGET, FALSE_ALARM_TARGET = 0.90, 0.05
CROPS = {"centre 70%": (0.7, 0.5, 0.5), "centre 50%": (0.5, 0.5, 0.5), "top-left 50%": (0.5, 0.0, 0.0),
         "bottom-right 50%": (0.5, 1.0, 1.0)}  # side share, then where the crop sits (0 top/left .. 1 bottom/right)
SEED = 1234  # not the gate's training seed: other synthetic images than it learnt from


@dataclass
class Set:
    """Grey uint8 images as the app holds them (any size), the upload's colour saturation, and whether a
    warning is the right answer."""

    name: str
    images: list[np.ndarray]
    saturation: np.ndarray
    should_flag: bool


def _decoded(name: str, files: list[bytes], should_flag: bool) -> Set:
    """Files through the app's own decoding and colour measurement."""
    images = [imaging.decode(f, "x.dcm" if f[128:132] == b"DICM" else "").pixels for f in files]
    return Set(name, images, np.array([gate.file_saturation(f) for f in files]), should_flag)


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, "PNG")
    return buf.getvalue()


def crop(pixels: np.ndarray, share: float, y: float, x: float) -> np.ndarray:
    """A zoomed-in upload: the square of ``share`` of the film's side, placed at (y, x) in [0, 1]."""
    h, w = pixels.shape[:2]
    side = int(round(min(h, w) * share))
    top, left = int(round((h - side) * y)), int(round((w - side) * x))
    return pixels[top:top + side, left:left + side].copy()


def sample_files(root: Path) -> dict[str, list[bytes]]:
    """The 12 sample films as 8-bit PNG, 16-bit PNG, and 12-bit DICOM without and with a VOI window."""
    pngs = [p.read_bytes() for p in sorted((root / "samples").glob("*.png"))]
    grey = [imaging.decode(b).pixels for b in pngs]
    twelve = [g.astype(np.uint16) * 16 for g in grey]
    return {"8-bit PNG": pngs, "16-bit PNG": [_png((g.astype(np.uint16) * 257).astype(np.uint16)) for g in grey],
            "DICOM (no window)": [dicom(t) for t in twelve],
            "DICOM (window)": [dicom(t, WindowCenter=2048, WindowWidth=4096) for t in twelve]}


def sets(root: Path, n: int, population: str) -> list[Set]:
    rng = np.random.default_rng(SEED)
    nih = list(gt.nih(root, "test").images[:n])
    with np.load(root / "nih14_local_224.npz") as z:
        nih224 = list(z["test_images"][:n])
    kermany_paths = gt.kermany_paths(root, "test")
    kermany = _decoded("Kermany test films (PneumoniaMNIST test images, 224 px)",
                       [kermany_paths[i].read_bytes() for i in rng.permutation(len(kermany_paths))[:n]],
                       population == "adult")
    pmnist = load_dataset("pneumoniamnist-local", 28).images["test"][:n, 0].numpy()
    zero = lambda k: np.zeros(k)  # noqa: E731 - grey arrays: no colour
    out = [Set("NIH test films", nih, zero(len(nih)), population == "paediatric")]
    out += [_decoded(f"12 samples, {k}", v, population == "paediatric") for k, v in sample_files(root).items()]
    out += [kermany, Set("PneumoniaMNIST test, 28 px", list(pmnist), zero(len(pmnist)), population == "adult")]
    for kind in gt.TRANSFORMS:
        out.append(Set(f"NIH test, {kind}", [gate.orient(x, kind) for x in nih], zero(len(nih)), True))
    own = ("NIH test, 224 px", nih224) if population == "adult" else ("Kermany test", kermany.images)
    if population == "paediatric":  # the task's own films turned: the NIH ones above are caught as adult films anyway
        for kind in gt.TRANSFORMS:
            out.append(Set(f"{own[0]}, {kind}", [gate.orient(x, kind) for x in own[1]], zero(len(own[1])), True))
    for name, (share, y, x) in CROPS.items():
        out.append(Set(f"{own[0]}, {name} crop", [crop(p, share, y, x) for p in own[1]], zero(len(own[1])), True))
    blood = sorted((root / gt.BLOOD_FOLDER / "TEST").rglob("*.jp*g"))
    blood = [blood[i].read_bytes() for i in rng.permutation(len(blood))[:n]]
    out.append(_decoded("colour photo: blood-cell TEST microscopy", blood, True))
    out.append(_decoded("colour photo: gradients and discs", [_png(x) for x in gt.gradients(rng, n)], True))
    out.append(_decoded("document: rendered text", [_png(x) for x in gt.documents(rng, min(n, 100), 1024)], True))
    out.append(_decoded("noise", [_png(x) for x in gt.noise(rng, n)], True))
    return out


def usable_detector(m) -> ood.OODModel | None:
    """The model's ood.json as the app uses it: None when it has none or it is refused (said once, here)."""
    try:
        return ood.load_for(m)
    except ValueError as exc:
        print(f"{m.id}: detector refused ({exc})")
        return None


def distance_flags(m, det: ood.OODModel | None, images: list[np.ndarray]) -> np.ndarray | None:
    """Does the model's detector flag each image (None when it has no usable one)?"""
    if det is None:
        return None
    batch = torch.from_numpy(np.stack([imaging.to_dataset_size(x, m.data_size) for x in images]))[:, None]
    return det.score(ood.features(m, batch)) > det.threshold


def resolution_flags(m, images: list[np.ndarray]) -> np.ndarray:
    return np.array([ood.too_coarse(x.shape, m.data_size) is not None for x in images])


def gate_flags(g: gate.Gate, s: Set, population: str) -> np.ndarray:
    reads = g.read(torch.from_numpy(np.stack([imaging.to_dataset_size(x, gate.SIZE) for x in s.images]))[:, None])
    return np.array([bool(g.findings(r, population, float(sat))) for r, sat in zip(reads, s.saturation)])


def table(g: gate.Gate, root: Path, dataset: str, n: int, every: bool) -> None:
    population = gate.population(dataset)
    models, _ = load_all(REPO_ROOT / "checkpoints" if dataset == "nih14-local" else
                         REPO_ROOT / "checkpoints" / dataset, dataset)
    detectors = {m.id: usable_detector(m) for m in models.values() if (m.path / ood.OOD_FILE).exists()}
    usable = [m for m in models.values() if detectors.get(m.id) is not None]  # the app uses the first usable one
    model = usable[0] if usable else None
    with_detector = [m for m in models.values() if m.id in detectors] if every else usable[:1]
    print(f"\n## {dataset} task ({population} films); distance detector: {model.id if model else 'none'}\n")
    print("| images | n | rate | gate | resolution | distance | any (the app) | target |")
    print("|---|---|---|---|---|---|---|---|")
    per_model = []
    for s in sets(root, n, population):
        gf = gate_flags(g, s, population)
        rf = resolution_flags(next(iter(models.values())), s.images)
        dists = [distance_flags(m, detectors[m.id], s.images) for m in with_detector]
        per_model.append((s, dists))
        df = dists[with_detector.index(model)] if model in with_detector else None  # what the app shows
        flagged = gf | rf | (df if df is not None else False)
        rate = "detection" if s.should_flag else "false alarm"
        target = f">= {DETECT_TARGET:.0%}" if s.should_flag else f"<= {FALSE_ALARM_TARGET:.0%}"
        dist = f"{df.mean():.1%}" if df is not None else "-"
        ok = (flagged.mean() >= DETECT_TARGET) if s.should_flag else (flagged.mean() <= FALSE_ALARM_TARGET)
        print(f"| {s.name} | {len(s.images)} | {rate} | {gf.mean():.1%} | {rf.mean():.1%} | {dist} | "
              f"{flagged.mean():.1%} {'' if ok else '(missed)'} | {target} |")
    if not every:
        return
    print(f"\n{dataset}: each model's distance detector alone (share flagged)\n")
    print("| images | rate | " + " | ".join(m.id for m in with_detector) + " |")
    print("|---|---|" + "---|" * len(with_detector))
    for s, dists in per_model:
        cells = " | ".join(f"{d.mean():.1%}" if d is not None else "-" for d in dists)
        print(f"| {s.name} | {'detection' if s.should_flag else 'false alarm'} | {cells} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=315, help="images per set (at most: NIH test has 315)")
    p.add_argument("--datasets", nargs="*", default=["nih14-local", "pneumoniamnist-local"])
    p.add_argument("--every-detector", action="store_true", help="also each model's distance detector alone")
    p.add_argument("--gate", type=Path, default=gate.GATE_DIR, help="folder of the gate to measure")
    a = p.parse_args()
    torch.set_num_threads(1)
    g = gate.load(a.gate)
    print(f"gate thresholds: {g.thresholds}")
    for dataset in a.datasets:
        table(g, data_dir(), dataset, a.n, a.every_detector)


if __name__ == "__main__":
    main()
