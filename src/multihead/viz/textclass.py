"""Figures of a text classifier: its confusion matrix and the words its pooled output attends to.

Drawn on matplotlib's Agg canvas without ``pyplot`` and written atomically, as the other
training figures (:func:`multihead.train.plots.save_figure`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from multihead.train.plots import save_figure

__all__ = ["plot_confusion", "plot_word_attention"]


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "confusion matrix",
) -> Path:
    """Heatmap of ``confusion[true][predicted]`` counts, each row coloured by its share.

    Example:
        >>> import tempfile
        >>> plot_confusion([[5, 1], [2, 7]], ["neg", "pos"], f"{tempfile.mkdtemp()}/c.png").name
        'c.png'
    """
    c = torch.tensor(confusion, dtype=torch.float64)
    k = len(labels)
    if c.shape != (k, k):
        raise ValueError(f"confusion must be {k} x {k} for {k} labels, got {tuple(c.shape)}")
    # Row shares, so a rare class's errors are as visible as a frequent one's.
    share = c / c.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(12.0, 2.5 + 0.55 * k)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    shown = [label if len(label) <= 14 else label[:13] + "…" for label in labels]
    ax.set_xticks(range(k), shown, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), shown)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_word_attention(
    rows: Sequence[tuple[Sequence[str], torch.Tensor, str]],
    path: str | os.PathLike[str],
    *,
    title: str = "attention of the pooled output over the words (last layer, mean of heads)",
    max_words: int = 40,
) -> Path:
    """One strip per sentence: each word shaded by the attention weight it gets.

    Args:
        rows: ``(words, weights (W,), caption)`` per sentence, e.g. from
            :meth:`multihead.train.textclass.TextClassifier.word_attention`.
        path: where to write the PNG.
        max_words: longer sentences are cut (the figure stays readable).

    Example:
        >>> import tempfile
        >>> rows = [(["a", "good", "film"], torch.tensor([0.2, 0.7, 0.1]), "pos (true pos)")]
        >>> plot_word_attention(rows, f"{tempfile.mkdtemp()}/a.png").name
        'a.png'
    """
    if not rows:
        raise ValueError("rows must hold at least one sentence, got none")
    widest = max(min(len(words), max_words) for words, _, _ in rows)
    # One colour scale for every sentence: a near-uniform row must look pale, not saturated.
    top = max(float(w.max()) for _, w, _ in rows if len(w)) if rows else 1.0
    fig = Figure(figsize=(min(24.0, 1.0 + 0.75 * widest), 0.95 * len(rows) + 0.8))
    for r, (words, weights, caption) in enumerate(rows):
        words = list(words)[:max_words]
        w = weights.detach().float().cpu()[: len(words)]
        if len(w) != len(words):
            raise ValueError(f"row {r}: {len(words)} words but {len(w)} weights")
        ax = fig.add_subplot(len(rows), 1, r + 1)
        ax.imshow(
            w.unsqueeze(0).numpy(), cmap="Oranges", vmin=0.0, vmax=max(top, 1e-9), aspect="auto"
        )
        for j, word in enumerate(words):
            colour = "white" if float(w[j]) > 0.6 * top else "black"
            ax.text(j, 0, word, ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"{caption}; darkest = weight {top:.2f}" if r == 0 else caption, fontsize=8, loc="left"
        )
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(hspace=0.9)
    return save_figure(fig, path)
