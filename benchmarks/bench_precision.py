"""MultiHeadAttention forward under bfloat16 / float16 autocast vs float32, on the CPU.

Shape: B=8, N=1024, E=512, H=8 (self-attention, no mask), eval mode, no gradients. Target:
bfloat16 autocast >= 2x faster than float32. Peer: ``torch.nn.MultiheadAttention`` with the
same weights under the same autocast, in the same run. Error: max abs and relative Frobenius
error of each output against our float32 output.

All variants are timed in turn (A, B, C, A, B, C, ...) so load from other work on a shared
machine falls on each alike. Whether low precision is faster on a CPU depends on the hardware:
without native bfloat16 / float16 arithmetic (AVX512-BF16, AMX, AVX512-FP16) PyTorch converts
to float32 around every operation, and the report prints which of those this CPU has.

Run: ``python benchmarks/bench_precision.py`` (``--quick``: B=2).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from torch import nn

from multihead import MultiHeadAttention
from multihead.bench.harness import machine_summary, markdown_table, time_interleaved

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_features() -> str:
    """The low-precision instruction sets this CPU reports (Linux), e.g. ``avx2 avx512_bf16``."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return "unknown"
    return " ".join(w for w in wanted if w in flags) or "none of " + ", ".join(wanted)


def autocast_supported(dtype: torch.dtype) -> str | None:
    """``None`` if CPU autocast runs with ``dtype``, else why not."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except (RuntimeError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="B=2 instead of 8")
    args = parser.parse_args(argv)
    b, n, e, h = (2 if args.quick else 8), 1024, 512, 8

    torch.manual_seed(0)
    ref = nn.MultiheadAttention(e, h, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(b, n, e)

    def runner(module: str, dtype: torch.dtype | None):
        ctx = (
            (lambda: torch.autocast("cpu", dtype=dtype))
            if dtype is not None
            else contextlib.nullcontext
        )

        def run() -> torch.Tensor:
            with torch.no_grad(), ctx():
                if module == "multihead":
                    return ours(x).output
                return ref(x, x, x, need_weights=False)[0]

        return run

    skipped = {}
    fns = {}
    for name, dtype in DTYPES.items():
        reason = autocast_supported(dtype) if dtype is not None else None
        if reason is not None:
            skipped[name] = reason
            continue
        for module in ("multihead", "torch"):
            fns[(module, name)] = runner(module, dtype)
    labels = {key: f"{key[0]} {key[1]}" for key in fns}
    timings = time_interleaved(
        {labels[k]: fn for k, fn in fns.items()}, warmup=1, repeat=args.repeat
    )
    base = fns[("multihead", "float32")]().float()
    rows = []
    for key, fn in fns.items():
        module, name = key
        out = fn().float()
        t = timings[labels[key]].median_ms
        t32 = timings[labels[(module, "float32")]].median_ms
        t_torch = timings[labels[("torch", name)]].median_ms
        max_abs = (out - base).abs().max().item()
        rel = ((out - base).norm() / base.norm()).item()
        rows.append(
            [
                module,
                name if name == "float32" else f"autocast {name}",
                f"{t:.1f}",
                f"{t32 / t:.2f}x",
                f"{t / t_torch:.2f}x",
                f"{max_abs:.3g}",
                f"{rel:.3g}",
            ]
        )
        print(f"{labels[key]:>20}: {t:8.1f} ms", file=sys.stderr)
    table = markdown_table(
        [
            "module",
            "precision",
            "forward ms",
            "speed-up vs own float32",
            "time / torch same precision",
            "max abs err vs float32",
            "rel Frobenius err",
        ],
        rows,
    )
    bf16 = [r for r in rows if r[0] == "multihead" and r[1] == "autocast bfloat16"]
    verdict = ""
    if bf16:
        speedup = float(bf16[0][3].rstrip("x"))
        verdict = (
            f"\n- bfloat16 autocast speed-up for MultiHeadAttention: **{speedup:.2f}x** "
            f"(target >= 2x: {'met' if speedup >= 2 else 'NOT met'})\n"
        )
    notes = "".join(f"- {k}: not run ({v})\n" for k, v in skipped.items())
    header = (
        f"{machine_summary()}; CPU low-precision features: {cpu_features()}\n\n"
        f"B={b}, N={n}, E={e}, H={h}, self-attention forward, eval, no_grad; median of "
        f"{args.repeat} interleaved runs\n"
    )
    report = f"{header}\n{table}\n{verdict}{notes}"
    print(report)
    return report


if __name__ == "__main__":
    main()
