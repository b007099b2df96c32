"""The default task: translate a human-written date into ISO ``YYYY-MM-DD``.

Eleven written forms in four languages and four letter cases cover the calendar from
1950-01-01 to 2049-12-31 (36,525 days). It is small enough to train on a laptop CPU in minutes,
yet attention has to do real work: copy digits, look up month names, reorder day and month,
and expand a two-digit year.

Forms (``DATE_FORMS``), shown for 2026-11-22 and for 2026-11-02:

=========================  ============================  ============================
form                       2026-11-22                    2026-11-02
=========================  ============================  ============================
``day_month_year``         ``22 November 2026``          ``2 November 2026``
``month_day_year``         ``November 22, 2026``         ``November 2, 2026``
``month_abbr_day_year``    ``Nov 22, 2026``              ``Nov 2, 2026``
``day_month_abbr_year``    ``22 Nov 2026``               ``2 Nov 2026``
``weekday_day_month_year`` ``Sunday, 22 November 2026``  ``Monday, 2 November 2026``
``dmy_slash``              ``22/11/2026``                ``02/11/2026`` or ``2/11/2026``
``dmy_dot_short_year``     ``22.11.26``                  ``02.11.26`` or ``2.11.26``
``ymd_slash``              ``2026/11/22``                ``2026/11/02`` or ``2026/11/2``
``french``                 ``le 22 novembre 2026``       ``le 2 novembre 2026``
``german``                 ``22. November 2026``         ``2. November 2026``
``spanish``                ``22 de noviembre de 2026``   ``2 de noviembre de 2026``
=========================  ============================  ============================

Padding convention: forms that spell the month never zero-pad the day, as people write them;
the numeric forms (``NUMERIC_FORMS``) zero-pad day and month together or not at all, chosen
per example, so a model learns both. The French form writes the first of the month as ``1er``
(``le 1er mai 2026``), as French does. The two-digit year maps 50-99 to 19xx and 00-49 to 20xx,
which is exactly the task's calendar, so every source string names one date.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from multihead.tasks.vocab import (
    CharVocab,
    Seq2SeqBatch,
    _check_choice,
    _check_int,
    encode_pairs,
)

__all__ = [
    "CASES",
    "DATE_FORMS",
    "FIRST_DATE",
    "LAST_DATE",
    "MAX_SOURCE_LENGTH",
    "MAX_TARGET_LENGTH",
    "NUMERIC_FORMS",
    "DatesConfig",
    "DatesTask",
    "dates_vocab",
    "format_date",
]

Split = Literal["train", "valid", "test"]
SPLITS: tuple[str, ...] = ("train", "valid", "test")

DATE_FORMS: tuple[str, ...] = (
    "day_month_year",
    "month_day_year",
    "month_abbr_day_year",
    "day_month_abbr_year",
    "weekday_day_month_year",
    "dmy_slash",
    "dmy_dot_short_year",
    "ymd_slash",
    "french",
    "german",
    "spanish",
)
NUMERIC_FORMS: tuple[str, ...] = ("dmy_slash", "dmy_dot_short_year", "ymd_slash")
CASES: tuple[str, ...] = ("as_is", "lower", "upper", "title")

FIRST_DATE = datetime.date(1950, 1, 1)
LAST_DATE = datetime.date(2049, 12, 31)
NUM_DAYS = LAST_DATE.toordinal() - FIRST_DATE.toordinal() + 1  # 36,525

# "Wednesday, 30 September 2026"; the tests check it against every rendering of a full year.
MAX_SOURCE_LENGTH = 28
# "2026-11-22" plus BOS and EOS.
MAX_TARGET_LENGTH = 12

# Spelled out instead of taken from `calendar`, whose names follow the process locale.
_EN_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_EN_MONTH_ABBRS = tuple(m[:3] for m in _EN_MONTHS)
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FR_MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
)  # fmt: skip
_DE_MONTHS = (
    "Januar", "Februar", "März", "April", "Mai", "Juni",
    "Juli", "August", "September", "Oktober", "November", "Dezember",
)  # fmt: skip
_ES_MONTHS = (
    "enero", "febrero", "marzo", "abril", "mayo", "junio",
    "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
)  # fmt: skip


def _title(text: str) -> str:
    # str.title() capitalises after digits too ("1er" -> "1Er"); people capitalise words.
    return " ".join(word[:1].upper() + word[1:].lower() for word in text.split(" "))


_CASE_FUNCS = {
    "as_is": lambda s: s,
    "lower": str.lower,
    "upper": str.upper,
    "title": _title,
}


def format_date(
    d: datetime.date, form: str, case: str = "as_is", *, zero_pad: bool | None = None
) -> str:
    """Write ``d`` in one of the ``DATE_FORMS``, in one of the ``CASES``.

    Args:
        d: the date. The two-digit-year form ``dmy_dot_short_year`` needs 1950 <= year <= 2049.
        form: a name from ``DATE_FORMS`` (see the module docstring for each one).
        case: ``"as_is"`` (as the language writes it), ``"lower"``, ``"upper"`` or ``"title"``
            (every space-separated word capitalised).
        zero_pad: numeric forms only; pad day and month to two digits. ``None`` means padded.
            Forms that spell the month never pad the day and reject ``zero_pad=True``.

    Example:
        >>> import datetime
        >>> d = datetime.date(2026, 11, 22)
        >>> format_date(d, "weekday_day_month_year")
        'Sunday, 22 November 2026'
        >>> format_date(d, "french", "upper")
        'LE 22 NOVEMBRE 2026'
        >>> format_date(datetime.date(2026, 3, 5), "dmy_dot_short_year", zero_pad=False)
        '5.3.26'
        >>> format_date(datetime.date(2026, 5, 1), "french", "title")
        'Le 1er Mai 2026'
    """
    if not isinstance(d, datetime.date):
        raise TypeError(f"d must be a datetime.date, got {type(d).__name__}")
    if form not in DATE_FORMS:
        raise ValueError(f"form must be one of {DATE_FORMS}, got {form!r}")
    if case not in _CASE_FUNCS:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    if zero_pad is not None and not isinstance(zero_pad, bool):
        raise TypeError(f"zero_pad must be bool or None, got {type(zero_pad).__name__}")
    if zero_pad and form not in NUMERIC_FORMS:
        raise ValueError(
            f"zero_pad=True applies only to the numeric forms {NUMERIC_FORMS}, got form={form!r}"
        )

    day, month, year = d.day, d.month, d.year
    m = month - 1
    if form in NUMERIC_FORMS:
        width = 1 if zero_pad is False else 2
        dd, mm = f"{day:0{width}d}", f"{month:0{width}d}"
        if form == "dmy_slash":
            text = f"{dd}/{mm}/{year}"
        elif form == "ymd_slash":
            text = f"{year}/{mm}/{dd}"
        else:
            if not FIRST_DATE.year <= year <= LAST_DATE.year:
                # Outside 1950-2049 the two digits would read back as another century.
                raise ValueError(
                    f"d must be in {FIRST_DATE.year}-{LAST_DATE.year} for form {form!r}, "
                    f"got year {year}"
                )
            text = f"{dd}.{mm}.{year % 100:02d}"
    elif form == "day_month_year":
        text = f"{day} {_EN_MONTHS[m]} {year}"
    elif form == "month_day_year":
        text = f"{_EN_MONTHS[m]} {day}, {year}"
    elif form == "month_abbr_day_year":
        text = f"{_EN_MONTH_ABBRS[m]} {day}, {year}"
    elif form == "day_month_abbr_year":
        text = f"{day} {_EN_MONTH_ABBRS[m]} {year}"
    elif form == "weekday_day_month_year":
        text = f"{_EN_WEEKDAYS[d.weekday()]}, {day} {_EN_MONTHS[m]} {year}"
    elif form == "french":
        text = f"le {'1er' if day == 1 else day} {_FR_MONTHS[m]} {year}"
    elif form == "german":
        text = f"{day}. {_DE_MONTHS[m]} {year}"
    else:  # spanish
        text = f"{day} de {_ES_MONTHS[m]} de {year}"
    return _CASE_FUNCS[case](text)


@lru_cache(maxsize=1)
def dates_vocab() -> CharVocab:
    """The vocabulary of the dates task: every character of every form and case, plus ISO's ``-``.

    It does not depend on :class:`DatesConfig`, so checkpoints trained on different form
    subsets share ids.

    Example:
        >>> vocab = dates_vocab()
        >>> vocab.decode(vocab.encode("MÄRZ 2026-11-22")) == "MÄRZ 2026-11-22"
        True
    """
    # The first of every month (months, "1er") and a week (every weekday) reach every name.
    days = [datetime.date(2026, month, 1) for month in range(1, 13)]
    days += [datetime.date(2026, 6, day) for day in range(1, 8)]
    texts = ["0123456789-"]
    for d in days:
        for form in DATE_FORMS:
            for case in CASES:
                texts.append(format_date(d, form, case))
    return CharVocab.from_texts(texts)


def _check_split(split: object) -> int:
    return _check_choice("split", split, SPLITS)


@dataclass(frozen=True, kw_only=True)
class DatesConfig:
    """Settings of :class:`DatesTask`.

    Example:
        >>> DatesConfig(seed=1, forms=("dmy_slash", "german")).heldout_fraction
        0.1
    """

    # Seeds the calendar split and, with the split's name, every sample stream.
    seed: int = 0
    # Share of calendar days held out, half for valid and half for test: 10% is ~1,800 days
    # each, enough for a tight accuracy estimate while training still sees 90% of the days.
    heldout_fraction: float = 0.1
    # Forms to sample; a subset makes an easier task or a form-generalisation ablation.
    forms: tuple[str, ...] = DATE_FORMS
    # Letter cases to sample.
    cases: tuple[str, ...] = CASES
    # Chance that a numeric form is zero-padded; 0.5 teaches both conventions equally.
    zero_pad_probability: float = 0.5

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        for name in ("heldout_fraction", "zero_pad_probability"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if round(NUM_DAYS * self.heldout_fraction / 2) < 1:
            raise ValueError(
                f"heldout_fraction must leave at least one day per held-out split "
                f"(>= {1 / NUM_DAYS:.1e}), got {self.heldout_fraction}"
            )
        if not 0.0 <= self.zero_pad_probability <= 1.0:
            raise ValueError(
                f"zero_pad_probability must be in [0, 1], got {self.zero_pad_probability}"
            )
        for name, allowed in (("forms", DATE_FORMS), ("cases", CASES)):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} must be a tuple of names, got the single str {value!r}")
            value = tuple(value)  # a list from a CLI or JSON is fine; store it frozen
            if not value:
                raise ValueError(f"{name} must name at least one of {allowed}, got ()")
            unknown = [v for v in value if v not in allowed]
            if unknown:
                raise ValueError(f"{name} must be drawn from {allowed}, got unknown {unknown}")
            if len(set(value)) != len(value):
                raise ValueError(f"{name} must not repeat names, got {value}")
            object.__setattr__(self, name, value)


class DatesTask:
    """Sample ``(written date, ISO date)`` pairs and batch them as padded id tensors.

    Held-out splits never overlap training: the 36,525 calendar days are permuted once by
    ``config.seed`` and cut into valid, test and train days, and every source string names
    exactly one day. Sampling draws with replacement from a split's days, with a random form,
    case and padding; each ``(config.seed, split, rng_seed)`` gives its own reproducible stream.

    Shapes: ``B`` batch, ``Ns <= MAX_SOURCE_LENGTH`` source length, ``Nt = MAX_TARGET_LENGTH``.

    Example:
        >>> task = DatesTask(DatesConfig(seed=0))
        >>> src, tgt = task.sample(1, "train", rng_seed=0)[0]
        >>> datetime.date.fromisoformat(tgt) in task.split_dates("train")
        True
        >>> batch = task.make_dataset(4, "valid")
        >>> batch.src.shape[0], batch.tgt.shape
        (4, torch.Size([4, 12]))
    """

    def __init__(self, config: DatesConfig | None = None) -> None:
        if config is None:
            config = DatesConfig()
        if not isinstance(config, DatesConfig):
            raise TypeError(f"config must be a DatesConfig, got {type(config).__name__}")
        self.config = config
        self.vocab = dates_vocab()
        n_held = round(NUM_DAYS * config.heldout_fraction / 2)
        order = np.random.default_rng(config.seed).permutation(NUM_DAYS)
        # Sorted so split_dates reads in calendar order; sampling is by index, so order is moot.
        self._days: dict[str, np.ndarray] = {
            "valid": np.sort(order[:n_held]),
            "test": np.sort(order[n_held : 2 * n_held]),
            "train": np.sort(order[2 * n_held :]),
        }

    def split_dates(self, split: Split) -> tuple[datetime.date, ...]:
        """Every calendar day of ``split``, in calendar order.

        Example:
            >>> task = DatesTask()
            >>> sum(len(task.split_dates(s)) for s in ("train", "valid", "test"))
            36525
        """
        _check_split(split)
        base = FIRST_DATE.toordinal()
        return tuple(datetime.date.fromordinal(base + int(i)) for i in self._days[split])

    def _rng(self, split: Split, rng_seed: int) -> np.random.Generator:
        split_index = _check_split(split)
        _check_int("rng_seed", rng_seed, 0)
        # Entropy differs from the split permutation's (a bare seed), so the streams are unrelated.
        return np.random.default_rng([self.config.seed, split_index + 1, int(rng_seed)])

    def _draw(self, rng: np.random.Generator, n: int, split: Split) -> list[tuple[str, str]]:
        cfg = self.config
        days = self._days[split]
        day_idx = rng.integers(len(days), size=n)
        form_idx = rng.integers(len(cfg.forms), size=n)
        case_idx = rng.integers(len(cfg.cases), size=n)
        pad = rng.random(n) < cfg.zero_pad_probability
        base = FIRST_DATE.toordinal()
        pairs = []
        for i in range(n):
            d = datetime.date.fromordinal(base + int(days[day_idx[i]]))
            form = cfg.forms[form_idx[i]]
            zero_pad = bool(pad[i]) if form in NUMERIC_FORMS else None
            pairs.append(
                (format_date(d, form, cfg.cases[case_idx[i]], zero_pad=zero_pad), d.isoformat())
            )
        return pairs

    def sample(self, n: int, split: Split = "train", rng_seed: int = 0) -> list[tuple[str, str]]:
        """``n`` pairs ``(source text, ISO target)`` drawn from ``split``'s days.

        Example:
            >>> task = DatesTask()
            >>> task.sample(2, "test", rng_seed=3) == task.sample(2, "test", rng_seed=3)
            True
        """
        _check_int("n", n, 1)
        return self._draw(self._rng(split, rng_seed), int(n), split)

    def encode(self, pairs: list[tuple[str, str]]) -> Seq2SeqBatch:
        """Pad ``(source, target)`` strings into a :class:`Seq2SeqBatch`.

        Example:
            >>> DatesTask().encode([("22.11.26", "2026-11-22")]).src_lengths.tolist()
            [8]
        """
        return encode_pairs(self.vocab, pairs)

    def make_dataset(self, n: int, split: Split = "train", rng_seed: int = 0) -> Seq2SeqBatch:
        """``n`` sampled pairs as one padded batch (equal to the first batch of :meth:`batches`).

        Example:
            >>> src, src_lengths, tgt = DatesTask().make_dataset(8, "train")
            >>> tgt.shape
            torch.Size([8, 12])
        """
        return self.encode(self.sample(n, split, rng_seed))

    def batches(
        self,
        batch_size: int,
        split: Split = "train",
        *,
        num_batches: int | None = None,
        rng_seed: int = 0,
    ) -> Iterator[Seq2SeqBatch]:
        """Fresh padded batches from one reproducible stream; endless when ``num_batches`` is None.

        Arguments are checked here, not at the first ``next()``.

        Example:
            >>> [b.src.shape[0] for b in DatesTask().batches(3, num_batches=2)]
            [3, 3]
        """
        _check_int("batch_size", batch_size, 1)
        if num_batches is not None:
            _check_int("num_batches", num_batches, 0)
        return self._stream(self._rng(split, rng_seed), int(batch_size), split, num_batches)

    def _stream(
        self, rng: np.random.Generator, batch_size: int, split: Split, num_batches: int | None
    ) -> Iterator[Seq2SeqBatch]:
        produced = 0
        while num_batches is None or produced < num_batches:
            yield self.encode(self._draw(rng, batch_size, split))
            produced += 1
