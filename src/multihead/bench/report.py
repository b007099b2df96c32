"""Results of a :mod:`multihead.bench.suite` sweep: the report, its Markdown table, its plot
and the files ``multihead bench`` writes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._files import write_atomic
from . import harness
from .config import PEERS, BenchConfig

__all__ = ["BenchReport", "CaseResult", "plot_report", "write_report"]


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, kw_only=True)
class CaseResult:
    """One measured (or skipped) case. Times in ms, memory in MiB; ``None`` when not measured,
    with the reason in ``note``."""

    impl: str
    kind: str  # "ours" (a registered backend) or "peer"
    exact: bool
    n: int
    mode: str
    causal: bool
    median_ms: float | None
    repeat: int
    gflops: float | None  # dense-equivalent, see harness.attention_flops
    peak_mib: float | None
    predicted_gib: float
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class BenchReport:
    """Everything one sweep measured, with the machine and conventions it was measured under."""

    config: BenchConfig
    machine: str
    matmul_gflops: float  # float32 2048 x 2048 matmul on this machine, at the start
    flop_convention: str
    results: tuple[CaseResult, ...]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what ``--json`` prints and ``bench.json`` holds)."""
        return {
            "config": {f.name: getattr(self.config, f.name) for f in fields(self.config)},
            "machine": self.machine,
            "matmul_gflops": self.matmul_gflops,
            "flop_convention": self.flop_convention,
            "results": [asdict(r) for r in self.results],
            "notes": list(self.notes),
        }

    def groups(self) -> list[tuple[str, bool]]:
        """The ``(mode, causal)`` groups in sweep order."""
        seen: dict[tuple[str, bool], None] = {}
        for r in self.results:
            seen.setdefault((r.mode, r.causal), None)
        return list(seen)

    def impls(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.results:
            seen.setdefault(r.impl, None)
        return list(seen)

    def to_markdown(self) -> str:
        """Per (mode, causal) group: time (with the ratio to ``torch-sdpa``), achieved GFLOP/s
        (with the share of the matmul rate), peak memory when measured, and skip notes."""
        c = self.config
        lines = [
            f"{self.machine}",
            "",
            f"B={c.batch}, H={c.heads}, D={c.head_dim}, {c.dtype}, local window {c.window}; "
            f"float32 2048x2048 matmul: {self.matmul_gflops:.1f} GFLOP/s. "
            f"FLOPs: {self.flop_convention}",
            "",
            "Cells: median ms (time / torch-sdpa at the same N; < 1 is faster than PyTorch); "
            "GFLOP/s (% of the matmul rate); peak MiB (memory / torch-sdpa).",
        ]
        lines += [f"- {note}" for note in self.notes]
        impls = self.impls()
        for mode, causal in self.groups():
            rows = [r for r in self.results if r.mode == mode and r.causal == causal]
            title = f"{'forward + backward' if mode == 'fwdbwd' else 'forward'}, " + (
                "causal" if causal else "not causal"
            )
            lines += ["", f"### {title}", ""]
            lines.append(self._pivot(rows, impls, "time"))
            lines += ["", self._pivot(rows, impls, "gflops")]
            if any(r.peak_mib is not None for r in rows):
                lines += ["", self._pivot(rows, impls, "memory")]
            skipped = _collapse_notes(rows, impls)
            if skipped:
                lines += [""] + [f"- {s}" for s in skipped]
        return "\n".join(lines) + "\n"

    def _pivot(self, rows: list[CaseResult], impls: list[str], what: str) -> str:
        by = {(r.n, r.impl): r for r in rows}
        header = {"time": "N \\ ms", "gflops": "N \\ GFLOP/s", "memory": "N \\ peak MiB"}[what]
        table = []
        for n in sorted({r.n for r in rows}):
            ref = by.get((n, "torch-sdpa"))
            cells: list[object] = [n]
            for impl in impls:
                r = by.get((n, impl))
                cells.append(_cell(r, ref, what, self.matmul_gflops))
            table.append(cells)
        return harness.markdown_table([header, *impls], table)


def _cell(r: CaseResult | None, ref: CaseResult | None, what: str, peak: float) -> str:
    if r is None:
        return ""
    if what == "time":
        if r.median_ms is None:
            return "skip"
        ratio = ""
        if ref is not None and ref.median_ms and r.impl != "torch-sdpa":
            ratio = f" ({r.median_ms / ref.median_ms:.2f}x)"
        return f"{r.median_ms:.3g}{ratio}"
    if what == "gflops":
        if r.gflops is None:
            return "skip"
        return f"{r.gflops:.3g} ({100 * r.gflops / peak:.0f}%)"
    if r.peak_mib is None:
        return "skip" if r.median_ms is None else "n/a"
    ratio = ""
    if ref is not None and ref.peak_mib and r.impl != "torch-sdpa":
        ratio = f" ({r.peak_mib / ref.peak_mib:.2f}x)"
    return f"{r.peak_mib:.0f}{ratio}"


def _collapse_notes(rows: Iterable[CaseResult], impls: Sequence[str]) -> list[str]:
    """One line per implementation: the lengths it was skipped at and the first reason."""
    out = []
    for impl in impls:
        noted = [r for r in rows if r.impl == impl and r.note]
        if noted:
            ns = ", ".join(str(r.n) for r in noted)
            out.append(f"{impl} at N = {ns}: {noted[0].note}")
    return out


# ------------------------------------------------------------------------------ output


def plot_report(report: BenchReport) -> bytes:
    """PNG bytes: log-log time vs N (top) and peak memory vs N (bottom), one column per
    (mode, causal) group; peers dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = report.groups()
    fig = Figure(figsize=(4.2 * len(groups), 7.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(groups), squeeze=False)
    measured_memory = any(r.peak_mib is not None for r in report.results)
    # One colour per implementation in every panel, whichever ones a panel has points for.
    colors = {impl: f"C{i % 10}" for i, impl in enumerate(report.impls())}
    for col, (mode, causal) in enumerate(groups):
        rows = [r for r in report.results if r.mode == mode and r.causal == causal]
        title = f"{'fwd+bwd' if mode == 'fwdbwd' else 'fwd'}, {'causal' if causal else 'full'}"
        for row, attr, label in ((0, "median_ms", "median ms"), (1, "peak_mib", "peak MiB")):
            ax = axes[row][col]
            if row == 1 and not measured_memory:
                ax.text(0.5, 0.5, "memory not measured\n(run with --memory)", ha="center")
                ax.set_axis_off()
                continue
            for impl in report.impls():
                pts = [(r.n, getattr(r, attr)) for r in rows if r.impl == impl]
                pts = [(x, y) for x, y in pts if y is not None and y > 0]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    style = "--" if impl in PEERS else "-"
                    ax.plot(xs, ys, style, color=colors[impl], marker="o", ms=3, label=impl)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length N")
            ax.set_ylabel(label)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_report(report: BenchReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.md``, ``bench.json`` and ``bench.png`` into ``out_dir`` (each atomically);
    return their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "bench.md", "json": out / "bench.json", "png": out / "bench.png"}
    write_atomic(paths["md"], "# multihead bench\n\n" + report.to_markdown())
    write_atomic(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    write_atomic(paths["png"], plot_report(report))
    return paths
