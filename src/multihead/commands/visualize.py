"""Draw what a trained model attends to: heatmaps (PNG, SVG) and an interactive HTML page.

Loads a checkpoint, decodes the text greedily (sequence-to-sequence models) or reads it
(language models), captures every attention head of every layer on that pass, and writes

  attention_grid.png / .svg   one heatmap per layer and head, tokens on both axes
  attention.html              one offline page: pick layer and head, hover tokens, compare heads
  attention_stats.md          per-head statistics (entropy, distance, previous/diagonal...)

Decoder rows are labelled by the character each step writes, decoder keys by the character
each step reads (so the row "2" of cross-attention shows where the model looked to write "2").

Example:
  multihead demo                                  # trains the date model (runs/demo/)
  multihead visualize --text "Nov 22, 2026"       # writes runs/demo/attention/...
  multihead visualize --checkpoint runs/reverse/checkpoint.pt --text 31415 --out /tmp/att --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multihead.commands._common import check_out_dir, utf8_text
from multihead.tasks import TASK_NAMES
from multihead.viz.stats import stats_dicts
from multihead.viz.visualize import DEFAULT_CHECKPOINT, default_checkpoint, visualize

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead visualize``."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=f"checkpoint to load (default: the demo's, {DEFAULT_CHECKPOINT}; with --task T, "
        "runs/T/checkpoint.pt)",
    )
    parser.add_argument(
        "--text",
        type=utf8_text,
        default=None,
        help='input to look at (default: a sample for the task, e.g. "Nov 22, 2026")',
    )
    parser.add_argument(
        "--out",
        default=None,  # a str, so that an empty value is refused rather than read as "."
        help="folder for the pictures (default: 'attention' next to the checkpoint)",
    )
    parser.add_argument(
        "--task",
        choices=TASK_NAMES,
        default=None,
        help="which task's checkpoint to use when --checkpoint is not given; with "
        "--checkpoint, checked against the task it was trained on",
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )


def run(args: argparse.Namespace) -> int:
    """``multihead visualize``: see the module docstring."""
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint(args.task)
    out = check_out_dir(args.out) if args.out is not None else None
    result = visualize(checkpoint, text=args.text, out_dir=out, task=args.task)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "task": result.task,
                    "input": result.text,
                    "output": result.output,
                    "files": {k: str(v) for k, v in result.files.items()},
                    "modules": [
                        {"name": m.name, "kind": m.kind, "heads": len(m.heads)} for m in result.maps
                    ],
                    "stats": stats_dicts(result.stats),
                },
                indent=2,
            )
        )
        return 0
    print(f"input:  {result.text}")
    if result.output is not None:
        print(f"output: {result.output}")
    for path in result.files.values():
        print(f"wrote {path}")
    return 0
