"""Text-classification data that users bring: readers for three layouts and a generated set.

Layouts (``format``):

* ``tsv`` / ``csv``: a header row, then one example per row; the text and label columns are
  found by name (``text``/``sentence``/... and ``label``/``class``/...) or given explicitly.
* ``label-first``: ``LABEL<space>TEXT`` per line, as in the SST-2 files of Kim (2014).
* a folder with one sub-folder per class, each holding ``.txt`` files (one example per file),
  as in the IMDB and 20 Newsgroups distributions.

``auto`` picks by the file's extension and first line. Real files carry stray bytes that are
not UTF-8: they are decoded with U+FFFD and counted in one :class:`TextDataWarning` per file,
never a refusal. Ragged rows and empty texts raise a ``ValueError`` naming the file and line
(``on_bad_line="skip"`` drops them with one warning listing the lines instead).
"""

from __future__ import annotations

import csv
import io
import os
import random
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "FORMATS",
    "TextDataWarning",
    "TextExample",
    "check_labels",
    "decode_bytes",
    "generated_examples",
    "read_examples",
    "split_examples",
    "write_label_first",
]

FORMATS: tuple[str, ...] = ("auto", "tsv", "csv", "label-first")
BadLine = Literal["error", "skip"]
# Column names tried in order when --text-column / --label-column are not given.
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "comment", "body", "tweet")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "sentiment", "y")


class TextDataWarning(UserWarning):
    """Something in a data file was repaired or dropped rather than refused."""


@dataclass(frozen=True)
class TextExample:
    """One labelled text and where it came from (``where``: ``"FILE line N"``)."""

    text: str
    label: str
    where: str


def decode_bytes(data: bytes, name: str) -> str:
    """UTF-8 text of ``data``; invalid bytes become U+FFFD, counted in a :class:`TextDataWarning`.

    A leading byte-order mark is dropped.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     decode_bytes(b"caf\\xe9 ok", "f.txt")
        'caf\\ufffd ok'
    """
    text = data.decode("utf-8", errors="replace")
    # U+FFFD may be in the file legitimately; only the ones decoding added are stray bytes.
    added = text.count("\ufffd") - data.count("\ufffd".encode())
    if added:
        first = next(i for i, line in enumerate(text.splitlines(), 1) if "\ufffd" in line)
        warnings.warn(
            f"{name}: {added} invalid UTF-8 byte sequence(s) replaced by U+FFFD (first on line "
            f"{first}); the rest of the file is read as usual",
            TextDataWarning,
            stacklevel=3,
        )
    return text.removeprefix("\ufeff")


def _sniff_format(path: Path, first_line: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if "\t" in first_line:
        return "tsv"
    names = {f.strip().strip('"').lower() for f in first_line.split(",")}
    if len(names) > 1 and names & set(TEXT_COLUMNS) and names & set(LABEL_COLUMNS):
        return "csv"
    return "label-first"


def _pick_column(
    header: list[str], wanted: str | None, defaults: Sequence[str], what: str, flag: str, where: str
) -> int:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        if wanted.isdigit() and int(wanted) < len(header):
            return int(wanted)
        raise ValueError(f"{flag}: no column {wanted!r} in the header of {where}; it has {header}")
    for name in defaults:
        if name in lowered:
            return lowered.index(name)
    raise ValueError(
        f"{where}: cannot tell which column holds the {what}: the header is {header}; name it "
        f"with {flag} (tried {', '.join(defaults)})"
    )


class _Collector:
    """Gathers examples and bad lines of one file, raising or warning per ``on_bad_line``."""

    def __init__(self, name: str, on_bad_line: BadLine) -> None:
        self.name, self.on_bad_line = name, on_bad_line
        self.examples: list[TextExample] = []
        self.bad: list[str] = []

    def add(self, text: str, label: str, line: int) -> None:
        where = f"{self.name} line {line}"
        text, label = text.strip(), label.strip()
        if not label:
            self.reject(f"{where}: the label is empty")
        elif not text:
            self.reject(f"{where}: the text is empty (label {label!r})")
        else:
            self.examples.append(TextExample(text, label, where))

    def reject(self, reason: str) -> None:
        if self.on_bad_line == "error":
            raise ValueError(f"{reason}; fix the line or pass --skip-bad-lines to drop it")
        self.bad.append(reason)

    def finish(self) -> list[TextExample]:
        if self.bad:
            shown = "; ".join(self.bad[:3]) + ("; ..." if len(self.bad) > 3 else "")
            warnings.warn(
                f"{self.name}: skipped {len(self.bad)} bad line(s): {shown}",
                TextDataWarning,
                stacklevel=3,
            )
        if not self.examples:
            raise ValueError(f"{self.name} holds no usable examples")
        return self.examples


def _read_table(
    text: str, delimiter: str, c: _Collector, text_column: str | None, label_column: str | None
) -> None:
    # TSV files (GLUE and most exports) do not quote; CSV files do.
    stream = io.StringIO(text, newline="")
    if delimiter == "\t":
        reader = csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(stream, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{c.name} is empty")
    flag_t, flag_l = "--text-column", "--label-column"
    ti = _pick_column(header, text_column, TEXT_COLUMNS, "text", flag_t, f"{c.name} line 1")
    li = _pick_column(header, label_column, LABEL_COLUMNS, "label", flag_l, f"{c.name} line 1")
    line = 1
    for row in reader:
        line_start, line = line + 1, reader.line_num
        if not row or all(not f.strip() for f in row):
            continue
        if len(row) != len(header):
            c.reject(
                f"{c.name} line {line_start}: {len(row)} field(s), the header has {len(header)} "
                f"(a stray {'tab' if delimiter == chr(9) else 'comma or quote'}?)"
            )
            continue
        c.add(row[ti], row[li], line_start)


def _read_label_first(text: str, c: _Collector) -> None:
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue  # blank lines (often one at the end) carry nothing
        parts = raw.strip().split(maxsplit=1)
        c.add(parts[1] if len(parts) == 2 else "", parts[0], i)


def _read_folder(root: Path, c: _Collector) -> None:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"folder {str(root)!r} has no class sub-folders (one per label, holding .txt files)"
        )
    for folder in classes:
        files = sorted(folder.glob("*.txt"))
        if not files:
            c.reject(f"{folder}: class folder {folder.name!r} holds no .txt files")
        for file in files:
            text = decode_bytes(file.read_bytes(), str(file))
            before = len(c.examples)
            c.add(" ".join(text.split()), folder.name, 1)
            if len(c.examples) > before:  # name the file, not "line 1" of a folder
                c.examples[-1] = TextExample(c.examples[-1].text, folder.name, str(file))


def read_examples(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    text_column: str | None = None,
    label_column: str | None = None,
    on_bad_line: BadLine = "error",
) -> list[TextExample]:
    """Read labelled texts from a TSV/CSV file with a header, a ``LABEL TEXT`` file or a folder.

    Args:
        path: a file, or a folder with one sub-folder of ``.txt`` files per class.
        format: one of :data:`FORMATS`; ignored for folders.
        text_column, label_column: column names (or 0-based indices) for TSV/CSV.
        on_bad_line: ``"error"`` raises on the first ragged row or empty text, naming the line;
            ``"skip"`` drops such lines with one :class:`TextDataWarning`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.tsv"
        >>> _ = p.write_text("sentence\\tlabel\\ngood film\\t1\\n")
        >>> read_examples(p)[0].label
        '1'
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data path {str(p)!r} does not exist")
    c = _Collector(str(p), on_bad_line)
    if p.is_dir():
        _read_folder(p, c)
        return c.finish()
    text = decode_bytes(p.read_bytes(), str(p))
    if not text.strip():
        raise ValueError(f"{p} is empty")
    first = text.lstrip("\r\n").split("\n", 1)[0]
    kind = _sniff_format(p, first) if format == "auto" else format
    if kind == "label-first":
        _read_label_first(text, c)
    else:
        _read_table(text, "\t" if kind == "tsv" else ",", c, text_column, label_column)
    return c.finish()


def check_labels(
    train: Sequence[TextExample], others: Iterable[tuple[str, Sequence[TextExample]]] = ()
) -> list[str]:
    """The sorted label set of ``train``; ``ValueError`` for one class, or a label in ``others``
    (``(role, examples)`` pairs, e.g. ``("--test", test)``) that training never saw.

    Example:
        >>> ex = [TextExample("a", "x", "f line 1"), TextExample("b", "y", "f line 2")]
        >>> check_labels(ex)
        ['x', 'y']
    """
    counts = Counter(e.label for e in train)
    if len(counts) < 2:
        label = next(iter(counts), None)
        raise ValueError(
            f"the training data has a single class: all {len(train)} examples (from "
            f"{train[0].where if train else '?'} on) are labelled {label!r}; a classifier needs "
            f"at least two (wrong --label-column or --format?)"
        )
    for role, examples in others:
        for e in examples:
            if e.label not in counts:
                raise ValueError(
                    f"{e.where} ({role}): label {e.label!r} never occurs in the training data "
                    f"(labels there: {', '.join(sorted(counts)[:10])}); the model cannot predict it"
                )
    return sorted(counts)


def split_examples(
    examples: Sequence[TextExample], fraction: float, seed: int
) -> tuple[list[TextExample], list[TextExample]]:
    """A seeded, per-class (stratified) split into ``(train, held_out)``; every class keeps at
    least one training example.

    Example:
        >>> ex = [TextExample(str(i), str(i % 2), "") for i in range(10)]
        >>> [len(part) for part in split_examples(ex, 0.2, seed=0)]
        [8, 2]
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = random.Random(seed)
    by_label: dict[str, list[TextExample]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    train, held = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        k = min(len(group) - 1, round(len(group) * fraction))
        held += group[:k]
        train += group[k:]
    rng.shuffle(train)
    return train, held


# ------------------------------------------------------------------------------ generated set

_POSITIVE = ("good", "great", "lovely", "superb", "charming", "moving", "funny", "brilliant")
_NEGATIVE = ("bad", "dull", "awful", "boring", "clumsy", "tedious", "weak", "terrible")
_SUBJECTS = ("the film", "this movie", "the plot", "the acting", "the script", "the ending")
_FILLERS = ("", "really ", "quite ", "truly ", "rather ", "simply ")
_TAILS = ("", " overall", " from start to finish", " , as expected", " in every scene")


def generated_examples(n: int, *, seed: int = 0) -> list[TextExample]:
    """``n`` short movie-review-like sentences labelled ``pos``/``neg``, deterministic by seed.

    A negation ("not") flips the word's sentiment, so word order matters a little. Used by the
    tests and for trying ``multihead train textclass`` offline.

    Example:
        >>> sorted({e.label for e in generated_examples(20, seed=1)})
        ['neg', 'pos']
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.25
        words = _POSITIVE if positive != negated else _NEGATIVE
        text = (
            f"{rng.choice(_SUBJECTS)} is {'not ' if negated else ''}{rng.choice(_FILLERS)}"
            f"{rng.choice(words)}{rng.choice(_TAILS)}"
        )
        out.append(TextExample(text, "pos" if positive else "neg", f"generated {i + 1}"))
    return out


def write_label_first(path: str | os.PathLike[str], examples: Iterable[TextExample]) -> Path:
    """Write ``examples`` as ``LABEL TEXT`` lines, atomically.

    Example:
        >>> import tempfile
        >>> p = write_label_first(f"{tempfile.mkdtemp()}/t.txt", generated_examples(2))
        >>> len(read_examples(p))
        2
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text("".join(f"{e.label} {e.text}\n" for e in examples), encoding="utf-8")
    os.replace(tmp, target)
    return target
