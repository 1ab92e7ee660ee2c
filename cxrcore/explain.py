"""Grad-CAM explanations for any zoo model (CNNs, DenseNets, ViTs with a reshape transform, LoRA ViTs), and only
where they can say something.

Thin composition over pytorch-grad-cam: the zoo names each model's candidate target layers (deepest first) and ViT
reshape; this module picks the deepest layer whose map has at least :data:`MIN_GRID` cells a side at the served input
size, runs the CAM for one label at that layer's native resolution, and says whether the map is informative. An empty
or constant map (every cell equal: no region stands out) carries no localisation and is never drawn as a heatmap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .data import Box
from .inference import LoadedModel
from .zoo import reshape_transform, resolve_module

CAM_METHODS = {"GradCAM": "GradCAM", "GradCAM++": "GradCAMPlusPlus", "HiResCAM": "HiResCAM",  # name: its class
               "EigenCAM": "EigenCAM", "XGradCAM": "XGradCAM", "LayerCAM": "LayerCAM"}
MIN_GRID = 7  # cells a side below which a map is too coarse to point at a lung region (CheXNet's map is 7x7)
FLAT = 1e-3  # a map whose range is under this share of its peak is constant: nothing stands out
DEFAULT_ALPHA = 0.3  # peak opacity of the heatmap: the film stays readable under it


@dataclass(frozen=True)
class CamResult:
    """One label's class activation map and what it can be trusted for."""

    map: np.ndarray  # (S, S) float32 in [0, 1] at the model's input size; all zero when not informative
    grid: tuple[int, int]  # native (rows, columns) of the layer's map, before upsampling
    informative: bool  # False: empty or constant map (or a single cell); "no localisation"
    method: str
    layer: str
    reason: str = ""  # why the map is not informative

    @property
    def summary(self) -> str:
        """One line for a panel's caption: what was computed, at which native resolution, and whether it localises."""
        where = f"{self.method} at {self.layer}, native {self.grid[0]}x{self.grid[1]} grid"
        return where if self.informative else f"no localisation ({self.reason}; {where})"


def layer_grids(m: LoadedModel, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Native (rows, columns) of every candidate CAM layer's map for the prepared input ``x``: one forward pass."""
    transform = reshape_transform(m.spec, m.model)
    grids: dict[str, tuple[int, int]] = {}

    def hook(path: str):
        def record(_module, _inputs, out):
            act = transform(out) if transform else out
            grids[path] = (int(act.shape[-2]), int(act.shape[-1]))
        return record

    handles = [resolve_module(m.model, p).register_forward_hook(hook(p)) for p in m.spec.cam_layers]
    try:
        with torch.no_grad():
            m.model(x)
    finally:
        for h in handles:
            h.remove()
    return {p: grids[p] for p in m.spec.cam_layers}


def choose_layer(grids: dict[str, tuple[int, int]]) -> str:
    """The deepest candidate (first listed) with at least MIN_GRID cells a side, else the finest there is."""
    fine = [p for p, g in grids.items() if min(g) >= MIN_GRID]
    return fine[0] if fine else max(grids, key=lambda p: min(grids[p]))


def _native_cam(m: LoadedModel, x: torch.Tensor, layer: str, label: int, method: str) -> np.ndarray:
    """The CAM at the layer's own resolution, before any normalisation (ReLU applied, as every method does)."""
    import pytorch_grad_cam  # imported on first use (about a second, torch._dynamo): the app's first page draws none
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    raw: list[np.ndarray] = []
    method_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    with method_class(model=m.model, target_layers=[resolve_module(m.model, layer)],
                      reshape_transform=reshape_transform(m.spec, m.model)) as cam:
        compute = cam.get_cam_image  # the one step every method shares: catch its map before it is resized

        def keep(*args, **kwargs):
            raw.append(compute(*args, **kwargs))
            return raw[-1]

        cam.get_cam_image = keep
        cam(input_tensor=x, targets=[ClassifierOutputTarget(label)])
    return np.maximum(np.nan_to_num(np.asarray(raw[0][0], dtype=np.float64)), 0.0)


def judge(native: np.ndarray) -> str:
    """Why a native map cannot localise ("" when it can)."""
    if min(native.shape) < 2:
        return f"a {native.shape[0]}x{native.shape[1]} map has no spatial detail"
    peak_value = float(native.max())
    if peak_value <= 0:
        return "empty map: no region raises the score"
    if float(native.max() - native.min()) <= FLAT * peak_value:
        return "constant map: no region stands out"
    return ""


def cam_map(m: LoadedModel, image: torch.Tensor, label: int, method: str = "GradCAM") -> CamResult:
    """CAM of one label for one uint8 image (1, C, size, size) at the dataset's size, at the chosen layer."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    x = m.prep(image).to(next(m.model.parameters()).device).float()
    layer = choose_layer(layer_grids(m, x))
    native = _native_cam(m, x, layer, label, method)
    reason = judge(native)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    heat = np.zeros(size, np.float32)
    if not reason:
        heat = resize_map(native.astype(np.float32), size)
        heat = ((heat - heat.min()) / (heat.max() - heat.min())).astype(np.float32)  # 0 to 1 after upsampling
    return CamResult(heat, (int(native.shape[0]), int(native.shape[1])), not reason, method, layer, reason)


def jet(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 RGB with the 'jet' colour map (blue low, red high)."""
    v = np.clip(values, 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(cam.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def top_cut(cam: np.ndarray, fraction: float) -> float:
    """The map value above which its highest ``fraction`` of pixels lie."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return float(np.quantile(cam, 1 - fraction))


def top_mask(cam: np.ndarray, fraction: float) -> np.ndarray:
    """The highest ``fraction`` of the map's pixels (ties included), never a pixel at zero."""
    return (cam >= top_cut(cam, fraction)) & (cam > 0)


def opacity(cam: np.ndarray, alpha: float, top: float | None = None) -> np.ndarray:
    """Per-pixel heatmap opacity: ``alpha`` from half the peak up, fading to clear at zero, so the film shows through
    wherever the map is low; with ``top``, only that share of the map is drawn at all."""
    weight = alpha * np.clip(2 * cam, 0, 1)
    return weight * top_mask(cam, top) if top else weight


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = DEFAULT_ALPHA, top: float | None = None) -> np.ndarray:
    """Blend a CAM (any size) over a grey (H, W) or colour (H, W, 3) uint8 image: (H, W, 3) uint8 RGB."""
    heat_map = resize_map(cam, image.shape[:2])
    weight = opacity(heat_map, alpha, top)[..., None]
    base = (image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)).astype(np.float32)
    return np.clip((1 - weight) * base + weight * jet(heat_map).astype(np.float32), 0, 255).astype(np.uint8)


def peak(cam: np.ndarray) -> tuple[float, float]:
    """Where the CAM is highest, as (x, y) fractions of width and height (pixel centres)."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return (c + 0.5) / cam.shape[1], (r + 0.5) / cam.shape[0]


def peak_in_box(cam: np.ndarray, box: Box, image_shape: tuple[int, int]) -> bool:
    """Does the CAM's peak fall inside the box? (The CAM covers the whole, square-resized image.)"""
    px, py = peak(cam)
    h, w = image_shape
    return box.x <= px * w <= box.x + box.w and box.y <= py * h <= box.y + box.h
