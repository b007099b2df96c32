"""The one training loop: AdamW, warm-up schedule, label smoothing, clipping, eval, checkpoints.

Everything task-specific (how to draw a batch, compute a loss, evaluate) comes from a
:class:`Recipe`; :mod:`multihead.train.recipes` has one per built-in task. The loop owns the
rest: optimisation, bf16 autocast, the progress bar, ``metrics.jsonl``, checkpoints, early
stopping, Ctrl-C, throughput and data-parallel training.

Reproducibility: the batch and the dropout masks of step ``t`` on rank ``r`` are drawn from
seeds derived from ``(config.seed, t, r)`` alone (:func:`step_seed`), not from a stream that
earlier steps advanced. A run stopped at step ``k`` and resumed therefore takes exactly the
same steps as one that never stopped, and every data-parallel rank draws a different shard.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from multihead._files import write_atomic
from multihead.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from multihead.train.distributed import (
    DistInfo,
    all_reduce_max,
    init_distributed,
    unwrap,
    wrap_model,
)
from multihead.train.optim import SCHEDULES, make_optimizer, make_scheduler
from multihead.train.plots import plot_loss_curve
from multihead.train.rundir import lock_run_dir, removed_if_failed

__all__ = [
    "CHECKPOINT_NAME",
    "LOSS_PLOT_NAME",
    "METRICS_NAME",
    "Recipe",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "read_metrics",
    "step_seed",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
LOSS_PLOT_NAME = "loss.png"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of :func:`train`, shared by the Python API and ``multihead train``.

    Example:
        >>> cfg = TrainConfig(steps=100, lr=3e-4)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    # Optimiser updates in total (a resumed run continues up to this number).
    steps: int = 1000
    # Examples per update and per process (data parallel multiplies it by the process count).
    batch_size: int = 128
    # Peak learning rate, reached at the end of warm-up.
    lr: float = 1e-3
    # Updates of linear warm-up; Adam's early steps are noisy until its moment estimates settle.
    warmup: int = 100
    # Decay after warm-up: "inverse_sqrt" (the Transformer paper's) or "cosine" (to min_lr_ratio).
    schedule: Literal["inverse_sqrt", "cosine"] = "inverse_sqrt"
    # Floor of the cosine schedule as a fraction of lr.
    min_lr_ratio: float = 0.0
    # Decoupled (AdamW) weight decay on weight matrices only.
    weight_decay: float = 0.01
    # Share of the target probability spread over the vocabulary (Szegedy et al., 2016); 0.1 as
    # in the Transformer paper, which found it helps accuracy though perplexity suffers.
    label_smoothing: float = 0.1
    # Largest global gradient norm; None turns clipping off.
    clip_grad_norm: float | None = 1.0
    # Updates between train-loss records (and progress-bar refreshes of loss and accuracy).
    log_every: int = 25
    # Updates between evaluations and checkpoints; 0 evaluates only at the end.
    eval_every: int = 200
    # Stop once the recipe's main validation metric reaches this value (None: never early).
    target: float | None = None
    # Seeds batches and dropout of every step (model initialisation is seeded by the caller).
    seed: int = 0
    # Run forward passes under torch.autocast with bfloat16 (CPU or GPU).
    bf16: bool = False
    # "auto" (CUDA when available), "cpu" or "cuda".
    device: str = "auto"
    # Folder for the checkpoint, metrics.jsonl and loss.png; None writes nothing.
    out_dir: str | None = None
    # Show a progress bar (only on a terminal) and one line per evaluation on stderr.
    progress: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch_size", 1), ("warmup", 0), ("seed", 0)):
            _check_int(name, getattr(self, name), minimum)
        for name, minimum in (("log_every", 1), ("eval_every", 0)):
            _check_int(name, getattr(self, name), minimum)
        for name in ("lr", "min_lr_ratio", "weight_decay", "label_smoothing"):
            _check_float(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_grad_norm is not None:
            _check_float("clip_grad_norm", self.clip_grad_norm)
            if not self.clip_grad_norm > 0:
                raise ValueError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm}")
        if self.target is not None:
            _check_float("target", self.target)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            raise TypeError(f"out_dir must be a str or None, got {type(self.out_dir).__name__}")
        for name in ("bf16", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-value form, for checkpoints and JSON.

        Example:
            >>> TrainConfig().to_dict()["schedule"]
            'inverse_sqrt'
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected.

        Example:
            >>> TrainConfig.from_dict({"steps": 5}).steps
            5
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"data has unknown TrainConfig fields {unknown}; known: {sorted(known)}"
            )
        return cls(**dict(data))


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


class StepOutput(NamedTuple):
    """What a recipe's ``loss`` returns for one batch.

    ``loss`` is the scalar to minimise; ``correct``/``predictions`` give the training accuracy
    shown on the progress bar; ``tokens`` counts the real
    (non-padding) tokens the step processed, for throughput.
    """

    loss: torch.Tensor
    correct: int
    predictions: int
    tokens: int


class Recipe(Protocol):
    """Everything :func:`train` needs to know about a task.

    ``metric`` names the entry of :meth:`evaluate`'s result that ``TrainConfig.target``
    refers to, and ``higher_is_better`` its direction.
    """

    name: str
    metric: str
    higher_is_better: bool

    def batch(self, batch_size: int, rng_seed: int) -> Any:
        """A training batch (CPU tensors, or tuples of them) drawn from ``rng_seed`` alone."""
        ...

    def loss(self, model: nn.Module, batch: Any, *, label_smoothing: float) -> StepOutput:
        """The loss of ``model`` on ``batch`` (already on the model's device)."""
        ...

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation metrics; called in eval mode under ``torch.no_grad()``."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """Plain values stored with the weights: task, model kind and config, vocabulary."""
        ...


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What :func:`train` did.

    ``tokens_per_s`` counts real tokens over all processes per second of training compute
    (evaluation and checkpointing excluded); ``history`` holds the records of this call, as
    appended to ``metrics.jsonl``.
    """

    step: int
    start_step: int
    metrics: dict[str, float]
    stopped_early: bool
    train_seconds: float
    elapsed_seconds: float
    tokens_per_s: float
    checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 32-bit seed for one step's batch (``stream=0``) or dropout (``stream=1``) on one rank.

    Hashing the tuple with NumPy's ``SeedSequence`` keeps nearby tuples' streams unrelated.

    Example:
        >>> step_seed(0, 5) == step_seed(0, 5), step_seed(0, 5) == step_seed(0, 5, rank=1)
        (True, False)
    """
    return int(np.random.SeedSequence([seed, stream, rank, step]).generate_state(1)[0])


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple
        return type(batch)(*(_to_device(b, device) for b in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a missing file reads as none).

    Example:
        >>> read_metrics("no/such/metrics.jsonl")
        []
    """
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash
                rows.append(json.loads(line))
    return rows


def _rewrite_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))


@dataclass
class _Window:
    """Sums over the steps since the last train record."""

    loss: float = 0.0
    correct: int = 0
    count: int = 0
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0

    def add(self, output: StepOutput, seconds: float) -> None:
        self.loss += float(output.loss.detach())
        self.correct += int(output.correct)
        self.count += int(output.predictions)
        self.tokens += int(output.tokens)
        self.steps += 1
        self.seconds += seconds


class _DeferredSigint:
    """Turn the first Ctrl-C into a flag checked between steps, so the saved state is whole.

    A second Ctrl-C interrupts at once. Outside the main thread (where signal handlers cannot be
    installed) Ctrl-C raises KeyboardInterrupt as usual and the loop saves the last whole step.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredSigint:
        with contextlib.suppress(ValueError):  # not the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    model: nn.Module,
    recipe: Recipe,
    config: TrainConfig,
    *,
    resume_from: str | os.PathLike[str] | None = None,
    dist_info: DistInfo | None = None,
) -> TrainResult:
    """Train ``model`` on ``recipe`` for ``config.steps`` updates (fewer if ``target`` is met).

    Args:
        model: the model; moved to the training device. Seed its initialisation yourself.
        recipe: batches, loss and evaluation of the task (see :class:`Recipe`).
        config: the settings.
        resume_from: a checkpoint to continue from: weights, optimiser, schedule, random state
            and step are restored, and training goes on up to ``config.steps``.
        dist_info: the data-parallel position; ``None`` reads torchrun's environment
            (:func:`multihead.train.distributed.init_distributed`).

    Writes into ``config.out_dir`` (process 0 only): ``checkpoint.pt`` at every evaluation, at
    the end and on Ctrl-C (which then re-raises ``KeyboardInterrupt``); ``metrics.jsonl`` with
    one JSON object per log (``"split": "train"``) or evaluation (``"valid"``) step and a
    ``"summary"`` row with time and throughput at the end; ``loss.png`` at the end. The folder
    is locked for the run: another live run there raises
    :class:`~multihead.train.rundir.RunDirLocked` at once, naming its PID.

    Example:
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("copy", d_model=32, layers=1)
        >>> model = recipe.build_model(seed=0)
        >>> result = train(model, recipe, TrainConfig(steps=3, batch_size=8, progress=False,
        ...                                           device="cpu"))
        >>> result.step
        3
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    info = dist_info if dist_info is not None else init_distributed(config.device)
    if config.out_dir is None or not info.is_main:
        return _train(model, recipe, config, resume_from, info)
    # One run per folder: a second would interleave metrics.jsonl and replace checkpoints. A
    # run that fails before writing anything takes the folder it created away again.
    with removed_if_failed(config.out_dir, "out_dir") as folder, lock_run_dir(folder):
        return _train(model, recipe, config, resume_from, info)


def _train(
    model: nn.Module,
    recipe: Recipe,
    config: TrainConfig,
    resume_from: str | os.PathLike[str] | None,
    info: DistInfo,
) -> TrainResult:
    began = time.perf_counter()
    device = torch.device(info.device)
    model.to(device)
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(
        optimizer,
        schedule=config.schedule,
        warmup=config.warmup,
        total_steps=config.steps,
        min_lr_ratio=config.min_lr_ratio,
    )
    start = 0
    last_metrics: dict[str, float] = {}
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {str(resume_from)!r} does not fit this model and optimiser: "
                f"{str(exc).strip().splitlines()[0]}"
            ) from exc
        restore_rng_state(ckpt.get("rng", {}))
        start = int(ckpt["step"])
        last_metrics = dict(ckpt.get("metrics") or {})

    out = Path(config.out_dir) if config.out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    metrics_path = out / METRICS_NAME if out is not None else None
    writer = info.is_main and out is not None
    if writer:
        assert out is not None and metrics_path is not None
        # A resumed run drops what an earlier run logged after its last checkpoint, so the file
        # never has two different records for one step.
        kept = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= start]
        _rewrite_metrics(metrics_path, kept if start > 0 else [])

    history: list[dict[str, Any]] = []
    show_bar = config.progress and info.is_main and sys.stderr.isatty()
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=recipe.name,
        unit="step",
        disable=not show_bar,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def say(message: str) -> None:
        if not (config.progress and info.is_main):
            return
        if show_bar:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def record(row: dict[str, Any]) -> None:
        history.append(row)
        if writer and metrics_path is not None:
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    done = start

    def checkpoint() -> None:
        if not writer or ckpt_path is None:
            return
        payload = {
            "step": done,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng_state(),
            "train_config": config.to_dict(),
            "metrics": dict(last_metrics),
            **recipe.checkpoint_meta(),
        }
        save_checkpoint(ckpt_path, payload)

    ddp_model = wrap_model(model, info)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16)
    train_seconds = 0.0
    tokens_total = 0
    win = _Window()
    stopped_early = False
    saved_at = -1
    model.train()
    try:
        with _DeferredSigint() as sigint:
            for step in range(start, config.steps):
                if sigint.requested:
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(config.seed, step, info.rank, stream=1))
                batch = recipe.batch(
                    config.batch_size, step_seed(config.seed, step, info.data_rank)
                )
                batch = _to_device(batch, device)
                with autocast:
                    output = recipe.loss(ddp_model, batch, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                output.loss.backward()
                if config.clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                lr = float(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
                done = step + 1
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                tokens_total += output.tokens
                win.add(output, seconds)
                bar.update(1)
                if done % config.log_every == 0 or done == config.steps:
                    row = {
                        "step": done,
                        "split": "train",
                        "loss": win.loss / win.steps,
                        "accuracy": win.correct / max(1, win.count),
                        "lr": lr,
                        "tokens_per_s": win.tokens * info.world_size / max(win.seconds, 1e-9),
                        "elapsed_s": time.perf_counter() - began,
                    }
                    record(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
                    win = _Window()
                at_eval = config.eval_every > 0 and done % config.eval_every == 0
                if at_eval or done == config.steps:
                    unwrap(model).eval()
                    with torch.no_grad():
                        last_metrics = {
                            k: float(v) for k, v in recipe.evaluate(unwrap(model), device).items()
                        }
                    model.train()
                    record(
                        {
                            "step": done,
                            "split": "valid",
                            **last_metrics,
                            "elapsed_s": time.perf_counter() - began,
                        }
                    )
                    say(
                        f"step {done}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in last_metrics.items())
                    )
                    checkpoint()
                    saved_at = done
                    value = last_metrics.get(recipe.metric)
                    reached = (
                        config.target is not None
                        and value is not None
                        and (
                            value >= config.target
                            if recipe.higher_is_better
                            else value <= config.target
                        )
                    )
                    if all_reduce_max(float(reached), info) > 0:
                        stopped_early = done < config.steps
                        break
    except KeyboardInterrupt:
        bar.close()
        if saved_at != done:
            checkpoint()
        if writer:
            print(
                f"interrupted after step {done}; checkpoint saved to {ckpt_path}",
                file=sys.stderr,
            )
        raise
    finally:
        bar.close()

    if saved_at != done:
        checkpoint()
    train_tokens_per_s = tokens_total * info.world_size / train_seconds if train_seconds else 0.0
    if done > start:
        record(
            {
                "step": done,
                "split": "summary",
                "start_step": start,
                "train_seconds": train_seconds,
                "tokens_per_s": train_tokens_per_s,
                "elapsed_s": time.perf_counter() - began,
                "stopped_early": stopped_early,
                "world_size": info.world_size,
            }
        )
    if writer and out is not None and metrics_path is not None:
        plot_loss_curve(
            read_metrics(metrics_path),
            out / LOSS_PLOT_NAME,
            metric=recipe.metric,
            title=f"{recipe.name}: {done} steps",
            train_label=(
                f"train loss (label smoothing {config.label_smoothing:g})"
                if config.label_smoothing > 0
                else "train loss"
            ),
        )
    return TrainResult(
        step=done,
        start_step=start,
        metrics=last_metrics,
        stopped_early=stopped_early,
        train_seconds=train_seconds,
        elapsed_seconds=time.perf_counter() - began,
        tokens_per_s=train_tokens_per_s,
        checkpoint=str(ckpt_path) if writer and ckpt_path is not None else None,
        history=history,
    )
