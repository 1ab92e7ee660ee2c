"""How the chest-film gate (:mod:`cxrcore.gate`) is trained, self-supervised, from local films only.

Positives are the train splits of the NIH subset (adult) and of Kermany (paediatric; PneumoniaMNIST's train + val,
never its test images), each shown upright or as one of the transforms the gate detects. "Not a chest film" examples
are synthesised (noise, rendered text documents, colour gradients) or are colour microscopy (blood-cell TRAIN crops),
all grey-converted as an upload is. Thresholds are chosen on held-out validation films: the NIH val split and a
patient-grouped tenth of Kermany train, never a test image.
"""
from __future__ import annotations

import csv
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from scipy.optimize import minimize

from .gate import CLASSES, DOMAIN_OUTPUT, GRID, SIZE, TRANSFORMS, WIDTHS, Gate, GateNet, Thresholds, colour_saturation, orient
from .gate import Probe, pooled_and_logits, to_input
from .imaging import to_dataset_size

FALSE_ALARM_TARGET = 0.02  # per check, on validation films
ZOOM_SHARES = (0.4, 0.75)  # side share of the crops the zoom probe learns; the gate's augmentation zooms 1.15x at most
PROBE_L2 = 1.0  # ridge penalty of the probes on standardised features
VAL_SHARE = 10  # one Kermany train patient in VAL_SHARE is held out for validation
BLOOD_FOLDER = "blood_cells"
KERMANY_FOLDER = "kermany_pneumonia"


@dataclass
class Films:
    """Grey 64 px films of one split: images (N, 64, 64) uint8, paediatric flags (N,), colour saturation of the
    files they came from (N,)."""

    images: np.ndarray
    paediatric: np.ndarray
    saturation: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def join(*parts: "Films") -> "Films":
        return Films(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "paediatric", "saturation")))


def _grey64(path: Path) -> tuple[np.ndarray, float]:
    """A file as the gate sees it (grey, centre square, 64 px) and its colour saturation."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    return to_dataset_size(grey, SIZE), colour_saturation(rgb)


def _files(paths: list[Path], paediatric: bool) -> Films:
    read = [_grey64(p) for p in paths]
    images = np.stack([r[0] for r in read]) if read else np.zeros((0, SIZE, SIZE), np.uint8)
    return Films(images, np.full(len(read), paediatric), np.array([r[1] for r in read], np.float32))


def nih(data_dir: Path, split: str) -> Films:
    """NIH films of one split (the 64 px npz was built from the grey 1024 px PNGs: saturation 0)."""
    with np.load(data_dir / "nih14_local_64.npz") as z:
        images = z[f"{split}_images"]
    return Films(images, np.zeros(len(images), bool), np.zeros(len(images), np.float32))


def kermany_paths(data_dir: Path, split: str) -> list[Path]:
    """Kermany files: ``train`` and ``val`` are a patient-grouped partition of its train folder, ``test`` its test
    folder (PneumoniaMNIST's test images, for the benchmark only)."""
    root = data_dir / KERMANY_FOLDER
    with open(root / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == ("test" if split == "test" else "train")]
    if split != "test":
        held = lambda r: zlib.crc32(r["patient"].encode()) % VAL_SHARE == 0  # noqa: E731
        rows = [r for r in rows if held(r) == (split == "val")]
    return [root / r["path"] for r in rows]


def kermany(data_dir: Path, split: str) -> Films:
    """Kermany films of one split (see :func:`kermany_paths`) at the gate's size."""
    return _files(kermany_paths(data_dir, split), True)


def pneumoniamnist(data_dir: Path, split: str) -> Films:
    """PneumoniaMNIST films of one split at its 28 px, upscaled to the gate's size as the app does for them."""
    with np.load(data_dir / "pneumoniamnist_28.npz") as z:
        images = np.stack([to_dataset_size(x, SIZE) for x in z[f"{split}_images"]])
    return Films(images, np.ones(len(images), bool), np.zeros(len(images), np.float32))


def blood_cells(data_dir: Path, folder: str, n: int, seed: int, skip: int = 0) -> Films:
    """``n`` colour microscopy crops of TRAIN or TEST, a seeded draw (``skip`` drawn ones first: disjoint sets)."""
    paths = sorted((data_dir / BLOOD_FOLDER / folder).rglob("*.jp*g"))
    pick = np.random.default_rng(seed).permutation(len(paths))[skip:skip + n]
    return _files([paths[i] for i in pick], False)


# ---- images that are no chest film -----------------------------------------------------------------------------------

def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 64, 64) uint8: Gaussian, uniform, salt-and-pepper or smooth (low-pass) noise."""
    out = np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            x = rng.normal(rng.uniform(60, 190), rng.uniform(10, 80), (SIZE, SIZE))
        elif kind == 1:
            x = rng.uniform(0, 255, (SIZE, SIZE))
        elif kind == 2:
            x = np.where(rng.random((SIZE, SIZE)) < 0.5, 0, 255) * (rng.random((SIZE, SIZE)) < rng.uniform(.1, 1))
        else:
            small = rng.uniform(0, 255, (int(rng.integers(3, 12)),) * 2).astype(np.float32)
            x = np.asarray(Image.fromarray(small, "F").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        out[i] = np.clip(x, 0, 255)
    return out


_WORDS = ("patient report findings the chest radiograph of was normal impression lungs clear heart size "
          "invoice total date page signature discharge summary medication dose history").split()


def documents(rng: np.random.Generator, n: int, side: int = 512) -> np.ndarray:
    """(n, side, side) uint8 grey: pages of rendered text (lines of words, sometimes a title, a table rule)."""
    out = np.empty((n, side, side), np.uint8)
    for i in range(n):
        page = Image.new("L", (side, side), int(rng.integers(215, 256)))
        draw = ImageDraw.Draw(page)
        font = ImageFont.load_default(size=float(rng.integers(10, 28)))
        y, ink = int(rng.integers(5, 60)), int(rng.integers(0, 90))
        while y < side - 20:
            words = " ".join(rng.choice(_WORDS, int(rng.integers(3, 12))))
            draw.text((int(rng.integers(5, 60)), y), words, fill=ink, font=font)
            if rng.random() < 0.1:
                draw.line([(10, y - 4), (side - 10, y - 4)], fill=ink, width=int(rng.integers(1, 4)))
            y += int(rng.integers(14, 40))
        out[i] = np.asarray(page)
    return out


def gradients(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 64, 64, 3) uint8 colour images: linear or radial gradients between random colours, with a few discs."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx + np.sin(ang) * yy) if i % 2 else np.hypot(xx - rng.random(), yy - rng.random())
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(0, 5))):
            x, r = rng.integers(0, SIZE, 2), int(rng.integers(3, 16))
            draw.ellipse([x[0] - r, x[1] - r, x[0] + r, x[1] + r], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
        out[i] = np.asarray(img)
    return out


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) -> (n, H, W) uint8 with PIL's luminance, the conversion uploads get."""
    return np.stack([np.asarray(Image.fromarray(x).convert("L")) for x in rgb])


def not_chest(rng: np.random.Generator, n: int, blood: Films) -> np.ndarray:
    """(about 4n, 64, 64) uint8 grey "not a chest film" examples: noise, documents, gradients, microscopy."""
    docs = np.stack([to_dataset_size(d, SIZE) for d in documents(rng, n)])
    return np.concatenate([noise(rng, n), docs, to_grey(gradients(rng, n)), blood.images])


# ---- training --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    steps: int = 600  # about 5 minutes on 2 CPU cores
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    upright_share: float = 0.3  # of the chest films in a batch; the rest spread over the six transforms
    negative_share: float = 0.15  # of a batch: not-a-chest-film examples
    n_synthetic: int = 600  # of each synthetic kind
    n_blood: int = 2000
    seed: int = 0


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) floats in [0, 1]: small rotation/zoom/shift, sometimes a lower resolution (28 px films), gamma,
    contrast, brightness and noise; what an upright film may look like and still be upright."""
    b = len(x)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
    ang, scale = u(-0.2, 0.2), u(0.87, 1.15)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, u(-0.08, 0.08)], 1), torch.stack([sin, cos, u(-0.08, 0.08)], 1)], 1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border",
                      align_corners=False)
    low = torch.rand(b, generator=g) < 0.3
    if low.any():
        side = int(torch.randint(20, 48, (1,), generator=g))
        small = F.interpolate(x[low], size=side, mode="bilinear", antialias=True, align_corners=False)
        x[low] = F.interpolate(small, size=x.shape[-1], mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) ** torch.exp(0.3 * torch.randn(b, generator=g)).view(b, 1, 1, 1)
    x = (x - 0.5) * u(0.75, 1.25).view(b, 1, 1, 1) + 0.5 + u(-0.1, 0.1).view(b, 1, 1, 1)
    return (x + u(0, 0.03).view(b, 1, 1, 1) * torch.randn(x.shape, generator=g)).clamp(0, 1)


def apply_transform(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The batch version of :func:`cxrcore.gate.orient` on floats in [0, 1] (N, 1, H, W)."""
    if kind.startswith("rot"):
        return torch.rot90(x, int(kind[3:]) // 90, (2, 3))
    return {"upright": x, "hflip": x.flip(3), "vflip": x.flip(2), "inverted": 1 - x}[kind]


def _batch(films: list[Films], negatives: np.ndarray, r: Recipe, rng: np.random.Generator, g: torch.Generator):
    n_neg = int(r.batch_size * r.negative_share)
    n_chest = r.batch_size - n_neg
    source = rng.integers(0, len(films), n_chest)  # each source equally often: NIH is 5x smaller than Kermany
    idx = [int(rng.integers(0, len(films[s]))) for s in source]
    chest = np.stack([films[s].images[i] for s, i in zip(source, idx)])
    paed = torch.tensor([bool(films[s].paediatric[i]) for s, i in zip(source, idx)], dtype=torch.float32)
    cls = np.where(rng.random(n_chest) < r.upright_share, 0, rng.integers(1, 1 + len(TRANSFORMS), n_chest))
    neg = negatives[rng.integers(0, len(negatives), n_neg)]
    x = augment(torch.from_numpy(np.concatenate([chest, neg]))[:, None].float() / 255, g)
    labels = np.concatenate([cls, np.full(n_neg, len(CLASSES) - 1)])
    for k, kind in enumerate(CLASSES[:-1]):
        sel = torch.from_numpy(labels == k)
        if sel.any():
            x[sel] = apply_transform(x[sel], kind)
    neg_sel = torch.from_numpy(labels == len(CLASSES) - 1)  # a document or noise is no film in any orientation
    x[neg_sel] = torch.rot90(x[neg_sel], int(rng.integers(0, 4)), (2, 3))
    return (x * 255).round().to(torch.uint8), torch.from_numpy(labels), paed


def train(films: list[Films], negatives: np.ndarray, r: Recipe = Recipe(), log=print) -> GateNet:
    """AdamW with a one-cycle schedule; cross-entropy over CLASSES plus BCE on the domain output (chest films)."""
    rng, g = np.random.default_rng(r.seed), torch.Generator().manual_seed(r.seed)
    torch.manual_seed(r.seed)
    net = GateNet().to(memory_format=torch.channels_last)  # 2-3x faster on CPU for these small convolutions
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, r.lr, total_steps=r.steps)
    start = time.perf_counter()
    for step in range(r.steps):
        x, y, paed = _batch(films, negatives, r, rng, g)
        net.train()
        logits = net(to_input(x).contiguous(memory_format=torch.channels_last))
        chest = y < len(CLASSES) - 1
        loss = F.cross_entropy(logits[:, :DOMAIN_OUTPUT], y) + F.binary_cross_entropy_with_logits(
            logits[chest, DOMAIN_OUTPUT], paed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == r.steps - 1:
            log(f"step {step}/{r.steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    return net.eval()


# ---- probes on the pooled features: zoomed-in or cropped films, adult or paediatric ---------------------------------

def crops(films: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(N, 64, 64) uint8: one square of a random ZOOM_SHARES share of each (H, W) film's short side, anywhere on it,
    at the gate's size: an upload of part of a film."""
    out = []
    for x in films:
        h, w = x.shape
        side = max(8, int(min(h, w) * rng.uniform(*ZOOM_SHARES)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(to_dataset_size(np.ascontiguousarray(x[top:top + side, left:left + side]), SIZE))
    return np.stack(out)


def full_size(paths: list[Path]) -> list[np.ndarray]:
    """Image files as grey arrays at their own size (PIL's luminance, as uploads are converted)."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").convert("L")))
    return out


@torch.no_grad()
def pooled(net: GateNet, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    return np.concatenate([pooled_and_logits(net, x[i:i + batch_size])[0].numpy() for i in range(0, len(x), batch_size)])


def fit_probe(net: GateNet, negatives: np.ndarray, positives: np.ndarray) -> Probe:
    """Ridge-penalised logistic regression of positives (1) vs negatives (0), (N, 64, 64) uint8 each, on the gate's
    pooled features (the CNN is not changed), the two classes weighted equally."""
    f = np.concatenate([pooled(net, negatives), pooled(net, positives)]).astype(np.float64)
    y = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    weight = np.where(y == 1, 0.5 / len(positives), 0.5 / len(negatives))
    mean, scale = f.mean(0), f.std(0) + 1e-6
    z = (f - mean) / scale

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u = z @ theta[:-1] + theta[-1]
        r = weight * (1.0 / (1.0 + np.exp(-u)) - y)
        nll = float(np.sum(weight * (np.logaddexp(0, u) - y * u)))
        pen = 0.5 * PROBE_L2 / len(y) * float(theta[:-1] @ theta[:-1])
        return nll + pen, np.r_[z.T @ r + PROBE_L2 / len(y) * theta[:-1], r.sum()]

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    return Probe(mean.tolist(), scale.tolist(), theta[:-1].tolist(), float(theta[-1]))


@dataclass
class ProbeData:
    """What the probes learn from (train splits only), at the gate's size, and the crops they are validated on."""

    adult: np.ndarray  # whole adult films
    paediatric: np.ndarray  # whole paediatric films
    zoomed: np.ndarray
    zoomed_val: dict[str, tuple[np.ndarray, str]]  # name -> (crops of validation films, their population)
    counts: dict


def probe_data(data_dir: Path, seed: int, n_kermany: int = 1500, n_pneumoniamnist: int = 1000) -> ProbeData:
    """Adult: NIH train at 64 and at 224 px; paediatric: a draw of Kermany train films at full size and of
    PneumoniaMNIST train at 28 px (uploads at its own size); zoomed: crops of the NIH 224 px train films (two each)
    and of the Kermany draw. Validation crops: of the NIH 224 px val films and of the held-out Kermany patients."""
    rng = np.random.default_rng(seed)
    with np.load(data_dir / "nih14_local_224.npz") as z:
        nih224 = {s: list(z[f"{s}_images"]) for s in ("train", "val")}
    paths = kermany_paths(data_dir, "train")
    ker = full_size([paths[i] for i in np.sort(rng.permutation(len(paths))[:n_kermany])])
    with np.load(data_dir / "pneumoniamnist_28.npz") as z:
        pm = z["train_images"][np.sort(rng.permutation(len(z["train_images"]))[:n_pneumoniamnist])]
    size = lambda xs: np.stack([to_dataset_size(x, SIZE) for x in xs])  # noqa: E731
    adult = np.concatenate([nih(data_dir, "train").images, size(nih224["train"])])
    paediatric = np.concatenate([size(ker), size(pm)])
    zoomed = np.concatenate([crops(nih224["train"] * 2, rng), crops(ker, rng)])
    val = {"nih_224": (crops(nih224["val"] * 2, rng), "adult"),
           "kermany": (crops(full_size(kermany_paths(data_dir, "val")), rng), "paediatric")}
    counts = {"probe_adult": len(adult), "probe_paediatric": len(paediatric), "probe_crops": len(zoomed),
              **{f"probe_val_crops_{k}": len(v[0]) for k, v in val.items()}}
    return ProbeData(adult, paediatric, zoomed, val, counts)


def fit_probes(net: GateNet, d: ProbeData) -> tuple[Probe, Probe]:
    """(zoom: zoomed vs every whole film, population: paediatric vs adult)."""
    return fit_probe(net, np.concatenate([d.adult, d.paediatric]), d.zoomed), fit_probe(net, d.adult, d.paediatric)


# ---- thresholds, on validation films only ---------------------------------------------------------------------------

def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="lower"))


def _nth_smallest(values: np.ndarray, n: int) -> float:
    """A threshold below which exactly the ``n`` smallest values fall (1.0 when there are not more than n)."""
    return float(np.sort(values)[n]) if n < len(values) else 1.0


def choose_thresholds(net: GateNet, val: dict[str, Films], blood_val: Films,
                      probes: tuple[Probe | None, Probe | None] = (None, None),
                      zoomed_val: dict[str, tuple[np.ndarray, str]] | None = None) -> tuple[Thresholds, dict]:
    """Each threshold at 0.5 unless that would flag more than its share of FALSE_ALARM_TARGET of the validation films
    the check must pass; then at that quantile. Adult task: orientation gets the whole target (the population check
    stays at 0.5, which flags no adult validation film). Paediatric task: orientation and population both fire on its
    blurred 28 px films, so population gets half the target and orientation what population leaves of it on each set:
    together they flag at most the target. Colour: twice the highest
    saturation of a validation film, at least 0.05. ``probes``: (zoom, population), see :func:`fit_probes`; the
    population probe, when given, replaces the domain output. Zoom: at 0.5 unless that flags more than
    half the target of any validation film set, then at that quantile (so all checks together flag at most 1.5 times
    the target of a set)."""
    zoom, population = probes
    gate = Gate(net, Thresholds(0.5, 0.5, 0.5, 0.5), zoom, population)
    reads = {k: gate.read(torch.from_numpy(f.images)[:, None]) for k, f in val.items()}
    up = {k: np.array([r.probs["upright"] for r in v]) for k, v in reads.items()}
    paed = {k: np.array([r.paediatric for r in v]) for k, v in reads.items()}
    adult = [k for k in val if not val[k].paediatric[0]]
    child = [k for k in val if k not in adult]
    half = FALSE_ALARM_TARGET / 2
    films = Films.join(*val.values())
    paediatric_min = min(0.5, *(_quantile(paed[k], half) for k in child))
    passed = {k: paed[k] >= paediatric_min for k in child}  # the films the population check leaves to orientation
    left = {k: max(0, int(FALSE_ALARM_TARGET * len(up[k])) - int((~passed[k]).sum())) for k in child}
    t = Thresholds(upright=min(0.5, *(_quantile(u, FALSE_ALARM_TARGET) for u in up.values())),
                   adult_max_paediatric=max(0.5, *(_quantile(paed[k], 1 - FALSE_ALARM_TARGET) for k in adult)),
                   paediatric_min_paediatric=paediatric_min,
                   colour=min(0.5, max(0.05, 2 * float(films.saturation.max()))),
                   upright_paediatric=min(0.5, *(_nth_smallest(up[k][passed[k]], left[k]) for k in child)),
                   zoomed=max(0.5, *(_quantile(np.array([r.zoomed for r in v]), 1 - half) for v in reads.values()))
                   if zoom else None)
    return t, validation_rates(Gate(net, t, zoom, population), val, blood_val, zoomed_val or {})


def validation_rates(gate: Gate, val: dict[str, Films], blood_val: Films,
                     zoomed_val: dict[str, tuple[np.ndarray, str]] | None = None) -> dict:
    """Per validation set: false alarms on the real films, detection of each transform; colour detection; detection
    of the zoomed-in crops of validation films, on their population's task."""
    out = {}
    for name, f in val.items():
        pop = "paediatric" if f.paediatric[0] else "adult"
        other = "adult" if pop == "paediatric" else "paediatric"
        row = {"n": len(f), "false_alarm": flagged(gate, f.images, pop, f.saturation),
               f"flagged_on_{other}_task": flagged(gate, f.images, other, f.saturation)}
        for kind in TRANSFORMS:
            row[kind] = flagged(gate, np.stack([orient(x, kind) for x in f.images]), pop)
        out[name] = row
    out["blood_cells"] = {"n": len(blood_val), "detected": flagged(gate, blood_val.images, None, blood_val.saturation)}
    for name, (images, pop) in (zoomed_val or {}).items():
        out[f"{name}_crops"] = {"n": len(images), "detected": flagged(gate, images, pop)}
    return out


def flagged(gate: Gate, images: np.ndarray, population: str | None, saturation: np.ndarray | None = None) -> float:
    """Share of (N, 64, 64) uint8 images on which at least one check fires."""
    sat = np.zeros(len(images)) if saturation is None else saturation
    reads = gate.read(torch.from_numpy(np.ascontiguousarray(images))[:, None])
    return float(np.mean([bool(gate.findings(r, population, float(s))) for r, s in zip(reads, sat)]))


def card(r: Recipe, t: Thresholds, rates: dict, counts: dict, seconds: float, command: str,
         probes: tuple[Probe | None, Probe | None] = (None, None)) -> dict:
    return {
        "what": "chest-film gate: upright frontal chest radiograph vs rotated / flipped / inverted / not a chest film; "
                "adult vs paediatric",
        "classes": list(CLASSES), "domain_output": "logit of P(paediatric)", "input": f"{SIZE} px grey, x/127.5-1",
        "architecture": f"SimpleCNN widths {'-'.join(map(str, WIDTHS))}, last map pooled to {GRID}x{GRID}, linear head",
        "data": {"positives": "NIH local train split (adult) and Kermany train folder less a patient-grouped "
                              f"1/{VAL_SHARE} (paediatric); never a test image",
                 "negatives": "synthetic noise, rendered text documents, colour gradients (grey-converted) and "
                              "blood-cell TRAIN colour microscopy crops (grey-converted)",
                 "validation": f"NIH val split, the held-out Kermany train patients, PneumoniaMNIST val at 28 px, "
                               f"{counts.get('blood_val')} other blood-cell TRAIN crops",
                 "counts": counts},
        "recipe": asdict(r), "threshold_rule": " ".join(choose_thresholds.__doc__.split()),
        "false_alarm_target": FALSE_ALARM_TARGET, "thresholds": asdict(t), "validation": rates,
        "train_seconds": round(seconds, 1), "rebuild_command": command,
        "probe_data": " ".join(probe_data.__doc__.split()) if any(probes) else None,
        "zoom_probe": asdict(probes[0]) if probes[0] else None,
        "population_probe": asdict(probes[1]) if probes[1] else None,
    }
