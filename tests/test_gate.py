"""The chest-film gate: transforms, thresholds and card, training pieces, and the shipped gate on real films."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from helpers import dicom
from PIL import Image

from cxrcore import gate, gate_training as gt, imaging


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


# ---- transforms, thresholds, saving -----------------------------------------------------------------------------

def test_orient_and_its_batch_version_agree():
    x = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert (gate.orient(x, "rot90") == np.rot90(x)).all() and (gate.orient(x, "vflip")[0] == x[-1]).all()
    assert (gate.orient(x, "inverted") == 255 - x).all() and (gate.orient(x, "upright") == x).all()
    for kind in gate.CLASSES[:-1]:
        batch = gt.apply_transform(torch.from_numpy(x)[None, None].float() / 255, kind)
        np.testing.assert_array_equal((batch[0, 0] * 255).round().byte().numpy(), gate.orient(x, kind), kind)
    with pytest.raises(ValueError):
        gate.orient(x, "zoom")


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1e30, float("nan"), float("inf"), "0.5"])
def test_absurd_gate_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        gate.Thresholds(0.5, 0.5, 0.5, bad)


def test_a_saved_gate_loads_and_a_changed_one_is_refused(tmp_path):
    torch.manual_seed(0)
    net = gate.GateNet().eval()
    gate.save(tmp_path, net, {"thresholds": {"upright": 0.4, "adult_max_paediatric": 0.5,
                                             "paediatric_min_paediatric": 0.5, "colour": 0.05}})
    loaded = gate.load(tmp_path)
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    assert loaded.thresholds.upright == 0.4
    np.testing.assert_allclose(loaded.net(gate.to_input(x)).detach(), net.half().float()(gate.to_input(x)).detach(),
                               atol=1e-3)
    card = json.loads((tmp_path / gate.CARD).read_text())
    (tmp_path / gate.CARD).write_text(json.dumps({**card, "thresholds": {**card["thresholds"], "upright": 1e30}}))
    with pytest.raises(ValueError):
        gate.load(tmp_path)
    (tmp_path / gate.WEIGHTS).write_bytes((tmp_path / gate.WEIGHTS).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        gate.load(tmp_path)


def test_populations_of_the_tasks():
    assert gate.population("nih14-local") == gate.population("chestmnist") == "adult"
    assert gate.population("pneumoniamnist-local") == "paediatric" and gate.population("bloodmnist") is None


def test_colour_saturation_of_files():
    grey = np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)
    assert gate.file_saturation(_png(grey)) == 0.0
    assert gate.file_saturation(_png(np.repeat(grey[..., None], 3, 2))) == 0.0  # a grey film saved as RGB
    colour = gt.gradients(np.random.default_rng(0), 1)[0]
    assert gate.file_saturation(_png(colour)) > 0.1
    assert gate.file_saturation(dicom(grey.astype(np.uint16))) == 0.0 and gate.file_saturation(b"junk") == 0.0


def test_findings_name_the_check_that_fired():
    g = gate.Gate(gate.GateNet(), gate.Thresholds(0.5, 0.5, 0.5, 0.05))
    probs = dict.fromkeys(gate.CLASSES, 0.0)
    upright = gate.Reading({**probs, "upright": 0.9}, paediatric=0.9)
    assert [f.check for f in g.findings(upright, "adult")] == ["population"]
    assert g.findings(upright, "paediatric") == [] and g.findings(upright, None) == []
    assert [f.check for f in g.findings(upright, "paediatric", saturation=0.3)] == ["colour"]
    rotated = gate.Reading({**probs, "upright": 0.1, "rot90": 0.8}, paediatric=0.9)
    (f,) = g.findings(rotated, "adult")
    assert f.check == "orientation" and "90 degrees" in f.detail
    assert g.findings(gate.Reading({**probs, "not_xray": 1.0}, 0.0), "adult")[0].check == "not a chest film"


# ---- training pieces ---------------------------------------------------------------------------------------------

def test_synthetic_negatives_have_their_shapes():
    rng = np.random.default_rng(0)
    assert gt.noise(rng, 8).shape == (8, 64, 64) and gt.gradients(rng, 3).shape == (3, 64, 64, 3)
    docs = gt.documents(rng, 2, side=256)
    assert docs.shape == (2, 256, 256) and docs.mean() > 180 and docs.min() < 100  # ink on white paper


def test_training_steps_lower_the_loss_and_thresholds_follow_the_rule():
    rng = np.random.default_rng(0)
    films = [gt.Films(gt.noise(rng, 40) // 2 + 64, np.zeros(40, bool), np.zeros(40)),
             gt.Films(gt.noise(rng, 40) // 2, np.ones(40, bool), np.zeros(40))]
    losses = []
    net = gt.train(films, gt.noise(rng, 40), gt.Recipe(steps=6, batch_size=32), log=losses.append)
    assert len(losses) == 2 and all("loss" in line for line in losses)
    val = {"nih": films[0], "kermany": films[1]}
    t, rates = gt.choose_thresholds(net, val, gt.Films(films[0].images[:5], np.zeros(5, bool), np.full(5, 0.4)))
    assert 0 < t.upright <= 0.5 and t.adult_max_paediatric >= 0.5 and t.colour == 0.05
    assert set(rates) == {"nih", "kermany", "blood_cells"} and rates["blood_cells"]["detected"] == 1.0  # by colour


# ---- the shipped gate on real films ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    g = gate.load()
    return g


def _flag_rate(g, images, population, saturation=None) -> float:
    return gt.flagged(g, np.stack([imaging.to_dataset_size(x, gate.SIZE) for x in images]), population, saturation)


def test_the_shipped_gate_card_states_data_recipe_and_validation(shipped):
    card = json.loads((gate.GATE_DIR / gate.CARD).read_text())
    assert "never a test image" in card["data"]["positives"] and card["recipe"]["seed"] == 0
    assert card["rebuild_command"].startswith("python train/train_gate.py")
    assert (gate.GATE_DIR / gate.WEIGHTS).stat().st_size < 1_000_000
    assert card["validation"]["nih"]["false_alarm"] <= 0.05


def test_real_sample_films_pass_as_png_and_dicom(shipped, data_dir):
    pngs = sorted((data_dir / "samples").glob("*.png"))
    films = [imaging.decode(p.read_bytes()).pixels for p in pngs]
    as_dicom = [imaging.decode(dicom(f.astype(np.uint16) * 16), "x.dcm").pixels for f in films]
    flagged = [bool(shipped.check(f, "adult")) for f in films + as_dicom]
    assert sum(flagged) <= 1, flagged


def test_transformed_films_are_flagged(shipped, data_dir):
    films = list(gt.nih(data_dir, "test").images[:100])
    assert _flag_rate(shipped, films, "adult") <= 0.08
    for kind in gate.TRANSFORMS:
        rate = _flag_rate(shipped, [gate.orient(x, kind) for x in films], "adult")
        assert rate >= (0.6 if kind == "hflip" else 0.9), (kind, rate)


def test_non_films_are_flagged(shipped):
    rng = np.random.default_rng(99)
    assert _flag_rate(shipped, list(gt.noise(rng, 40)), "adult") >= 0.95
    assert _flag_rate(shipped, list(gt.documents(rng, 20, 1024)), "adult") >= 0.95
    colour = gt.gradients(rng, 20)
    sat = np.array([gate.colour_saturation(x) for x in colour])
    assert _flag_rate(shipped, list(gt.to_grey(colour)), "adult", sat) == 1.0


def test_adult_films_warn_on_a_paediatric_task(shipped, data_dir):
    nih = list(gt.nih(data_dir, "test").images[:100])
    assert _flag_rate(shipped, nih, "paediatric") >= 0.9
    children = gt.kermany(data_dir, "test")  # PneumoniaMNIST's test images, as 224 px uploads
    pick = np.random.default_rng(0).permutation(len(children))[:100]
    assert _flag_rate(shipped, list(children.images[pick]), "paediatric", children.saturation[pick]) <= 0.1
    assert _flag_rate(shipped, list(children.images[pick]), "adult", children.saturation[pick]) >= 0.9
    with np.load(data_dir / "pneumoniamnist_28.npz") as z:  # the task's own 28 px test films
        assert _flag_rate(shipped, list(z["test_images"][:200]), "paediatric") <= 0.1
