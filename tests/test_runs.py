"""cxrcore.runs: when a checkpoint folder counts as up to date (run_all skips it) and when it must be retrained."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cxrcore import checkpoints, metrics
from cxrcore.card import Card
from cxrcore.data import Dataset
from cxrcore.engine import TrainConfig, resolve_precision
from cxrcore.runs import init_checkpoint_unchanged, is_up_to_date, lora_base_unchanged
from cxrcore.zoo import get_spec
from helpers import NIH14


def nih_like(size: int = 64) -> Dataset:
    images = {s: torch.zeros(4, 1, size, size, dtype=torch.uint8) for s in ("train", "val", "test")}
    labels = {s: np.zeros((4, len(NIH14)), np.float32) for s in images}
    return Dataset("nih14-local", size, metrics.TASK_MULTILABEL, NIH14, images, labels, "memory", "none")


def checkpoint_for(make_checkpoint, tiny_card, data: Dataset, cfg: TrainConfig, **card_changes):
    card = tiny_card("vanilla_cnn", data.size)
    card = {**card, "config_key": cfg.key(), "dataset": {**card["dataset"], "split_checksum": data.split_checksum()},
            **card_changes}
    path, _ = make_checkpoint("vanilla_cnn", card=card)
    return path


def test_same_recipe_and_data_is_up_to_date(make_checkpoint, tiny_card):
    data, cfg = nih_like(), TrainConfig.for_model(get_spec("vanilla_cnn"))
    assert is_up_to_date(checkpoint_for(make_checkpoint, tiny_card, data, cfg), "vanilla_cnn", cfg, data)


def test_changed_hyperparameters_make_it_stale(make_checkpoint, tiny_card):
    data, cfg = nih_like(), TrainConfig.for_model(get_spec("vanilla_cnn"))
    path = checkpoint_for(make_checkpoint, tiny_card, data, cfg)
    assert not is_up_to_date(path, "vanilla_cnn", dataclasses.replace(cfg, lr=cfg.lr * 2), data)


def test_a_changed_model_input_size_makes_it_stale(make_checkpoint, tiny_card):
    """A zoo default (not only a CLI override) that changes the input size must retrain the model."""
    data, cfg = nih_like(), TrainConfig.for_model(get_spec("vanilla_cnn"))
    path = checkpoint_for(make_checkpoint, tiny_card, data, cfg, input_size=96)
    assert not is_up_to_date(path, "vanilla_cnn", cfg, data)


def test_other_data_or_missing_weights_make_it_stale(make_checkpoint, tiny_card):
    data, cfg = nih_like(), TrainConfig.for_model(get_spec("vanilla_cnn"))
    path = checkpoint_for(make_checkpoint, tiny_card, data, cfg)
    other = nih_like()
    other.labels["test"][0, 0] = 1
    assert not is_up_to_date(path, "vanilla_cnn", cfg, other)
    (path / "model.safetensors").unlink()
    assert not is_up_to_date(path, "vanilla_cnn", cfg, data)


def test_damaged_weights_or_a_crash_between_files_make_it_stale(make_checkpoint, tiny_card):
    """The up-to-date check verifies the weights' sha256, so a damaged file is retrained rather than skipped."""
    data, cfg = nih_like(), TrainConfig.for_model(get_spec("vanilla_cnn"))
    path = checkpoint_for(make_checkpoint, tiny_card, data, cfg)
    weights = path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 1
    weights.write_bytes(bytes(blob))
    assert not is_up_to_date(path, "vanilla_cnn", cfg, data)
    path = checkpoint_for(make_checkpoint, tiny_card, data, cfg)
    (path / "predictions.npz").unlink()  # as a save interrupted between files once left it
    assert not is_up_to_date(path, "vanilla_cnn", cfg, data)


def test_a_retrained_lora_base_makes_the_adapter_stale(make_checkpoint, tiny_card, tmp_path):
    root = tmp_path / "checkpoints"
    base_dir, _ = make_checkpoint("vit_scratch", root=root / "pneumoniamnist-local")
    sha = checkpoints.read_card(base_dir).weights_sha256
    base = {"id": "vit_scratch", "path": "pneumoniamnist-local/vit_scratch", "kind": "checkpoint", "sha256": sha}
    card = Card.from_dict({**tiny_card("vit_scratch_lora"), "init": {"kind": "lora", "source": "x", "lora_base": base}})
    assert lora_base_unchanged(card, root)
    make_checkpoint("vit_scratch", root=root / "pneumoniamnist-local", seed=1)
    assert not lora_base_unchanged(card, root)
    assert not lora_base_unchanged(card, tmp_path / "elsewhere")  # no base at all
    assert lora_base_unchanged(Card.from_dict(tiny_card("vit_scratch")), root)


def test_a_retrained_init_checkpoint_makes_the_fine_tune_stale(make_checkpoint, tiny_card, tmp_path):
    import shutil

    base_dir, _ = make_checkpoint("cnn_deep", root=tmp_path / "pretrain")
    sha = checkpoints.read_card(base_dir).weights_sha256
    card = Card.from_dict({**tiny_card("cnn_deep"), "init": {"kind": "checkpoint", "source": "x", "sha256": sha}})
    cfg = TrainConfig(init=str(base_dir))
    assert init_checkpoint_unchanged(card, cfg)
    make_checkpoint("cnn_deep", root=tmp_path / "pretrain", seed=1)
    assert not init_checkpoint_unchanged(card, cfg)
    shutil.rmtree(base_dir)  # a fresh clone: bases are not shipped, and the recorded sha256 stands
    assert init_checkpoint_unchanged(card, cfg)
    assert init_checkpoint_unchanged(Card.from_dict(tiny_card("cnn_deep")), cfg)  # random init: nothing to check


def test_a_zoo_chest_base_is_the_default_start_only_on_the_tasks_it_was_chosen_on():
    from cxrcore.runs import recipe

    base = get_spec("cnn_deep").chest_base
    assert base.chosen_on == ("nih14-local",)
    assert recipe("cnn_deep").init == base.path("cnn_deep") == f"pretrain/{base.folder}/cnn_deep"
    assert recipe("cnn_deep", base.dataset).init == "auto"  # the base itself starts from random init
    assert recipe("cnn_deep", "blood-cells").init == recipe("cnn_deep", "kermany-pneumonia3").init == "auto"
    assert recipe("cnn_deep", init="random").init == "random"
    assert recipe("cnn_small").init == "auto" and get_spec("cnn_small").chest_base is None


def test_recipe_uses_the_from_scratch_overrides_only_without_pretrained_weights(monkeypatch):
    from cxrcore import pretrained
    from cxrcore.runs import recipe

    monkeypatch.setattr(pretrained, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.delenv("CXR_WEIGHTS_DIR", raising=False)
    assert recipe("resnet18").lr == get_spec("resnet18").scratch_hparams["lr"]
    assert recipe("resnet18", init="imagenet").lr == TrainConfig().lr
    # the precision is resolved for this machine (never "auto" in a recipe, so never left to detection later)
    here = resolve_precision("auto", torch.device("cpu"))
    assert recipe("efficientnet_lite0") == dataclasses.replace(TrainConfig.for_model(get_spec("efficientnet_lite0")),
                                                               precision=here)
    assert recipe("mobilenet_v2").precision == "fp32" and recipe("resnet18", precision="fp32").precision == "fp32"
    assert recipe("resnet18", epochs=3).epochs == 3


def test_an_ensemble_of_cross_validated_members_is_thresholded_out_of_fold(tmp_path):
    from helpers import fake_checkpoint

    from cxrcore.runs import build_ensemble

    members = [fake_checkpoint(tmp_path, m, seed=s, cv=True) for m, s in (("vanilla_cnn", 1), ("cnn_small", 2))]
    card = build_ensemble(members, tmp_path / "ensemble", "test", n_boot=20)
    preds = checkpoints.read_predictions(tmp_path / "ensemble")
    mean = np.mean([m.predictions()["oof_probs"] for m in members], axis=0)
    np.testing.assert_allclose(preds["oof_probs"], mean, rtol=1e-6)
    np.testing.assert_allclose(preds["val_probs"], mean[-80:], rtol=1e-6)  # the pool's last rows are val
    assert card.cross_validated and card.metrics.extra["oof"]["n"] == 480
    points = card.extra["operating_points"]["youden_val"]
    pos = preds["oof_labels"].sum(0)
    assert [q["positives"] for q in points] == [int(v) for v in pos]  # 480 images' positives, not 80's
    assert "out-of-fold" in card.extra["how_chosen"]["thresholds"]


def test_an_ensemble_with_a_single_split_member_is_thresholded_on_validation(tmp_path):
    from helpers import fake_checkpoint

    from cxrcore.runs import build_ensemble

    members = [fake_checkpoint(tmp_path, "vanilla_cnn", seed=1, cv=True),
               fake_checkpoint(tmp_path, "cnn_small", seed=2)]
    card = build_ensemble(members, tmp_path / "ensemble", "test", n_boot=20)
    assert not card.cross_validated and "oof_probs" not in checkpoints.read_predictions(tmp_path / "ensemble")
    assert "validation" in card.extra["how_chosen"]["thresholds"]


def test_the_ensemble_size_is_chosen_on_out_of_fold_predictions(tmp_path):
    """Two members that read the labels and one that does not: the mean of the first two beats every other
    leading subset out of fold, so the third is left out."""
    import json

    from helpers import fake_checkpoint

    from cxrcore.checkpoints import CARD, Checkpoint, read_card, read_predictions, rewrite
    from cxrcore.runs import ensemble_by_held_out

    ranked = []
    for k, (model, signal) in enumerate((("vanilla_cnn", 2.0), ("cnn_small", 2.0), ("cnn_deep", 0.0))):
        ck = fake_checkpoint(tmp_path, model, seed=k + 1, cv=True)
        preds = read_predictions(ck.path)
        y = preds["oof_labels"]
        noise = np.random.default_rng(k).normal(size=y.shape)
        preds["oof_probs"] = (1 / (1 + np.exp(-(signal * y + noise)))).astype(np.float32)
        rewrite(ck.path, json.loads((ck.path / CARD).read_text()), preds)
        ranked.append(Checkpoint(ck.path, read_card(ck.path)))
    choice = ensemble_by_held_out(ranked)
    aucs = choice.auc_by_size
    assert [m.id for m in choice.members] == ["vanilla_cnn", "cnn_small"] and list(aucs) == [2, 3]
    mean = np.mean([m.predictions()["oof_probs"] for m in ranked[:2]], axis=0)
    assert aucs[2] == pytest.approx(metrics.get_auc(ranked[0].predictions()["oof_labels"], mean))
    assert aucs[2] > aucs[3] and choice.split == "oof"
    assert choice.how.startswith("the top 2 shipped models by pooled out-of-fold AUC")
