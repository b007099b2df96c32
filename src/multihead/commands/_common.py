"""What several commands share: thread settings, option types with ranges, output folders,
checkpoint loading, the blocks batch commands stream their input in, and messages that stay
one readable line. (Atomic writes are in the library:
``multihead._files.write_atomic`` and ``multihead.train.checkpoint.save_checkpoint``.)

Option types raise ``argparse.ArgumentTypeError``, so argparse reports them in one wording
everywhere: ``multihead demo: error: argument --target: must be in (0, 1], got 2``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

from multihead.errors import CommandError
from multihead.train.checkpoint import CheckpointError
from multihead.train.rundir import check_directory

__all__ = [
    "MAX_BATCH",
    "MAX_BLOCK",
    "MAX_LAYERS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_THREADS",
    "MAX_WIDTH",
    "add_threads_option",
    "check_out_dir",
    "float_in",
    "in_blocks",
    "int_in",
    "load_checkpoint_file",
    "set_threads",
    "shorten",
    "shorten_message",
    "utf8_text",
]

# torch.Generator and NumPy's SeedSequence both take any value below 2**63.
MAX_SEED = 2**63 - 1
MAX_THREADS = 1024
# Upper ends of the training options: far beyond any sensible run on one machine, low enough
# that a typo (an extra zero or ten) is refused instead of exhausting memory.
MAX_STEPS = 10_000_000
MAX_BATCH = 65_536
MAX_WIDTH = 16_384
MAX_LAYERS = 256
MAX_BLOCK = 65_536


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``: ``None`` leaves torch's default, else ``torch.set_num_threads``."""
    if threads is None:
        return
    if threads < 1:
        raise CommandError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def add_threads_option(parser: argparse.ArgumentParser, help: str) -> None:
    """Declare ``--threads N`` (1 to ``MAX_THREADS``); ``help`` says what happens without it."""
    parser.add_argument("--threads", type=int_in(1, MAX_THREADS), metavar="N", help=help)


def auto_threads() -> int:
    """Threads for torch that fit the cores other work leaves free (at least 1).

    torch's default of one thread per core makes its threads wait on each other when the
    machine is busy (the demo took 43 s quiet and 505 s under load that way); the one-minute
    load average tells how many cores other processes already keep busy.
    """
    import os

    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on every platform
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def _range_text(
    lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False
) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    assert hi is not None
    return f"{'<' if hi_open else '<='} {hi:g}"


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for integers in ``[lo, hi]`` (either end may be open-ended).

    Example:
        >>> int_in(1)("3")
        3
        >>> int_in(0, 10)("11")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be an integer in [0, 10], got 11
    """
    bounds = _range_text(lo, hi)

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer {bounds}, got {shorten(text)}"
            ) from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"must be an integer {bounds}, got {shorten(str(value))}"
            )
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def float_in(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type=`` for finite numbers in a range; ``lo_open``/``hi_open`` exclude
    the ends. NaN and infinities are always refused.

    Example:
        >>> float_in(0, 1, lo_open=True)("0.5")
        0.5
        >>> float_in(0, 1, lo_open=True)("2")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a number in (0, 1], got 2
    """
    bounds = _range_text(lo, hi, lo_open, hi_open)

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {shorten(text)}")
        return value

    parse.__name__ = "number"
    return parse


def utf8_text(text: str) -> str:
    """An argparse ``type=`` for free text: refuses arguments that are not valid UTF-8.

    Python decodes such bytes in ``sys.argv`` to lone surrogates, which every later consumer
    (fonts, JSON, files) rejects with its own confusing error; saying so here is clearer.

    Example:
        >>> utf8_text("Nov 22, 2026")
        'Nov 22, 2026'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(
            f"is not valid UTF-8 text (undecodable byte at position {exc.start})"
        ) from None
    return text


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut in the middle when longer than ``limit``, with its full length.

    Example:
        >>> shorten("x" * 10_000)
        'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…xxxxxxxxxx (10,000 characters)'
    """
    if len(text) <= limit:
        return text
    tail = 10
    return f"{text[: limit - tail - 5]}…{text[-tail:]} ({len(text):,} characters)"


_QUOTED = re.compile(r"'[^'\n]{80,}'|\"[^\"\n]{80,}\"")


def shorten_message(message: str, limit: int = 400) -> str:
    """One line of at most about ``limit`` characters: long quoted inputs are cut in the
    middle, line breaks become spaces and the rest is cut at the end.

    Example:
        >>> shorten_message(f"input {'a' * 500!r} is not a date")[-42:]
        "…aaaaaaaaa' (502 characters) is not a date"
    """
    message = _QUOTED.sub(lambda m: shorten(m.group(0)), message)
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def check_out_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as a ``Path``, or a one-line :class:`CommandError` naming ``option`` when it is
    a file or lies under a file. Nothing is created: the command creates the folder when it
    first writes, so a command refused later leaves nothing behind."""
    if not str(path).strip():
        # Path("") is ".", so an empty value would quietly write into the current folder.
        raise CommandError(f"{option} must name a folder, got an empty value")
    try:
        return check_directory(path, option)
    except OSError as exc:
        raise CommandError(str(exc)) from None


T = TypeVar("T")


def in_blocks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), read lazily: the batch commands
    read, run and write one block at a time, so a long stream runs in bounded memory.

    Example:
        >>> list(in_blocks(range(5), 2))
        [[0, 1], [2, 3], [4]]
    """
    it = iter(items)
    while block := list(itertools.islice(it, size)):
        yield block


def load_checkpoint_file(
    path: str | os.PathLike[str], load: Callable[[Path], T], *, how_to_train: str
) -> T:
    """``load(path)``, or a one-line :class:`CommandError`: that there is no file at ``path``
    and ``how_to_train`` one, or why the file cannot be used."""
    target = Path(path)
    if not target.exists():
        raise CommandError(f"no checkpoint at {str(target)!r}; {how_to_train}")
    try:
        return load(target)
    except CheckpointError as exc:
        raise CommandError(str(exc)) from exc
