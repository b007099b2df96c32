"""Per-call overhead of ``multihead.functional.attention`` over a direct
``torch.nn.functional.scaled_dot_product_attention`` call (issue 9: goal <= 20 us).

Small shapes, so the kernel's own time is short and the Python around it shows: B=2, H=8,
D=64, N in {1 (a decoding step), 64, 128, 256},
with and without a key padding mask, float32, no grad. Both are timed interleaved in
the same process; the overhead is the difference of medians.

Run: ``python benchmarks/bench_overhead.py [--repeat 2000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from multihead.functional import attention


def _median_us(fn, repeat: int) -> float:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 50)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    print("| case | sdpa (us) | attention() (us) | overhead (us) | ratio |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        cases = [(1, 256, False, False), (64, 64, True, False), (128, 128, True, False)]
        cases += [(256, 256, True, False), (64, 64, False, True), (256, 256, False, True)]
        for nq, nk, causal, padded in cases:
            q = torch.randn(2, 8, nq, 64)
            k = torch.randn(2, 8, nk, 64)
            v = torch.randn(2, 8, nk, 64)
            mask = None
            if padded:  # a key padding mask, as every padded batch has: (B, 1, 1, Nk)
                mask = torch.ones(2, 1, 1, nk, dtype=torch.bool)
                mask[1, ..., nk // 2 :] = False

            def direct(q=q, k=k, v=v, mask=mask, causal=causal):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

            def ours(q=q, k=k, v=v, mask=mask, causal=causal):
                return attention(q, k, v, mask, causal=causal)

            base = _median_us(direct, args.repeat)
            mine = _median_us(ours, args.repeat)
            name = (
                f"B=2 Nq={nq} Nk={nk}"
                + (" causal" if causal else "")
                + (" padded" if padded else "")
            )
            ours = mine
            print(f"| {name} | {base:.1f} | {ours:.1f} | {ours - base:.1f} | {ours / base:.2f}x |")


def main(argv: list[str] | None = None) -> str:
    """Entry point of ``benchmarks/run.py``: run, print, and return the report."""
    from multihead.bench.harness import printed_report

    return printed_report(_run, argv)


if __name__ == "__main__":
    _run(None)
