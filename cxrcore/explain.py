"""Grad-CAM explanations for any zoo model (CNNs, DenseNets, ViTs with a reshape transform, LoRA ViTs).

Thin composition over pytorch-grad-cam: the zoo names each model's target layer and ViT reshape, this module picks
the CAM class, runs it for one label, and turns the map into an overlay and a peak location.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .data import Box
from .inference import LoadedModel
from .zoo import reshape_transform, resolve_module

CAM_METHODS = {"GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "HiResCAM": HiResCAM, "EigenCAM": EigenCAM,
               "XGradCAM": XGradCAM, "LayerCAM": LayerCAM}


def cam_map(m: LoadedModel, image: torch.Tensor, label: int, method: str = "GradCAM") -> np.ndarray:
    """CAM of one label for one uint8 image (1, C, size, size): (input_size, input_size) floats in [0, 1]."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    model = m.model
    x = m.prep(image).to(next(model.parameters()).device).float()
    layer = resolve_module(model, m.spec.cam_layer)
    with CAM_METHODS[method](model=model, target_layers=[layer],
                             reshape_transform=reshape_transform(m.spec, model)) as cam:
        grey = cam(input_tensor=x, targets=[ClassifierOutputTarget(label)])[0]
    grey = np.nan_to_num(grey.astype(np.float32))
    span = grey.max() - grey.min()
    return (grey - grey.min()) / span if span > 0 else np.zeros_like(grey)


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


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a CAM (any size) over a grey (H, W) uint8 image: (H, W, 3) uint8 RGB."""
    heat = jet(resize_map(cam, image.shape[:2])).astype(np.float32)
    grey = np.repeat(image[..., None], 3, -1).astype(np.float32)
    return np.clip((1 - alpha) * grey + alpha * heat, 0, 255).astype(np.uint8)


def peak(cam: np.ndarray) -> tuple[float, float]:
    """Where the CAM is highest, as (x, y) fractions of width and height (pixel centres)."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return (c + 0.5) / cam.shape[1], (r + 0.5) / cam.shape[0]


def peak_in_box(cam: np.ndarray, box: Box, image_shape: tuple[int, int]) -> bool:
    """Does the CAM's peak fall inside the box? (The CAM covers the whole, square-resized image.)"""
    px, py = peak(cam)
    h, w = image_shape
    return box.x <= px * w <= box.x + box.w and box.y <= py * h <= box.y + box.h
