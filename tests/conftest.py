"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrcore.data import data_dir as _data_dir
from helpers import NIH14



@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread (``CXR_TEST_THREADS`` to change): these 2-core machines usually train in the background,
    and two spinning OpenMP threads competing with it made small forward passes 10-50x slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("CXR_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def _shared(relative: str) -> Path:
    """A path of the real shared data folder; missing data fails under CI (``CI`` set) and skips elsewhere."""
    path = _data_dir() / relative
    if not path.exists():
        message = f"real data not found: {path}; set CXR_DATA_DIR to the shared data folder"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data folder (checked by its NIH file)."""
    return _shared("nih14_local_64.npz").parent


@pytest.fixture
def decoded_nih(data_dir: Path) -> Path:
    """The NIH sample decoded into the cache, as `train/prepare_data.py` does (a fresh machine has no cache, and the
    app only offers a test-split picker for a decoded split); the app's cached lookup is cleared so it sees it."""
    from cxrcore import datasets
    from pages import _common as ui

    datasets.load("nih14-local", 64)
    ui.test_split.clear()
    return data_dir


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    """The Kermany chest X-ray folders (train/ and test/, with labels.csv)."""
    return _shared("kermany_pneumonia/labels.csv").parent


@pytest.fixture(scope="session")
def blood_cells_dir() -> Path:
    """The blood-cell image folders (TRAIN/, TEST/, TEST_SIMPLE/)."""
    return _shared("blood_cells/TRAIN").parent


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The 12 original 1024 px NIH PNGs and their labels.csv."""
    return _shared("samples/labels.csv").parent


TINY_N = 4  # images per split of a tiny checkpoint's stored predictions


def _tiny_card(model_id: str, size: int = 64, labels: list[str] | None = None, channels: int = 1,
              task: str = "multi-label, binary-class") -> dict:
    """The card fields that loading a checkpoint reads (what ``runs.train_one`` writes, with the smallest metrics
    block a card may have: those of :func:`_tiny_predictions`, which separate every label perfectly)."""
    from cxrcore.zoo import get_spec

    spec = get_spec(model_id)
    return {
        "id": model_id, "arch": spec.arch, "family": spec.family,
        "dataset": {"name": "nih14-local", "size": size, "channels": channels, "split_checksum": "tiny"},
        "label_names": list(labels or NIH14), "task": task, "input_size": spec.model_input_size(size),
        "normalisation": list(spec.norm),
        "init": {"kind": "random", "source": "random initialisation (test)", "sha256": None, "lora_base": None},
        "metrics": {s: {"n": TINY_N, "auc_macro": 1.0, "acc": 1.0} for s in ("val", "test")},
        "rebuild_command": f"python train/run_all.py --models {model_id}",
    }


def _tiny_predictions(card: dict) -> dict:
    """Stored predictions that agree with a tiny card: labels alternate, probabilities follow them (AUC 1)."""
    import numpy as np

    y = np.arange(TINY_N)[:, None] % 2
    k = len(card["label_names"])
    if card["task"].startswith("multi-label"):
        labels, probs = np.repeat(y, k, 1), 0.25 + 0.5 * np.repeat(y, k, 1)
    else:
        labels, probs = y, np.eye(k)[y[:, 0]] * 0.5 + 0.5 / k
    return {f"{s}_{kind}": a for s in ("val", "test") for kind, a in (("probs", probs), ("labels", labels))}


@pytest.fixture
def tiny_card():
    """``tiny_card(model_id, size=64, labels=None, channels=1, task=...) -> dict``: a minimal loadable card."""
    return _tiny_card


@pytest.fixture
def tiny_predictions():
    """``tiny_predictions(card) -> dict``: stored predictions that agree with a tiny card's metrics."""
    return _tiny_predictions


@pytest.fixture
def make_checkpoint(tmp_path):
    """``make(model_id, root=None, model=None, size=64) -> (folder, model)``: a randomly initialised zoo model saved
    with :func:`cxrcore.checkpoints.save` (fp16 safetensors, card, empty predictions and history)."""
    import torch

    from cxrcore import checkpoints
    from cxrcore.card import Card
    from cxrcore.zoo import create_model

    def make(model_id: str, root: Path | None = None, model=None, size: int = 64, card: dict | None = None,
             seed: int = 0):
        root = Path(root or tmp_path / "checkpoints")
        card = card or _tiny_card(model_id, size)
        if model is None:
            torch.manual_seed(seed)
            model = create_model(model_id, len(card["label_names"]), card["dataset"]["channels"], size)
        checkpoints.save(root / model_id, model, Card.from_dict(card), _tiny_predictions(card), [])
        return root / model_id, model

    return make
