"""The worked example of multi-head attention, every step printed and checked.

The default input is the articles' example: X = [[1, 2], [3, 4]] (two tokens, d_model = 2),
W_Q = W_K = I, W_V = [[0, 1], [1, 0]], W_O = I, shown with one head and with two heads.
Every number is computed by the library (``MultiHeadAttention`` and the attention kernel) and
cross-checked against plain float64 arithmetic written out separately; a disagreement larger
than 1e-9 (relative, for values above 1) is an error. Entries must be finite, within +-1e6.

Matrices follow the articles' row-vector convention: Q = X W_Q (so ``nn.Linear`` holds W_Q^T).

Example:
    multihead explain
    multihead explain --heads 2 --causal
    multihead explain --x "1,0,1;0,2,0;1,1,1" --wv "0,1,0;1,0,0;0,0,1" --heads 1 3 --json
"""

from __future__ import annotations

import argparse
import json

from multihead.commands._common import int_in, shorten
from multihead.explain import MAX_DIGITS, X_DEFAULT, ExplainConfig, Matrix, render, worked_example

__all__ = ["configure", "run"]


def _parse_matrix(text: str) -> Matrix:
    """ "1,2;3,4" -> ((1.0, 2.0), (3.0, 4.0))."""
    try:
        rows = tuple(tuple(float(v) for v in row.split(",")) for row in text.split(";"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a matrix like '1,2;3,4' (rows separated by ';'), got {shorten(text)!r}"
        ) from None
    if len({len(r) for r in rows}) != 1:
        raise argparse.ArgumentTypeError(f"rows of {shorten(text)!r} have different lengths")
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--x",
        type=_parse_matrix,
        default=X_DEFAULT,
        help="input X, rows ';'-separated (default: 1,2;3,4)",
    )
    for name, what in (("wq", "W_Q"), ("wk", "W_K"), ("wv", "W_V"), ("wo", "W_O")):
        parser.add_argument(
            f"--{name}",
            type=_parse_matrix,
            default=None,
            help=f"{what} (default: identity; W_V swaps the two columns for 2-wide X)",
        )
    parser.add_argument(
        "--heads",
        type=int_in(1, 4096),
        nargs="+",
        default=[1, 2],
        help="head counts to show, each dividing the width of X (default: 1 2)",
    )
    parser.add_argument(
        "--causal", action="store_true", help="apply a causal mask (token i sees tokens <= i)"
    )
    parser.add_argument(
        "--digits",
        type=int_in(0, MAX_DIGITS),
        default=4,
        help=f"decimals to print, 0 to {MAX_DIGITS} (default: 4)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    config = ExplainConfig(
        x=args.x,
        w_q=args.wq,
        w_k=args.wk,
        w_v=args.wv,
        w_o=args.wo,
        num_heads=tuple(args.heads),
        causal=args.causal,
    )
    mats = config.matrices()
    results = worked_example(config)
    if args.json:
        print(
            json.dumps(
                {
                    "inputs": {k: v.tolist() for k, v in mats.items()},
                    "causal": config.causal,
                    "results": [r.to_dict() for r in results],
                },
                indent=2,
            )
        )
    else:
        print(render(results, mats, digits=args.digits))
    return 0
