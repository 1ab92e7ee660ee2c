"""Grad-CAM works for a loaded checkpoint of every model family (LoRA ViTs included) and every CAM method, and the
overlay and peak helpers place the map where it belongs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cxrcore.data import Box, load_dataset
from cxrcore.engine import prepared_for
from cxrcore.explain import CAM_METHODS, cam_map, jet, overlay, peak, peak_in_box, resize_map
from cxrcore.inference import LoadedModel, load_model
from cxrcore.pretrained import wrap_lora
from cxrcore.zoo import create_model, get_spec, resolve_module

FAMILIES = ["vanilla_cnn", "resnet18", "densenet121", "mobilenet_v2", "vit_scratch"]


@pytest.fixture(scope="module")
def image(data_dir) -> torch.Tensor:
    """One real validation image at 64 px, (1, 1, 64, 64) uint8."""
    return load_dataset("nih14-local", 64).images["val"][:1]


@pytest.fixture
def loaded(make_checkpoint):
    def load(model_id: str) -> LoadedModel:
        return load_model(make_checkpoint(model_id)[0])
    return load


def lora_vit(tiny_card, tmp_path) -> LoadedModel:
    """A LoRA-wrapped ViT assembled by hand (the vit_b16_lora recipe on the small ViT, whose base is cheap)."""
    spec = dataclasses.replace(get_spec("vit_b16_lora"), build=get_spec("vit_scratch").build)
    torch.manual_seed(0)
    model = wrap_lora(create_model("vit_scratch", 14, 1, 64)).eval()
    card = {**tiny_card("vit_scratch"), "id": "vit_b16_lora"}
    return LoadedModel(model, spec, card, prepared_for(card), tmp_path)


def check_map(cam: np.ndarray, size: int) -> None:
    assert cam.shape == (size, size) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert cam.min() == 0 and cam.max() in (0, 1)  # min-max scaled (all zero when the CAM is flat)


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_on_a_cnn(loaded, image, method):
    m = loaded("vanilla_cnn")
    cam = cam_map(m, image, label=2, method=method)
    check_map(cam, 64)
    if method == "EigenCAM":  # gradient-free: the first principal component of the activations is never flat here
        assert cam.max() == 1


@pytest.mark.parametrize("model_id", FAMILIES)
def test_gradcam_on_every_family(loaded, image, model_id):
    m = loaded(model_id)
    cam = cam_map(m, image, label=0)
    check_map(cam, m.card.input_size)
    layer = resolve_module(m.model, m.spec.cam_layer)
    assert not layer._forward_hooks and not layer._backward_hooks  # the CAM's hooks are released
    assert not m.model.training
    # gradient-free, so not flat even for random weights: the layer and (ViT) reshape give a real spatial map
    assert cam_map(m, image, label=0, method="EigenCAM").max() == 1


@pytest.mark.parametrize("method", ["GradCAM", "EigenCAM"])
def test_gradcam_on_a_lora_vit(tiny_card, tmp_path, image, method):
    m = lora_vit(tiny_card, tmp_path)
    cam = cam_map(m, image, label=5, method=method)
    check_map(cam, 64)
    probs = m.predict(image)  # the adapter model still predicts afterwards
    assert probs.shape == (1, 14)


def test_unknown_method_lists_the_known_ones(loaded, image):
    with pytest.raises(ValueError, match="GradCAM, GradCAM\\+\\+"):
        cam_map(loaded("vanilla_cnn"), image, 0, method="SmoothGrad")


def test_cam_follows_the_evidence():
    """A model that only looks at one pixel region: its Grad-CAM peaks there."""
    m_id = "vanilla_cnn"
    model = create_model(m_id, 1, 1, 64)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        conv = model.features[0][0]
        conv.weight[0, 0, 1, 1] = 1.0  # channel 0 copies the input; everything else silent
        for block in model.features:
            block[1].running_var.fill_(1.0)
            block[1].weight.fill_(1.0)
        for block in model.features[1:]:
            block[0].weight[0, 0, 1, 1] = 1.0
        model.head.weight[0, 0] = 1.0
    card = {"id": m_id, "input_size": 64, "normalisation": [0.0, 1.0], "dataset": {"channels": 1, "size": 64},
            "label_names": ["x"], "task": "multi-label, binary-class"}
    m = LoadedModel(model.eval(), get_spec(m_id), card, prepared_for(card), None)
    image = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    image[..., 40:56, 8:24] = 255  # bright patch, lower left
    x, y = peak(cam_map(m, image, 0))
    assert 8 / 64 <= x <= 24 / 64 and 40 / 64 <= y <= 56 / 64


# ---- overlay and peak ----------------------------------------------------------------------------------------------

def test_jet_runs_blue_to_red():
    c = jet(np.array([[0.0, 0.5, 1.0, 2.0, -1.0]]))
    assert c.shape == (1, 5, 3) and c.dtype == np.uint8
    assert tuple(c[0, 0]) == (0, 0, 127) and tuple(c[0, 2]) == (127, 0, 0) and c[0, 1, 1] == 255
    assert tuple(c[0, 3]) == tuple(c[0, 2]) and tuple(c[0, 4]) == tuple(c[0, 0])  # clipped


def test_overlay_shape_dtype_and_blend():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 80), dtype=np.uint8)
    cam = rng.uniform(size=(64, 64)).astype(np.float32)
    out = overlay(img, cam)
    assert out.shape == (100, 80, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(img, cam, alpha=0.0), np.repeat(img[..., None], 3, -1))
    np.testing.assert_array_equal(overlay(img, cam, alpha=1.0), jet(resize_map(cam, (100, 80))))


def test_resize_map_keeps_constants_and_shape():
    out = resize_map(np.full((8, 8), 0.25, np.float32), (30, 20))
    assert out.shape == (30, 20) and out.dtype == np.float32 and np.allclose(out, 0.25)


def test_peak_is_the_pixel_centre_of_the_maximum():
    cam = np.zeros((64, 32), np.float32)
    cam[10, 20] = 1.0
    assert peak(cam) == (20.5 / 32, 10.5 / 64)


def test_peak_in_box_uses_the_original_image_coordinates():
    cam = np.zeros((64, 64), np.float32)
    cam[10, 20] = 1.0  # peak at (328, 168) in a 1024 px image
    assert peak_in_box(cam, Box("Mass", 300, 150, 50, 30), (1024, 1024))
    assert not peak_in_box(cam, Box("Mass", 340, 150, 50, 30), (1024, 1024))
    assert not peak_in_box(cam, Box("Mass", 300, 170, 50, 30), (1024, 1024))
    assert peak_in_box(cam, Box("Mass", 30, 15, 5, 3), (102.4, 102.4))  # scales with the image
