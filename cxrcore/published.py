"""Published reference numbers (not reproduced here): they are shown beside ours, always marked as published.

Every table is transcribed from ``../shared/reference/PUBLISHED.md`` (the MedMNIST v2 and CheXNet tables from their
papers) and keyed by a table id (``report:part`` where one report has several); a dataset names the ids, or whole
reports, that concern its task (``DatasetEntry.published`` in :mod:`cxrcore.datasets`), and :func:`tables` is the one list the Benchmarks page and BENCHMARKS.md both show. Values are
as published: fractions where the source gives fractions, percentages where it gives percentages (the title says
which); None where the source gives no figure.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedTable:
    """Numbers from a paper or report, never reproduced here: every view shows them apart and says so."""

    id: str
    title: str
    source: str
    rows: list[dict]  # one dict per row, column name -> value
    note: str = ""  # what the numbers were measured on, where that differs from this project's data


def _rows(columns: tuple[str, ...], values: list[tuple]) -> list[dict]:
    return [dict(zip(columns, v, strict=True)) for v in values]


_WORKSHOP_COLUMNS = ("model", "params", "train loss", "val loss", "train acc", "val acc", "train sens", "val sens",
                     "val AUC", "train seconds (10 epochs)")
WORKSHOP_TABLE1 = PublishedTable(
    "workshop_table1",
    "ChestMNIST workshop paper, Table 1 (train / validation)",
    'A. Shapiro, "Medical Image Classification with Deep Neural Networks", Foundation Models for Science Workshop, '
    "NeurIPS 2024, Table 1",
    _rows(_WORKSHOP_COLUMNS, [
        ("ViT_10 (ViT-B/16, pos weight 10)", "86M", 0.85, 0.97, 0.97, 0.92, 0.96, 0.27, 0.76, 16706),
        ("ViT_50 (ViT-B/16, pos weight 50)", "86M", 1.59, 1.85, 0.84, 0.81, 0.99, 0.54, 0.78, 16782),
        ("ViT_LoRA", "12M trainable", 1.06, 1.08, 0.88, 0.87, 0.98, 0.44, 0.76, 18197),
        ("Vanilla CNN (3 conv + linear, from scratch)", "51M", 0.87, 0.98, 0.95, 0.90, 0.99, 0.21, 0.69, 3017),
        ("ResNet-50", "26M", 0.87, 0.97, 0.94, 0.89, 0.97, 0.33, 0.76, 6136),
        ("ResNet-152", "60M", 0.87, 0.97, 0.95, 0.89, 0.98, 0.35, 0.77, 11064),
        ("DenseNet-121", "8M", 0.86, 0.96, 0.96, 0.91, 0.98, 0.35, 0.79, 6873),
        ("DenseNet-201", "20M", 0.85, 0.96, 0.97, 0.91, 0.98, 0.33, 0.79, 9943),
        ("DenseNet-161", "29M", 0.85, 0.96, 0.97, 0.92, 0.98, 0.34, 0.80, 12770),
    ]),
    "Measured on ChestMNIST at 224 px (78,468 / 11,219 / 22,433 images), ImageNet-pretrained models fully "
    "fine-tuned 10 epochs (AdamW lr 1e-4, batch 32, BCE with positive weight 10; 50 for ViT_50); train and "
    "validation figures only, no test split. The paper finds that without a positive weight every model predicted "
    "all-negative, and that validation sensitivity peaked early while training sensitivity kept rising.",
)

_THREE_CLASS_COLUMNS = ("model", "test acc", "train acc", "val acc", "stopped at epoch", "remark")
THREE_CLASS = PublishedTable(
    "three_class_report",
    "Three-class pneumonia report (normal / bacterial / viral): accuracy",
    'Course project report (BME, "Deep-learning BMEVITMMA19")',
    _rows(_THREE_CLASS_COLUMNS, [
        ("EfficientNet-B0, AdamW, weight decay 5e-4", 0.88, None, None, None, "best"),
        ("ResNet-50", 0.86, None, None, None, "test accuracy ~0.86; val > 0.80"),
        ("EfficientNet-B0, no weight decay", 0.82, None, None, None, ""),
        ("MobileNet-V2", 0.79, None, None, None, ""),
        ("baseline CNN (2 conv, 2x2 pool, 2 FC)", None, 0.91, 0.77, 8, ""),
        ("deeper CNN (5 conv, pool, 3 FC, dropout)", None, 0.85, 0.79, 12, ""),
        ("ViT from scratch", None, 0.60, 0.63, 15, ""),
        ("ViT-B/16 pretrained (vit_base_patch16_224)", None, 0.76, 0.71, None, "20 epochs"),
        ("VGG-16", None, None, None, None, "dropped: slow and weak at that epoch budget"),
    ]),
    "Measured on the Kermany chest X-rays (> 5,000 images, viral vs bacterial read from the file names) with the "
    "bacterial class downsampled to balance, 224 px, Adam lr 1e-3, batch 128, cosine annealing, early stopping "
    "(patience 2), cross-entropy; pretrained CNNs frozen first, then fine-tuned 3-5 epochs. The report also shows "
    "confusion matrices per model (not transcribed: figures).",
)

TRANSFER_CLASSIFICATION = PublishedTable(
    "transfer_report:classification",
    "Transfer-learning report on NIH ChestX-ray14: ResNet-50 from scratch",
    "Transfer-learning report on NIH ChestX-ray14 (MIT course project)",
    _rows(("model", "output", "test acc", "test loss"), [
        ("ResNet-50 from scratch", "single-label softmax", 0.55, 2.43),
        ("ResNet-50 from scratch", "multi-label sigmoid + BCE", 0.92, 0.24),
    ]),
    "Measured on a 10,000-image NIH test set. ImageNet ResNet-50 with only its last c layers trainable (c in 0..19) "
    "and training-set sizes 100 to 5,000, grid-searched on validation accuracy, converged to a majority classifier "
    "(within 0.01 of it).",
)

TRANSFER_LOCALISATION = PublishedTable(
    "transfer_report:localisation",
    "Transfer-learning report on NIH ChestX-ray14: disease-area localisation",
    "Transfer-learning report on NIH ChestX-ray14 (MIT course project)",
    _rows(("method", "boxes", "precision", "recall", "F1", "remark"), [
        ("YOLOv2 off the shelf", "all", None, None, 0.15, "F1 ~0.15"),
        ("YOLOv2 transfer", "all", None, None, None, "few predictions (24 of 129 test images)"),
        ("custom 18-layer CNN, 16x16 grid", "all", 0.173, 0.213, 0.191, "764 training images, 5 epochs"),
        ("custom 18-layer CNN, 16x16 grid", "larger than 384x256 px", 0.254, 0.240, 0.247, ""),
    ]),
    "Measured on the 880 NIH images with boxes. Precision = mean area(box and prediction) / area(prediction), "
    "recall = mean area(box and prediction) / area(box), F1 = 2PR/(P+R): overlap of predicted areas, not this "
    "project's CAM-peak-in-box check.",
)

BLOOD_CELLS = PublishedTable(
    "blood_cell_report",
    "Skoltech course project: blood cells (4 classes), test",
    "Skoltech course project (ResNets, DenseNets, EfficientNet, ViT)",
    _rows(("model", "accuracy", "precision macro", "recall macro", "F1 macro", "params (thousands)"), [
        ("ResNet-152", 0.915, 0.914, 0.915, 0.914, 58152),
        ("ResNet-18", 0.932, 0.936, 0.933, 0.933, 11178),
        ("DenseNet-121", 0.873, 0.888, 0.873, 0.874, 6957),
        ("DenseNet-161", 0.916, 0.918, 0.917, 0.916, 26480),
        ("EfficientNet-B0", 0.931, 0.934, 0.931, 0.931, 5288),
        ("ViT (from scratch)", 0.894, 0.913, 0.894, 0.896, 1368),
    ]),
    "Measured on the Kaggle Blood Cell Images (12,500 augmented images: eosinophil, lymphocyte, monocyte, "
    "neutrophil). ViT from scratch: patch 8, dim 128, depth 6, 16 heads, dropout 0.3; EfficientNet-B0 with "
    "stochastic depth 0.06. Many TEST crops are augmentations of TRAIN crops, so TEST may not be independent of "
    "TRAIN (the report used it as is).",
)

NIH_RANDOM_SAMPLE = PublishedTable(
    "nih_random_sample",
    "Skoltech course project: NIH random sample (15 labels, multi-label), test",
    "Skoltech course project (ResNets, DenseNets, EfficientNet, ViT)",
    _rows(("model", "exact match", "Hamming loss", "recall", "precision", "F1"), [
        ("ResNet-152", 0.501, 0.501, 0.502, 0.502, 0.502),
        ("ResNet-18", 0.474, 0.474, 0.476, 0.475, 0.475),
        ("DenseNet-121", 0.514, 0.514, 0.514, 0.514, 0.514),
        ("DenseNet-161", 0.521, 0.521, 0.521, 0.521, 0.521),
        ("EfficientNet-B0", 0.521, 0.521, 0.521, 0.521, 0.521),
        ("ViT (from scratch)", 0.521, 0.521, 0.521, 0.521, 0.521),
    ]),
    'Measured on the "Random Sample of NIH Chest X-ray Dataset" (5,606 images, the 14 findings plus No Finding). '
    "Caveat: identical values across metrics suggest the models predicted mostly \"No Finding\"; quoted as "
    "published.",
)

_RESOLUTIONS = (28, 64, 128, 224)
MEDMNIST_PLUS_CHEST = PublishedTable(
    "medmnist_plus:chestmnist",
    "MedMNIST+: ChestMNIST test AUC (%) by resolution",
    'Doerrich et al., "Rethinking model prototyping through the MedMNIST+ dataset collection" (2024), '
    "assets/benchmark_results_chestmnist.png",
    _rows(("training", "model", *(f"AUC {r}" for r in _RESOLUTIONS)), [
        ("end-to-end", "VGG16", 76.16, 78.59, 80.07, 80.92),
        ("end-to-end", "AlexNet", 72.31, 74.75, 77.21, 78.87),
        ("end-to-end", "ResNet-18", 73.82, 75.59, 78.24, 78.96),
        ("end-to-end", "DenseNet-121", 75.93, 78.70, 81.21, 82.22),
        ("end-to-end", "EfficientNet-B4", 67.44, 71.63, 77.65, 78.25),
        ("end-to-end", "ViT-B/16", 73.74, 76.21, 78.05, 80.08),
        ("end-to-end", "CLIP ViT-B/16", 72.44, 73.20, 74.18, 77.77),
        ("end-to-end", "EVA-02 ViT-B/16", 72.44, 74.13, 75.23, 76.52),
        ("end-to-end", "DINO ViT-B/16", 73.23, 75.13, 76.81, 78.99),
        ("end-to-end", "SAM ViT-B/16", 72.68, 72.27, 74.13, 75.44),
        ("linear probe", "VGG16", 69.04, 70.45, 73.69, 73.91),
        ("linear probe", "AlexNet", 61.61, 66.60, 71.49, 74.37),
        ("linear probe", "ResNet-18", 61.51, 62.56, 66.63, 75.12),
        ("linear probe", "DenseNet-121", 63.14, 68.16, 71.66, 76.26),
        ("linear probe", "EfficientNet-B4", 55.93, 58.77, 68.20, 74.89),
        ("linear probe", "ViT-B/16", 68.04, 71.37, 74.67, 76.09),
        ("linear probe", "CLIP ViT-B/16", 70.65, 71.22, 74.41, 76.29),
        ("linear probe", "EVA-02 ViT-B/16", 68.87, 70.89, 70.65, 72.11),
        ("linear probe", "DINO ViT-B/16", 71.69, 74.41, 77.90, 78.88),
        ("linear probe", "SAM ViT-B/16", 60.42, 60.24, 61.11, 63.71),
    ]),
    "Mean of 3 seeds on the official ChestMNIST test split, trained on the full official data. Best overall: "
    "DenseNet-121 end-to-end at 224 px. ACC sits at 94.3-94.8 % for every row (the all-negative rate), which is "
    "why it says little here.",
)

MEDMNIST_PLUS_PNEUMONIA = PublishedTable(
    "medmnist_plus:pneumoniamnist",
    "MedMNIST+: PneumoniaMNIST test AUC (%) and ACC (%) by resolution",
    'Doerrich et al., "Rethinking model prototyping through the MedMNIST+ dataset collection" (2024), '
    "assets/benchmark_results_pneumoniamnist.png",
    _rows(("training", "model", *(f"AUC {r}" for r in _RESOLUTIONS), *(f"ACC {r}" for r in _RESOLUTIONS)), [
        ("end-to-end", "VGG16", 97.04, 98.69, 98.55, 98.47, 84.78, 89.26, 87.13, 87.39),
        ("end-to-end", "AlexNet", 95.88, 96.71, 97.85, 98.25, 85.10, 88.03, 87.18, 87.23),
        ("end-to-end", "ResNet-18", 95.01, 94.34, 97.91, 98.04, 83.12, 86.00, 89.85, 91.13),
        ("end-to-end", "DenseNet-121", 96.06, 97.19, 98.75, 97.41, 83.55, 85.42, 89.80, 88.94),
        ("end-to-end", "EfficientNet-B4", 90.69, 95.34, 96.91, 96.71, 79.01, 82.69, 85.15, 87.13),
        ("end-to-end", "ViT-B/16", 95.60, 96.41, 96.81, 96.33, 83.65, 85.84, 83.76, 86.11),
        ("linear probe", "DINO ViT-B/16", 97.29, 97.56, 98.89, 98.92, 86.59, 86.43, 90.33, 91.56),
    ]),
    "Mean of 3 seeds on the official PneumoniaMNIST test split (the same 624 images as the Kermany test split), "
    "trained on the full official data; ACC at threshold 0.5. Best: DINO ViT-B/16 linear probe at 224 px.",
)

# MedMNIST v2 (Yang et al., Scientific Data 2023), Table of benchmark results: (AUC, ACC)
_MEDMNIST_V2 = {
    "chestmnist": {
        "ResNet-18 (28)": (0.768, 0.947), "ResNet-18 (224)": (0.773, 0.947),
        "ResNet-50 (28)": (0.769, 0.947), "ResNet-50 (224)": (0.773, 0.948),
        "auto-sklearn": (0.649, 0.779), "AutoKeras": (0.742, 0.937), "Google AutoML Vision": (0.778, 0.948),
    },
    "pneumoniamnist": {
        "ResNet-18 (28)": (0.944, 0.854), "ResNet-18 (224)": (0.956, 0.864),
        "ResNet-50 (28)": (0.948, 0.854), "ResNet-50 (224)": (0.962, 0.884),
        "auto-sklearn": (0.942, 0.855), "AutoKeras": (0.947, 0.878), "Google AutoML Vision": (0.991, 0.946),
    },
}
MEDMNIST_V2 = {
    flag: PublishedTable(f"medmnist_v2:{flag}", f"MedMNIST v2: {flag}",
                         "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023), Table 3",
                         [{"method": k, "AUC": auc, "ACC": acc} for k, (auc, acc) in methods.items()],
                         "Trained on the full official dataset, not on this project's data.")
    for flag, methods in _MEDMNIST_V2.items()
}

CHEXNET = PublishedTable(
    "chexnet",
    "CheXNet per-label AUC (DenseNet-121, full-resolution ChestX-ray14)",
    "Rajpurkar et al., CheXNet, arXiv:1711.05225 (2017), Table 1",
    [{"label": k, "AUC": v} for k, v in {
        "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345, "Mass": 0.8676,
        "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887, "Consolidation": 0.7901, "Edema": 0.8878,
        "Emphysema": 0.9371, "Fibrosis": 0.8047, "Pleural_Thickening": 0.8062, "Hernia": 0.9164}.items()],
    "Trained and tested on the full ChestX-ray14 release (112,120 images at 1024 px), not on this project's data.",
)

TABLES: dict[str, PublishedTable] = {t.id: t for t in (
    WORKSHOP_TABLE1, MEDMNIST_PLUS_CHEST, *MEDMNIST_V2.values(), CHEXNET, TRANSFER_CLASSIFICATION,
    TRANSFER_LOCALISATION, NIH_RANDOM_SAMPLE, MEDMNIST_PLUS_PNEUMONIA, THREE_CLASS, BLOOD_CELLS)}


def by_ids(ids: tuple[str, ...] | list[str]) -> list[PublishedTable]:
    """Tables by id, in the order given; a report's name ("transfer_report") stands for all its tables
    ("transfer_report:classification", ...). An id that names nothing is an error: the entry naming it has a typo."""
    out = []
    for key in ids:
        found = [t for i, t in TABLES.items() if i == key or i.startswith(key + ":")]
        if not found:
            raise KeyError(f"unknown published table {key!r}; known: {', '.join(TABLES)}")
        out += found
    return out


def tables(dataset: str) -> list[PublishedTable]:
    """The published reference tables that concern a dataset's task, as its registry entry names them ([] for a
    dataset none concerns or that is not registered)."""
    from .datasets import find

    entry = find(dataset)
    return by_ids(entry.published) if entry else []
