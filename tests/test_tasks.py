"""Tests for multihead.tasks: every built-in data set renders, splits and batches correctly."""

from __future__ import annotations

import ast
import datetime
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import multihead.tasks as tasks_pkg
from multihead.tasks import (
    BOS,
    CASES,
    DATE_FORMS,
    EOS,
    MAX_SOURCE_LENGTH,
    MAX_TARGET_LENGTH,
    NUMERIC_FORMS,
    PAD,
    TASK_NAMES,
    UNK,
    CharTextTask,
    CharVocab,
    DatesConfig,
    DatesTask,
    SequenceTask,
    SequenceTaskConfig,
    dates_vocab,
    encode_pairs,
    format_date,
    get_task,
    python_docs_text,
)
from multihead.tasks.dates import FIRST_DATE, LAST_DATE, NUM_DAYS

D = datetime.date

# --------------------------------------------------------------------------------------------
# An independent reader of every written form, so targets are checked against the source text
# rather than against the code that produced both.

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTH_TABLES = (
    "january february march april may june july august september october november december",
    "jan feb mar apr may jun jul aug sep oct nov dec",
    "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "januar februar märz april mai juni juli august september oktober november dezember",
    "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
)
_MONTHS: dict[str, int] = {}
for _table in _MONTH_TABLES:
    for _number, _name in enumerate(_table.split(), start=1):
        assert _MONTHS.setdefault(_name, _number) == _number  # shared names agree (mai, april)


def read_date(text: str) -> tuple[datetime.date, str | None]:
    """The date a source string names, and its weekday name if it has one."""
    t = text.lower()
    if m := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", t):
        return D(int(m[3]), int(m[2]), int(m[1])), None
    if m := re.fullmatch(r"(\d{4})/(\d{1,2})/(\d{1,2})", t):
        return D(int(m[1]), int(m[2]), int(m[3])), None
    if m := re.fullmatch(r"(\d{1,2})\.(\d{1,2})\.(\d{2})", t):
        yy = int(m[3])
        return D(1900 + yy if yy >= 50 else 2000 + yy, int(m[2]), int(m[1])), None
    weekday = None
    if m := re.fullmatch(r"([a-z]+), (.+)", t):
        weekday, t = m[1], m[2]
    tokens = [tok.rstrip(".,") for tok in t.split(" ") if tok not in ("le", "de")]
    assert len(tokens) == 3, text
    day = month = year = None
    for tok in tokens:
        if tok in _MONTHS:
            month = _MONTHS[tok]
        elif re.fullmatch(r"\d{4}", tok):
            year = int(tok)
        elif m := re.fullmatch(r"([1-9]\d?)(er)?", tok):
            day = int(m[1])
        else:
            raise AssertionError(f"unexpected token {tok!r} in {text!r}")
    assert None not in (day, month, year), text
    return D(year, month, day), weekday  # type: ignore[arg-type]


def every_day(year: int) -> list[datetime.date]:
    start = D(year, 1, 1)
    return [start + datetime.timedelta(days=i) for i in range((D(year + 1, 1, 1) - start).days)]


# --------------------------------------------------------------------------------------------
# Dates: rendering


@pytest.mark.parametrize(
    ("d", "form", "case", "zero_pad", "expected"),
    [
        (D(2026, 11, 22), "day_month_year", "as_is", None, "22 November 2026"),
        (D(2026, 11, 22), "month_day_year", "as_is", None, "November 22, 2026"),
        (D(2026, 11, 22), "month_abbr_day_year", "as_is", None, "Nov 22, 2026"),
        (D(2026, 11, 22), "day_month_abbr_year", "as_is", None, "22 Nov 2026"),
        (D(2026, 11, 22), "weekday_day_month_year", "as_is", None, "Sunday, 22 November 2026"),
        (D(2026, 11, 22), "dmy_slash", "as_is", None, "22/11/2026"),
        (D(2026, 11, 22), "dmy_dot_short_year", "as_is", None, "22.11.26"),
        (D(2026, 11, 22), "ymd_slash", "as_is", None, "2026/11/22"),
        (D(2026, 11, 22), "french", "as_is", None, "le 22 novembre 2026"),
        (D(2026, 11, 22), "german", "as_is", None, "22. November 2026"),
        (D(2026, 11, 22), "spanish", "as_is", None, "22 de noviembre de 2026"),
        # Spelled-month forms never pad the day; numeric forms pad both fields or neither.
        (D(2026, 11, 2), "day_month_year", "as_is", None, "2 November 2026"),
        (D(2026, 11, 2), "month_abbr_day_year", "as_is", None, "Nov 2, 2026"),
        (D(2026, 11, 2), "dmy_slash", "as_is", True, "02/11/2026"),
        (D(2026, 11, 2), "dmy_slash", "as_is", False, "2/11/2026"),
        (D(2026, 3, 2), "dmy_dot_short_year", "as_is", True, "02.03.26"),
        (D(2026, 3, 2), "dmy_dot_short_year", "as_is", False, "2.3.26"),
        (D(2026, 3, 2), "ymd_slash", "as_is", None, "2026/03/02"),
        (D(2026, 3, 2), "ymd_slash", "as_is", False, "2026/3/2"),
        # Two-digit years: 50-99 are 19xx, 00-49 are 20xx.
        (D(1950, 1, 1), "dmy_dot_short_year", "as_is", None, "01.01.50"),
        (D(2049, 12, 31), "dmy_dot_short_year", "as_is", None, "31.12.49"),
        (D(1999, 12, 31), "dmy_dot_short_year", "as_is", None, "31.12.99"),
        (D(2000, 1, 1), "dmy_dot_short_year", "as_is", None, "01.01.00"),
        (D(2005, 7, 9), "dmy_dot_short_year", "as_is", False, "9.7.05"),
        # True weekdays.
        (D(2000, 1, 1), "weekday_day_month_year", "as_is", None, "Saturday, 1 January 2000"),
        (D(1969, 7, 20), "weekday_day_month_year", "as_is", None, "Sunday, 20 July 1969"),
        (D(2024, 2, 29), "weekday_day_month_year", "as_is", None, "Thursday, 29 February 2024"),
        (D(2049, 12, 31), "weekday_day_month_year", "as_is", None, "Friday, 31 December 2049"),
        # Accents and the French "1er".
        (D(2026, 2, 14), "french", "as_is", None, "le 14 février 2026"),
        (D(1999, 8, 15), "french", "as_is", None, "le 15 août 1999"),
        (D(1999, 8, 15), "french", "upper", None, "LE 15 AOÛT 1999"),
        (D(2031, 12, 25), "french", "as_is", None, "le 25 décembre 2031"),
        (D(2026, 5, 1), "french", "as_is", None, "le 1er mai 2026"),
        (D(2026, 5, 1), "french", "title", None, "Le 1er Mai 2026"),
        (D(2026, 5, 1), "french", "upper", None, "LE 1ER MAI 2026"),
        (D(2026, 3, 5), "german", "as_is", None, "5. März 2026"),
        (D(2026, 3, 5), "german", "upper", None, "5. MÄRZ 2026"),
        (D(2026, 3, 5), "german", "lower", None, "5. märz 2026"),
        (D(2026, 10, 3), "german", "as_is", None, "3. Oktober 2026"),
        (D(2026, 3, 5), "spanish", "as_is", None, "5 de marzo de 2026"),
        (D(2026, 3, 5), "spanish", "title", None, "5 De Marzo De 2026"),
        (D(2026, 9, 30), "spanish", "upper", None, "30 DE SEPTIEMBRE DE 2026"),
        # Cases.
        (D(2026, 11, 22), "month_abbr_day_year", "lower", None, "nov 22, 2026"),
        (D(2026, 11, 22), "month_abbr_day_year", "upper", None, "NOV 22, 2026"),
        (D(2026, 11, 22), "month_abbr_day_year", "title", None, "Nov 22, 2026"),
        (D(2026, 11, 22), "weekday_day_month_year", "upper", None, "SUNDAY, 22 NOVEMBER 2026"),
        (D(2026, 11, 22), "french", "title", None, "Le 22 Novembre 2026"),
    ],
)
def test_format_date_hand_checked(d, form, case, zero_pad, expected):
    assert format_date(d, form, case, zero_pad=zero_pad) == expected


def test_weekday_is_true_weekday_over_random_dates():
    rng = random.Random(0)
    for _ in range(3000):
        d = FIRST_DATE + datetime.timedelta(days=rng.randrange(NUM_DAYS))
        name = format_date(d, "weekday_day_month_year").split(",")[0]
        assert name.lower() == _WEEKDAYS[d.weekday()]


@pytest.mark.parametrize("form", DATE_FORMS)
def test_case_variants_are_case_maps_of_as_written(form):
    rng = random.Random(1)
    for _ in range(50):
        d = FIRST_DATE + datetime.timedelta(days=rng.randrange(NUM_DAYS))
        base = format_date(d, form)
        assert format_date(d, form, "lower") == base.lower()
        assert format_date(d, form, "upper") == base.upper()
        title = format_date(d, form, "title")
        assert title.lower() == base.lower()
        for word in title.split(" "):
            assert word[:1] == word[:1].upper() and word[1:] == word[1:].lower()


def test_every_rendering_of_a_leap_year_is_short_readable_and_in_vocab():
    vocab = dates_vocab()
    longest = 0
    for d in every_day(2024):
        for form in DATE_FORMS:
            for case in CASES:
                for zero_pad in (True, False) if form in NUMERIC_FORMS else (None,):
                    text = format_date(d, form, case, zero_pad=zero_pad)
                    longest = max(longest, len(text))
                    assert UNK not in vocab.encode(text)
                    assert read_date(text)[0] == d
    assert longest == MAX_SOURCE_LENGTH <= 32
    assert len(D(2026, 11, 22).isoformat()) + 2 == MAX_TARGET_LENGTH


def test_calendar_has_36525_days():
    assert (LAST_DATE - FIRST_DATE).days + 1 == NUM_DAYS == 36525


# --------------------------------------------------------------------------------------------
# Dates: sampling, splits, batches


@pytest.fixture(scope="module")
def dates_task() -> DatesTask:
    return DatesTask(DatesConfig(seed=0))


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_targets_are_the_iso_date_the_source_names(dates_task, split):
    days = set(dates_task.split_dates(split))
    for source, target in dates_task.sample(2000, split, rng_seed=5):
        d = datetime.date.fromisoformat(target)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", target)
        assert d in days
        named, weekday = read_date(source)
        assert named == d, source
        if weekday is not None:
            assert weekday == _WEEKDAYS[d.weekday()], source
        assert len(source) <= MAX_SOURCE_LENGTH


def test_samples_cover_every_form_case_and_padding(dates_task):
    pairs = dates_task.sample(4000, "train", rng_seed=0)
    sources = [s for s, _ in pairs]
    assert any(s.isupper() for s in sources) and any(s.islower() for s in sources)
    assert any(re.match(r"[A-Z][a-z]+ \d", s) for s in sources)  # as written / title
    assert any(re.fullmatch(r"0\d/\d+/\d{4}", s) for s in sources)  # padded day
    assert any(re.fullmatch(r"[1-9]/\d+/\d{4}", s) for s in sources)  # unpadded day
    assert any(re.fullmatch(r"\d+\.\d+\.\d\d", s) for s in sources)
    assert any(s.lower().startswith("le ") for s in sources)
    assert any(" de " in s.lower() for s in sources)
    assert any(re.fullmatch(r"\d+\. \S+ \d{4}", s) for s in sources)
    assert any(re.fullmatch(r"[A-Za-z]+, .*", s) for s in sources)


def test_splits_partition_the_calendar(dates_task):
    train, valid, test = (set(dates_task.split_dates(s)) for s in ("train", "valid", "test"))
    assert not train & valid and not train & test and not valid & test
    assert len(train) + len(valid) + len(test) == NUM_DAYS
    assert len(valid) == len(test) == round(NUM_DAYS * 0.05)
    assert min(train | valid | test) == FIRST_DATE and max(train | valid | test) == LAST_DATE


def test_held_out_source_strings_never_appear_in_training(dates_task):
    train = {s for s, _ in dates_task.sample(30000, "train", rng_seed=0)}
    valid = {s for s, _ in dates_task.sample(5000, "valid", rng_seed=0)}
    test = {s for s, _ in dates_task.sample(5000, "test", rng_seed=0)}
    assert not train & valid and not train & test and not valid & test


def test_dates_are_deterministic_by_seed():
    a, b, c = DatesTask(DatesConfig(seed=3)), DatesTask(DatesConfig(seed=3)), DatesTask()
    assert a.split_dates("valid") == b.split_dates("valid") != c.split_dates("valid")
    assert a.sample(50, "test", rng_seed=2) == b.sample(50, "test", rng_seed=2)
    assert a.sample(50, "test", rng_seed=2) != a.sample(50, "test", rng_seed=3)
    assert a.sample(50, "train") != c.sample(50, "train")
    for x, y in zip(a.make_dataset(16, "valid"), b.make_dataset(16, "valid"), strict=True):
        assert torch.equal(x, y)


def test_make_dataset_is_first_batch_and_batches_continue(dates_task):
    first, second = dates_task.batches(8, "train", num_batches=2, rng_seed=4)
    same = dates_task.make_dataset(8, "train", rng_seed=4)
    for x, y in zip(first, same, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(first.tgt, second.tgt)
    assert list(dates_task.batches(8, num_batches=0)) == []


def test_dates_batch_layout(dates_task):
    pairs = dates_task.sample(64, "valid", rng_seed=1)
    src, src_lengths, tgt = dates_task.encode(pairs)
    assert src.dtype == src_lengths.dtype == tgt.dtype == torch.long
    assert src.shape == (64, max(len(s) for s, _ in pairs))
    assert tgt.shape == (64, MAX_TARGET_LENGTH)
    assert src_lengths.tolist() == [len(s) for s, _ in pairs]
    assert (tgt[:, 0] == BOS).all() and (tgt[:, -1] == EOS).all()
    positions = torch.arange(src.shape[1])
    assert ((src == PAD) == (positions >= src_lengths[:, None])).all()
    for row_src, row_tgt, (source, target) in zip(src, tgt, pairs, strict=True):
        assert dates_task.vocab.decode(row_src) == source
        assert dates_task.vocab.decode(row_tgt) == target


def test_config_subsets_restrict_sampling():
    only = DatesTask(DatesConfig(forms=["dmy_slash"], cases=("upper",), zero_pad_probability=1.0))
    assert only.config.forms == ("dmy_slash",)  # a list is stored as a tuple
    assert all(re.fullmatch(r"\d\d/\d\d/\d{4}", s) for s, _ in only.sample(200))
    never = DatesTask(DatesConfig(forms=("ymd_slash",), zero_pad_probability=0.0))
    assert not any(re.search(r"/0", s) for s, _ in never.sample(200))
    german = DatesTask(DatesConfig(forms=("german",), cases=("lower",)))
    assert all(re.fullmatch(r"\d+\. [a-zä]+ \d{4}", s) for s, _ in german.sample(200))


# --------------------------------------------------------------------------------------------
# Vocabulary


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=dates_vocab().alphabet, max_size=40), st.booleans(), st.booleans())
def test_vocab_round_trip_over_alphabet(text, bos, eos):
    vocab = dates_vocab()
    ids = vocab.encode(text, add_bos=bos, add_eos=eos)
    assert len(ids) == len(text) + bos + eos
    assert all(i >= 4 for i in ids[bos : len(ids) - eos])
    assert vocab.decode(ids) == text
    assert vocab.decode([*ids, EOS, 7, PAD]) == text  # stops at the first EOS


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=5))
def test_vocab_from_texts_round_trips_and_serialises(texts):
    vocab = CharVocab.from_texts(texts)
    assert list(vocab.alphabet) == sorted(set("".join(texts)))
    for text in texts:
        assert vocab.decode(vocab.encode(text)) == text
    restored = CharVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab and len(restored) == len(vocab)


def test_vocab_specials_and_unknowns():
    vocab = CharVocab("ab")
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert len(vocab) == 6 and "a" in vocab and "z" not in vocab
    assert vocab.encode("azb", add_bos=True, add_eos=True) == [BOS, 4, UNK, 5, EOS]
    assert vocab.decode([BOS, 4, UNK, 5, EOS, 4]) == "a\ufffdb"
    assert vocab.decode([BOS, 4, EOS, PAD], strip_special=False) == "<bos>a<eos><pad>"
    assert vocab.decode(torch.tensor([4, 5])) == "ab"
    assert CharVocab(["b", "a"]).encode("ab") == [5, 4]  # explicit order is kept


def test_pad_batch_and_encode_pairs():
    vocab = CharVocab("abc")
    ids, lengths = vocab.pad_batch([[4, 5, 6], [6], []])
    assert ids.tolist() == [[4, 5, 6], [6, PAD, PAD], [PAD, PAD, PAD]]
    assert lengths.tolist() == [3, 1, 0]
    assert ids.dtype == lengths.dtype == torch.long
    batch = encode_pairs(vocab, [("abc", "c"), ("a", "ba")])
    assert batch.src.tolist() == [[4, 5, 6], [4, PAD, PAD]]
    assert batch.src_lengths.tolist() == [3, 1]
    assert batch.tgt.tolist() == [[BOS, 6, EOS, PAD], [BOS, 5, 4, EOS]]


# --------------------------------------------------------------------------------------------
# Copy, reverse, sort


@pytest.mark.parametrize(
    ("kind", "rule"),
    [("copy", lambda s: s), ("reverse", lambda s: s[::-1]), ("sort", lambda s: "".join(sorted(s)))],
)
def test_sequence_targets(kind, rule):
    task = SequenceTask(SequenceTaskConfig(kind=kind, min_len=2, max_len=9, seed=1))
    pairs = task.sample(500, "train")
    for source, target in pairs:
        assert re.fullmatch(r"\d{2,9}", source)
        assert target == rule(source)
    assert {len(s) for s, _ in pairs} == set(range(2, 10))
    src, src_lengths, tgt = task.encode(pairs[:32])
    for b, (source, target) in enumerate(pairs[:32]):
        assert src_lengths[b] == len(source)
        assert task.vocab.decode(src[b]) == source
        assert task.vocab.decode(tgt[b]) == target
        assert tgt[b, 0] == BOS and tgt[b, len(target) + 1] == EOS
        assert (tgt[b, len(target) + 2 :] == PAD).all()
    assert task.config.kind == kind


def test_sequence_splits_are_separate_deterministic_streams():
    task = SequenceTask(SequenceTaskConfig(kind="sort", min_len=12, max_len=12))
    train, valid = task.sample(100, "train"), task.sample(100, "valid")
    assert train == task.sample(100, "train") and train != valid
    assert not {s for s, _ in train} & {s for s, _ in valid}  # 10**12 strings: no collisions
    first = next(iter(task.batches(10, "test", rng_seed=7)))
    assert torch.equal(first.src, task.make_dataset(10, "test", rng_seed=7).src)


# --------------------------------------------------------------------------------------------
# Character text


@pytest.fixture(scope="module")
def text_task() -> CharTextTask:
    return CharTextTask(block_size=32)


def test_text_default_corpus_loads_and_splits_by_position(text_task):
    text = python_docs_text()
    assert len(text) > 100_000 and "lambda" in text
    assert text_task.path is None
    train, valid = text_task.split_data("train"), text_task.split_data("valid")
    assert len(train) + len(valid) == len(text)
    assert len(valid) == int(len(text) * 0.1)
    assert text_task.vocab.decode(valid) == text[len(train) :]


def test_text_batches_are_shifted_windows(text_task):
    x, y = text_task.get_batch("train", 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    train_text = text_task.vocab.decode(text_task.split_data("train"))
    for row_x, row_y in zip(x, y, strict=True):
        window = text_task.vocab.decode(torch.cat([row_x[:1], row_y]))
        assert window in train_text
    again, _ = text_task.get_batch("train", 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_text_from_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("a" * 90 + "b" * 10, encoding="utf-8")
    task = CharTextTask(str(path), block_size=4)
    assert task.path == str(path) and task.vocab.alphabet == "ab"
    x, y = task.get_batch("valid", 16, torch.Generator().manual_seed(0))
    assert (x == task.vocab.encode("b")[0]).all() and (y == x[0, 0]).all()
    x, _ = task.get_batch("train", 16)
    assert (x == task.vocab.encode("a")[0]).all()


def test_text_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        CharTextTask(str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        CharTextTask(empty)
    with pytest.raises(ValueError, match="not a file"):
        CharTextTask(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("hello world", encoding="utf-8")
    with pytest.raises(ValueError, match=r"block_size must be < 1, .*short\.txt"):
        CharTextTask(short, block_size=8)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1") * 100)
    with pytest.raises(ValueError, match=re.escape(str(latin))):
        CharTextTask(latin, block_size=4)


# --------------------------------------------------------------------------------------------
# Digits


def test_digits_split_is_stratified_and_deterministic():
    pytest.importorskip("sklearn")
    from multihead.tasks import DigitsConfig, DigitsTask

    task = DigitsTask(DigitsConfig(seed=0, test_fraction=0.2))
    x_train, y_train = task.split("train")
    x_test, y_test = task.split("test")
    assert x_train.shape[1:] == x_test.shape[1:] == (1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.long
    assert len(y_train) + len(y_test) == 1797
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    train_counts, test_counts = torch.bincount(y_train), torch.bincount(y_test)
    ratio = test_counts.float() / (train_counts + test_counts).float()
    assert ((ratio - 0.2).abs() < 0.01).all()
    same = DigitsTask(DigitsConfig(seed=0)).split("test")
    other = DigitsTask(DigitsConfig(seed=1)).split("test")
    assert torch.equal(same[0], x_test) and not torch.equal(other[0], x_test)
    xb, yb = task.get_batch("train", 5, torch.Generator().manual_seed(0))
    assert xb.shape == (5, 1, 8, 8) and yb.shape == (5,)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    from multihead.tasks import load_digits_tensors

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'multihead[digits]'")):
        load_digits_tensors()


def test_tasks_package_imports_only_allowed_modules():
    # Static, so the check holds whatever the rest of multihead imports at start-up.
    for file in Path(tasks_pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root == "multihead":
                    assert name.startswith("multihead.tasks"), (file.name, name)
                assert root != "sklearn" or node not in tree.body, (file.name, "top-level sklearn")


# --------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", TASK_NAMES)
def test_get_task_builds_every_task(name):
    if name == "digits":
        pytest.importorskip("sklearn")
    kwargs = {"block_size": 16} if name == "text" else {}
    task = get_task(name, **kwargs)
    if name in ("copy", "reverse", "sort"):
        assert isinstance(task, SequenceTask) and task.config.kind == name
    elif name == "dates":
        assert isinstance(task, DatesTask)


# --------------------------------------------------------------------------------------------
# Every bad argument is rejected with an error that names it


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: format_date("2026-11-22", "dmy_slash"), TypeError, "d must be"),
        (lambda: format_date(D(2026, 1, 1), "iso"), ValueError, "form must be one of"),
        (lambda: format_date(D(2026, 1, 1), "german", "camel"), ValueError, "case must be"),
        (lambda: format_date(D(2026, 1, 1), "german", zero_pad=True), ValueError, "zero_pad"),
        (lambda: format_date(D(2026, 1, 1), "dmy_slash", zero_pad=1), TypeError, "zero_pad"),
        (lambda: format_date(D(1949, 12, 31), "dmy_dot_short_year"), ValueError, "got year 1949"),
        (lambda: DatesConfig(seed=-1), ValueError, "seed must be >= 0, got -1"),
        (lambda: DatesConfig(seed=True), TypeError, "seed must be an int"),
        (lambda: DatesConfig(heldout_fraction=0.0), ValueError, "heldout_fraction"),
        (lambda: DatesConfig(heldout_fraction=1.5), ValueError, r"heldout_fraction .* got 1\.5"),
        (lambda: DatesConfig(heldout_fraction=1e-6), ValueError, "heldout_fraction"),
        (lambda: DatesConfig(heldout_fraction="0.1"), TypeError, "heldout_fraction"),
        (lambda: DatesConfig(zero_pad_probability=2.0), ValueError, "zero_pad_probability"),
        (lambda: DatesConfig(forms=("nope",)), ValueError, r"forms .* \['nope'\]"),
        (lambda: DatesConfig(forms=()), ValueError, "forms must name"),
        (lambda: DatesConfig(forms="german"), TypeError, "forms"),
        (lambda: DatesConfig(forms=("german", "german")), ValueError, "forms must not repeat"),
        (lambda: DatesConfig(cases=("shout",)), ValueError, "cases"),
        (lambda: DatesConfig(0), TypeError, "positional"),
        (lambda: DatesTask({"seed": 0}), TypeError, "config must be a DatesConfig"),
        (lambda: DatesTask().sample(0), ValueError, "n must be >= 1, got 0"),
        (lambda: DatesTask().sample(2, "dev"), ValueError, "split must be one of .* 'dev'"),
        (lambda: DatesTask().sample(2, "train", rng_seed=-1), ValueError, "rng_seed"),
        (lambda: DatesTask().sample(2.0), TypeError, "n must be an int"),
        (lambda: DatesTask().batches(0), ValueError, "batch_size"),
        (lambda: DatesTask().batches(2, num_batches=-1), ValueError, "num_batches"),
        (lambda: DatesTask().batches(2, "dev"), ValueError, "split"),
        (lambda: DatesTask().encode([]), ValueError, "pairs"),
        (lambda: SequenceTaskConfig(kind="add"), ValueError, "kind must be one of"),
        (lambda: SequenceTaskConfig(min_len=0), ValueError, "min_len must be >= 1"),
        (lambda: SequenceTaskConfig(max_len=0), ValueError, "max_len must be >= 1"),
        (lambda: SequenceTaskConfig(min_len=5, max_len=3), ValueError, "min_len=5, max_len=3"),
        (lambda: SequenceTaskConfig(seed=-2), ValueError, "seed"),
        (lambda: SequenceTask(SequenceTaskConfig()).sample(3, "holdout"), ValueError, "split"),
        (lambda: SequenceTask(DatesConfig()), TypeError, "config must be a SequenceTaskConfig"),
        (lambda: CharVocab("aba"), ValueError, r"repeat characters, got repeats \['a'\]"),
        (lambda: CharVocab(["ab"]), ValueError, "single characters, got 'ab'"),
        (lambda: CharVocab(b"ab"), TypeError, "alphabet"),
        (lambda: CharVocab.from_texts("abc"), TypeError, "texts must be an iterable"),
        (lambda: CharVocab.from_texts(["a", 1]), TypeError, "texts must contain str"),
        (lambda: CharVocab("ab").encode(5), TypeError, "text must be str"),
        (lambda: CharVocab("ab").decode([4, 9]), ValueError, r"ids must be in \[0, 6\), got 9"),
        (lambda: CharVocab("ab").decode(torch.zeros(2, 2)), ValueError, "ids must be 1-D"),
        (lambda: CharVocab.from_dict({}), ValueError, "alphabet"),
        (lambda: CharVocab.from_dict("ab"), TypeError, "data must be a mapping"),
        (
            lambda: CharVocab.from_dict({"alphabet": "ab", "special_tokens": ["<pad>"]}),
            ValueError,
            "special_tokens",
        ),
        (lambda: CharVocab("ab").pad_batch([]), ValueError, "seqs must hold at least one"),
        (lambda: CharVocab("ab").pad_batch([[4, 99]]), ValueError, r"\[0, 6\), got 99"),
        (lambda: CharVocab("ab").pad_batch(torch.zeros(2, 2)), TypeError, "seqs"),
        (lambda: CharTextTask(block_size=0), ValueError, "block_size must be >= 1"),
        (lambda: CharTextTask(block_size=10**7), ValueError, "block_size must be <"),
        (lambda: CharTextTask(valid_fraction=1.0), ValueError, "valid_fraction"),
        (lambda: CharTextTask(path=3), TypeError, "path must be"),
        (lambda: get_task("nope"), ValueError, r"name must be one of .*'digits'.* 'nope'"),
        (lambda: get_task(3), TypeError, "name must be a str"),
        (lambda: get_task("copy", kind="sort"), ValueError, "kind is set by the task name"),
        (lambda: get_task("dates", bogus=1), TypeError, "bogus"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("test", 2), ValueError, "split must be one of .* 'test'"),
        (("train", 0), ValueError, "batch_size must be >= 1"),
        (("train", 2, "seed"), TypeError, "generator must be"),
    ],
)
def test_text_get_batch_rejects_bad_arguments(text_task, args, error, match):
    with pytest.raises(error, match=match):
        text_task.get_batch(*args)


def test_digits_config_rejects_bad_arguments():
    from multihead.tasks import DigitsConfig

    with pytest.raises(ValueError, match="test_fraction must be in"):
        DigitsConfig(test_fraction=0.0)
    with pytest.raises(ValueError, match="seed"):
        DigitsConfig(seed=-1)
