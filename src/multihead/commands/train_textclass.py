"""``multihead train textclass``: a text classifier on the user's own labelled texts.

Options are declared by :func:`configure` (called from ``multihead train``'s own
``configure``) and the work is done by :func:`run`, to which ``multihead train`` hands over when
TASK is ``textclass``. Shared options of ``multihead train`` (--batch-size, --lr, --d-model,
--layers, --heads, --seed, --out, --threads, --json, --no-progress) keep their meaning.

Example:
    multihead train textclass --data train.tsv --test test.tsv
    multihead train textclass --data stsa.binary.train --valid stsa.binary.dev \\
        --test stsa.binary.test --out runs/sst2
    multihead classify --checkpoint runs/sst2/checkpoint.pt "a gorgeous , witty film"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from multihead.commands._common import set_threads
from multihead.errors import CommandError
from multihead.tasks.textclass import FORMATS, TextExample, read_examples, split_examples
from multihead.tasks.tokenize import require_tokenizers
from multihead.train.textclass import (
    TextClassConfig,
    TextClassResult,
    load_text_classifier,
    train_text_classifier,
)

__all__ = ["configure", "run"]

ATTENTION_SENTENCES = 6  # sentences drawn in attention.png


def _add(group: Any, *flags: str, **kwargs: Any) -> None:
    # --data is also an option of `train speech`; whichever block comes second reuses it.
    with contextlib.suppress(argparse.ArgumentError):
        group.add_argument(*flags, **kwargs)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``multihead train textclass`` to ``multihead train``'s parser."""
    g = parser.add_argument_group("TASK textclass (a text classifier on your own labelled files)")
    _add(g, "--data", metavar="PATH", help="training data: a file, or a folder of class folders")
    g.add_argument("--valid", metavar="FILE", help="validation data (default: 10%% of --data)")
    g.add_argument("--test", metavar="FILE", help="test data, evaluated once at the end")
    g.add_argument("--format", choices=FORMATS, default="auto", help="file layout (default auto)")
    g.add_argument("--text-column", metavar="NAME", help="TSV/CSV column holding the text")
    g.add_argument("--label-column", metavar="NAME", help="TSV/CSV column holding the label")
    g.add_argument(
        "--skip-bad-lines", action="store_true", help="drop ragged rows and empty texts (warn)"
    )
    g.add_argument(
        "--valid-fraction", type=float, default=0.1, help="held out when no --valid (0.1)"
    )
    g.add_argument(
        "--epochs", type=int, help="at most this many epochs (default: textclass 4, speech 100)"
    )
    g.add_argument("--patience", type=int, help="stop after N epochs without gain (default 4)")
    g.add_argument("--max-len", type=int, help="word pieces kept per text (default 128)")
    g.add_argument("--vocab-size", type=int, help="WordPiece vocabulary (default: from data)")
    g.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this")
    g.add_argument(
        "--ngram-buckets",
        type=int,
        metavar="N",
        help="hash buckets of the linear bigram term (default 262144, fewer above 8 classes; 0: none)",
    )
    g.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="train K models (seeds seed..seed+K-1) and average them (default: textclass 5; "
        "speech 3 with recipe new-speakers, else 1)",
    )


def _read(path: str, args: argparse.Namespace) -> list[TextExample]:
    return read_examples(
        path,
        format=args.format,
        text_column=args.text_column,
        label_column=args.label_column,
        on_bad_line="skip" if args.skip_bad_lines else "error",
    )


def _config(args: argparse.Namespace) -> TextClassConfig:
    given = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "d_model": args.d_model,
        "num_layers": args.layers,
        "num_heads": args.heads,
        "seed": args.seed,
        "epochs": args.epochs,
        "patience": args.patience,
        "max_len": args.max_len,
        "vocab_size": args.vocab_size,
        "max_seconds": None if args.max_minutes is None else 60.0 * args.max_minutes,
        "ensemble": args.ensemble,
        "ngram_buckets": args.ngram_buckets,
    }
    return TextClassConfig(**{k: v for k, v in given.items() if v is not None})


def _summary(result: TextClassResult, out: Path, sizes: dict[str, int]) -> dict[str, Any]:
    def strip(m: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if m is None else {k: v for k, v in m.items() if k != "predictions"}

    return {
        "task": "textclass",
        "labels": result.labels,
        "examples": sizes,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 2),
        "class_weights": result.class_weights,
        "model_config": result.model_config,
        "valid": strip(result.valid),
        "test": strip(result.test),
        "members": result.members,
        "history": result.history,
        "checkpoint": str(result.checkpoint),
        "out_dir": str(out),
    }


def _figures(result: TextClassResult, shown: list[TextExample], out: Path) -> None:
    from multihead.viz.textclass import plot_confusion, plot_word_attention

    final = result.test if result.test is not None else result.valid
    split = "test" if result.test is not None else "validation"
    plot_confusion(
        final["confusion"],
        result.labels,
        out / "confusion.png",
        title=f"{split}: accuracy {final['accuracy']:.1%}, macro-F1 {final['macro_f1']:.3f}",
    )
    clf = load_text_classifier(result.checkpoint)
    rows = []
    for example in shown:
        words, weights = clf.word_attention(example.text)
        (label,), _ = clf.predict([example.text])
        rows.append((words, weights, f"predicted {label} (true {example.label})"))
    plot_word_attention(rows, out / "attention.png")


def run(args: argparse.Namespace) -> int:
    """Run ``multihead train textclass``; returns the exit status."""
    require_tokenizers()
    if args.data is None:
        raise CommandError("train textclass needs --data PATH (a file or a folder of classes)")
    unused = [
        flag
        for flag, value in (
            ("--steps", args.steps),
            ("--resume", args.resume),
            ("--warmup", args.warmup),
            ("--schedule", args.schedule),
            ("--eval-every", args.eval_every),
            ("--target", args.target),
            ("--text", args.text),
        )
        if value is not None
    ]
    if unused:
        raise CommandError(
            f"{', '.join(unused)} do(es) not apply to textclass, which trains by epochs with early "
            f"stopping (see --epochs, --patience)"
        )
    set_threads(args.threads)
    out = Path(args.out if args.out is not None else "runs/textclass")
    quiet = args.no_progress or args.json
    config = _config(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = _read(args.data, args)
        valid = _read(args.valid, args) if args.valid else None
        test = _read(args.test, args) if args.test else None
    for w in caught:  # stray bytes and skipped lines: said once each, on stderr
        print(f"multihead train: warning: {w.message}", file=sys.stderr)
    if valid is None:
        if not 0.0 < args.valid_fraction < 1.0:
            raise CommandError(f"--valid-fraction must be in (0, 1), got {args.valid_fraction}")
        train, valid = split_examples(train, args.valid_fraction, seed=config.seed)
    sizes = {"train": len(train), "valid": len(valid), "test": len(test or [])}
    if not quiet:
        print(
            f"training a text classifier on {sizes['train']:,} texts "
            f"(validation {sizes['valid']:,}, test {sizes['test']:,})",
            file=sys.stderr,
        )

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    result = train_text_classifier(train, valid, test=test, config=config, out_dir=out, log=log)
    summary = _summary(result, out, sizes)
    shown = (test or valid)[:ATTENTION_SENTENCES]
    _figures(result, shown, out)
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "report.json")
    if args.json:
        print(json.dumps(summary))
        return 0
    members = ", ".join(f"{m['best_epoch']}/{m['epochs_run']}" for m in result.members)
    print(
        f"textclass: {len(result.members)} model(s) averaged, {result.epochs_run} epoch(s) in "
        f"{result.train_seconds:.1f} s, best/run epochs {members}"
    )
    for name, m in (("validation", result.valid), ("test", result.test)):
        if m is not None:
            print(
                f"{name}: accuracy {m['accuracy']:.2%}, macro-F1 {m['macro_f1']:.4f} ({m['n']:,})"
            )
    print(f"wrote {out}/ (checkpoint.pt, report.json, confusion.png, attention.png)")
    return 0
