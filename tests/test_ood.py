"""The per-model out-of-distribution detector: features every zoo architecture gives, flat memory, refusals."""
from __future__ import annotations

import csv
import json
import logging
import math
import tracemalloc
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cxrcore import ood
from cxrcore.inference import load_model


def _features_and_logits(m, images):
    feats = ood.features(m, images)
    with torch.no_grad():
        logits = m.model(m.prep(images).float())
    return feats, logits


@pytest.mark.parametrize("model_id", ["vanilla_cnn", "cnn_deep", "resnet18", "densenet121", "mobilenet_v2",
                                      "efficientnet_lite0", "vit_scratch"])
def test_features_are_what_the_classifier_reads(make_checkpoint, model_id):
    """Pre-logits for every architecture: the final layer applied to them gives the model's logits."""
    path, _ = make_checkpoint(model_id, size=32)
    m = load_model(path)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    feats, logits = _features_and_logits(m, images)
    head = ood.classifier(m.model)
    assert feats.shape == (3, head.in_features)
    np.testing.assert_allclose(head(torch.from_numpy(feats)).detach().numpy(), logits.numpy(), atol=1e-4)


def test_features_do_not_depend_on_the_cam_layer(make_checkpoint):
    path, _ = make_checkpoint("resnet18", size=32)
    m = load_model(path)
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    before = ood.features(m, images)
    cam = {f.name: ("no.such.layer",) if isinstance(getattr(m.spec, f.name), tuple) else "no.such.layer"
           for f in fields(m.spec) if f.name.startswith("cam")}  # the Grad-CAM layers may move to finer maps
    assert cam
    m.spec = replace(m.spec, **cam)
    np.testing.assert_array_equal(ood.features(m, images), before)


def _fit_sizes(make_checkpoint, n_train: int, max_images: int):
    """Fit on n_train synthetic images: (images the network saw, the detector, tracemalloc peak in bytes)."""
    path, _ = make_checkpoint("vanilla_cnn", size=28)
    m = load_model(path)
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(images={"train": torch.randint(0, 256, (n_train, 1, 28, 28), dtype=torch.uint8, generator=g),
                                   "val": torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=g)})
    seen = []
    handle = m.model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    tracemalloc.start()
    try:
        det = ood.fit_checkpoint(m, data, max_images=max_images)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        handle.remove()
    return sum(seen), det, peak


def test_fit_memory_is_flat_in_the_number_of_training_images(make_checkpoint):
    """200 or 2,000 training images: the same number of images through the network, the same stored floats, about
    the same traced peak."""
    small = _fit_sizes(make_checkpoint, 200, max_images=100)
    large = _fit_sizes(make_checkpoint, 2000, max_images=100)
    # the fixed train sample, then every val image, then the generated noise the fitted detector is tried on
    assert small[0] == large[0] == 100 + 50 + ood.NOISE_CHECK_IMAGES
    assert small[1].n_fit == large[1].n_fit == 100
    stored = lambda d: len(d.mean) + np.size(d.components) + len(d.variances)  # noqa: E731
    assert stored(small[1]) == stored(large[1])
    assert large[2] < 1.5 * small[2]
    assert (small[1].threshold > 0) and math.isfinite(large[1].threshold)


def test_sample_is_seeded_sorted_and_capped():
    assert ood.sample(10, 20).tolist() == list(range(10))
    s = ood.sample(10_000, 64, seed=3)
    assert len(s) == 64 == len(set(s)) and (np.diff(s) > 0).all() and s.tolist() == ood.sample(10_000, 64, 3).tolist()


def _detector(threshold, **extra) -> dict:
    return {"model_id": "x", "mean": [0.0] * 8, "components": np.eye(4, 8).tolist(), "variances": [1.0] * 4,
            "threshold": threshold, "percentile": 99.0, "features": ood.FEATURES, **extra}


@pytest.mark.parametrize("threshold", [1e30, float("inf"), float("nan"), 0.0, -3.0, "7"])
def test_absurd_thresholds_are_refused(tmp_path, threshold):
    path = tmp_path / ood.OOD_FILE
    path.write_text(json.dumps(_detector(threshold)))
    with pytest.raises(ValueError, match="threshold"):
        ood.OODModel.load(path)
    assert not ood.is_current(path)


def test_a_plausible_threshold_is_kept_and_broken_detectors_are_refused(tmp_path):
    path = tmp_path / ood.OOD_FILE
    path.write_text(json.dumps(_detector(9.5)))
    assert ood.OODModel.load(path).threshold == 9.5 and ood.is_current(path)
    stale = _detector(9.5)
    del stale["features"]  # written before the features were recorded: fitted on the Grad-CAM layer
    for bad in (stale, _detector(9.5, variances=[1.0, 0.0, 1.0, 1.0]), _detector(9.5, components=[[0.0] * 8])):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            ood.OODModel.load(path)


def test_a_refused_detector_is_logged_and_skipped(tmp_path, make_checkpoint, caplog):
    from cxrcore import compare, gate

    path, _ = make_checkpoint("vanilla_cnn")
    (path / ood.OOD_FILE).write_text(json.dumps(_detector(1e30) | {"mean": [1e3] * 128,
                                                                 "components": np.eye(4, 128).tolist()}))
    lenient = gate.Gate(gate.GateNet(), gate.Thresholds(1e-9, 1 - 1e-9, 1e-9, 0.99))
    with caplog.at_level(logging.WARNING):
        assert compare.ood_warning([load_model(path)], np.zeros((64, 64), np.uint8), chest_gate=lenient) is None
    assert "refused" in caplog.text


def test_the_fit_separates_training_like_features_from_others():
    rng = np.random.default_rng(0)
    train, val = rng.normal(0, 1, (500, 16)), rng.normal(0, 1, (200, 16))
    det = ood.fit("x", train, val, k=8)
    assert np.mean(det.score(rng.normal(0, 1, (300, 16))) > det.threshold) < 0.05
    assert np.mean(det.score(rng.normal(4, 1, (300, 16))) > det.threshold) > 0.95


@pytest.mark.slow
def test_shipped_detectors_are_current_and_pass_real_test_films(data_dir):
    """Every committed ood.json is of the current kind, and flags few NIH test films (its threshold is the val 99th
    percentile)."""
    from cxrcore.data import REPO_ROOT, load_dataset

    nih = load_dataset("nih14-local", 64)
    for path in sorted((REPO_ROOT / "checkpoints").glob("*/ood.json")):
        det = ood.OODModel.load(path)
        m = load_model(path.parent)
        scores = det.score(ood.features(m, nih.images["test"][:100]))
        assert np.mean(scores > det.threshold) <= 0.10, path


def test_each_kind_of_film_gets_its_own_validation_percentile():
    """Fitted on two kinds of film (a dataset's own images and its uploads), the threshold is the higher of their
    validation percentiles and neither kind is flagged much; fitted on one kind, the other is foreign."""
    rng = np.random.default_rng(0)
    shift = np.r_[np.full(4, 6.0), np.zeros(12)]
    own, uploads = (rng.normal(0, 1, (600, 16)), rng.normal(0, 1, (600, 16)) + shift)
    val = {"own": rng.normal(0, 1, (300, 16)), "uploads": rng.normal(0, 1, (300, 16)) + shift}
    alone = ood.fit("x", own, val["own"], k=8)
    assert np.mean(alone.score(rng.normal(0, 1, (300, 16)) + shift) > alone.threshold) > 0.95
    both = ood.fit("x", np.concatenate([own, uploads]), val, k=8, n_fit={"own": 600, "uploads": 600})
    assert both.threshold == max(s["val_percentile_score"] for s in both.sources.values())
    assert {k: (s["n_fit"], s["n_val"]) for k, s in both.sources.items()} == {"own": (600, 300), "uploads": (600, 300)}
    for test in (rng.normal(0, 1, (300, 16)), rng.normal(0, 1, (300, 16)) + shift):
        assert np.mean(both.score(test) > both.threshold) < 0.05
    elsewhere = np.r_[np.zeros(12), np.full(4, 6.0)]  # a third kind, learnt by neither fit
    assert np.mean(both.score(rng.normal(0, 1, (300, 16)) + elsewhere) > both.threshold) > 0.95


def test_fit_checkpoint_learns_the_extra_sources_and_records_them(make_checkpoint):
    path, _ = make_checkpoint("vanilla_cnn", size=28)
    m = load_model(path)
    g = torch.Generator().manual_seed(0)
    images = lambda n, lo, hi: torch.randint(lo, hi, (n, 1, 28, 28), dtype=torch.uint8, generator=g)  # noqa: E731
    data = SimpleNamespace(images={"train": images(120, 0, 128), "val": images(40, 0, 128)})
    extra = ood.Source("bright films", images(80, 128, 256), images(30, 128, 256))
    det = ood.fit_checkpoint(m, data, max_images=100, extra=(extra,))
    assert det.n_fit == 100 + 80
    assert (det.sources["bright films"]["n_fit"], det.sources["bright films"]["n_val"]) == (80, 30)
    assert set(det.sources) == {m.card.dataset.name, "bright films"}
    assert ood.OODModel.load(path / ood.OOD_FILE) == det


def test_a_detector_that_lets_generated_noise_through_is_refused_and_the_next_one_used(make_checkpoint, caplog):
    """The fit records how much generated noise the detector flags; one that flags under half cannot vouch for a
    film (ImageNet EfficientNet-Lite0's flagged none): it is refused on load and the warning asks the next model."""
    from cxrcore import compare, gate

    path, _ = make_checkpoint("vanilla_cnn", size=28)
    m = load_model(path)
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(images={s: torch.randint(90, 110, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
                                   for s, n in (("train", 120), ("val", 40))})
    det = ood.fit_checkpoint(m, data, max_images=100)
    noise = ood.noise_films(ood.NOISE_CHECK_IMAGES, 28)
    assert noise.shape == (ood.NOISE_CHECK_IMAGES, 1, 28, 28) and noise.dtype == torch.uint8
    assert det.noise_flagged == pytest.approx(float((det.score(ood.features(m, noise)) > det.threshold).mean()))
    (path / ood.OOD_FILE).write_text(json.dumps({**json.loads((path / ood.OOD_FILE).read_text()),
                                                 "noise_flagged": 0.1}))
    assert ood.is_current(path / ood.OOD_FILE)  # a sound file: refitting would give the same detector
    with pytest.raises(ValueError, match="10% of generated noise"):
        ood.load_for(m)
    other, _ = make_checkpoint("cnn_small", root=path.parent.parent / "other")
    assert not ood.usable(other)  # no detector file
    (other / ood.OOD_FILE).write_text(json.dumps(_detector(1e-3) | {"mean": [0.0] * 64,
                                                                  "components": np.eye(4, 64).tolist()}))
    assert ood.usable(other) and not ood.usable(path)  # read from the folder: the app skips path's model unloaded
    lenient = gate.Gate(gate.GateNet(), gate.Thresholds(1e-9, 1 - 1e-9, 1e-9, 0.99))
    with caplog.at_level(logging.WARNING):
        warning = compare.ood_warning([m, load_model(other)], np.full((28, 28), 200, np.uint8), chest_gate=lenient)
    assert "generated noise" in caplog.text and "cnn_small's feature distance" in warning


@pytest.mark.parametrize("shape, size, coarse", [((28, 28), 64, True), ((28, 500), 64, True), ((64, 64), 64, False),
                                                 ((28, 28), 28, False), ((1024, 900), 224, False)])
def test_an_image_coarser_than_the_model_input_is_named(shape, size, coarse):
    why = ood.too_coarse(shape, size)
    assert (why is not None) == coarse
    if coarse:
        assert f"{min(shape)} px" in why and f"{size} px" in why


def test_the_warning_names_an_upscaled_image(make_checkpoint):
    from cxrcore import compare, gate

    m = load_model(make_checkpoint("vanilla_cnn")[0])  # 64 px
    lenient = gate.Gate(gate.GateNet(), gate.Thresholds(1e-9, 1 - 1e-9, 1e-9, 0.99))
    assert "resolution: the image is 28 px across" in compare.ood_warning([m], np.zeros((28, 28), np.uint8),
                                                                          chest_gate=lenient)
    assert compare.ood_warning([m], np.zeros((64, 80), np.uint8), chest_gate=lenient) is None


def test_only_datasets_made_from_larger_films_get_upload_sources(tmp_path, caplog):
    assert ood.upload_sources("nih14-local", 64, tmp_path) == ()
    with caplog.at_level(logging.WARNING):
        assert ood.upload_sources("pneumoniamnist-local", 28, tmp_path) == ()
    assert "Kermany films not found" in caplog.text


def test_kermany_uploads_are_the_app_path_at_the_model_size(data_dir, kermany_dir):
    """The upload source is Kermany train films decoded and resized exactly as an upload, validation films from
    held-out patients, and never a test film."""
    from cxrcore import gate_training, imaging

    (src,) = ood.upload_sources("pneumoniamnist-local", 28, data_dir, max_images=6)
    assert src.train.shape == (6, 1, 28, 28) and src.val.shape == (6, 1, 28, 28) and src.train.dtype == torch.uint8
    train, val = (gate_training.kermany_paths(data_dir, s) for s in ("train", "val"))
    first = train[ood.sample(len(train), 6)[0]]
    expected = imaging.to_dataset_size(imaging.decode(first.read_bytes(), first.name).pixels, 28)
    np.testing.assert_array_equal(src.train[0, 0].numpy(), expected)
    with open(kermany_dir / "labels.csv", newline="") as f:
        rows = {kermany_dir / r["path"]: r for r in csv.DictReader(f)}
    assert {rows[p]["split"] for p in train + val} == {"train"}
    assert not {rows[p]["patient"] for p in train} & {rows[p]["patient"] for p in val} and len(val) > 100


@pytest.mark.slow
def test_paediatric_detectors_pass_full_size_paediatric_uploads(data_dir, kermany_dir):
    """The PneumoniaMNIST models' detectors learnt the full-size Kermany films too: few Kermany test films (the
    PneumoniaMNIST test images as uploads, decoded and resized by the app's path) are flagged."""
    from cxrcore import gate_training, imaging
    from cxrcore.data import REPO_ROOT

    paths = gate_training.kermany_paths(data_dir, "test")
    picked = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))[:150]]
    films = [imaging.decode(p.read_bytes(), p.name).pixels for p in picked]
    for path in sorted((REPO_ROOT / "checkpoints" / "pneumoniamnist-local").glob("*/ood.json")):
        det = ood.OODModel.load(path)
        assert any(name.startswith("Kermany") for name in det.sources), path
        m = load_model(path.parent)
        x = torch.from_numpy(np.stack([imaging.to_dataset_size(f, m.data_size) for f in films]))[:, None]
        assert np.mean(det.score(ood.features(m, x)) > det.threshold) <= 0.05, path
