"""Before/after check for a refactor: MultiHeadAttention at two commits vs torch, same process.

``--old PATH`` names a folder holding a copy of an earlier ``multihead`` package renamed to
``multihead_old`` (its absolute imports rewritten). Both versions and
``torch.nn.MultiheadAttention`` get the same weights and inputs; forward+backward is timed
interleaved (round-robin), so machine load hits all three alike. Prints each one's median and
its ratio to torch.

Run: ``python benchmarks/bench_refactor.py --old /tmp/oldpkg``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

import torch
from torch import nn

from multihead import MultiHeadAttention

CONFIGS = [(8, 512, 512, 8), (4, 1024, 512, 8), (32, 64, 256, 4)]  # (B, N, E, H)


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", help="folder holding the earlier package as multihead_old")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 3)
    if args.old is None:
        print("skipped: give --old FOLDER with an earlier multihead copied as multihead_old")
        return
    sys.path.insert(0, args.old)
    old = importlib.import_module("multihead_old")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    print("| B x N x E, H | new ms | old ms | torch ms | new / torch | old / torch |")
    print("|---|---|---|---|---|---|")
    for b, n, e, h in CONFIGS:
        torch.manual_seed(0)
        ref = nn.MultiheadAttention(e, h, batch_first=True)
        new = MultiHeadAttention.from_torch(ref)
        prev = old.MultiHeadAttention.from_torch(ref)
        x = torch.randn(b, n, e, requires_grad=True)
        runs = {
            "new": lambda: new(x, causal=False)[0].sum().backward(),  # noqa: B023
            "old": lambda: prev(x, causal=False)[0].sum().backward(),  # noqa: B023
            "torch": lambda: ref(x, x, x, need_weights=False)[0].sum().backward(),  # noqa: B023
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():
            fn()
        for _ in range(args.repeat):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"| {b}x{n}x{e}, {h} | {med['new']:.1f} | {med['old']:.1f} | {med['torch']:.1f} | "
            f"{med['new'] / med['torch']:.2f}x | {med['old'] / med['torch']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> str:
    """Entry point of ``benchmarks/run.py``: run, print, and return the report."""
    from multihead.bench.harness import printed_report

    return printed_report(_run, argv)


if __name__ == "__main__":
    _run(None)
