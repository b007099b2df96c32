"""Train a model on a built-in task with the task's recipe, and save a checkpoint.

Tasks: dates (written date -> ISO), copy / reverse / sort (digit strings), text (a character
language model on Python's bundled documentation, or --text FILE), digits (a small ViT on the
8x8 scikit-learn digits). Each task has tuned defaults; the options below override them.
Training stops early once the task's validation metric reaches --target.

Writes into --out (default runs/TASK): checkpoint.pt (and checkpoint.prev.pt, the one before),
metrics.jsonl and loss.png. Ctrl-C saves a checkpoint; --resume continues from it exactly.
One run at a time per folder: a second fails at once, naming the PID that holds the folder.
For data-parallel training launch the same command with torchrun (gloo on CPU, NCCL on GPU).

Example:
    multihead train copy --steps 300
    multihead train dates --steps 2000 --out runs/dates --json
    multihead train text --steps 3000 && multihead generate --prompt "The "
    multihead train text --resume --steps 6000        # continue runs/text to step 6000
    torchrun --nproc_per_node 2 -m multihead.cli train sort --steps 500
    torchrun --nproc_per_node 2 -m multihead.cli train text --context-parallel 2 --seq-len 4096
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from multihead.commands._common import (
    MAX_BATCH,
    MAX_BLOCK,
    MAX_LAYERS,
    MAX_SEED,
    MAX_STEPS,
    MAX_WIDTH,
    add_threads_option,
    check_out_dir,
    float_in,
    int_in,
    set_threads,
    utf8_text,
)
from multihead.errors import CommandError
from multihead.tasks import TASK_NAMES
from multihead.train.checkpoint import load_checkpoint
from multihead.train.context_parallel import setup_context_parallel
from multihead.train.distributed import cleanup_distributed, init_distributed
from multihead.train.loop import CHECKPOINT_NAME, TrainConfig, train
from multihead.train.recipes import (
    RECIPE_DEFAULTS,
    TEXT_BLOCK_SIZE,
    get_recipe,
    with_train_overrides,
)

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead train``."""
    parser.add_argument("task", metavar="TASK", help=f"one of: {', '.join(TASK_NAMES)}")
    parser.add_argument("--steps", type=int_in(1, MAX_STEPS), help="optimiser updates in total")
    parser.add_argument(
        "--batch-size", type=int_in(1, MAX_BATCH), help="examples per update (per process)"
    )
    parser.add_argument("--lr", type=float_in(0, 10, lo_open=True), help="peak learning rate")
    parser.add_argument("--warmup", type=int_in(0, MAX_STEPS), help="linear warm-up updates")
    parser.add_argument(
        "--schedule", choices=("inverse_sqrt", "cosine"), help="decay after warm-up"
    )
    parser.add_argument("--d-model", type=int_in(1, MAX_WIDTH), help="model width")
    parser.add_argument(
        "--layers",
        type=int_in(1, MAX_LAYERS),
        help="layers (encoder and decoder each, for seq2seq)",
    )
    parser.add_argument("--heads", type=int_in(1, MAX_WIDTH), help="attention heads")
    parser.add_argument(
        "--eval-every",
        type=int_in(0, MAX_STEPS),
        help="updates between evaluations (0: at the end)",
    )
    parser.add_argument(
        "--target", type=float_in(0), help="stop when the validation metric reaches this (>= 0)"
    )
    parser.add_argument(
        "--block-size",
        "--seq-len",
        type=int_in(1, MAX_BLOCK),
        default=TEXT_BLOCK_SIZE,
        help=f"context length (text task, default {TEXT_BLOCK_SIZE})",
    )
    parser.add_argument(
        "--context-parallel",
        type=int_in(1, MAX_BATCH),
        metavar="C",
        help="split each sequence across C torchrun processes (text task; --block-size a "
        "multiple of 2C); the processes form world/C data-parallel groups",
    )
    parser.add_argument(
        "--text", metavar="FILE", type=utf8_text, help="UTF-8 text file to learn (text task)"
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/TASK)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: the one in --out)",
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument(
        "--seed", type=int_in(0, MAX_SEED), help="seed of initialisation and data (default 0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or eval lines")
    add_threads_option(
        parser, "CPU threads for torch (default: torch's choice); on a busy machine 1 can be faster"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    # textclass (issue 14)
    from multihead.commands import train_textclass

    train_textclass.configure(parser)
    # speech (issue 14)
    from multihead.commands import train_speech

    train_speech.add_options(parser)


# Options that override the recipe's TrainConfig field of the same name (None: keep it).
_TRAIN_OPTIONS = (
    "steps",
    "batch_size",
    "lr",
    "warmup",
    "schedule",
    "eval_every",
    "target",
    "device",
    "seed",
)


def _resume_path(args: argparse.Namespace, out: Path) -> Path | None:
    if args.resume is None:
        return None
    path = out / CHECKPOINT_NAME if args.resume == "auto" else Path(args.resume)
    if not path.exists():
        raise CommandError(
            f"--resume: no checkpoint at {str(path)!r}; train without --resume first"
        )
    return path


def _model_config_from(ckpt: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    config = dict(ckpt["model_config"])
    layer_keys = [
        k for k in ("num_encoder_layers", "num_decoder_layers", "num_layers") if k in config
    ]
    if ckpt.get("model_kind") == "lm":
        layer_keys = ["num_decoder_layers"]
    asked = {"d_model": args.d_model, "num_heads": args.heads}
    asked.update({key: args.layers for key in layer_keys})
    for key, value in asked.items():
        if value is not None and value != config.get(key):
            raise CommandError(
                f"--resume: the checkpoint has {key}={config.get(key)}, got a different "
                f"{value}; a resumed model keeps its shape"
            )
    return config


def _check_context_parallel(task: str, cp_size: int, block_size: int) -> None:
    if cp_size > 1 and (task != "text" or block_size % (2 * cp_size)):
        raise CommandError(
            f"--context-parallel {cp_size} needs the text task and a --block-size divisible by "
            f"{2 * cp_size} (zigzag chunks), got task {task!r} and {block_size}"
        )


def run(args: argparse.Namespace) -> int:
    """Run ``multihead train``; returns the exit status."""
    if args.task == "textclass":  # issue 14: the user's own labelled texts
        from multihead.commands import train_textclass

        return train_textclass.run(args)
    if args.task == "speech":  # issue 14
        from multihead.commands import train_speech

        return train_speech.run(args)
    if args.task not in TASK_NAMES:
        raise CommandError(f"unknown task {args.task!r}; choose one of: {', '.join(TASK_NAMES)}")
    cp_size = args.context_parallel or 1
    _check_context_parallel(args.task, cp_size, args.block_size)
    set_threads(args.threads)
    out = check_out_dir(args.out if args.out is not None else os.path.join("runs", args.task))
    resume = _resume_path(args, out)
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None and ckpt.get("task") != args.task:
        raise CommandError(
            f"--resume: {str(resume)!r} was trained on task {ckpt.get('task')!r}, not {args.task!r}"
        )
    block_size, text_path = args.block_size, args.text
    if ckpt is not None and args.task == "text":
        # The text and window length belong to the run being continued.
        task_config = ckpt.get("task_config") or {}
        block_size = int(task_config.get("block_size", block_size))
        text_path = text_path if text_path is not None else task_config.get("path")
        _check_context_parallel(args.task, cp_size, block_size)
    recipe = get_recipe(
        args.task,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        block_size=block_size,
        text_path=text_path,
    )
    base = RECIPE_DEFAULTS[args.task].train
    if ckpt is not None:
        # The checkpoint's shape and settings win, so the run continues as it started.
        recipe.model_config = type(recipe.model_config).from_dict(_model_config_from(ckpt, args))
        base = TrainConfig.from_dict(ckpt["train_config"])
        if (args.steps or base.steps) <= int(ckpt["step"]):
            raise CommandError(
                f"--resume: {str(resume)!r} is at step {ckpt['step']} already; pass --steps "
                f"above {ckpt['step']} to train further"
            )
    config = with_train_overrides(
        base,
        **{name: getattr(args, name) for name in _TRAIN_OPTIONS},
        bf16=True if args.bf16 else None,
        out_dir=str(out),
        progress=not (args.no_progress or args.json),
    )
    info = init_distributed(config.device)
    try:
        model = recipe.build_model(seed=config.seed)
        if cp_size > 1:
            try:
                info = setup_context_parallel(model, recipe, info, cp_size)
            except ValueError as exc:
                raise CommandError(f"--context-parallel: {exc}") from None
        result = train(model, recipe, config, resume_from=resume, dist_info=info)
    except KeyboardInterrupt:
        # The CLI prints this as the one line after "interrupted".
        raise KeyboardInterrupt(
            f"continue with: multihead train {args.task} --resume --out {out}"
        ) from None
    finally:
        cleanup_distributed()
    if not info.is_main:
        return 0
    summary = {
        "task": args.task,
        "step": result.step,
        "start_step": result.start_step,
        "stopped_early": result.stopped_early,
        "metrics": result.metrics,
        "metric": recipe.metric,
        "train_seconds": round(result.train_seconds, 3),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "processes": info.world_size,
        "checkpoint": result.checkpoint,
        "out_dir": str(out),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    early = " (target reached early)" if result.stopped_early else ""
    print(f"{args.task}: trained to step {result.step}{early} in {result.train_seconds:.1f} s")
    print(f"validation: {shown}")
    print(f"throughput: {result.tokens_per_s:,.0f} tokens/s over {info.world_size} process(es)")
    print(f"wrote {out}/ (checkpoint.pt, metrics.jsonl, loss.png)")
    sys.stdout.flush()
    return 0
