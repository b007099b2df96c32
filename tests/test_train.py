"""The training loop, schedules, optimiser groups, checkpoints, recipes and plots."""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.tasks import SequenceTask, SequenceTaskConfig
from multihead.train import (
    CheckpointError,
    TrainConfig,
    cosine_factor,
    get_recipe,
    inverse_sqrt_factor,
    load_checkpoint,
    load_trained,
    make_optimizer,
    make_scheduler,
    param_groups,
    read_metrics,
    save_checkpoint,
    train,
)
from multihead.train.checkpoint import previous_path
from multihead.train.plots import plot_cross_attention, plot_loss_curve
from multihead.train.recipes import Seq2SeqRecipe

# ------------------------------------------------------------------ helpers


def tiny_copy_recipe(*, dropout: float = 0.0, max_len: int = 5) -> Seq2SeqRecipe:
    """A copy task of short strings and a model small enough for a few CPU steps a second."""
    recipe = get_recipe("copy", d_model=16, layers=1, heads=2)
    assert isinstance(recipe, Seq2SeqRecipe)
    recipe.task = SequenceTask(SequenceTaskConfig(kind="copy", min_len=1, max_len=max_len))
    recipe.max_output_len = max_len + 1
    recipe.eval_size = 64
    recipe.model_config = replace(recipe.model_config, dropout=dropout)
    return recipe


def tiny_config(**kw: object) -> TrainConfig:
    base = {
        "steps": 6,
        "batch_size": 8,
        "warmup": 2,
        "eval_every": 0,
        "log_every": 2,
        "progress": False,
        "device": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ schedules and groups


@pytest.mark.parametrize(
    ("step", "warmup", "expected"),
    [
        (0, 4, 0.25),
        (1, 4, 0.5),
        (3, 4, 1.0),
        (15, 4, 0.5),
        (99, 4, math.sqrt(4 / 100)),
        (7, 0, 1.0),
    ],
)
def test_inverse_sqrt_matches_closed_form(step: int, warmup: int, expected: float) -> None:
    assert inverse_sqrt_factor(step, warmup=warmup) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 10),  # warm-up: s / w with s = step + 1
        (9, 1.0),  # end of warm-up
        (10, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 1 / 90))),
        (54, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90))),
        (99, 0.1),  # the floor at the last step
        (500, 0.1),  # and beyond
    ],
)
def test_cosine_matches_closed_form(step: int, expected: float) -> None:
    got = cosine_factor(step, warmup=10, total_steps=100, min_ratio=0.1)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine"])
def test_scheduler_applies_factor_to_lr(schedule: str) -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=2.0)
    sched = make_scheduler(opt, schedule=schedule, warmup=3, total_steps=10)  # type: ignore[arg-type]
    factor = (
        (lambda s: inverse_sqrt_factor(s, warmup=3))
        if schedule == "inverse_sqrt"
        else (lambda s: cosine_factor(s, warmup=3, total_steps=10))
    )
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * factor(step))
        opt.step()
        sched.step()


def test_bad_schedule_names_the_argument() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="schedule"):
        make_scheduler(opt, schedule="linear", warmup=1, total_steps=2)  # type: ignore[arg-type]


def test_param_groups_skip_decay_on_biases_norms_and_embeddings() -> None:
    model = DecoderLM(TransformerConfig(vocab_size=11, d_model=16, num_heads=2, d_ff=32))
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    undecayed = {id(p) for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert not decayed & undecayed
    # every trainable tensor once, the tied embedding/output matrix included
    assert decayed | undecayed == {id(p) for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm)):
            assert all(id(p) in undecayed for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert id(p) in undecayed
    assert all(p.dim() >= 2 for p in decay["params"])
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(TypeError, match="steps"):
        TrainConfig(steps=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"stepz": 3})
    cfg = TrainConfig(steps=7, clip_grad_norm=None, target=0.5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    recipe = tiny_copy_recipe()
    model = recipe.build_model(seed=0)
    result = train(model, recipe, tiny_config(steps=3, out_dir=str(tmp_path)))
    path = Path(result.checkpoint or "")
    raw = torch.load(path, weights_only=True)  # plain values only: the safe loader accepts it
    assert raw["step"] == 3
    assert TrainConfig.from_dict(raw["train_config"]).steps == 3
    assert raw["task"] == "copy" and raw["model_kind"] == "seq2seq"
    trained = load_trained(path)
    assert trained.vocab == recipe.vocab and trained.step == 3
    for key, value in model.state_dict().items():
        assert torch.equal(trained.model.state_dict()[key], value)
    src = torch.randint(4, len(recipe.vocab), (2, 5))
    tgt = torch.randint(4, len(recipe.vocab), (2, 3))
    model.eval()
    torch.testing.assert_close(trained.model(src, tgt), model(src, tgt), rtol=0, atol=0)


def test_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(3)})
    save_checkpoint(path, {"step": 2, "w": torch.ones(3)})
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(previous_path(path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.prev.pt", "ckpt.pt"]


def test_failed_write_leaves_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def broken_save(obj: object, f: io.BufferedWriter) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary files left


def test_checkpoint_rejects_values_unsafe_to_load(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path / "c.pt", {"config": TrainConfig()})


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "foreign"])
def test_damaged_checkpoint_raises_checkpoint_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4096.0)})
    save_checkpoint(path, {"step": 2, "w": torch.arange(4096.0) + 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        middle = bytearray(data)
        for i in range(len(data) // 2, len(data) // 2 + 16):
            middle[i] ^= 0xFF
        path.write_bytes(bytes(middle))
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"step": 3}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert isinstance(info.value, ValueError)
    assert "checkpoint.prev.pt" in message  # points the user to the intact previous one
    assert load_checkpoint(previous_path(path))["step"] == 1


def test_missing_checkpoint_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


# ------------------------------------------------------------------ the loop


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """N steps == N/2 steps + resume to N, bit for bit, with dropout on."""
    recipe = tiny_copy_recipe(dropout=0.2)
    full = recipe.build_model(seed=0)
    train(full, recipe, tiny_config(steps=8))

    first = recipe.build_model(seed=0)
    half = train(first, recipe, tiny_config(steps=4, out_dir=str(tmp_path)))
    assert half.step == 4
    second = recipe.build_model(seed=123)  # different init: everything must come from the file
    resumed = train(
        second, recipe, tiny_config(steps=8, out_dir=str(tmp_path)), resume_from=half.checkpoint
    )
    assert resumed.start_step == 4 and resumed.step == 8
    for key, value in params_of(full).items():
        assert torch.equal(params_of(second)[key], value), key
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [2, 4, 6, 8]  # one history, continued


class InterruptAt:
    """Wraps a recipe so that drawing the batch of step ``at`` raises KeyboardInterrupt."""

    def __init__(self, recipe: Seq2SeqRecipe, at: int) -> None:
        self.recipe, self.at, self.calls = recipe, at, 0
        self.name, self.metric = recipe.name, recipe.metric
        self.higher_is_better = recipe.higher_is_better

    def batch(self, batch_size: int, rng_seed: int) -> object:
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.calls += 1
        return self.recipe.batch(batch_size, rng_seed)

    def __getattr__(self, name: str) -> object:
        return getattr(self.recipe, name)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    recipe = tiny_copy_recipe(dropout=0.1)
    config = tiny_config(steps=7, schedule="cosine", out_dir=str(tmp_path))
    full = recipe.build_model(seed=0)
    train(full, recipe, replace(config, out_dir=None))

    interrupted = recipe.build_model(seed=0)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, InterruptAt(recipe, 3), config)  # type: ignore[arg-type]
    ckpt = tmp_path / "checkpoint.pt"
    assert load_checkpoint(ckpt)["step"] == 3
    resumed = recipe.build_model(seed=5)
    train(resumed, recipe, config, resume_from=ckpt)
    for key, value in params_of(full).items():
        assert torch.equal(params_of(resumed)[key], value), key


def test_short_training_learns_copy(tmp_path: Path) -> None:
    recipe = tiny_copy_recipe(max_len=4)
    recipe.model_config = replace(recipe.model_config, d_model=32, d_ff=64)
    model = recipe.build_model(seed=0)
    before = recipe.evaluate(model, torch.device("cpu"))
    config = tiny_config(
        steps=160, batch_size=32, lr=3e-3, warmup=10, eval_every=40, target=0.95,
        label_smoothing=0.0, out_dir=str(tmp_path),
    )  # fmt: skip
    result = train(model, recipe, config)
    assert result.metrics["exact_match"] >= 0.8 > before["exact_match"]
    assert result.metrics["loss"] < before["loss"] / 3
    assert result.tokens_per_s > 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "valid", "summary"}
    assert all(json.dumps(r) for r in rows)
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "checkpoint.pt").exists()


def test_target_stops_early() -> None:
    recipe = tiny_copy_recipe()
    result = train(recipe.build_model(), recipe, tiny_config(steps=50, eval_every=2, target=0.0))
    assert result.step == 2 and result.stopped_early


def test_bf16_autocast_runs() -> None:
    recipe = tiny_copy_recipe()
    result = train(recipe.build_model(), recipe, tiny_config(steps=2, bf16=True))
    assert math.isfinite(result.history[0]["loss"])


@pytest.mark.parametrize("task", ["text", "digits", "dates", "sort"])
def test_every_recipe_trains_a_step(task: str, tmp_path: Path) -> None:
    kwargs = {"block_size": 16} if task == "text" else {}
    recipe = get_recipe(task, d_model=16, layers=1, heads=2, **kwargs)  # type: ignore[arg-type]
    if isinstance(recipe, Seq2SeqRecipe):
        recipe.eval_size = 8
    result = train(recipe.build_model(), recipe, tiny_config(steps=2, out_dir=str(tmp_path)))
    assert recipe.metric in result.metrics
    assert load_trained(tmp_path / "checkpoint.pt").task == task


def test_unknown_task_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="dates, copy, reverse, sort, text, digits"):
        get_recipe("translate")


# ------------------------------------------------------------------ plots


def test_plots_write_png(tmp_path: Path) -> None:
    rows = [{"step": s, "split": "train", "loss": 1 / s} for s in (1, 2, 3)]
    rows.append({"step": 3, "split": "valid", "loss": 0.5, "exact_match": 0.7})
    loss = plot_loss_curve(rows, tmp_path / "loss.png", metric="exact_match")
    weights = torch.softmax(torch.randn(2, 4, 6), dim=-1)
    attn = plot_cross_attention(weights, list("ab cde"), [*"xyz", "<eos>"], tmp_path / "a.png")
    for p in (loss, attn):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="labels"):
        plot_cross_attention(weights, list("ab"), list("xyzw"), tmp_path / "b.png")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
