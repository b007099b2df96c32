"""`multihead bench`: end to end, its options and errors, the FLOP convention, the budgets."""

from __future__ import annotations

import json

import pytest
import torch

from multihead.bench import harness, suite
from multihead.cli import build_parser, main
from multihead.commands import bench as command
from multihead.functional import backend_names


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["bench", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_quick_end_to_end_writes_markdown_json_and_png(capsys, tmp_path):
    rc, out, _ = run_cli(capsys, "--quick", "--out", str(tmp_path))
    assert rc == 0
    md = (tmp_path / "bench.md").read_text()
    data = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    impls = {r["impl"] for r in data["results"]}
    assert {"sdpa", "math", "torch-sdpa", "naive"} <= impls
    assert set(backend_names()) <= impls  # every registered backend, approximate too
    assert {(r["mode"], r["causal"]) for r in data["results"]} == {
        (m, c) for m in ("fwd", "fwdbwd") for c in (False, True)
    }
    assert data["matmul_gflops"] > 0 and "3.0x" in data["flop_convention"]
    timed = [r for r in data["results"] if r["median_ms"] is not None]
    assert timed and all(r["gflops"] > 0 for r in timed)
    for text in (md, out):
        assert "| N \\ ms |" in text and "torch-sdpa" in text and "GFLOP/s" in text


def test_json_flag_and_unsupported_cases_are_noted(capsys):
    rc, out, _ = run_cli(
        capsys, "--quick", "--json", "--backends", "sdpa", "--peers", "none", "--mode", "fwd"
    )
    assert rc == 0
    data = json.loads(out)
    assert {r["impl"] for r in data["results"]} == {"sdpa"}
    assert {r["mode"] for r in data["results"]} == {"fwd"}
    if "lowrank" in backend_names():
        cfg = suite.BenchConfig.quick(backends=("lowrank",), peers=(), causal=(True,))
        (result, *_) = suite.run_suite(cfg, progress=False).results
        assert result.median_ms is None and result.note.startswith("not run:")


def test_help_mentions_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    parser = build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    options = [s for a in bench._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert len(options) >= 20
    description = command.__doc__ or ""
    for option in options:
        assert option in description, f"{option} is not explained in the module docstring"
        assert option in help_text
    assert "Example:" in help_text and "multihead bench --quick" in help_text


def test_every_option_reaches_its_config_field():
    argv = ["bench", "--lengths", "64:256", "--backends", "sdpa", "--peers", "none"]
    argv += ["--mode", "fwd", "--causal", "--window", "7", "--batch", "2", "--heads", "3"]
    argv += ["--head-dim", "5", "--dtype", "bfloat16", "--memory", "--max-memory-gb", "1.5"]
    argv += ["--case-budget", "0.25", "--repeat", "4", "--threads", "2"]
    config = command.build_config(build_parser().parse_args(argv))
    expected = suite.BenchConfig(
        lengths=(64, 128, 256),
        backends=("sdpa",),
        peers=(),
        modes=("fwd",),
        causal=(True,),
        window=7,
        batch=2,
        heads=3,
        head_dim=5,
        dtype="bfloat16",
        memory=True,
        max_memory_gb=1.5,
        case_budget_s=0.25,
        repeat=4,
        threads=2,
    )
    assert config == expected
    # Options left out keep the base config's values (--quick's here).
    quick = command.build_config(build_parser().parse_args(["bench", "--quick"]))
    assert quick == suite.BenchConfig.quick()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lengths", "-5"], "--lengths must be positive integers, got '-5'"),
        (["--lengths", "0"], "--lengths must be positive integers"),
        (["--lengths", "512:256"], "A <= B"),
        (["--backends", "sdpa,warp-drive"], "unknown: warp-drive"),
        (["--peers", "xformers"], "--peers must be among"),
        (["--mode", "sideways"], "--mode must be fwd, fwdbwd or both"),
        (["--batch", "0"], "argument --batch: must be an integer in [1, "),
        (["--dtype", "int8"], "--dtype must be one of"),
        (["--case-budget", "0"], "argument --case-budget: must be a number in (0, 3600], got 0"),
    ],
)
def test_bad_options_exit_2_with_one_line(capsys, argv, expected):
    rc, out, err = run_cli(capsys, "--quick", *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("multihead bench: error: ")
    assert expected in lines[0]


def test_flop_convention():
    b, h, n, d = 2, 8, 1024, 64
    fwd = harness.attention_flops(b, h, n, n, d, causal=False, backward=False)
    assert fwd == 4 * b * h * n * n * d  # QK^T and PV: 2 FLOPs per multiply-add each
    assert harness.attention_flops(b, h, n, n, d, causal=True, backward=False) == fwd / 2
    assert harness.attention_flops(b, h, n, n, d, causal=False, backward=True) == 3 * fwd
    assert harness.attention_flops(b, h, n, 2 * n, d, causal=False, backward=False) == 2 * fwd
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        harness.attention_flops(1, 1, 1, 1, 0, causal=False, backward=False)


def test_parse_lengths():
    assert command.parse_lengths(["256:2048"]) == (256, 512, 1024, 2048)
    assert command.parse_lengths(["100,300", "200"]) == (100, 300, 200)
    assert suite.BenchConfig(lengths=(512, 256, 512)).lengths == (256, 512)
    assert suite.BenchConfig().lengths == tuple(2**p for p in range(8, 17))


def test_memory_prediction_and_budget_skip():
    kw = dict(batch=1, heads=8, head_dim=64)
    naive = suite.predicted_bytes("naive", 4096, mode="fwdbwd", causal=False, **kw)
    quadratic = 8 * 4096**2 * 4 * 3  # B·H·N²·4 bytes x3 with backward
    assert quadratic <= naive < 1.1 * quadratic  # plus O(N·D) for q, k, v and gradients
    linear = 8 * 4096 * 64 * 4 * 12  # q, k, v, output, their gradients and saved state
    assert suite.predicted_bytes("torch-sdpa", 4096, mode="fwdbwd", causal=False, **kw) == linear
    cfg = suite.BenchConfig.quick(
        lengths=(512,), backends=("sdpa",), modes=("fwd",), causal=(False,), max_memory_gb=2**-10
    )  # 1 MiB: naive's 4 MiB of scores do not fit, sdpa's 256 KiB do
    results = {r.impl: r for r in suite.run_suite(cfg, progress=False).results}
    assert results["naive"].median_ms is None and "memory budget" in results["naive"].note
    assert results["sdpa"].median_ms is not None and results["sdpa"].note == ""


def test_time_budget_skips_long_cases_with_a_note():
    cfg = suite.BenchConfig.quick(
        lengths=(32, 8192),
        backends=(),
        peers=("naive",),
        modes=("fwd",),
        causal=(False,),
        case_budget_s=0.02,
    )
    small, big = suite.run_suite(cfg, progress=False).results
    assert small.median_ms is not None
    assert big.median_ms is None and "case budget" in big.note


def test_memory_is_measured_in_a_child_process(capsys):
    # A big peak in this (parent) process must not leak into the child's measurement: Linux
    # carries ru_maxrss over exec, which once made every case read as the parent's peak.
    big = torch.ones(150_000_000)  # 600 MB
    del big
    rc, out, _ = run_cli(
        capsys,
        "--quick",
        "--json",
        "--memory",
        "--backends",
        "sdpa",
        "--peers",
        "none",
        "--mode",
        "fwd",
        "--no-causal",
        "--lengths",
        "64",
    )
    assert rc == 0
    (result,) = json.loads(out)["results"]
    assert result["peak_mib"] is not None and 0 <= result["peak_mib"] < 300


def test_timing_helpers():
    t = harness.time_within(lambda: None, budget_s=1.0, max_repeat=4)
    assert t.repeat == 4 and t.min_s <= t.median_s
    calls = []
    slow = harness.time_within(lambda: calls.append(1), budget_s=0.0, max_repeat=5)
    assert slow.repeat == 1 and len(calls) == 1  # the warm-up spent the budget: it is the time
    both = harness.time_interleaved({"a": lambda: None, "b": lambda: None}, repeat=3)
    assert set(both) == {"a", "b"} and both["b"].repeat == 3
