import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

# Two cores in CI: keep each test process single-threaded so `pytest -n 2` does not oversubscribe.
torch.set_num_threads(1)

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_text_generate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """``multihead generate`` argv (JSON, greedy, 5 tokens, one thread) for a character LM
    trained two steps by ``multihead train text`` at a tiny size, shared by the tests that
    only need some checkpoint of that kind."""
    from multihead.cli import main

    out = tmp_path_factory.mktemp("text")
    tiny = ["--d-model", "32", "--layers", "1", "--heads", "2", "--batch-size", "4"]
    args = ["train", "text", "--steps", "2", "--block-size", "16", "--out", str(out)]
    assert main([*args, *tiny, "--no-progress"]) == 0
    base = ["generate", "--checkpoint", str(out / "checkpoint.pt"), "--json", "--top-k", "1"]
    return (*base, "--max-new-tokens", "5", "--threads", "1")
