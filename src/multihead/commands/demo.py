"""Train the date translator from scratch and show what it learned.

A small encoder-decoder Transformer learns to turn dates as people write them (ISO, numeric
day-first and month-first, month names in English, French, German, Spanish, Italian, Portuguese
and Dutch, ordinals, weekdays, two-digit years: "Nov 22, 2026", "le 1er mai 1999", "22.11.26",
"2026-11-22T10:30Z", ...) into ISO dates, from characters alone. Training stops as soon as the
validation exact match reaches the target. Then the demo prints sample translations, the exact
match on held-out test dates (days never seen in training) per form family, with silently
wrong answers and refusals counted apart, and writes into --out:

  checkpoint.pt   the model (used by `multihead translate`; a copy also goes to the per-user
                  folder $MULTIHEAD_HOME, default ~/.local/share/multihead, so `translate`
                  finds it from any folder)
  metrics.jsonl   one JSON object per log / evaluation step
  loss.png        the loss curve with the validation exact match
  attention.png   cross-attention of the last decoder layer for one input: the mean over
                  heads, then each head; row = the output character being produced,
                  column = the source character it looks at

A second run reuses the checkpoint (evaluates and prints again) unless --fresh is given; if
the first run was interrupted (Ctrl-C saves a checkpoint), the second continues its training.
By default torch gets as many threads as the load average leaves cores free, so a busy
machine does not make the threads wait on each other; --threads overrides it.

Example:
    multihead demo
    echo "Nov 22, 2026" | multihead translate
    multihead demo --fresh --seed 1 --out runs/demo1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from multihead.commands._common import (
    MAX_SEED,
    MAX_STEPS,
    add_threads_option,
    auto_threads,
    check_out_dir,
    float_in,
    int_in,
    set_threads,
    utf8_text,
)
from multihead.commands.translate import safe_checkpoint_reason
from multihead.errors import CommandError
from multihead.modules.models import Seq2SeqTransformer, TransformerConfig, num_parameters
from multihead.tasks import BOS, FAMILIES, CharVocab, DatesTask
from multihead.tasks.date_reading import ORDER_MARKS, model_source, read_date, shorten
from multihead.train.checkpoint import CheckpointError, copy_checkpoint, user_checkpoint_path
from multihead.train.dates import score_dates, translate_dates
from multihead.train.distributed import DistInfo
from multihead.train.loop import (
    CHECKPOINT_NAME,
    LOSS_PLOT_NAME,
    METRICS_NAME,
    TrainConfig,
    read_metrics,
    train,
)
from multihead.train.plots import plot_cross_attention
from multihead.train.recipes import (
    RECIPE_DEFAULTS,
    Seq2SeqRecipe,
    TrainedModel,
    get_recipe,
    load_trained,
    translate_texts,
    with_train_overrides,
)

__all__ = ["ATTENTION_PLOT_NAME", "DEFAULT_OUT", "configure", "cross_attention_figure", "run"]

DEFAULT_OUT = "runs/demo"
ATTENTION_PLOT_NAME = "attention.png"
TEST_SIZE = 1000
# Longest form with a weekday: the heatmap shows the model skipping it.
DEFAULT_EXAMPLE = "Sunday, 22 November 2026"
# One per kind of difficulty: abbreviations, French "1er", two-digit years, month-first,
# upper case, a weekday to skip, German, ISO with a time, Portuguese ordinals, an old year,
# and an ambiguous date that must be refused. Misses are shown, not hidden.
SAMPLES: tuple[tuple[str, str], ...] = (
    ("Nov 22, 2026", "2026-11-22"),
    ("le 1er mai 1999", "1999-05-01"),
    ("22.11.26", "2026-11-22"),
    ("11/22/2026", "2026-11-22"),
    ("3 DE MARZO DE 2001", "2001-03-03"),
    ("Tuesday, 14 July 1953", "1953-07-14"),
    ("7. Dezember 2049", "2049-12-07"),
    ("2026-11-22T10:30:00Z", "2026-11-22"),
    ("1º de maio de 1822", "1822-05-01"),
    ("the 3rd of May 2011", "2011-05-03"),
    ("03/04/2001", "refused: ambiguous"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead demo``."""
    defaults = RECIPE_DEFAULTS["dates"].train
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"default {DEFAULT_OUT}")
    parser.add_argument("--fresh", action="store_true", help="retrain even if a checkpoint exists")
    parser.add_argument(
        "--steps",
        type=int_in(1, MAX_STEPS),
        help=f"most training updates (default {defaults.steps})",
    )
    parser.add_argument(
        "--target",
        type=float_in(0, 1, lo_open=True),
        default=defaults.target,
        help=f"stop at this validation exact match (default {defaults.target})",
    )
    parser.add_argument(
        "--seed", type=int_in(0, MAX_SEED), default=0, help="seed of initialisation and data"
    )
    parser.add_argument(
        "--test-size",
        type=int_in(1, 100_000),
        default=TEST_SIZE,
        metavar="N",
        help=f"held-out test dates (default {TEST_SIZE}); validation uses half as many, <= 500",
    )
    parser.add_argument(
        "--example", type=utf8_text, default=DEFAULT_EXAMPLE, help="input of attention.png"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or eval lines")
    add_threads_option(
        parser, "CPU threads for torch (default: the cores the load average leaves free)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout only")


def cross_attention_figure(
    model: Seq2SeqTransformer, vocab: CharVocab, text: str, path: str | Path, *, max_len: int
) -> tuple[str, Path]:
    """Translate ``text`` and draw the last decoder layer's cross-attention for it.

    Rows are the output tokens being produced (the translation, then ``<eos>``); columns the
    characters the model reads (the normalised text: lower case, single spaces). Returns the
    model's raw translation and the PNG's path.

    Example:
        >>> import tempfile
        >>> recipe = get_recipe("dates", d_model=16, layers=1)
        >>> _, p = cross_attention_figure(recipe.build_model(), recipe.vocab, "22.11.26",
        ...                               f"{tempfile.mkdtemp()}/a.png", max_len=11)
        >>> p.name
        'a.png'
    """
    source = model_source(text)
    output = translate_texts(model, vocab, [source], max_len=max_len)[0]
    src = torch.tensor([vocab.encode(source)])  # (1, Ns)
    tgt = torch.tensor([[BOS, *vocab.encode(output)]])  # (1, Nt): BOS + the model's own output
    model.eval()
    with torch.no_grad():
        maps = model.attention_maps(src, tgt)
    weights = maps.decoder_cross[-1][0]  # (H, Nt, Ns)
    figure = plot_cross_attention(
        weights,
        list(source),
        [*output, "<eos>"],
        path,
        title=f"cross-attention, last decoder layer: {source!r} -> {output!r}",
    )
    return output, figure


def _evaluate(model: Seq2SeqTransformer, vocab: CharVocab, *, size: int) -> dict[str, Any]:
    """Verified translations of ``size`` held-out test dates, every family equally often."""
    samples = DatesTask().sample_full(size, "test", balanced=True)
    items = [(s.text, s.target, s.family, s.order) for s in samples]

    def translate(texts: list[str], order: str | None) -> list[str | None]:
        return [r.output for r in translate_dates(model, vocab, texts, order=order)]

    started = time.perf_counter()
    score = score_dates(items, translate)
    seconds = time.perf_counter() - started
    return {
        "test_exact_match": score.exact / score.total,
        "test_correct": score.exact,
        "test_wrong": score.wrong,
        "test_refused": score.refused,
        "test_total": score.total,
        "per_family": {
            family: {"exact": c[0] / sum(c), "wrong": c[1], "refused": c[2], "n": sum(c)}
            for family, c in score.by_family.items()
        },
        "errors": [{"input": t, "expected": e, "output": o} for t, e, o in score.misses[:10]],
        "translations_per_s": score.total / seconds,
    }


def _unfinished(trained: TrainedModel, steps: int | None) -> bool:
    """Whether the checkpoint's run stopped before its last step without reaching its target."""
    config = TrainConfig.from_dict(trained.checkpoint["train_config"])
    reached = (
        config.target is not None and trained.metrics.get("exact_match", -1.0) >= config.target
    )
    return not reached and trained.step < (steps or config.steps)


def run(args: argparse.Namespace) -> int:
    """Run ``multihead demo``; returns the exit status."""
    began = time.perf_counter()
    threads = args.threads if args.threads is not None else auto_threads()
    set_threads(threads)
    out = check_out_dir(args.out)
    ckpt_path = out / CHECKPOINT_NAME
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    recipe = get_recipe("dates", task_seed=0)
    assert isinstance(recipe, Seq2SeqRecipe)
    example_reading = read_date(args.example)
    if example_reading.date is None:
        raise CommandError(
            f"--example {shorten(args.example)} is not a date: {example_reading.error}"
        )
    example = args.example
    # Validation on 500 dates: at 99.5% that is at most 2 misses, and it is quick to run.
    recipe.eval_size = max(1, min(500, args.test_size // 2))
    config = with_train_overrides(
        RECIPE_DEFAULTS["dates"].train,
        steps=args.steps,
        seed=args.seed,
        target=args.target,
        out_dir=str(out),
        device="cpu",
        progress=not (args.no_progress or args.json),
    )
    resume_from: Path | None = None
    trained: TrainedModel | None = None
    if not args.fresh and ckpt_path.exists():
        try:
            trained = load_trained(ckpt_path)
        except CheckpointError as exc:
            raise CommandError(
                f"{safe_checkpoint_reason(exc)}; pass --fresh to train a new one"
            ) from exc
        if trained.kind != "seq2seq" or trained.task != "dates" or trained.vocab is None:
            raise CommandError(
                f"{str(ckpt_path)!r} holds a {trained.task!r} model, not the date translator; "
                f"pass --fresh to train one or --out to use another folder"
            )
        if ORDER_MARKS["dmy"] not in trained.vocab:
            # A translator from an older multihead that knows fewer forms: replace it.
            say(f"{ckpt_path} is an older, narrower date translator; training a new one")
            trained = None
        elif _unfinished(trained, args.steps):
            # An interrupted run (Ctrl-C saves a checkpoint): continue it where it stopped.
            recipe.model_config = TransformerConfig.from_dict(trained.checkpoint["model_config"])
            saved = TrainConfig.from_dict(trained.checkpoint["train_config"])
            config = replace(
                saved,
                steps=args.steps or saved.steps,
                out_dir=str(out),
                progress=config.progress,
            )
            resume_from, trained = ckpt_path, None
            say(f"resuming the interrupted training in {ckpt_path}; pass --fresh to restart")

    train_info: dict[str, Any]
    if trained is None:
        model = recipe.build_model(seed=config.seed)
        if resume_from is None:
            say(
                f"training the date translator: Seq2SeqTransformer, "
                f"{num_parameters(model):,} parameters, up to {config.steps} steps of "
                f"{config.batch_size} dates, stopping at {config.target:.1%} validation "
                f"exact match, {threads} thread{'s' if threads > 1 else ''} "
                f"(load {_load():.1f} on {os.cpu_count()} cores)"
            )
        try:
            result = train(model, recipe, config, resume_from=resume_from, dist_info=DistInfo())
        except KeyboardInterrupt:
            # The CLI prints this as the one line after "interrupted", as for train.
            raise KeyboardInterrupt(
                "run `multihead demo` again to continue from the checkpoint"
            ) from None
        train_info = {
            "steps": result.step,
            "stopped_early": result.stopped_early,
            "train_seconds": result.train_seconds,
            "tokens_per_s": result.tokens_per_s,
            "valid_exact_match": result.metrics.get("exact_match"),
        }
        vocab = recipe.vocab
    else:
        assert isinstance(trained.model, Seq2SeqTransformer) and trained.vocab is not None
        model, vocab = trained.model, trained.vocab
        summaries = [r for r in read_metrics(out / METRICS_NAME) if r.get("split") == "summary"]
        last = summaries[-1] if summaries else {}
        train_info = {
            "steps": trained.step,
            "stopped_early": last.get("stopped_early"),
            "train_seconds": last.get("train_seconds"),
            "tokens_per_s": last.get("tokens_per_s"),
            "valid_exact_match": trained.metrics.get("exact_match"),
        }
        say(f"using {ckpt_path} (trained {trained.step} steps); pass --fresh to retrain")
    trained_now = trained is None

    model.eval()
    max_len = recipe.max_output_len
    user_copy = _keep_user_copy(ckpt_path, trained_now, say)
    evaluation = _evaluate(model, vocab, size=args.test_size)
    results = translate_dates(model, vocab, [text for text, _ in SAMPLES])
    samples = [
        {
            "input": text,
            "output": r.output,
            "error": r.error,
            "expected": expected,
            "correct": r.output == expected
            or (r.output is None and expected.startswith("refused")),
        }
        for (text, expected), r in zip(SAMPLES, results, strict=True)
    ]
    example_output, attention = cross_attention_figure(
        model, vocab, example, out / ATTENTION_PLOT_NAME, max_len=max_len
    )
    wall = time.perf_counter() - began
    files = {
        "checkpoint": str(ckpt_path),
        "user_copy": None if user_copy is None else str(user_copy),
        "metrics": str(out / METRICS_NAME),
        "loss_plot": str(out / LOSS_PLOT_NAME),
        "attention_plot": str(attention),
    }
    if args.json:
        summary = {
            "trained": trained_now,
            **train_info,
            "threads": threads,
            "load_average": _load(),
            "wall_seconds": wall,
            **evaluation,
            "samples": samples,
            "attention_example": {"input": example, "output": example_output},
            "files": files,
        }
        print(json.dumps(summary))
        return 0

    if trained_now:
        early = "reached the target" if train_info["stopped_early"] else "ran every step"
        say(
            f"trained {train_info['steps']} steps in {train_info['train_seconds']:.1f} s "
            f"({early}; validation exact match {train_info['valid_exact_match']:.1%})"
        )
    print()
    width = max(len(text) for text, _ in SAMPLES)
    for s in samples:
        shown = s["output"] or f"refused: {s['error']}"
        mark = "" if s["correct"] else f"   miss, expected {s['expected']}"
        print(f"  {s['input']:<{width}}  ->  {shown}{mark}")
    print()
    _print_evaluation(evaluation)
    if train_info.get("tokens_per_s"):
        print(f"training throughput: {train_info['tokens_per_s']:,.0f} tokens/s (CPU)")
    print(f"total time: {wall:.1f} s ({threads} thread{'s' * (threads > 1)}, load {_load():.1f})")
    print(
        f"wrote {out}/: {CHECKPOINT_NAME}, {METRICS_NAME}, {LOSS_PLOT_NAME}, "
        f"{ATTENTION_PLOT_NAME} (cross-attention of the last decoder layer for "
        f"{example!r}: head mean, then each head)"
    )
    if user_copy is not None:
        print(f"copied the checkpoint to {user_copy} (`multihead translate` finds it anywhere)")
    where = "" if out == Path(DEFAULT_OUT) or user_copy else f" --checkpoint {ckpt_path}"
    print(f'next: echo "Nov 22, 2026" | multihead translate{where}')
    sys.stdout.flush()
    return 0


def _print_evaluation(evaluation: dict[str, Any]) -> None:
    ok, total = evaluation["test_correct"], evaluation["test_total"]
    print(
        f"held-out test: {ok}/{total} exact ({evaluation['test_exact_match']:.2%}), "
        f"{evaluation['test_wrong']} silently wrong, {evaluation['test_refused']} refused, "
        f"over {len(FAMILIES)} form families (greedy, verified)"
    )
    cells = [
        f"{family} {stats['exact']:.0%}" + (f" ({stats['wrong']} wrong)" if stats["wrong"] else "")
        for family, stats in evaluation["per_family"].items()
    ]
    for i in range(0, len(cells), 6):
        print("  " + ", ".join(cells[i : i + 6]))
    for e in evaluation["errors"][:3]:
        print(f"  miss: {e['input']!r} -> {e['output']} (expected {e['expected']})")


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float("nan")


def _keep_user_copy(ckpt_path: Path, trained_now: bool, say: Any) -> Path | None:
    """Copy a newly trained checkpoint to the per-user folder (a failure only warns)."""
    target = user_checkpoint_path()
    if not trained_now and target.is_file():
        return target
    try:
        return copy_checkpoint(ckpt_path, target)
    except OSError as exc:
        print(
            f"multihead demo: warning: could not copy the checkpoint to {target}: {exc}",
            file=sys.stderr,
        )
        return None
