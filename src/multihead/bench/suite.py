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

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional import attention, get_backend
from . import harness
from .config import DTYPES, MODES, PEERS, BenchConfig, with_overrides
from .report import BenchReport, CaseResult, plot_report, write_report

__all__ = [
    "DTYPES",
    "MODES",
    "PEERS",
    "BenchConfig",
    "BenchReport",
    "CaseResult",
    "memory_probe",
    "naive_attention",
    "plot_report",
    "predicted_bytes",
    "run_suite",
    "with_overrides",
    "write_report",
]

# Implementations that hold (B, H, N, N) tensors; every other one is O(N) in memory.
QUADRATIC_MEMORY = {"naive": (2, 3), "math": (3, 5)}  # live N x N copies: (fwd, fwd+bwd)
# How time grows with N where the registry's `exact` flag does not tell: "local" is exact for
# its window but costs O(N·W). Otherwise exact backends are O(N²) and approximate ones O(N).
TIME_EXPONENT = {"local": 1}


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
    sweep = _SweepState(config, exact=exact, peak=peak, budget=budget)
    results: list[CaseResult] = []
    bar = tqdm(total=total, desc="bench", unit="case", disable=not progress, leave=False)
    try:
        for n in config.lengths:
            for mode, causal in groups:
                flops = attention_flops_for(config, n, mode=mode, causal=causal)
                for impl in impls:
                    bar.set_postfix_str(f"N={n} {mode} {'causal ' if causal else ''}{impl}")
                    results.append(sweep.run_case(impl, n, mode, causal, flops))
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


@dataclass
class _SweepState:
    """What one sweep carries from case to case: the fixed budgets, and per (impl, mode,
    causal) the fastest time at the last length measured (to predict the next one) or the
    reason it stopped (a backend that cannot run a kind of call is not retried at larger N)."""

    config: BenchConfig
    exact: dict[str, bool]
    peak: float
    budget: float
    last: dict[tuple[str, str, bool], tuple[int, float]] = field(default_factory=dict)
    stopped: dict[tuple[str, str, bool], str] = field(default_factory=dict)

    def run_case(self, impl: str, n: int, mode: str, causal: bool, flops: float) -> CaseResult:
        config, budget, key = self.config, self.budget, (impl, mode, causal)
        exact, last, stopped = self.exact[impl], self.last, self.stopped
        # Where the case sits in the sweep, and the input shape every case of the sweep shares.
        what: dict[str, Any] = dict(impl=impl, n=n, mode=mode, causal=causal)
        shape = {name: getattr(config, name) for name in ("batch", "heads", "head_dim", "dtype")}
        predicted = predicted_bytes(**what, **shape)
        result: dict[str, Any] = dict(
            **what,
            kind="peer" if impl in PEERS else "ours",
            exact=exact,
            predicted_gib=predicted / 2**30,
        )

        def skipped(note: str) -> CaseResult:
            return CaseResult(
                **result, median_ms=None, repeat=0, gflops=None, peak_mib=None, note=note
            )

        if key in stopped:
            return skipped(stopped[key])
        if predicted > budget:
            return skipped(
                f"skipped: predicted {predicted / 2**30:.1f} GiB > memory budget "
                f"{budget / 2**30:.1f} GiB (--max-memory-gb)"
            )
        seconds = _predicted_seconds(impl, exact, n, last.get(key), flops, self.peak)
        if seconds is not None and seconds > config.case_budget_s:
            return skipped(
                f"skipped: predicted ~{seconds:.3g} s per call > case budget "
                f"{config.case_budget_s:g} s (--case-budget)"
            )
        case = _Case(**what, **shape, window=config.window, seed=config.seed)
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
