"""Checkpoints round-trip in fp16, are verified against the sha256 in their card (and the tree's manifest) before use,
refuse damaged or tampered files and cards with a message, list a broken folder with its reason while the others stay
usable, never block on a non-regular file, and are written as a whole (a killed save or a full disk loses nothing)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cxrcore import checkpoints
from cxrcore.card import Card
from cxrcore.checkpoints import CARD, HISTORY, MANIFEST, PREDICTIONS, WEIGHTS, CardError, CheckpointError
from cxrcore.inference import load_all, load_model
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
def saved(tmp_path, tiny_card, tiny_predictions):
    model = trained_like()
    raw = tiny_card("vanilla_cnn")
    preds = tiny_predictions(raw)
    history = [{"epoch": 1, "train_loss": 0.7, "val_auc": 0.55}, {"epoch": 2, "train_loss": 0.6, "val_auc": 0.6}]
    raw["metrics"]["val"]["auc_macro"] = np.float32(1.0)  # numpy numbers and paths become JSON
    card = Card.from_dict({**raw, "where": Path("/x")})
    written = checkpoints.save(tmp_path / "vanilla_cnn", model, card, preds, history)
    return tmp_path / "vanilla_cnn", model, written, preds, history


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the run) if the test blocks for 20 s, as a read of a FIFO would."""
    def fail(*_):
        raise AssertionError("blocked: a read did not return")

    before = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def edit_card(path: Path, change) -> None:
    raw = json.loads((path / CARD).read_text())
    change(raw)
    (path / CARD).write_text(json.dumps(raw))


# ---- round trip ----------------------------------------------------------------------------------------------------

def test_save_writes_four_files_and_the_weights_hash(saved):
    path, _, card, _, _ = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, CARD, PREDICTIONS, HISTORY])
    assert card.weights_sha256 == file_sha256(path / WEIGHTS)
    assert card.weights_bytes == (path / WEIGHTS).stat().st_size
    on_disk = checkpoints.read_card(path)
    assert on_disk == card and on_disk.extra == {"where": "/x"}  # numpy, Path
    assert json.loads((path / CARD).read_text())["schema_version"] == 2


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
    assert card.id == "vanilla_cnn"
    with torch.no_grad():
        want, got = torch.sigmoid(model(x)), torch.sigmoid(fresh.eval()(x))
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # fp16 storage: ~3 significant digits
    assert next(fresh.parameters()).dtype == torch.float32


@pytest.mark.parametrize("model_id", ["vanilla_cnn", "efficientnet_b0"])
def test_rounded_model_predicts_exactly_like_its_checkpoint(tmp_path, tiny_card, model_id):
    """Cards hold the predictions of the rounded model, so a loaded checkpoint reproduces them bit for bit."""
    model = checkpoints.round_to_stored(trained_like(model_id))
    assert all(torch.equal(v, v.half().float()) for v in model.state_dict().values() if v.ndim > 1)
    checkpoints.save(tmp_path / model_id, model, Card.from_dict(tiny_card(model_id)), {}, [])
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
    ck = checkpoints.find(path.parent)[0]
    assert ck.id == "vanilla_cnn" and ck.dataset == "nih14-local" and ck.has_weights and len(ck.history()) == 2
    assert ck.notes == () and set(ck.predictions()) == set(checkpoints.PREDICTION_KEYS)


def test_a_checkpoint_without_predictions_is_listed_with_a_note(tmp_path, tiny_card):
    checkpoints.save(tmp_path / "m", trained_like(), Card.from_dict(tiny_card("vanilla_cnn")), {}, [])
    assert checkpoints.read_history(tmp_path / "m") == [] and not (tmp_path / "m" / PREDICTIONS).exists()
    (ck,) = checkpoints.find(tmp_path)
    assert not ck.has_predictions and "no stored predictions" in ck.notes[0]
    with pytest.raises(CheckpointError, match="no predictions.npz"):
        ck.predictions()


def test_resaving_replaces_the_weights_without_leftovers(saved, tiny_card):
    path, _, first, _, _ = saved
    other = create_model("vanilla_cnn", 14, 1, 64)
    second = checkpoints.save(path, other, Card.from_dict(tiny_card("vanilla_cnn")), {}, [])
    assert second.weights_sha256 != first.weights_sha256
    assert not (path / PREDICTIONS).exists()  # a file the new save does not write is not left stale
    assert [p.name for p in path.parent.iterdir()] == [path.name] and checkpoints.read_weights(path)


def test_a_save_keeps_the_resume_file_and_an_ood_detector_of_the_same_weights(saved):
    path, model, card, preds, history = saved
    (path / ".resume.pt").write_bytes(b"resume")
    (path / "ood.json").write_text("{}")
    checkpoints.save(path, model, card, preds, history)  # same weights
    assert (path / ".resume.pt").read_bytes() == b"resume" and (path / "ood.json").exists()
    checkpoints.save(path, create_model("vanilla_cnn", 14, 1, 64), card, preds, history)  # new weights
    assert (path / ".resume.pt").exists() and not (path / "ood.json").exists()


def test_the_ensemble_is_saved_without_weights(tmp_path, tiny_card, tiny_predictions):
    raw = {**tiny_card("vanilla_cnn"), "id": "ensemble", "members": ["a", "b"], "input_size": None,
           "normalisation": None, "init": {"kind": "ensemble", "source": "members"}}
    card = checkpoints.save(tmp_path / "ensemble", None, Card.from_dict(raw), tiny_predictions(raw))
    assert card.weights_sha256 is None and sorted(p.name for p in (tmp_path / "ensemble").iterdir()) == [
        CARD, PREDICTIONS]
    with pytest.raises(CheckpointError, match="no input size"):
        load_model(tmp_path / "ensemble")


# ---- a save that fails part-way ------------------------------------------------------------------------------------

def folder_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_save_killed_mid_way_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    path, _, card, preds, history = saved
    before = folder_bytes(path)
    real, calls = checkpoints._write, []

    def dies_after_the_weights(p, data):
        calls.append(p.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it, after the weights were written
        real(p, data)

    monkeypatch.setattr(checkpoints, "_write", dies_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(path, create_model("vanilla_cnn", 14, 1, 64), card, preds, history)
    assert calls[0] == WEIGHTS and folder_bytes(path) == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no hidden half-written folder
    assert checkpoints.find(path.parent)[0].card == card


def test_rewrite_replaces_card_and_predictions_and_keeps_the_weights(saved):
    path, _, card, preds, _ = saved
    weights = (path / WEIGHTS).read_bytes()
    raw = json.loads((path / "card.json").read_text())
    raw["rebuild_command"] = "python train/run_all.py --models vanilla_cnn --seed 1"
    checkpoints.rewrite(path, raw, {k: np.asarray(v) for k, v in preds.items()})
    assert checkpoints.read_card(path).rebuild_command.endswith("--seed 1")
    assert (path / WEIGHTS).read_bytes() == weights
    assert sorted(p.name for p in path.iterdir()) == sorted(folder_bytes(path))  # no temporary file left


def test_rewrite_refuses_a_card_that_would_not_load_and_writes_nothing(saved):
    path = saved[0]
    before = folder_bytes(path)
    raw = json.loads((path / "card.json").read_text())
    raw["label_names"] = "not a list"
    with pytest.raises(CheckpointError):
        checkpoints.rewrite(path, raw)
    assert folder_bytes(path) == before


KILLED_SAVE = """
import sys, time
from pathlib import Path
import torch
from cxrcore import checkpoints
from cxrcore.zoo import create_model
real = checkpoints._write
def slow(p, data):
    real(p, data)
    print(p, flush=True)
    time.sleep(60)  # killed here, after the weights of the new checkpoint were written
checkpoints._write = slow
path = Path(sys.argv[1])
checkpoints.save(path, create_model("vanilla_cnn", 14, 1, 64), checkpoints.read_card(path), {}, [])
"""


def test_a_save_killed_by_sigkill_leaves_the_previous_checkpoint_and_the_next_save_cleans_up(saved, tmp_path):
    path, model, card, preds, history = saved
    before = folder_bytes(path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    written = proc.stdout.readline()  # the first file of the new folder is on disk
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert written.strip().endswith(WEIGHTS) and ".vanilla_cnn.tmp-" in written
    assert folder_bytes(path) == before and checkpoints.find(path.parent)[0].card == card
    assert not checkpoints.scan(path.parent).broken  # the half-written hidden folder is not a checkpoint
    checkpoints.save(path, model, card, preds, history)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the next save removed the leftover


def test_a_full_disk_gives_a_clear_message_and_leaves_no_partial_files(saved, monkeypatch):
    path, _, card, preds, history = saved
    before = folder_bytes(path)
    real, written = os.write, []

    def enospc(fd, data):
        if written:  # the second write finds the disk full, after part of the file was written
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(real(fd, data[: len(data) // 2]))
        return written[-1]

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(CheckpointError, match="disk full while writing .* previous checkpoint, if any, is unchanged"):
        checkpoints.save(path, create_model("vanilla_cnn", 14, 1, 64), card, preds, history)
    monkeypatch.undo()
    assert folder_bytes(path) == before and [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs (needs root and mount; skipped where the system does not allow it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_disk_leaves_the_old_checkpoint(tiny_disk, tiny_card):
    card = Card.from_dict(tiny_card("vanilla_cnn"))
    checkpoints.save(tiny_disk / "m", trained_like(), card, {}, [])  # 0.2 MB fits
    before = folder_bytes(tiny_disk / "m")
    big = Card.from_dict(tiny_card("cnn_deep"))
    with pytest.raises(CheckpointError, match="disk full"):
        checkpoints.save(tiny_disk / "m", create_model("cnn_deep", 14, 1, 64), big, {}, [])  # 2 MB does not
    assert folder_bytes(tiny_disk / "m") == before and [p.name for p in tiny_disk.iterdir()] == ["m"]


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
    assert card.rebuild_command in str(e.value)
    with pytest.raises(CheckpointError, match="python train/run_all.py --models vanilla_cnn"):
        checkpoints.read_weights(path, replace(card, rebuild_command=None))


@pytest.mark.parametrize("key", ["id", "dataset", "init", "metrics"])
def test_card_missing_a_key_is_refused(saved, key):
    path = saved[0]
    edit_card(path, lambda c: c.pop(key))
    with pytest.raises(CardError, match=f"lacks '{key}'.*Rebuild the checkpoint with: python train/run_all.py"):
        checkpoints.read_card(path)


@pytest.mark.parametrize("text", ['{"id": "vanilla_cnn",', "", "not json", "[" * 100_000, "\xff\xfe"])
def test_card_with_invalid_json_is_refused(saved, text):
    path = saved[0]
    (path / CARD).write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoints.read_card(path)


def test_folder_without_card_or_predictions(tmp_path):
    with pytest.raises(CheckpointError, match="no card.json"):
        checkpoints.read_card(tmp_path)
    with pytest.raises(CheckpointError, match="no predictions.npz"):
        checkpoints.read_predictions(tmp_path)


# ---- one tampered checkpoint per failure class: refused with its reason, the others unaffected ----------------------

def _set(*keys, value):
    def change(c):
        for k in keys[:-1]:
            c = c[k]
        c[keys[-1]] = value
    return change


def _card_as(value):
    return lambda path: (path / CARD).write_text(json.dumps(value))


def _replace_with_dir(name):
    def damage(path):
        (path / name).unlink()
        (path / name).mkdir()
    return damage


def _replace_with_fifo(name):
    def damage(path):
        (path / name).unlink()
        os.mkfifo(path / name)
    return damage


def _replace_with_devzero(name):
    def damage(path):
        (path / name).unlink()
        (path / name).symlink_to("/dev/zero")
    return damage


def _write(name, data: bytes):
    return lambda path: (path / name).write_bytes(data)


def _predictions(**change):
    def damage(path):
        p = dict(np.load(path / PREDICTIONS))
        p.update(change)
        np.savez(path / PREDICTIONS, **p)
    return damage


BROKEN = {  # damage -> what the reason says
    "card is a JSON list": (_card_as([1, 2]), "must be an object"),
    "card fields of the wrong type": (_card_as({"id": 3, "dataset": [], "init": {}, "metrics": {}, "label_names": [],
                                                 "task": ""}), "label_names"),
    "metrics as a list": (lambda p: edit_card(p, _set("metrics", value=[0.9])), "metrics must be an object"),
    "card is a directory": (_replace_with_dir(CARD), "is a directory"),
    "card is a FIFO": (_replace_with_fifo(CARD), "is a FIFO"),
    "card links to /dev/zero": (_replace_with_devzero(CARD), "character device"),
    "absurd input size": (lambda p: edit_card(p, _set("input_size", value=10**9)), "input_size = 1000000000"),
    "zero image size": (lambda p: edit_card(p, _set("dataset", "size", value=0)), "dataset.size = 0"),
    "threshold 0": (lambda p: edit_card(p, _set("thresholds", value={"youden_val": [0.0] * 14})),
                    r"thresholds.youden_val\[0\] = 0 is outside \(0, 1\]"),
    "threshold list of another label count": (lambda p: edit_card(p, _set("thresholds", value={"youden_val": [.5]})),
                                              "has 1 entries, expected 14"),
    "AUC above 1": (lambda p: edit_card(p, _set("metrics", "test", "auc_macro", value=3.0)), "auc_macro = 3"),
    "NaN accuracy": (lambda p: edit_card(p, _set("metrics", "test", "acc", value=float("nan"))), "finite number"),
    "an AUC its predictions do not give": (lambda p: (edit_card(p, _set("metrics", "test", "auc_macro", value=0.99)),
                                                      _predictions(test_probs=np.full((4, 14), 0.5, np.float32))(p)),
                                           "claims test AUC 0.990, its stored predictions give 0.500"),
    "a newer schema": (lambda p: edit_card(p, _set("schema_version", value=99)), "newer than this code"),
    "sha256 that is not a hash": (lambda p: edit_card(p, _set("weights_sha256", value="abc")), "must be a sha256"),
    "garbage predictions": (_write(PREDICTIONS, b"PK\x03\x04garbage"), "cannot be read as stored predictions"),
    "predictions of another shape": (_predictions(val_probs=np.zeros((4, 3), np.float32)), "expected .N, 14"),
    "predictions that are not probabilities": (_predictions(val_probs=np.full((4, 14), 7.0, np.float32)),
                                               "not probabilities"),
    "predictions without test labels": (lambda p: np.savez(p / PREDICTIONS, val_probs=np.zeros((4, 14))), "lacks"),
    "predictions are a FIFO": (_replace_with_fifo(PREDICTIONS), "is a FIFO"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_tampered_checkpoint_is_listed_with_its_reason_and_the_others_still_load(make_checkpoint, tmp_path, name,
                                                                                   no_hang):
    damage, reason = BROKEN[name]
    root = tmp_path / "checkpoints"
    bad, _ = make_checkpoint("vanilla_cnn", root=root)
    make_checkpoint("cnn_small", root=root)
    damage(bad)
    result = checkpoints.scan(root)
    assert [c.id for c in result.found] == ["cnn_small"]
    (broken,) = result.broken
    assert broken.path == bad and re.search(reason, broken.reason), broken.reason
    loaded, problems = load_all(root)
    assert list(loaded) == ["nih14-local/cnn_small"] and not problems


WEIGHT_DAMAGE = {
    "weights link to /dev/zero": (_replace_with_devzero(WEIGHTS), "character device"),
    "weights are a FIFO": (_replace_with_fifo(WEIGHTS), "is a FIFO"),
    "weights are a directory": (_replace_with_dir(WEIGHTS), "is a directory"),
    "weights larger than the card says": (lambda p: open(p / WEIGHTS, "ab").write(b"\0" * 10), "over the"),
}


@pytest.mark.parametrize("name", list(WEIGHT_DAMAGE))
def test_unreadable_weights_are_a_problem_of_that_model_only(make_checkpoint, tmp_path, name, no_hang):
    damage, reason = WEIGHT_DAMAGE[name]
    root = tmp_path / "checkpoints"
    bad, _ = make_checkpoint("vanilla_cnn", root=root)
    make_checkpoint("cnn_small", root=root)
    damage(bad)
    loaded, problems = load_all(root)
    assert list(loaded) == ["nih14-local/cnn_small"] and reason in problems["nih14-local/vanilla_cnn"]
    assert [c.id for c in checkpoints.find(root)] == ["vanilla_cnn", "cnn_small"]  # its card is still shown


@pytest.mark.parametrize("history", [b"epoch,val_auc\n1,abc\n", b"\x00\xff\x00garbage", b"epoch\n1,2,3\n"])
def test_a_garbage_history_only_loses_that_curve(saved, history):
    path = saved[0]
    (path / HISTORY).write_bytes(history)
    (ck,) = checkpoints.find(path.parent)
    assert "no training curve" in ck.notes[0] and ck.predictions()
    with pytest.raises(CheckpointError, match="history"):
        ck.history()


def test_hidden_folders_of_a_save_in_progress_are_not_checkpoints(saved):
    path = saved[0]
    hidden = path.parent / ".vanilla_cnn.tmp-123"
    hidden.mkdir()
    (hidden / CARD).write_text("{")
    assert [c.id for c in checkpoints.find(path.parent)] == ["vanilla_cnn"] and not checkpoints.scan(path.parent).broken


# ---- the manifest of trusted weights -------------------------------------------------------------------------------

def tamper_and_update_card(path: Path) -> None:
    """What someone who can write the folder can do: change the weights and put their new sha256 in the card."""
    flip_a_byte(path / WEIGHTS)
    edit_card(path, _set("weights_sha256", value=file_sha256(path / WEIGHTS)))


def test_tampered_weights_with_an_updated_card_load_without_a_manifest(saved):
    """The card's sha256 protects integrity (damage), not authenticity: this is what the manifest is for."""
    path = saved[0]
    tamper_and_update_card(path)
    checkpoints.read_weights(path)


def test_the_manifest_refuses_tampered_weights_whose_card_was_updated(saved):
    path = saved[0]
    manifest = checkpoints.pin(path.parent)
    assert json.loads(manifest.read_text())["weights"] == {f"vanilla_cnn/{WEIGHTS}": file_sha256(path / WEIGHTS)}
    checkpoints.read_weights(path)
    tamper_and_update_card(path)
    with pytest.raises(CheckpointError, match="is not the file pinned in .*MANIFEST.json"):
        checkpoints.read_weights(path)
    loaded, problems = load_all(path.parent)
    assert not loaded and "pinned" in problems["nih14-local/vanilla_cnn"]


def test_under_a_manifest_unpinned_weights_are_refused_and_saving_pins(saved, make_checkpoint):
    path = saved[0]
    root = path.parent
    checkpoints.pin(root)
    other, _ = make_checkpoint("cnn_small", root=root)  # saved by the project's code: pinned as it is written
    checkpoints.read_weights(other)
    pins = json.loads((root / MANIFEST).read_text())["weights"]
    del pins[f"cnn_small/{WEIGHTS}"]
    (root / MANIFEST).write_text(json.dumps({"weights": pins}))
    with pytest.raises(CheckpointError, match="not pinned .* python train/run_all.py --pin"):
        checkpoints.read_weights(other)
    assert checkpoints.is_pinned(path) and not checkpoints.is_pinned(other)  # what Table 1 calls "weights shipped"
    nested, _ = make_checkpoint("vanilla_cnn", root=root / "pneumoniamnist-local")  # <root>/<dataset>/<id>
    assert f"pneumoniamnist-local/vanilla_cnn/{WEIGHTS}" in json.loads((root / MANIFEST).read_text())["weights"]
    checkpoints.read_weights(nested)


def test_a_broken_manifest_refuses_every_checkpoint_under_it(saved):
    path = saved[0]
    (path.parent / MANIFEST).write_text('["not", "a", "manifest"]')
    with pytest.raises(CheckpointError, match="is not a manifest"):
        checkpoints.read_weights(path)


# ---- finding checkpoints -------------------------------------------------------------------------------------------

def test_find_lists_nested_folders_and_scan_names_the_broken_ones(tmp_path, make_checkpoint, tiny_card):
    root = tmp_path / "checkpoints"
    make_checkpoint("vanilla_cnn", root=root)
    make_checkpoint("cnn_small", root=root)
    pn = tiny_card("vanilla_cnn")
    pn["dataset"] = {**pn["dataset"], "name": "pneumoniamnist-local"}
    make_checkpoint("vanilla_cnn", root=root / "pneumoniamnist-local", card=pn)
    (root / "broken").mkdir()
    (root / "broken" / CARD).write_text("{")
    (root / "incomplete").mkdir()
    (root / "incomplete" / CARD).write_text(json.dumps({"id": "x", "dataset": {"name": "pneumoniamnist-local"}}))
    (root / "no_card").mkdir()
    (root / "cnn_small" / WEIGHTS).unlink()  # cards without weights are listed, marked as such
    found = checkpoints.find(root)
    assert [(c.dataset, c.id) for c in found] == [("nih14-local", "vanilla_cnn"), ("nih14-local", "cnn_small"),
                                                  ("pneumoniamnist-local", "vanilla_cnn")]
    assert [c.has_weights for c in found] == [True, False, True]
    assert found[2].path == root / "pneumoniamnist-local" / "vanilla_cnn"
    broken = {b.path.name: b for b in checkpoints.scan(root).broken}
    assert set(broken) == {"broken", "incomplete"} and "not valid JSON" in broken["broken"].reason
    assert broken["incomplete"].dataset == "pneumoniamnist-local" and broken["broken"].dataset is None
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
    card = checkpoints.save(tmp_path / "lora", model, Card.from_dict(tiny_card("vit_scratch")), {}, [])
    assert card.weights_bytes < 0.25 * sum(2 * v.numel() for v in full.values())


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
    card = replace(Card.from_dict(tiny_card("vit_scratch_lora")), init=init)
    checkpoints.save(root / "vit_scratch_lora", model, card, {}, [])
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
