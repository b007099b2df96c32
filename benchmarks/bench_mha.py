"""MultiHeadAttention vs torch.nn.MultiheadAttention vs the articles' naive implementation.

Forward + backward, float32, same weights, ``need_weights=False`` on both modules (and the
``need_weights=True`` path of ours, for the cost of asking for weights). Time is the median of
several runs in this process; peak memory is measured in a fresh process per case.

Run: ``python benchmarks/bench_mha.py`` (or ``make bench``).

``--dropin`` instead times the drop-in ``multihead.nn.MultiheadAttention`` against
``torch.nn.MultiheadAttention`` called the same way, at PyTorch's defaults (``need_weights=True``,
weights averaged over heads) and at ``need_weights=False``; each row's ratio is to the torch row
with the same call. ``--dropin --padding`` passes both a key padding mask (last tenth padded).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from multihead import MultiHeadAttention
from multihead.bench.harness import mark_baseline, markdown_table, peak_rss_mib, time_it
from multihead.nn import MultiheadAttention

IMPLS = ("multihead", "multihead(weights)", "torch", "naive")
# Drop-in mode: each implementation and the torch row it is compared with.
DROPIN_PEERS = {
    "multihead.nn(weights)": "torch(weights)",
    "torch(weights)": "torch(weights)",
    "multihead.nn": "torch",
    "torch": "torch",
}
DROPIN_PEERS.update({f"{k}+pad": f"{v}+pad" for k, v in DROPIN_PEERS.items()})
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


def padding_of(x: torch.Tensor) -> torch.Tensor:
    """A PyTorch-style key padding mask (True = padding): the last tenth of every sequence."""
    b, n, _ = x.shape
    return (torch.arange(n) >= n - n // 10).expand(b, n)


def build(impl: str, e: int, h: int):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(e, h, batch_first=True)
    # "+pad": the drop-in rows with a key padding mask, for both modules.
    padded = impl.endswith("+pad")
    impl = impl.removesuffix("+pad")
    if impl in ("torch", "torch(weights)") or impl.startswith("multihead.nn"):
        module = ref
        if impl.startswith("multihead.nn"):
            module = MultiheadAttention(e, h, batch_first=True)
            module.load_state_dict(ref.state_dict())
        need = impl.endswith("(weights)")  # torch(weights) is PyTorch's default call

        def call(x: torch.Tensor) -> torch.Tensor:
            kpm = padding_of(x) if padded else None
            return module(x, x, x, key_padding_mask=kpm, need_weights=need)[0]

        return call, module
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


def interleaved_ms(runs: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Median ms of each run, timed in turns (one of each per round, the order rotating), so
    that a change of load on a shared machine hits every implementation alike."""
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        runs[name]()
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in samples.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="first config only")
    parser.add_argument(
        "--dropin", action="store_true", help="multihead.nn.MultiheadAttention vs torch instead"
    )
    parser.add_argument(
        "--padding", action="store_true", help="with --dropin: pass a key padding mask to both"
    )
    args = parser.parse_args(argv)
    impls = IMPLS
    if args.dropin:
        impls = tuple(k for k in DROPIN_PEERS if k.endswith("+pad") == args.padding)
    rows = []
    configs = CONFIGS[:1] if args.quick else CONFIGS
    for b, n, e, h in configs:
        times = (
            interleaved_ms({impl: step(impl, b, n, e, h) for impl in impls}, args.repeat)
            if args.dropin
            else {}
        )
        mems = {}
        for impl in impls:
            if not args.dropin:
                times[impl] = time_it(
                    step(impl, b, n, e, h), warmup=2, repeat=args.repeat
                ).median_ms
            mems[impl] = peak_rss_mib(
                "bench_mha",
                "memory_probe",
                {"impl": impl, "b": b, "n": n, "e": e, "h": h},
                search_path=os.path.dirname(os.path.abspath(__file__)),
            )
            print(
                f"B={b} N={n} E={e} H={h} {impl:>22}: {times[impl]:8.1f} ms  {mems[impl]:7.1f} MiB",
                file=sys.stderr,
            )
        for impl in impls:
            row = [f"{b}x{n}x{e}, H={h}", impl, f"{times[impl]:.1f}", f"{mems[impl]:.0f}"]
            if args.dropin:
                peer = DROPIN_PEERS[impl]
                row += [
                    f"{times[impl] / times[peer]:.2f}x",
                    f"{mems[impl] / max(mems[peer], 1e-9):.2f}",
                ]
            else:
                row += [
                    f"{times[impl] / times['torch']:.2f}x",
                    f"{times['naive'] / times[impl]:.2f}x",
                    f"{mems[impl] / max(mems['naive'], 1e-9):.2f}",
                ]
            rows.append(row)
    columns = ["B x N x E", "implementation", "fwd+bwd ms", "peak MiB"]
    if args.dropin:
        columns += ["time / torch (same call)", "memory / torch (same call)"]
    else:
        columns += ["time / torch", "speed-up vs naive", "memory / naive"]
    table = markdown_table(columns, rows)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, float32, forward+backward"
    )
    report = f"{header}\n\n{table}\n"
    print(report)
    return report


if __name__ == "__main__":
    main()
