"""Translate written dates into ISO dates (YYYY-MM-DD) with the trained date translator.

Give dates as arguments, or one per line on standard input. One line comes out per line in,
in order; a refused line gives an empty line (with --json: an "error" field) and its reason
on stderr with its line number. Blank lines pass through as blank lines. Exit status: 0 when
every line was translated, 1 when any line was refused, 2 for usage errors.

Forms: ISO 8601 (2026-11-22, 2026-11-22T10:30:00Z), 20261122, 2026.11.22, 2026/11/22; numeric
day-first or month-first with / . - or spaces and 2- or 4-digit years; month names, full or
abbreviated, in English, French, German, Spanish, Italian, Portuguese and Dutch; ordinals
(22nd, the 3rd of May, 1er, 1º, 3.); weekday prefixes; apostrophe years ('26); any case.
Years 1000-2999 with four digits; two-digit years name a year in [--pivot, --pivot + 99]
(default 1950-2049). Inputs up to 64 characters. See docs/dates.md.

Every answer comes from the model and is printed only when a deterministic reader finds the
same day, month and year written in the line and the date exists. A numeric date whose two
first numbers could each be the day (03/04/2001) is refused, naming both readings, unless
--order says how to read it; 11/22/2026 reads on its own.

The checkpoint is --checkpoint, else ./runs/demo/checkpoint.pt, else the copy `multihead demo`
keeps in $MULTIHEAD_HOME (default: $XDG_DATA_HOME/multihead or ~/.local/share/multihead).

Example:
    multihead demo
    echo "Nov 22, 2026" | multihead translate
    multihead translate "le 1er mai 1999" "22.11.26" "03/04/2001" --order dmy
    multihead translate --json --min-confidence 0.5 < dates.txt > iso.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterator
from typing import IO

from tqdm import tqdm

from multihead.commands._common import (
    add_threads_option,
    auto_threads,
    float_in,
    in_blocks,
    int_in,
    set_threads,
)
from multihead.errors import CommandError
from multihead.modules.models import Seq2SeqTransformer
from multihead.tasks.date_reading import (
    DEFAULT_PIVOT,
    FIRST_YEAR,
    LAST_YEAR,
    MAX_INPUT_LENGTH,
    ORDER_MARKS,
    ORDERS,
    shorten,
)
from multihead.train.checkpoint import CheckpointError, find_checkpoint
from multihead.train.dates import DateResult, translate_dates
from multihead.train.recipes import TrainedModel, load_trained

__all__ = ["configure", "load_translator", "run", "safe_checkpoint_reason"]

BATCH_LINES = 512
# Inputs over this size (bytes, when stdin is a file) get a progress bar from the start;
# piped input gets one once it has run for a few seconds.
_BIG_INPUT = 1 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead translate``."""
    parser.add_argument("text", nargs="*", metavar="TEXT", help="dates (default: read stdin)")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="default: ./runs/demo/checkpoint.pt, then the per-user copy from `multihead demo`",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        help="read ambiguous numeric dates day-first (dmy) or month-first (mdy); "
        "default: refuse them",
    )
    parser.add_argument(
        "--pivot",
        type=int_in(1000, 2900),
        default=DEFAULT_PIVOT,
        metavar="YEAR",
        help=f"two-digit years name a year in [YEAR, YEAR + 99] (default {DEFAULT_PIVOT})",
    )
    parser.add_argument(
        "--min-confidence",
        type=float_in(0, 1),
        default=0.0,
        metavar="P",
        help="refuse answers the model gives with probability below P (0-1, default 0)",
    )
    parser.add_argument(
        "--beam", type=int_in(1, 64), default=1, metavar="N", help="beam size (1: greedy)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line: input, output, error, "
        "confidence"
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    add_threads_option(parser, "CPU threads (default: the cores left free)")


def _check_options(args: argparse.Namespace) -> None:
    # Inline range checks; the shared numeric-option helper of commands/_common.py can take
    # these over once it lands.
    if not 1 <= args.beam <= 64:
        raise CommandError(f"--beam must be in [1, 64], got {args.beam}")
    if not FIRST_YEAR <= args.pivot <= LAST_YEAR - 99:
        raise CommandError(f"--pivot must be in [{FIRST_YEAR}, {LAST_YEAR - 99}], got {args.pivot}")
    if not 0.0 <= args.min_confidence <= 1.0:  # also rejects nan
        raise CommandError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise CommandError(f"--threads must be in [1, 1024], got {args.threads}")


def safe_checkpoint_reason(exc: Exception) -> str:
    """A checkpoint error without PyTorch's advice to load with ``weights_only=False``, which
    would run code from a file that has just failed its checks."""
    message = str(exc)
    lowered = message.lower()
    if "weights only" in lowered or "weights_only" in lowered or "still be loaded" in lowered:
        cut = message.find(" (")
        message = (message[:cut] if cut > 0 else "the checkpoint cannot be read") + (
            " (it is not a checkpoint this multihead wrote, or it is damaged)"
        )
    return message


def load_translator(checkpoint: str | None) -> TrainedModel:
    """Find and load the date translator; CommandError with a one-line reason otherwise."""
    try:
        path = find_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        hint = (
            "run `multihead demo` first to train the date translator"
            if checkpoint is None
            else "check the path, or run `multihead demo` to train the date translator"
        )
        raise CommandError(f"{exc}; {hint}") from exc
    try:
        trained = load_trained(path)
    except (CheckpointError, OSError) as exc:
        hint = (
            "run `multihead demo --fresh` to train a new one"
            if checkpoint is None
            else "pass another --checkpoint, or train one with `multihead demo`"
        )
        raise CommandError(f"{safe_checkpoint_reason(exc)}; {hint}") from exc
    if trained.kind != "seq2seq" or trained.task != "dates" or trained.vocab is None:
        raise CommandError(
            f"{str(path)!r} holds a {trained.task!r} model, not the date translator from "
            f"`multihead demo` or `multihead train dates`"
        )
    if ORDER_MARKS["dmy"] not in trained.vocab:
        raise CommandError(
            f"{str(path)!r} is a date translator from an older multihead that knows fewer "
            f"forms; `multihead demo` trains a new one"
        )
    return trained


def _stdin_lines(stream: IO[bytes]) -> Iterator[tuple[str, str | None]]:
    """``(text, None)`` per line, or ``(text with U+FFFD, reason)`` for a line that is not
    UTF-8: each line is decoded on its own, so one bad byte costs one line, not the stream."""
    for raw in stream:
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            reason = f"it is not UTF-8 text (byte 0x{raw[exc.start]:02x} at {exc.start + 1})"
            yield raw.decode("utf-8", "replace"), reason


def _progress(stream: IO[bytes], disabled: bool) -> tqdm | None:
    if disabled:
        return None
    try:
        info = os.fstat(stream.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
    except (OSError, ValueError, AttributeError):
        size = None
    if size is not None and size < _BIG_INPUT:
        return None
    return tqdm(
        total=size,
        unit="B" if size else " lines",
        unit_scale=True,
        desc="translating",
        file=sys.stderr,
        delay=0 if size else 3,
        leave=False,
    )


class _Writer:
    """Writes one output line per input line and reports refusals on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.refused = 0

    def blank(self, text: str) -> None:
        if self.as_json:
            record = {"input": text, "output": None, "error": None, "confidence": None}
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write("\n")

    def result(self, where: str, text: str, result: DateResult) -> None:
        if result.error is not None:
            self.refused += 1
            print(f"multihead translate: {where} {shorten(text)}: {result.error}", file=sys.stderr)
        if self.as_json:
            record = {
                # A long line is echoed shortened: its length is in the error.
                "input": text if len(text) <= MAX_INPUT_LENGTH else text[:MAX_INPUT_LENGTH] + "…",
                "output": result.output,
                "error": result.error,
                "confidence": None if result.confidence is None else round(result.confidence, 6),
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write((result.output or "") + "\n")


def _flush(
    writer: _Writer,
    batch: list[tuple[str, str | None, str | None]],
    model: Seq2SeqTransformer,
    trained: TrainedModel,
    args: argparse.Namespace,
) -> None:
    """Translate one batch of ``(where, text, decode error)`` and write it in order."""
    todo = [text for _, text, bad in batch if text is not None and bad is None and text.strip()]
    assert trained.vocab is not None
    results = iter(
        translate_dates(
            model,
            trained.vocab,
            todo,
            order=args.order,
            pivot=args.pivot,
            min_confidence=args.min_confidence,
            beam_size=args.beam,
        )
    )
    for where, text, bad in batch:
        if bad is not None:
            writer.result(where, text or "", DateResult(text or "", None, bad))
        elif text is None or not text.strip():
            writer.blank(text or "")
        else:
            writer.result(where, text, next(results))
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``multihead translate``; returns the exit status."""
    _check_options(args)
    if not args.text and sys.stdin.isatty():
        raise CommandError("no input: give dates as arguments or pipe them, one per line")
    set_threads(args.threads if args.threads is not None else auto_threads())
    trained = load_translator(args.checkpoint)
    assert isinstance(trained.model, Seq2SeqTransformer)
    writer = _Writer(args.json)
    bar = None
    lines: Iterator[tuple[str, str | None]]
    if args.text:
        # An empty argument is a mistake rather than a blank line to keep.
        lines = iter([(t, None if t.strip() else "it is empty") for t in args.text])
        label = "input"
    else:
        stdin = sys.stdin.buffer
        bar = _progress(stdin, args.no_progress)
        lines, label = _stdin_lines(stdin), "line"

    def numbered() -> Iterator[tuple[str, str | None, str | None]]:
        for number, (text, bad) in enumerate(lines, 1):
            if bar is not None:
                bar.update(len((text or "").encode("utf-8", "replace")) + 1 if bar.total else 1)
            yield f"{label} {number}", text, bad

    count = 0
    try:
        for batch in in_blocks(numbered(), BATCH_LINES):
            count += len(batch)
            _flush(writer, batch, trained.model, trained, args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other filters do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if bar is not None:
            bar.close()
    if count == 0:
        raise CommandError("no input: give dates as arguments or pipe them, one per line")
    if writer.refused:
        print(f"multihead translate: refused {writer.refused} of {count} lines", file=sys.stderr)
        return 1
    return 0
