"""Published reference numbers (not reproduced here): they are shown beside ours, always marked as published.

:func:`tables` is the one list of them both the Benchmarks page and BENCHMARKS.md show, so a table added there appears
in both.
"""
from __future__ import annotations

from dataclasses import dataclass

# MedMNIST v2 (Yang et al., Scientific Data 2023), Table of benchmark results: (AUC, ACC)
MEDMNIST_V2 = {
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

# CheXNet (Rajpurkar et al. 2017), per-label AUC of DenseNet-121 on ChestX-ray14 (full 1024 px data)
CHEXNET_AUC = {
    "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345, "Mass": 0.8676,
    "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887, "Consolidation": 0.7901, "Edema": 0.8878,
    "Emphysema": 0.9371, "Fibrosis": 0.8047, "Pleural_Thickening": 0.8062, "Hernia": 0.9164,
}

# Tables the app names but that are not transcribed yet: their figures could not be checked against the papers on
# this offline machine, and a wrong published number is worse than none.
NOT_TRANSCRIBED = {
    "NeurIPS 2024 workshop paper, Table 1 (ChestMNIST)": "not transcribed: source not available offline",
    "MedMNIST+ ChestMNIST by resolution (Doerrich et al. 2024)": "not transcribed: the repository publishes the "
    "tables only as images (BENCHMARK.md)",
}

SOURCES = {
    "medmnist_v2": "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023), Table 3",
    "chexnet": "Rajpurkar et al., CheXNet, arXiv:1711.05225 (2017), Table 1",
}


def flag_for(dataset: str) -> str | None:
    """The MedMNIST dataset whose published numbers concern ours (the NIH subset is ChestMNIST's source)."""
    if dataset.startswith(("nih14", "chestmnist")):
        return "chestmnist"
    if dataset.startswith("pneumoniamnist"):
        return "pneumoniamnist"
    return None


@dataclass(frozen=True)
class PublishedTable:
    """Numbers from a paper, never reproduced here: every view shows them apart and says so."""

    title: str
    source: str
    rows: list[dict]  # one dict per row, column name -> value
    note: str = ""  # what the numbers were measured on, where that differs from this project's data


def tables(dataset: str) -> list[PublishedTable]:
    """The published reference tables that concern a dataset's task."""
    flag = flag_for(dataset)
    out = []
    if flag in MEDMNIST_V2:
        rows = [{"method": k, "AUC": auc, "ACC": acc} for k, (auc, acc) in MEDMNIST_V2[flag].items()]
        out.append(PublishedTable(f"MedMNIST v2: {flag}", SOURCES["medmnist_v2"], rows,
                                  "Trained on the full official dataset, not on this project's data."))
    if flag == "chestmnist":
        out.append(PublishedTable("CheXNet per-label AUC (DenseNet-121, full-resolution ChestX-ray14)",
                                  SOURCES["chexnet"], [{"label": k, "AUC": v} for k, v in CHEXNET_AUC.items()]))
    return out


def not_transcribed(dataset: str) -> list[str]:
    """The tables of a dataset's task that are named but not shown, each with why, so no view hides the gap."""
    return [f"{k} ({v})" for k, v in NOT_TRANSCRIBED.items()] if flag_for(dataset) == "chestmnist" else []
