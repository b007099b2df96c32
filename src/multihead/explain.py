"""The articles' worked example of multi-head attention, computed two ways and compared.

:func:`worked_example` runs the library (``MultiHeadAttention`` and the attention kernel) and
plain float64 arithmetic written out separately on the same matrices (row-vector convention:
Q = X W_Q, so ``nn.Linear`` holds W_Q^T) and raises if they disagree by more than 1e-9
(relative to the value, for values above 1);
:func:`render` prints the steps. The command line is :mod:`multihead.commands.explain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .functional import attention
from .modules.attention import MultiHeadAttention

Matrix = tuple[tuple[float, ...], ...]

X_DEFAULT: Matrix = ((1.0, 2.0), (3.0, 4.0))
W_V_DEFAULT: Matrix = ((0.0, 1.0), (1.0, 0.0))
MAX_ENTRY = 1e6  # largest magnitude of an input entry (see _as_array)
MAX_DIGITS = 15  # float64 holds about 15 significant decimal digits


def identity(n: int) -> Matrix:
    return tuple(tuple(1.0 if i == j else 0.0 for j in range(n)) for i in range(n))


@dataclass(frozen=True, kw_only=True)
class ExplainConfig:
    """The inputs of the worked example. Weight matrices left ``None`` are the identity, except
    ``w_v`` which defaults to the articles' swap [[0, 1], [1, 0]] when ``x`` is 2 wide."""

    x: Matrix = X_DEFAULT  # tokens as rows: (N, d_model)
    w_q: Matrix | None = None  # (d_model, d_model)
    w_k: Matrix | None = None
    w_v: Matrix | None = None
    w_o: Matrix | None = None
    num_heads: tuple[int, ...] = (1, 2)  # one explanation per head count
    causal: bool = False

    def matrices(self) -> dict[str, np.ndarray]:
        x = _as_array(self.x, "x")
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"x must be a non-empty matrix (N, d_model), got shape {x.shape}")
        d = x.shape[1]
        default_v = W_V_DEFAULT if d == 2 else identity(d)
        mats = {"x": x}
        for name, value, default in (
            ("w_q", self.w_q, identity(d)),
            ("w_k", self.w_k, identity(d)),
            ("w_v", self.w_v, default_v),
            ("w_o", self.w_o, identity(d)),
        ):
            m = _as_array(default if value is None else value, name)
            if m.shape != (d, d):
                raise ValueError(f"{name} must be ({d}, {d}) to match x, got shape {m.shape}")
            mats[name] = m
        for h in self.num_heads:
            if isinstance(h, bool) or not isinstance(h, int) or h <= 0 or d % h != 0:
                raise ValueError(
                    f"num_heads must be positive ints dividing d_model={d}, got {list(self.num_heads)}"
                )
        return mats


def _as_array(m: Any, name: str) -> np.ndarray:
    try:
        arr = np.array(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a rectangular matrix of numbers, got {m!r}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    # NaN and inf have no worked example to show; huge entries overflow Q K^T in float32 (the
    # library's check would then blame itself), so the example stays within +-MAX_ENTRY.
    bad = np.argwhere(~np.isfinite(arr) | (np.abs(arr) > MAX_ENTRY))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise ValueError(
            f"{name} must hold finite numbers within +-{MAX_ENTRY:g}, got {arr[i, j]} at row "
            f"{i + 1}, column {j + 1}"
        )
    return arr


@dataclass
class HeadSteps:
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    scores: np.ndarray  # Q K^T
    scaled: np.ndarray  # Q K^T / sqrt(d_k), masked entries -inf
    weights: np.ndarray
    output: np.ndarray


@dataclass
class Explanation:
    num_heads: int
    d_k: int
    heads: list[HeadSteps] = field(default_factory=list)
    concat: np.ndarray | None = None
    output: np.ndarray | None = None
    max_disagreement: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def mat(a: np.ndarray) -> list[list[float | None]]:
            return [[None if not math.isfinite(v) else float(v) for v in row] for row in a]

        return {
            "num_heads": self.num_heads,
            "d_k": self.d_k,
            "heads": [
                {
                    "Q": mat(h.q),
                    "K": mat(h.k),
                    "V": mat(h.v),
                    "QK^T": mat(h.scores),
                    "scaled": mat(h.scaled),
                    "weights": mat(h.weights),
                    "row_sums": [float(s) for s in h.weights.sum(-1)],
                    "output": mat(h.output),
                }
                for h in self.heads
            ],
            "concat": mat(self.concat) if self.concat is not None else None,
            "output": mat(self.output) if self.output is not None else None,
            "max_disagreement_vs_float64": self.max_disagreement,
        }


def plain_float64(mats: dict[str, np.ndarray], num_heads: int, causal: bool) -> Explanation:
    """The example in plain NumPy float64, one formula per line (the cross-check)."""
    x = mats["x"]
    n, d = x.shape
    d_k = d // num_heads
    q_all, k_all, v_all = x @ mats["w_q"], x @ mats["w_k"], x @ mats["w_v"]
    result = Explanation(num_heads=num_heads, d_k=d_k)
    for h in range(num_heads):
        cols = slice(h * d_k, (h + 1) * d_k)  # head h owns these columns of Q, K and V
        q, k, v = q_all[:, cols], k_all[:, cols], v_all[:, cols]
        scores = q @ k.T
        scaled = scores / math.sqrt(d_k)
        if causal:
            scaled = np.where(np.tril(np.ones((n, n), dtype=bool)), scaled, -np.inf)
        e = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        weights = e / e.sum(axis=1, keepdims=True)
        result.heads.append(HeadSteps(q, k, v, scores, scaled, weights, weights @ v))
    result.concat = np.concatenate([hs.output for hs in result.heads], axis=1)
    result.output = result.concat @ mats["w_o"]
    return result


def library(mats: dict[str, np.ndarray], num_heads: int, causal: bool) -> Explanation:
    """The example computed by ``MultiHeadAttention`` and the attention kernel."""
    x = torch.tensor(mats["x"], dtype=torch.float64)[None]  # (1, N, d)
    d = x.shape[-1]
    mha = MultiHeadAttention(d, num_heads, bias=False, dtype=torch.float64).eval()
    with torch.no_grad():
        # nn.Linear computes x W^T, the articles x W: store the transposes.
        for proj, name in (
            (mha.q_proj, "w_q"),
            (mha.k_proj, "w_k"),
            (mha.v_proj, "w_v"),
            (mha.out_proj, "w_o"),
        ):
            proj.weight.copy_(torch.tensor(mats[name].T))
        q, k, v = mha.project(x, x, x)  # (1, H, N, d_k) each
        heads_out, weights = attention(q, k, v, causal=causal, need_weights=True)
        assert weights is not None
        concat = heads_out.transpose(1, 2).flatten(2)  # (1, N, H * d_k)
        output = mha.out_proj(concat)
        direct, _ = mha(x, causal=causal)
        if not torch.allclose(direct, output, rtol=1e-12, atol=1e-12):
            raise RuntimeError("MultiHeadAttention.forward disagrees with its own steps")
    d_k = mha.head_dim
    result = Explanation(num_heads=num_heads, d_k=d_k)
    n = x.shape[1]
    for h in range(num_heads):
        qh, kh = q[0, h], k[0, h]
        scores = qh @ kh.T
        scaled = scores * (1.0 / math.sqrt(d_k))
        if causal:
            scaled = scaled.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
        result.heads.append(
            HeadSteps(
                qh.numpy(),
                kh.numpy(),
                v[0, h].numpy(),
                scores.numpy(),
                scaled.numpy(),
                weights[0, h].numpy(),
                heads_out[0, h].numpy(),
            )
        )
    result.concat = concat[0].numpy()
    result.output = output[0].numpy()
    return result


def _disagreement(a: Explanation, b: Explanation) -> float:
    worst = 0.0
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for ha, hb in zip(a.heads, b.heads, strict=True):
        pairs += [(ha.q, hb.q), (ha.k, hb.k), (ha.v, hb.v), (ha.scores, hb.scores)]
        pairs += [(ha.scaled, hb.scaled), (ha.weights, hb.weights), (ha.output, hb.output)]
    assert a.concat is not None and b.concat is not None
    assert a.output is not None and b.output is not None
    pairs += [(a.concat, b.concat), (a.output, b.output)]
    for x, y in pairs:
        finite = np.isfinite(x) & np.isfinite(y)
        if not np.array_equal(np.isfinite(x), np.isfinite(y)):
            return math.inf
        if finite.any():
            # Relative to the value's size (at least 1): float64 keeps ~16 digits, so entries
            # near MAX_ENTRY have absolute rounding far above 1e-9 while still agreeing.
            gap = np.abs(x[finite] - y[finite]) / np.maximum(1.0, np.abs(y[finite]))
            worst = max(worst, float(gap.max()))
    return worst


def worked_example(config: ExplainConfig | None = None) -> list[Explanation]:
    """Compute the worked example for each head count in ``config.num_heads``.

    Example:
        >>> ex = worked_example(ExplainConfig(num_heads=(1,)))[0]
        >>> [round(float(w), 4) for w in ex.heads[0].weights[0]]
        [0.0142, 0.9858]
    """
    config = config or ExplainConfig()
    mats = config.matrices()
    results = []
    for h in config.num_heads:
        ours = library(mats, h, config.causal)
        check = plain_float64(mats, h, config.causal)
        ours.max_disagreement = _disagreement(ours, check)
        if not ours.max_disagreement <= 1e-9:
            raise RuntimeError(
                f"library and float64 arithmetic disagree by {ours.max_disagreement:g} "
                f"with {h} head(s)"
            )
        results.append(ours)
    return results


# ------------------------------------------------------------------------------------ printing


def _fmt(m: np.ndarray, digits: int) -> list[str]:
    cells = [["-inf" if v == -math.inf else f"{v:.{digits}f}" for v in row] for row in m]
    width = max(len(c) for row in cells for c in row)
    return ["[ " + "  ".join(c.rjust(width) for c in row) + " ]" for row in cells]


def render(results: list[Explanation], mats: dict[str, np.ndarray], digits: int = 4) -> str:
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be an int in [0, {MAX_DIGITS}], got {digits!r}")
    lines: list[str] = []

    def block(title: str, m: np.ndarray, note: str = "") -> None:
        lines.append(f"  {title}{('   ' + note) if note else ''}")
        lines.extend("    " + row for row in _fmt(m, digits))

    lines.append("Inputs (rows are tokens; Q = X W_Q, K = X W_K, V = X W_V)")
    for name in ("x", "w_q", "w_k", "w_v", "w_o"):
        block(name.upper().replace("_", "_"), mats[name])
    for ex in results:
        lines.append("")
        lines.append(
            f"=== {ex.num_heads} head(s): d_k = d_model / h = {ex.d_k}, "
            f"scale = 1/sqrt({ex.d_k}) = {1 / math.sqrt(ex.d_k):.{digits}f}"
        )
        for i, hs in enumerate(ex.heads, start=1):
            lines.append(
                f" head {i}"
                + (f" (columns {(i - 1) * ex.d_k}..{i * ex.d_k - 1})" if ex.num_heads > 1 else "")
            )
            block("Q", hs.q)
            block("K", hs.k)
            block("V", hs.v)
            block("Q K^T", hs.scores)
            block("Q K^T / sqrt(d_k)", hs.scaled)
            sums = ", ".join(f"{s:.{digits}f}" for s in hs.weights.sum(-1))
            block("softmax (attention weights)", hs.weights, f"row sums: {sums}")
            block("head output = weights V", hs.output)
        assert ex.concat is not None and ex.output is not None
        block("Concat(head_1, ..., head_h)", ex.concat)
        block("output = Concat W_O", ex.output)
        lines.append(
            f"  checked against plain float64 arithmetic: max difference {ex.max_disagreement:.1e}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI
