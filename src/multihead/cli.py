"""The ``multihead`` command: a thin layer over the library.

Each sub-command lives in its own module, which provides ``configure(parser)`` to declare its
options and ``run(args) -> int`` to do the work; this file only wires them together and turns
expected failures (bad input, missing files) into one-line errors with a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": (
        "multihead.commands.explain",
        "the worked example of multi-head attention, step by step",
    ),
    "demo": ("multihead.commands.demo", "train the date translator and show what it learned"),
    "train": ("multihead.commands.train", "train a model on a built-in task"),
    "translate": ("multihead.commands.translate", "translate dates with a trained checkpoint"),
    "generate": ("multihead.commands.generate", "sample text from a trained language model"),
    "visualize": ("multihead.commands.visualize", "draw attention heatmaps and an HTML view"),
    "bench": ("multihead.commands.bench", "time attention backends against PyTorch"),
    "recognize": ("multihead.commands.recognize", "recognize spoken words in WAV files"),
}


from .errors import CommandError  # noqa: E402  (re-exported: commands raise it)

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multihead",
        description="Multi-head attention and the Transformer: learn it, train it, look inside.",
        epilog="Run 'multihead COMMAND --help' for a command's options and an example.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (CommandError, ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        if os.environ.get("MULTIHEAD_DEBUG"):
            raise
        print(f"multihead {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"multihead {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
