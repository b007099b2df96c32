"""The default task: translate a date as people write it into ISO ``YYYY-MM-DD``.

Sixteen form families (:data:`FAMILIES`) in seven languages, any letter case, stray spaces and
trailing punctuation, over the calendar from 1000-01-01 to 2999-12-31 (730,485 days). Attention
has to do real work: copy digits, look up month names in seven languages, skip weekdays and
ordinal suffixes, reorder day and month, and expand a two-digit year.

=============  ==============================================================================
family         examples for 2026-11-22 (and 2026-05-01 where the first of the month differs)
=============  ==============================================================================
``iso``        ``2026-11-22``
``iso_time``   ``2026-11-22T10:30:00Z``, ``2026-11-22 08:15+01:00``
``compact``    ``20261122``
``ymd``        ``2026/11/22``, ``2026.11.22``, ``2026/5/1``
``dmy``        ``22/11/2026``, ``22.11.2026``, ``1-5-2026``, ``22 11 2026``
``mdy``        ``11/22/2026``, ``5.1.2026``
``dmy_short``  ``22/11/26``, ``01.05.26`` (two-digit year, pivot 1950)
``mdy_short``  ``11/22/26``
``en_dmy``     ``22 November 2026``, ``22nd Nov. 2026``, ``the 22nd of November 2026``,
               ``22-Nov-2026``, ``22 Nov '26``
``en_mdy``     ``November 22, 2026``, ``Nov. 22nd, 2026``, ``Nov 22 '26``
``fr``         ``le 22 novembre 2026``, ``1er mai 2026``, ``22 nov. 2026``
``de``         ``22. November 2026``, ``am 1. Mai 2026``, ``22. Nov. 2026``
``es``         ``22 de noviembre de 2026``, ``1º de mayo del 2026``, ``22 nov 2026``
``it``         ``22 novembre 2026``, ``1º maggio 2026``, ``22 nov 2026``
``pt``         ``22 de novembro de 2026``, ``1º de maio de 2026``, ``22 nov 2026``
``nl``         ``22 november 2026``, ``1 mei 2026``, ``22 nov 2026``
=============  ==============================================================================

Word families put a weekday in front one time in five (``Sunday, 22 November 2026``,
``zondag 22 november 2026``). Numeric day/month forms whose two first numbers could each be the
day (``03/04/2001``) are ambiguous; their model input carries an order mark
(:func:`~multihead.tasks.date_reading.model_source`), as ``multihead translate --order`` gives
it. The model reads :func:`~multihead.tasks.date_reading.normalize`'s form of the text (lower
case, single spaces), so case and spacing cost it nothing to learn.

Half of the samples take their day from 1950-2049, where most real dates are; two-digit years
always do, so every source names one date under the default pivot.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from multihead.tasks._seq2seq import SPLITS, Seq2SeqTaskBase, Split
from multihead.tasks.date_reading import (
    DEFAULT_PIVOT,
    FIRST_YEAR,
    LAST_YEAR,
    MAX_INPUT_LENGTH,
    ORDER_MARKS,
    model_source,
    normalize,
)
from multihead.tasks.date_words import EN_WEEKDAY_ABBRS, MONTH_ABBRS, MONTHS, WEEKDAYS
from multihead.tasks.vocab import (
    CharVocab,
    _check_choice,
    _check_int,
    _config_or_default,
)

__all__ = [
    "FAMILIES",
    "FIRST_DATE",
    "LAST_DATE",
    "MAX_SOURCE_LENGTH",
    "MAX_TARGET_LENGTH",
    "DateSample",
    "DatesConfig",
    "DatesTask",
    "dates_vocab",
    "write_date",
]


FAMILIES: tuple[str, ...] = (
    "iso", "iso_time", "compact", "ymd", "dmy", "mdy", "dmy_short", "mdy_short",
    "en_dmy", "en_mdy", "fr", "de", "es", "it", "pt", "nl",
)  # fmt: skip
_SHORT_YEAR = ("dmy_short", "mdy_short")

FIRST_DATE = datetime.date(FIRST_YEAR, 1, 1)
LAST_DATE = datetime.date(LAST_YEAR, 12, 31)
NUM_DAYS = LAST_DATE.toordinal() - FIRST_DATE.toordinal() + 1  # 730,485
# The two-digit-year window of the default pivot, as day indices from FIRST_DATE.
_WINDOW = (
    datetime.date(DEFAULT_PIVOT, 1, 1).toordinal() - FIRST_DATE.toordinal(),
    datetime.date(DEFAULT_PIVOT + 99, 12, 31).toordinal() - FIRST_DATE.toordinal(),
)

# An input of 64 characters, plus the order mark.
MAX_SOURCE_LENGTH = MAX_INPUT_LENGTH + 1
# "2026-11-22" plus BOS and EOS.
MAX_TARGET_LENGTH = 12


class DateSample(NamedTuple):
    """One generated example: the written ``text``, its ISO ``target``, the ``family`` it was
    written in and, for an ambiguous numeric date, the ``order`` it was written in."""

    text: str
    target: str
    family: str
    order: str | None


def _title(text: str) -> str:
    # str.title() capitalises after digits too ("1er" -> "1Er"); people capitalise words.
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _abbr(lang: str, month: int, rng: np.random.Generator) -> str:
    abbr = MONTH_ABBRS[lang][month - 1]
    shortened = abbr != MONTHS[lang][month - 1]
    # French and German write the dot; English and the others often leave it out.
    dot_chance = 0.8 if lang in ("fr", "de") else 0.3
    return abbr + "." if shortened and rng.random() < dot_chance else abbr


def _month(lang: str, month: int, rng: np.random.Generator) -> str:
    return MONTHS[lang][month - 1] if rng.random() < 0.65 else _abbr(lang, month, rng)


def _en_ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _numeric(d: datetime.date, family: str, rng: np.random.Generator) -> tuple[str, str | None]:
    pad = rng.random() < 0.5
    dd = f"{d.day:02d}" if pad else str(d.day)
    mm = f"{d.month:02d}" if pad else str(d.month)
    if family == "iso":
        return d.isoformat(), None
    if family == "iso_time":
        time = f"{rng.integers(24):02d}:{rng.integers(60):02d}"
        if rng.random() < 0.6:
            time += f":{rng.integers(60):02d}"
            if rng.random() < 0.2:
                time += f".{rng.integers(1000):03d}"
        zone = _pick(rng, ["", "Z", "Z", "+01:00", "-05:00", "+0530", "+02"])
        return f"{d.isoformat()}{'T' if rng.random() < 0.8 else ' '}{time}{zone}", None
    if family == "compact":
        return f"{d.year:04d}{d.month:02d}{d.day:02d}", None
    if family == "ymd":
        sep = _pick(rng, ["/", ".", "/", ".", "-"])
        return f"{d.year}{sep}{mm}{sep}{dd}", None
    sep = _pick(rng, ["/", ".", "-", " ", "/", "."])
    year = f"{d.year % 100:02d}" if family in _SHORT_YEAR else str(d.year)
    order = "dmy" if family.startswith("dmy") else "mdy"
    first, second = (dd, mm) if order == "dmy" else (mm, dd)
    ambiguous = d.day != d.month and d.day <= 12
    return f"{first}{sep}{second}{sep}{year}", order if ambiguous else None


def _words(d: datetime.date, family: str, rng: np.random.Generator, short_ok: bool) -> str:
    day, month = d.day, d.month
    year = str(d.year)
    lang = family[:2]
    if lang == "en":
        if short_ok and rng.random() < 0.15:
            year = f"'{d.year % 100:02d}"
        day_text = _en_ordinal(day) if rng.random() < 0.3 else str(day)
        name = _month("en", month, rng)
        if family == "en_mdy":
            comma = "," if rng.random() < 0.7 else ""
            return f"{name} {day_text}{comma} {year}"
        style = rng.random()
        if style < 0.15:
            return f"the {_en_ordinal(day)} of {MONTHS['en'][month - 1]} {year}"
        if style < 0.25:
            return f"{day_text}-{MONTH_ABBRS['en'][month - 1]}-{year}"
        return f"{day_text} {name} {year}"
    name = _month(lang, month, rng)
    first = rng.random() < 0.5 and day == 1
    if lang == "fr":
        day_text = "1er" if day == 1 and rng.random() < 0.8 else str(day)
        return f"{'le ' if rng.random() < 0.4 else ''}{day_text} {name} {year}"
    if lang == "de":
        dot = "." if rng.random() < 0.85 else ""
        return f"{'am ' if rng.random() < 0.15 else ''}{day}{dot} {name} {year}"
    if lang == "nl":
        return f"{day} {name} {year}"
    day_text = f"{day}º" if first else str(day)
    if lang == "it":
        return f"{day_text} {name} {year}"
    # Spanish and Portuguese: "22 de noviembre de 2026", or without "de" around abbreviations.
    if rng.random() < 0.7:
        de_year = "del" if lang == "es" and rng.random() < 0.2 else "de"
        return f"{'el ' if lang == 'es' and rng.random() < 0.1 else ''}{day_text} de {name} " + (
            f"{de_year} {year}"
        )
    return f"{day_text} {name} {year}"


def _weekday(d: datetime.date, lang: str, rng: np.random.Generator) -> str:
    if lang == "en" and rng.random() < 0.4:
        name = EN_WEEKDAY_ABBRS[d.weekday()]
    else:
        name = WEEKDAYS[lang][d.weekday()]
    return name + ("," if rng.random() < 0.6 else "")


def _decorate(text: str, rng: np.random.Generator) -> str:
    case = rng.random()
    if case < 0.25:
        text = text.lower()
    elif case < 0.4:
        text = text.upper()
    elif case < 0.5:
        text = _title(text)
    if rng.random() < 0.08 and not text.endswith("."):
        text += _pick(rng, [".", ",", "!"])
    if rng.random() < 0.08:
        parts = text.split(" ")
        at = int(rng.integers(len(parts)))
        parts[at] = " " + parts[at]
        text = " ".join(parts)
    if rng.random() < 0.04:
        text = f" {text} "
    return text


def write_date(
    d: datetime.date, family: str, rng: np.random.Generator | int = 0
) -> tuple[str, str | None]:
    """Write ``d`` in one random variant of ``family``; returns ``(text, order)``.

    ``order`` is ``"dmy"``/``"mdy"`` for an ambiguous numeric date (its two first numbers
    could each be the day), else ``None``. Two-digit-year families need ``d`` in 1950-2049.

    Example:
        >>> write_date(datetime.date(2026, 11, 22), "iso")
        ('2026-11-22', None)
        >>> text, order = write_date(datetime.date(2001, 4, 3), "dmy", rng=1)
        >>> order
        'dmy'
    """
    if not isinstance(d, datetime.date):
        raise TypeError(f"d must be a datetime.date, got {type(d).__name__}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    in_window = DEFAULT_PIVOT <= d.year <= DEFAULT_PIVOT + 99
    if family in _SHORT_YEAR and not in_window:
        raise ValueError(
            f"d must be in {DEFAULT_PIVOT}-{DEFAULT_PIVOT + 99} for family {family!r}, "
            f"got year {d.year}"
        )
    if not FIRST_DATE <= d <= LAST_DATE:
        raise ValueError(f"d must be in {FIRST_DATE}..{LAST_DATE}, got {d}")
    if family in FAMILIES[:8]:
        text, order = _numeric(d, family, rng)
        return (_decorate(text, rng) if family not in ("iso", "compact") else text), order
    text = _words(d, family, rng, in_window)
    if rng.random() < 0.2:
        text = f"{_weekday(d, family[:2], rng)} {text}"
    return _decorate(text, rng), None


@lru_cache(maxsize=1)
def dates_vocab() -> CharVocab:
    """Every character of a normalised date in any family, the order marks and ISO's digits.

    Example:
        >>> vocab = dates_vocab()
        >>> vocab.decode(vocab.encode("märz 2026-11-22")) == "märz 2026-11-22"
        True
    """
    texts = ["0123456789-+:. ,/'t", *ORDER_MARKS.values(), "1º 1er 22nd 3rd 4th"]
    for table in (MONTHS, MONTH_ABBRS, WEEKDAYS):
        texts += [normalize(word) for words in table.values() for word in words]
    texts += [normalize(word) for word in EN_WEEKDAY_ABBRS]
    texts += ["the of le el de del am z"]
    return CharVocab.from_texts(texts)


def _check_split(split: object) -> int:
    return _check_choice("split", split, SPLITS)


@dataclass(frozen=True, kw_only=True)
class DatesConfig:
    """Settings of :class:`DatesTask`.

    Example:
        >>> DatesConfig(seed=1, families=("iso", "fr")).heldout_fraction
        0.1
    """

    # Seeds the calendar split and, with the split's name, every sample stream.
    seed: int = 0
    # Share of calendar days held out, half for valid and half for test.
    heldout_fraction: float = 0.1
    # Families to sample; a subset makes an easier task or a family-generalisation ablation.
    families: tuple[str, ...] = FAMILIES
    # Chance that a sample's day comes from 1950-2049, where most real dates are; the rest
    # spread over 1000-2999 so the model copies any four-digit year.
    window_probability: float = 0.5

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        for name in ("heldout_fraction", "window_probability"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if round(36525 * self.heldout_fraction / 2) < 1:
            raise ValueError(
                f"heldout_fraction must leave at least one 1950-2049 day per held-out split, "
                f"got {self.heldout_fraction}"
            )
        if not 0.0 <= self.window_probability <= 1.0:
            raise ValueError(f"window_probability must be in [0, 1], got {self.window_probability}")
        value = self.families
        if isinstance(value, str):
            raise TypeError(f"families must be a tuple of names, got the single str {value!r}")
        value = tuple(value)
        if not value:
            raise ValueError(f"families must name at least one of {FAMILIES}, got ()")
        unknown = [v for v in value if v not in FAMILIES]
        if unknown:
            raise ValueError(f"families must be drawn from {FAMILIES}, got unknown {unknown}")
        if len(set(value)) != len(value):
            raise ValueError(f"families must not repeat names, got {value}")
        object.__setattr__(self, "families", value)


class DatesTask(Seq2SeqTaskBase):
    """Sample written dates and their ISO dates, and batch them as padded id tensors.

    Held-out splits never share a calendar day with training: the 730,485 days are permuted
    once by ``config.seed`` and cut into valid, test and train days. Each
    ``(config.seed, split, rng_seed)`` gives its own reproducible stream.

    Shapes: ``B`` batch, ``Ns <= MAX_SOURCE_LENGTH`` source length, ``Nt = MAX_TARGET_LENGTH``.

    Example:
        >>> task = DatesTask(DatesConfig(seed=0))
        >>> sample = task.sample_full(1, "train", rng_seed=0)[0]
        >>> sample.family in FAMILIES
        True
        >>> batch = task.make_dataset(4, "valid")
        >>> batch.src.shape[0], batch.tgt.shape
        (4, torch.Size([4, 12]))
    """

    def __init__(self, config: DatesConfig | None = None) -> None:
        self.config = config = _config_or_default(config, DatesConfig)
        self.vocab = dates_vocab()
        n_held = round(NUM_DAYS * config.heldout_fraction / 2)
        order = np.random.default_rng(config.seed).permutation(NUM_DAYS)
        self._days: dict[str, np.ndarray] = {
            "valid": np.sort(order[:n_held]),
            "test": np.sort(order[n_held : 2 * n_held]),
            "train": np.sort(order[2 * n_held :]),
        }
        lo, hi = _WINDOW
        self._window_days = {
            split: days[(days >= lo) & (days <= hi)] for split, days in self._days.items()
        }

    def split_dates(self, split: Split) -> tuple[datetime.date, ...]:
        """Every calendar day of ``split``, in calendar order."""
        _check_split(split)
        base = FIRST_DATE.toordinal()
        return tuple(datetime.date.fromordinal(base + int(i)) for i in self._days[split])

    def _one(self, rng: np.random.Generator, split: Split, family: str) -> DateSample:
        window = family in _SHORT_YEAR or rng.random() < self.config.window_probability
        days = self._window_days[split] if window else self._days[split]
        d = datetime.date.fromordinal(FIRST_DATE.toordinal() + int(days[rng.integers(len(days))]))
        text, order = write_date(d, family, rng)
        return DateSample(text, d.isoformat(), family, order)

    def sample_full(
        self, n: int, split: Split = "train", rng_seed: int = 0, *, balanced: bool = False
    ) -> list[DateSample]:
        """``n`` samples of ``split``; ``balanced`` gives every family the same share, in
        :data:`FAMILIES` order (the first ``n % len(families)`` get one more).

        Example:
            >>> [s.family for s in DatesTask().sample_full(17, "test", balanced=True)][:3]
            ['iso', 'iso', 'iso_time']
        """
        _check_int("n", n, 1)
        rng = self._rng(split, rng_seed)
        families = self.config.families
        if balanced:
            counts = [n // len(families) + (i < n % len(families)) for i in range(len(families))]
            chosen = [f for f, c in zip(families, counts, strict=True) for _ in range(c)]
        else:
            chosen = [families[i] for i in rng.integers(len(families), size=n)]
        return [self._one(rng, split, family) for family in chosen]

    def sample(self, n: int, split: Split = "train", rng_seed: int = 0) -> list[tuple[str, str]]:
        """``n`` pairs ``(model source, ISO target)``: the source as the model reads it
        (:func:`~multihead.tasks.date_reading.model_source`).

        Example:
            >>> task = DatesTask()
            >>> task.sample(2, "test", rng_seed=3) == task.sample(2, "test", rng_seed=3)
            True
        """
        return [
            (model_source(s.text, s.order), s.target) for s in self.sample_full(n, split, rng_seed)
        ]

    def _draw(self, rng: np.random.Generator, n: int, split: Split) -> list[tuple[str, str]]:
        # Each date's family is drawn just before it (sample_full draws all families first).
        families = self.config.families
        samples = [
            self._one(rng, split, families[int(rng.integers(len(families)))]) for _ in range(n)
        ]
        return [(model_source(s.text, s.order), s.target) for s in samples]
