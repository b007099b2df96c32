"""Time every attention backend against PyTorch over sequence lengths, in one run.

Ours: every registered backend of multihead.functional (exact and approximate), called through
multihead.functional.attention. Peers, measured in the same process on the same inputs:
torch-sdpa (torch.nn.functional.scaled_dot_product_attention, called directly) and naive
(softmax(Q K^T / sqrt(D)) V with the N x N scores materialized). For each case: the median
time with its ratio to torch-sdpa, the achieved GFLOP/s against this machine's float32
2048 x 2048 matmul rate (measured at the start), and, with --memory, the peak memory.

FLOP convention: the forward counts 4·B·H·N²·D (the Q K^T and P V products), halved when
causal; forward+backward counts 3x the forward. Approximate backends are charged the same
dense count ("dense-equivalent" GFLOP/s).

Cases predicted to exceed the memory budget (naive: B·H·N²·4 bytes x2 forward, x3 with
backward) or the per-case time budget (extrapolated from the previous length) are skipped
with a note instead of run.

Options:
  --lengths N [N ...]    sequence lengths; "A:B" means the powers of 2 from A to B
                         (default 256:65536)
  --backends NAME,...    our backends to time (default: every registered one)
  --peers NAME,...       peers to time beside them: torch-sdpa, naive, or none (default both)
  --mode fwd|fwdbwd|both forward only, forward+backward, or both (default both)
  --causal / --no-causal / --both
                         causal attention only, full attention only, or both (default both)
  --window W             the local backend's sliding window (default 256)
  --batch B, --heads H, --head-dim D
                         input shape (B, H, N, D) (default 1, 8, 64)
  --dtype T              float32, bfloat16 or float16 (default float32)
  --memory               also measure peak memory, in a fresh process per case (slow)
  --max-memory-gb G      skip cases predicted to need more (default 60% of available RAM)
  --case-budget S        seconds per case; a case predicted to take longer per call is
                         skipped (default 5)
  --repeat R             at most R timed runs per case (default 5)
  --threads T            torch threads while timing (default: torch's default; --quick: 1)
  --out DIR              write DIR/bench.md, DIR/bench.json and DIR/bench.png (log-log time
                         and memory vs N)
  --json                 print the results as JSON instead of Markdown
  --quick                a tiny sweep in seconds (N = 64, 128; H=2, D=16, window 16); other
                         options given with it still apply

Example:
  multihead bench --quick
  multihead bench --lengths 1024:16384 --backends sdpa,chunked,local --mode fwdbwd --causal
  multihead bench --memory --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from multihead.bench import suite
from multihead.commands._common import (
    MAX_BATCH,
    MAX_BLOCK,
    MAX_WIDTH,
    add_threads_option,
    check_out_dir,
    float_in,
    int_in,
)
from multihead.functional import backend_names


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead bench`` (documented in the module docstring)."""
    parser.add_argument(
        "--lengths", nargs="+", metavar="N", help="lengths, or A:B for powers of 2 (256:65536)"
    )
    parser.add_argument("--backends", metavar="NAME,...", help="our backends (default all)")
    parser.add_argument("--peers", metavar="NAME,...", help="torch-sdpa,naive (default) or none")
    parser.add_argument("--mode", default=None, metavar="fwd|fwdbwd|both", help="default both")
    causal = parser.add_mutually_exclusive_group()
    causal.add_argument("--causal", dest="causal", action="store_const", const="causal")
    causal.add_argument("--no-causal", dest="causal", action="store_const", const="full")
    causal.add_argument(
        "--both", dest="causal", action="store_const", const="both", help="(default)"
    )
    parser.add_argument(
        "--window", type=int_in(1, MAX_BLOCK), help="local backend window (default 256)"
    )
    parser.add_argument("--batch", type=int_in(1, MAX_BATCH), help="B (default 1)")
    parser.add_argument("--heads", type=int_in(1, MAX_WIDTH), help="H (default 8)")
    parser.add_argument("--head-dim", type=int_in(1, MAX_WIDTH), help="D (default 64)")
    parser.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--memory", action="store_true", help="measure peak memory (slow)")
    parser.add_argument(
        "--max-memory-gb", type=float_in(0, lo_open=True), help="memory budget in GiB"
    )
    parser.add_argument(
        "--case-budget", type=float_in(0, 3600, lo_open=True), help="seconds per case (default 5)"
    )
    parser.add_argument("--repeat", type=int_in(1, 10_000), help="timed runs per case (default 5)")
    add_threads_option(parser, "torch threads while timing")
    parser.add_argument("--out", metavar="DIR", help="write bench.md, bench.json, bench.png")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--quick", action="store_true", help="tiny sweep (seconds)")


def parse_lengths(values: list[str]) -> tuple[int, ...]:
    """``["256", "1024,4096", "8192:32768"]`` -> lengths; ``A:B`` is the powers of 2 in
    ``[A, B]`` starting at ``A``.

    Example:
        >>> parse_lengths(["256:1024", "3000"])
        (256, 512, 1024, 3000)
    """
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                lo, hi = (_positive(p, "--lengths", part) for p in part.split(":", 1))
                if lo > hi:
                    raise ValueError(f"--lengths range must be A:B with A <= B, got {part!r}")
                n = lo
                while n <= hi:
                    out.append(n)
                    n *= 2
            else:
                out.append(_positive(part, "--lengths", part))
    if not out:
        raise ValueError("--lengths needs at least one positive integer, got none")
    return tuple(out)


def _positive(text: str, option: str, whole: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{option} must be positive integers, got {whole!r}") from None
    if value < 1:
        raise ValueError(f"{option} must be positive integers, got {whole!r}")
    return value


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())


# Options that go to BenchConfig as given (one left out is None and keeps the base config's
# value), each under its own name; --case-budget is the one whose field is named otherwise.
_AS_GIVEN = (
    "window",
    "batch",
    "heads",
    "head_dim",
    "dtype",
    "memory",
    "max_memory_gb",
    "repeat",
    "threads",
)


def build_config(args: argparse.Namespace) -> suite.BenchConfig:
    """The :class:`~multihead.bench.suite.BenchConfig` the options describe (``ValueError``
    naming the option on bad values)."""
    mode = args.mode or "both"
    if mode not in ("fwd", "fwdbwd", "both"):
        raise ValueError(f"--mode must be fwd, fwdbwd or both, got {mode!r}")
    modes = suite.MODES if mode == "both" else (mode,)
    causal = {"causal": (True,), "full": (False,), "both": (False, True), None: (False, True)}[
        args.causal
    ]
    peers = _names(args.peers)
    if peers == ("none",):
        peers = ()
    if peers is not None and any(p not in suite.PEERS for p in peers):
        raise ValueError(f"--peers must be among {', '.join(suite.PEERS)} or none, got {peers}")
    backends = _names(args.backends)
    registered = backend_names()
    if backends is not None:
        unknown = [b for b in backends if b not in registered]
        if unknown:
            raise ValueError(
                f"--backends must be among {', '.join(registered)}; unknown: {', '.join(unknown)}"
            )
    # The numeric options need no check here: their argparse types refuse values out of range.
    if args.dtype is not None and args.dtype not in suite.DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(suite.DTYPES)}, got {args.dtype!r}")
    overrides: dict[str, Any] = {name: getattr(args, name) for name in _AS_GIVEN}
    overrides.update(
        case_budget_s=args.case_budget,
        lengths=parse_lengths(args.lengths) if args.lengths else None,
        backends=backends,
        peers=peers,
        modes=modes,
        causal=causal,
    )
    base = suite.BenchConfig.quick() if args.quick else suite.BenchConfig()
    return suite.with_overrides(base, **overrides)


def run(args: argparse.Namespace) -> int:
    """Run the sweep and print Markdown (or JSON); write files under ``--out``."""
    config = build_config(args)
    if args.out:
        check_out_dir(args.out)  # before the sweep, not after minutes of timing
    report = suite.run_suite(config, progress=sys.stderr.isatty())
    if args.out:
        paths = suite.write_report(report, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_markdown())
    return 0
