"""Sample text from a character language model trained with `multihead train text`.

The prompt is continued one character at a time: the next-character distribution is divided
by --temperature, cut to the --top-k most likely characters and to the nucleus of probability
--top-p, and sampled with a generator seeded by --seed (the same seed gives the same text).
The context is the last block-size characters, the length the model was trained on.

Example:
    multihead train text --steps 3000
    multihead generate --prompt "The " --max-new-tokens 300 --temperature 0.8 --top-k 20
    multihead generate --checkpoint runs/text/checkpoint.pt --top-p 0.9 --seed 7
    multihead generate --quantize int8 --threads 1
    multihead generate --quantize int8 --calibrate 128
    multihead generate --quantize int8 --group-size 128 --calibrate 256
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from multihead.commands._common import (
    MAX_SEED,
    add_threads_option,
    float_in,
    int_in,
    load_checkpoint_file,
    utf8_text,
)
from multihead.decoding import sample
from multihead.errors import CommandError
from multihead.modules.models import DecoderLM
from multihead.quantize import quantize
from multihead.tasks import CharTextTask, CharVocab
from multihead.threads import apply_thread_policy
from multihead.train.recipes import load_trained

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_CHECKPOINT", "SamplingOptions", "configure", "generate_text", "run"]

DEFAULT_CHECKPOINT = "runs/text/checkpoint.pt"
MAX_NEW_TOKENS = 100_000  # one model call each; more is a typo, not a request
MAX_CALIBRATION = 4096  # sequences, run as one batch: memory grows with N x the context length


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead generate``."""
    parser.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default {DEFAULT_CHECKPOINT}"
    )
    parser.add_argument(
        "--prompt", type=utf8_text, default="\n", help="text to continue (default: a newline)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int_in(1, MAX_NEW_TOKENS),
        default=200,
        help=f"characters to add, 1 to {MAX_NEW_TOKENS:,}",
    )
    parser.add_argument(
        "--temperature", type=float_in(0, lo_open=True), default=1.0, help="> 0; lower is safer"
    )
    parser.add_argument("--top-k", type=int_in(1), help="sample among the k most likely characters")
    parser.add_argument(
        "--top-p",
        type=float_in(0, 1, lo_open=True),
        help="sample within this probability nucleus, in (0, 1]",
    )
    parser.add_argument(
        "--seed", type=int_in(0, MAX_SEED), default=0, help="seed of the sampler (>= 0)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument(
        "--quantize",
        choices=("none", "dynamic", "int8", "int4", "bf16", "float32"),
        default="none",
        help="run a quantized copy (see docs/quantization.md): dynamic int8, or int8/int4/bf16 "
        "weights, or float32 weights prepacked for oneDNN (default none: float32 nn.Linear)",
    )
    parser.add_argument(
        "--calibrate",
        type=int_in(1, MAX_CALIBRATION),
        metavar="N",
        help="with --quantize int8/int4: round the weights with GPTQ on N sequences drawn from "
        "the model's training text (e.g. 128) instead of to nearest",
    )
    parser.add_argument(
        "--group-size",
        type=int_in(2),
        metavar="G",
        help="with --quantize int8: one scale per G input channels (e.g. 128; needs multihead's "
        "int8 kernel, built with the machine's C compiler) instead of one per output channel; "
        "with --quantize int4: its group size (default 64)",
    )
    add_threads_option(
        parser, "CPU threads (default: the physical cores that are free, 1 on a busy machine)"
    )


class SamplingOptions(TypedDict, total=False):
    """How each character is drawn; :func:`multihead.decoding.sample` checks and documents them
    (defaults: temperature 1, no top-k or top-p cut)."""

    temperature: float
    top_k: int | None
    top_p: float | None


def generate_text(
    model: DecoderLM,
    vocab: CharVocab,
    prompt: str,
    *,
    max_new_tokens: int,
    context: int,
    seed: int = 0,
    **sampling: Unpack[SamplingOptions],
) -> str:
    """The characters sampled after ``prompt`` (the prompt itself not included).

    Each step sees at most the last ``context`` characters, the model's training length;
    ``sampling`` (``temperature``, ``top_k``, ``top_p``) goes to
    :func:`multihead.decoding.sample`, the same generator seeded by ``seed`` throughout.

    Example:
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("text", d_model=16, layers=1, block_size=8)
        >>> text = generate_text(recipe.build_model(), recipe.vocab, "The", max_new_tokens=5,
        ...                      context=8)
        >>> len(text)
        5
    """
    if not prompt:
        raise ValueError("prompt must not be empty; the model needs a character to start from")
    unknown = sorted({ch for ch in prompt if ch not in vocab})
    if unknown:
        raise ValueError(f"prompt holds characters the model never saw: {''.join(unknown)!r}")
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be an int >= 1, got {context!r}")
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([vocab.encode(prompt)])  # (1, N)
    n_prompt = tokens.shape[1]
    # One token per call, each from the last `context` tokens: the model was never trained on
    # longer contexts, and its positions stop at `context`.
    for _ in range(max_new_tokens):
        window = tokens[:, -context:]
        step = sample(model, window, max_new_tokens=1, generator=generator, **sampling)
        new = step[:, -1:]  # (1, 1): the one sampled token
        tokens = torch.cat([tokens, new], dim=1)
    return vocab.decode(tokens[0, n_prompt:])


def training_windows(
    checkpoint: Mapping[str, Any], vocab: CharVocab, count: int, length: int
) -> torch.Tensor:
    """``count`` windows ``(count, length)`` of token ids from the training split of the text a
    `multihead train text` checkpoint was trained on (the same draw every time)."""
    task_config = checkpoint.get("task_config") or {}
    try:
        task = CharTextTask(task_config.get("path"), block_size=length)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--calibrate: cannot read the model's training text: {exc}") from exc
    if task.vocab != vocab:
        raise CommandError(
            f"--calibrate: the training text {task_config.get('path') or '(built-in)'!r} no "
            "longer has the characters the model was trained on (was the file changed?)"
        )
    return task.get_batch("train", count, torch.Generator().manual_seed(0))[0]


def run(args: argparse.Namespace) -> int:
    """Run ``multihead generate``; returns the exit status."""
    apply_thread_policy(args.threads)
    path = Path(args.checkpoint)
    trained = load_checkpoint_file(
        path,
        load_trained,
        how_to_train="run `multihead train text` first to train a language model",
    )
    if trained.kind != "lm" or trained.vocab is None:
        raise CommandError(
            f"{str(path)!r} holds a {trained.task!r} model, not a language model from "
            f"`multihead train text`"
        )
    assert isinstance(trained.model, DecoderLM)
    model = trained.model
    block = int(trained.checkpoint.get("task_config", {}).get("block_size") or 0)
    context = block or trained.model.config.max_len
    calibration = None
    if args.calibrate is not None:
        if args.quantize not in ("int8", "int4"):
            raise CommandError(
                f"--calibrate goes with --quantize int8 or int4 (GPTQ rounding), got "
                f"--quantize {args.quantize}"
            )
        calibration = training_windows(trained.checkpoint, trained.vocab, args.calibrate, context)
    if args.group_size is not None and args.quantize not in ("int8", "int4"):
        raise CommandError(
            f"--group-size goes with --quantize int8 or int4, got --quantize {args.quantize}"
        )
    if args.quantize != "none":
        try:
            model = quantize(  # type: ignore[assignment]
                model, weights=args.quantize, group_size=args.group_size, calibration=calibration
            )
        except ValueError as exc:
            raise CommandError(f"--quantize {args.quantize}: {exc}") from exc
    text = generate_text(
        model,
        trained.vocab,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        context=context,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text}))
    else:
        print(args.prompt + text)
    return 0
