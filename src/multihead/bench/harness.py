"""Small, dependable measurement helpers.

Time: wall clock around synchronous calls (CUDA is synchronized when present), a few warm-up
runs, then the median of ``repeat`` runs. Peak memory on CPU: PyTorch has no allocator
statistics there, so a case is run in a fresh child process and its peak resident set size
(``ru_maxrss``) is read after subtracting the resident size just before the measured call.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    repeat: int

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 5) -> Timing:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs.

    Example:
        >>> t = time_it(lambda: sum(range(1000)), warmup=1, repeat=3)
        >>> t.repeat
        3
    """
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), repeat)


def current_rss_mib() -> float:
    """Resident set size of this process now (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    """Peak resident set size of this process, in MiB.

    Read from ``VmHWM`` in ``/proc/self/status`` (Linux), the high-water mark of this process
    image, which :func:`mark_baseline` resets. ``ru_maxrss`` is only the fallback: Linux
    carries it over ``exec`` from the parent, so a child started by a big benchmark process
    would report the parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_mib(
    module: str,
    function: str,
    kwargs: dict[str, object],
    *,
    search_path: str | None = None,
    timeout_s: float | None = None,
) -> float:
    """Run ``module.function(**kwargs)`` in a fresh Python process and return the extra peak
    memory (MiB) it needed beyond what the process held when the function was called.

    The function must do its own set-up and call ``multihead.bench.harness.mark_baseline()``
    right before the measured work. ``timeout_s`` bounds the child's wall time
    (``subprocess.TimeoutExpired`` past it).
    """
    code = (
        "import json, sys, importlib\n"
        "from multihead.bench import harness\n"
        f"fn = getattr(importlib.import_module({module!r}), {function!r})\n"
        f"fn(**json.loads({json.dumps(json.dumps(kwargs))}))\n"
        "print(json.dumps({'peak': harness.max_rss_mib(), 'base': harness._BASELINE}))\n"
    )
    env = dict(os.environ)
    paths = (search_path or os.getcwd(), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(0.0, data["peak"] - data["base"])


_BASELINE = 0.0


def mark_baseline() -> None:
    """Record the resident size before the measured work (see :func:`peak_rss_mib`).

    On Linux the peak (``VmHWM``) is also reset to the current size here (``clear_refs``), so
    temporaries of the set-up do not count; elsewhere set-up must not peak above what it
    keeps."""
    global _BASELINE
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    _BASELINE = current_rss_mib()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, 2]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Budgets, machine reference and FLOP counts (used by ``multihead bench`` and benchmarks/)
# --------------------------------------------------------------------------------------------

# Forward + backward relative to the forward (see :func:`attention_flops`): counting matmuls,
# the backward has 4 (dV, dP, dQ, dK) to the forward's 2, so fwd+bwd = 3x the forward. A kernel
# that recomputes Q K^T in the backward (chunked, FlashAttention) does 3.5x of real work; the
# useful work is still 3x, which is what GFLOP/s here report.
FWD_BWD_FLOP_FACTOR = 3.0


def attention_flops(
    batch: int, heads: int, nq: int, nk: int, head_dim: int, *, causal: bool, backward: bool
) -> float:
    """Floating-point operations of exact attention, by the convention the reports use.

    Forward: ``4·B·H·Nq·Nk·D`` (the ``QK^T`` and ``PV`` matrix products, 2 FLOPs per
    multiply-add; softmax and scaling are not counted), halved when ``causal`` (half the
    logits are masked), times :data:`FWD_BWD_FLOP_FACTOR` (3) for forward + backward.
    Approximate backends are charged the same dense count, so their GFLOP/s is
    "dense-equivalent" and can exceed the machine's matmul rate.

    Example:
        >>> attention_flops(1, 8, 1024, 1024, 64, causal=False, backward=False) / 1e9
        2.147483648
        >>> attention_flops(1, 8, 1024, 1024, 64, causal=True, backward=True) / 1e9
        3.221225472
    """
    for name, value in (
        ("batch", batch),
        ("heads", heads),
        ("nq", nq),
        ("nk", nk),
        ("head_dim", head_dim),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    flops = 4.0 * batch * heads * nq * nk * head_dim
    if causal:
        flops /= 2
    if backward:
        flops *= FWD_BWD_FLOP_FACTOR
    return flops


def matmul_gflops(
    size: int = 2048, *, repeat: int = 3, dtype: torch.dtype = torch.float32
) -> float:
    """This machine's measured GFLOP/s for one ``size x size`` matrix product (``2·size³``
    FLOPs), the reference that attention GFLOP/s are compared with.

    Example:
        >>> matmul_gflops(64, repeat=1) > 0
        True
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    timing = time_it(lambda: a @ b, warmup=1, repeat=repeat)
    return 2.0 * size**3 / timing.median_s / 1e9


def time_within(
    fn: Callable[[], object],
    *,
    budget_s: float,
    max_repeat: int = 5,
    warmup: int = 1,
) -> Timing:
    """Median wall time of ``fn()``, with as many repeats (1 to ``max_repeat``) as fit in
    ``budget_s`` seconds after ``warmup`` runs.

    The warm-up calls are timed too, so a call that is slower than the whole budget is
    measured once (the last warm-up) rather than repeated: long cases cost about
    ``warmup`` calls plus one, short ones ``max_repeat`` repeats.

    Example:
        >>> time_within(lambda: None, budget_s=0.1, max_repeat=3).repeat
        3
    """
    if max_repeat < 1:
        raise ValueError(f"max_repeat must be >= 1, got {max_repeat}")
    last = 0.0
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        fn()
        _sync()
        last = time.perf_counter() - start
    times: list[float] = []
    spent = 0.0
    while len(times) < max_repeat and (not times or spent + times[-1] <= budget_s):
        if not times and last > budget_s:
            # One call already exceeds the budget: the warm-up is the measurement.
            times.append(last)
            break
        start = time.perf_counter()
        fn()
        _sync()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return Timing(statistics.median(times), min(times), len(times))


def available_memory_bytes() -> int:
    """Memory available to new work (``MemAvailable`` on Linux), in bytes; falls back to the
    physical memory size where ``/proc/meminfo`` does not exist."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def machine_summary() -> str:
    """One line naming the software and hardware a measurement ran on.

    Example:
        >>> "threads" in machine_summary()
        True
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} "
        f"CPUs ({cpu}), Python {platform.python_version()}"
    )


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], *, warmup: int = 1, repeat: int = 3
) -> dict[str, Timing]:
    """Median wall time of each function, running them in turn (A, B, A, B, ...).

    On a machine shared with other work the load drifts during a measurement; interleaving
    spreads that drift over every function alike, so their *ratios* stay meaningful even
    when the absolute times do not.

    Example:
        >>> t = time_interleaved({"a": lambda: None, "b": lambda: None}, repeat=2)
        >>> sorted(t), t["a"].repeat
        (['a', 'b'], 2)
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(ts), min(ts), len(ts)) for name, ts in times.items()}


class _Tee(io.StringIO):
    """Keeps what is printed and still shows it on the real standard output."""

    def write(self, s: str) -> int:
        if sys.__stdout__ is not None:
            sys.__stdout__.write(s)
        return super().write(s)


def printed_report(run: Callable[[Any], None], argv: Any) -> str:
    """Call ``run(argv)``, showing what it prints, and return that text: the ``main(argv) ->
    str`` that ``benchmarks/run.py`` expects, for a benchmark written as a printing script."""
    out = _Tee()
    with contextlib.redirect_stdout(out):
        run(argv)
    return out.getvalue()
