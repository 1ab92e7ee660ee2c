"""Every registered architecture builds for a 1-channel, 14-label task, learns end to end, and names a Grad-CAM layer
that really is on its forward path; the registry refuses duplicates and explains unknown ids."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torch import nn

from cxrcore import zoo
from cxrcore.engine import TrainConfig
from cxrcore.pretrained import wrap_lora
from cxrcore.zoo import create_model, get_spec, list_models, register, reshape_transform, resolve_module

BIG = {"resnet152", "densenet161", "densenet201", "vgg16", "vit_b16", "vit_b16_pw50", "vit_b16_lora"}
IDS = [pytest.param(i, marks=pytest.mark.slow) if i in BIG else i for i in list_models()]
EXPECTED = {"vanilla_cnn", "cnn_small", "cnn_deep", "resnet18", "resnet50", "resnet152", "densenet121", "densenet161",
            "densenet201", "efficientnet_b0", "efficientnet_lite0", "mobilenet_v2", "vgg16", "vit_b16", "vit_b16_pw50",
            "vit_b16_lora", "vit_scratch", "vit_scratch_lora", "medmnist_baseline", "efficientnet_b0_nowd"}


@pytest.fixture(scope="module")
def built():
    """``built(model_id)``: :func:`build` at 64 px, once per module (VGG-16 and the ViT-Bs take seconds to build)."""
    cache: dict[str, tuple[nn.Module, int]] = {}

    def get(model_id: str) -> tuple[nn.Module, int]:
        if model_id not in cache:
            cache[model_id] = build(model_id)
        model, size = cache[model_id]
        model.zero_grad(set_to_none=True)
        return model, size

    yield get
    cache.clear()


def build(model_id: str, size: int = 64) -> tuple[nn.Module, int]:
    """The model as training uses it (LoRA ids wrapped around their base architecture) and its input size."""
    spec = get_spec(model_id)
    torch.manual_seed(0)
    model = create_model(model_id, 14, 1, size)
    if spec.lora_base:
        model = wrap_lora(model)  # random base weights are fine for shapes; real runs need a pretrained base
    return model, spec.model_input_size(size)


def test_registry_holds_every_compared_architecture():
    assert set(list_models()) == EXPECTED and len(list_models()) == len(EXPECTED)


@pytest.mark.parametrize("model_id", IDS)
def test_forward_and_backward_reach_the_first_layer(model_id, built):
    model, size = built(model_id)
    model.train()
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 14) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if get_spec(model_id).lora_base:
        # only the adapters and the head train; LoRA's B starts at zero, so A gets no gradient on the first step
        assert trainable and all("lora_" in n or "modules_to_save" in n for n, _ in trainable)
        assert any("head" in n for n, _ in trainable)
        first = next(p for n, p in trainable if "blocks.0." in n and "lora_B" in n)
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    else:
        assert len(trainable) == len(list(model.parameters()))
        first = trainable[0][1]
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("model_id", IDS)
def test_gradcam_layer_is_on_the_forward_path(model_id, built):
    model, size = built(model_id)
    spec = get_spec(model_id)
    for path in spec.cam_layers:
        layer = resolve_module(model, path)
        seen = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            model.eval()(torch.randn(1, 1, size, size))
        handle.remove()
        assert len(seen) == 1, f"{path} ran {len(seen)} times"
        act = seen[0]
        transform = reshape_transform(spec, model)
        if spec.vit:
            act = transform(act)
        else:
            assert transform is None
        assert act.ndim == 4 and act.shape[0] == 1 and min(act.shape[2:]) >= 1, tuple(act.shape)


def test_vit_reshape_recovers_the_patch_grid():
    model, size = build("vit_scratch")
    tokens = torch.randn(2, 1 + (size // 8) ** 2, 128)
    grid = reshape_transform(get_spec("vit_scratch"), model)(tokens)
    assert tuple(grid.shape) == (2, 128, size // 8, size // 8)
    torch.testing.assert_close(grid[:, :, 0, 1], tokens[:, 2])  # token 0 is the class token


@pytest.mark.parametrize("model_id", IDS)
def test_smallest_allowed_input_works(model_id):
    spec = get_spec(model_id)
    size = spec.model_input_size(16)
    assert size >= spec.min_size
    model = create_model(model_id, 14, 1, 16)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, size, size)).shape == (2, 14)


def test_densenets_need_at_least_32_pixels():
    for i in ("densenet121", "densenet161", "densenet201"):
        assert get_spec(i).min_size >= 32 and get_spec(i).model_input_size(28) >= 32


def test_input_size_rules():
    assert get_spec("efficientnet_lite0").model_input_size(28) == 128  # small images are upscaled for it
    assert get_spec("efficientnet_lite0").model_input_size(224) == 224  # and larger ones never shrunk
    assert get_spec("densenet121").model_input_size(64) == 128 and get_spec("densenet161").model_input_size(64) == 64
    assert get_spec("resnet18").model_input_size(28) == 28
    assert get_spec("vit_scratch").model_input_size(224) == 224


@pytest.mark.parametrize("model_id", list_models())
def test_specs_are_consistent(model_id):
    spec = get_spec(model_id)
    assert spec.id == model_id
    assert spec.family in {"cnn", "resnet", "densenet", "efficientnet", "mobilenet", "vgg", "vit"}
    unknown = (set(spec.hparams) | set(spec.scratch_hparams)) - set(TrainConfig.__dataclass_fields__)
    assert not unknown, f"hparams TrainConfig would silently drop: {unknown}"
    if spec.timm_name:  # a typo in the tag would only surface online, when the download fails
        assert spec.timm_name in timm.list_pretrained(spec.timm_name.split(".")[0] + "*")
    assert spec.vit == (spec.family == "vit")
    if spec.lora_base:
        assert get_spec(spec.lora_base.id).lora_base is None


def test_duplicate_registration_raises_and_keeps_the_first():
    before = get_spec("vanilla_cnn")
    with pytest.raises(ValueError, match="registered twice"):
        register("vanilla_cnn", arch="x", family="cnn", cam_layers=("head",))(lambda n, c, s: nn.Linear(1, n))
    assert get_spec("vanilla_cnn") is before and list_models().count("vanilla_cnn") == 1


def test_unknown_id_lists_the_registered_ones():
    with pytest.raises(KeyError) as e:
        get_spec("resnet19")
    assert "resnet19" in str(e.value) and all(i in str(e.value) for i in list_models())


def test_resolve_module_handles_negative_indices_and_peft():
    model, _ = build("vit_scratch")
    assert resolve_module(model, "blocks.-1.norm1") is model.blocks[5].norm1
    wrapped = wrap_lora(model)
    assert resolve_module(wrapped, "blocks.-1.norm1") is model.blocks[5].norm1
    cnn = create_model("vanilla_cnn", 14, 1, 64)
    assert isinstance(resolve_module(cnn, get_spec("vanilla_cnn").cam_layers[0]), nn.ReLU)


def test_has_imagenet_follows_the_weight_sources():
    assert not get_spec("vanilla_cnn").has_imagenet and not get_spec("vit_scratch").has_imagenet
    assert get_spec("efficientnet_lite0").has_imagenet and get_spec("resnet18").has_imagenet
    assert dataclasses.replace(get_spec("resnet18"), timm_name=None).has_imagenet is False
    assert zoo.IMAGENET_GREY[0] == pytest.approx((0.485 + 0.456 + 0.406) / 3, abs=1e-3)
