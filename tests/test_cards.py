"""Readable model cards: the sections, limits and training-data line the Models page and every header show."""
from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import fake_checkpoint_root

from cxrcore import cards
from cxrcore.card import Init
from cxrcore.checkpoints import find
from cxrcore.report import ENSEMBLE


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = fake_checkpoint_root(tmp_path_factory.mktemp("checkpoints"))
    return [c for c in find(root) if c.dataset == "nih14-local"]


def test_card_sections_and_limits_are_readable(nih):
    unshipped = next(c for c in nih if c.id == "resnet18")
    sections = cards.card_sections(unshipped)
    assert list(sections) == ["Model", "Training data", "Initialisation", "Results", "Training", "Provenance"]
    assert ("Weights shipped", "no") in sections["Model"]
    assert "400 train / 80 val / 120 test" in dict(sections["Training data"])["Data"]
    assert any("not shipped" in line for line in cards.card_limits(unshipped))
    ensemble = next(c for c in nih if c.id == ENSEMBLE)
    assert dict(cards.card_sections(ensemble)["Model"])["Members"].startswith("vanilla_cnn, vit_scratch, resnet18 (by")


def test_a_card_states_its_held_out_split_and_how_many_labels_it_calls(nih):
    ck = next(c for c in nih if c.id == "vanilla_cnn")
    results = dict(cards.card_sections(ck)["Results"])
    assert results["Held-out AUC (validation; 95% CI)"].startswith(f"{ck.card.held_out_auc:.3f} (")
    called = sum(t is not None for t in ck.card.thresholds["youden_val"])
    limit = next(line for line in cards.card_limits(ck) if line.startswith("Calls are made for"))
    assert limit.startswith(f"Calls are made for {called} of 14 labels") and "excludes 0.5" in limit


def test_a_model_that_did_not_converge_says_so_in_its_limits(nih):
    ck = next(c for c in nih if c.id == "vanilla_cnn")
    assert not any("Did not converge" in line for line in cards.card_limits(ck))
    stuck = replace(ck, card=replace(ck.card, best_epoch=1, epochs_run=6))
    assert any(line.startswith("Did not converge: best held-out AUC at epoch 1 of 6") for line in cards.card_limits(stuck))


def test_a_lora_card_names_its_frozen_base(nih):
    ck = next(c for c in nih if c.id == "vit_scratch")
    base = {"id": "vit_scratch", "path": "pneumoniamnist-local/vit_scratch", "kind": "checkpoint",
            "source": "project checkpoint vit_scratch trained on pneumoniamnist-local", "sha256": "ab" * 32}
    lora = replace(ck, card=replace(ck.card, init=Init("lora", "LoRA on x", "ab" * 32, base)))
    init = dict(cards.card_sections(lora)["Initialisation"])
    assert init["LoRA base"].startswith("vit_scratch (pneumoniamnist-local/vit_scratch); frozen")
    assert "LoRA base" not in dict(cards.card_sections(ck)["Initialisation"])


def test_a_card_gives_its_test_calibration_with_the_interval_and_what_it_means(nih):
    from cxrcore.benchmarks import calibration_on_test
    from cxrcore.calibration import CalibrationCheck

    ck = next(c for c in nih if c.id == "vanilla_cnn")
    check = calibration_on_test(ck, n_boot=50)
    shown = dict(cards.card_sections(ck, check)["Results"])["Test calibration error (ECE; 95% CI)"]
    assert shown.startswith(f"{check.ece:.3f} ({check.lo:.3f}-{check.hi:.3f}): ")
    missed = dict(cards.card_sections(ck, CalibrationCheck("vanilla_cnn", 0.13, 0.11, 0.15))["Results"])
    assert missed["Test calibration error (ECE; 95% CI)"].endswith(
        "above the 0.05 target: read its scores as rankings, not observed rates")
    assert dict(cards.card_sections(ck)["Results"])["Test calibration error (ECE)"] == f"{ck.card.metrics.test.ece:.3f}"
