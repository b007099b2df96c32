"""Numbers that describe what each head does, and how much each head matters.

Per-head statistics (:func:`head_stats`, :func:`record_stats`) summarise captured weights
``w[i, j]`` (query row ``i``, key ``j``; rows average over the batch and over query rows that
may attend to something):

* ``entropy``: ``-sum_j w log w`` in nats; 0 for a head that looks at one key, ``log Nk`` for
  one that spreads evenly.
* ``distance``: ``sum_j w |i - j|``, how far a head looks (Clark et al., 2019; Vig and Belinkov,
  2019), with ``i`` the query's position on the key axis.
* ``first``: weight on key 0 (a "no-op" sink many heads fall back to; Clark et al., 2019).
* ``special``: weight on keys marked special (BOS, EOS, padding...), when a marking is given.
* ``previous``: weight on ``j = i - 1``; ``diagonal``: weight on ``j = i``.

Head importance (:func:`head_importance`) follows Michel et al. (2019), "Are Sixteen Heads
Really Better than One?": mask one head at a time and measure how much a held-out metric drops.
Masking (:func:`mask_heads`) zeros the head's slice of the input to ``out_proj`` with a
temporary forward pre-hook, which is exactly what removing the head would do
(:mod:`multihead.viz.pruning`).

Shape legend: ``B`` batch, ``H`` heads, ``q`` recorded query rows, ``Nk`` keys, ``Dv`` head
value size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..modules.attention import MultiHeadAttention
from .capture import AttentionRecord, attention_modules

__all__ = [
    "HeadStats",
    "head_importance",
    "head_stats",
    "mask_heads",
    "record_stats",
    "stats_dicts",
    "stats_markdown",
]


@dataclass(frozen=True, kw_only=True)
class HeadStats:
    """One row of the statistics table: one head of one attention module.

    Every score is a mean over counted query rows (see the module docstring); ``nan`` where no
    row qualifies (e.g. ``previous`` with a single query at position 0), ``None`` for
    ``special`` when no special keys were marked.
    """

    layer: str  # module name, as in model.named_modules()
    head: int  # head index in the module
    entropy: float  # nats
    distance: float  # mean |query position - key position|, weighted
    first: float  # weight on key 0
    special: float | None  # weight on keys marked special; None when not marked
    previous: float  # weight on the key just before the query
    diagonal: float  # weight on the query's own position
    rows: int  # query rows (over the batch) that were averaged


_SCORES = ("entropy", "distance", "first", "special", "previous", "diagonal")


def _as_bool_mask(mask: object, name: str, shape: tuple[int, int]) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        what = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor, got {what}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.dim() != 2 or mask.shape[1] != shape[1] or mask.shape[0] not in (1, shape[0]):
        raise ValueError(
            f"{name} must be ({shape[0]}|1, {shape[1]}) or ({shape[1]},), "
            f"got shape {tuple(mask.shape)}"
        )
    return mask.expand(shape)


def _sums(
    weights: Tensor,
    positions: Tensor,
    query_mask: Tensor | None,
    special_keys: Tensor | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-head totals and row counts of every score for one ``(B, H, q, Nk)`` tensor."""
    b, h, q, nk = weights.shape
    w = weights.double()
    # A row that sums to 0 is a query with nothing to attend to: it has no distribution.
    live = w.sum(-1) > 0  # (B, H, q)
    if query_mask is not None:
        live &= query_mask[:, None, :]
    keys = torch.arange(nk, dtype=torch.float64)
    pos = positions.to(torch.float64)  # (q,)
    per_row = {
        "entropy": -torch.special.xlogy(w, w).sum(-1),  # 0 log 0 = 0
        "distance": (w * (pos[:, None] - keys[None, :]).abs()).sum(-1),
        "first": w[..., 0],
    }
    if special_keys is not None:
        per_row["special"] = (w * special_keys[:, None, None, :].double()).sum(-1)

    def at_offset(offset: int) -> tuple[Tensor, Tensor]:
        col = positions + offset  # (q,)
        valid = (col >= 0) & (col < nk)
        idx = col.clamp(0, nk - 1).view(1, 1, q, 1).expand(b, h, q, 1)
        return w.gather(-1, idx).squeeze(-1), valid.view(1, 1, q).expand(b, h, q)

    prev, prev_ok = at_offset(-1)
    diag, diag_ok = at_offset(0)
    per_row["previous"], per_row["diagonal"] = prev, diag
    counted = {name: live for name in per_row}
    counted["previous"] = live & prev_ok
    counted["diagonal"] = live & diag_ok
    totals = {n: (v * counted[n]).sum(dim=(0, 2)) for n, v in per_row.items()}  # (H,)
    counts = {n: c.sum(dim=(0, 2)).to(torch.float64) for n, c in counted.items()}  # (H,)
    return totals, counts


def _rows(
    layer: str,
    heads: Sequence[int],
    totals: Mapping[str, Tensor],
    counts: Mapping[str, Tensor],
) -> list[HeadStats]:
    out = []
    for k, head in enumerate(heads):
        values: dict[str, float | None] = {}
        for name in _SCORES:
            if name not in totals:
                values[name] = None
                continue
            n = float(counts[name][k])
            values[name] = float(totals[name][k]) / n if n > 0 else math.nan
        out.append(
            HeadStats(
                layer=layer,
                head=int(head),
                entropy=float(values["entropy"]),  # type: ignore[arg-type]
                distance=float(values["distance"]),  # type: ignore[arg-type]
                first=float(values["first"]),  # type: ignore[arg-type]
                special=values["special"],
                previous=float(values["previous"]),  # type: ignore[arg-type]
                diagonal=float(values["diagonal"]),  # type: ignore[arg-type]
                rows=int(counts["entropy"][k]),
            )
        )
    return out


def _check_weights(weights: object) -> Tensor:
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() != 4:
        raise ValueError(f"weights must be 4-D (B, H, Nq, Nk), got shape {tuple(weights.shape)}")
    return weights.detach().cpu()


def head_stats(
    weights: Tensor,
    *,
    layer: str = "",
    heads: Sequence[int] | None = None,
    query_positions: Sequence[int] | Tensor | None = None,
    query_mask: Tensor | None = None,
    special_keys: Tensor | None = None,
) -> list[HeadStats]:
    """Statistics of each head of one attention tensor.

    Args:
        weights: ``(B, H, Nq, Nk)`` attention weights (rows sum to 1, or 0 when fully masked).
        layer: the name to put in the rows.
        heads: the head index of each of the ``H`` slices (default ``0..H-1``).
        query_positions: each row's position on the key axis (default ``0..Nq-1``).
        query_mask: bool ``(B, Nq)``, ``True`` = count the row (e.g. real, not padded, queries).
        special_keys: bool ``(B, Nk)`` or ``(Nk,)``, ``True`` = special token.

    Example:
        >>> w = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # B=1, H=1, 2 queries, 2 keys
        >>> row = head_stats(w)[0]
        >>> round(row.entropy, 4), row.previous, row.diagonal  # (0 + log 2) / 2
        (0.3466, 0.5, 0.75)
    """
    weights = _check_weights(weights)
    b, h, q, nk = weights.shape
    if heads is None:
        heads = list(range(h))
    elif len(heads) != h:
        raise ValueError(f"heads must name each of the H={h} slices, got {len(heads)} indices")
    if query_positions is None:
        positions = torch.arange(q)
    else:
        positions = torch.as_tensor(query_positions, dtype=torch.long).flatten()
        if positions.numel() != q:
            raise ValueError(f"query_positions must have Nq={q} entries, got {positions.numel()}")
    qmask = None if query_mask is None else _as_bool_mask(query_mask, "query_mask", (b, q))
    special = None if special_keys is None else _as_bool_mask(special_keys, "special_keys", (b, nk))
    totals, counts = _sums(weights, positions, qmask, special)
    return _rows(layer, heads, totals, counts)


def record_stats(
    record: AttentionRecord,
    *,
    call: int | None = -1,
    query_masks: Mapping[str, Tensor] | None = None,
    special_keys: Mapping[str, Tensor] | None = None,
) -> list[HeadStats]:
    """:func:`head_stats` for every module of a capture, in capture order.

    Args:
        record: from :func:`~multihead.viz.capture.capture_attention`.
        call: which call of each module (default the last); ``None`` pools every call,
            weighting each query row equally.
        query_masks: module name -> bool ``(B, Nq)`` rows to count (for the full ``Nq`` of the
            call; the recorded rows are picked out).
        special_keys: module name -> bool ``(B, Nk)`` or ``(Nk,)`` special keys.

    Example:
        >>> from multihead import MultiHeadAttention
        >>> from multihead.viz.capture import capture_attention
        >>> mha = MultiHeadAttention(8, 2)
        >>> with capture_attention(mha) as rec:
        ...     _ = mha(torch.randn(1, 4, 8), causal=True)
        >>> rows = record_stats(rec)
        >>> len(rows), rows[0].first > 0  # the first query can only attend to key 0
        (2, True)
    """
    if not isinstance(record, AttentionRecord):
        raise TypeError(f"record must be an AttentionRecord, got {type(record).__name__}")
    if call is not None and (isinstance(call, bool) or not isinstance(call, int)):
        raise TypeError(f"call must be an int or None, got {type(call).__name__}")
    query_masks = query_masks or {}
    special_keys = special_keys or {}
    rows: list[HeadStats] = []
    for name, tensors in record.items():
        infos = record.calls[name]
        if not tensors:
            continue
        if call is None:
            picked = list(range(len(tensors)))
        elif not -len(tensors) <= call < len(tensors):
            raise ValueError(
                f"call must index the {len(tensors)} recorded call(s) of {name!r}, got {call}"
            )
        else:
            picked = [call]
        totals: dict[str, Tensor] = {}
        counts: dict[str, Tensor] = {}
        for i in picked:
            w, info = tensors[i], infos[i]
            b, _, q, nk = w.shape
            qmask = None
            if name in query_masks:
                full = _as_bool_mask(query_masks[name], "query_masks", (b, info.num_queries))
                qmask = full[:, info.query_rows]
            special = None
            if name in special_keys:
                special = _as_bool_mask(special_keys[name], "special_keys", (b, nk))
            t, c = _sums(w, torch.tensor(info.query_positions, dtype=torch.long), qmask, special)
            for key in t:
                totals[key] = totals[key] + t[key] if key in totals else t[key]
                counts[key] = counts[key] + c[key] if key in counts else c[key]
        rows.extend(_rows(name, infos[picked[0]].heads, totals, counts))
    return rows


def stats_markdown(rows: Sequence[HeadStats], *, digits: int = 2) -> str:
    """A Markdown table of :class:`HeadStats` rows.

    Example:
        >>> row = HeadStats(layer="enc.0", head=1, entropy=0.5, distance=1.25, first=0.1,
        ...                 special=None, previous=0.25, diagonal=0.5, rows=3)
        >>> print(stats_markdown([row]).splitlines()[2])
        | enc.0 | 1 | 0.50 | 1.25 | 0.10 | – | 0.25 | 0.50 |
    """
    header = (
        "| layer | head | entropy (nats) | distance | first | special | previous | diagonal |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )

    def fmt(value: float | None) -> str:
        if value is None or math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"

    lines = [header]
    for r in rows:
        cells = [r.layer, str(r.head)] + [fmt(getattr(r, name)) for name in _SCORES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stats_dicts(rows: Sequence[HeadStats]) -> list[dict[str, object]]:
    """The rows as plain dicts (for JSON), ``nan`` written as ``None``."""
    out = []
    for r in rows:
        d: dict[str, object] = {}
        for f in fields(r):
            v = getattr(r, f.name)
            d[f.name] = None if isinstance(v, float) and math.isnan(v) else v
        out.append(d)
    return out


# ------------------------------------------------------------------------------ importance


def _check_head_map(
    model: nn.Module, heads: Mapping[str, Sequence[int]], name: str
) -> dict[str, tuple[MultiHeadAttention, list[int]]]:
    if not isinstance(heads, Mapping):
        raise TypeError(f"{name} must map module names to head lists, got {type(heads).__name__}")
    modules = attention_modules(model)
    out = {}
    for module_name, hs in heads.items():
        if module_name not in modules:
            raise ValueError(
                f"{name} names unknown attention module {module_name!r}; "
                f"expected one of {list(modules)}"
            )
        mha = modules[module_name]
        items = list(hs)
        for h in items:
            if isinstance(h, bool) or not isinstance(h, int):
                raise TypeError(f"{name}[{module_name!r}] must hold ints, got {h!r}")
            if not 0 <= h < mha.num_heads:
                raise ValueError(
                    f"{name}[{module_name!r}] heads must be in [0, {mha.num_heads}), got {h}"
                )
        out[module_name] = (mha, sorted(set(items)))
    return out


@contextlib.contextmanager
def mask_heads(model: nn.Module, heads: Mapping[str, Sequence[int]]) -> Iterator[None]:
    """Silence heads inside the block: their outputs are zeroed before ``out_proj``.

    Args:
        model: a model holding :class:`~multihead.MultiHeadAttention` modules (or one itself,
            whose name is ``""``).
        heads: module name -> head indices to silence.

    Works through a temporary forward pre-hook on each ``out_proj``, so modules stay unchanged
    and the hook is gone after the block, even on error.

    Example:
        >>> from multihead import MultiHeadAttention
        >>> mha = MultiHeadAttention(8, 2, bias=False)
        >>> x = torch.randn(1, 3, 8)
        >>> with mask_heads(mha, {"": [0, 1]}):
        ...     out, _ = mha(x)
        >>> bool((out == 0).all())  # no head left and no bias
        True
    """
    chosen = _check_head_map(model, heads, "heads")
    handles = []
    for mha, hs in chosen.values():
        if not hs:
            continue
        dv = mha.v_head_dim
        keep = torch.ones(mha.num_heads, dv, dtype=torch.bool, device=mha.out_proj.weight.device)
        keep[hs] = False
        keep = keep.flatten()  # (H * Dv,), head-major as out_proj's input is laid out

        def pre_hook(module: nn.Module, args: tuple[Tensor, ...], keep: Tensor = keep) -> tuple:
            (x,) = args  # (B, N, H * Dv)
            # masked_fill rather than a product: a NaN in a silenced head must not survive.
            return (x.masked_fill(~keep, 0.0),)

        handles.append(mha.out_proj.register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def head_importance(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], float],
    *,
    modules: Sequence[str] | None = None,
    higher_is_better: bool = True,
) -> dict[tuple[str, int], float]:
    """How much a metric drops when each head alone is masked (Michel et al., 2019).

    Args:
        model: the model; it is not modified.
        eval_fn: ``eval_fn(model) -> float``, the metric on a held-out set (e.g. exact match).
        modules: attention module names to test (default all).
        higher_is_better: the metric's direction; the drop is always "baseline minus masked"
            in the good direction, so a positive value means the head helps.

    Returns:
        ``{(module name, head): drop}``, with ``eval_fn`` called ``1 + total heads`` times.

    Example:
        >>> from multihead import MultiHeadAttention
        >>> mha = MultiHeadAttention(4, 2)
        >>> x = torch.randn(1, 3, 4)
        >>> drops = head_importance(mha, lambda m: m(x)[0].abs().sum().item())
        >>> sorted(drops)
        [('', 0), ('', 1)]
    """
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable, got {type(eval_fn).__name__}")
    found = attention_modules(model)
    names = list(found) if modules is None else list(modules)
    heads = {n: list(range(found[n].num_heads)) if n in found else [] for n in names}
    chosen = _check_head_map(model, heads, "modules")
    sign = 1.0 if higher_is_better else -1.0
    baseline = float(eval_fn(model))
    drops: dict[tuple[str, int], float] = {}
    for name, (_, hs) in chosen.items():
        for h in hs:
            with mask_heads(model, {name: [h]}):
                drops[(name, h)] = sign * (baseline - float(eval_fn(model)))
    return drops
