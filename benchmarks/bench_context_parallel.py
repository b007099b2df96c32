"""Context-parallel attention (issue 15) against single-process attention, in the same run.

Forward+backward, B=1, H=8, D=64, float32, not causal unless ``--causal``:

1. per-rank peak memory of ``context_parallel_attention`` at each ``--ranks`` P and ``--n`` N,
   against one process running ``chunked`` and ``sdpa`` on the whole sequence;
2. time of P ranks (gloo over 127.0.0.1, one thread each) against one process with P threads;
3. bytes each rank sends per step (counted at the ring's send call) against the formula
   ``(3P - 2) · B·Hkv·(N/P)·(Dk+Dv)·4`` (forward: P-1 key/value blocks; backward: P-1 blocks
   and P dK/dV blocks);
4. a PROJECTED time for larger P, from the measured per-block compute time and the message
   sizes, with network bandwidth as a parameter (nothing there is measured).

Memory: peak RSS (``VmHWM``) above the RSS after ``import torch`` and process-group set-up,
per process, so inputs, outputs and gradients count. Every case runs in a fresh process.

Time: each case runs ``--repeat`` times, round-robin over the cases so that a change of load
hits all of them; the table gives min / median and ratios of the minima.

Run: ``python benchmarks/bench_context_parallel.py --n 16384 --ranks 2 --repeat 3``
(``--quick``: N=2048, for a smoke test). On a slow machine ``--window 256`` measures memory at
long N with O(N·W) compute; the chunked kernel's and the ring's buffers do not depend on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

B, H, D = 1, 8, 64
BYTES = 4  # float32


def _inputs(n: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, n, D, generator=g) for _ in range(4))  # q, k, v, dout


def _single(impl: str, n: int, threads: int, causal: bool, window: int) -> dict[str, float]:
    from multihead.bench.harness import mark_baseline, max_rss_mib
    from multihead.functional import attention

    torch.set_num_threads(threads)
    mark_baseline()
    base = _rss()
    q, k, v, dout = _inputs(n)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    start, cpu = time.perf_counter(), time.process_time()
    win = window or None
    attention(q, k, v, causal=causal, window=win, backend=impl).output.backward(dout)
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    return {"seconds": seconds, "cpu_s": cpu_s, "peak_mib": max_rss_mib() - base}


def _rank(
    rank: int,
    world: int,
    port: int,
    n: int,
    method: str,
    layout: str,
    causal: bool,
    window: int,
    out: str,
) -> None:
    import torch.distributed as dist

    from multihead.bench.harness import mark_baseline, max_rss_mib
    from multihead.distributed import _comm, context_parallel_attention, shard_sequence

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=3600),
    )
    sent = [0]
    original = _comm.Comm.shift

    def counting(self, send, recv, tag):  # type: ignore[no-untyped-def]
        sent[0] += send.numel() * send.element_size()
        return original(self, send, recv, tag)

    _comm.Comm.shift = counting  # type: ignore[method-assign]
    full = _inputs(n)
    shards = [shard_sequence(t, layout=layout) for t in full]
    del full
    dist.barrier()
    mark_baseline()
    base = _rss() - sum(t.numel() * 4 for t in shards) / 2**20  # count the rank's inputs too
    q, k, v, dout = shards
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    out_local = context_parallel_attention(
        q, k, v, causal=causal, window=window or None, method=method, layout=layout, timeout=3600
    )
    forward_s = time.perf_counter() - start
    out_local.backward(dout)
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    dist.barrier()
    total = time.perf_counter() - start
    result = {"seconds": seconds, "forward_s": forward_s, "all_done_s": total, "cpu_s": cpu_s}
    result.update(peak_mib=max_rss_mib() - base, sent_bytes=sent[0])
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def _rss() -> float:
    from multihead.bench.harness import current_rss_mib

    return current_rss_mib()


def _distributed(
    world: int, n: int, method: str, layout: str, causal: bool, window: int
) -> dict[str, float]:
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r")
        mp.spawn(_rank, args=(world, port, n, method, layout, causal, window, out), nprocs=world)
        ranks = []
        for r in range(world):
            with open(f"{out}.{r}") as f:
                ranks.append(json.load(f))
    return {
        "seconds": max(r["all_done_s"] for r in ranks),
        "peak_mib": max(r["peak_mib"] for r in ranks),
        "sent_bytes": max(r["sent_bytes"] for r in ranks),
        "cpu_s": sum(r["cpu_s"] for r in ranks),  # all ranks together
    }


def _case(args: list[str]) -> dict[str, float]:
    """Run one case in a fresh process (clean peak RSS)."""
    cmd = [sys.executable, __file__, "--case", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"case {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _formula_bytes(world: int, n: int) -> int:
    return (3 * world - 2) * B * H * (n // world) * (D + D) * BYTES


def _projection(block_s: float, p0: int, n: int, bandwidths: list[float]) -> str:
    """PROJECTED ring time for larger P at the same N; nothing here is measured."""
    from multihead.bench.harness import markdown_table

    rows = []
    for p in (2, 4, 8, 16, 32, 64, 128):
        compute = block_s * (p0 / p) ** 2  # one step's block is (N/P)^2
        # A forward step sends one K/V block, a backward step a K/V block and a dK/dV block.
        msg = 3 * B * H * (n // p) * 2 * D * BYTES
        row: list[object] = [p, f"{compute * 1e3:.1f}", f"{msg / 2**20:.2f}"]
        for bw in bandwidths:
            step = max(compute, msg / (bw * 1e9))  # transfers overlap the compute
            row.append(f"{p * step:.2f}")
        rows.append(row)
    headers = [
        "P",
        "compute/step ms",
        "MiB sent/step",
        *[f"time s @ {bw:g} GB/s" for bw in bandwidths],
    ]
    return markdown_table(headers, rows)


def _cases(args: argparse.Namespace, n: int, worlds: list[int]) -> list[list[str]]:
    extra = [args.layout, "1" if args.causal else "0", str(args.window)]
    cases = []
    # One thread as well: on an oversubscribed machine PyTorch's 2-thread CPU run can stall
    # (a thread descheduled while the other waits at a barrier), which would flatter the ring.
    for impl in filter(None, args.single.split(",")):
        for threads in sorted({1, *worlds}):
            cases.append(["single", impl, str(n), str(threads), *extra[1:]])
    for world in worlds:
        for method in args.methods.split(","):
            cases.append(["dist", str(world), str(n), method, *extra])
    return cases


def _label(case: list[str]) -> str:
    if case[0] == "single":
        return f"{case[1]} (1 process, {case[3]} threads)"
    return f"{case[3]} P={case[1]} (gloo, 1 thread each)"


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="16384", help="comma-separated sequence lengths")
    parser.add_argument("--ranks", default="2", help="comma-separated world sizes")
    parser.add_argument("--methods", default="ring", help="comma-separated: ring,allgather,ulysses")
    parser.add_argument("--layout", default="contiguous")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="sliding window (0: none); cuts compute to O(N·W) so memory can be measured at "
        "long N on a slow machine; chunked and ring buffers do not depend on it",
    )
    parser.add_argument("--single", default="chunked,sdpa", help="single-process peers")
    parser.add_argument("--repeat", type=int, default=1, help="round-robin repeats per case")
    parser.add_argument("--bandwidth-gbps", default="1,10,100")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        kind, *rest = args.case
        if kind == "single":
            impl, n, threads, causal, window = rest
            print(json.dumps(_single(impl, int(n), int(threads), causal == "1", int(window))))
        else:
            world, n, method, layout, causal, window = rest
            result = _distributed(int(world), int(n), method, layout, causal == "1", int(window))
            print(json.dumps(result))
        return

    from multihead.bench.harness import machine_summary, markdown_table

    lengths = [2048] if args.quick else [int(x) for x in args.n.split(",")]
    worlds = [int(x) for x in args.ranks.split(",")]
    print(machine_summary())
    print(
        f"load average before: {os.getloadavg()}; causal={args.causal}, layout={args.layout}, "
        f"window={args.window or None}, repeats={args.repeat} (round-robin; time: min / median)"
    )
    rows = []
    proj = None
    for n in lengths:
        cases = _cases(args, n, worlds)
        runs: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(cases))}
        for _ in range(args.repeat):  # round-robin, so load changes hit every case alike
            for i, case in enumerate(cases):
                runs[i].append(_case(case))
                last = runs[i][-1]
                print(
                    f"{n} {_label(case)}: {last['seconds']:.2f} s, CPU {last['cpu_s']:.2f} s "
                    f"(all processes), {last['peak_mib']:.0f} MiB",
                    flush=True,
                )
        best = {i: min(r["seconds"] for r in rs) for i, rs in runs.items()}
        for i, case in enumerate(cases):
            rs = runs[i]
            median = statistics.median(r["seconds"] for r in rs)
            peak = statistics.median(r["peak_mib"] for r in rs)
            world = int(case[1]) if case[0] == "dist" else int(case[3])
            ref = next(
                (
                    j
                    for j, c in enumerate(cases)
                    if c[:2] == ["single", "chunked"] and c[3] == str(world)
                ),
                None,
            )
            ratio_t = ratio_m = sent = ""
            fastest = min(
                (best[j] for j, c in enumerate(cases) if c[:2] == ["single", "chunked"]),
                default=None,
            )
            if case[0] == "dist" and ref is not None and fastest is not None:
                ratio_t = f"{best[i] / best[ref]:.2f}x / {best[i] / fastest:.2f}x"
                ratio_m = f"{peak / statistics.median(r['peak_mib'] for r in runs[ref]):.2f}"
            if case[0] == "dist" and case[3] == "ring":
                sent = f"{rs[0]['sent_bytes'] / 2**20:.1f} / {_formula_bytes(world, n) / 2**20:.1f}"
                if world == worlds[0]:
                    proj = (best[i] / world, world, n)
            row = [n, _label(case), f"{best[i]:.2f} / {median:.2f}", f"{peak:.0f}"]
            rows.append([*row, ratio_t, ratio_m, sent])
        print(f"load average after N={n}: {os.getloadavg()}", flush=True)
    headers = [
        "N",
        "implementation",
        "fwd+bwd s (min / median)",
        "peak MiB / process",
        "time / chunked (same threads / fastest, min)",
        "memory / chunked",
        "MiB sent per rank: counted / formula",
    ]
    print(markdown_table(headers, rows))
    if proj is not None and not args.window:
        bws = [float(x) for x in args.bandwidth_gbps.split(",")]
        print(f"\nPROJECTION (not measured): ring fwd+bwd time at N={proj[2]} for larger P, from")
        print(f"the measured time per ring step at P={proj[1]} ({proj[0]:.2f} s, compute and local")
        print("transfer together), compute per step scaling as (N/P)^2, bandwidth as given:")
        print(_projection(*proj, bws))


def main(argv: list[str] | None = None) -> str:
    """Entry point of ``benchmarks/run.py``: run, print, and return the report."""
    from multihead.bench.harness import printed_report

    return printed_report(_run, argv)


if __name__ == "__main__":
    _run(None)
