"""Translate written dates into ISO dates (YYYY-MM-DD) with a trained date translator.

Give dates as arguments, or one per line on standard input; one ISO date is printed per input,
in order. The default checkpoint is the one `multihead demo` writes.

An input is refused (one error line, exit status 2, nothing printed) when it is empty, holds
characters no date form uses, is longer than any date form, has no digits, or when the model's
answer is not a real calendar date or disagrees with the numbers written in the input (its
day and its year, or the year's last two digits, must appear there). The model itself would
always answer something; these checks are what lets `translate` say "that is not a date".

Example:
    multihead demo
    echo "Nov 22, 2026" | multihead translate
    multihead translate "le 1er mai 1999" "22.11.26"
    multihead translate --beam 4 --checkpoint runs/demo/checkpoint.pt < dates.txt
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from multihead.commands._common import int_in
from multihead.errors import CommandError
from multihead.modules.models import Seq2SeqTransformer
from multihead.tasks import MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH, CharVocab
from multihead.train.checkpoint import CheckpointError
from multihead.train.recipes import load_trained, parse_iso_date, translate_texts

__all__ = [
    "DEFAULT_CHECKPOINT",
    "check_source",
    "check_translation",
    "configure",
    "run",
    "translate_dates",
]

DEFAULT_CHECKPOINT = "runs/demo/checkpoint.pt"


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead translate``."""
    parser.add_argument("text", nargs="*", metavar="TEXT", help="dates (default: read stdin)")
    parser.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default {DEFAULT_CHECKPOINT}"
    )
    parser.add_argument(
        "--beam", type=int_in(1, 64), default=1, metavar="N", help="beam size (1: greedy)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per input")


def check_source(text: str, vocab: CharVocab, where: str) -> str:
    """``text`` stripped, or a ValueError saying why it cannot be a date.

    Example:
        >>> from multihead.tasks import dates_vocab
        >>> check_source("  22.11.26 ", dates_vocab(), "input 1")
        '22.11.26'
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{where} is empty; give one date per line")
    unknown = sorted({ch for ch in stripped if ch not in vocab})
    if unknown:
        raise ValueError(
            f"{where} {stripped!r} is not a date: characters {''.join(unknown)!r} appear in "
            f"no date form"
        )
    if len(stripped) > MAX_SOURCE_LENGTH:
        raise ValueError(
            f"{where} {stripped!r} is not a date: {len(stripped)} characters, longer than any "
            f"date form ({MAX_SOURCE_LENGTH})"
        )
    if not any(ch.isdigit() for ch in stripped):
        raise ValueError(f"{where} {stripped!r} is not a date: it has no digits")
    return stripped


def check_translation(source: str, output: str, where: str) -> datetime.date:
    """The model's ``output`` as a date, or a ValueError when it cannot be trusted.

    The output must be a valid ISO date whose day and year (or the year's last two digits)
    are among the numbers written in ``source``.

    Example:
        >>> check_translation("Nov 22, 2026", "2026-11-22", "input 1")
        datetime.date(2026, 11, 22)
    """
    date = parse_iso_date(output)
    if date is None:
        raise ValueError(
            f"{where} {source!r} is not a date the model can read (it produced {output!r})"
        )
    numbers = re.findall(r"\d+", source)
    year_ok = str(date.year) in numbers or f"{date.year % 100:02d}" in numbers
    day_ok = date.day in {int(n) for n in numbers}
    if not (year_ok and day_ok):
        raise ValueError(
            f"{where} {source!r} is not a date the model can read (its answer {output} does "
            f"not match the numbers in the input)"
        )
    return date


def _inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.text:
        return [(f"input {i}", t) for i, t in enumerate(args.text, 1)]
    lines = sys.stdin.read().splitlines()
    if not lines:
        raise CommandError("no input: give dates as arguments or one per line on stdin")
    return [(f"line {i}", t) for i, t in enumerate(lines, 1)]


def translate_dates(
    model: Seq2SeqTransformer,
    vocab: CharVocab,
    texts: Sequence[str],
    *,
    beam_size: int = 1,
    labels: Sequence[str] | None = None,
) -> list[str]:
    """Checked ISO translations of ``texts``; ValueError on the first input that is not a date.

    ``labels`` name the inputs in error messages (default ``"input 1"``, ``"input 2"``, ...).

    Example:
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("dates", d_model=16, layers=1)
        >>> translate_dates(recipe.build_model(), recipe.vocab, ["hello"])
        Traceback (most recent call last):
        ...
        ValueError: input 1 'hello' is not a date: it has no digits
    """
    if labels is None:
        labels = [f"input {i}" for i in range(1, len(texts) + 1)]
    if len(labels) != len(texts):
        raise ValueError(f"labels must name every text: {len(texts)} texts, {len(labels)} labels")
    # Every input is checked before any is translated, so a bad line fails fast.
    sources = [check_source(t, vocab, where) for where, t in zip(labels, texts, strict=True)]
    outputs = translate_texts(
        model, vocab, sources, max_len=MAX_TARGET_LENGTH - 1, beam_size=beam_size
    )
    for where, source, output in zip(labels, sources, outputs, strict=True):
        check_translation(source, output, where)
    return outputs


def run(args: argparse.Namespace) -> int:
    """Run ``multihead translate``; returns the exit status."""
    if args.beam < 1:
        raise CommandError(f"--beam must be >= 1, got {args.beam}")
    path = Path(args.checkpoint)
    if not path.exists():
        hint = (
            "run `multihead demo` first to train the date translator"
            if args.checkpoint == DEFAULT_CHECKPOINT
            else "check the path, or run `multihead demo` to train the date translator"
        )
        raise CommandError(f"no checkpoint at {str(path)!r}; {hint}")
    try:
        trained = load_trained(path)
    except CheckpointError as exc:
        # `demo --fresh` rewrites the demo's own checkpoint only; a custom path is the user's.
        hint = "; run `multihead demo --fresh` to train a new one"
        raise CommandError(f"{exc}{hint if args.checkpoint == DEFAULT_CHECKPOINT else ''}") from exc
    if trained.kind != "seq2seq" or trained.task != "dates" or trained.vocab is None:
        raise CommandError(
            f"{str(path)!r} holds a {trained.task!r} model, not the date translator from "
            f"`multihead demo` or `multihead train dates`"
        )
    assert isinstance(trained.model, Seq2SeqTransformer)
    vocab = trained.vocab
    inputs = _inputs(args)
    texts = [text for _, text in inputs]
    outputs = translate_dates(
        trained.model, vocab, texts, beam_size=args.beam, labels=[where for where, _ in inputs]
    )
    # Nothing is printed until every input has passed, so output lines always match input lines.
    for text, output in zip(texts, outputs, strict=True):
        print(json.dumps({"input": text.strip(), "output": output}) if args.json else output)
    return 0
