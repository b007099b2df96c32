"""Reading a written date deterministically: the pre-check and the verifier of the translator.

The date translator's answers come from a Transformer; this module is the independent second
reader that decides whether an answer may be printed. :func:`read_date` finds the day, the
month (a number, or a name in any of :data:`~multihead.tasks.date_words.LANGUAGES`) and the
year written in a line, and :func:`verify_answer` accepts the model's ISO answer only when it
names exactly that date. A line the reader cannot read, an ambiguous numeric date without an
order, or a date that does not exist is refused before the model runs.

Two-digit years follow a pivot: ``yy`` names the year in ``[pivot, pivot + 99]`` that ends in
``yy`` (the default pivot 1950 maps 50-99 to 1950-1999 and 00-49 to 2000-2049). Four-digit
years must lie in 1000-2999.

Example:
    >>> read_date("Sunday, 22 November 2026").date
    datetime.date(2026, 11, 22)
    >>> read_date("03/04/2001").error
    'ambiguous: 03/04/2001 is 3 April 2001 (--order dmy) or March 4, 2001 (--order mdy)'
    >>> read_date("03/04/2001", order="mdy").date
    datetime.date(2001, 3, 4)
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from multihead.tasks.date_words import (
    FILLER_WORDS,
    MONTHS,
    ORDINAL_SUFFIXES,
    month_lookup,
    weekday_lookup,
)

__all__ = [
    "DEFAULT_PIVOT",
    "FIRST_YEAR",
    "LAST_YEAR",
    "MAX_INPUT_LENGTH",
    "ORDERS",
    "ORDER_MARKS",
    "DateReading",
    "check_line",
    "model_source",
    "normalize",
    "read_date",
    "shorten",
    "verify_answer",
]

FIRST_YEAR = 1000
LAST_YEAR = 2999
DEFAULT_PIVOT = 1950
MAX_INPUT_LENGTH = 64
ORDERS: tuple[str, ...] = ("dmy", "mdy")
# Prefixed to an ambiguous numeric date's model input to say which reading is meant. Control
# characters: check_line refuses them in user input, so no user text can forge one.
ORDER_MARKS: dict[str, str] = {"dmy": "\x11", "mdy": "\x12"}

Order = Literal["dmy", "mdy"]

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[t ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:z|[+-]\d{2}(?::?\d{2})?)?)?"
)
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
# Three numbers with one separator used twice: "22/11/2026", "2026.11.22", "3-4-01", "22 11 26".
_NUMERIC = re.compile(r"(\d{1,4}) ?([/.\- ]) ?(\d{1,2}) ?\2 ?(\d{1,4})")
_TOKENS = re.compile(r"['‘’`´]\d{2}(?!\d)|\d+|[^\W\d_]+(?:-feira)?|\S")
# Separators that may stand between the words of a date; anything else is refused.
_SEPARATORS = frozenset(",./-")
_APOSTROPHES = "'‘’`´"


@dataclass(frozen=True)
class DateReading:
    """What :func:`read_date` found: the one ``date``, or the ``error`` saying why not.

    ``short_year`` tells that the year was written with two digits (its century then comes
    from the pivot); ``readings`` holds both dates of an ambiguous numeric input.
    """

    date: datetime.date | None
    error: str | None = None
    short_year: bool = False
    readings: tuple[datetime.date, ...] = ()


def normalize(text: str) -> str:
    """``text`` as the reader and the model see it: NFKC, lower case, single spaces, no
    surrounding spaces or trailing ``.,;!?`` (``º`` becomes ``o`` and ``’`` becomes ``'``).

    Example:
        >>> normalize("  Sunday,  22 NOVEMBER 2026. ")
        'sunday, 22 november 2026'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    for quote in _APOSTROPHES[1:]:
        text = text.replace(quote, "'")
    text = " ".join(text.split())
    return text.rstrip(".,;!? ").lstrip(" ,")


def model_source(text: str, order: str | None = None) -> str:
    """The model's input for ``text``: :func:`normalize`, with the order mark in front when the
    text is an ambiguous numeric date and ``order`` says how to read it.

    Example:
        >>> model_source("03/04/2001", "dmy") == "\\x1103/04/2001"
        True
        >>> model_source("22/11/2026", "dmy")
        '22/11/2026'
    """
    source = normalize(text)
    if order is not None and _numeric_ambiguous(source):
        return ORDER_MARKS[order] + source
    return source


def shorten(text: str, limit: int = 24) -> str:
    """``text`` cut to ``limit`` characters for an error message (``repr`` escapes the rest).

    Example:
        >>> shorten("x" * 100, 8)
        "'xxxxxxxx…' (100 characters)"
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}"[:-1] + f"…' ({len(text)} characters)"


def check_line(text: str) -> str | None:
    """Why ``text`` cannot be a date before any reading (too long, control characters, emoji),
    or ``None``.

    Example:
        >>> check_line("22 Nov 2026") is None, check_line("22\\x00Nov")
        (True, 'it holds the control character U+0000')
    """
    if len(text) > MAX_INPUT_LENGTH:
        return f"it is {len(text)} characters long, over the limit of {MAX_INPUT_LENGTH}"
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") and ch not in "\t":
            return f"it holds the control character U+{ord(ch):04X}"
        if category == "So" or ord(ch) >= 0x1F000:
            return f"it holds the symbol {ch!r} (U+{ord(ch):04X}), which no date uses"
    return None


def _pivot_year(yy: int, pivot: int) -> int:
    return pivot + (yy - pivot) % 100


def _make(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def _describe(d: datetime.date, order: str) -> str:
    month = MONTHS["en"][d.month - 1]
    return f"{d.day} {month} {d.year}" if order == "dmy" else f"{month} {d.day}, {d.year}"


def _year(text: str, pivot: int) -> tuple[int | None, bool, str | None]:
    """(year, short, error) for a written year of 2 or 4 digits."""
    if len(text) == 2:
        return _pivot_year(int(text), pivot), True, None
    if len(text) == 4:
        year = int(text)
        if not FIRST_YEAR <= year <= LAST_YEAR:
            return None, False, f"the year {year} is outside {FIRST_YEAR}-{LAST_YEAR}"
        return year, False, None
    return None, False, f"{text!r} is not a year (2 or 4 digits)"


def _no_such_date(day: int, month: int, year: int) -> str:
    if not 1 <= month <= 12:
        return f"there is no month {month}"
    return f"there is no day {day} in {MONTHS['en'][month - 1]} {year}"


def _numeric_ambiguous(source: str) -> bool:
    match = _NUMERIC.fullmatch(source)
    if match is None or len(match.group(1)) > 2 or len(match.group(4)) not in (2, 4):
        return False
    a, b = int(match.group(1)), int(match.group(3))
    return a != b and 1 <= a <= 12 and 1 <= b <= 12


def _read_numeric(match: re.Match[str], source: str, order: str | None, pivot: int) -> DateReading:
    first, _, second, last = match.groups()
    if len(first) == 4:  # year first: y-m-d
        year, short, error = _year(first, pivot)
        if year is None:
            return DateReading(None, error)
        if len(last) > 2:
            return DateReading(None, f"{last!r} is not a day")
        d = _make(year, int(second), int(last))
        return DateReading(d, None if d else _no_such_date(int(last), int(second), year))
    if len(first) == 3:
        return DateReading(None, f"{first!r} is neither a day, a month nor a year")
    year, short, error = _year(last, pivot)
    if year is None:
        return DateReading(None, error)
    a, b = int(first), int(second)
    dmy, mdy = _make(year, b, a), _make(year, a, b)
    if dmy and mdy and dmy != mdy:
        if order is None:
            return DateReading(
                None,
                f"ambiguous: {source} is {_describe(dmy, 'dmy')} (--order dmy) or "
                f"{_describe(mdy, 'mdy')} (--order mdy)",
                short,
                (dmy, mdy),
            )
        return DateReading(dmy if order == "dmy" else mdy, None, short, (dmy, mdy))
    if dmy or mdy:
        return DateReading(dmy or mdy, None, short)
    return DateReading(None, f"{source} is no date read day-first or month-first")


def _read_words(source: str, pivot: int) -> DateReading:
    months: list[int] = []
    numbers: list[tuple[str, bool]] = []  # (digits, written with an apostrophe)
    tokens = list(_TOKENS.finditer(source))
    previous_end, previous_number = -1, False
    for match in tokens:
        token = match.group()
        attached = match.start() == previous_end
        is_number = False
        if token[0] in _APOSTROPHES and len(token) == 3:
            numbers.append((token[1:], True))
            is_number = True
        elif token.isdigit():
            numbers.append((token, False))
            is_number = True
        elif token in _SEPARATORS:
            pass
        elif not token[0].isalpha() and token != "°":
            return DateReading(None, f"the character {token!r} is not part of any date form")
        elif attached and previous_number and token in ORDINAL_SUFFIXES:
            pass  # "22nd", "1er", "1º" (NFKC: "1o")
        elif (month := month_lookup(token)) is not None:
            months.append(month)
        elif weekday_lookup(token) or token in FILLER_WORDS:
            pass  # the weekday is not checked against the date: the date is what is written
        else:
            return DateReading(None, f"{token!r} is not a date word")
        # "1.º": an ordinal suffix may follow the dot after a day number.
        keep = token == "." and attached and previous_number
        previous_end, previous_number = match.end(), is_number or keep
    if not numbers and not months:
        return DateReading(None, "there is no date in it")
    if len(months) != 1:
        return DateReading(
            None, "it names no month" if not months else "it names more than one month"
        )
    long_years = [n for n, apostrophe in numbers if len(n) == 4 and not apostrophe]
    apostrophes = [n for n, apostrophe in numbers if apostrophe]
    small = [n for n, apostrophe in numbers if len(n) <= 2 and not apostrophe]
    odd = [n for n, apostrophe in numbers if len(n) in (3,) or len(n) > 4]
    if odd:
        return DateReading(None, f"{odd[0]!r} is neither a day nor a year")
    if len(long_years) + len(apostrophes) == 1 and len(small) == 1:
        day_text, year_text = small[0], (long_years or apostrophes)[0]
    elif not long_years and not apostrophes and len(small) == 2:
        day_text, year_text = small  # "22 Nov 26", "Nov 22 26": the day comes first
    elif len(numbers) < 2:
        return DateReading(None, "it needs a day and a year")
    else:
        return DateReading(None, "it holds more numbers than a day and a year")
    year, short, error = _year(year_text, pivot)
    if year is None:
        return DateReading(None, error)
    d = _make(year, months[0], int(day_text))
    return DateReading(d, None if d else _no_such_date(int(day_text), months[0], year), short)


def read_date(text: str, *, order: str | None = None, pivot: int = DEFAULT_PIVOT) -> DateReading:
    """Read the date written in ``text``, deterministically.

    Args:
        text: one written date (see ``docs/dates.md`` for the forms).
        order: ``"dmy"`` or ``"mdy"``: how to read a numeric date whose two first numbers could
            each be the day (``03/04/2001``); ``None`` refuses such a date, naming both readings.
            An unambiguous numeric date (``11/22/2026``) is read whatever the order.
        pivot: two-digit years name a year in ``[pivot, pivot + 99]``.

    Example:
        >>> read_date("the 3rd of May 2011").date, read_date("le 1er mai 99").date
        (datetime.date(2011, 5, 3), datetime.date(1999, 5, 1))
        >>> read_date("31 February 2001").error
        'there is no day 31 in February 2001'
    """
    if order is not None and order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} or None, got {order!r}")
    if isinstance(pivot, bool) or not isinstance(pivot, int):
        raise TypeError(f"pivot must be an int, got {type(pivot).__name__}")
    if not FIRST_YEAR <= pivot <= LAST_YEAR - 99:
        raise ValueError(f"pivot must be in [{FIRST_YEAR}, {LAST_YEAR - 99}], got {pivot}")
    problem = check_line(text)
    if problem:
        return DateReading(None, problem)
    source = normalize(text)
    if not source:
        return DateReading(None, "it is empty")
    for pattern in (_ISO, _COMPACT):
        if match := pattern.fullmatch(source):
            y, m, d = (int(g) for g in match.groups())
            if not FIRST_YEAR <= y <= LAST_YEAR:
                return DateReading(None, f"the year {y} is outside {FIRST_YEAR}-{LAST_YEAR}")
            date = _make(y, m, d)
            return DateReading(date, None if date else _no_such_date(d, m, y))
    if match := _NUMERIC.fullmatch(source):
        return _read_numeric(match, source, order, pivot)
    if not any(ch.isalpha() for ch in source):
        return DateReading(None, "its numbers do not form a date")
    return _read_words(source, pivot)


def verify_answer(reading: DateReading, answer: str) -> datetime.date:
    """The date to print when the model's ``answer`` agrees with ``reading``, else ValueError.

    The answer must be an ISO ``YYYY-MM-DD`` date with the reading's day and month, and its
    year (or, for a two-digit year, the year's last two digits: the century then comes from the
    pivot, so ``--pivot`` need not be known to the model).

    Example:
        >>> verify_answer(read_date("22.11.26"), "2026-11-22")
        datetime.date(2026, 11, 22)
        >>> verify_answer(read_date("22.11.26"), "2026-11-21")
        Traceback (most recent call last):
        ...
        ValueError: the model's answer 2026-11-21 disagrees with the date written (2026-11-22)
    """
    if reading.date is None:
        raise ValueError(reading.error or "the input holds no date")
    if len(answer) != 10 or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer):
        raise ValueError(f"the model's answer {answer!r} is not an ISO date")
    got = _make(int(answer[:4]), int(answer[5:7]), int(answer[8:]))
    if got is None:
        raise ValueError(f"the model's answer {answer} is not a calendar date")
    want = reading.date
    same_year = got.year % 100 == want.year % 100 if reading.short_year else got.year == want.year
    if not (same_year and got.month == want.month and got.day == want.day):
        raise ValueError(
            f"the model's answer {answer} disagrees with the date written ({want.isoformat()})"
        )
    return want
