"""``multihead train text --context-parallel 2``: two processes, each holding half of every
sequence, train as one process does on the same data and seed.

The two ranks run the CLI in processes spawned by ``torch.multiprocessing`` with torchrun's
environment variables; the reference is the same command in this process without them.
Validation after every step compares the parameters, the train record the step losses.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from multihead.cli import main
from multihead.train.context_parallel import setup_context_parallel
from multihead.train.distributed import cleanup_distributed, init_distributed, wrap_model
from multihead.train.recipes import get_recipe

ARGS = ["train", "text", "--steps", "3", "--block-size", "16", "--batch-size", "4"]
ARGS += ["--eval-every", "1", "--d-model", "16", "--layers", "2", "--heads", "2"]
ARGS += ["--no-progress", "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gradient_error(context: int, positional: str) -> float:
    """Largest difference between the gradient DDP applies with context parallelism and one
    process's mean gradient over the data-parallel groups' batches."""
    info = init_distributed("cpu")
    recipe = get_recipe("text", d_model=16, layers=2, heads=2, block_size=16)
    recipe.model_config = replace(recipe.model_config, positional=positional)
    batches = [recipe.batch(4, seed) for seed in range(info.world_size // context)]
    reference = recipe.build_model(seed=0)
    for batch in batches:
        (recipe.loss(reference, batch, label_smoothing=0.1).loss / len(batches)).backward()
    model = recipe.build_model(seed=0)
    info = setup_context_parallel(model, recipe, info, context)
    ddp = wrap_model(model, info)  # kept alive: its hooks average the gradients in backward
    recipe.loss(ddp, batches[info.data_rank], label_smoothing=0.1).loss.backward()
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    error = max(float((p.grad - r.grad).abs().max()) for p, r in pairs)
    cleanup_distributed()
    return error


def _set_env(rank: int, world: int, port: int) -> None:
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world, "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()}, MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)


def _write(path: str, value: float) -> None:
    Path(path + ".tmp").write_text(repr(value))
    os.replace(path + ".tmp", path)


def _grad_rank(rank: int, world: int, port: int, out: str) -> None:
    _set_env(rank, world, port)
    _write(f"{out}.grad{rank}", _gradient_error(2, "alibi"))


def _rank(rank: int, port: int, cli_port: int, out: str) -> None:
    _set_env(rank, 2, port)
    _write(f"{out}.grad{rank}", _gradient_error(2, "sinusoidal"))
    os.environ["MASTER_PORT"] = str(cli_port)  # a fresh store for the CLI's process group
    code = main([*ARGS, "--context-parallel", "2", "--device", "cpu", "--out", out])
    if code != 0:
        raise SystemExit(code)


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] in ("train", "valid")]


def test_context_parallel_training_equals_one_process(tmp_path: Path, capsys) -> None:
    single, sharded = tmp_path / "single", tmp_path / "cp"
    assert main([*ARGS, "--device", "cpu", "--out", str(single)]) == 0
    mp.spawn(_rank, args=(_free_port(), _free_port(), str(sharded)), nprocs=2, join=True)
    for rank in range(2):  # the gradient DDP applies equals the single-process one
        assert float(Path(f"{sharded}.grad{rank}").read_text()) < 1e-5
    expected, got = _rows(single), _rows(sharded)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in expected]
    assert len([r for r in got if r["split"] == "valid"]) == 3
    for want, have in zip(expected, got, strict=True):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), (want, have)
        assert have["accuracy"] == want["accuracy"], (want, have)


def test_context_and_data_parallel_in_a_world_of_4(tmp_path: Path) -> None:
    """Two context groups of 2 ranks (ALiBi positions) on different batches: DDP applies the
    mean of the two batches' single-process gradients."""
    out = str(tmp_path / "world4")
    mp.spawn(_grad_rank, args=(4, _free_port(), out), nprocs=4, join=True)
    for rank in range(4):
        assert float(Path(f"{out}.grad{rank}").read_text()) < 1e-5, rank


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "copy", "--context-parallel", "2"], "text task"),
        (["train", "text", "--context-parallel", "2", "--block-size", "18"], "divisible by 4"),
        (["train", "text", "--context-parallel", "2", "--block-size", "16"], "must divide"),
    ],
)
def test_context_parallel_bad_input(args, needle, tmp_path: Path, capsys) -> None:
    code = main([*args, "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert "Traceback" not in err
