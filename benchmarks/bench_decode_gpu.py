"""Greedy decoding on a CUDA GPU: transformers vs multihead, GPT-2-small shape (issue 13).

The same model as ``bench_decode.py`` (random GPT-2-small weights, ours converted from the
Hugging Face model), moved to the GPU. In one run:

* **decoding**: ``transformers`` ``generate`` in float32 and bf16 against our ``DecoderLM``
  in float32, in bf16 (the model cast) and with int8 weight-only layers
  (``quantize(weights="int8")``, PyTorch's ``_weight_int8pack_mm``) where that kernel runs on
  CUDA; tokens/s, bytes a step reads and the fraction of the GPU's read bandwidth (a ``sum``
  over 4 GiB, measured in the same run);
* **kernels**: one matrix-vector product per GPT-2 weight shape with each CUDA kernel PyTorch
  offers for it (float32 and bf16 ``F.linear``, ``_weight_int8pack_mm``,
  ``_weight_int4pack_mm``), as read bandwidth.

At batch 1 a GPT-2-small step on an H100-class GPU reads 0.5 GB in well under a millisecond,
so eager decoding is bound by kernel launches, not by bytes: the tables say how far each is.

Run (on a machine with a CUDA device and ``transformers``):
``python benchmarks/bench_decode_gpu.py [--new-tokens 128] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from multihead.bench.harness import markdown_table, time_interleaved
from multihead.quantize import quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import PROMPT, agreement, gpt2_small, kv_bytes_per_step, step_weight_bytes

CUDA = torch.device("cuda")
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072), (50257, 768)]  # (N, K)


def gpu_read_bandwidth(gib: int = 4, repeat: int = 10) -> float:
    """GB/s of a ``sum`` over ``gib`` GiB of float32 on the GPU (best of ``repeat``)."""
    x = torch.ones(gib * 2**30 // 4, device=CUDA)
    t = time_interleaved({"sum": lambda: x.sum()}, warmup=2, repeat=repeat)["sum"]
    return x.numel() * 4 / t.min_s / 1e9


def _int4_kernel(w: torch.Tensor, group: int = 128) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (M, K) bf16 -> (M, N)`` through ``_weight_int4pack_mm`` (random codes: speed only)."""
    n, k = w.shape
    codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=CUDA)
    packed = torch.ops.aten._convert_weight_to_int4pack(codes, 8)
    scales = torch.ones(k // group, n, 2, dtype=torch.bfloat16, device=CUDA)
    return lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, group, scales)


def _kernels(n: int, k: int) -> dict[str, tuple[Callable[[], object], float]]:
    """``{name: (one product of a (1, K) input with an (N, K) weight, bytes per weight)}``."""
    w = torch.randn(n, k, device=CUDA)
    wb = w.bfloat16()
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=CUDA)
    s8 = torch.ones(n, dtype=torch.bfloat16, device=CUDA)
    x = torch.randn(1, k, device=CUDA)
    xb = x.bfloat16()
    kernels: dict[str, tuple[Callable[[], object], float]] = {
        "float32 F.linear": (functools.partial(F.linear, x, w), 4),
        "bf16 F.linear": (functools.partial(F.linear, xb, wb), 2),
        "int8 _weight_int8pack_mm": (
            functools.partial(torch.ops.aten._weight_int8pack_mm, xb, w8, s8),
            1,
        ),
    }
    if n % 8:
        print(f"int4 kernel: N={n} is not a multiple of its 8-row tiles", file=sys.stderr)
        return kernels
    try:
        kernels["int4 _weight_int4pack_mm (group 128)"] = (
            functools.partial(_int4_kernel(w), xb),
            0.5,
        )
    except (RuntimeError, NotImplementedError) as exc:
        print(f"int4 kernel unavailable: {str(exc)[:120]}", file=sys.stderr)
    return kernels


def kernel_table(read_gbs: float, repeat: int) -> str:
    rows = []
    for n, k in SHAPES:
        kernels = _kernels(n, k)
        runnable: dict[str, Callable[[], object]] = {}
        for name, (fn, _) in kernels.items():
            try:
                fn()
                runnable[name] = functools.partial(_hundred, fn)
            except (RuntimeError, NotImplementedError) as exc:
                rows.append([f"({n}, {k})", name, "-", f"not run: {str(exc)[:80]}"])
        t = time_interleaved(runnable, warmup=1, repeat=repeat)
        for name in runnable:
            seconds = t[name].min_s / 100
            gbs = n * k * kernels[name][1] / seconds / 1e9
            rows.append(
                [f"({n}, {k})", name, f"{seconds * 1e6:.1f}", f"{gbs:.0f} ({gbs / read_gbs:.0%})"]
            )
    return markdown_table(["weight (N, K)", "kernel", "us", "GB/s (of read BW)"], rows)


def _hundred(fn: Callable[[], object]) -> None:
    for _ in range(100):
        fn()


def decode_table(new_tokens: int, repeat: int, read_gbs: float) -> str:
    hf, lm = gpt2_small()
    hf_bf16 = copy.deepcopy(hf).to(CUDA, torch.bfloat16)
    hf = hf.to(CUDA)
    models = {
        "float32": copy.deepcopy(lm).to(CUDA),
        "bf16": copy.deepcopy(lm).to(CUDA, torch.bfloat16),
    }
    notes = []
    try:
        q8 = quantize(lm, weights="int8").to(CUDA)
        q8(torch.ones(1, 2, dtype=torch.long, device=CUDA))
        models["int8"] = q8
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        notes.append(f"int8 weight-only on CUDA: not run ({str(exc)[:160]})")
    notes.append(
        "int4: our layer packs for PyTorch's CPU kernel; the CUDA kernel is in the kernel table"
    )
    weight_bytes = {name: step_weight_bytes(m) for name, m in models.items()}
    weight_bytes["hf float32"] = weight_bytes["float32"]
    weight_bytes["hf bf16"] = weight_bytes["float32"] // 2
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(1, 50257, (batch, PROMPT), device=CUDA)

        def theirs(model: torch.nn.Module, prompt: torch.Tensor = prompt) -> torch.Tensor:
            with torch.no_grad():
                return model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                )

        runs: dict[str, Callable[[], torch.Tensor]] = {
            "transformers float32": functools.partial(theirs, hf),
            "transformers bf16": functools.partial(theirs, hf_bf16),
        }
        for name, model in models.items():
            runs[f"multihead {name}"] = functools.partial(
                torch.no_grad()(model.generate), prompt, new_tokens, do_sample=False
            )
        outputs = {name: fn() for name, fn in runs.items()}
        reference = outputs["multihead float32"]
        t = time_interleaved(runs, warmup=0, repeat=repeat)
        hf_s = t["transformers float32"].median_s
        for name in runs:
            key = name.replace("multihead ", "").replace("transformers", "hf")
            seconds = t[name].median_s
            kv = kv_bytes_per_step(lm.config, batch, new_tokens)  # float32 keys and values
            step_bytes = weight_bytes[key] + (kv / 2 if key.endswith("bf16") else kv)
            gbs = step_bytes * new_tokens / seconds / 1e9
            until, overall = agreement(outputs[name][:, PROMPT:].cpu(), reference[:, PROMPT:].cpu())
            rows.append(
                [
                    batch,
                    name,
                    f"{batch * new_tokens / seconds:.0f}",
                    f"{1e3 * seconds / new_tokens:.2f}",
                    f"{step_bytes / 1e6:.0f}",
                    f"{gbs:.0f} ({gbs / read_gbs:.1%})",
                    f"{hf_s / seconds:.2f}x",
                    f"{100 * until:.0f}% / {100 * overall:.0f}%",
                ]
            )
        print(f"batch {batch}: done", file=sys.stderr)
    head = [
        "batch",
        "implementation",
        "tokens/s",
        "ms/step",
        "MB/step",
        "GB/s (of read BW)",
        "vs HF fp32",
        "greedy = ours fp32 (until 1st diff / all)",
    ]
    return markdown_table(head, rows) + "".join(f"\n- {n}" for n in notes) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="32 new tokens")
    args, _ = parser.parse_known_args(argv)  # run.py passes every benchmark the same flags
    if args.quick:
        args.new_tokens = 32
    if not torch.cuda.is_available():
        report = "No CUDA device here: the GPU decoding benchmark was skipped.\n"
        print(report)
        return report
    props = torch.cuda.get_device_properties(0)
    read_gbs = gpu_read_bandwidth()
    try:
        decoding = decode_table(args.new_tokens, args.repeat, read_gbs)
    except Exception as exc:  # still report the kernels
        decoding = f"decoding table failed: {type(exc).__name__}: {exc}\n"
    report = (
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; read bandwidth (`sum` of 4 GiB) {read_gbs:.0f} GB/s; "
        f"prompt {PROMPT}, {args.new_tokens} greedy tokens, median of {args.repeat} "
        "interleaved runs.\n\n" + decoding + "\nOne matrix-vector product (batch 1), best of "
        f"{args.repeat} x 100 calls:\n\n" + kernel_table(read_gbs, args.repeat)
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
