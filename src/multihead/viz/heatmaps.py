"""Attention heatmaps: one figure, a row per attention module and a column per head.

Each panel shows one head's weights for one input, queries down, keys across, with the tokens
written on both axes, so self-attention (square) and cross-attention (target rows, source
columns) read the same way. Colours run from 0 to 1 on one shared scale by default, so heads
can be compared at a glance; pass ``vmax=None`` to stretch each panel to its own maximum.

Labels stay readable up to about 64 tokens (the font shrinks with the space per token); beyond
that only every k-th label is written. Drawing uses matplotlib's object API with the Agg
canvas, never pyplot, so no global backend is touched and no window opens.

Example:
    >>> import torch
    >>> from multihead.viz.capture import AttentionMap
    >>> m = AttentionMap(name="attn", kind="self", weights=torch.eye(3)[None], heads=(0,),
    ...                  query_tokens=("a", "b", "c"), key_tokens=("a", "b", "c"))
    >>> fig = attention_grid([m])
    >>> len(fig.axes)  # one panel and the colour bar
    2
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import write_atomic
from .capture import AttentionMap

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = ["FORMATS", "attention_grid", "save_figure", "tick_labels", "write_atomic"]

FORMATS = ("png", "svg", "pdf")

# Beyond this many tokens on an axis, labels are thinned rather than shrunk further.
MAX_LABELS = 64
_MIN_FONT, _MAX_FONT = 4.0, 9.0  # points
_INCH_PER_TOKEN = 0.14
_MIN_PANEL, _MAX_PANEL = 1.6, 5.5  # inches


def _display(token: str) -> str:
    """A label matplotlib shows literally: visible spaces, no mathtext."""
    if token == "":
        return "∅"
    token = token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return token.replace("$", r"\$")


def tick_labels(tokens: Sequence[str], length_in: float) -> tuple[list[int], list[str], float]:
    """Which tick positions get a label, the labels, and the font size (points) for an axis of
    ``length_in`` inches holding ``tokens``.

    Example:
        >>> pos, labels, size = tick_labels([str(i) for i in range(128)], 5.5)
        >>> len(pos), labels[:3]  # thinned to every 2nd token
        (64, ['0', '2', '4'])
    """
    n = len(tokens)
    if n == 0:
        return [], [], _MAX_FONT
    step = 1 if n <= MAX_LABELS else math.ceil(n / MAX_LABELS)
    pitch = length_in * 72.0 / n * step  # points between two written labels
    size = min(_MAX_FONT, max(_MIN_FONT, 0.8 * pitch))
    positions = list(range(0, n, step))
    return positions, [_display(tokens[i]) for i in positions], size


def _panel_size(n: int) -> float:
    return min(_MAX_PANEL, max(_MIN_PANEL, _INCH_PER_TOKEN * n + 0.4))


def _draw_panel(
    ax: Axes,
    weights: object,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str],
    *,
    width_in: float,
    height_in: float,
    vmax: float | None,
    show_queries: bool,
    cmap: str,
) -> AxesImage:
    import numpy as np

    data = np.asarray(weights, dtype=np.float32)  # (Nq, Nk)
    top = vmax if vmax is not None else max(float(data.max()), 1e-6)
    image = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=top, aspect="auto", interpolation="nearest")
    pos, labels, size = tick_labels(key_tokens, width_in)
    ax.set_xticks(pos, [_literal(t) for t in labels], rotation=90, fontsize=size)
    if show_queries:
        pos, labels, size = tick_labels(query_tokens, height_in)
        ax.set_yticks(pos, [_literal(t) for t in labels], fontsize=size)
    else:
        ax.set_yticks([])
    ax.tick_params(length=0, pad=1.5)
    return image


def attention_grid(
    maps: Sequence[AttentionMap],
    *,
    title: str | None = None,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    dpi: float = 120.0,
) -> Figure:
    """A layers x heads grid of heatmaps: row ``r`` is ``maps[r]``, column ``c`` its head ``c``.

    Args:
        maps: the modules to draw, e.g. from :func:`~multihead.viz.capture.maps_from_record`.
        title: the figure's title.
        vmax: top of the colour scale shared by every panel; ``None`` scales each panel to its
            own maximum (shows structure in diffuse heads, hides how diffuse they are).
        cmap: a matplotlib colour map name.
        dpi: resolution for raster output.

    Query tokens label the first panel of each row (rows share them), key tokens every panel
    (each row has its own keys). Returns a ``matplotlib.figure.Figure``; write it with
    :func:`save_figure`.

    Example:
        >>> import torch
        >>> enc = AttentionMap(name="enc", kind="self", weights=torch.full((2, 4, 4), 0.25),
        ...                    heads=(0, 1), query_tokens=tuple("abcd"), key_tokens=tuple("abcd"))
        >>> x = AttentionMap(name="cross", kind="cross", weights=torch.full((2, 2, 4), 0.25),
        ...                  heads=(0, 1), query_tokens=("x", "y"), key_tokens=tuple("abcd"))
        >>> fig = attention_grid([enc, x], title="demo")
        >>> [ax.get_title() for ax in fig.axes[:2]]
        ['head 0', 'head 1']
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(maps, AttentionMap) or not isinstance(maps, Sequence):
        raise TypeError(f"maps must be a sequence of AttentionMap, got {type(maps).__name__}")
    if not maps:
        raise ValueError("maps must hold at least one AttentionMap, got an empty sequence")
    for m in maps:
        if not isinstance(m, AttentionMap):
            raise TypeError(f"maps must hold AttentionMap objects, got {type(m).__name__}")
    if vmax is not None and not vmax > 0:
        raise ValueError(f"vmax must be > 0 or None, got {vmax}")

    cols = max(len(m.heads) for m in maps)
    width = _panel_size(max(len(m.key_tokens) for m in maps))
    heights = [_panel_size(len(m.query_tokens)) for m in maps]
    # Room for rotated key labels under each row and query labels left of each row.
    longest_key = max(len(t) for m in maps for t in m.key_tokens) if maps else 1
    label_in = min(1.2, 0.25 + 0.07 * longest_key)
    fig = Figure(
        figsize=(cols * (width + 0.15) + 1.9, sum(h + label_in + 0.3 for h in heights) + 0.6),
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(maps), cols, height_ratios=heights)
    image = None
    first_axes = []
    for r, m in enumerate(maps):
        weights = m.weights.detach().float().cpu().numpy()
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            if c >= len(m.heads):
                ax.set_axis_off()
                continue
            image = _draw_panel(
                ax,
                weights[c],
                m.query_tokens,
                m.key_tokens,
                width_in=width,
                height_in=heights[r],
                vmax=vmax,
                show_queries=c == 0,
                cmap=cmap,
            )
            ax.set_title(f"head {m.heads[c]}", fontsize=8, pad=3)
            if c == 0:
                first_axes.append(ax)
                kind = "self-attention" if m.kind == "self" else "cross-attention"
                ax.set_ylabel(f"{m.name}\n{kind}", fontsize=8)
    if image is not None and vmax is not None:
        fig.colorbar(image, ax=fig.axes, shrink=min(0.9, 3.0 / len(maps)), pad=0.01, aspect=30)
    if title:
        fig.suptitle(_literal(title), fontsize=10)
    return fig


def _literal(text: str) -> str:
    """``text`` shown as written: matplotlib reads ``$...$`` as TeX math (and fails on bad
    TeX at draw time); an escaped dollar is drawn as a plain dollar."""
    return text.replace("$", r"\$")


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` atomically; the format follows the suffix (png, svg or pdf).

    The image is written to a temporary file next to ``path`` and renamed over it, so a reader
    never sees half a picture.

    Example:
        >>> import tempfile, torch
        >>> m = AttentionMap(name="a", kind="self", weights=torch.eye(2)[None], heads=(0,),
        ...                  query_tokens=("x", "y"), key_tokens=("x", "y"))
        >>> p = save_figure(attention_grid([m]), f"{tempfile.mkdtemp()}/grid.svg")
        >>> p.read_text().lstrip().startswith("<?xml")
        True
    """
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"path must end in one of {['.' + f for f in FORMATS]}, got {str(path)!r}")
    # No timestamps or version strings in the file: the same figure gives the same bytes.
    metadata = {"Date": None} if fmt in ("svg", "pdf") else {"Software": None}
    with warnings.catch_warnings():
        # A character the font lacks is drawn as a box; one warning line per glyph says no more.
        warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
        return write_atomic(target, lambda f: fig.savefig(f, format=fmt, metadata=metadata))
