"""Every ``multihead`` verb against hostile arguments and stdin (issue 12, items 5-12).

Each call must end with exit status 0, 1, 2 or 130, print at most one line on stderr when it
fails, never a traceback, and leave no partial files (``*.tmp``) or new empty folders behind.

The fuzz is table-driven over ``multihead.cli.COMMANDS`` and the options each verb declares,
so verbs added later are covered without editing this file. ``BASE_ARGS`` gives a verb the
arguments that keep a run tiny when a hostile value happens to be valid; a new verb whose
defaults are slow (training, big inputs) should get an entry there.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from multihead.cli import COMMANDS, build_parser, main
from multihead.commands._common import in_blocks
from multihead.train.checkpoint import save_checkpoint
from multihead.train.recipes import get_recipe
from multihead.train.rundir import LOCK_NAME

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY_TRAIN = ["--batch-size", "2", "--d-model", "8", "--layers", "1", "--heads", "1"]
NON_UTF8 = b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape")  # as Python decodes argv


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths among the hostile values (``-1``, ``nan``) land in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of untrained tiny models and files of every hostile kind."""
    root = tmp_path_factory.mktemp("fuzz")
    paths: dict[str, Path] = {}
    for task, kw in (("dates", {}), ("text", {"block_size": 8})):
        recipe = get_recipe(task, d_model=8, layers=1, **kw)
        paths[task] = save_checkpoint(
            root / f"{task}.pt",
            {"step": 0, "model": recipe.build_model().state_dict(), **recipe.checkpoint_meta()},
        )
    paths["file"] = root / "a_file.txt"
    paths["file"].write_text("not a folder\n")
    paths["dir"] = root / "a_dir"
    paths["dir"].mkdir()
    corrupted = bytearray(paths["dates"].read_bytes())
    corrupted[len(corrupted) // 2 :] = b"\0" * (len(corrupted) - len(corrupted) // 2)
    paths["corrupted"] = root / "corrupted.pt"
    paths["corrupted"].write_bytes(bytes(corrupted))
    paths["empty"] = root / "empty.pt"
    paths["empty"].write_bytes(b"")
    paths["non_utf8"] = root / "latin1.txt"
    paths["non_utf8"].write_bytes(b"caf\xe9\n" * 50)
    paths["unreadable"] = root / "unreadable.pt"
    paths["unreadable"].write_bytes(paths["dates"].read_bytes())
    paths["unreadable"].chmod(0)
    return paths


def hostile_values(action: argparse.Action, s: dict[str, Path]) -> list[str]:
    """Values for one option, by what it takes: numbers, paths or text (choices get text)."""
    text = ["", NON_UTF8, "x" * 10_000]
    kind = getattr(action.type, "__name__", "")
    if action.choices is not None:
        return text
    if kind in ("int", "float", "integer", "number"):
        return ["", "-1", "0", "nan", "1e400", "9" * 30]
    if kind == "Path" or action.dest in PATH_DESTS or action.metavar in PATH_METAVARS:
        return [
            "",
            str(s["root"] / "missing" / "thing"),
            str(s["dir"]),
            *(str(s[k]) for k in ("file", "corrupted", "empty", "non_utf8", "unreadable")),
            str(s["file"] / "under"),
        ]
    return [*text, "-1"]


PATH_DESTS = {"checkpoint", "out", "resume", "input", "data"}
PATH_METAVARS = {"FILE", "DIR", "CHECKPOINT", "PATH"}
# Verbs that read their input from stdin when given no arguments (design.md, batch commands).
STDIN_VERBS = {"translate", "classify", "recognize"}


def ascii_id(value: object) -> str:
    """Test ids in ASCII: pytest-xdist cannot send a report whose id holds a lone surrogate."""
    return ascii(value)[:40]


# Arguments that keep each verb's run tiny when a hostile value is valid. Later occurrences of
# an option override earlier ones, so the value under test is appended after these.
def base_args(verb: str, s: dict[str, Path], out: Path | str) -> list[str]:
    table = {
        "explain": [],
        "demo": ["--steps", "1", "--test-size", "2", "--no-progress", "--out", str(out)],
        "train": ["copy", "--steps", "1", *TINY_TRAIN, "--no-progress", "--out", str(out)],
        "translate": ["--checkpoint", str(s["dates"]), "22.11.26"],
        "generate": ["--checkpoint", str(s["text"]), "--max-new-tokens", "2"],
        "visualize": ["--checkpoint", str(s["dates"]), "--text", "1.2.3", "--out", str(out)],
        "bench": [
            *("--quick", "--lengths", "8", "--backends", "math", "--peers", "none"),
            *("--mode", "fwd", "--causal", "--repeat", "1"),
        ],
    }
    return table.get(verb, [])


def value_options(verb: str) -> list[argparse.Action]:
    """The verb's options that take a value (flags and --help excluded)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[verb]._actions if a.option_strings and a.nargs != 0]


def snapshot(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*")}


def call(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str]:
    """``main(argv)`` in-process with ``stdin``; returns (status, stderr)."""
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: --help or a usage error
            status = exc.code if isinstance(exc.code, int) else 0
    finally:
        sys.stdin = saved
    return status, capsys.readouterr().err


def check_outcome(
    argv: list[str], status: int, err: str, before: set[Path], roots: tuple[Path, ...]
) -> None:
    shown = " ".join(a[:40] for a in argv)
    assert status in (0, 1, 2, 130), f"{shown}: exit status {status}\n{err}"
    assert "Traceback" not in err, f"{shown}: traceback\n{err}"
    if status != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        # A batch verb that refused some inputs gives one line per refused input and a summary
        # (design.md, "Batch commands"); everything else gives exactly one line.
        if not (status == 1 and argv and argv[0] in STDIN_VERBS):
            assert len(lines) == 1, f"{shown}: {len(lines)} lines on stderr\n{err}"
        for line in lines:
            assert line.startswith("multihead"), f"{shown}: {line}"
            assert len(line) < 600, f"{shown}: a message of {len(line)} characters"
    after = snapshot(*roots)
    assert not [p for p in after if p.name.endswith(".tmp")], f"{shown}: temporary files left"
    if status != 0:
        assert after == before, f"{shown}: left {sorted(map(str, after - before))}"


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_hostile_arguments(
    verb: str,
    sandbox: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Drawing is the slow part of a run that a hostile value happens to allow; what is under
    # test is how the command ends, so pictures are written as a few placeholder bytes.
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", lambda self, f, **kw: f.write(b"fuzz"))
    # Likewise bench's reference matmul rate (a 2048 x 2048 product timed at every start).
    monkeypatch.setattr("multihead.bench.harness.matmul_gflops", lambda *a, **k: 1.0)
    s = {**sandbox, "root": tmp_path}
    root = sandbox["dir"].parent
    torch.set_num_threads(1)
    runs = 0
    for action in value_options(verb):
        option = max(action.option_strings, key=len)
        for value in hostile_values(action, s):
            out = tmp_path / f"out{runs}"
            runs += 1
            argv = [verb, *base_args(verb, s, out), f"{option}={value}"]
            before = snapshot(root, tmp_path)
            status, err = call(argv, capsys, stdin=NON_UTF8)
            check_outcome(argv, status, err, before, (root, tmp_path))
            if status != 0:
                assert not out.exists(), f"{argv}: created {out}"


@pytest.mark.parametrize("verb", sorted(STDIN_VERBS & set(COMMANDS)))
@pytest.mark.parametrize("stdin", ["", "\n\n", NON_UTF8, "x" * 10_000, "\0\0\0"], ids=ascii_id)
def test_hostile_stdin(
    verb: str,
    stdin: str,
    sandbox: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [verb, *base_args(verb, sandbox, tmp_path / "out")]
    if verb == "translate":
        argv = argv[:-1]  # read the dates from stdin
    roots = (sandbox["dir"].parent, tmp_path)
    before = snapshot(*roots)
    status, err = call(argv, capsys, stdin=stdin)
    check_outcome(argv, status, err, before, roots)


@pytest.mark.parametrize("value", ["", NON_UTF8, "\0", "-1"], ids=ascii_id)
@pytest.mark.parametrize(
    "argv",
    [["train"], ["translate", "--checkpoint", "DATES"], ["train", "copy", "--resume"]],
)
def test_hostile_positionals(
    argv: list[str], value: str, sandbox: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(sandbox["dates"]) if a == "DATES" else a for a in argv]
    roots = (sandbox["dir"].parent,)
    before = snapshot(*roots)
    status, err = call([*argv, value], capsys)
    check_outcome([*argv, value], status, err, before, roots)


# --- one test per item of the issue, each failing before its fix --------------------------


@pytest.mark.parametrize("verb", ["train", "demo", "visualize"])
@pytest.mark.parametrize("where", ["file", "under_file", "empty"])
def test_out_is_a_file_or_under_one(
    verb: str, where: str, sandbox: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = {"file": sandbox["file"], "under_file": sandbox["file"] / "sub", "empty": ""}[where]
    argv = [verb, *base_args(verb, sandbox, out)]
    status, err = call(argv, capsys)
    expected = "must name a folder" if where == "empty" else "a file, not a folder"
    assert status == 2 and expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("x", ["nan,1;2,3", "inf,1;2,3", "1,-inf;2,3"])
def test_explain_non_finite_input_is_refused(x: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = call(["explain", f"--x={x}"], capsys)
    assert status == 2 and "finite" in err and "disagrees" not in err, err


def test_explain_negative_digits(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = call(["explain", "--digits", "-3"], capsys)
    assert status == 2 and "--digits" in err and "[0, 15]" in err, err


def test_explain_json_into_a_closed_pipe(tmp_path: Path) -> None:
    """``multihead explain --json | head -c 1``: quiet, exit 1 (Python's code for EPIPE)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "multihead.cli", "explain", "--json", "--heads", "1", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before a byte is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["demo", "--target", "2"], "argument --target: must be a number in (0, 1], got 2"),
        (["generate", "--seed", "-1"], "argument --seed: must be an integer in [0, "),
        (["train", "copy", "--seed", "-1"], "argument --seed: must be an integer in [0, "),
        (["train", "copy", "--lr", "nan"], "argument --lr: must be a number in (0, 10], got nan"),
        (["generate", "--top-p", "0"], "argument --top-p: must be a number in (0, 1], got 0"),
    ],
)
def test_numeric_ranges_one_wording(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = call(argv, capsys)
    assert status == 2 and expected in err, err


@pytest.mark.parametrize("kind", ["corrupted", "empty"])
def test_corrupted_checkpoint_message(
    kind: str, sandbox: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["translate", "--checkpoint", str(sandbox[kind]), "1.2.3"],
        ["generate", "--checkpoint", str(sandbox[kind])],
        ["visualize", "--checkpoint", str(sandbox[kind])],
    ):
        status, err = call(argv, capsys)
        assert status == 2 and str(sandbox[kind]) in err, err
        assert "weights_only" not in err and "will likely succeed" not in err, err
        assert "demo --fresh" not in err, err  # a custom path: demo would not rewrite it


def test_pickled_objects_never_suggest_unsafe_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "objects.pt"
    # A plain pickle of an object: torch's refusal says retrying with weights_only=False
    # "will likely succeed" in its first line.
    path.write_bytes(pickle.dumps(argparse.Namespace(a=1), protocol=4))
    status, err = call(["translate", "--checkpoint", str(path), "1.2.3"], capsys)
    assert status == 2 and "weights_only" not in err and "likely succeed" not in err, err


def test_visualize_non_utf8_text_leaves_nothing(
    sandbox: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "viz"
    status, err = call(
        ["visualize", "--checkpoint", str(sandbox["dates"]), "--text", NON_UTF8, "--out", str(out)],
        capsys,
    )
    assert status == 2 and "UTF-8" in err and "set_text" not in err, err
    assert not out.exists()
    # The library refuses it too, before creating anything.
    from multihead.viz.visualize import visualize

    with pytest.raises(ValueError, match="UTF-8"):
        visualize(sandbox["dates"], text=NON_UTF8, out_dir=out)
    assert not out.exists()


def test_visualize_dollar_signs_are_drawn_literally(
    sandbox: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["visualize", "--checkpoint", str(sandbox["dates"]), "--text", r"$\frac$ 1"]
    status, err = call([*argv, "--out", str(tmp_path / "v")], capsys)
    assert status == 0, err


def test_long_inputs_are_shortened(
    sandbox: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    long = "1" * 10_000
    for argv in (
        ["translate", "--checkpoint", str(sandbox["dates"]), long],
        ["explain", f"--x={'a' * 10_000}"],
        ["train", long],
        ["bench", "--lengths", long + "x"],
    ):
        status, err = call(argv, capsys)
        # translate refuses the one input line (exit 1, design.md "Batch commands"); the other
        # verbs refuse the argument (exit 2). Either way the echo is shortened.
        expected = 1 if argv[0] == "translate" else 2
        assert status == expected and len(err) < 600, (argv[0], err[:300])
        assert "10,00" in err or "10000 characters" in err, (argv[0], err[:300])


def test_debug_shows_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTIHEAD_DEBUG", "1")
    with pytest.raises(ValueError, match="finite"):
        main(["explain", "--x=nan,1;2,3"])


def _slow_training(out: Path) -> subprocess.Popen[str]:
    """A training in a subprocess that runs until stopped, once it has written its lock."""
    argv = ["train", "copy", "--steps", "1000000", *TINY_TRAIN, "--eval-every", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "multihead.cli", *argv, "--threads", "1", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
        cwd=out.parent,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # eval lines ("step N: ...") mean it is training
        line = proc.stderr.readline()
        if line.startswith("step ") or not line:
            break
    assert proc.poll() is None, proc.stderr.read()
    return proc


def test_second_training_is_refused_then_sigint_mid_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One slow training in a subprocess: a second one into its folder fails at once naming
    its PID; then Ctrl-C stops it with 130, one last line, a checkpoint and no lock left."""
    out = tmp_path / "run"
    proc = _slow_training(out)
    try:
        status, err = call(
            ["train", "copy", "--steps", "1", *TINY_TRAIN, "--out", str(out)], capsys
        )
        assert status == 1, err
        assert f"PID {proc.pid}" in err and "in use" in err, err
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("multihead train: interrupted; continue with: multihead train"), err
    assert (out / "checkpoint.pt").exists()
    assert not list(out.glob("*.tmp")) and not (out / LOCK_NAME).exists()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


@pytest.mark.parametrize("flock", [True, False])
def test_stale_lock_of_a_killed_run_is_taken_over(
    flock: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run leaves its lock file (with its PID) behind; the next run takes it over.
    Without fcntl the PID decides: a live one still refuses."""
    import multihead.train.rundir as rundir

    if not flock:
        monkeypatch.setattr(rundir, "fcntl", None)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{_dead_pid()}\n")
    argv = ["train", "copy", "--steps", "1", *TINY_TRAIN, "--no-progress", "--out", str(out)]
    status, err = call(argv, capsys)
    assert status == 0, err
    assert not (out / LOCK_NAME).exists()
    if not flock:
        (out / LOCK_NAME).write_text(f"{os.getpid()}\n")  # alive: this very process
        status, err = call([*argv, "--steps", "2", "--resume"], capsys)
        assert status == 1 and f"PID {os.getpid()}" in err, err


@given(st.lists(st.integers(), max_size=40), st.integers(1, 12))
def test_in_blocks_keeps_order_and_fills_every_block_but_the_last(items, size):
    blocks = list(in_blocks(iter(items), size))
    assert [x for block in blocks for x in block] == items
    assert all(len(block) == size for block in blocks[:-1])
    assert all(1 <= len(block) <= size for block in blocks)


def test_in_blocks_reads_its_input_lazily():
    read = []

    def source():
        for i in range(10):
            read.append(i)
            yield i

    first = next(in_blocks(source(), 3))
    assert first == [0, 1, 2] and read == [0, 1, 2]  # a stream is never read ahead of need
