"""The shipped checkpoints: budget, integrity, loadability, and that published tables match stored predictions."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cxrcore import checkpoints, metrics
from cxrcore.data import DEFAULT_DATASET, REPO_ROOT
from cxrcore.inference import load_model
from cxrcore.ood import OOD_FILE
from cxrcore.zoo import get_spec, list_models

ROOT = REPO_ROOT / "checkpoints"
ALL = checkpoints.find(ROOT)
MB = 1024 * 1024


def _tracked(path: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [REPO_ROOT / p for p in out.split("\0") if p]


def _ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT).returncode == 0


def test_every_zoo_id_has_a_card_on_the_default_task():
    """Every architecture's row appears in the Benchmarks table of a fresh clone."""
    have = {c.id for c in ALL if c.dataset == "nih14-local"}
    assert set(list_models()) <= have, f"no card for {sorted(set(list_models()) - have)}"


def test_checkpoint_budget():
    files = [p for p in _tracked(ROOT) if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 120 * MB
    assert all(p.stat().st_size < 50 * MB for p in files), [p.name for p in files if p.stat().st_size >= 50 * MB]


@pytest.mark.parametrize("ck", ALL, ids=lambda c: f"{c.dataset}/{c.id}")
def test_weights_are_committed_exactly_for_shipped_models(ck):
    if ck.id == "ensemble":
        assert not ck.has_weights
        return
    shipped = not _ignored(ck.path / checkpoints.WEIGHTS)
    if ck.dataset == DEFAULT_DATASET:
        assert shipped == get_spec(ck.id).ship
    else:  # the other tasks ship a subset of the shippable models, within the size budget
        assert get_spec(ck.id).ship or not shipped
    assert _ignored(ck.path / OOD_FILE) != shipped  # a detector is of no use without its model


@pytest.mark.parametrize("ck", ALL, ids=lambda c: f"{c.dataset}/{c.id}")
def test_card_and_predictions_agree(ck):
    card, p = ck.card, ck.predictions()
    for key in ("id", "dataset", "init", "label_names"):
        assert key in card.to_dict()
    assert set(p) >= {"val_probs", "val_labels", "test_probs", "test_labels"}
    for split in ("val", "test"):
        probs, labels = p[f"{split}_probs"], p[f"{split}_labels"]
        assert len(probs) == len(labels) == card.dataset.counts[split]
        assert probs.min() >= 0 and probs.max() <= 1
        assert metrics.get_auc(labels, probs, card.task) == pytest.approx(card.metrics.split(split).auc_macro)
    if card.init.kind == "lora":
        assert card.init.lora_base["id"] == get_spec(ck.id).lora_base.id and card.init.lora_base["sha256"]
    if card.init.kind == "random":
        assert "random" in card.init.source


@pytest.mark.parametrize("ck", [c for c in ALL if c.has_weights],
                         ids=lambda c: f"{c.dataset}/{c.id}")
def test_shipped_model_reproduces_its_stored_predictions(ck, data_dir):
    """Loaded fp16 weights, served in fp32, give the stored test probabilities (stored in fp32; cards written before
    evaluation moved to fp32 hold bf16 ones, which must stay this close too)."""
    from cxrcore.data import load_dataset

    d = ck.card.dataset
    ds = load_dataset(d.name, d.size)
    m = load_model(ck.path)
    probs = m.predict(ds.images["test"][:32])
    assert np.abs(probs - ck.predictions()["test_probs"][:32]).max() < 0.02


def _table_rows(md: str, heading: str) -> dict[str, dict[str, str]]:
    """Rows of the first Markdown table after ``heading``, keyed by the first cell."""
    part = md.split(heading, 1)[1]
    lines = [ln for ln in part.split("\n") if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.parametrize("dataset", sorted({c.dataset for c in ALL}))
def test_benchmarks_md_matches_recomputed_predictions(dataset):
    md = (REPO_ROOT / "BENCHMARKS.md").read_text()
    section = md.split(f"## {dataset} ", 1)[1].split("\n## ", 1)[0]
    rows = _table_rows(section, "### Table 1")
    cks = [c for c in ALL if c.dataset == dataset]
    assert {c.id for c in cks} == set(rows)
    for c in cks:
        p = c.predictions()
        auc = metrics.get_auc(p["test_labels"], p["test_probs"], c.card.task)
        assert float(rows[c.id]["test_auc"]) == pytest.approx(auc, abs=5e-4), c.id
        lo, hi = (float(x) for x in re.findall(r"\d\.\d+", rows[c.id]["test_auc_ci"]))
        assert lo <= auc <= hi
