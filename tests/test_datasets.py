"""The dataset registry and its loaders: each on-disk layout on small generated trees and on the real shared folders,
the decode-once cache, patient-grouped carving and the refusals that say what is wrong."""
from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrcore import datasets, published
from cxrcore.data import SPLITS, DatasetNotFound
from cxrcore.datasets import (DatasetEntry, DatasetError, ImageFolder, LabelsCSV, MedMNISTFile, NIHRelease,
                              SplitPolicy, cache, common)
from cxrcore.datasets.builtin import NIH14
from helpers import dicom

CARVE = SplitPolicy(val_fraction=0.25, seed=0)
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test writes its own cache (real-data tests below use the shared one on purpose)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CXR_CACHE_DIR", str(path))
    return path


def write_image(path: Path, value: int, fmt: str, size: tuple[int, int] = (40, 30), rgb: bool = False) -> None:
    """A small image of constant ``value`` (a different value per class lets a test see labels and pixels agree)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "DICOM":
        path.write_bytes(dicom(np.full(size[::-1], value * 16, np.uint16), bits_stored=12))
        return
    arr = np.full((size[1], size[0], 3) if rgb else (size[1], size[0]), value, np.uint8)
    if rgb:
        arr[..., 2] = 255 - value
    Image.fromarray(arr).save(path, format=fmt)


PATIENT = r"^([pq]\d+[NP])_"
FORMATS = [("png", "PNG"), ("jpg", "JPEG"), ("tif", "TIFF"), ("bmp", "BMP"), ("dcm", "DICOM")]


def folder_tree(root: Path, splits=("train", "test"), patients: int = 8, per_patient: int = 2) -> Path:
    """root/<split>/<CLASS>/<patient>_<i>.<ext>, two classes, every format, several images per patient."""
    for split in splits:
        for c, (cls, value) in enumerate((("NORMAL", 40), ("PNEUMONIA", 200))):
            for k in range(patients):
                for i in range(per_patient):
                    ext, fmt = FORMATS[(k + i + c) % len(FORMATS)]
                    who = "q" if split == "test" else "p"  # patients of the test split are other people
                    write_image(root / (split or "") / cls / f"{who}{k}{cls[0]}_{i}.{ext}", value, fmt)
    return root


def entry(source, kind="binary", labels=("normal", "pneumonia"), split=CARVE, **kw) -> DatasetEntry:
    return DatasetEntry("tiny", "Tiny", kind, labels, "generated in a test", source, default_size=16, split=split, **kw)


def no_patient_in_two_splits(ds) -> None:
    sets = {s: set(ds.extras["patients"][s].tolist()) for s in SPLITS}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]


# ---- image folders ------------------------------------------------------------------------------------------------

def test_image_folder_reads_every_format_maps_classes_and_carves_val_by_patient(tmp_path):
    root = folder_tree(tmp_path / "xray")
    ds = datasets.load(entry(ImageFolder(str(root), patient_pattern=PATIENT)), 16)
    assert ds.counts() == {"train": 24, "val": 8, "test": 32}  # 4 of 16 training patients (2 images each) to val
    assert ds.task == "binary-class" and ds.label_names == ["normal", "pneumonia"] and ds.channels == 1
    for s in SPLITS:
        x, y = ds.images[s], ds.labels[s]
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 16, 16) and y.shape == (len(x), 1)
        # pixels follow labels, whatever the format: normal images are dark, pneumonia bright (DICOM min-max aside)
        means = x.float().mean((1, 2, 3)).numpy()
        names = ds.extras["names"][s]
        plain = np.array([not n.endswith(".dcm") for n in names])
        assert (means[plain & (y[:, 0] == 0)] < 60).all() and (means[plain & (y[:, 0] == 1)] > 180).all()
    assert {n.rsplit(".", 1)[1] for n in ds.extras["names"]["train"]} == {e for e, _ in FORMATS}
    no_patient_in_two_splits(ds)
    assert ds.record["split_policy"] == "carved by patient" and ds.record["val_fraction"] == 0.25
    assert ds.record["val_seed"] == 0 and ds.record["square"] == "crop"


def test_image_folder_without_split_folders_carves_val_and_test(tmp_path):
    root = folder_tree(tmp_path / "flat", splits=(None,))
    policy = SplitPolicy(val_fraction=0.2, test_fraction=0.25, seed=3)
    ds = datasets.load(entry(ImageFolder(str(root), patient_pattern=PATIENT), split=policy), 16)
    assert sum(ds.counts().values()) == 32 and min(ds.counts().values()) > 0
    no_patient_in_two_splits(ds)
    assert ds.record["test_fraction"] == 0.25 and ds.record["val_seed"] == 3


def test_rgb_entry_keeps_colour_and_square_rule_is_applied(tmp_path):
    root = tmp_path / "cells"
    for split in ("train", "test"):
        for c, value in (("A", 30), ("B", 220)):
            for k in range(6):
                write_image(root / split / c / f"_{k}_{k}.jpeg", value, "JPEG", size=(32, 24), rgb=True)
    e = entry(ImageFolder(str(root), patient_pattern=r"^_\d+_(\d+)"), kind="multi-class", labels=("a", "b"),
              channels=3, square="pad")
    ds = datasets.load(e, 32)
    x = ds.images["test"]
    assert tuple(x.shape[1:]) == (3, 32, 32) and ds.channels == 3
    bright = ds.labels["test"][:, 0] == 1
    centre = x[:, :, 16, 16].float()
    assert (centre[bright, 0] > 200).all() and (centre[bright, 2] < 60).all()  # red high, blue low: colour kept
    assert (x[:, :, 0, 16] == 0).all() and (x[:, :, 31, 16] == 0).all()  # 32x24 padded to 32x32: black bars


def test_image_folder_refusals_name_the_problem(tmp_path):
    with pytest.raises(DatasetNotFound, match="does not exist"):
        datasets.load(entry(ImageFolder(str(tmp_path / "none"))), 16)
    root = folder_tree(tmp_path / "x", patients=2)
    (root / "train" / "EDEMA").mkdir()
    with pytest.raises(DatasetError, match="EDEMA are not labels of tiny"):
        datasets.load(entry(ImageFolder(str(root))), 16)
    shutil.rmtree(root / "train" / "EDEMA")
    (root / "extra").mkdir()
    with pytest.raises(DatasetError, match="extra, which is no split"):
        datasets.load(entry(ImageFolder(str(root))), 16)
    shutil.rmtree(root / "extra")
    with pytest.raises(DatasetError, match="does not match the patient pattern"):
        datasets.load(entry(ImageFolder(str(root), patient_pattern=r"^(person\d+)")), 16)
    with pytest.raises(DatasetError, match="no val split"):
        datasets.load(entry(ImageFolder(str(root)), split=SplitPolicy()), 16)


def test_unreadable_images_are_counted_and_named_and_nothing_is_cached(tmp_path, cache_dir):
    root = folder_tree(tmp_path / "x", patients=3)
    (root / "train" / "NORMAL" / "p0N_0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "test" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError) as e:
        datasets.load(entry(ImageFolder(str(root))), 16)
    msg = str(e.value)
    assert msg.startswith("2 of 25 images of tiny could not be read")  # 24 images and a text file
    assert "train/NORMAL/p0N_0.png" in msg and "test/PNEUMONIA/notes.txt" in msg
    assert not any(cache_dir.rglob("*.npy"))  # no half-written cache, not even a temporary folder
    assert not [p for p in cache_dir.rglob("*") if p.is_dir() and p.name.startswith(".")]


# ---- the cache ----------------------------------------------------------------------------------------------------

def test_second_load_comes_from_the_memory_mapped_cache_and_a_changed_file_is_seen(tmp_path, cache_dir, monkeypatch):
    root = folder_tree(tmp_path / "x", patients=4)
    e = entry(ImageFolder(str(root), patient_pattern=PATIENT))
    first = datasets.load(e, 16)
    folders = [p for p in cache_dir.rglob("meta.json")]
    assert len(folders) == 1 and {p.name for p in folders[0].parent.glob("*_images.npy")} == {
        f"{s}_images.npy" for s in SPLITS}
    decoded = []
    real_decode = common.decode_items
    monkeypatch.setattr(common, "decode_items", lambda *a: decoded.append(1) or real_decode(*a))
    again = datasets.load(e, 16)
    assert not decoded and again.split_checksum() == first.split_checksum()
    splits, meta = cache.read(folders[0].parent)
    assert all(isinstance(splits.images[s], np.memmap) for s in SPLITS)  # what load wraps, without a copy
    assert meta["loader_version"] == cache.LOADER_VERSION and meta["fingerprint"] == first.md5
    write_image(root / "train" / "NORMAL" / "p0N_0.png", 90, "PNG")  # same name, other pixels
    changed = datasets.load(e, 16)
    assert decoded and changed.md5 != first.md5 and changed.split_checksum() != first.split_checksum()
    assert len(list(cache_dir.rglob("meta.json"))) == 2
    assert datasets.load(e, 8).size == 8 and len(list(cache_dir.rglob("meta.json"))) == 3  # size is in the key


def test_file_digests_are_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    root = folder_tree(tmp_path / "x", patients=2)
    e = entry(ImageFolder(str(root), patient_pattern=PATIENT))
    first = datasets.load(e, 16)
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or real(self))
    assert datasets.load(e, 16).md5 == first.md5 and not read  # stat only: no source file read again
    target = root / "test" / "NORMAL" / "q0N_0.png"
    st = target.stat()
    write_image(target, 41, "PNG")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert datasets.load(e, 16).md5 != first.md5 and target in read


def test_split_checksum_is_hashed_once_stored_beside_the_cache_and_goes_with_it(tmp_path, cache_dir, monkeypatch):
    root = folder_tree(tmp_path / "x", patients=2)
    e = entry(ImageFolder(str(root), patient_pattern=PATIENT))
    hashed = []
    real = cache.checksum_splits
    monkeypatch.setattr(cache, "checksum_splits", lambda *a: hashed.append(1) or real(*a))
    first = datasets.load(e, 16)
    (stored,) = cache_dir.rglob(cache.CHECKSUM)
    assert len(hashed) == 1 and stored.read_text() == first.split_checksum() == real(first.images, first.labels)
    assert datasets.load(e, 16).split_checksum() == first.split_checksum() and len(hashed) == 1  # read, not hashed
    stored.unlink()  # a folder cached before checksums were stored gets one on its next load
    assert datasets.load(e, 16).split_checksum() == first.split_checksum() and len(hashed) == 2 and stored.is_file()
    write_image(root / "train" / "NORMAL" / "p0N_0.png", 90, "PNG")
    changed = datasets.load(e, 16)  # new sources: a new folder with its own checksum
    assert changed.split_checksum() != first.split_checksum() and len(list(cache_dir.rglob(cache.CHECKSUM))) == 2


def test_a_medmnist_file_is_hashed_once_while_its_size_and_mtime_hold(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny_8.npz", **{f"{s}_{k}": rng.integers(0, 2 if k == "labels" else 255,
                                                                   (4, 1) if k == "labels" else (4, 8, 8), np.uint8)
                                         for s in SPLITS for k in ("images", "labels")})
    e = entry(MedMNISTFile(str(tmp_path / "tiny_{size}.npz")), split=datasets.OFFICIAL)
    hashed = []
    real = common.data.md5sum
    monkeypatch.setattr(common.data, "md5sum", lambda p: hashed.append(p) or real(p))
    first = datasets.load(e, 8)
    assert datasets.load(e, 8).md5 == first.md5 == real(tmp_path / "tiny_8.npz") and len(hashed) == 1
    os.utime(tmp_path / "tiny_8.npz", ns=(0, 1))
    assert datasets.load(e, 8).md5 == first.md5 and len(hashed) == 2


def test_one_split_is_read_from_the_cache_alone_and_by_the_cards_key_without_a_scan(tmp_path, cache_dir,
                                                                                    monkeypatch):
    root = folder_tree(tmp_path / "x", patients=2)
    monkeypatch.setitem(datasets.registry._REGISTRY, "tiny", entry(ImageFolder(str(root), patient_pattern=PATIENT)))
    scans, reads = [], []
    real_scan, real_load = ImageFolder.scan, np.load
    monkeypatch.setattr(ImageFolder, "scan", lambda *a: scans.append(1) or real_scan(*a))
    monkeypatch.setattr(np, "load", lambda f, *a, **k: reads.append(Path(f).name) or real_load(f, *a, **k))
    cold = datasets.load_split("tiny", 16, "test")  # nothing cached: decoded once, as training would
    full = datasets.load("tiny", 16)
    np.testing.assert_array_equal(cold.images, full.images["test"].numpy())
    assert cold.names == full.split("test").names and cold.labels.tolist() == full.labels["test"].tolist()
    assert cold.truth(0) == full.typed_task.names_of(full.labels["test"][0])
    scans.clear(), reads.clear()
    by_key = datasets.load_split("tiny", 16, "test", full.record["cache_key"])
    assert not scans and not [f for f in reads if not f.startswith("test_")]  # no scan, no other split read
    assert isinstance(by_key.images, np.memmap) and by_key.names == cold.names and by_key.channels == 1
    assert datasets.load_split("tiny", 16, "val", "no-such-key").names == full.split("val").names and scans


def test_a_split_not_yet_decoded_is_refused_with_the_command_when_decoding_is_off(tmp_path, cache_dir, monkeypatch):
    """The app's picker asks for the split with ``decode=False``: it must never start minutes of decoding."""
    root = folder_tree(tmp_path / "x", patients=2)
    monkeypatch.setitem(datasets.registry._REGISTRY, "tiny", entry(ImageFolder(str(root), patient_pattern=PATIENT)))
    with pytest.raises(datasets.SplitNotCached, match="python train/prepare_data.py --dataset tiny --size 16"):
        datasets.load_split("tiny", 16, "test", decode=False)
    written = {p.parent.name for p in cache_dir.rglob("*") if p.is_file()}
    assert written <= {"file-md5"}  # the sources' checksums only: nothing was decoded
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import prepare_data  # the CLI that decodes it once

    assert prepare_data.main(["--dataset", "tiny", "--size", "16"]) == 0
    assert datasets.load_split("tiny", 16, "test", decode=False).names


def test_cache_root_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv("CXR_CACHE_DIR")
    assert cache.cache_root() == Path.home() / ".cache" / "cxr-compare"


# ---- labels CSV ---------------------------------------------------------------------------------------------------

def csv_tree(root: Path, rows: list[tuple[str, str, str, str]], columns=("path", "split", "label", "patient")) -> Path:
    for path, *_ in rows:
        write_image(root / path, 100, "PNG")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return root / "labels.csv"


def test_labels_csv_multi_label_with_pipes_no_finding_and_patients(tmp_path):
    rows = [(f"img/{k}.png", "test" if k >= 12 else "train",
             ["Mass|Nodule", "No Finding", "Effusion", "Nodule"][k % 4], f"P{k // 2}") for k in range(16)]
    path = csv_tree(tmp_path, rows)
    e = entry(LabelsCSV(str(path), none_label="No Finding"), kind="multi-label", labels=("Effusion", "Mass", "Nodule"))
    ds = datasets.load(e, 16)
    assert ds.counts()["test"] == 4 and ds.counts()["train"] + ds.counts()["val"] == 12
    by_name = {n: y for s in SPLITS for n, y in zip(ds.extras["names"][s], ds.labels[s])}
    np.testing.assert_array_equal(by_name["img/0.png"], [0, 1, 1])
    np.testing.assert_array_equal(by_name["img/1.png"], [0, 0, 0])  # No Finding: no positive
    np.testing.assert_array_equal(by_name["img/2.png"], [1, 0, 0])
    no_patient_in_two_splits(ds)
    with_nf = entry(LabelsCSV(str(path)), kind="multi-label", labels=("Effusion", "Mass", "Nodule", "No Finding"))
    assert datasets.load(with_nf, 16).labels["test"].shape == (4, 4)  # listed as a label, it is a 4th column


def test_labels_csv_refusals(tmp_path):
    path = csv_tree(tmp_path, [("a.png", "train", "normal", "1"), ("b.png", "test", "viral", "2")])
    three = ("normal", "bacterial", "viral")
    with pytest.raises(DatasetError, match="no column diagnosis"):
        datasets.load(entry(LabelsCSV(str(path), label_column="diagnosis"), kind="multi-class", labels=three), 16)
    with pytest.raises(DatasetError, match="labels viral are not labels of tiny"):
        datasets.load(entry(LabelsCSV(str(path)), kind="multi-class", labels=("normal", "bacterial")), 16)
    (tmp_path / "b.png").unlink()
    with pytest.raises(DatasetError, match="lists 1 images that are not there: b.png"):
        datasets.load(entry(LabelsCSV(str(path)), kind="multi-class", labels=three), 16)
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.load(entry(LabelsCSV(str(tmp_path / "none.csv")), kind="multi-class", labels=three), 16)
    outside = csv_tree(tmp_path / "sub", [("../a.png", "train", "normal", "1")])
    with pytest.raises(DatasetError, match="line 2: '../a.png' is outside"):
        datasets.load(entry(LabelsCSV(str(outside)), kind="multi-class", labels=three), 16)


def test_patients_per_split_keeps_same_numbered_patients_of_two_splits_apart(tmp_path):
    rows = [(f"{s}/{k}.png", s, "normal" if k % 2 else "viral", f"IM-{k // 2}") for s in ("train", "test")
            for k in range(8)]
    path = csv_tree(tmp_path, rows)
    ds = datasets.load(entry(LabelsCSV(str(path), patients_per_split=True), kind="multi-class",
                             labels=("normal", "viral")), 16)
    no_patient_in_two_splits(ds)
    assert all(p.startswith("test:IM-") for p in ds.extras["patients"]["test"])


# ---- carving ------------------------------------------------------------------------------------------------------

def test_carving_is_seeded_grouped_and_close_to_its_fraction():
    items = [common.Item(Path(f"/x/{k}.png"), (0.0,), "train", f"P{k % 37}") for k in range(400)] + \
            [common.Item(Path(f"/x/t{k}.png"), (0.0,), "test", f"T{k}") for k in range(10)]
    a, rec = common.carve(items, SplitPolicy(val_fraction=0.1, seed=1))
    b, _ = common.carve(items, SplitPolicy(val_fraction=0.1, seed=1))
    c, _ = common.carve(items, SplitPolicy(val_fraction=0.1, seed=2))
    assert [i.split for i in a] == [i.split for i in b] != [i.split for i in c]
    val = [i for i in a if i.split == "val"]
    assert 40 <= len(val) <= 40 + 11  # whole patients (10-11 images each) until at least 10 %
    assert not {i.patient for i in val} & {i.patient for i in a if i.split == "train"}
    assert rec == {"split_policy": "carved by patient", "val_fraction": 0.1, "test_fraction": None, "val_seed": 1}
    with pytest.raises(DatasetError, match="must not carve another"):
        common.carve(items, SplitPolicy(test_fraction=0.2, val_fraction=0.1))


# ---- the raw NIH release --------------------------------------------------------------------------------------------

def nih_tree(root: Path, samples: Path) -> list[dict]:
    """The release's layout around the 12 sample PNGs: images_001/images/, Data_Entry_2017_v2020.csv (its real
    columns, plus one row whose image was not downloaded), train_val_list.txt / test_list.txt split by patient."""
    rows = list(csv.DictReader(open(samples / "labels.csv")))
    (root / "images_001" / "images").mkdir(parents=True)
    for r in rows:
        (root / "images_001" / "images" / r["Image Index"]).symlink_to(samples / r["Image Index"])
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NIH_COLUMNS)
        for r in rows + [{"Image Index": "00099999_000.png", "Finding Labels": "Mass", "Patient ID": "99999"}]:
            w.writerow([r["Image Index"], r["Finding Labels"], 0, r["Patient ID"], 50, "M", "PA", 1024, 1024,
                        0.143, 0.143])
    test = {r["Image Index"] for i, r in enumerate(rows) if i % 3 == 0}
    (root / "test_list.txt").write_text("\n".join(sorted(test)) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(sorted({r["Image Index"] for r in rows} - test)) + "\n")
    return rows


def test_nih_release_reads_the_official_split_and_finding_labels(tmp_path, samples_dir):
    rows = nih_tree(tmp_path / "nih", samples_dir)
    e = DatasetEntry("nih-tiny", "NIH", "multi-label", NIH14, "test", NIHRelease(str(tmp_path / "nih")),
                     split=SplitPolicy(val_fraction=0.25))
    ds = datasets.load(e, 64)
    assert sum(ds.counts().values()) == 12 and ds.counts()["test"] == 4
    assert ds.record["listed_not_on_disk"] == 1 and ds.record["layout"] == "nih-release"
    by_name = {Path(n).name: y for s in SPLITS for n, y in zip(ds.extras["names"][s], ds.labels[s])}
    for r in rows:
        found = {n for n in r["Finding Labels"].split("|") if n != "No Finding"}
        assert {NIH14[j] for j in np.flatnonzero(by_name[r["Image Index"]])} == found
    no_patient_in_two_splits(ds)
    # the 1024 px originals reach 64 px exactly as the app shapes an upload (centre crop + bicubic)
    from cxrcore import imaging

    name = ds.extras["names"]["test"][0]
    img = imaging.decode((tmp_path / "nih" / name).read_bytes(), name)
    np.testing.assert_array_equal(ds.images["test"][0, 0].numpy(), imaging.to_dataset_size(img.pixels, 64))
    with_nf = DatasetEntry("nih-tiny15", "NIH", "multi-label", (*NIH14, "No Finding"), "test",
                           NIHRelease(str(tmp_path / "nih")), split=SplitPolicy(val_fraction=0.25))
    assert datasets.load(with_nf, 32).labels["train"].shape[1] == 15


def test_nih_release_refuses_images_it_cannot_place(tmp_path, samples_dir):
    nih_tree(tmp_path / "nih", samples_dir)
    e = DatasetEntry("nih-tiny", "NIH", "multi-label", NIH14, "test", NIHRelease(str(tmp_path / "nih")),
                     split=SplitPolicy(val_fraction=0.25))
    extra = tmp_path / "nih" / "images_002" / "00012345_000.png"
    extra.parent.mkdir()
    shutil.copy(samples_dir / "00000284_000.png", extra)
    with pytest.raises(DatasetError, match="1 images are not in Data_Entry_2017_v2020.csv or in the split lists"):
        datasets.load(e, 32)
    extra.unlink()
    (tmp_path / "nih" / "test_list.txt").unlink()
    with pytest.raises(DatasetError, match="exactly one test_list"):
        datasets.load(e, 32)


# ---- the registry -------------------------------------------------------------------------------------------------

def test_registry_entries_are_complete_and_name_existing_published_tables():
    names = [e.name for e in datasets.entries()]
    for required in ("nih14-local", "pneumoniamnist-local", "kermany-pneumonia", "kermany-pneumonia3", "blood-cells",
                     "nih14", "chestmnist", "pneumoniamnist"):
        assert required in names
    for e in datasets.entries():
        assert e.title and e.provenance and e.default_size > 0
        published.by_ids(e.published)  # every key names a table (raises on a typo)
    assert "TEST may not be independent of TRAIN" in datasets.get("blood-cells").provenance
    assert datasets.get("bloodmnist").channels == 3  # any 2D MedMNIST flag gets a generic entry


def test_register_refuses_a_second_entry_of_a_name_and_bad_entries():
    with pytest.raises(ValueError, match="already registered"):
        datasets.register(datasets.get("nih14-local"))
    with pytest.raises(ValueError, match="square must be one of"):
        entry(MedMNISTFile("x_{size}.npz"), square="stretch")
    with pytest.raises(ValueError, match="two classes"):
        entry(MedMNISTFile("x_{size}.npz"), labels=("a", "b", "c"))
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        datasets.load("nope")


# ---- the real shared folders (slow on the first run: they are decoded once, into the shared cache) ---------------

@pytest.fixture
def shared_cache(monkeypatch, cache_dir):
    """The user's cache (``CXR_CACHE_DIR`` as set outside the tests, else ~/.cache/cxr-compare), so repeated runs
    read the real datasets from it."""
    monkeypatch.undo()
    return cache.cache_root()


@pytest.mark.slow
def test_kermany_pneumonia3_matches_the_data_readme(kermany_dir, shared_cache):
    ds = datasets.load("kermany-pneumonia3", 128)
    assert ds.task == "multi-class" and ds.label_names == ["normal", "bacterial", "viral"] and ds.channels == 1
    counts = ds.counts()
    assert counts["train"] + counts["val"] == 5216 and counts["test"] == 624 and 480 <= counts["val"] <= 560
    prev = ds.prevalence()
    assert [a + b for a, b in zip(prev["train"], prev["val"])] == [1341, 2530, 1345]
    assert prev["test"] == [234, 242, 148]
    no_patient_in_two_splits(ds)
    assert ds.record["split_policy"] == "carved by patient" and ds.record["val_seed"] == 0


@pytest.mark.slow
def test_kermany_pneumonia_is_binary_with_pneumoniamnist_test_counts(kermany_dir, shared_cache):
    ds = datasets.load("kermany-pneumonia", 128)
    assert ds.task == "binary-class" and ds.counts()["test"] == 624 and ds.prevalence()["test"] == [234, 390]
    three = datasets.load("kermany-pneumonia3", 128)
    assert set(ds.extras["names"]["val"]) == set(three.extras["names"]["val"])  # one carving for both tasks


@pytest.mark.slow
def test_blood_cells_rgb_test_split_and_val_from_train(blood_cells_dir, shared_cache):
    ds = datasets.load("blood-cells")
    assert ds.size == 96 and ds.channels == 3 and ds.task == "multi-class"
    counts = ds.counts()
    assert counts["train"] + counts["val"] == 9957 and counts["test"] == 2487
    assert all(min(p) > 0 for p in ds.prevalence().values())  # every class in every split
    assert not any("TEST_SIMPLE" in n for s in SPLITS for n in ds.extras["names"][s])
    crops = {s: set(ds.extras["patients"][s].tolist()) for s in SPLITS}
    assert not crops["train"] & crops["val"]  # augmentations of one crop stay on one side of train / val
    assert ds.images["train"][:, 0].float().mean() != ds.images["train"][:, 2].float().mean()  # colour, not grey
