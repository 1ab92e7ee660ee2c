"""The project's datasets, one entry each. A new dataset is one more ``register(DatasetEntry(...))`` here (or in the
caller's own code before loading), with a source from the layout modules."""
from __future__ import annotations

from .image_folder import ImageFolder
from .labels_csv import LabelsCSV
from .medmnist_npz import MEDMNIST_PROVENANCE, MedMNISTFile, MedMNISTOfficial
from .nih_release import NIHRelease
from .registry import DatasetEntry, SplitPolicy, register

# ChestMNIST's label order (and NIH's names), so models are comparable with the published tables
NIH14 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
CHESTMNIST_LABELS = tuple(n.lower().split("_")[0] for n in NIH14)  # MedMNIST INFO: "pleural", ...
NIH_LIMITS = ("NIH labels were text-mined from reports and are known to be noisy.",)
PAEDIATRIC_LIMITS = ("Children aged 1-5 only; not applicable to adult films.",)
KERMANY_PATIENT = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"  # person1000_bacteria_2931.jpeg -> person1000
KERMANY_PROVENANCE = ("Kermany et al. paediatric chest X-rays (Guangzhou Women and Children's Medical Center, "
                      "ages 1-5; CC BY 4.0), the copy found already squashed to 224x224. Its test split is the same "
                      "624 images as PneumoniaMNIST's test split; validation carved from train by patient")
CARVE_VAL = SplitPolicy(val_fraction=0.1, seed=0)

register(DatasetEntry(
    "nih14-local", "NIH ChestX-ray14 (14 findings)", "multi-label", NIH14,
    "NIH ChestX-ray14 frontal radiographs (adults, NIH Clinical Center), a patient-split local subset; labels "
    "text-mined from reports", MedMNISTFile("nih14_local_{size}.npz"), default_size=64,
    published=("medmnist_v2:chestmnist", "chexnet", "workshop_table1", "transfer_report", "medmnist_plus:chestmnist",
               "nih_random_sample"),
    limits=NIH_LIMITS, checkpoint_dir="", extra={"medmnist_flag": "chestmnist"}, population="adult"))
register(DatasetEntry(
    "pneumoniamnist-local", "PneumoniaMNIST (normal / pneumonia)", "binary", ("normal", "pneumonia"),
    "PneumoniaMNIST: paediatric frontal radiographs (ages 1-5, Guangzhou), MedMNIST split",
    MedMNISTFile("pneumoniamnist_{size}.npz"), default_size=28,
    published=("medmnist_v2:pneumoniamnist", "medmnist_plus:pneumoniamnist"), limits=PAEDIATRIC_LIMITS,
    extra={"medmnist_flag": "pneumoniamnist"}, population="paediatric"))
register(DatasetEntry(
    "kermany-pneumonia", "Kermany chest X-rays (normal / pneumonia)", "binary", ("normal", "pneumonia"),
    KERMANY_PROVENANCE + ".", ImageFolder("kermany_pneumonia", patient_pattern=KERMANY_PATIENT,
                                          patients_per_split=True),
    default_size=128, split=CARVE_VAL,
    published=("medmnist_v2:pneumoniamnist", "medmnist_plus:pneumoniamnist"), limits=PAEDIATRIC_LIMITS,
    extra={"medmnist_flag": "pneumoniamnist"}, population="paediatric"))
register(DatasetEntry(
    "kermany-pneumonia3", "Kermany chest X-rays (normal / bacterial / viral)", "multi-class",
    ("normal", "bacterial", "viral"),
    KERMANY_PROVENANCE + "; bacterial / viral read from the file names (labels.csv).",
    LabelsCSV("kermany_pneumonia/labels.csv", patients_per_split=True), default_size=128, split=CARVE_VAL,
    published=("three_class_report",), limits=PAEDIATRIC_LIMITS, population="paediatric"))
register(DatasetEntry(
    "blood-cells", "Blood cells (4 white-cell types, RGB)", "multi-class",
    ("eosinophil", "lymphocyte", "monocyte", "neutrophil"),
    "Kaggle 'Blood Cell Images': augmented crops of BCCD smears (MIT), re-encoded at 128x96; TEST is the test "
    "split, validation carved from TRAIN grouped by crop id, TEST_SIMPLE unused. Caveat: many crop ids of TEST also "
    "occur in TRAIN (augmentations of the same crop), so TEST may not be independent of TRAIN.",
    ImageFolder("blood_cells", splits=(("train", "TRAIN"), ("test", "TEST")), patient_pattern=r"^_\d+_(\d+)"),
    default_size=96, split=CARVE_VAL, channels=3, published=("blood_cell_report",),
    limits=("Test crops may be augmentations of training crops; test figures may be optimistic.",)))
register(DatasetEntry(
    "nih14", "NIH ChestX-ray14 release (14 findings)", "multi-label", NIH14,
    "NIH ChestX-ray14 (NIH Clinical Center, unrestricted use), the raw release with its official patient-wise "
    "train/test split; validation carved from train by patient", NIHRelease("ChestX-ray14"), default_size=224,
    split=CARVE_VAL, published=("medmnist_v2:chestmnist", "chexnet", "workshop_table1", "medmnist_plus:chestmnist"),
    limits=NIH_LIMITS, extra={"medmnist_flag": "chestmnist"}, population="adult"))
register(DatasetEntry(
    "chestmnist", "ChestMNIST (official, 14 findings)", "multi-label", CHESTMNIST_LABELS,
    f"{MEDMNIST_PROVENANCE}: NIH ChestX-ray14 resized", MedMNISTOfficial("chestmnist"), default_size=64,
    published=("medmnist_v2:chestmnist", "chexnet", "workshop_table1", "medmnist_plus:chestmnist"),
    limits=NIH_LIMITS, extra={"medmnist_flag": "chestmnist"}, population="adult"))
register(DatasetEntry(
    "pneumoniamnist", "PneumoniaMNIST (official)", "binary", ("normal", "pneumonia"),
    f"{MEDMNIST_PROVENANCE}: Kermany paediatric chest X-rays resized", MedMNISTOfficial("pneumoniamnist"),
    default_size=28, published=("medmnist_v2:pneumoniamnist", "medmnist_plus:pneumoniamnist"),
    limits=PAEDIATRIC_LIMITS, extra={"medmnist_flag": "pneumoniamnist"}, population="paediatric"))
