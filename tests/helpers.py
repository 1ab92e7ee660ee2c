"""Builders shared by several test modules: in-memory DICOM files and small but complete checkpoint folders."""
from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrcore import checkpoints, evaluation, metrics
from cxrcore.card import Card
from cxrcore.ood import OOD_FILE, OODModel
from cxrcore.runs import build_ensemble, label_columns, oof_served, served_outputs
from cxrcore.zoo import get_spec, list_models

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

NIH14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
TASKS = {  # dataset -> (label names, task, image size)
    "nih14-local": (NIH14, metrics.TASK_MULTILABEL, 64),
    "pneumoniamnist-local": (["normal", "pneumonia"], metrics.TASK_BINARY, 28),
    "kermany-pneumonia3": (["normal", "bacterial", "viral"], metrics.TASK_MULTICLASS, 64),
    "blood-cells": (["eosinophil", "lymphocyte", "monocyte", "neutrophil"], metrics.TASK_MULTICLASS, 32),
}
CHANNELS = {"blood-cells": 3}  # dataset -> image channels, when not grey


def dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
          syntax: str = ExplicitVRLittleEndian, pixel_data: bytes | None = None, file_meta: bool = True,
          **attrs) -> bytes:
    """An in-memory DX DICOM with uint16 pixels ((H, W) or (frames, H, W)) and a named patient."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-0042", "19600101"
    ds.AccessionNumber, ds.InstitutionName, ds.StudyDate = "ACC-7", "General Hospital", "20240102"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes() if pixel_data is None else pixel_data
    buf = io.BytesIO()
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(buf, enforce_file_format=True)
    else:  # a bare dataset (no preamble, no DICM, no file meta), as some old systems write
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _split(n: int, labels: list[str], task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The task's labels (the same for every model, as on real data) and one model's probabilities, which carry
    some signal so ROC curves and thresholds behave like real ones."""
    k = len(labels)
    truth = np.random.default_rng(n)
    y = (truth.random((n, k)) < 0.3) if task == metrics.TASK_MULTILABEL else truth.integers(0, k, (n, 1))
    noise = np.random.default_rng([n, seed]).normal(size=(n, k))
    logits = torch.from_numpy(noise + 1.5 * label_columns(y, task, k))
    probs = torch.sigmoid(logits) if task == metrics.TASK_MULTILABEL else torch.softmax(logits, 1)
    return y.astype(np.float32), probs.numpy().astype(np.float32)


def fake_checkpoint(root: Path, model_id: str, dataset: str = "nih14-local", *, ship: bool = True,
                    seed: int = 0, cv: bool = False, init: dict | None = None) -> checkpoints.Checkpoint:
    """A randomly initialised zoo model saved like ``runs.train_one`` saves one: full card, predictions, history;
    ``cv``: as ``crossval.cross_validate`` saves one (5 folds over a pool of 400 train + 80 val images, held-out
    figures out of fold); ``init``: the card's start (default random)."""
    labels, task, size = TASKS[dataset]
    channels = CHANNELS.get(dataset, 1)
    spec = get_spec(model_id)
    y_test, p_test = _split(120, labels, task, seed)
    if cv:  # the pool is train then val; every model of the pool shares its labels and folds
        y_pool, p_pool = _split(480, labels, task, seed)
        served = oof_served(y_pool, p_pool, np.arange(400, 480), p_test, y_test, task, labels, None, 20,
                            np.arange(480) // 2)
        served.predictions["oof_folds"] = np.arange(480) // 2 % 5
    else:
        y_val, p_val = _split(80, labels, task, seed)
        served = served_outputs({"val_probs": p_val, "val_labels": y_val, "test_probs": p_test,
                                 "test_labels": y_test}, task, labels, None, n_boot=20)  # as runs.train_one does
    block = dict(served.metrics)
    block["train_loss"], block["val_loss"] = 0.9, 0.95
    torch.manual_seed(seed)
    model = spec.build(len(labels), channels, spec.model_input_size(size))
    n_params = sum(p.numel() for p in model.parameters())
    counts = {"train": 400, "val": 80, "test": 120}
    card = {
        "id": model_id, "arch": spec.arch, "family": spec.family, "reference": spec.paper,
        "order": list_models().index(model_id),
        "dataset": {"name": dataset, "size": size, "task": task, "channels": channels, "source_md5": "0" * 32,
                    "split_checksum": "fake-" + dataset, "counts": counts,
                    "prevalence": {s: [int(counts[s] * 0.3)] * len(labels) for s in counts}},
        "label_names": labels, "task": task, "input_size": spec.model_input_size(size),
        "normalisation": list(spec.norm),
        "init": init or {"kind": "random", "source": "random initialisation (test)", "sha256": None, "lora_base": None},
        "hparams": {"lr": 1e-3, "batch_size": 32, "epochs": 3}, "epochs_run": 3, "best_epoch": 2,
        "params_total": n_params, "params_trainable": n_params, "train_seconds": 30.0, "seconds_per_epoch": 10.0,
        "hardware": "test", "metrics": block, "thresholds": served.thresholds,
        "calibration": served.calibration, "operating_points": served.operating_points,
        "versions": {}, "git_commit": None, "created": "2024-01-01T00:00:00+00:00",
        "rebuild_command": f"python train/run_all.py --models {model_id}",
        **({"cv": {"k": 5, "seed": 0}} if cv else {}),
    }
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_auc": 0.5 + e / 20,
                "epoch_seconds": 10.0} for e in (1, 2, 3)]
    out = root / model_id if dataset == "nih14-local" else root / dataset / model_id
    checkpoints.save(out, model, Card.from_dict(card), served.predictions, history)
    evaluation.evaluate_folder(out, n_boot=20)  # the test split, read once after training, as run_all.py ends
    card = checkpoints.read_card(out)
    if not ship:
        (out / checkpoints.WEIGHTS).unlink()
    return checkpoints.Checkpoint(out, card)


def fake_checkpoint_root(root: Path) -> Path:
    """Both tasks: NIH with a CNN, a ViT, a model without weights and the stored ensemble; PneumoniaMNIST with a CNN."""
    nih = [fake_checkpoint(root, "vanilla_cnn", seed=1), fake_checkpoint(root, "vit_scratch", seed=2),
           fake_checkpoint(root, "resnet18", ship=False, seed=3)]
    build_ensemble(nih, root / "ensemble", "python train/run_all.py --ensemble", n_boot=20)
    evaluation.evaluate_folder(root / "ensemble", n_boot=20)
    fake_checkpoint(root, "cnn_small", "pneumoniamnist-local", seed=4)
    return root


def start(task: str | None = None):
    """The app run headlessly (streamlit AppTest), switched to ``task`` when given, failing on any exception."""
    from streamlit.testing.v1 import AppTest  # imported here: most tests that use these helpers never start the app

    from cxrcore.data import REPO_ROOT

    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    if task is not None:
        at.radio(key="task").set_value(task).run()
        assert not at.exception, at.exception
    return at


def write_ood(folder: Path, model_id: str, dim: int, flags: bool) -> None:
    """A valid ``ood.json`` (threshold 5) that flags every image (its mean far from any feature) or none (its
    variances so wide that every distance is about 0)."""
    mean, var = ([1e3] * dim, [1.0] * 4) if flags else ([0.0] * dim, [1e12] * 4)
    OODModel(model_id, mean, np.eye(4, dim).tolist(), var, 5.0, 99.0).save(folder / OOD_FILE)


class _TableParser(HTMLParser):
    """Rows of an HTML table: header texts, then per row the label and each cell (its data-value when it has one)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[object]] = []
        self._cell: list[str] | None = None
        self._value: float | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._value = [], None
        elif tag == "span" and "data-value" in dict(attrs):
            self._value = float(dict(attrs)["data-value"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            self.rows[-1].append(self._value if self._value is not None else (text or np.nan))
            self._cell = None


def results_element(at: AppTest):
    """The Compare page's results table element (HTML: vertical headings, full values in data-value)."""
    return next(h for h in at.html if "<table" in h.value)


def results(at: AppTest) -> pd.DataFrame:
    parser = _TableParser()
    parser.feed(results_element(at).value)
    head, *body = parser.rows
    frame = pd.DataFrame([r[1:] for r in body], index=[r[0] for r in body], columns=head[1:])
    return frame.apply(lambda c: pd.to_numeric(c) if c.map(lambda v: isinstance(v, float)).all() else c)
