"""PNG figures of a training run: the loss curve and a cross-attention heatmap.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), not
through ``pyplot``: no display is needed, no global backend is switched under the caller's
feet, and nothing is left open after saving. Files are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from multihead._files import write_atomic

__all__ = ["plot_cross_attention", "plot_loss_curve", "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (temporary file in the same folder, then rename).

    Example:
        >>> import tempfile
        >>> fig = Figure(); _ = fig.add_subplot().plot([0, 1])
        >>> save_figure(fig, f"{tempfile.mkdtemp()}/x.png").suffix
        '.png'
    """
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def plot_loss_curve(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    metric: str | None = None,
    title: str = "training",
    train_label: str = "train loss",
) -> Path:
    """Plot training (and validation) loss against step, with an optional eval metric.

    Args:
        records: rows as written to ``metrics.jsonl``: each has ``step`` and ``split``
            (``"train"`` or ``"valid"``); train rows have ``loss``; valid rows may have ``loss``
            and ``metric``.
        path: where to write the PNG.
        metric: a validation metric drawn on a second y axis (e.g. ``"exact_match"``).
        title: the figure title.
        train_label: legend of the training curve (say so when it is label-smoothed, which
            puts a floor under it that the validation loss does not have).

    Example:
        >>> import tempfile
        >>> rows = [{"step": s, "split": "train", "loss": 1 / s} for s in (1, 2, 3)]
        >>> plot_loss_curve(rows, f"{tempfile.mkdtemp()}/loss.png").name
        'loss.png'
    """
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]
    valid = [r for r in records if r.get("split") == "valid"]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label=train_label, color="tab:blue")
    valid_loss = [(r["step"], r["loss"]) for r in valid if "loss" in r]
    if valid_loss:
        ax.plot(
            *zip(*valid_loss, strict=True),
            "o-",
            label="valid loss",
            color="tab:orange",
            markersize=3,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross entropy, nats)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    points = [(r["step"], r[metric]) for r in valid if metric is not None and metric in r]
    if points:
        ax2 = ax.twinx()
        ax2.plot(
            *zip(*points, strict=True),
            "s--",
            color="tab:green",
            markersize=3,
            label=f"valid {metric}",
        )
        ax2.set_ylabel(f"valid {metric}")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="center right")
    ax.set_title(title)
    return save_figure(fig, path)


def _label(token: str) -> str:
    # A bare space is an invisible tick label; show it as the visible-space sign.
    return "\u2423" if token == " " else token


def plot_cross_attention(
    weights: torch.Tensor,
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "cross-attention",
) -> Path:
    """Heatmaps of which source token each output token attends to: the head mean, then each head.

    Args:
        weights: ``(H, Nt, Ns)`` or ``(Nt, Ns)`` attention probabilities (rows sum to 1),
            ``Nt`` output positions and ``Ns`` source positions.
        source_tokens: ``Ns`` labels for the x axis.
        output_tokens: ``Nt`` labels for the y axis (the token each row *produces*).
        path: where to write the PNG.
        title: the figure title.

    Example:
        >>> import tempfile
        >>> w = torch.softmax(torch.randn(2, 3, 4), dim=-1)
        >>> plot_cross_attention(w, list("abcd"), list("xyz"), f"{tempfile.mkdtemp()}/a.png").name
        'a.png'
    """
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() == 2:
        weights = weights.unsqueeze(0)
    if weights.dim() != 3:
        raise ValueError(f"weights must be (H, Nt, Ns) or (Nt, Ns), got {tuple(weights.shape)}")
    H, Nt, Ns = weights.shape
    if len(source_tokens) != Ns or len(output_tokens) != Nt:
        raise ValueError(
            f"labels must match weights {tuple(weights.shape)}: expected {Ns} source and {Nt} "
            f"output tokens, got {len(source_tokens)} and {len(output_tokens)}"
        )
    w = weights.detach().float().cpu()
    panels = [(f"head {h}", w[h]) for h in range(H)]
    cols = min(H, 2)
    cell = 0.3  # inches per token, so long inputs stay readable
    width = max(3.0, Ns * cell + 1.2)
    height = max(2.0, Nt * cell + 1.0)
    # The head mean on top (what the model does overall), the heads in a grid below it.
    rows = 1 + math.ceil(H / cols) if H > 1 else 1
    fig = Figure(figsize=(width * cols, height * rows))
    grid = fig.add_gridspec(rows, cols, hspace=0.45, wspace=0.25)
    axes = [fig.add_subplot(grid[0, :])]
    named = [(f"mean of {H} heads" if H > 1 else "head 0", w.mean(0))]
    if H > 1:
        axes += [fig.add_subplot(grid[1 + h // cols, h % cols]) for h in range(H)]
        named += panels
    image = None
    for ax, (name, panel) in zip(axes, named, strict=True):
        image = ax.imshow(panel.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_xticks(range(Ns), [_label(t) for t in source_tokens], fontsize=8)
        ax.set_yticks(range(Nt), [_label(t) for t in output_tokens], fontsize=8)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        ax.set_title(name, fontsize=9)
    if image is not None:
        # One scale (0 to 1) for every panel, so a single colour bar serves them all.
        fig.colorbar(image, ax=axes[0], shrink=0.9, label="attention weight")
    fig.suptitle(title)
    return save_figure(fig, path)
