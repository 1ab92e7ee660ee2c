"""The loader reads the real local files and MedMNIST's layout faithfully, refuses what it cannot trust with a message
that says what to do, and the shared transforms (preprocess, Augment) do exactly what they claim."""
from __future__ import annotations

import dataclasses
import gzip

import medmnist
import numpy as np
import pytest
import torch

from cxrcore import data as D
from cxrcore import datasets
from cxrcore.datasets import cache
from cxrcore.datasets.medmnist_npz import read_npz
from cxrcore.data import Augment, Box, DatasetNotFound, load_boxes, load_dataset, preprocess

NIH14 = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
# ../shared/data/README.md
NIH_PREVALENCE = {
    "train": [107, 86, 156, 181, 56, 65, 22, 52, 79, 32, 54, 41, 59, 17],
    "val": [16, 7, 30, 26, 12, 14, 4, 4, 8, 4, 6, 10, 11, 1],
    "test": [30, 17, 29, 49, 31, 40, 9, 23, 22, 7, 13, 23, 20, 9],
}


@pytest.fixture(scope="module")
def nih(data_dir):
    return load_dataset("nih14-local", 64)


# ---- the real local files ------------------------------------------------------------------------------------------

def test_nih14_local_shapes_counts_and_label_order(nih):
    assert nih.counts() == {"train": 951, "val": 167, "test": 315}
    for s in D.SPLITS:
        x, y = nih.images[s], nih.labels[s]
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 64, 64) and x.is_contiguous()
        assert y.dtype == np.float32 and y.shape == (len(x), 14) and set(np.unique(y)) <= {0.0, 1.0}
    assert nih.label_names == NIH14
    # ChestMNIST's own order, so models are comparable with the published tables
    chest = list(medmnist.INFO["chestmnist"]["label"].values())
    assert [n.lower().split("_")[0] for n in nih.label_names] == chest
    assert nih.task == medmnist.INFO["chestmnist"]["task"] and nih.num_outputs == 14 and nih.channels == 1
    assert nih.md5 == "00ca0b6aa27a87dfc59acc4fbf5057cf"


def test_nih14_local_prevalence_matches_the_data_readme(nih):
    assert nih.prevalence() == NIH_PREVALENCE


def test_nih14_local_keeps_names_and_patients_and_splits_by_patient(nih):
    assert set(nih.extras) == {"names", "patients"}
    for s in D.SPLITS:
        assert len(nih.extras["names"][s]) == len(nih.labels[s])
    patients = {s: set(nih.extras["patients"][s].tolist()) for s in D.SPLITS}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_split_checksum_is_stable_and_sees_one_flipped_label(nih):
    again = load_dataset("nih14-local", 64)
    assert again.split_checksum() == nih.split_checksum()
    labels = {s: y.copy() for s, y in nih.labels.items()}
    labels["test"][100, 13] = 1 - labels["test"][100, 13]
    assert dataclasses.replace(nih, labels=labels).split_checksum() != nih.split_checksum()
    images = {s: x.clone() for s, x in nih.images.items()}
    images["val"][0, 0, 0, 0] ^= 1
    assert dataclasses.replace(nih, images=images).split_checksum() != nih.split_checksum()


def test_split_checksum_streams_the_same_digest_as_hashing_whole_buffers():
    """Cards written before the checksum was streamed name the same data: the digest is unchanged."""
    import hashlib

    rng = np.random.default_rng(0)
    images = {s: torch.from_numpy(rng.integers(0, 255, (n, 1, 5, 5), np.uint8)) for s, n in zip(D.SPLITS, (9, 0, 4))}
    labels = {s: rng.uniform(size=(len(images[s]), 3)).astype(np.float32) for s in D.SPLITS}
    whole = hashlib.sha256()
    for s in D.SPLITS:
        whole.update(images[s].numpy().tobytes())
        whole.update(labels[s].tobytes())
    assert D.checksum_splits(images, labels, rows=2) == D.checksum_splits(images, labels) == whole.hexdigest()
    ds = D.Dataset("toy", 5, "multi-label, binary-class", ["a", "b", "c"], images, labels, "", "", checksum="given")
    assert ds.split_checksum() == "given"
    assert ds.subset({"train": 3}).split_checksum() != whole.hexdigest()  # a subset hashes its own arrays
    assert dataclasses.replace(ds).split_checksum() == whole.hexdigest()  # a replaced Dataset never inherits it


def test_subset_takes_the_first_images_of_each_split(nih):
    sub = nih.subset({"train": 64, "val": 48, "test": 48})
    assert sub.counts() == {"train": 64, "val": 48, "test": 48}
    assert torch.equal(sub.images["val"], nih.images["val"][:48])
    assert (sub.extras["names"]["test"] == nih.extras["names"]["test"][:48]).all()
    assert sub.task == nih.task and sub.label_names == nih.label_names


def test_pneumoniamnist_local_is_binary_with_the_official_counts(data_dir):
    pn = load_dataset("pneumoniamnist-local", 28)
    assert pn.counts() == {"train": 4708, "val": 524, "test": 624}
    assert pn.task == "binary-class" and pn.label_names == ["normal", "pneumonia"] and pn.num_outputs == 2
    assert tuple(pn.images["train"].shape[1:]) == (1, 28, 28) and pn.labels["train"].shape == (4708, 1)
    assert sum(pn.prevalence()["test"]) == 624 and pn.prevalence()["test"][1] == 390  # 62.5 % pneumonia


# ---- refusals with a way forward -----------------------------------------------------------------------------------

def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown dataset 'nih15'") as e:
        load_dataset("nih15", 64)
    for name in ("nih14-local", "pneumoniamnist-local", "chestmnist", "pneumoniamnist"):
        assert name in str(e.value)
    assert "organmnist3d" not in str(e.value)


@pytest.mark.parametrize("name, size", [("organmnist3d", 28), ("chestmnist", 96)])
def test_3d_datasets_and_missing_sizes_are_refused(name, size):
    with pytest.raises(ValueError):
        load_dataset(name, size)


@pytest.mark.parametrize("name, size, file", [("nih14-local", 64, "nih14_local_64.npz"),
                                              ("pneumoniamnist-local", 28, "pneumoniamnist_28.npz")])
def test_missing_local_file_says_where_it_should_be(monkeypatch, tmp_path, name, size, file):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFound) as e:
        load_dataset(name, size)
    assert "CXR_DATA_DIR" in str(e.value) and str(tmp_path / file) in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("size, suffix", [(64, "_64"), (28, "")])
def test_missing_medmnist_file_names_url_and_folder(monkeypatch, tmp_path, size, suffix):
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path))
    with pytest.raises(DatasetNotFound) as e:
        load_dataset("chestmnist", size)
    msg = str(e.value)
    assert medmnist.INFO["chestmnist"][f"url{suffix}"] in msg and str(tmp_path) in msg and "MEDMNIST_ROOT" in msg
    assert not list(tmp_path.iterdir())  # download is off: nothing was fetched or created


def fake_medmnist(path, n=(6, 3, 4), size=8, labels=14, channels=None, seed=0) -> dict:
    """A tiny npz laid out like an official MedMNIST file (no label names, no extras)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for s, k in zip(D.SPLITS, n):
        shape = (k, size, size) if channels is None else (k, size, size, channels)
        arrays[f"{s}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{s}_labels"] = rng.integers(0, 2, (k, labels), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_file_with_wrong_md5_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path))
    fake_medmnist(tmp_path / "chestmnist_64.npz", size=64)
    with pytest.raises(ValueError, match="expected " + medmnist.INFO["chestmnist"]["MD5_64"]) as e:
        load_dataset("chestmnist", 64)
    assert "corrupt or not official" in str(e.value) and not isinstance(e.value, DatasetNotFound)


def test_medmnist_file_with_the_official_md5_loads_with_medmnist_task_and_labels(monkeypatch, tmp_path):
    """The real file cannot be had offline; a fake one passes once ``md5sum`` reports the official MD5."""
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path))
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))  # a fake under the official MD5 must not be cached for real
    arrays = fake_medmnist(tmp_path / "chestmnist_64.npz", size=64)
    monkeypatch.setattr(D, "md5sum", lambda path: medmnist.INFO["chestmnist"]["MD5_64"])
    ds = load_dataset("chestmnist", 64)
    assert ds.task == "multi-label, binary-class"
    assert ds.label_names == list(medmnist.INFO["chestmnist"]["label"].values())
    assert ds.counts() == {"train": 6, "val": 3, "test": 4} and ds.extras == {}
    assert torch.equal(ds.images["test"][:, 0], torch.from_numpy(arrays["test_images"]))
    np.testing.assert_array_equal(ds.labels["val"], arrays["val_labels"].astype(np.float32))


def test_npz_reader_reads_single_label_and_rgb_layouts(tmp_path):
    arrays = fake_medmnist(tmp_path / "blood.npz", size=28, labels=1, channels=3)
    entry = datasets.get("bloodmnist")
    assert entry.kind == "multi-class" and len(entry.labels) == 8 and entry.channels == 3
    splits = read_npz(tmp_path / "blood.npz", entry)
    x = splits.images["train"]
    assert x.shape == (6, 3, 28, 28) and x.flags.c_contiguous
    np.testing.assert_array_equal(x[2, 1], arrays["train_images"][2, :, :, 1])  # (N,H,W,C) -> (N,C,H,W)
    assert splits.labels["train"].shape == (6, 1) and splits.record["split_policy"] == "official"


def test_npz_with_other_label_names_than_its_entry_is_refused(tmp_path, monkeypatch):
    arrays = fake_medmnist(tmp_path / "nih14_local_8.npz", size=8)
    np.savez(tmp_path / "nih14_local_8.npz", **arrays, label_names=np.array([f"L{k}" for k in range(14)]))
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(datasets.DatasetError, match="expects"):
        load_dataset("nih14-local", 8)


def test_local_npz_is_cached_once_and_memory_mapped(tmp_path, monkeypatch):
    arrays = fake_medmnist(tmp_path / "pneumoniamnist_8.npz", size=8, labels=1)
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    a = load_dataset("pneumoniamnist-local", 8)
    (meta,) = (tmp_path / "cache").rglob("meta.json")
    assert isinstance(cache.read(meta.parent)[0].images["test"], np.memmap)
    b = load_dataset("pneumoniamnist-local", 8)
    assert a.split_checksum() == b.split_checksum() and len(list((tmp_path / "cache").rglob("meta.json"))) == 1
    assert torch.equal(b.images["test"][:, 0], torch.from_numpy(arrays["test_images"]))
    assert b.record == {**a.record} and b.record["split_policy"] == "official"


# ---- bounding boxes ------------------------------------------------------------------------------------------------

def test_load_boxes_reads_nih_boxes(data_dir, nih):
    boxes = load_boxes()
    assert sum(map(len, boxes.values())) == 984 and len(boxes) == 880
    (b,) = boxes["00013118_008.png"]
    assert b == Box("Atelectasis", pytest.approx(225.084745762712), pytest.approx(547.019216763771),
                    pytest.approx(86.7796610169491), pytest.approx(79.1864406779661))
    local = [n for s in D.SPLITS for n in nih.extras["names"][s] if n in boxes]
    assert local and all(bx.label in NIH14 + ["Infiltrate"] for n in local for bx in boxes[n])


def test_load_boxes_reads_plain_csv_and_is_empty_without_a_file(tmp_path, data_dir):
    assert load_boxes(tmp_path / "none.csv.gz") == {}
    plain = tmp_path / "boxes.csv"
    with gzip.open(data_dir / "BBox_List_2017.csv.gz", "rt") as f:
        plain.write_text("".join(f.readlines()[:3]))
    assert len(load_boxes(plain)) == 2


# ---- preprocess ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mean, std", [(0.5, 0.5), (0.449, 0.226)])
def test_preprocess_normalises_exactly(mean, std):
    x = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    out = preprocess(x, 16, mean, std, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, (x.double() / 255 - mean).div(std).float())
    assert x.dtype == torch.uint8 and x.max() > 1  # the input is untouched


def test_preprocess_resizes_with_antialias_and_keeps_constants():
    const = torch.full((2, 1, 64, 64), 200, dtype=torch.uint8)
    for size in (32, 96):
        out = preprocess(const, size, 0.5, 0.5, 1)
        assert tuple(out.shape) == (2, 1, size, size)
        torch.testing.assert_close(out, torch.full_like(out, (200 / 255 - 0.5) / 0.5))
    stripes = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    stripes[..., ::2] = 255  # antialiasing averages the stripes instead of sampling one of them
    assert preprocess(stripes, 32, 0, 1, 1).std() < 0.05


def test_preprocess_channel_handling():
    grey = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    rgb = preprocess(grey, 8, 0.5, 0.5, 3)
    assert tuple(rgb.shape) == (2, 3, 8, 8) and all(torch.equal(rgb[:, c], rgb[:, 0]) for c in range(3))
    colour = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(preprocess(colour, 8, 0, 1, 1), colour.float().div(255).mean(1, keepdim=True))


# ---- augmentation --------------------------------------------------------------------------------------------------

def bright_top_left(n: int = 16, size: int = 32) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size)
    x[..., : size // 2, :] = 0.5  # top half bright: a vertical flip would move it to the bottom
    x[..., : size // 2, : size // 2] = 1.0  # brightest quadrant top-left: a horizontal flip would move it right
    return x


def test_augment_keeps_shape_dtype_and_range():
    x = bright_top_left()
    out = Augment()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_augment_is_deterministic_for_a_seeded_generator():
    x = bright_top_left()
    a = Augment()(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, Augment()(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, Augment()(x, torch.Generator().manual_seed(8)))


def test_augment_never_flips():
    x = bright_top_left(n=256)
    out = Augment()(x, torch.Generator().manual_seed(1))
    half = x.shape[-1] // 2
    top, bottom = out[..., :half, :].mean((1, 2, 3)), out[..., half:, :].mean((1, 2, 3))
    left, right = out[..., :half, :half].mean((1, 2, 3)), out[..., :half, half:].mean((1, 2, 3))
    assert (top > bottom + 0.2).all() and (left > right + 0.2).all()  # every image, not just on average


def test_augment_with_no_range_is_the_identity():
    x = torch.rand(4, 1, 24, 24)
    out = Augment(degrees=0, translate=0, scale=(1.0, 1.0))(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


# ---- device: every tensor on the batch's device ---------------------------------------------------------------------
# No CUDA here: a batch on the "meta" device stands in for a GPU batch. A transform that builds any tensor on the CPU
# (as Augment once did, so grid_sample met two devices on every CUDA step) fails exactly like it would on a GPU.

@pytest.mark.parametrize("generator", [None, "cpu"])
def test_augment_runs_on_the_batch_device(generator):
    x = torch.empty(8, 1, 32, 32, device="meta")
    gen = torch.Generator().manual_seed(0) if generator else None  # a CPU generator: its draws move to the batch
    out = Augment()(x, gen)
    assert out.device == x.device and out.shape == x.shape


def test_preprocess_runs_on_the_batch_device():
    images = torch.empty(4, 1, 28, 28, dtype=torch.uint8, device="meta")
    for in_chans in (1, 3):
        out = preprocess(images, 64, 0.5, 0.25, in_chans)
        assert out.device == images.device and tuple(out.shape) == (4, in_chans, 64, 64)
