"""Greedy decoding speed: multihead's cached DecoderLM vs Hugging Face ``generate``.

GPT-2-small shape (12 layers, 768 wide, 12 heads, 50257-token vocabulary) with random weights:
the Hugging Face ``GPT2LMHeadModel`` and our ``DecoderLM`` converted from it
(:func:`multihead.interop.huggingface.convert`, same weights), float32, 256 new tokens after a
16-token prompt, at batch 1 and 8. Both run in this process, interleaved (A, B, A, B, ...) so
that load from other processes hits both alike; the tokens must be identical.

Decoding one token per step is memory bound: every step reads all weights and the key/value
cache. "Achieved GB/s" is (weight bytes + mean KV-cache bytes per step) x steps/s, set against
this machine's read bandwidth measured here with a large ``tensor.sum()``.

A second table compares our cached decoding with recomputing the whole prefix at every step
(``use_cache=False``) for 512 new tokens on a small model.

Run: ``python benchmarks/bench_decode.py [--quick]`` (needs ``transformers``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from multihead.bench.harness import machine_summary, markdown_table, time_interleaved
from multihead.modules.models import DecoderLM, TransformerConfig

PROMPT = 16
TARGET_VS_HF = 1.5  # batch 1
TARGET_CACHE = 5.0  # cached vs uncached at 512 tokens


def read_bandwidth_gbs(mib: int = 512, repeat: int = 7) -> tuple[float, float]:
    """``(read GB/s, copy GB/s)`` of this machine: a ``sum`` over a tensor far larger than the
    caches reads every byte once; a ``copy_`` reads and writes each (counted twice)."""
    n = mib * 2**20 // 4
    x = torch.ones(n)
    y = torch.empty(n)
    timings = time_interleaved(
        {"sum": lambda: x.sum(), "copy": lambda: y.copy_(x)}, warmup=2, repeat=repeat
    )
    nbytes = x.numel() * x.element_size()
    return nbytes / timings["sum"].min_s / 1e9, 2 * nbytes / timings["copy"].min_s / 1e9


def unique_parameter_bytes(model: nn.Module, *, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the parameters a decoding step reads: tied weights once, and not the tables
    that a step only indexes one row of (``skip``: e.g. learned positions)."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or any(s in name for s in skip):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def kv_bytes_per_step(config: TransformerConfig, batch: int, new_tokens: int) -> float:
    """Mean bytes of keys and values read per step (float32), the cache growing from
    ``PROMPT`` to ``PROMPT + new_tokens - 1`` entries."""
    layers, heads = config.num_decoder_layers, config.num_kv_heads or config.num_heads
    head_dim = config.d_model // config.num_heads
    mean_len = PROMPT + (new_tokens - 1) / 2
    return 2 * layers * batch * heads * head_dim * mean_len * 4


def gpt2_small(vocab: int = 50257) -> tuple[Any, DecoderLM]:
    """A random-weight GPT-2 small and our converted copy."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from multihead.interop.huggingface import convert

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_positions=1024, n_embd=768, n_layer=12, n_head=12, pad_token_id=0
    )
    hf = GPT2LMHeadModel(config).eval()
    hf.generation_config.eos_token_id = None  # always generate every token
    hf.generation_config.pad_token_id = 0
    lm = convert(hf)
    assert isinstance(lm, DecoderLM)
    return hf, lm


def compare_with_hf(batches: list[int], new_tokens: int, repeat: int) -> tuple[str, float]:
    hf, lm = gpt2_small()
    weight_bytes = unique_parameter_bytes(lm, skip=("positional",))
    read_gbs, copy_gbs = read_bandwidth_gbs()
    rows = []
    ratio_b1 = float("nan")
    for batch in batches:
        prompt = torch.randint(1, hf.config.vocab_size, (batch, PROMPT))
        mask = torch.ones_like(prompt)

        def ours(prompt: torch.Tensor = prompt) -> torch.Tensor:
            return lm.generate(prompt, new_tokens, do_sample=False, use_cache=True)

        def theirs(prompt: torch.Tensor = prompt, mask: torch.Tensor = mask) -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(
                    prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False
                )

        same = torch.equal(ours(), theirs())  # also the warm-up
        runs: dict[str, Callable[[], object]] = {"multihead": ours, "transformers": theirs}
        t = time_interleaved(runs, warmup=0, repeat=repeat)
        kv = kv_bytes_per_step(lm.config, batch, new_tokens)
        for name in runs:
            seconds = t[name].median_s
            steps_per_s = new_tokens / seconds
            gbs = (weight_bytes + kv) * steps_per_s / 1e9
            rows.append(
                [
                    batch,
                    name,
                    f"{seconds:.2f}",
                    f"{batch * new_tokens / seconds:.1f}",
                    f"{1e3 / steps_per_s:.1f}",
                    f"{gbs:.1f}",
                    f"{100 * gbs / read_gbs:.0f}%",
                    f"{t['transformers'].median_s / seconds:.2f}x",
                    "yes" if same else "**NO**",
                ]
            )
        if batch == 1:
            ratio_b1 = t["transformers"].median_s / t["multihead"].median_s
        print(f"batch {batch}: {rows[-2]} / {rows[-1]}", file=sys.stderr)
    table = markdown_table(
        [
            "batch",
            "implementation",
            "s (median)",
            "tokens/s",
            "ms/step",
            "achieved GB/s",
            "of read BW",
            "speed-up vs HF",
            "tokens identical",
        ],
        rows,
    )
    note = (
        f"GPT-2 small shape, random weights, float32, prompt {PROMPT}, {new_tokens} new tokens, "
        f"greedy; HF attention: `{hf.config._attn_implementation}`, median of {repeat} "
        f"interleaved runs. Weights read per step: {weight_bytes / 1e6:.0f} MB (tied embedding "
        f"once, position table excluded). Measured read bandwidth: {read_gbs:.1f} GB/s "
        f"(`sum` of 512 MiB; `copy` {copy_gbs:.1f} GB/s read+write)."
    )
    return f"{note}\n\n{table}\n", ratio_b1


def cache_speedup(new_tokens: int, repeat: int) -> tuple[str, float]:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=256,
        d_model=128,
        num_heads=4,
        d_ff=512,
        num_decoder_layers=2,
        dropout=0.0,
        positional="learned",
        max_len=PROMPT + new_tokens,
        embed_scale=False,
    )
    lm = DecoderLM(config).eval()
    prompt = torch.randint(1, 256, (1, PROMPT))
    cached = lm.generate(prompt, new_tokens, use_cache=True)
    uncached = lm.generate(prompt, new_tokens, use_cache=False)
    same = torch.equal(cached, uncached)
    t = time_interleaved(
        {
            "cached": lambda: lm.generate(prompt, new_tokens, use_cache=True),
            "uncached": lambda: lm.generate(prompt, new_tokens, use_cache=False),
        },
        warmup=0,
        repeat=repeat,
    )
    speedup = t["uncached"].median_s / t["cached"].median_s
    rows = [
        [name, f"{t[name].median_s:.2f}", f"{new_tokens / t[name].median_s:.0f}"]
        for name in ("cached", "uncached")
    ]
    table = markdown_table(["DecoderLM.generate", "s (median)", "tokens/s"], rows)
    note = (
        f"Small model (2 layers, 128 wide, 4 heads), batch 1, prompt {PROMPT}, {new_tokens} new "
        f"tokens, median of {repeat} interleaved runs. Speed-up {speedup:.1f}x; tokens "
        f"identical: {'yes' if same else '**NO**'}."
    )
    return f"{note}\n\n{table}\n", speedup


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens, batch 1 only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for both libraries (default: torch's). On a machine shared with "
        "other work use 1: OpenMP threads that wait on each other at every small decoding op "
        "can make a step 10x slower",
    )
    args, _ = parser.parse_known_args(argv)  # run.py passes every benchmark the same flags
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    new_tokens = 32 if args.quick else 256
    batches = [1] if args.quick else [1, 8]
    cache_tokens = 128 if args.quick else 512

    parts = [machine_summary(), ""]
    try:
        import transformers  # noqa: F401
    except ImportError:
        parts.append("transformers is not installed: the comparison with HF was skipped.\n")
        ratio = float("nan")
    else:
        report, ratio = compare_with_hf(batches, new_tokens, args.repeat)
        parts += ["### Greedy decoding vs transformers", "", report]
    report, speedup = cache_speedup(cache_tokens, max(1, args.repeat - 1))
    parts += ["### Cached vs uncached", "", report]
    verdict = [
        f"- vs HF at batch 1: {ratio:.2f}x (target >= {TARGET_VS_HF}x: "
        f"{'met' if ratio >= TARGET_VS_HF else 'NOT met'})",
        f"- cached vs uncached at {cache_tokens} tokens: {speedup:.1f}x (target >= "
        f"{TARGET_CACHE}x: {'met' if speedup >= TARGET_CACHE else 'NOT met'})",
    ]
    parts += ["### Targets", "", *verdict, ""]
    report = "\n".join(parts)
    print(report)
    return report


if __name__ == "__main__":
    main()
