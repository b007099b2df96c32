"""The date translator against ``dateparser`` and ``dateutil.parser``, on the same inputs.

Two sets: the generator's held-out test dates (calendar days never trained on, every form
family equally often) and the hand-written realistic set ``tests/data/realistic_dates.tsv``.
For each system: exact (the right date, or a refusal where one is expected), silently wrong
(a date printed that is not the right one), refused (no date where one exists) and dates per
second, all in one run of this process. Ambiguous held-out dates are given their order: our
``order=``, ``dateparser``'s ``DATE_ORDER`` and ``dateutil``'s ``dayfirst``.

Peers are used as a user would use them to get one full date: ``dateparser.parse`` with
``REQUIRE_PARTS=["day", "month", "year"]`` and the seven languages we read; ``dateutil`` with
two different defaults, refusing an answer that changes with the default (a part was missing).

Run: ``python benchmarks/bench_dates.py [--checkpoint PATH] [--held-out 1000]``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``, and a checkpoint from
``multihead demo``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from multihead.modules.models import Seq2SeqTransformer
from multihead.tasks import DatesTask
from multihead.train.checkpoint import find_checkpoint
from multihead.train.dates import DatesScore, score_dates, translate_dates
from multihead.train.recipes import load_trained

REALISTIC = Path(__file__).resolve().parents[1] / "tests" / "data" / "realistic_dates.tsv"
LANGUAGES = ["en", "fr", "de", "es", "it", "pt", "nl"]
Item = tuple[str, str, str, str | None]
Translator = Callable[[list[str], str | None], list[str | None]]


def realistic_items() -> list[Item]:
    rows = [ln.split("\t") for ln in REALISTIC.read_text("utf-8").splitlines()]
    rows = [r for r in rows if r and not r[0].startswith("#")][1:]
    return [(text, expected, family, None) for family, text, expected in rows]


def heldout_items(n: int) -> list[Item]:
    return [(s.text, s.target, s.family, s.order) for s in DatesTask().sample_full(n, "test",
                                                                                    balanced=True)]  # fmt: skip


def ours(model: Seq2SeqTransformer, vocab: object) -> Translator:
    def translate(texts: list[str], order: str | None) -> list[str | None]:
        out = []
        for i in range(0, len(texts), 512):  # the batch `multihead translate` streams
            results = translate_dates(model, vocab, texts[i : i + 512], order=order)  # type: ignore[arg-type]
            out += [r.output for r in results]
        return out

    return translate


def dateparser_translator() -> Translator:
    import dateparser

    def translate(texts: list[str], order: str | None) -> list[str | None]:
        settings = {"REQUIRE_PARTS": ["day", "month", "year"]}
        if order is not None:
            settings["DATE_ORDER"] = order.upper()  # type: ignore[assignment]
        out: list[str | None] = []
        for text in texts:
            try:
                got = dateparser.parse(text, languages=LANGUAGES, settings=settings)
            except Exception:  # a peer's failure is a refusal, whatever it raises
                got = None
            out.append(None if got is None else got.date().isoformat())
        return out

    return translate


def dateutil_translator() -> Translator:
    from dateutil import parser

    a, b = datetime.datetime(1901, 1, 1), datetime.datetime(1902, 2, 2)

    def translate(texts: list[str], order: str | None) -> list[str | None]:
        out: list[str | None] = []
        for text in texts:
            try:
                x = parser.parse(text, default=a, dayfirst=order == "dmy")
                y = parser.parse(text, default=b, dayfirst=order == "dmy")
            except Exception:  # ParserError, OverflowError, ValueError...
                out.append(None)
                continue
            out.append(x.date().isoformat() if x.date() == y.date() else None)
        return out

    return translate


def run(items: Sequence[Item], translate: Translator) -> tuple[DatesScore, float]:
    started = time.perf_counter()
    score = score_dates(items, translate)
    return score, len(items) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: as `multihead translate` finds it")
    parser.add_argument("--held-out", type=int, default=1000, metavar="N")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="200 held-out dates")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    held_out = 200 if args.quick else args.held_out
    try:
        import dateparser  # noqa: F401
        import dateutil  # noqa: F401
    except ImportError:
        return "skipped: needs the bench extra (pip install -e '.[bench]')\n"
    try:
        trained = load_trained(find_checkpoint(args.checkpoint))
    except FileNotFoundError as exc:
        return f"skipped: {exc}; run `multihead demo` first\n"
    warnings.filterwarnings("ignore")  # dateparser's deprecation chatter
    assert isinstance(trained.model, Seq2SeqTransformer)
    systems = {
        "multihead (verified)": ours(trained.model, trained.vocab),
        "dateparser": dateparser_translator(),
        "dateutil": dateutil_translator(),
    }
    lines = [
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, checkpoint {trained.path} ({trained.step} steps)\n",
        "| set | system | exact | silently wrong | refused | dates/s | speed vs dateparser |",
        "|---|---|---|---|---|---|---|",
    ]
    realistic = realistic_items()
    for name, items in (
        (f"held-out ({held_out})", heldout_items(held_out)),
        (f"realistic ({len(realistic)})", realistic),
    ):
        results = {system: run(items, fn) for system, fn in systems.items()}
        peer_speed = results["dateparser"][1]
        for system, (score, speed) in results.items():
            r = score.rates()
            lines.append(
                f"| {name} | {system} | {r['exact']:.1%} | {r['wrong']:.1%} ({score.wrong}) | "
                f"{r['refused']:.1%} | {speed:,.0f} | {speed / peer_speed:.2f}x |"
            )
        for text, expected, got in results["multihead (verified)"][0].misses[:8]:
            lines.append(f"<!-- ours on {name}: {text!r} expected {expected}, got {got} -->")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
