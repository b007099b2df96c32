"""The attention sweep behind ``multihead bench``: our backends against PyTorch, one run.

Every registered backend of :mod:`multihead.functional` (exact and approximate) is timed
through the public :func:`~multihead.functional.attention` call, next to two peers measured in
the same process on the same inputs:

* ``torch-sdpa``: :func:`torch.nn.functional.scaled_dot_product_attention`, called directly;
* ``naive``: the textbook ``softmax(Q K^T / sqrt(D)) V`` with the ``(B, H, N, N)`` scores
  materialized (``torch.nn.MultiheadAttention`` is compared at module level in
  ``benchmarks/bench_mha.py``).

Each case (implementation, length ``N``, forward or forward+backward, causal or not) reports
its median wall time, its achieved GFLOP/s by the convention of
:func:`multihead.bench.harness.attention_flops` against this machine's measured float32
matmul rate, and, when asked, its peak memory from a fresh child process. Cases predicted to
exceed the memory budget or the per-case time budget are skipped with a note, so the default
sweep of ``N = 256 ... 65,536`` ends in minutes rather than hours.

Example:
    >>> report = run_suite(BenchConfig.quick(), progress=False)
    >>> "torch-sdpa" in {r.impl for r in report.results}
    True
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional import attention, backend_names, get_backend
from . import harness

__all__ = [
    "DTYPES",
    "MODES",
    "PEERS",
    "BenchConfig",
    "BenchReport",
    "CaseResult",
    "memory_probe",
    "naive_attention",
    "predicted_bytes",
    "run_suite",
    "write_report",
]

PEERS = ("torch-sdpa", "naive")
MODES = ("fwd", "fwdbwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LENGTHS = tuple(2**p for p in range(8, 17))  # 256 ... 65,536
# Backends the efficient-kernel module registers; if any is missing we ask it to register.
EFFICIENT_BACKENDS = ("chunked", "local", "linear", "lowrank")
# Implementations that hold (B, H, N, N) tensors; every other one is O(N) in memory.
QUADRATIC_MEMORY = {"naive": (2, 3), "math": (3, 5)}  # live N x N copies: (fwd, fwd+bwd)
# How time grows with N where the registry's `exact` flag does not tell: "local" is exact for
# its window but costs O(N·W). Otherwise exact backends are O(N²) and approximate ones O(N).
TIME_EXPONENT = {"local": 1}


# ------------------------------------------------------------------------------ configuration


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What ``multihead bench`` sweeps; shared by the Python API and the command line.

    Example:
        >>> BenchConfig(lengths=(256, 512), backends=("sdpa",), modes=("fwd",)).lengths
        (256, 512)
    """

    lengths: tuple[int, ...] = DEFAULT_LENGTHS  # sequence lengths N (Nq = Nk), ascending
    backends: tuple[str, ...] | None = None  # None: every registered backend
    peers: tuple[str, ...] = PEERS  # measured beside ours, in the same process
    modes: tuple[str, ...] = MODES  # "fwd" (no autograd) and/or "fwdbwd"
    causal: tuple[bool, ...] = (False, True)
    window: int = 256  # the "local" backend's window; every other backend attends to all keys
    batch: int = 1  # long-sequence shapes: one sequence, 8 heads of 64, as in the issue
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    memory: bool = False  # peak RSS per case in a fresh process: accurate but ~2 s per case
    max_memory_gb: float | None = None  # None: 60% of the memory available at start
    case_budget_s: float = 5.0  # per case; longer predicted calls are skipped with a note
    repeat: int = 5  # at most this many timed runs per case, fewer if the budget runs out
    threads: int | None = None  # torch intra-op threads while timing; None: torch's default
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        lengths = tuple(self.lengths)
        if not lengths:
            raise ValueError(f"{owner}.lengths must name at least one length, got ()")
        for n in lengths:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{owner}.lengths must be positive ints, got {n!r}")
        object.__setattr__(self, "lengths", tuple(sorted(set(lengths))))
        if self.backends is not None:
            object.__setattr__(self, "backends", tuple(self.backends))
        for name, allowed in (("peers", PEERS), ("modes", MODES)):
            values = tuple(getattr(self, name))
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"{owner}.{name} must be among {allowed}, got {unknown}")
            object.__setattr__(self, name, values)
        if not self.modes:
            raise ValueError(f"{owner}.modes must name at least one of {MODES}, got ()")
        causal = tuple(self.causal)
        if not causal or not all(isinstance(c, bool) for c in causal):
            raise ValueError(f"{owner}.causal must be a non-empty tuple of bools, got {causal!r}")
        object.__setattr__(self, "causal", causal)
        for name in ("window", "batch", "heads", "head_dim", "repeat"):
            _check_positive_int(owner, name, getattr(self, name))
        if self.threads is not None:
            _check_positive_int(owner, "threads", self.threads)
        if self.dtype not in DTYPES:
            raise ValueError(f"{owner}.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.memory, bool):
            raise TypeError(f"{owner}.memory must be a bool, got {type(self.memory).__name__}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ValueError(f"{owner}.max_memory_gb must be > 0, got {self.max_memory_gb!r}")
        if not self.case_budget_s > 0:
            raise ValueError(f"{owner}.case_budget_s must be > 0, got {self.case_budget_s!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A tiny sweep (seconds): two short lengths, small heads, every implementation, one
        thread (tiny matrices gain nothing from more and suffer most on a busy machine)."""
        settings: dict[str, Any] = dict(
            lengths=(64, 128),
            heads=2,
            head_dim=16,
            window=16,
            repeat=2,
            case_budget_s=0.5,
            threads=1,
        )
        settings.update(overrides)
        return cls(**settings)

    def resolved_backends(self) -> tuple[str, ...]:
        """The backends this sweep times; unknown names are a ``ValueError`` listing the
        registered ones."""
        registered = backend_names()
        if self.backends is None:
            return tuple(registered)
        unknown = [b for b in self.backends if b not in registered]
        if unknown:
            raise ValueError(
                f"backends must be among the registered {registered}, got unknown {unknown}"
            )
        return self.backends

    def memory_budget_bytes(self) -> float:
        if self.max_memory_gb is not None:
            return self.max_memory_gb * 2**30
        return 0.6 * harness.available_memory_bytes()


# ------------------------------------------------------------------------------ one case


def naive_attention(q: Tensor, k: Tensor, v: Tensor, causal_mask: Tensor | None) -> Tensor:
    """The textbook ``softmax(Q K^T / sqrt(D)) V`` with the scores materialized.

    ``causal_mask`` is a bool ``(N, N)`` with ``True`` above the diagonal (forbidden), built
    once outside the timed region, or ``None``.

    Example:
        >>> q = torch.randn(1, 2, 4, 8)
        >>> naive_attention(q, q, q, None).shape
        torch.Size([1, 2, 4, 8])
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    if causal_mask is not None:
        scores = scores.masked_fill(causal_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@dataclass(frozen=True)
class _Case:
    impl: str
    n: int
    mode: str
    causal: bool
    batch: int
    heads: int
    head_dim: int
    window: int
    dtype: str
    seed: int

    def kwargs(self) -> dict[str, object]:
        return asdict(self)


def _case_forward(case: _Case) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    if case.impl == "torch-sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
    if case.impl == "naive":
        # Forbidden = strictly above the diagonal; made once, as a user of the naive code would.
        mask = (
            torch.ones(case.n, case.n, dtype=torch.bool).triu(1) if case.causal else None
        )  # (N, N)
        return lambda q, k, v: naive_attention(q, k, v, mask)
    window = case.window if case.impl == "local" else None
    return lambda q, k, v: (
        attention(q, k, v, causal=case.causal, window=window, backend=case.impl).output
    )


def _build(case: _Case) -> Callable[[], None]:
    """The timed callable of one case, with its inputs made (and not timed) here."""
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    backward = case.mode == "fwdbwd"
    shape = (case.batch, case.heads, case.n, case.head_dim)  # (B, H, N, D)
    q, k, v = (
        torch.randn(shape, generator=gen).to(dtype).requires_grad_(backward) for _ in range(3)
    )
    forward = _case_forward(case)
    if not backward:

        def run() -> None:
            with torch.no_grad():
                forward(q, k, v)

        return run
    grad = torch.randn(shape, generator=gen).to(dtype)

    def run_backward() -> None:
        forward(q, k, v).backward(grad)
        q.grad = k.grad = v.grad = None

    return run_backward


def memory_probe(**kwargs: Any) -> None:
    """Child-process entry of the memory measurement: build one case, mark the baseline, run it
    once (see :func:`multihead.bench.harness.peak_rss_mib`)."""
    run = _build(_Case(**kwargs))
    harness.mark_baseline()
    run()


def predicted_bytes(
    impl: str,
    n: int,
    *,
    mode: str,
    causal: bool,
    batch: int,
    heads: int,
    head_dim: int,
    dtype: str = "float32",
) -> float:
    """A rough upper estimate of a case's extra memory, used only to skip cases that would not
    fit (never reported as a measurement).

    ``naive`` holds ``B·H·N²`` scores: 2 live copies in the forward, 3 with backward (scores,
    probabilities and their gradient); ``math`` (float32 logits, a masked copy, exponentials)
    5 with backward. Our registry path also builds an ``N x N`` bool causal/window structure
    (1 byte per entry, twice while it is combined). Everything else is O(N·D).

    Example:
        >>> predicted_bytes("naive", 16384, mode="fwdbwd", causal=False, batch=1, heads=8,
        ...                 head_dim=64) / 2**30
        24.375
    """
    elem = DTYPES[dtype].itemsize
    backward = mode == "fwdbwd"
    linear = batch * heads * n * head_dim * elem * (12 if backward else 4)
    quadratic = 0.0
    if impl in QUADRATIC_MEMORY:
        copies = QUADRATIC_MEMORY[impl][1 if backward else 0]
        score_elem = max(elem, 4) if impl == "math" else elem  # math's softmax is float32
        quadratic = batch * heads * n * n * score_elem * copies
    if impl not in PEERS and (causal or impl == "local"):
        quadratic += 2.0 * n * n
    return linear + quadratic


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


# ------------------------------------------------------------------------------ the sweep


def _predicted_seconds(
    impl: str, exact: bool, n: int, last: tuple[int, float] | None, flops: float, peak: float
) -> float | None:
    """Per-call time extrapolated from the fastest run at the last measured length (the
    fastest, because a busy machine only ever adds time), as ``N²`` for exact and ``N`` for
    approximate or windowed backends; without one, for a quadratic implementation, from its
    FLOPs at half the matmul rate (optimistic, so only the hopeless are skipped)."""
    exponent = TIME_EXPONENT.get(impl, 2 if exact else 1)
    if last is not None:
        n0, t0 = last
        return t0 * (n / n0) ** exponent
    if exponent == 2:
        return flops / (0.5 * peak * 1e9)
    return None


def run_suite(config: BenchConfig, *, progress: bool = True) -> BenchReport:
    """Run the sweep described by ``config`` and return every case's result.

    Unknown backends raise ``ValueError`` before anything runs. Inside the sweep a backend that
    cannot run a case (e.g. it does not support ``causal``) is recorded with its reason.

    Example:
        >>> cfg = BenchConfig.quick(backends=("sdpa",), peers=("naive",), modes=("fwd",))
        >>> [r.impl for r in run_suite(cfg, progress=False).results][:2]
        ['sdpa', 'naive']
    """
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _sweep(config, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _sweep(config: BenchConfig, *, progress: bool) -> BenchReport:
    from tqdm import tqdm  # imported here: `multihead --help` should not pay for it

    backends = config.resolved_backends()
    impls = [*backends, *config.peers]
    exact = {b: get_backend(b).exact for b in backends} | dict.fromkeys(config.peers, True)
    peak = harness.matmul_gflops(2048)
    budget = config.memory_budget_bytes()
    groups = [(m, c) for m in config.modes for c in config.causal]
    total = len(config.lengths) * len(groups) * len(impls)
    last: dict[tuple[str, str, bool], tuple[int, float]] = {}
    stopped: dict[tuple[str, str, bool], str] = {}
    results: list[CaseResult] = []
    bar = tqdm(total=total, desc="bench", unit="case", disable=not progress, leave=False)
    try:
        for n in config.lengths:
            for mode, causal in groups:
                flops = attention_flops_for(config, n, mode=mode, causal=causal)
                for impl in impls:
                    bar.set_postfix_str(f"N={n} {mode} {'causal ' if causal else ''}{impl}")
                    key = (impl, mode, causal)
                    results.append(
                        _run_case(
                            config,
                            impl,
                            n,
                            mode,
                            causal,
                            exact=exact[impl],
                            flops=flops,
                            peak=peak,
                            budget=budget,
                            last=last,
                            stopped=stopped,
                            key=key,
                        )
                    )
                    bar.update(1)
    finally:
        bar.close()
    notes = (
        f"memory budget {budget / 2**30:.1f} GiB"
        + (" (60% of available RAM)" if config.max_memory_gb is None else "")
        + f"; time budget {config.case_budget_s:g} s per case",
        "approximate backends are charged the dense FLOP count, so their GFLOP/s is "
        "dense-equivalent and may exceed the matmul rate",
    )
    return BenchReport(
        config=config,
        machine=harness.machine_summary(),
        matmul_gflops=peak,
        flop_convention=(
            "forward 4·B·H·N²·D (halved when causal), forward+backward "
            f"{harness.FWD_BWD_FLOP_FACTOR}x that"
        ),
        results=tuple(results),
        notes=notes,
    )


def attention_flops_for(config: BenchConfig, n: int, *, mode: str, causal: bool) -> float:
    """:func:`~multihead.bench.harness.attention_flops` for one case of ``config``."""
    return harness.attention_flops(
        config.batch,
        config.heads,
        n,
        n,
        config.head_dim,
        causal=causal,
        backward=mode == "fwdbwd",
    )


def _run_case(
    config: BenchConfig,
    impl: str,
    n: int,
    mode: str,
    causal: bool,
    *,
    exact: bool,
    flops: float,
    peak: float,
    budget: float,
    last: dict[tuple[str, str, bool], tuple[int, float]],
    stopped: dict[tuple[str, str, bool], str],
    key: tuple[str, str, bool],
) -> CaseResult:
    predicted = predicted_bytes(
        impl,
        n,
        mode=mode,
        causal=causal,
        batch=config.batch,
        heads=config.heads,
        head_dim=config.head_dim,
        dtype=config.dtype,
    )
    result: dict[str, Any] = dict(
        impl=impl,
        kind="peer" if impl in PEERS else "ours",
        exact=exact,
        n=n,
        mode=mode,
        causal=causal,
        predicted_gib=predicted / 2**30,
    )

    def skipped(note: str) -> CaseResult:
        return CaseResult(**result, median_ms=None, repeat=0, gflops=None, peak_mib=None, note=note)

    if key in stopped:
        return skipped(stopped[key])
    if predicted > budget:
        return skipped(
            f"skipped: predicted {predicted / 2**30:.1f} GiB > memory budget "
            f"{budget / 2**30:.1f} GiB (--max-memory-gb)"
        )
    seconds = _predicted_seconds(impl, exact, n, last.get(key), flops, peak)
    if seconds is not None and seconds > config.case_budget_s:
        return skipped(
            f"skipped: predicted ~{seconds:.3g} s per call > case budget "
            f"{config.case_budget_s:g} s (--case-budget)"
        )
    case = _Case(
        impl=impl,
        n=n,
        mode=mode,
        causal=causal,
        batch=config.batch,
        heads=config.heads,
        head_dim=config.head_dim,
        window=config.window,
        dtype=config.dtype,
        seed=config.seed,
    )
    try:
        timing = harness.time_within(
            _build(case), budget_s=config.case_budget_s, max_repeat=config.repeat
        )
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        # A backend that cannot run this kind of call says why; it is not retried at larger N.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        stopped[key] = f"not run: {reason}"
        return skipped(stopped[key])
    last[key] = (n, timing.min_s)
    peak_mib = None
    note = ""
    if config.memory:
        try:
            peak_mib = harness.peak_rss_mib(
                "multihead.bench.suite",
                "memory_probe",
                case.kwargs(),
                timeout_s=60 + 10 * timing.median_s,
            )
        except Exception as exc:  # the child died (OOM) or hung: say so, keep the timing
            note = f"memory probe failed: {type(exc).__name__}"
    return CaseResult(
        **result,
        median_ms=timing.median_ms,
        repeat=timing.repeat,
        gflops=flops / timing.median_s / 1e9,
        peak_mib=peak_mib,
        note=note,
    )


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
    harness.write_atomic(paths["md"], "# multihead bench\n\n" + report.to_markdown())
    harness.write_atomic(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    harness.write_atomic(paths["png"], plot_report(report))
    return paths


def with_overrides(config: BenchConfig, **overrides: Any) -> BenchConfig:
    """``config`` with every override that is not ``None`` applied.

    Example:
        >>> with_overrides(BenchConfig.quick(), batch=2, heads=None).batch
        2
    """
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
