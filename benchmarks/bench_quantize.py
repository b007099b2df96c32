"""Int8 dynamic quantization of the date translator vs float32, on the CPU.

The model: the demo's checkpoint (``runs/demo/checkpoint.pt``, written by ``multihead demo``)
when it exists, else a dates model trained here for ``--train-steps`` updates (the report
says which, and its float accuracy). ``multihead.quantize.quantize`` makes the int8 copy
(attention projections and feed-forward layers; embeddings, norms and the tied output head
stay float).

Measured, float32 and int8 in the same run:

* greedy decoding of 1,000 held-out dates (the task's ``test`` split, every date form) in one
  batch of 1,000 (runs interleaved float, int8, float, ...) and one date at a time (each date
  decoded by both models in turn, times summed; the first 200 by default, ``--single``),
  targets >= 1.3x faster;
* exact match of the decoded ISO dates, target <= 0.5 point lost;
* one projection-sized ``Linear`` (the feed-forward's first layer on 11,000 tokens: 1,000
  dates x 11 decoder positions) with each kernel: float32, PyTorch's int8
  (``kernel="torch"``), our reference int8 (``kernel="reference"``) and ``torch._int_mm``.

A second part (issue 12, item 4) compares the dynamic int8 kernels on a decoder LM (the
character LM of ``multihead train text`` when ``--text-checkpoint`` exists, else a random
small LM with large weights): the old per-tensor activation scale (``kernel="torch"``), the
per-token default (``kernel="int8pack"``), the per-token ``"reference"`` kernel and float32.
For each: the largest change of a sequence's logits when it shares a padded batch, whether
cached and uncached greedy generation agree, and the time of a batch forward (64 x 64 tokens)
and of a batch-1 cached generation (64 tokens), interleaved.

Run: ``python benchmarks/bench_quantize.py`` (``--quick``: 200 dates, batch-1 on 50;
``--lm-only``: the second part only).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from multihead.bench.harness import machine_summary, markdown_table, time_interleaved
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.quantize import quantize, quantized_linear, torch_kernels_available
from multihead.tasks import DatesTask
from multihead.tasks.date_reading import model_source
from multihead.threads import apply_thread_policy
from multihead.train.loop import TrainConfig, train
from multihead.train.recipes import (
    Seq2SeqRecipe,
    get_recipe,
    load_trained,
    translate_texts,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = ROOT / "runs" / "demo" / "checkpoint.pt"


def load_or_train(
    path: Path, steps: int, train_out: Path | None
) -> tuple[nn.Module, object, int, str]:
    """``(model, vocab, max_output_len, provenance)``: the checkpoint at ``path``, else the one
    a previous fallback run left in ``train_out``, else a freshly trained model (saved to
    ``train_out`` when given, so the next run skips the training)."""
    for candidate, what in ((path, "checkpoint"), (train_out, "fallback checkpoint")):
        if candidate is not None and (candidate / "checkpoint.pt").exists():
            candidate = candidate / "checkpoint.pt"
        if candidate is not None and candidate.is_file():
            trained = load_trained(candidate)
            return (
                trained.model,
                trained.vocab,
                int(trained.checkpoint["max_output_len"]),
                f"{what} {candidate} (step {trained.step})",
            )
    recipe = get_recipe("dates")
    assert isinstance(recipe, Seq2SeqRecipe)
    model = recipe.build_model(seed=0)
    began = time.perf_counter()
    # Evaluation at the end only: the bench measures exact match itself.
    config = TrainConfig(
        steps=steps,
        batch_size=128,
        lr=2e-3,
        warmup=100,
        eval_every=0,
        progress=False,
        out_dir=None if train_out is None else str(train_out),
    )
    train(model, recipe, config)
    took = time.perf_counter() - began
    return (
        model.eval(),
        recipe.vocab,
        recipe.max_output_len,
        f"no checkpoint at {path}: trained here, {steps} steps of the dates recipe "
        f"({took:.0f} s), so accuracy is below the demo's",
    )


def exact_match(outputs: list[str], targets: list[str]) -> float:
    return 100.0 * sum(o == t for o, t in zip(outputs, targets, strict=True)) / len(targets)


def linear_kernels(tokens: int, d_in: int, d_out: int, repeat: int) -> str:
    """One Linear layer with each kernel, interleaved."""
    torch.manual_seed(0)
    lin = nn.Linear(d_in, d_out)
    x = torch.randn(tokens, d_in)
    fns = {"float32": lambda: lin(x)}
    ours = quantized_linear(lin, kernel="reference")
    fns["int8 reference (per-token)"] = lambda: ours(x)
    packed = quantized_linear(lin, kernel="int8pack")
    fns["int8 int8pack (per-token)"] = lambda: packed(x)
    onednn = quantized_linear(lin, kernel="auto")
    fns[f"int8 {onednn.kernel} (per-token, default)"] = lambda: onednn(x)  # type: ignore[operator]
    if torch_kernels_available():
        q = quantized_linear(lin, kernel="torch")
        fns["int8 torch.ao (FBGEMM, per-tensor, old default)"] = lambda: q(x)
    if hasattr(torch, "_int_mm"):
        w = lin.weight.detach()
        ws = w.abs().amax(1) / 127
        wq = torch.round(w / ws[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous()

        def int_mm() -> torch.Tensor:
            xs = x.abs().amax(1, keepdim=True) / 127
            xq = torch.round(x / xs).clamp(-127, 127).to(torch.int8)
            return torch.addcmul(lin.bias, torch._int_mm(xq, wq).float(), xs * ws)

        fns["int8 torch._int_mm"] = int_mm
    with torch.no_grad():
        ref = lin(x)
        times = time_interleaved(fns, warmup=1, repeat=repeat)
        rows = []
        for name, fn in fns.items():
            out = fn()
            err = ((out - ref).norm() / ref.norm()).item()
            t = times[name].median_ms
            rows.append([name, f"{t:.2f}", f"{times['float32'].median_ms / t:.2f}x", f"{err:.4f}"])
    return markdown_table(
        [f"Linear({d_in}, {d_out}) on {tokens} tokens", "ms", "speed-up", "rel err"], rows
    )


def small_lm(seed: int = 0, gain: float = 3.0) -> DecoderLM:
    """A random small LM with weights scaled by ``gain`` (the issue's repro of the drift)."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=50, d_model=64, num_heads=4, d_ff=128, num_decoder_layers=2, dropout=0.0
    )
    lm = DecoderLM(config).eval()
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.mul_(gain)
    return lm


def dynamic_kernels_on_lm(checkpoint: Path, repeat: int) -> str:
    """Batch invariance and cost of each dynamic int8 kernel against float32 (issue 12.4)."""
    if checkpoint.is_file():
        lm = load_trained(checkpoint).model
        what = f"character LM {checkpoint}"
    else:
        lm = small_lm()
        what = "random small LM (2 layers of 64, weights x3; no --text-checkpoint)"
    assert isinstance(lm, DecoderLM)
    vocab = lm.config.vocab_size
    models: dict[str, nn.Module] = {"float32": lm}
    if torch_kernels_available():
        models["int8 per-tensor (torch, old default)"] = quantize(lm, kernel="torch")
    models["int8 per-token (default: auto)"] = quantize(lm)
    models["int8 per-token (int8pack)"] = quantize(lm, kernel="int8pack")
    models["int8 per-token (reference)"] = quantize(lm, kernel="reference")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (4, 24), generator=gen)
    mask = torch.ones(ids.shape, dtype=torch.bool)
    mask[0, 13:] = False
    prompts = torch.randint(1, vocab, (4, 4), generator=gen)
    batch = torch.randint(1, vocab, (64, 64), generator=gen)
    prompt1 = prompts[:1]
    fns = {}
    for name, model in models.items():
        fns[f"{name} forward"] = functools.partial(torch.inference_mode()(model), batch)
        fns[f"{name} generate"] = functools.partial(model.generate, prompt1, 64)
    times = time_interleaved(fns, warmup=1, repeat=repeat)
    rows = []
    for name, model in models.items():
        with torch.inference_mode():
            drift = float((model(ids[:1, :13]) - model(ids, mask)[:1, :13]).abs().max())
        cached = model.generate(prompts, 64, use_cache=True)
        same = torch.equal(cached, model.generate(prompts, 64, use_cache=False))
        fwd, gen_s = times[f"{name} forward"].median_s, times[f"{name} generate"].median_s
        rows.append(
            [
                name,
                f"{drift:.1e}",
                "yes" if same else "**no**",
                f"{1e3 * fwd:.0f}",
                f"{times['float32 forward'].median_s / fwd:.2f}x",
                f"{1e3 * gen_s:.0f}",
                f"{times['float32 generate'].median_s / gen_s:.2f}x",
            ]
        )
    table = markdown_table(
        [
            "model",
            "max logit change, padded batch",
            "cached == uncached greedy (4 x 64)",
            "forward 64x64: ms",
            "vs float32",
            "generate 64, batch 1: ms",
            "vs float32",
        ],
        rows,
    )
    return f"Dynamic int8 kernels on the {what}; median of {repeat} interleaved runs.\n\n{table}\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT))
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument(
        "--train-out", default=None, help="where the fallback model is saved and found again"
    )
    parser.add_argument("--dates", type=int, default=1000, help="held-out dates to decode")
    parser.add_argument(
        "--single",
        type=int,
        default=200,
        help="of those, how many are decoded one at a time too (default 200: each takes a "
        "full greedy decode per model, minutes for 1,000 on a small CPU)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 dates, 50 one at a time")
    parser.add_argument("--text-checkpoint", default=str(ROOT / "runs" / "text" / "checkpoint.pt"))
    parser.add_argument("--lm-only", action="store_true", help="only the dynamic-kernel table")
    parser.add_argument("--threads", type=int, default=None, help="default: free physical cores")
    args = parser.parse_args(argv)
    threads = apply_thread_policy(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lm_part = dynamic_kernels_on_lm(Path(args.text_checkpoint), args.repeat)
    # GPT-2-small's up projection: many tokens (prefill, batch work) and one (a decoding step).
    lm_part += "\nOne GPT-2-sized layer, each kernel:\n\n"
    lm_part += linear_kernels(4096, 768, 3072, args.repeat) + "\n\n"
    lm_part += linear_kernels(1, 768, 3072, 20 * args.repeat) + "\n"
    if args.lm_only:
        report = f"{machine_summary()}; {threads} thread(s); load {load}\n\n{lm_part}"
        print(report)
        return report
    n_dates = 200 if args.quick else args.dates
    n_single = min(n_dates, 50 if args.quick else args.single)
    train_out = Path(args.train_out) if args.train_out else None
    model, vocab, max_len, provenance = load_or_train(
        Path(args.checkpoint), args.train_steps, train_out
    )
    qmodel = quantize(model)
    samples = DatesTask().sample_full(n_dates, "test", balanced=True)
    pairs = [(model_source(s.text, s.order), s.target) for s in samples]
    texts = [s for s, _ in pairs]
    targets = [t for _, t in pairs]

    def decode(m: nn.Module, batch: list[str], batch_size: int) -> list[str]:
        return translate_texts(m, vocab, batch, max_len=max_len, batch_size=batch_size)  # type: ignore[arg-type]

    print(f"batch {n_dates}: float vs int8, {args.repeat} interleaved runs", file=sys.stderr)
    times = time_interleaved(
        {
            "float32": lambda: decode(model, texts, n_dates),
            "int8": lambda: decode(qmodel, texts, n_dates),
        },
        warmup=1,
        repeat=args.repeat,
    )
    out_f = decode(model, texts, n_dates)
    out_q = decode(qmodel, texts, n_dates)
    em_f, em_q = exact_match(out_f, targets), exact_match(out_q, targets)
    agree = 100.0 * sum(a == b for a, b in zip(out_f, out_q, strict=True)) / n_dates

    print(f"batch 1: {n_single} dates, each by both models in turn", file=sys.stderr)
    single = {"float32": 0.0, "int8": 0.0}
    for text in texts[:n_single]:
        for name, m in (("float32", model), ("int8", qmodel)):
            start = time.perf_counter()
            decode(m, [text], 1)
            single[name] += time.perf_counter() - start

    t_f, t_q = times["float32"].median_ms, times["int8"].median_ms
    rows = [
        [
            "float32",
            f"{t_f:.0f}",
            f"{1e3 * single['float32']:.0f}",
            "1.00x / 1.00x",
            f"{em_f:.1f}",
        ],
        [
            "int8 dynamic",
            f"{t_q:.0f}",
            f"{1e3 * single['int8']:.0f}",
            f"{t_f / t_q:.2f}x / {single['float32'] / single['int8']:.2f}x",
            f"{em_q:.1f}",
        ],
    ]
    table = markdown_table(
        [
            "model",
            f"batch {n_dates}: ms",
            f"batch 1: ms for {n_single} dates",
            "speed-up (batch / one at a time)",
            "exact match %",
        ],
        rows,
    )
    speedup_b, speedup_1 = t_f / t_q, single["float32"] / single["int8"]
    lost = em_f - em_q
    verdict = (
        f"- speed-up: batch {n_dates} **{speedup_b:.2f}x**, one at a time **{speedup_1:.2f}x** "
        f"(target >= 1.3x: {'met' if speedup_b >= 1.3 else 'NOT met'} / "
        f"{'met' if speedup_1 >= 1.3 else 'NOT met'})\n"
        f"- exact match {em_f:.1f}% -> {em_q:.1f}%: **{lost:+.1f} points lost** "
        f"(target <= 0.5: {'met' if lost <= 0.5 else 'NOT met'}); the two models agree on "
        f"{agree:.1f}% of the outputs\n"
    )
    d = getattr(model, "config", None)
    d_model = getattr(d, "d_model", 128)
    d_ff = getattr(d, "d_ff", 256)
    kernels = linear_kernels(n_dates * 11, d_model, d_ff, args.repeat)
    header = (
        f"{machine_summary()}; quantized engine {torch.backends.quantized.engine}\n\n"
        f"Model: {provenance}. Held-out: {n_dates} dates of the test split, every form.\n"
    )
    report = f"{header}\n{table}\n\n{verdict}\nLinear kernels:\n\n{kernels}\n\n{lm_part}"
    print(report)
    return report


if __name__ == "__main__":
    main()
