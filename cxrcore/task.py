"""What a model predicts: the kind of task and its labels, in one place.

A card stores the task as MedMNIST's string ("multi-label, binary-class", "binary-class", "multi-class"), a stable
key kept as it is. Everything that depends on the kind (sigmoid or softmax, labels as one column per output,
prevalence) asks :class:`Task` or the two functions below instead of testing the string itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

Kind = Literal["multi-label", "binary", "multi-class"]
KINDS: tuple[Kind, ...] = ("multi-label", "binary", "multi-class")
# kind -> the string cards (and MedMNIST's INFO) store
CARD_STRINGS: dict[str, str] = {"multi-label": "multi-label, binary-class", "binary": "binary-class",
                                "multi-class": "multi-class"}


def kind_of(task: "str | Task") -> Kind:
    """The kind of a card's task string (or a Task). MedMNIST's ordinal regression (RetinaMNIST) is scored as
    multi-class, as MedMNIST itself does."""
    if isinstance(task, Task):
        return task.kind
    if task.startswith("multi-label"):
        return "multi-label"
    if task == "binary-class":
        return "binary"
    if task in ("multi-class", "ordinal-regression"):
        return "multi-class"
    raise ValueError(f"unknown task {task!r}; known: {', '.join(CARD_STRINGS.values())}")


def is_multilabel(task: "str | Task") -> bool:
    return kind_of(task) == "multi-label"


def probs(logits: torch.Tensor, task: "str | Task") -> torch.Tensor:
    """Probabilities from logits: independent sigmoids (multi-label), else a softmax whose rows sum to 1."""
    return torch.sigmoid(logits) if is_multilabel(task) else torch.softmax(logits, 1)


def label_columns(y: np.ndarray, task: "str | Task", n_out: int) -> np.ndarray:
    """Labels as one column per model output: multi-label labels as they are, a class index as one-hot."""
    y = np.asarray(y)
    if is_multilabel(task):
        return y.reshape(len(y), -1)
    return np.eye(n_out, dtype=np.float32)[y.reshape(len(y), -1)[:, 0].astype(int)]


@dataclass(frozen=True)
class Task:
    """A task's kind and label names (class names for binary / multi-class, whose outputs are a softmax)."""

    kind: Kind
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == "binary" and len(self.labels) != 2:
            raise ValueError(f"a binary task has two classes (negative, positive), got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"label names repeat: {list(self.labels)}")

    @classmethod
    def parse(cls, task: "str | Task", labels: Sequence[str]) -> "Task":
        """From a card's task string and label names."""
        return cls(kind_of(task), tuple(str(n) for n in labels))

    @property
    def card(self) -> str:
        """The string a card stores under ``task``."""
        return CARD_STRINGS[self.kind]

    @property
    def is_multilabel(self) -> bool:
        return self.kind == "multi-label"

    @property
    def num_outputs(self) -> int:
        """One output per label (multi-label) or per class (binary uses a 2-way softmax)."""
        return len(self.labels)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return probs(logits, self)

    def label_columns(self, y: np.ndarray) -> np.ndarray:
        """(N, num_outputs) 0/1 columns: multi-label labels as they are, class indices (N, 1) one-hot."""
        return label_columns(y, self, self.num_outputs)

    def prevalence(self, y: np.ndarray) -> list[int]:
        """Positives per label, or images per class."""
        return self.label_columns(y).sum(0).astype(int).tolist()

    def names_of(self, y_row: np.ndarray) -> list[str]:
        """The label names one image carries (its positives, or its class)."""
        cols = self.label_columns(np.asarray(y_row).reshape(1, -1))[0]
        return [n for n, v in zip(self.labels, cols) if v > 0.5]
