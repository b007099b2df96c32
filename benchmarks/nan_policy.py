"""Cost of the NaN policy on the unmasked sdpa path (issue 12, item 2).

Times PyTorch's fused kernel alone (the peer) and the same call followed by the NaN row
propagation that ``multihead.functional.sdpa`` adds, in one process on the same inputs, and
prints the ratio. Run: ``python benchmarks/nan_policy.py``.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from multihead.functional import attention
from multihead.functional.sdpa import _propagate_nan_queries


def _median_s(fn, repeat: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peer(q, k, v):
    return lambda: F.scaled_dot_product_attention(q, k, v)


def _ours(q, k, v):
    return lambda: _propagate_nan_queries(F.scaled_dot_product_attention(q, k, v), q)


def _whole(q, k, v):
    return lambda: attention(q, k, v, backend="sdpa")


def main() -> None:
    torch.manual_seed(0)
    print(
        "| B, H, N, D | torch sdpa (ms) | + NaN propagation (ms) | ratio | "
        "our whole attention() call (ms) | propagation share of it |"
    )
    print("|---|---|---|---|---|---|")
    for b, h, n, d in [(1, 2, 16, 16), (1, 8, 256, 64), (2, 8, 1024, 64)]:
        q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
        # Interleave the two so load changes hit both alike.
        peer, ours, whole = [], [], []
        for _ in range(3):
            peer.append(_median_s(_peer(q, k, v)))
            ours.append(_median_s(_ours(q, k, v)))
            whole.append(_median_s(_whole(q, k, v)))
        p, o, w = min(peer), min(ours), min(whole)
        print(
            f"| {b}, {h}, {n}, {d} | {p * 1e3:.3f} | {o * 1e3:.3f} | {o / p:.3f} | "
            f"{w * 1e3:.3f} | {max(o - p, 0.0) / w:.1%} |"
        )


if __name__ == "__main__":
    main()
