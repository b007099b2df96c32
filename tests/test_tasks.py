"""Tests for multihead.tasks: every built-in data set renders, splits and batches correctly."""

from __future__ import annotations

import ast
import json
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
    EOS,
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
    get_task,
    python_docs_text,
)

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
                    # multihead._files is a standard-library-only leaf (the atomic writer).
                    allowed = name.startswith("multihead.tasks") or name == "multihead._files"
                    assert allowed, (file.name, name)
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
