"""`multihead demo / train / translate / generate` end to end, on tiny settings."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from multihead.cli import main
from multihead.train import load_checkpoint, read_metrics

MULTIHEAD = Path(sys.executable).with_name("multihead")
TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--no-progress"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text")
    code = main(["train", "text", "--steps", "2", "--block-size", "16", "--out", str(out), *TINY])
    assert code == 0
    return out / "checkpoint.pt"


# ------------------------------------------------------------------ demo


def test_demo_trains_then_reuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out (runs/demo) lands in the temporary folder
    code, out, _ = run_cli(["demo", "--steps", "2", "--test-size", "22", "--json"], capsys)
    assert code == 0
    first = json.loads(out)
    assert first["trained"] is True and first["steps"] == 2
    assert first["test_total"] == 22 and 0.0 <= first["test_exact_match"] <= 1.0
    assert set(first["per_form"]) and first["tokens_per_s"] > 0
    demo = tmp_path / "runs" / "demo"
    for name in ("checkpoint.pt", "metrics.jsonl", "loss.png", "attention.png"):
        assert (demo / name).stat().st_size > 0, name
    assert any(r["split"] == "valid" for r in read_metrics(demo / "metrics.jsonl"))

    code, out, _ = run_cli(["demo", "--test-size", "11", "--json"], capsys)
    second = json.loads(out)
    assert code == 0 and second["trained"] is False and second["steps"] == 2
    assert load_checkpoint(demo / "checkpoint.pt")["step"] == 2  # reused, not retrained

    # More steps than the checkpoint ran and no target reached: an unfinished run, continued.
    code, out, _ = run_cli(["demo", "--steps", "3", "--test-size", "11", "--json"], capsys)
    assert code == 0 and json.loads(out)["trained"] is True
    assert load_checkpoint(demo / "checkpoint.pt")["step"] == 3

    code, out, _ = run_cli(["demo", "--steps", "1", "--fresh", "--test-size", "11"], capsys)
    assert code == 0 and "held-out test" in out
    assert load_checkpoint(demo / "checkpoint.pt")["step"] == 1


def test_demo_with_corrupted_checkpoint_suggests_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 100)
    code, _, err = run_cli(["demo", "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err)
    assert "--fresh" in err


# ------------------------------------------------------------------ train


def test_train_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "reverse", "--out", str(tmp_path), "--batch-size", "8", *TINY, "--json"]
    code, out, _ = run_cli([*args, "--steps", "3"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["step"] == 3 and summary["task"] == "reverse"
    assert (tmp_path / "loss.png").exists() and (tmp_path / "metrics.jsonl").exists()
    code, out, _ = run_cli([*args, "--steps", "5", "--resume"], capsys)
    assert code == 0 and json.loads(out)["start_step"] == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5
    assert load_checkpoint(tmp_path / "checkpoint.prev.pt")["step"] == 3
    code, _, err = run_cli([*args, "--resume"], capsys)  # already at its last step
    assert_one_line_error(code, err)
    assert "--steps" in err


def test_resume_text_keeps_its_block_size(
    text_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resume = ["--resume", str(text_checkpoint), "--out", str(tmp_path), "--steps", "3"]
    code, out, _ = run_cli(["train", "text", *resume, "--json", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["step"] == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["task_config"]["block_size"] == 16


@pytest.mark.parametrize("task", ["digits", "dates"])
def test_train_other_tasks(task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        ["train", task, "--steps", "1", "--batch-size", "4", "--out", str(tmp_path), *TINY,
         "--eval-every", "0", "--bf16"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "validation" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "poetry"], "dates, copy, reverse, sort, text, digits"),
        (["train", "copy", "--steps", "0"], "steps"),
        (["train", "copy", "--resume", "/no/such/checkpoint.pt"], "no checkpoint"),
    ],
)
def test_train_bad_input(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([*args, "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err)
    assert needle in err


# ------------------------------------------------------------------ translate


@pytest.fixture(scope="module")
def dates_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dates")
    assert (
        main(["train", "dates", "--steps", "1", "--out", str(out), "--eval-every", "0", *TINY]) == 0
    )
    return out / "checkpoint.pt"


def test_translate_reads_stdin_and_writes_one_line_per_input(
    dates_checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A one-step model cannot translate yet; stand in for the model to test the plumbing.
    import multihead.commands.translate as translate

    answers = {"Nov 22, 2026": "2026-11-22", "le 1er mai 1999": "1999-05-01"}
    monkeypatch.setattr(
        translate, "translate_texts", lambda model, vocab, texts, **kw: [answers[t] for t in texts]
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("Nov 22, 2026\n  le 1er mai 1999  \n"))
    code, out, _ = run_cli(["translate", "--checkpoint", str(dates_checkpoint)], capsys)
    assert code == 0 and out.splitlines() == ["2026-11-22", "1999-05-01"]
    code, out, _ = run_cli(
        ["translate", "--checkpoint", str(dates_checkpoint), "--json", "Nov 22, 2026"], capsys
    )
    assert code == 0 and json.loads(out) == {"input": "Nov 22, 2026", "output": "2026-11-22"}


def test_translate_runs_the_real_model(
    dates_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An untrained model answers nonsense; the command must then refuse, never crash.
    for beam in ("1", "3"):
        code, out, err = run_cli(
            ["translate", "--checkpoint", str(dates_checkpoint), "--beam", beam, "22.11.26"],
            capsys,
        )
        if code == 0:
            assert len(out.splitlines()) == 1
        else:
            assert_one_line_error(code, err)


@pytest.mark.parametrize(
    ("stdin", "needle"),
    [
        ("Nov 22, 2026\n\n", "line 2 is empty"),
        ("hello world\n", "no digits"),
        ("<html>1</html>\n", "appear in no date form"),
        ("", "no input"),
    ],
)
def test_translate_refuses_non_dates(
    stdin: str,
    needle: str,
    dates_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = run_cli(["translate", "--checkpoint", str(dates_checkpoint)], capsys)
    assert_one_line_error(code, err)
    assert needle in err and out == ""


def test_translate_without_checkpoint_points_to_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["translate", "Nov 22, 2026"], capsys)
    assert_one_line_error(code, err)
    assert "multihead demo" in err


def test_translate_refuses_a_language_model(
    text_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["translate", "--checkpoint", str(text_checkpoint), "1.2.26"], capsys)
    assert_one_line_error(code, err)


# ------------------------------------------------------------------ generate


def test_generate_is_reproducible(
    text_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--checkpoint", str(text_checkpoint), "--prompt", "The ", "--json"]
    args += ["--max-new-tokens", "20", "--top-k", "5", "--temperature", "0.8", "--seed", "3"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    first = json.loads(out)
    assert first["prompt"] == "The " and len(first["text"]) == 20  # longer than the 16 context
    code, out, _ = run_cli(args, capsys)
    assert json.loads(out) == first
    code, out, _ = run_cli([*args[:-1], "4", "--top-p", "0.9"], capsys)
    assert code == 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--prompt", "\u2603"], "never saw"),
        (["--prompt", ""], "empty"),
        (["--temperature", "0"], "temperature"),
        (["--top-p", "1.5"], "top-p"),
    ],
)
def test_generate_bad_input(
    extra: list[str], needle: str, text_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["generate", "--checkpoint", str(text_checkpoint), *extra], capsys)
    assert_one_line_error(code, err)
    assert needle in err


def test_generate_without_checkpoint_or_with_wrong_model(
    tmp_path: Path, dates_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["generate", "--checkpoint", str(tmp_path / "x.pt")], capsys)
    assert_one_line_error(code, err)
    assert "multihead train text" in err
    code, _, err = run_cli(["generate", "--checkpoint", str(dates_checkpoint)], capsys)
    assert_one_line_error(code, err)


# ------------------------------------------------------------------ the console script


def test_console_script_help() -> None:
    done = subprocess.run(
        [str(MULTIHEAD), "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Example:" in done.stdout and "--fresh" in done.stdout


@pytest.mark.parametrize("command", ["demo", "train", "translate", "generate"])
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "Example:" in capsys.readouterr().out
