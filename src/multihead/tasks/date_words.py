"""The words of written dates in the seven supported languages.

Shared by the generator (:mod:`multihead.tasks.dates`, which writes dates with them) and the
reader (:mod:`multihead.tasks.date_reading`, which reads them back). Spelled out instead of
taken from ``calendar`` or a locale, whose names follow the process environment.

Abbreviations are the ones the languages' own style guides and everyday writing use (for
example the French ``janv.``, ``févr.``, ``juil.``; the Dutch ``mrt``); the generator writes
them with or without the final dot, as people do.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "FILLER_WORDS",
    "LANGUAGES",
    "MONTHS",
    "MONTH_ABBRS",
    "ORDINAL_SUFFIXES",
    "WEEKDAYS",
    "fold",
    "month_lookup",
    "weekday_lookup",
]

LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es", "it", "pt", "nl")

MONTHS: dict[str, tuple[str, ...]] = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre"),
    "de": ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August",
           "September", "Oktober", "November", "Dezember"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre"),
    "it": ("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto",
           "settembre", "ottobre", "novembre", "dicembre"),
    "pt": ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto",
           "setembro", "outubro", "novembro", "dezembro"),
    "nl": ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus",
           "september", "oktober", "november", "december"),
}  # fmt: skip

# Written without a final dot; the generator adds one where it shortens the word.
MONTH_ABBRS: dict[str, tuple[str, ...]] = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "fr": ("janv", "févr", "mars", "avr", "mai", "juin", "juil", "août", "sept", "oct", "nov",
           "déc"),
    "de": ("Jan", "Feb", "März", "Apr", "Mai", "Juni", "Juli", "Aug", "Sept", "Okt", "Nov",
           "Dez"),
    "es": ("ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sept", "oct", "nov", "dic"),
    "it": ("gen", "feb", "mar", "apr", "mag", "giu", "lug", "ago", "set", "ott", "nov", "dic"),
    "pt": ("jan", "fev", "mar", "abr", "mai", "jun", "jul", "ago", "set", "out", "nov", "dez"),
    "nl": ("jan", "feb", "mrt", "apr", "mei", "jun", "jul", "aug", "sep", "okt", "nov", "dec"),
}  # fmt: skip

# Monday first, as datetime.date.weekday() counts.
WEEKDAYS: dict[str, tuple[str, ...]] = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "fr": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
    "de": ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
    "it": ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica"),
    "pt": ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira",
           "sábado", "domingo"),
    "nl": ("maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag", "zondag"),
}  # fmt: skip
# English weekday abbreviations only: French "mar." (mardi) would collide with March.
EN_WEEKDAY_ABBRS: tuple[str, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# Spellings people use that the tables above do not hold (folded: lower case, no accents).
_EXTRA_MONTHS = {"sept": 9, "maerz": 3, "setiembre": 9, "mrz": 3, "mars": 3}
_EXTRA_WEEKDAYS = ("tues", "thur", "thurs", "sonnabend", "segunda", "terca", "quarta",
                   "quinta", "sexta")  # fmt: skip

# Letters written straight after a day number to make it an ordinal, folded (after NFKC,
# "º" and "ª" are "o" and "a"): English 1st/2nd/3rd/4th, French 1er/1re/2e/2ème, Spanish,
# Italian and Portuguese 1º/1ª, Dutch 1e/1ste/8ste.
ORDINAL_SUFFIXES: frozenset[str] = frozenset(
    {"st", "nd", "rd", "th", "er", "re", "e", "eme", "o", "a", "ste", "°"}
)

# Words that may surround a date and carry no part of it.
FILLER_WORDS: frozenset[str] = frozenset(
    {"the", "of", "on", "le", "du", "de", "del", "el", "do", "da", "il", "am", "den", "der",
     "op"}
)  # fmt: skip


def fold(word: str) -> str:
    """``word`` in lower case without accents, the key the reader looks words up by.

    Example:
        >>> fold("Août"), fold("MÄRZ"), fold("miércoles")
        ('aout', 'marz', 'miercoles')
    """
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _build_months() -> dict[str, int]:
    table: dict[str, int] = {}
    for lang in LANGUAGES:
        for names in (MONTHS[lang], MONTH_ABBRS[lang]):
            for i, name in enumerate(names, 1):
                key = fold(name)
                # Every language agrees wherever a spelling is shared ("mar", "mai", "ago").
                if table.setdefault(key, i) != i:
                    raise AssertionError(f"month word {key!r} names two months")
    for key, value in _EXTRA_MONTHS.items():
        table.setdefault(key, value)
    return table


def _build_weekdays() -> frozenset[str]:
    words = {fold(w) for lang in LANGUAGES for w in WEEKDAYS[lang]}
    words |= {fold(w) for w in EN_WEEKDAY_ABBRS}
    return frozenset(words | set(_EXTRA_WEEKDAYS))


_MONTH_TABLE = _build_months()
_WEEKDAY_TABLE = _build_weekdays()


def month_lookup(word: str) -> int | None:
    """The month (1-12) a month name or abbreviation names in any supported language, or None.

    Example:
        >>> month_lookup("Dez"), month_lookup("août"), month_lookup("mrt"), month_lookup("dog")
        (12, 8, 3, None)
    """
    return _MONTH_TABLE.get(fold(word))


def weekday_lookup(word: str) -> bool:
    """Whether ``word`` is a weekday name (or an English abbreviation) in a supported language.

    Example:
        >>> weekday_lookup("Sonntag"), weekday_lookup("Tue"), weekday_lookup("May")
        (True, True, False)
    """
    return fold(word) in _WEEKDAY_TABLE
