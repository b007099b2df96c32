"""`multihead train / generate` end to end, on tiny settings (demo, translate: test_dates.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multihead.cli import main
from multihead.train import load_checkpoint

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


@pytest.fixture(scope="module")
def dates_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dates")
    assert (
        main(["train", "dates", "--steps", "1", "--out", str(out), "--eval-every", "0", *TINY]) == 0
    )
    return out / "checkpoint.pt"


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
