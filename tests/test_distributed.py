"""Data-parallel training: two CPU processes (gloo) must end with identical parameters."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from multihead.tasks import SequenceTask, SequenceTaskConfig
from multihead.train import TrainConfig, get_recipe, train
from multihead.train.distributed import DistInfo, cleanup_distributed, init_distributed
from multihead.train.recipes import Seq2SeqRecipe

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, port: int, out_dir: str) -> None:
    """One process of the job: what torchrun would start, with its environment."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two processes on a shared 2-core machine
    info = init_distributed("cpu")
    try:
        recipe = get_recipe("copy", d_model=16, layers=1, heads=2)
        assert isinstance(recipe, Seq2SeqRecipe)
        recipe.task = SequenceTask(SequenceTaskConfig(kind="copy", max_len=5))
        recipe.eval_size = 16
        # A different initialisation per rank: DDP must broadcast rank 0's weights.
        model = recipe.build_model(seed=100 + rank)
        config = TrainConfig(
            steps=4,
            batch_size=8,
            warmup=1,
            eval_every=2,
            log_every=1,
            device="cpu",
            progress=False,
            out_dir=out_dir,
        )
        result = train(model, recipe, config, dist_info=info)
        torch.save(
            {
                "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "first_loss": result.history[0]["loss"],
                "checkpoint": result.checkpoint,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        cleanup_distributed()


def test_two_processes_stay_identical(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for key, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][key], value), key
    # Each rank drew its own shard, so their first-step losses differ ...
    assert ranks[0]["first_loss"] != ranks[1]["first_loss"]
    # ... and only rank 0 wrote the checkpoint.
    assert ranks[0]["checkpoint"] is not None and ranks[1]["checkpoint"] is None
    assert (tmp_path / "checkpoint.pt").exists()


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") == DistInfo(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")
