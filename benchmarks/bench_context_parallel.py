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

Run: ``python benchmarks/bench_context_parallel.py --n 16384 --ranks 2``
(``--quick``: N=2048, for a smoke test).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time

import torch

B, H, D = 1, 8, 64
BYTES = 4  # float32


def _inputs(n: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, n, D, generator=g) for _ in range(4))  # q, k, v, dout


def _single(impl: str, n: int, threads: int, causal: bool) -> dict[str, float]:
    from multihead.bench.harness import mark_baseline, max_rss_mib
    from multihead.functional import attention

    torch.set_num_threads(threads)
    mark_baseline()
    base = _rss()
    q, k, v, dout = _inputs(n)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    start = time.perf_counter()
    attention(q, k, v, causal=causal, backend=impl).output.backward(dout)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": max_rss_mib() - base}


def _rank(
    rank: int, world: int, port: int, n: int, method: str, layout: str, causal: bool, out: str
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
    start = time.perf_counter()
    out_local = context_parallel_attention(
        q, k, v, causal=causal, method=method, layout=layout, timeout=3600
    )
    forward_s = time.perf_counter() - start
    out_local.backward(dout)
    seconds = time.perf_counter() - start
    dist.barrier()
    total = time.perf_counter() - start
    result = {"seconds": seconds, "forward_s": forward_s, "all_done_s": total}
    result.update(peak_mib=max_rss_mib() - base, sent_bytes=sent[0])
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def _rss() -> float:
    from multihead.bench.harness import current_rss_mib

    return current_rss_mib()


def _distributed(world: int, n: int, method: str, layout: str, causal: bool) -> dict[str, float]:
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r")
        mp.spawn(_rank, args=(world, port, n, method, layout, causal, out), nprocs=world)
        ranks = []
        for r in range(world):
            with open(f"{out}.{r}") as f:
                ranks.append(json.load(f))
    return {
        "seconds": max(r["all_done_s"] for r in ranks),
        "peak_mib": max(r["peak_mib"] for r in ranks),
        "sent_bytes": max(r["sent_bytes"] for r in ranks),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="16384", help="comma-separated sequence lengths")
    parser.add_argument("--ranks", default="2", help="comma-separated world sizes")
    parser.add_argument("--methods", default="ring", help="comma-separated: ring,allgather,ulysses")
    parser.add_argument("--layout", default="contiguous")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--single", default="chunked,sdpa", help="single-process peers")
    parser.add_argument("--bandwidth-gbps", default="1,10,100")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, *rest = args.case
        if kind == "single":
            impl, n, threads, causal = rest
            print(json.dumps(_single(impl, int(n), int(threads), causal == "1")))
        else:
            world, n, method, layout, causal = rest
            print(json.dumps(_distributed(int(world), int(n), method, layout, causal == "1")))
        return

    from multihead.bench.harness import machine_summary, markdown_table

    lengths = [2048] if args.quick else [int(x) for x in args.n.split(",")]
    worlds = [int(x) for x in args.ranks.split(",")]
    causal = "1" if args.causal else "0"
    print(machine_summary())
    print(f"load average before: {os.getloadavg()}; causal={args.causal}, layout={args.layout}")
    rows = []
    for n in lengths:
        peers = {}
        for impl in args.single.split(","):
            for threads in sorted(set(worlds)):
                r = _case(["single", impl, str(n), str(threads), causal])
                peers[(impl, threads)] = r
                rows.append(
                    [
                        n,
                        f"{impl} (1 process, {threads} threads)",
                        f"{r['seconds']:.2f}",
                        f"{r['peak_mib']:.0f}",
                        "",
                        "",
                        "",
                    ]
                )
        for world in worlds:
            for method in args.methods.split(","):
                r = _case(["dist", str(world), str(n), method, args.layout, causal])
                ref = peers.get(("chunked", world))
                ratio_t = f"{r['seconds'] / ref['seconds']:.2f}x" if ref else ""
                ratio_m = f"{r['peak_mib'] / ref['peak_mib']:.2f}" if ref else ""
                formula = _formula_bytes(world, n) if method == "ring" else 0
                sent = f"{r['sent_bytes'] / 2**20:.1f} / {formula / 2**20:.1f}" if formula else ""
                rows.append(
                    [
                        n,
                        f"{method} P={world} (gloo, 1 thread each)",
                        f"{r['seconds']:.2f}",
                        f"{r['peak_mib']:.0f}",
                        ratio_t,
                        ratio_m,
                        sent,
                    ]
                )
                if method == "ring" and world == worlds[0] and n == lengths[-1]:
                    block_s = r["seconds"] / world
                    proj = (block_s, world, n)
        print(f"load average after N={n}: {os.getloadavg()}", flush=True)
    headers = [
        "N",
        "implementation",
        "fwd+bwd s",
        "peak MiB / rank",
        "time / chunked (same threads)",
        "memory / chunked",
        "MiB sent per rank: measured / formula",
    ]
    print(markdown_table(headers, rows))
    if "proj" in locals():
        bws = [float(x) for x in args.bandwidth_gbps.split(",")]
        print(
            f"\nPROJECTION (not measured) of ring fwd+bwd time at N={proj[2]} for larger P, from the"
        )
        print(
            f"measured per-step time at P={proj[1]} ({proj[0]:.2f} s, compute and local transfer together),"
        )
        print("compute scaling as (N/P)^2 per step and bandwidth as given:")
        print(_projection(*proj, bws))


if __name__ == "__main__":
    main()
