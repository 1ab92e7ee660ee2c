"""Checkpoints round-trip in fp16, are verified against the sha256 in their card before use, refuse damaged files and
cards with a message, and are read without unpickling anything."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cxrcore import checkpoints
from cxrcore.checkpoints import CARD, HISTORY, PREDICTIONS, WEIGHTS, CheckpointError
from cxrcore.inference import load_model
from cxrcore.pretrained import WeightsNotFound, file_sha256, initialise, wrap_lora
from cxrcore.zoo import create_model, get_spec


def trained_like(model_id: str = "vanilla_cnn") -> torch.nn.Module:
    """A model whose BatchNorm statistics are no longer the defaults, as after training."""
    torch.manual_seed(0)
    model = create_model(model_id, 14, 1, 64)
    with torch.no_grad():
        model.train()(torch.rand(8, 1, 64, 64) * 3 + 1)
    return model.eval()


@pytest.fixture
def saved(tmp_path, tiny_card):
    model = trained_like()
    preds = {"val_probs": np.random.default_rng(0).uniform(size=(5, 14)), "val_labels": np.eye(14)[:5]}
    history = [{"epoch": 1, "train_loss": 0.7, "val_auc": 0.55}, {"epoch": 2, "train_loss": 0.6, "val_auc": 0.6}]
    card = {**tiny_card("vanilla_cnn"), "metrics": {"val": {"auc_macro": np.float32(0.6)}}, "where": Path("/x")}
    written = checkpoints.save(tmp_path / "vanilla_cnn", model, card, preds, history)
    return tmp_path / "vanilla_cnn", model, written, preds, history


# ---- round trip ----------------------------------------------------------------------------------------------------

def test_save_writes_four_files_and_the_weights_hash(saved):
    path, _, card, _, _ = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, CARD, PREDICTIONS, HISTORY])
    assert card["weights_sha256"] == file_sha256(path / WEIGHTS)
    assert card["weights_bytes"] == (path / WEIGHTS).stat().st_size
    on_disk = checkpoints.read_card(path)
    assert on_disk["metrics"]["val"]["auc_macro"] == pytest.approx(0.6) and on_disk["where"] == "/x"  # numpy, Path
    assert {k: v for k, v in on_disk.items() if k not in ("metrics", "where")} == {
        k: v for k, v in card.items() if k not in ("metrics", "where")}


def test_weights_are_fp16_safetensors_with_the_id(saved):
    path, model, _, _, _ = saved
    with safe_open(str(path / WEIGHTS), "pt") as f:
        assert f.metadata() == {"id": "vanilla_cnn"}
        assert set(f.keys()) == set(model.state_dict())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dtypes = {k: t.dtype for k, t in tensors.items()}
    # weight tensors in fp16; 1-D normalisation statistics and biases kept in fp32 (precision of small values)
    assert {d for k, d in dtypes.items() if tensors[k].ndim > 1} == {torch.float16}
    assert {d for k, d in dtypes.items() if tensors[k].ndim == 1} == {torch.float32}
    assert dtypes["features.0.1.num_batches_tracked"] == torch.int64


def test_round_trip_predicts_like_the_original(saved):
    path, model, _, _, _ = saved
    x = torch.rand(4, 1, 64, 64)
    torch.manual_seed(99)
    fresh = create_model("vanilla_cnn", 14, 1, 64)
    card = checkpoints.load_state_into(fresh, path)
    assert card["id"] == "vanilla_cnn"
    with torch.no_grad():
        want, got = torch.sigmoid(model(x)), torch.sigmoid(fresh.eval()(x))
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # fp16 storage: ~3 significant digits
    assert next(fresh.parameters()).dtype == torch.float32


@pytest.mark.parametrize("model_id", ["vanilla_cnn", "efficientnet_b0"])
def test_rounded_model_predicts_exactly_like_its_checkpoint(tmp_path, tiny_card, model_id):
    """Cards hold the predictions of the rounded model, so a loaded checkpoint reproduces them bit for bit."""
    model = checkpoints.round_to_stored(trained_like(model_id))
    assert all(torch.equal(v, v.half().float()) for v in model.state_dict().values() if v.ndim > 1)
    checkpoints.save(tmp_path / model_id, model, tiny_card(model_id), {}, [])
    fresh = create_model(model_id, 14, 1, 64)
    checkpoints.load_state_into(fresh, tmp_path / model_id)
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))


def test_load_model_gives_a_ready_model(saved):
    path, model, _, _, _ = saved
    m = load_model(path)
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    probs = m.predict(images)
    assert probs.shape == (3, 14) and ((0 <= probs) & (probs <= 1)).all() and not m.model.training
    with torch.no_grad():
        want = torch.sigmoid(model((images.float() / 255 - 0.5) / 0.5)).numpy()
    np.testing.assert_allclose(probs, want, atol=2e-3)


def test_predictions_and_history_round_trip(saved):
    path, _, _, preds, history = saved
    got = checkpoints.read_predictions(path)
    assert set(got) == set(preds) and all(v.dtype == np.float32 for v in got.values())
    np.testing.assert_allclose(got["val_probs"], preds["val_probs"], rtol=1e-6)
    assert checkpoints.read_history(path) == [{k: float(v) for k, v in row.items()} for row in history]
    ck = checkpoints.Checkpoint(path, checkpoints.read_card(path))
    assert ck.id == "vanilla_cnn" and ck.dataset == "nih14-local" and ck.has_weights and len(ck.history()) == 2


def test_empty_history_round_trips(tmp_path, tiny_card):
    checkpoints.save(tmp_path / "m", trained_like(), tiny_card("vanilla_cnn"), {}, [])
    assert checkpoints.read_history(tmp_path / "m") == [] and checkpoints.read_predictions(tmp_path / "m") == {}


def test_resaving_replaces_the_weights_without_leftovers(saved, tiny_card):
    path, _, first, _, _ = saved
    other = create_model("vanilla_cnn", 14, 1, 64)
    second = checkpoints.save(path, other, tiny_card("vanilla_cnn"), {}, [])
    assert second["weights_sha256"] != first["weights_sha256"]
    assert not list(path.glob("*.tmp")) and checkpoints.read_weights(path)


# ---- damaged files and cards ---------------------------------------------------------------------------------------

def flip_a_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size - 100])


@pytest.mark.parametrize("damage", [flip_a_byte, truncate])
def test_damaged_weights_are_refused_before_loading(saved, damage):
    path, _, _, _, _ = saved
    damage(path / WEIGHTS)
    with pytest.raises(CheckpointError, match="does not match its card") as e:
        checkpoints.read_weights(path)
    assert "refused" in str(e.value)
    model = create_model("vanilla_cnn", 14, 1, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        checkpoints.load_state_into(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not half-loaded


def test_missing_weights_name_the_rebuild_command(saved):
    path, _, card, _, _ = saved
    (path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="weights are not shipped") as e:
        checkpoints.read_weights(path)
    assert card["rebuild_command"] in str(e.value)
    del card["rebuild_command"]
    with pytest.raises(CheckpointError, match="python train/run_all.py --models vanilla_cnn"):
        checkpoints.read_weights(path, card)


@pytest.mark.parametrize("key", ["id", "dataset", "init", "metrics"])
def test_card_missing_a_key_is_refused(saved, key):
    path, _, card, _, _ = saved
    (path / CARD).write_text(json.dumps({k: v for k, v in card.items() if k != key}, default=str))
    with pytest.raises(CheckpointError, match=f"lacks '{key}'"):
        checkpoints.read_card(path)


@pytest.mark.parametrize("text", ['{"id": "vanilla_cnn",', "", "not json"])
def test_card_with_invalid_json_is_refused(saved, text):
    path = saved[0]
    (path / CARD).write_text(text)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoints.read_card(path)


def test_folder_without_card_or_predictions(tmp_path):
    with pytest.raises(CheckpointError, match="no card.json"):
        checkpoints.read_card(tmp_path)
    with pytest.raises(CheckpointError, match="no predictions.npz"):
        checkpoints.read_predictions(tmp_path)


# ---- finding checkpoints -------------------------------------------------------------------------------------------

def test_find_lists_nested_folders_and_skips_broken_cards(tmp_path, tiny_card):
    model = trained_like()
    root = tmp_path / "checkpoints"
    checkpoints.save(root / "vanilla_cnn", model, {**tiny_card("vanilla_cnn"), "order": 0}, {}, [])
    checkpoints.save(root / "cnn_small", trained_like("cnn_small"), {**tiny_card("cnn_small"), "order": 1}, {}, [])
    pn = {**tiny_card("vanilla_cnn"), "order": 0}
    pn["dataset"] = {**pn["dataset"], "name": "pneumoniamnist-local"}
    checkpoints.save(root / "pneumoniamnist-local" / "vanilla_cnn", model, pn, {}, [])
    (root / "broken").mkdir()
    (root / "broken" / CARD).write_text("{")
    (root / "incomplete").mkdir()
    (root / "incomplete" / CARD).write_text(json.dumps({"id": "x"}))
    (root / "no_card").mkdir()
    (root / "cnn_small" / WEIGHTS).unlink()  # cards without weights are listed, marked as such
    found = checkpoints.find(root)
    assert [(c.dataset, c.id) for c in found] == [("nih14-local", "vanilla_cnn"), ("nih14-local", "cnn_small"),
                                                  ("pneumoniamnist-local", "vanilla_cnn")]
    assert [c.has_weights for c in found] == [True, False, True]
    assert found[2].path == root / "pneumoniamnist-local" / "vanilla_cnn"
    assert checkpoints.find(tmp_path / "nowhere") == []


# ---- LoRA and pickle safety ----------------------------------------------------------------------------------------

def test_lora_checkpoint_stores_only_adapter_and_head(tmp_path, tiny_card):
    torch.manual_seed(0)
    model = wrap_lora(create_model("vit_scratch", 14, 1, 64))
    state = checkpoints.saved_state(model)
    assert state and all("lora_" in k or "modules_to_save" in k for k in state)
    assert any(".lora_A." in k for k in state) and any("modules_to_save" in k and "head" in k for k in state)
    assert not any("mlp.fc1" in k or "patch_embed" in k for k in state)
    full = checkpoints.saved_state(create_model("vit_scratch", 14, 1, 64))
    assert sum(v.numel() for v in state.values()) < 0.2 * sum(v.numel() for v in full.values())
    card = checkpoints.save(tmp_path / "lora", model, tiny_card("vit_scratch"), {}, [])
    assert card["weights_bytes"] < 0.25 * sum(2 * v.numel() for v in full.values())


def test_lora_adapter_on_a_base_from_another_dataset_round_trips(tmp_path, tiny_card, make_checkpoint):
    """vit_scratch_lora as shipped: its base is a 2-class PneumoniaMNIST checkpoint under <root>/pneumoniamnist-local;
    the loaded model predicts like the trained one, and a retrained or missing base is refused with a way forward."""
    root = tmp_path / "checkpoints"
    pn_card = {**tiny_card("vit_scratch", 28, labels=["normal", "pneumonia"]), "task": "binary-class"}
    pn_card["dataset"] = {**pn_card["dataset"], "name": "pneumoniamnist-local"}
    make_checkpoint("vit_scratch", root=root / "pneumoniamnist-local", card=pn_card)
    spec = get_spec("vit_scratch_lora")
    model, init = initialise(spec, create_model("vit_scratch_lora", 14, 1, 64), "auto", 1, root)
    with torch.no_grad():  # as after training: the adapters and the head have moved
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    checkpoints.round_to_stored(model.eval())
    checkpoints.save(root / "vit_scratch_lora", model, {**tiny_card("vit_scratch_lora"), "init": init.to_dict()}, {}, [])
    x = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    loaded = load_model(root / "vit_scratch_lora")
    with torch.no_grad():
        expected = torch.sigmoid(model(loaded.prep(x))).numpy()
    np.testing.assert_allclose(loaded.predict(x), expected, atol=1e-5)

    make_checkpoint("vit_scratch", root=root / "pneumoniamnist-local", card=pn_card, seed=1)  # a retrained base
    with pytest.raises(CheckpointError, match="trained on a different vit_scratch checkpoint"):
        load_model(root / "vit_scratch_lora")
    (root / "pneumoniamnist-local" / "vit_scratch" / WEIGHTS).unlink()
    with pytest.raises(WeightsNotFound, match="--dataset pneumoniamnist-local --size 28 --models vit_scratch"):
        load_model(root / "vit_scratch_lora")


def test_nothing_is_unpickled(saved, monkeypatch):
    path, _, _, _, _ = saved

    def no_pickle(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    assert checkpoints.find(path.parent)[0].id == "vanilla_cnn"
    checkpoints.load_state_into(create_model("vanilla_cnn", 14, 1, 64), path)
    checkpoints.read_predictions(path)
    load_model(path)


def test_pickled_predictions_are_refused(saved):
    path = saved[0]
    np.savez(path / PREDICTIONS, val_probs=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        checkpoints.read_predictions(path)
