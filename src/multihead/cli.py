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
from typing import NoReturn

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
    "classify": ("multihead.commands.classify", "label texts with a trained text classifier"),
    "recognize": ("multihead.commands.recognize", "recognize spoken words in WAV files"),
}


from .errors import CommandError  # noqa: E402  (re-exported: commands raise it)

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

# Failures that mean "the arguments or the input were refused": exit status 2, like argparse.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes CheckpointError and UnicodeDecodeError
    TypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors cut to one readable line (long inputs shortened)."""

    def error(self, message: str) -> NoReturn:
        from .commands._common import shorten_message

        # One line, not argparse's usage block: the hint says where the usage is.
        hint = f" (see '{self.prog} --help')"
        line = shorten_message(message).encode("utf-8", "backslashreplace").decode("utf-8")
        self.exit(2, f"{self.prog}: error: {line}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _describe(exc: Exception) -> tuple[int, str]:
    """The exit status and the one-line message for a failed command."""
    if isinstance(exc, CommandError):
        return exc.status, str(exc)
    if isinstance(exc, _INPUT_ERRORS):
        return 2, str(exc)
    if isinstance(exc, (OSError, MemoryError, RuntimeError)):
        # A valid command that could not be carried out: disk full, out of memory, a run
        # directory locked by another run, ...
        return 1, str(exc) or type(exc).__name__
    return 1, (
        f"unexpected {type(exc).__name__}: {exc} (run again with MULTIHEAD_DEBUG=1 for the "
        f"traceback, and please report it)"
    )


def _silence_stdout() -> None:
    # The reader went away (`multihead ... | head`): point stdout at devnull so the flush at
    # exit does not raise again (the recipe in Python's documentation of SIGPIPE).
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced, e.g. under pytest
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``multihead`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status: 0 done, 1 failed while running, 2 arguments or input refused, 130 interrupted.

    Expected failures print one line on stderr; ``MULTIHEAD_DEBUG=1`` shows tracebacks instead.
    ``--help`` raises ``SystemExit(0)``, as argparse does; usage errors return 2.
    """
    debug = os.environ.get("MULTIHEAD_DEBUG", "") not in ("", "0")
    name = "multihead"
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code in (0, None):
                raise  # --help: exits as argparse always does
            return exc.code if isinstance(exc.code, int) else 2  # a usage error, printed
        if getattr(args, "_run", None) is None:
            parser.print_help()
            return 2
        name = f"multihead {args.command}"
        status = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except KeyboardInterrupt as exc:
        if debug:
            raise
        detail = f"; {exc}" if str(exc) else ""
        print(f"{name}: interrupted{detail}", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from .commands._common import shorten_message

        status, message = _describe(exc)
        # Undecodable input bytes (lone surrogates) are shown escaped, never re-raised.
        line = shorten_message(message).encode("utf-8", "backslashreplace").decode("utf-8")
        print(f"{name}: error: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
