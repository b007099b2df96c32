"""The date translator: generator, reader/verifier, `multihead translate` and `multihead demo`.

The reader is checked against dates written by hand (tests/data/realistic_dates.tsv) with
their answers worked out by hand; the verifier is checked without any model, by feeding it
wrong answers; the command line is checked with a stand-in model whose answers come from that
hand-written table, and once with a real (untrained) model that must refuse, never be wrong.
"""

from __future__ import annotations

import datetime
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multihead.cli import main
from multihead.commands import _common
from multihead.tasks import FAMILIES, DatesConfig, DatesTask, dates_vocab, write_date
from multihead.tasks.date_reading import (
    MAX_INPUT_LENGTH,
    ORDER_MARKS,
    check_line,
    model_source,
    normalize,
    read_date,
    verify_answer,
)
from multihead.train import dates as train_dates
from multihead.train.checkpoint import find_checkpoint, user_data_dir
from multihead.train.dates import AMBIGUOUS, REFUSE, decode_with_confidence, translate_dates
from multihead.train.recipes import get_recipe

D = datetime.date
DATA = Path(__file__).parent / "data" / "realistic_dates.tsv"
TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--no-progress"]


def realistic_rows() -> list[tuple[str, str, str]]:
    lines = [ln.rstrip("\n") for ln in DATA.read_text("utf-8").splitlines(keepends=True)]
    rows = [tuple(ln.split("\t")) for ln in lines if ln and not ln.startswith("#")]
    assert rows[0] == ("family", "input", "expected")
    return rows[1:]  # type: ignore[return-value]


ROWS = realistic_rows()
EXPECTED = {text: expected for _, text, expected in ROWS}


def outcome(text: str, **kwargs: object) -> str:
    reading = read_date(text, **kwargs)  # type: ignore[arg-type]
    if reading.date is not None:
        return reading.date.isoformat()
    assert reading.error
    return AMBIGUOUS if reading.error.startswith("ambiguous") else REFUSE


# ------------------------------------------------------------------ the hand-written set


def test_realistic_set_is_large_and_varied() -> None:
    assert len(ROWS) >= 200
    assert len({family for family, _, _ in ROWS}) >= 25
    assert len({text for _, text, _ in ROWS}) == len(ROWS)


@pytest.mark.parametrize(("family", "text", "expected"), ROWS, ids=[r[1] for r in ROWS])
def test_reader_gives_the_hand_worked_answer(family: str, text: str, expected: str) -> None:
    assert outcome(text) == expected


# ------------------------------------------------------------------ the verifier, no model


def _wrong_candidates(d: D) -> list[str]:
    out = []
    for delta in (1, -1, 31, 365):
        other = d + datetime.timedelta(days=delta)
        if datetime.date(1000, 1, 1) <= other <= datetime.date(2999, 12, 31):
            out.append(other.isoformat())
    if d.day <= 12 and d.day != d.month:
        out.append(D(d.year, d.day, d.month).isoformat())  # day and month swapped
    if d.year + 1 <= 2999:
        out.append(f"{d.year + 1:04d}{d.isoformat()[4:]}")
    out += [d.isoformat()[:8] + "3" + d.isoformat()[9:], "2026-02-30", "nonsense", ""]
    return [c for c in out if c != d.isoformat()]


@pytest.mark.parametrize("text", [t for _, t, e in ROWS if e[0].isdigit()])
def test_verifier_refuses_every_wrong_answer(text: str) -> None:
    expected = D.fromisoformat(EXPECTED[text])
    reading = read_date(text)
    assert verify_answer(reading, expected.isoformat()) == expected
    for wrong in _wrong_candidates(expected):
        with pytest.raises(ValueError, match=r"answer|holds no date"):
            verify_answer(reading, wrong)


def test_verifier_takes_the_century_of_a_two_digit_year_from_the_pivot() -> None:
    # The model always answers in 1950-2049; --pivot moves the century, not the model.
    reading = read_date("22.11.26", pivot=1900)
    assert reading.date == D(1926, 11, 22) and reading.short_year
    assert verify_answer(reading, "2026-11-22") == D(1926, 11, 22)
    with pytest.raises(ValueError):
        verify_answer(reading, "2027-11-22")
    # A four-digit year must match exactly.
    with pytest.raises(ValueError):
        verify_answer(read_date("22.11.2026"), "1926-11-22")


def test_verifier_refuses_what_the_reader_refused() -> None:
    for text in ("03/04/2001", "hello", "31 February 2001"):
        with pytest.raises(ValueError):
            verify_answer(read_date(text), "2001-04-03")


# ------------------------------------------------------------------ ambiguity, pivot, lines


@pytest.mark.parametrize(
    ("text", "dmy", "mdy"),
    [
        ("03/04/2001", "2001-04-03", "2001-03-04"),
        ("1.2.03", "2003-02-01", "2003-01-02"),
        ("11/22/2026", "2026-11-22", "2026-11-22"),  # unambiguous: the order does not matter
        ("22/11/2026", "2026-11-22", "2026-11-22"),
        ("05/05/2005", "2005-05-05", "2005-05-05"),
    ],
)
def test_order_reads_ambiguous_dates(text: str, dmy: str, mdy: str) -> None:
    assert outcome(text, order="dmy") == dmy
    assert outcome(text, order="mdy") == mdy


def test_ambiguous_refusal_names_both_readings() -> None:
    error = read_date("03/04/2001").error
    assert error is not None
    assert "3 April 2001" in error and "March 4, 2001" in error and "--order" in error


@pytest.mark.parametrize(
    ("text", "pivot", "expected"),
    [("1/13/26", 1950, "2026-01-13"), ("1/13/26", 1900, "1926-01-13"),
     ("1/13/49", 1950, "2049-01-13"), ("1/13/50", 1950, "1950-01-13"),
     ("22 Nov '99", 2000, "2099-11-22"), ("22 Nov 2026", 1000, "2026-11-22")],
)  # fmt: skip
def test_pivot(text: str, pivot: int, expected: str) -> None:
    assert outcome(text, pivot=pivot) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("22 Nov\x002026", "control character U+0000"),
        ("22 Nov 2026\x1b[31m", "control character U+001B"),
        ("22 Nov 2026 \U0001f389", "symbol"),
        ("x" * (MAX_INPUT_LENGTH + 1), "over the limit of 64"),
        ("", "empty"),
        ("   ", "empty"),
        ("hello world", "not a date word"),
        ("31 February 2001", "no day 31 in February 2001"),
        ("2001-13-45", "no month 13"),
        ("22 November 3026", "outside 1000-2999"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(text: str, needle: str) -> None:
    reading = read_date(text)
    assert reading.date is None and reading.error is not None and needle in reading.error


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"[0-9./\- ]{1,14}", fullmatch=True))
def test_reader_never_raises_on_any_text(text: str) -> None:
    reading = read_date(text)
    assert (reading.date is None) != (reading.error is None)
    if reading.date is not None:
        assert verify_answer(reading, reading.date.isoformat()) == reading.date


def test_check_line_and_normalize() -> None:
    assert check_line("a" * MAX_INPUT_LENGTH) is None
    assert normalize("  LE 1ER  Mai 1999. ") == "le 1er mai 1999"
    assert normalize("1º de mayo") == "1o de mayo"  # NFKC: the ordinal indicator is an "o"
    assert model_source("03/04/2001", "mdy") == ORDER_MARKS["mdy"] + "03/04/2001"
    assert model_source("03/04/2001") == "03/04/2001"
    assert model_source("23/04/2001", "mdy") == "23/04/2001"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: read_date("1/2/03", order="ymd"), ValueError, "order must be one of"),
        (lambda: read_date("1/2/03", pivot=3000), ValueError, "pivot must be in"),
        (lambda: read_date("1/2/03", pivot=1950.0), TypeError, "pivot must be an int"),
        (lambda: write_date("2026-11-22", "iso"), TypeError, "d must be"),
        (lambda: write_date(D(2026, 1, 1), "klingon"), ValueError, "family must be one of"),
        (lambda: write_date(D(1949, 12, 31), "dmy_short"), ValueError, "got year 1949"),
        (lambda: DatesConfig(seed=-1), ValueError, "seed must be >= 0, got -1"),
        (lambda: DatesConfig(seed=True), TypeError, "seed must be an int"),
        (lambda: DatesConfig(heldout_fraction=0.0), ValueError, "heldout_fraction"),
        (lambda: DatesConfig(heldout_fraction="0.1"), TypeError, "heldout_fraction"),
        (lambda: DatesConfig(window_probability=2.0), ValueError, "window_probability"),
        (lambda: DatesConfig(families=("nope",)), ValueError, r"families .* \['nope'\]"),
        (lambda: DatesConfig(families=()), ValueError, "families must name"),
        (lambda: DatesConfig(families="fr"), TypeError, "families"),
        (lambda: DatesConfig(families=("fr", "fr")), ValueError, "must not repeat"),
        (lambda: DatesConfig(0), TypeError, "positional"),
        (lambda: DatesTask({"seed": 0}), TypeError, "config must be a DatesConfig"),
        (lambda: DatesTask().sample(0), ValueError, "n must be >= 1, got 0"),
        (lambda: DatesTask().sample(2, "dev"), ValueError, "split must be one of .* 'dev'"),
        (lambda: DatesTask().batches(0), ValueError, "batch_size"),
    ],
)
def test_bad_arguments_name_themselves(call, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------ the generator


@pytest.fixture(scope="module")
def task() -> DatesTask:
    return DatesTask(DatesConfig(seed=0))


def test_every_generated_sample_reads_back_to_its_target(task: DatesTask) -> None:
    # The reader is pinned by the hand-written set above; here it checks the generator.
    samples = task.sample_full(6000, "train", rng_seed=7)
    assert {s.family for s in samples} == set(FAMILIES)
    vocab = dates_vocab()
    for s in samples:
        assert len(s.text) <= MAX_INPUT_LENGTH
        reading = read_date(s.text, order=s.order)
        assert reading.date is not None and reading.date.isoformat() == s.target, s
        assert all(ch in vocab for ch in model_source(s.text, s.order)), s


def test_generator_covers_the_promised_variants(task: DatesTask) -> None:
    texts = [s.text.lower() for s in task.sample_full(8000, "train", rng_seed=3)]
    for pattern in [
        r"^\d{4}-\d\d-\d\dt\d\d:\d\d",  # ISO with a time
        r"^\d{8}$",
        r"\b\d{1,2}(st|nd|rd|th)\b",
        r"^the \d+(st|nd|rd|th) of ",
        r"\b1er\b",
        r"\b1º",
        r"\b\d{1,2}\. [a-zä]",
        r"'\d\d$",
        r"^(sunday|monday|tuesday|wednesday|thursday|friday|saturday|sun|mon|tue|wed|thu|fri|sat)",
        r"\b(janv|févr|mrt|okt|dez|mag|out)\b",
        r"\b1[0-4]\d\d\b",  # old four-digit years
        r"\b2[5-9]\d\d\b",
    ]:
        assert any(re.search(pattern, t) for t in texts), pattern
    assert any(t != t.lower() for t in (s.text for s in task.sample_full(200, "train")))


def test_held_out_days_never_appear_in_training(task: DatesTask) -> None:
    train, valid, test = (set(task.split_dates(s)) for s in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert len(train) + len(valid) + len(test) == 730485
    for split, days in (("valid", valid), ("test", test)):
        assert all(D.fromisoformat(s.target) in days for s in task.sample_full(500, split))


def test_balanced_samples_and_batches(task: DatesTask) -> None:
    samples = task.sample_full(40, "test", balanced=True)
    counts = {f: sum(s.family == f for s in samples) for f in FAMILIES}
    assert set(counts.values()) == {2, 3} and sum(counts.values()) == 40
    first, second = task.batches(8, "train", num_batches=2, rng_seed=4)
    assert first.src.shape[0] == 8 and not torch.equal(first.tgt, second.tgt)
    assert task.sample(3, "test", rng_seed=1) == task.sample(3, "test", rng_seed=1)


def test_ambiguous_samples_carry_their_order_mark(task: DatesTask) -> None:
    pairs = task.sample(3000, "train", rng_seed=11)
    marked = [(src, tgt) for src, tgt in pairs if src[0] in ORDER_MARKS.values()]
    assert marked
    for src, tgt in marked:
        order = "dmy" if src[0] == ORDER_MARKS["dmy"] else "mdy"
        assert outcome(src[1:], order=order) == tgt
        assert outcome(src[1:]) == AMBIGUOUS


def test_write_date_is_reproducible() -> None:
    d = D(2026, 11, 22)
    assert write_date(d, "iso") == ("2026-11-22", None)
    assert write_date(d, "fr", np.random.default_rng(5)) == write_date(d, "fr", 5)


# ------------------------------------------------------------------ model plumbing


@pytest.fixture(scope="module")
def tiny_model():  # type: ignore[no-untyped-def]
    recipe = get_recipe("dates", d_model=16, layers=1, heads=2)
    return recipe.build_model(seed=0).eval(), recipe.vocab


def test_confidence_is_the_least_step_probability(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model, vocab = tiny_model
    sources = ["22.11.26", "le 1er mai 1999"]
    got = decode_with_confidence(model, vocab, sources)
    for source, (answer, confidence) in zip(sources, got, strict=True):
        # Reference: plain step-by-step greedy decoding on the whole prefix, in float64.
        src = torch.tensor([vocab.encode(source)])
        memory = model.encode(src)
        tokens, prob = [1], 1.0
        with torch.no_grad():
            for _ in range(11):
                p = model.decode(torch.tensor([tokens]), memory)[0, -1].double().softmax(-1)
                p[0] = 0  # greedy never emits PAD
                nxt = int(p.argmax())
                prob = min(prob, float(model.decode(torch.tensor([tokens]), memory)[0, -1]
                                       .double().softmax(-1)[nxt]))  # fmt: skip
                tokens.append(nxt)
                if nxt == 2:
                    break
        assert answer == vocab.decode(tokens[1:])
        assert confidence == pytest.approx(prob, rel=1e-4)


def test_an_untrained_model_is_refused_never_wrong(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model, vocab = tiny_model
    texts = [text for _, text, _ in ROWS]
    for result, text in zip(translate_dates(model, vocab, texts), texts, strict=True):
        assert result.output is None or result.output == EXPECTED[text]
        assert result.output is not None or result.error


def oracle(model, vocab, sources, *, beam_size=1):  # type: ignore[no-untyped-def]
    """A stand-in model that answers from the hand-written table (and nonsense otherwise)."""
    by_source = {model_source(t): e for t, e in EXPECTED.items() if e[0].isdigit()}
    by_source[ORDER_MARKS["dmy"] + "03/04/2001"] = "2001-04-03"
    by_source[ORDER_MARKS["mdy"] + "03/04/2001"] = "2001-03-04"
    by_source["22.11.25"] = "2025-11-23"  # a wrong answer the verifier must stop
    return [(by_source.get(s, "1999-01-01"), 0.5 if s == "7. 8. 2008" else 0.99) for s in sources]


def test_translate_dates_with_a_stand_in_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_dates, "decode_with_confidence", oracle)
    texts = [text for _, text, _ in ROWS]
    for result in translate_dates(None, None, texts):  # type: ignore[arg-type]
        expected = EXPECTED[result.input]
        assert (result.output or (AMBIGUOUS if "ambiguous" in result.error else REFUSE)) == (
            expected
        )
    [wrong] = translate_dates(None, None, ["22.11.25"])  # type: ignore[arg-type]
    assert wrong.output is None and "disagrees" in (wrong.error or "")
    [low] = translate_dates(None, None, ["22 Nov 2026"], min_confidence=0.999)  # type: ignore[arg-type]
    assert low.output is None and "confidence 0.990" in (low.error or "")


# ------------------------------------------------------------------ multihead translate


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def feed(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dates")
    args = ["train", "dates", "--steps", "1", "--out", str(out), "--eval-every", "0", *TINY]
    assert main(args) == 0
    return out / "checkpoint.pt"


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> Path:
    monkeypatch.setattr(train_dates, "decode_with_confidence", oracle)
    return checkpoint


def test_translate_one_line_per_line_with_reasons(
    stand_in: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [b"Nov 22, 2026", b"", b"03/04/2001", b"hello", b"\xff\xfe 2026", b"x" * 500,
             b"le 1er mai 1999\r", b"22 Nov\x002026", b"   ", "15 août 2012 🎉".encode()]  # fmt: skip
    feed(monkeypatch, b"\n".join(lines) + b"\n")
    code, out, err = run_cli(["translate", "--checkpoint", str(stand_in)], capsys)
    assert code == 1
    assert out.split("\n")[:-1] == ["2026-11-22", "", "", "", "", "", "1999-05-01", "", "", ""]
    for number in (3, 4, 5, 6, 8, 10):
        assert f"line {number} " in err
    assert "line 2 " not in err and "line 9 " not in err  # blank lines pass through
    assert "x" * 100 not in err and "500 characters" in err  # the long line is shortened
    assert "March 4, 2001" in err and "not UTF-8" in err


def test_translate_json_and_exit_zero(
    stand_in: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(monkeypatch, b"22 de noviembre de 2026\n\n03/04/2001\n")
    code, out, _ = run_cli(
        ["translate", "--checkpoint", str(stand_in), "--json", "--order", "mdy"], capsys
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["output"] for r in records] == ["2026-11-22", None, "2001-03-04"]
    assert records[0]["confidence"] == pytest.approx(0.99) and records[0]["error"] is None
    assert set(records[1]) == {"input", "output", "error", "confidence"}


def test_translate_arguments_and_usage_errors(
    stand_in: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_cli(["translate", "--checkpoint", str(stand_in), "22.11.26"], capsys)
    assert (code, out) == (0, "2026-11-22\n")
    for bad in (["--pivot", "5"], ["--min-confidence", "2"], ["--beam", "0"], ["--threads", "0"]):
        code, out, err = run_cli(["translate", "--checkpoint", str(stand_in), *bad, "x"], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, bad
    feed(monkeypatch, b"")
    code, _, err = run_cli(["translate", "--checkpoint", str(stand_in)], capsys)
    assert code == 2 and "no input" in err


def test_translate_streams_in_batches(
    stand_in: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from multihead.commands import translate

    seen: list[int] = []
    real = translate.translate_dates
    monkeypatch.setattr(translate, "BATCH_LINES", 7)
    monkeypatch.setattr(
        translate,
        "translate_dates",
        lambda m, v, texts, **kw: seen.append(len(texts)) or real(m, v, texts, **kw),
    )
    feed(monkeypatch, b"2026-11-22\n" * 30)
    code, out, _ = run_cli(["translate", "--checkpoint", str(stand_in), "--no-progress"], capsys)
    assert code == 0 and out == "2026-11-22\n" * 30
    assert max(seen) == 7 and sum(seen) == 30


def test_corrupted_checkpoint_is_one_safe_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02not a checkpoint" * 10)
    code, _, err = run_cli(["translate", "--checkpoint", str(bad), "22.11.26"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "weights_only" not in err and "--fresh" not in err  # a custom path: no demo advice


def test_checkpoint_lookup_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MULTIHEAD_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as info:
        find_checkpoint()
    message = str(info.value)
    assert "runs/demo/checkpoint.pt" in message and str(tmp_path / "home") in message
    user = tmp_path / "home" / "checkpoint.pt"
    user.parent.mkdir()
    user.write_bytes(checkpoint.read_bytes())
    assert find_checkpoint() == user
    local = tmp_path / "runs" / "demo" / "checkpoint.pt"
    local.parent.mkdir(parents=True)
    local.write_bytes(checkpoint.read_bytes())
    assert find_checkpoint().resolve() == local.resolve()
    assert find_checkpoint(checkpoint) == checkpoint
    monkeypatch.delenv("MULTIHEAD_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_data_dir() == tmp_path / "xdg" / "multihead"


def test_threads_follow_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert _common.auto_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert _common.auto_threads() == 1


# ------------------------------------------------------------------ multihead demo


def test_demo_trains_reports_families_and_keeps_a_user_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MULTIHEAD_HOME", str(tmp_path / "home"))
    code, out, _ = run_cli(["demo", "--steps", "2", "--test-size", "32", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["trained"] and summary["steps"] == 2 and summary["threads"] >= 1
    assert set(summary["per_family"]) == set(FAMILIES)
    assert summary["test_total"] == 32 and summary["test_wrong"] == 0  # refused, never wrong
    assert (tmp_path / "home" / "checkpoint.pt").is_file()
    # From another folder, translate finds the user copy.
    monkeypatch.chdir(tmp_path / "home")
    code, _, err = run_cli(["translate", "22.11.26"], capsys)
    assert code in (0, 1) and "no checkpoint" not in err
    # A second run reuses the checkpoint; a corrupted one gives one line suggesting --fresh.
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["demo", "--test-size", "16"], capsys)
    assert code == 0 and "held-out test" in out and "using runs/demo" in out
    (tmp_path / "runs" / "demo" / "checkpoint.pt").write_bytes(b"\x00" * 100)
    code, _, err = run_cli(["demo"], capsys)
    assert code == 2 and "--fresh" in err and "weights_only" not in err
    for bad in (["--target", "2"], ["--test-size", "0"], ["--seed", "-1"]):
        code, _, err = run_cli(["demo", *bad], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, bad


def test_visualize_reads_a_date_as_the_translator_does(checkpoint: Path, tmp_path: Path) -> None:
    from multihead.viz.visualize import visualize

    result = visualize(checkpoint, text="Sunday,  22 NOVEMBER 2026", out_dir=tmp_path)
    assert result.text == "sunday, 22 november 2026"


def test_progress_bar_only_for_big_inputs(tmp_path: Path) -> None:
    from multihead.commands.translate import _progress

    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_bytes(b"2026-11-22\n" * 200_000)  # 2.2 MB
    small.write_bytes(b"2026-11-22\n" * 10)
    with big.open("rb") as f:
        bar = _progress(f, disabled=False)
        assert bar is not None and bar.total == big.stat().st_size
        bar.close()
        assert _progress(f, disabled=True) is None
    with small.open("rb") as f:
        assert _progress(f, disabled=False) is None
