"""MultiHeadAttention vs torch.nn.MultiheadAttention vs the articles' naive implementation.

Forward + backward, float32, same weights, ``need_weights=False`` on both modules (and the
``need_weights=True`` path of ours, for the cost of asking for weights). Time is the median of
several runs in this process; peak memory is measured in a fresh process per case.

Run: ``python benchmarks/bench_mha.py`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys

import torch
from torch import nn

from multihead import MultiHeadAttention
from multihead.bench.harness import mark_baseline, markdown_table, peak_rss_mib, time_it

IMPLS = ("multihead", "multihead(weights)", "torch", "naive")
CONFIGS = [  # (B, N, E, H)
    (8, 512, 512, 8),
    (4, 1024, 512, 8),
    (1, 2048, 512, 8),
]


class NaiveMHA(nn.Module):
    """The articles' implementation: per-head projections, a materialized softmax, concat, W_O."""

    def __init__(self, e: int, h: int) -> None:
        super().__init__()
        self.h, self.d = h, e // h
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(e, e) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.h, self.d).transpose(1, 2)  # (B, H, N, D)

        q, k, v = heads(self.w_q(x)), heads(self.w_k(x)), heads(self.w_v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d)  # (B, H, N, N)
        weights = torch.softmax(scores, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, e)
        return self.w_o(out)


def build(impl: str, e: int, h: int):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(e, h, batch_first=True)
    if impl == "torch":
        return lambda x: ref(x, x, x, need_weights=False)[0], ref
    if impl.startswith("multihead"):
        mha = MultiHeadAttention.from_torch(ref)
        weights = impl.endswith("(weights)")
        return lambda x: mha(x, need_weights=weights)[0], mha
    naive = NaiveMHA(e, h)
    return naive, naive


def step(impl: str, b: int, n: int, e: int, h: int):
    fn, module = build(impl, e, h)
    x = torch.randn(b, n, e, requires_grad=True)

    def run() -> None:
        out = fn(x)
        out.sum().backward()
        module.zero_grad(set_to_none=True)
        x.grad = None

    return run


def memory_probe(impl: str, b: int, n: int, e: int, h: int) -> None:
    run = step(impl, b, n, e, h)
    mark_baseline()
    run()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="first config only")
    args = parser.parse_args(argv)
    rows = []
    configs = CONFIGS[:1] if args.quick else CONFIGS
    for b, n, e, h in configs:
        times = {}
        mems = {}
        for impl in IMPLS:
            times[impl] = time_it(step(impl, b, n, e, h), warmup=2, repeat=args.repeat).median_ms
            mems[impl] = peak_rss_mib(
                "bench_mha",
                "memory_probe",
                {"impl": impl, "b": b, "n": n, "e": e, "h": h},
                search_path=os.path.dirname(os.path.abspath(__file__)),
            )
            print(
                f"B={b} N={n} E={e} H={h} {impl:>20}: {times[impl]:8.1f} ms  {mems[impl]:7.1f} MiB",
                file=sys.stderr,
            )
        for impl in IMPLS:
            rows.append(
                [
                    f"{b}x{n}x{e}, H={h}",
                    impl,
                    f"{times[impl]:.1f}",
                    f"{mems[impl]:.0f}",
                    f"{times[impl] / times['torch']:.2f}x",
                    f"{times['naive'] / times[impl]:.2f}x",
                    f"{mems[impl] / max(mems['naive'], 1e-9):.2f}",
                ]
            )
    table = markdown_table(
        [
            "B x N x E",
            "implementation",
            "fwd+bwd ms",
            "peak MiB",
            "time / torch",
            "speed-up vs naive",
            "memory / naive",
        ],
        rows,
    )
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, float32, forward+backward"
    )
    report = f"{header}\n\n{table}\n"
    print(report)
    return report


if __name__ == "__main__":
    main()
