"""cxrcore.card: every committed card migrates and round-trips unchanged, unknown fields survive, and a card with a
wrong type or an out-of-range value is refused with the field's name and the command that rebuilds it."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from cxrcore import checkpoints
from cxrcore.card import SCHEMA_VERSION, Card, CardError, migrate

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
COMMITTED = sorted(ROOT.rglob("card.json"))


def test_there_are_committed_cards():
    assert len(COMMITTED) >= 20


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_every_committed_card_migrates_and_round_trips(path):
    raw = json.loads(path.read_text())
    card = Card.from_dict(raw, str(path))
    assert card.schema_version == SCHEMA_VERSION and raw.get("schema_version", 1) <= SCHEMA_VERSION
    out = card.to_dict()
    # every value read is written back as it was (the stable keys included); what is added is the version and nulls
    assert json.dumps({k: out[k] for k in raw}, sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert all(out[k] is None or out[k] == {} or k == "schema_version" for k in set(out) - set(raw))
    assert Card.from_dict(out) == card
    assert (card.id, card.dataset.name, card.init.kind, card.task) == (
        raw["id"], raw["dataset"]["name"], raw["init"]["kind"], raw["task"])
    assert card.metrics.test.auc_macro == raw["metrics"]["test"]["auc_macro"]
    assert card.thresholds["youden_val"] == raw["thresholds"]["youden_val"]


def test_the_committed_tree_has_no_broken_checkpoint_and_its_weights_are_pinned():
    result = checkpoints.scan(ROOT)
    assert not result.broken, result.broken
    shipped = [c for c in result.found if c.has_weights]
    pinned = json.loads((ROOT / checkpoints.MANIFEST).read_text())["weights"]
    assert sorted(str((c.path / checkpoints.WEIGHTS).relative_to(ROOT)) for c in shipped) == sorted(pinned)
    assert all(checkpoints.weights_ok(c.path, c.card) for c in shipped)


@pytest.fixture
def raw():
    """A committed card written before the schema version existed (densenet121's single-split seed 0)."""
    old = ROOT.parent / "seeds-single-split" / "nih14-local" / "seed0" / "densenet121" / "card.json"
    return json.loads(old.read_text())


def test_unknown_fields_survive_a_round_trip(raw):
    """What a newer writer adds (an audit record, a split policy, new metrics) is kept, not dropped."""
    raw["audit"] = {"by": "tester"}
    raw["dataset"]["split_policy"] = "patient-grouped"
    raw["metrics"]["test"]["f1_macro"] = 0.4
    raw["metrics"]["calibrated"] = {"ece": 0.1}
    card = Card.from_dict(raw)
    assert card.extra["audit"] == {"by": "tester"} and card.dataset.extra["split_policy"] == "patient-grouped"
    assert card.metrics.test.extra["f1_macro"] == 0.4
    out = card.to_dict()
    assert out["audit"] == {"by": "tester"} and out["dataset"]["split_policy"] == "patient-grouped"
    assert out["metrics"]["test"]["f1_macro"] == 0.4 and out["metrics"]["calibrated"] == {"ece": 0.1}


def test_a_calibration_entry_is_kept(raw):
    card = Card.from_dict({**raw, "calibration": {"method": "temperature", "t": 1.3}})
    assert card.calibration == {"method": "temperature", "t": 1.3}
    assert Card.from_dict(card.to_dict()) == card


def test_edge_values_that_real_cards_hold_are_accepted(raw):
    raw["thresholds"]["youden_val"][0] = 1.0  # Youden J's "no cut helps" (EfficientNet-Lite0's card has one)
    raw["thresholds"]["youden_val"][1] = None
    raw["metrics"]["test"]["per_label"]["Atelectasis"]["ppv"] = float("nan")  # no positive call: 0/0
    card = Card.from_dict(raw)
    assert card.thresholds["youden_val"][:2] == [1.0, None]


def _at(d: dict, keys: str):
    *path, last = keys.split(".")
    for k in path:
        d = d[int(k)] if isinstance(d, list) else d[k]
    return d, (int(last) if isinstance(d, list) else last)


REFUSED = [  # (field, value, what the message says)
    ("id", 7, "id must be text"),
    ("label_names", ["a", "a"], "distinct names"),
    ("label_names", [], "distinct names"),
    ("input_size", 0, "input_size = 0"),
    ("input_size", 10**9, "input_size = 1000000000"),
    ("input_size", 64.5, "input_size must be a whole number"),
    ("input_size", True, "input_size must be a whole number"),
    ("dataset.size", -64, "dataset.size = -64"),
    ("dataset.channels", 9, "dataset.channels = 9"),
    ("dataset.counts.train", -1, "dataset.counts.train = -1"),
    ("dataset.prevalence.test", [1, 2], "dataset.prevalence.test has 2 entries, expected 14"),
    ("normalisation", [0.5, 0.0], "std = 0 must be positive"),
    ("normalisation", [0.5], "normalisation has 1 entries"),
    ("thresholds.youden_val.3", 0.0, r"thresholds.youden_val\[3\] = 0 is outside \(0, 1\]"),
    ("thresholds.youden_val.3", 1.5, r"thresholds.youden_val\[3\] = 1.5"),
    ("thresholds.youden_val.3", "0.5", "must be a finite number"),
    ("metrics.test.auc_macro", 0.99 + 1, "metrics.test.auc_macro = 1.99"),
    ("metrics.test.auc_macro", None, "metrics.test.auc_macro must be a finite number"),
    ("metrics.val.acc", -0.1, "metrics.val.acc = -0.1"),
    ("metrics.test.sensitivity_macro", float("inf"), "must be a finite number"),
    ("metrics.test.auc_macro_ci", [0.7, 0.6], "is not an interval"),
    ("metrics.test.n", 0, "metrics.test.n = 0"),
    ("metrics.test.per_label.Mass.specificity", 2.0, "per_label.Mass.specificity = 2"),
    ("metrics.test.per_label.Mass.tp", -3, "per_label.Mass.tp = -3"),
    ("metrics.test.per_label.Mass.threshold", 0, r"per_label.Mass.threshold = 0 is outside \(0, 1\]"),
    ("metrics.val", [], "metrics.val must be an object"),
    ("weights_sha256", "ab", "must be a sha256"),
    ("weights_bytes", 0, "weights_bytes = 0"),
    ("hparams", {"lr": [1, 2]}, "hparams.lr must be a plain value"),
    ("init.lora_base", {"kind": "checkpoint"}, "init.lora_base.id must be text"),
    ("schema_version", 3, "newer than this code reads"),
    ("schema_version", "2", "is not a schema version"),
]


@pytest.mark.parametrize("field, value, message", REFUSED, ids=[f"{f}={v!r}"[:40] for f, v, _ in REFUSED])
def test_a_wrong_field_is_refused_naming_it_and_the_rebuild_command(raw, field, value, message):
    bad = copy.deepcopy(raw)
    d, k = _at(bad, field)
    d[k] = value
    with pytest.raises(CardError, match=message) as e:
        Card.from_dict(bad, "checkpoints/densenet121/card.json")
    assert str(e.value).startswith("checkpoints/densenet121/card.json: ")
    assert str(e.value).endswith(f"Rebuild the checkpoint with: {raw['rebuild_command']}")  # the card's own


def test_per_label_statistics_must_name_the_card_labels(raw):
    raw["metrics"]["test"]["per_label"] = {"Mass": raw["metrics"]["test"]["per_label"]["Mass"]}
    with pytest.raises(CardError, match="not the card's label_names"):
        Card.from_dict(raw)


def test_a_card_that_is_not_an_object_is_refused():
    for value in ([], "card", 3, None):
        with pytest.raises(CardError, match="must be an object.*python train/run_all.py --force"):
            Card.from_dict(value)


def test_migration_only_adds_the_version(raw):
    assert "schema_version" not in raw
    assert migrate(raw) == {**raw, "schema_version": SCHEMA_VERSION}


def test_a_card_built_in_code_is_checked_when_saved(tmp_path, raw):
    """checkpoints.save writes only cards that would load again."""
    card = Card.from_dict(raw)
    bad = replace(card, thresholds={"youden_val": [0.0] * 14})
    with pytest.raises(CardError, match="thresholds.youden_val"):
        checkpoints.save(tmp_path / "m", None, bad, {})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("fields, precision, threads", [
    ({"bf16": False, "hardware": "x86_64, 2 cores, 2 threads"}, "fp32", 2),  # cards before precision was recorded
    ({"bf16": True, "hardware": "x86_64, 2 cores, 1 threads"}, "bf16", 1),
    ({"bf16": True, "precision": "fp16", "training_setup": {"threads": 8}, "hardware": "cuda"}, "fp16", 8),
    ({"bf16": None, "hardware": None}, None, None),
])
def test_the_training_precision_and_threads_a_rebuild_needs(raw, fields, precision, threads):
    card = Card.from_dict({**{k: v for k, v in raw.items() if k not in ("precision", "training_setup")}, **fields})
    assert (card.trained_precision, card.trained_threads) == (precision, threads)


def test_the_ci_unit_says_what_the_bootstrap_resampled(raw):
    card = Card.from_dict(raw)
    assert card.metrics.test.ci_unit == raw["metrics"]["test"]["auc_macro_ci_bootstrap"]["unit"] == "patient"
    del raw["metrics"]["test"]["auc_macro_ci_bootstrap"]
    assert Card.from_dict(raw).metrics.test.ci_unit == "image"  # older cards: images
