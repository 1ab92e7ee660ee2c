"""CAM localisation against boxes: area precision / recall / F1 and the pointing game on hand-made maps and boxes,
the boxed images found in a data folder, and the summary the Benchmarks page and BENCHMARKS.md show."""
from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from cxrcore import localisation as loc
from cxrcore.data import Box, load_boxes
from cxrcore.explain import CamResult


def cam_result(heat: np.ndarray, informative: bool = True) -> CamResult:
    return CamResult(heat.astype(np.float32), (8, 8), informative, "GradCAM", "layer2", "" if informative else "empty")


def left_half_map(size: int = 64) -> np.ndarray:
    heat = np.zeros((size, size), np.float32)
    heat[:, : size // 2] = 1.0
    return heat


def test_box_mask_covers_the_box_fraction_of_the_square():
    mask = loc.box_mask(Box("Mass", 0.25, 0.5, 0.5, 0.25), 8)
    expected = np.zeros((8, 8), bool)
    expected[4:6, 2:6] = True  # rows 0.5-0.75, columns 0.25-0.75
    np.testing.assert_array_equal(mask, expected)
    assert loc.box_mask(Box("Mass", 0, 0, 1, 1)).all()


def test_area_precision_recall_and_f1_on_hand_made_regions():
    region = np.zeros((4, 4), bool)
    region[:, :2] = True  # left half: 8 pixels
    box = np.zeros((4, 4), bool)
    box[:2, :2] = True  # top-left quadrant: 4 pixels, inside the region
    assert loc.area_overlap(region, box) == (0.5, 1.0)
    box[:2, :] = True  # top half: 8 pixels, 4 of them in the region
    assert loc.area_overlap(region, box) == (0.5, 0.5)
    assert loc.area_overlap(np.zeros((4, 4), bool), box) == (0.0, 0.0)  # no region: nothing found
    assert loc.f1(0.5, 1.0) == pytest.approx(2 / 3) and loc.f1(0.0, 0.0) == 0.0
    assert loc.f1(0.173, 0.213) == pytest.approx(0.191, abs=1e-3)  # the transfer report's custom CNN


def test_cam_region_is_where_the_map_reaches_half_its_peak():
    heat = np.zeros((64, 64), np.float32)
    heat[:, :16], heat[:, 16:32] = 1.0, 0.4
    region = loc.cam_region(cam_result(heat), 64)
    assert region[:, :15].all() and not region[:, 17:].any()
    assert not loc.cam_region(cam_result(heat, informative=False), 64).any()


def test_score_box_pointing_game_and_area():
    heat = left_half_map()
    heat[10, 5] = 2.0  # the peak: x = 5.5 / 64, y = 10.5 / 64
    heat /= heat.max()
    hit, p, r = loc.score_box(cam_result(heat), Box("Mass", 0.0, 0.0, 0.25, 0.25))
    assert hit and r == pytest.approx(1.0) and p == pytest.approx(0.25 * 0.25 / 0.5, abs=0.02)
    miss, p, r = loc.score_box(cam_result(heat), Box("Mass", 0.6, 0.6, 0.3, 0.3))
    assert not miss and p == 0 and r == 0
    # a map with no localisation is a miss with nothing found, even where its (zero) argmax lands in the box
    assert loc.score_box(cam_result(np.zeros((64, 64)), informative=False), Box("Mass", 0, 0, 0.5, 0.5)) == (
        False, 0.0, 0.0)


def score(split: str, hit: bool, p: float, r: float, informative: bool = True, model: str = "m",
          trained_on: bool | None = None) -> loc.BoxScore:
    return loc.BoxScore("nih14-local", model, "x.png", split, "Mass", "GradCAM", "layer2", "8x8", informative, hit,
                        p, r, 0.1, split == "train" if trained_on is None else trained_on)


def test_held_out_boxes_are_the_images_a_model_never_trained_on():
    """A cross-validated refit trained on validation too: its validation boxes are not held out."""
    scores = [score("test", True, 1, 1), score("val", True, 1, 1), score("train", False, 0, 0),
              score("test", True, 1, 1, model="cv"), score("val", True, 1, 1, model="cv", trained_on=True)]
    rows = {(r["model"], r["subset"]): r for r in loc.summarise(scores)}
    assert rows["m", "held_out"]["boxes"] == 2 and rows["cv", "held_out"]["boxes"] == 1
    assert rows["cv", "all"]["boxes"] == 2


def test_summarise_pools_splits_and_computes_f1_from_mean_precision_and_recall():
    scores = [score("test", True, 0.4, 0.2), score("test", False, 0.0, 0.0, informative=False),
              score("val", True, 0.2, 0.6), score("train", False, 0.1, 0.1), score("test", True, 1, 1, model="n")]
    rows = {(r["model"], r["subset"]): r for r in loc.summarise(scores)}
    test = rows["m", "test"]
    assert test["boxes"] == 2 and test["no_localisation"] == 1 and test["pointing"] == 0.5
    assert test["precision"] == pytest.approx(0.2) and test["recall"] == pytest.approx(0.1)
    assert test["f1"] == pytest.approx(2 * 0.2 * 0.1 / 0.3) and test["chance"] == pytest.approx(0.1)
    assert rows["m", "held_out"]["boxes"] == 3 and rows["m", "all"]["boxes"] == 4
    assert rows["m", "all"]["pointing"] == 0.5 and rows["n", "test"]["f1"] == 1.0
    assert ("n", "all") in rows and ("n", "val") not in rows


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_boxed_images_finds_every_copy_and_serves_the_right_one(tmp_path):
    """npz copies at 64 and 224 px and a 1024 px sample of the same film: a 64 px model gets the 64 px copy (the
    original resized as uploads are), a 28 px one the largest copy; boxes land on the square as fractions."""
    rng = np.random.default_rng(0)
    for size in (64, 224):
        arrays = {}
        for split in loc.SPLITS:
            names = {"train": ["a.png", "b.png"], "val": ["c.png"], "test": ["d.png", "e.png"]}[split]
            arrays[f"{split}_images"] = rng.integers(0, 256, (len(names), size, size), dtype=np.uint8)
            arrays[f"{split}_names"] = np.array(names)
        np.savez(tmp_path / f"nih14_local_{size}.npz", **arrays)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "d.png").write_bytes(_png(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)))
    with gzip.open(tmp_path / "BBox_List_2017.csv.gz", "wt") as f:
        f.write("Image Index,Finding Label,Bbox [x,y,w,h]\nb.png,Infiltrate,0,0,512,256\nd.png,Mass,512,512,256,256\n")
    images = {i.name: i for i in loc.boxed_images(tmp_path, load_boxes(tmp_path / "BBox_List_2017.csv.gz"))}
    assert set(images) == {"b.png", "d.png"} and images["b.png"].split == "train" and images["d.png"].split == "test"
    d = images["d.png"]
    assert sorted(d.copies) == [64, 224, 1024] and d.pixels_for(64).shape == (64, 64)
    assert d.pixels_for(28).shape == (1024, 1024)
    box = images["b.png"].boxes[0]
    assert box.label == "Infiltration" and (box.x, box.y, box.w, box.h) == (0, 0, 0.5, 0.25)


def test_the_real_boxed_images(data_dir):
    """On the shared data: 16 boxed NIH images (6 in the test split, one of them a 1024 px sample)."""
    images = loc.boxed_images(data_dir, load_boxes(data_dir / "BBox_List_2017.csv.gz"))
    by_split = {s: [i for i in images if i.split == s] for s in loc.SPLITS}
    assert len(images) == 16 and len(by_split["test"]) == 6 and len(by_split["val"]) == 2
    assert sum(1024 in i.copies for i in images) == 1
    assert all(0 <= b.x and b.x + b.w <= 1 and 0 <= b.y and b.y + b.h <= 1 for i in images for b in i.boxes)


def test_score_model_scores_each_box_the_model_has_a_label_for(make_checkpoint):
    from cxrcore.inference import load_model

    m = load_model(make_checkpoint("vanilla_cnn")[0])
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    image = loc.BoxedImage("x.png", "test", {64: pixels}, [Box(m.label_names[0], 0.1, 0.1, 0.3, 0.3),
                                                            Box("Not a finding", 0, 0, 1, 1)])
    (s,) = loc.score_model(m, [image], "EigenCAM")
    assert (s.model, s.label, s.split, s.layer, s.grid) == ("vanilla_cnn", m.label_names[0], "test", "features.-1.2",
                                                            "16x16")
    assert s.informative and 0 <= s.precision <= 1 and 0 <= s.recall <= 1
    assert s.box_share == pytest.approx(0.09, abs=0.01)
