"""Label texts with a classifier trained by `multihead train textclass`.

Give texts as arguments, or one per line on standard input (read as bytes and decoded per line;
stray bytes that are not UTF-8 become U+FFFD). One label is printed per input, in order;
--json prints one object per input with the probability of every label.

An input is refused when it is empty or when none of its word pieces is in the model's
vocabulary (the model would only be guessing). A refused input gives an empty line (with --json
an "error" field) and its reason on stderr with its line number. Exit status: 0 when every
input was labelled, 1 when any was refused, 2 for usage errors (no checkpoint, no input).
Standard input is read in blocks, so large files run in bounded memory.

Example:
    multihead train textclass --data reviews.tsv --out runs/reviews
    multihead classify --checkpoint runs/reviews/checkpoint.pt "a gorgeous , witty film"
    multihead classify --checkpoint runs/reviews/checkpoint.pt --json < sentences.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from multihead.commands._common import in_blocks, load_checkpoint_file
from multihead.errors import CommandError
from multihead.train.textclass import TextClassifier, load_text_classifier

__all__ = ["DEFAULT_CHECKPOINT", "configure", "run"]

DEFAULT_CHECKPOINT = "runs/textclass/checkpoint.pt"
BLOCK = 256  # inputs classified together; bounds memory on long streams


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead classify``."""
    parser.add_argument("text", nargs="*", metavar="TEXT", help="texts (default: read stdin)")
    parser.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default {DEFAULT_CHECKPOINT}"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per input")


def _stdin_lines(stream: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    for i, raw in enumerate(stream, 1):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        yield f"line {i}", line


def _check(clf: TextClassifier, text: str) -> str | None:
    """Why ``text`` is refused, or None."""
    if not text.strip():
        return "the text is empty"
    ids, _ = clf.tokenizer.encode_batch([text], max_len=clf.max_len)
    if bool((ids == clf.tokenizer.unk_id).all()):
        return "none of its words is in the model's vocabulary"
    return None


def _classify_block(
    clf: TextClassifier, block: list[tuple[str, str]], as_json: bool, out: TextIO
) -> int:
    reasons = [_check(clf, text) for _, text in block]
    good = [text for (_, text), reason in zip(block, reasons, strict=True) if reason is None]
    labels, probs = clf.predict(good) if good else ([], None)
    refused, k = 0, 0
    for (where, text), reason in zip(block, reasons, strict=True):
        if reason is not None:
            refused += 1
            print(f"multihead classify: {where}: {reason}", file=sys.stderr)
            print(json.dumps({"input": text, "error": reason}) if as_json else "", file=out)
            continue
        if as_json:
            assert probs is not None
            p = {label: round(float(v), 6) for label, v in zip(clf.labels, probs[k], strict=True)}
            print(json.dumps({"input": text, "label": labels[k], "probabilities": p}), file=out)
        else:
            print(labels[k], file=out)
        k += 1
    out.flush()
    return refused


def run(args: argparse.Namespace) -> int:
    """Run ``multihead classify``; returns the exit status."""
    clf = load_checkpoint_file(
        args.checkpoint,
        load_text_classifier,
        how_to_train="train one with `multihead train textclass --data FILE` (it writes "
        "runs/textclass/checkpoint.pt)",
    )
    inputs: Iterable[tuple[str, str]]
    if args.text:
        inputs = ((f"input {i}", t) for i, t in enumerate(args.text, 1))
    else:
        inputs = _stdin_lines(sys.stdin.buffer)
    refused, seen = 0, 0
    for block in in_blocks(inputs, BLOCK):
        seen += len(block)
        refused += _classify_block(clf, block, args.json, sys.stdout)
    if seen == 0:
        raise CommandError("no input: give texts as arguments or one per line on stdin")
    return 1 if refused else 0
