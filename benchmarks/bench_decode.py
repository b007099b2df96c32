"""Greedy decoding at the memory roofline: transformers vs multihead in float32, bf16, int8, int4.

GPT-2-small shape (12 layers, 768 wide, 12 heads, 50257-token vocabulary) with random weights:
the Hugging Face ``GPT2LMHeadModel`` and our ``DecoderLM`` converted from it
(:func:`multihead.interop.huggingface.convert`, same weights), 256 new tokens after a 16-token
prompt, at batch 1 and 8. Ours runs in float32 and as weight-only quantized copies
(:func:`multihead.quantize.quantize` with ``weights="bf16" | "int8" | "int4"``; int8 also with
one scale per 128 input channels, "int8-g128", and, as "int8-torch", the per-channel int8 model
on PyTorch's ``_weight_int8pack_mm`` instead of multihead's kernel). "float32" decodes with
multihead's C step (``multihead/csrc/decode_step.c``) where it builds, "float32-torch" is the
same model with the step in PyTorch. All run in this process, interleaved (A, B, C, ...) so that
load from other processes hits them alike.

Decoding one token per step is memory bound: every step reads all weights and the key/value
cache. "bytes/token" is what one step reads (the weights each kernel reads, tied embedding once,
position table and embedding rows excluded, plus the mean float32 KV cache), "GB/s" that times
steps/s, set against this machine's read bandwidth measured in the same run (a ``sum`` over
512 MiB).

Quality, per weight format against our float32: the share of greedy tokens equal to
float32's until the first divergence and over all 256, and the max/mean absolute logit error
on float32's own text (teacher forcing). For GPT-2 random weights here; for the trained
character LM (``--text-checkpoint``, from ``multihead train text``) in ``bench_quantize.py``.
The character LM's table also has int8 and int4 rounded by GPTQ (``quantize(...,
calibration=ids)``, windows of its training split); they run the int8/int4 kernels unchanged.

A second table compares our cached decoding with recomputing the whole prefix at every step
(``use_cache=False``) for 512 new tokens on a small model.

Run: ``python benchmarks/bench_decode.py [--quick] [--threads N]`` (needs ``transformers``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multihead import _native
from multihead.bench.harness import machine_summary, markdown_table, time_interleaved
from multihead.modules import lean_decode
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.quantize import (
    Int8WeightLinear,
    QuantizedMultiHeadAttention,
    WeightOnlyLinear,
    bf16_units,
    int8_kernel_available,
    native,
    quantize,
)
from multihead.threads import apply_thread_policy
from multihead.train.recipes import LanguageModelRecipe, get_recipe, load_trained

PROMPT = 16
PROMPTS = 64  # texts in the character LM's quality table
# GPTQ calibration of the character LM: windows of its context length from the TRAINING split
# (never the validation prompts); 128 and 256 gave 90.6% and 93.0% int8 agreement (RESULTS.md).
CALIBRATION = 256
# Issue 13's targets, batch 1: float32 at >= 85% of the read bandwidth, int8 weight-only at
# >= 2.5x transformers' float32 generate, int4 at >= 3.5x.
TARGET_FLOAT_BW = 0.85
TARGET_INT8 = 2.5
TARGET_INT4 = 3.5
TARGET_CACHE = 5.0  # cached vs uncached at 512 tokens
# int8 with one scale per 128 input channels: with GPTQ, the group size that kept greedy
# agreement on the character LM at >= 95% over four calibration draws (RESULTS.md).
GROUP = 128


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


def read_probe(mib: int = 512) -> tuple[Callable[[], object], int]:
    """A ``sum`` over ``mib`` MiB and the bytes it reads: timed *interleaved* with the runs it
    is the reference of, so that what other processes do to the memory bus hits both alike
    (a single measurement before the runs moved by 30% between rounds on a shared VM)."""
    x = torch.ones(mib * 2**20 // 4)
    return (lambda: x.sum()), x.numel() * x.element_size()


def _products(layout: str, x: torch.Tensor, bias: torch.Tensor, ws: list[torch.Tensor]) -> None:
    for w in ws:
        if layout == "linear":
            torch.nn.functional.linear(x, w, bias)
        elif layout == "addmm":
            torch.addmm(bias, x, w)
        else:
            torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def layout_table(repeat: int, mib: int = 256) -> str:
    """One activation row times GPT-2's weight shapes, in three layouts: ``F.linear`` on the
    row-major ``(N, K)`` weight (``nn.Linear``, ours in float32), ``addmm`` on ``(K, N)``
    (Hugging Face's ``Conv1D``) and oneDNN's prepacked layout (``quantize(weights="float32")``).
    Each timing runs over enough copies of the matrix (``mib`` MiB) that none sits in a cache,
    as in a decoding step."""
    rows = []
    for n, k in ((2304, 768), (768, 768), (3072, 768), (768, 3072), (50257, 768)):
        copies = max(1, mib * 2**20 // (n * k * 4))
        weights = [torch.randn(n, k) for _ in range(copies)]
        transposed = [w.t().contiguous() for w in weights]
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
        x, bias = torch.randn(1, k), torch.randn(n)

        runs = {
            "linear": functools.partial(_products, "linear", x, bias, weights),
            "addmm": functools.partial(_products, "addmm", x, bias, transposed),
            "packed": functools.partial(_products, "packed", x, bias, packed),
        }
        t = time_interleaved(runs, warmup=1, repeat=repeat)
        gbs = {name: copies * n * k * 4 / t[name].median_s / 1e9 for name in runs}
        rows.append(
            [
                f"({n}, {k})",
                copies,
                *(f"{gbs[name]:.1f}" for name in runs),
                f"{gbs['packed'] / gbs['linear']:.2f}x",
                f"{gbs['packed'] / gbs['addmm']:.2f}x",
            ]
        )
        del weights, transposed, packed
    return markdown_table(
        [
            "weight (N, K)",
            "copies",
            "F.linear (N, K) GB/s",
            "addmm (K, N) GB/s",
            "oneDNN packed GB/s",
            "packed vs F.linear",
            "packed vs addmm",
        ],
        rows,
    )


def _int8_products(
    kernel: str, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, codes: list
) -> None:
    for c in codes:
        if kernel == "ours":
            native.int8_mm(x, c, scale, bias)
        else:
            torch.ops.aten._weight_int8pack_mm(x, c, scale)


def int8_kernel_table(repeat: int, mib: int = 256) -> str:
    """multihead's int8 kernel against PyTorch's ``_weight_int8pack_mm`` and oneDNN's packed
    float32 product, on GPT-2's weight shapes at 1 and 8 activation rows, interleaved. Each
    timing runs over enough copies of the matrix (``mib`` MiB of int8) that none sits in a
    cache, as in a decoding step. GB/s counts the weight bytes each reads (int8 plus float32
    scales; float32 for oneDNN)."""
    if not native.native_available():
        return f"multihead's int8 kernel is not available here: {native.native_problem()}\n"
    rows = []
    for m in (1, 8):
        for n, k in ((2304, 768), (768, 768), (3072, 768), (768, 3072), (50257, 768)):
            copies = max(1, mib * 2**20 // (n * k))
            codes = [torch.randint(-127, 128, (n, k), dtype=torch.int8) for _ in range(copies)]
            scale, bias = torch.rand(n, 1) / 100, torch.randn(n)
            ones = torch.ones(n, dtype=torch.bfloat16)
            x = torch.randn(m, k)
            xb = x.bfloat16()
            float_copies = max(1, copies // 4)  # the same MiB of float32 weights
            packed = [
                torch.ops.mkldnn._reorder_linear_weight(torch.randn(n, k), None)
                for _ in range(float_copies)
            ]

            ours = functools.partial(_int8_products, "ours", x, scale, bias, codes)
            theirs = functools.partial(_int8_products, "torch", xb, ones, None, codes)
            float32 = functools.partial(_products, "packed", x, bias, packed)
            t = time_interleaved(
                {"ours": ours, "torch": theirs, "float32": float32}, warmup=1, repeat=repeat
            )
            ours_gbs = copies * (n * k + 4 * n) / t["ours"].median_s / 1e9
            torch_gbs = copies * n * k / t["torch"].median_s / 1e9
            float_gbs = float_copies * n * k * 4 / t["float32"].median_s / 1e9
            per_product = {
                name: 1e6 * t[name].median_s / c
                for name, c in (("ours", copies), ("torch", copies), ("float32", float_copies))
            }
            rows.append(
                [
                    m,
                    f"({n}, {k})",
                    f"{per_product['ours']:.0f} us, {ours_gbs:.1f}",
                    f"{per_product['torch']:.0f} us, {torch_gbs:.1f}",
                    f"{per_product['float32']:.0f} us, {float_gbs:.1f}",
                    f"{per_product['torch'] / per_product['ours']:.2f}x",
                ]
            )
            del codes, packed
    return markdown_table(
        [
            "rows",
            "weight (N, K)",
            "ours int8: per product, GB/s",
            "torch int8pack: per product, GB/s",
            "oneDNN float32 packed: per product, GB/s",
            "ours vs int8pack",
        ],
        rows,
    )


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


def step_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decoding step reads: every leaf module's tensors once (shared ones
    once), except embeddings and position tables (a step reads one row) and, in a quantized
    attention layer, the separate q/k/v copies that self-attention does not use."""
    seen: set[int] = set()
    total = 0
    skip: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantizedMultiHeadAttention):
            skip.update(id(m) for m in (module.q_proj, module.k_proj, module.v_proj))
    for name, module in model.named_modules():
        if id(module) in skip or isinstance(module, nn.Embedding) or "positional" in name:
            continue
        if isinstance(module, WeightOnlyLinear):
            # The portable form has the packed form's bytes; it is never shared (and a packed
            # float32 layer makes it afresh, so its addresses cannot tell copies apart).
            total += sum(t.numel() * t.element_size() for t in module.state_dict().values())
            continue
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    # A float LM head tied to the embedding reads the whole matrix every step.
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and head.weight.data_ptr() not in seen:
        total += head.weight.numel() * head.weight.element_size()
    return total


def variants(
    lm: DecoderLM, calibration: torch.Tensor | None = None, only: set[str] | None = None
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Our float32 model and its quantized copies, with a note for formats that fell back.
    With ``calibration`` ids ``(B, N)``, also int8 and int4 rounded by GPTQ on them
    ("...-gptq": the same layers and kernels as without). "int8" runs multihead's int8 kernel
    (float32 arithmetic) where it builds; "int8-torch" is the same model on PyTorch's
    ``_weight_int8pack_mm`` (bf16 activations), timed in the same run; "int8-g128" has one
    scale per 128 input channels. ``only``: the formats to make (float32 always)."""
    models: dict[str, nn.Module] = {"float32": lm}
    notes: dict[str, str] = {}
    # "float32-packed": the same float32 weights, prepacked for oneDNN (weights="float32").
    formats: list[tuple[str, dict[str, Any]]] = [
        ("float32-packed", {"weights": "float32"}),
        ("bf16", {"weights": "bf16"}),
        ("int8", {"weights": "int8"}),
        ("int8-g128", {"weights": "int8", "group_size": GROUP}),
        ("int4", {"weights": "int4"}),
    ]
    if calibration is not None:
        formats += [
            ("int8-gptq", {"weights": "int8"}),
            ("int8-g128-gptq", {"weights": "int8", "group_size": GROUP}),
            ("int4-gptq", {"weights": "int4"}),
        ]
    for name, options in formats:
        if only is not None and name not in only:
            continue
        if name.endswith("-gptq"):
            options = {**options, "calibration": calibration}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            try:
                models[name] = quantize(lm, **options)
            except ValueError as exc:
                notes[name] = f"skipped: {exc}"
                continue
        if caught:
            notes[name] = str(caught[0].message)
    if "int8" in models and int8_kernel_available():
        # The same int8 model on PyTorch's kernel: the layers' private switch, for timing only.
        torch_int8 = copy.deepcopy(models["int8"])
        for module in torch_int8.modules():
            if isinstance(module, Int8WeightLinear):
                module._native = False
        models["int8-torch"] = torch_int8
    return models, notes


def without_c_step(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` with the lean step's PyTorch path instead of the C step (for timing only)."""

    def run() -> torch.Tensor:
        original = lean_decode.native_step
        lean_decode.native_step = lambda model: None
        try:
            return fn()
        finally:
            lean_decode.native_step = original

    return run


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """``(share equal until the first divergence, share equal overall)`` of new tokens
    ``(B, T)``, averaged over the batch."""
    equal = tokens == reference  # (B, T)
    until = equal.long().cumprod(dim=1).sum(dim=1).float() / equal.shape[1]
    return float(until.mean()), float(equal.float().mean())


def logit_errors(model: nn.Module, reference: nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    """Max and mean absolute logit difference over ``ids (B, N)`` (teacher forcing)."""
    with torch.inference_mode():
        diff = (model(ids) - reference(ids)).abs()
    return float(diff.max()), float(diff.mean())


def products_alone(model: DecoderLM, new_tokens: int, repeat: int) -> str:
    """``generate`` of the float32-packed model against its matrix products alone (same
    weights, same calls, nothing around them), interleaved. The ``generate`` time per token
    holds everything else a call does: the prompt's prefill spread over the new tokens,
    attention over the cache, norms, GELU, adds, the argmax and the Python between them.
    Bytes as in the speed table: weights plus keys and values for the call, weights alone for
    the products."""
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    skip = {
        id(m.get_submodule(n))
        for m in model.modules()
        if isinstance(m, QuantizedMultiHeadAttention)
        for n in ("q_proj", "k_proj", "v_proj")
    }
    layers = [m for m in layers if id(m) not in skip]  # the products a step runs
    inputs = [torch.randn(1, 1, m.in_features) for m in layers]
    prompt = torch.randint(1, model.config.vocab_size, (1, PROMPT))

    def products() -> None:
        for _ in range(new_tokens):
            for layer, x in zip(layers, inputs, strict=True):
                layer.forward(x)

    def step() -> None:
        model.generate(prompt, new_tokens, do_sample=False)

    read, read_bytes = read_probe()
    with torch.inference_mode():
        t = time_interleaved(
            {"step": step, "products": products, "read": read}, warmup=1, repeat=repeat
        )
    read_gbs = read_bytes / t["read"].median_s / 1e9
    weights = step_weight_bytes(model)
    kv = kv_bytes_per_step(model.config, 1, new_tokens)
    parts = []
    for name, nbytes, what in (
        ("step", weights + kv, "`generate`, per token"),
        ("products", weights, f"its {len(layers)} matrix products alone"),
    ):
        seconds = t[name].median_s / new_tokens
        parts.append(f"{what} {1e3 * seconds:.2f} ms ({nbytes / seconds / 1e9 / read_gbs:.0%})")
    return (
        f"float32-packed at batch 1, of the read bandwidth (`sum`, {read_gbs:.1f} GB/s, "
        f"interleaved with these two): {'; '.join(parts)}."
    )


def compare_with_hf(
    batches: list[int], new_tokens: int, repeat: int, only: set[str] | None = None
) -> tuple[str, dict[str, float]]:
    """The speed and quality tables; returns the report and ``{name: speed-up vs HF}`` at
    batch 1 (plus ``"float32 BW"`` and ``"float32-packed BW"``, the fraction of read bandwidth
    of ours in float32 as ``nn.Linear`` layers and prepacked)."""
    hf, lm = gpt2_small()
    models, notes = variants(lm, only=only)
    weight_bytes = {name: step_weight_bytes(m) for name, m in models.items()}
    before_gbs, copy_gbs = read_bandwidth_gbs()
    read_by_batch: dict[int, float] = {}
    rows, quality_rows = [], []
    summary: dict[str, float] = {}
    for batch in batches:
        prompt = torch.randint(1, hf.config.vocab_size, (batch, PROMPT))
        mask = torch.ones_like(prompt)
        runs: dict[str, Callable[[], torch.Tensor]] = {}

        def theirs(prompt: torch.Tensor = prompt, mask: torch.Tensor = mask) -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(
                    prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False
                )

        runs["transformers float32"] = theirs
        for name, model in models.items():
            runs[f"multihead {name}"] = functools.partial(
                model.generate, prompt, new_tokens, do_sample=False, use_cache=True
            )
            if name == "float32" and _native.native_available(_native.DECODE):
                runs["multihead float32-torch"] = without_c_step(runs["multihead float32"])
        outputs = {name: fn() for name, fn in runs.items()}  # also the warm-up
        reference = outputs["multihead float32"]
        read, read_bytes = read_probe()
        t = time_interleaved({**runs, "read": read}, warmup=0, repeat=repeat)
        read_gbs = read_bytes / t["read"].median_s / 1e9  # the fractions' reference
        read_by_batch[batch] = read_gbs
        hf_s = t["transformers float32"].median_s
        for name in runs:
            fmt = name.split()[-1]
            seconds = t[name].median_s
            steps_per_s = new_tokens / seconds
            model_bytes = (
                weight_bytes.get(fmt, weight_bytes["float32"])
                if "multihead" in name
                else weight_bytes["float32"]
            )
            step_bytes = model_bytes + kv_bytes_per_step(lm.config, batch, new_tokens)
            gbs = step_bytes * steps_per_s / 1e9
            until, overall = agreement(outputs[name][:, PROMPT:], reference[:, PROMPT:])
            rows.append(
                [
                    batch,
                    name + (" (fallback)" if fmt in notes else ""),
                    f"{batch * new_tokens / seconds:.1f}",
                    f"{1e3 / steps_per_s:.1f}",
                    f"{step_bytes / 1e6:.0f}",
                    f"{gbs:.1f}",
                    f"{100 * gbs / read_gbs:.0f}%",
                    f"{hf_s / seconds:.2f}x",
                    f"{100 * until:.0f}% / {100 * overall:.0f}%",
                ]
            )
            if batch == 1:
                summary[name] = hf_s / seconds
                if name in ("multihead float32", "multihead float32-packed"):
                    summary[f"{fmt} BW"] = gbs / read_gbs
                    # Against the fastest `sum` of the run so far: the `sum` is noisy on a
                    # shared machine, and a slow sample flatters the fraction.
                    best = max(before_gbs, *read_by_batch.values())
                    summary[f"{fmt} BW of best"] = gbs / best
        print(f"batch {batch}: done", file=sys.stderr)
        if batch == batches[-1]:  # the most sequences
            for name, model in models.items():
                if name == "float32":
                    continue
                high, mean = logit_errors(model, lm, reference)
                until, overall = agreement(
                    outputs[f"multihead {name}"][:, PROMPT:], reference[:, PROMPT:]
                )
                quality_rows.append(
                    [
                        name,
                        f"{100 * until:.1f}%",
                        f"{100 * overall:.1f}%",
                        f"{high:.3f}",
                        f"{mean:.4f}",
                    ]
                )
    table = markdown_table(
        [
            "batch",
            "implementation",
            "tokens/s",
            "ms/step",
            "MB/token",
            "GB/s",
            "of read BW",
            "vs HF",
            "greedy = ours fp32 (until 1st diff / all)",
        ],
        rows,
    )
    quality = markdown_table(
        [
            "weights",
            "greedy equal until 1st divergence",
            "equal overall",
            "max |logit err|",
            "mean |logit err|",
        ],
        quality_rows,
    )
    fallbacks = "".join(f"\n- {name}: {note}" for name, note in notes.items())
    if "float32-packed" in models:
        packed = models["float32-packed"]
        assert isinstance(packed, DecoderLM)
        fallbacks += "\n\n" + products_alone(packed, new_tokens, repeat)
    note = (
        f"GPT-2 small shape, random weights, prompt {PROMPT}, {new_tokens} new tokens, greedy; "
        f"HF attention: `{hf.config._attn_implementation}`; median of {repeat} interleaved runs; "
        f'{torch.get_num_threads()} thread(s). Read bandwidth, the reference of "of read BW": '
        f"a `sum` of 512 MiB timed interleaved with the runs, median "
        + ", ".join(f"{gbs:.1f} GB/s at batch {b}" for b, gbs in read_by_batch.items())
        + f" (best of 7 before the runs: {before_gbs:.1f} GB/s; `copy` {copy_gbs:.1f} GB/s "
        "read+write). "
        f"bf16 units (avx512_bf16/amx_bf16): {'yes' if bf16_units() else 'no'}.{fallbacks}"
    )
    quality_note = (
        f"Quality against our float32 at batch {batches[-1]} (random weights: near-tied logits "
        "make greedy agreement a harsh test; the trained character LM follows)."
    )
    return f"{note}\n\n{table}\n\n{quality_note}\n\n{quality}\n", summary


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

    def through_modules() -> torch.Tensor:
        # The cache through the module tree instead of the lean step (what it saves).
        lm._lean_stepper = lambda max_len: None  # type: ignore[method-assign]
        try:
            return lm.generate(prompt, new_tokens, use_cache=True)
        finally:
            del lm._lean_stepper

    runs = {
        "cached": lambda: lm.generate(prompt, new_tokens, use_cache=True),
        "cached, through the modules": through_modules,
        "uncached": lambda: lm.generate(prompt, new_tokens, use_cache=False),
    }
    outputs = {name: fn() for name, fn in runs.items()}
    same = all(torch.equal(out, outputs["uncached"]) for out in outputs.values())
    t = time_interleaved(runs, warmup=0, repeat=repeat)
    speedup = t["uncached"].median_s / t["cached"].median_s
    rows = [
        [name, f"{t[name].median_s:.3f}", f"{new_tokens / t[name].median_s:.0f}"] for name in runs
    ]
    table = markdown_table(["DecoderLM.generate", "s (median)", "tokens/s"], rows)
    note = (
        f"Small model (2 layers, 128 wide, 4 heads), batch 1, prompt {PROMPT}, {new_tokens} new "
        f"tokens, median of {repeat} interleaved runs. Speed-up {speedup:.1f}x; tokens "
        f'identical in all three: {"yes" if same else "**NO**"}. "cached" is `generate`\'s '
        'lean step; "through the modules" the same cache through the module tree.'
    )
    return f"{note}\n\n{table}\n", speedup


def windowed_greedy(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    context: int,
    forced: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation as ``multihead generate`` runs a character LM: each step sees the
    last ``context`` tokens. With ``forced (B, T)`` those tokens are fed instead of the argmax
    (teacher forcing). Returns ``(new tokens (B, T), logits (B, T, V))``."""
    tokens = prompt
    chosen, logits = [], []
    with torch.inference_mode():
        for t in range(new_tokens):
            step = model(tokens[:, -context:])[:, -1]  # (B, V)
            nxt = step.argmax(dim=-1) if forced is None else forced[:, t]
            chosen.append(nxt)
            logits.append(step)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return torch.stack(chosen, 1), torch.stack(logits, 1)


def char_lm_quality(path: Path, new_tokens: int) -> str:
    """Greedy agreement, logit errors and validation loss of each weight format on the
    character LM trained by ``multihead train text``."""
    trained = load_trained(path)
    lm = trained.model
    assert isinstance(lm, DecoderLM)
    task_config = trained.checkpoint.get("task_config", {})
    context = int(task_config.get("block_size") or lm.config.max_len)
    recipe = get_recipe(
        "text",
        d_model=lm.config.d_model,
        layers=lm.config.num_decoder_layers,
        heads=lm.config.num_heads,
        block_size=context,
        text_path=task_config.get("path"),
    )
    assert isinstance(recipe, LanguageModelRecipe)
    # 64 prompts: one early flip ends a text's agreement, so with 8 texts a single near-tie
    # moved the share by up to 12 points between otherwise equal runs.
    prompts = recipe.task.get_batch("valid", PROMPTS, torch.Generator().manual_seed(1))[0][:, :16]
    calibration = recipe.task.get_batch("train", CALIBRATION, torch.Generator().manual_seed(0))[0]
    models, notes = variants(lm, calibration)
    models = {"dynamic int8 (per-token)": quantize(lm), **models}
    ref_tokens, ref_logits = windowed_greedy(lm, prompts, new_tokens, context, None)
    rows = []
    for name, model in models.items():
        tokens, _ = windowed_greedy(model, prompts, new_tokens, context, None)
        _, logits = windowed_greedy(model, prompts, new_tokens, context, ref_tokens)
        until, overall = agreement(tokens, ref_tokens)
        err = (logits - ref_logits).abs()
        loss = recipe.evaluate(model, torch.device("cpu"))["loss"]
        fallback = " (fallback)" if name in notes else ""
        rows.append(
            [
                name + fallback,
                f"{100 * until:.1f}%",
                f"{100 * overall:.1f}%",
                f"{float(err.max()):.3f}",
                f"{float(err.mean()):.4f}",
                f"{loss:.4f}",
                f"{math.exp(loss):.3f}",
            ]
        )
    table = markdown_table(
        [
            "weights",
            "greedy = float32 until 1st divergence",
            "equal overall",
            "max |logit err|",
            "mean |logit err|",
            "val loss",
            "perplexity",
        ],
        rows,
    )
    note = (
        f"Character LM `{path}` (step {trained.step}, {lm.config.num_decoder_layers} layers of "
        f"{lm.config.d_model}, context {context}): {PROMPTS} validation prompts of 16 characters, "
        f"{new_tokens} greedy characters each, every step on the last {context} (as `multihead "
        f"generate`); logit errors teacher-forced on float32's text; validation loss from the "
        f"recipe's evaluation (8 batches of 32). `-gptq`: rounded by GPTQ on {CALIBRATION} "
        f"training windows of {context} characters (`quantize(lm, weights=..., "
        f"calibration=ids)`); same kernels, so the speed table's int8/int4 rows hold for them."
    )
    return f"{note}\n\n{table}\n"


def verdict(summary: dict[str, float], speedup: float, cache_tokens: int) -> list[str]:
    def line(what: str, value: float, target: float, unit: str) -> str:
        met = "met" if value >= target else "NOT met"
        return f"- {what}: {value:.2f}{unit} (target >= {target}{unit}: {met})"

    checks = [
        (
            "float32 BW",
            "float32 (nn.Linear; the C step where it builds, see the header), fraction of read "
            "bandwidth",
            TARGET_FLOAT_BW,
            "",
        ),
        (
            "float32-packed BW",
            "float32 prepacked (`--quantize float32`), fraction of read bandwidth",
            TARGET_FLOAT_BW,
            "",
        ),
        ("multihead int8", "int8 vs transformers float32", TARGET_INT8, "x"),
        ("multihead int4", "int4 vs transformers float32", TARGET_INT4, "x"),
    ]
    lines = [
        line(what, summary[key], target, unit)
        + (f"; {summary[key + ' of best']:.2f} of the run's fastest `sum`" if "BW" in key else "")
        for key, what, target, unit in checks
        if key in summary
    ]
    lines.append(line(f"cached vs uncached at {cache_tokens} tokens", speedup, TARGET_CACHE, "x"))
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens, batch 1 only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for every library (default: the physical cores that are free, "
        "1 on a busy machine: OpenMP threads that wait on each other at every small decoding "
        "op made a step 3-10x slower)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated weight formats to run besides float32 (e.g. float32-packed,int8; "
        "default: all)",
    )
    parser.add_argument(
        "--text-checkpoint",
        default="runs/text/checkpoint.pt",
        help="a character LM from `multihead train text`, for the quality table",
    )
    args, _ = parser.parse_known_args(argv)  # run.py passes every benchmark the same flags
    threads = apply_thread_policy(args.threads)
    new_tokens = 32 if args.quick else 256
    batches = [1] if args.quick else [1, 8]
    cache_tokens = 128 if args.quick else 512
    text_checkpoint = Path(args.text_checkpoint)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    problem, step_problem = native.native_problem(), _native.native_problem(_native.DECODE)
    kernel = (
        f"multihead's C code: {native.vector_lanes()} float lanes"
        if problem is None
        else f"multihead's int8 kernel unavailable ({problem})"
    )
    kernel += (
        "; float32 step in C"
        if step_problem is None
        else f"; float32 step in PyTorch (C step unavailable: {step_problem})"
    )
    parts = [
        f"{machine_summary()}; {threads} thread(s); {kernel}; load average {load} at the start",
        "",
    ]
    summary: dict[str, float] = {}
    try:
        import transformers  # noqa: F401
    except ImportError:
        parts.append("transformers is not installed: the comparison with HF was skipped.\n")
    else:
        only = None if args.only is None else set(args.only.split(","))
        known = {"float32", "float32-packed", "bf16", "int8", "int8-g128", "int4"}
        if only is not None and not only <= known:
            parser.error(f"--only takes formats among {sorted(known)}, got {sorted(only - known)}")
        report, summary = compare_with_hf(batches, new_tokens, args.repeat, only)
        parts += ["### Greedy decoding vs transformers", "", report]
    if text_checkpoint.is_file():
        quality = char_lm_quality(text_checkpoint, new_tokens)
        parts += ["### Quality on the trained character LM", "", quality]
    else:
        parts.append(f"No character LM at {text_checkpoint}: its quality table was skipped.\n")
    if not args.quick:
        parts += [
            "### Weight layout of one matrix-vector product (float32, batch 1)",
            "",
            layout_table(args.repeat),
            "",
            "### multihead's int8 kernel against PyTorch's, one product",
            "",
            int8_kernel_table(args.repeat),
            "",
        ]
    report, speedup = cache_speedup(cache_tokens, max(1, args.repeat - 1))
    parts += ["### Cached vs uncached", "", report]
    parts += ["### Targets", "", *verdict(summary, speedup, cache_tokens), ""]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    parts.append(f"Load average at the end: {load}.")
    report = "\n".join(parts)
    print(report)
    return report


if __name__ == "__main__":
    main()
