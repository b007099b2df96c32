"""Reports of a speech classifier's test: the confusion matrix and its picture."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "plot_confusion"]


def confusion_matrix(predicted: Tensor, actual: Tensor, num_classes: int) -> Tensor:
    """Counts ``(C, C)``: row = actual class, column = predicted class.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    flat = actual.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def plot_confusion(
    matrix: Tensor, labels: Sequence[str], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Confusion matrix as a PNG (rows: actual, columns: predicted; cells: counts)."""
    from matplotlib.figure import Figure

    from multihead.train.plots import save_figure

    c = len(labels)
    fig = Figure(figsize=(1.0 + 0.45 * c, 0.8 + 0.45 * c))
    ax = fig.add_subplot()
    counts = matrix.cpu().numpy()
    ax.imshow(counts, cmap="Blues")
    for i in range(c):
        for j in range(c):
            if counts[i, j]:
                dark = counts[i, j] > counts.max() / 2
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    ax.set_xticks(range(c), [str(x) for x in labels], rotation=90 if c > 12 else 0)
    ax.set_yticks(range(c), [str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
