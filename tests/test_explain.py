"""Grad-CAM works for a loaded checkpoint of every model family (LoRA ViTs included) and every CAM method, and the
overlay and peak helpers place the map where it belongs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cxrcore import checkpoints
from cxrcore.card import Card
from cxrcore.data import REPO_ROOT, Box, load_dataset
from cxrcore.engine import prepared_for
from cxrcore.explain import (
    CAM_METHODS, DEFAULT_ALPHA, MIN_GRID, CamResult, cam_map, choose_layer, judge, jet, opacity, overlay, peak,
    peak_in_box, resize_map, top_mask,
)
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
    return LoadedModel(model, spec, Card.from_dict(card), prepared_for(card), tmp_path)


def check_map(cam: CamResult, size: int, method: str = "GradCAM") -> None:
    heat = cam.map
    assert heat.shape == (size, size) and heat.dtype == np.float32 and cam.method == method
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    if cam.informative:
        assert heat.min() == 0 and heat.max() == 1 and not cam.reason  # min-max scaled
    else:
        assert not heat.any() and cam.reason and "no localisation" in cam.summary  # never a heatmap


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_on_a_cnn(loaded, image, method):
    m = loaded("vanilla_cnn")
    cam = cam_map(m, image, label=2, method=method)
    check_map(cam, 64, method)
    if method == "EigenCAM":  # gradient-free: the first principal component of the activations is never flat here
        assert cam.informative


@pytest.mark.parametrize("model_id", FAMILIES)
def test_gradcam_on_every_family(loaded, image, model_id):
    m = loaded(model_id)
    cam = cam_map(m, image, label=0)
    check_map(cam, m.card.input_size)
    assert cam.layer in m.spec.cam_layers and min(cam.grid) >= MIN_GRID
    for path in m.spec.cam_layers:
        layer = resolve_module(m.model, path)
        assert not layer._forward_hooks and not layer._backward_hooks  # the CAM's hooks are released
    assert not m.model.training
    # gradient-free, so not flat even for random weights: the layer and (ViT) reshape give a real spatial map
    assert cam_map(m, image, label=0, method="EigenCAM").informative


@pytest.mark.parametrize("method", ["GradCAM", "EigenCAM"])
def test_gradcam_on_a_lora_vit(tiny_card, tmp_path, image, method):
    m = lora_vit(tiny_card, tmp_path)
    cam = cam_map(m, image, label=5, method=method)
    check_map(cam, 64, method)
    probs = m.predict(image)  # the adapter model still predicts afterwards
    assert probs.shape == (1, 14)


def test_unknown_method_lists_the_known_ones(loaded, image):
    with pytest.raises(ValueError, match="GradCAM, GradCAM\\+\\+"):
        cam_map(loaded("vanilla_cnn"), image, 0, method="SmoothGrad")


def evidence_model() -> LoadedModel:
    """A vanilla CNN that only passes its input's brightness through: its score is the image's mean brightness."""
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
    return LoadedModel(model.eval(), get_spec(m_id), card, prepared_for(card), None)


def test_cam_follows_the_evidence():
    """A model that only looks at one pixel region: its Grad-CAM peaks there, on the layer's 16x16 grid."""
    image = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    image[..., 40:56, 8:24] = 255  # bright patch, lower left
    cam = cam_map(evidence_model(), image, 0)
    assert cam.informative and cam.grid == (16, 16) and cam.layer == "features.-1.2"
    x, y = peak(cam.map)
    assert 8 / 64 <= x <= 24 / 64 and 40 / 64 <= y <= 56 / 64


def test_a_blank_map_is_reported_as_no_localisation():
    """A black film gives the evidence model nothing anywhere: an all-zero map, never drawn as a heatmap."""
    cam = cam_map(evidence_model(), torch.zeros(1, 1, 64, 64, dtype=torch.uint8), 0)
    assert not cam.informative and not cam.map.any() and cam.map.shape == (64, 64)
    assert "empty" in cam.reason and cam.summary.startswith("no localisation")
    assert np.array_equal(overlay(np.full((64, 64), 90, np.uint8), cam.map), np.full((64, 64, 3), 90, np.uint8))


def test_judge_refuses_empty_constant_and_single_cell_maps():
    assert "empty" in judge(np.zeros((8, 8)))
    assert "constant" in judge(np.full((8, 8), 0.3))
    assert "constant" in judge(np.full((8, 8), 0.3) + np.eye(8) * 1e-5)  # range under 0.1 % of the peak
    assert "spatial" in judge(np.ones((1, 1)))
    one_cell = np.zeros((7, 7))
    one_cell[3, 4] = 0.01  # a single weak cell still points somewhere
    assert judge(one_cell) == ""


def test_choose_layer_takes_the_deepest_fine_enough_layer():
    assert choose_layer({"layer4": (2, 2), "layer3": (4, 4), "layer2": (8, 8), "layer1": (16, 16)}) == "layer2"
    assert choose_layer({"layer4": (1, 1), "layer3": (2, 2), "layer2": (4, 4), "layer1": (7, 7)}) == "layer1"
    assert choose_layer({"a": (2, 2), "b": (4, 4)}) == "b"  # none is fine enough: the finest there is
    assert choose_layer({"blocks.-1.norm1": (8, 8)}) == "blocks.-1.norm1"


SHIPPED = [ck for ck in checkpoints.find(REPO_ROOT / "checkpoints") if ck.has_weights]


@pytest.mark.parametrize("ck", SHIPPED, ids=lambda c: f"{c.dataset}/{c.id}")
def test_every_shipped_model_localises_on_at_least_a_7x7_grid(ck):
    """At the input size each shipped checkpoint is served (its card's), the CAM layer's own map is >= 7x7."""
    m = load_model(ck.path)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, m.data_size, m.data_size),
                                                                dtype=np.uint8))
    cam = cam_map(m, image, label=0, method="EigenCAM")
    assert min(cam.grid) >= MIN_GRID, f"{ck.id}: {cam.layer} is {cam.grid} at {m.card.input_size} px"
    assert cam.map.shape == (m.card.input_size,) * 2


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
    full = np.ones((64, 64), np.float32)
    np.testing.assert_array_equal(overlay(img, full, alpha=1.0), jet(resize_map(full, (100, 80))))


def test_opacity_leaves_low_regions_clear_and_caps_at_alpha():
    cam = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    np.testing.assert_allclose(opacity(cam, DEFAULT_ALPHA), [[0, DEFAULT_ALPHA / 2, DEFAULT_ALPHA, DEFAULT_ALPHA]])
    assert DEFAULT_ALPHA <= 0.35  # the film stays readable under the strongest colour


def test_top_mask_keeps_the_highest_share_and_overlay_draws_only_there():
    cam = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert top_mask(cam, 0.2).sum() == 20 and top_mask(cam, 0.2)[-2:].all()
    assert not top_mask(np.zeros((4, 4), np.float32), 0.5).any()  # a zero pixel is never "top"
    with pytest.raises(ValueError, match="fraction"):
        top_mask(cam, 0.0)
    img = np.full((10, 10), 100, np.uint8)
    out = overlay(img, cam, alpha=1.0, top=0.2)
    assert (out[:8] == 100).all() and (out[8:] != 100).any()


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
