"""The date translator at work: a trained model's answers, verified, and how to score them.

:func:`translate_dates` is what ``multihead translate`` runs on each batch of lines: every line
is first read by the deterministic reader (:func:`multihead.tasks.date_reading.read_date`);
lines it cannot read are refused without running the model; the model translates the rest, and
an answer is kept only when :func:`~multihead.tasks.date_reading.verify_answer` finds that it
names the date the reader found. So a printed date is one two independent readers agree on.

:func:`score_dates` counts exact answers, silently wrong answers and refusals per family, for
the demo's held-out report and ``benchmarks/bench_dates.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from multihead.decoding import beam_search, greedy_decode
from multihead.modules.models import Seq2SeqTransformer
from multihead.tasks import BOS, EOS, MAX_TARGET_LENGTH, PAD, CharVocab
from multihead.tasks.date_reading import (
    DEFAULT_PIVOT,
    model_source,
    read_date,
    verify_answer,
)

__all__ = [
    "AMBIGUOUS",
    "REFUSE",
    "DateResult",
    "DatesScore",
    "decode_with_confidence",
    "score_dates",
    "translate_dates",
]

# Expected answers of a test item that must not get a date.
AMBIGUOUS = "AMBIGUOUS"
REFUSE = "REFUSE"


@dataclass(frozen=True)
class DateResult:
    """One line's result: ``output`` (ISO) or ``error`` (the reason it was refused).

    ``confidence`` is the model's probability of the least certain character of its answer
    (EOS included), or ``None`` when the model did not run.
    """

    input: str
    output: str | None
    error: str | None
    confidence: float | None = None


@torch.no_grad()
def decode_with_confidence(
    model: Seq2SeqTransformer,
    vocab: CharVocab,
    sources: Sequence[str],
    *,
    beam_size: int = 1,
) -> list[tuple[str, float]]:
    """Decode ``sources`` (model inputs) and return ``(answer, confidence)``.

    The confidence is the smallest probability the model gave to one of the answer's tokens
    (EOS included): the weakest character decides, and it does not shrink with the answer's
    length as the product of all probabilities would. Training with label smoothing 0.1 caps a
    token's probability near 0.9, so a sure answer scores about 0.9, and an unsure one far less.
    The probabilities come from one teacher-forced pass over the decoded tokens, so they are
    the same for greedy and beam answers.

    Example:
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("dates", d_model=16, layers=1)
        >>> [(len(a) <= 11, 0 <= p <= 1) for a, p in
        ...  decode_with_confidence(recipe.build_model(), recipe.vocab, ["22.11.26"])]
        [(True, True)]
    """
    if not sources:
        return []
    was_training = model.training
    model.eval()
    try:
        src, lengths = vocab.pad_batch([vocab.encode(s) for s in sources])  # (B, Ns), (B,)
        mask = torch.arange(src.shape[1]) < lengths[:, None]  # (B, Ns), True = real
        max_len = MAX_TARGET_LENGTH - 1
        if beam_size == 1:
            tokens = greedy_decode(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=max_len)
        else:
            tokens = beam_search(
                model, src, mask, bos_id=BOS, eos_id=EOS, max_len=max_len, beam_size=beam_size
            )
        # (B, T): tokens after BOS. Teacher-force them to get each chosen token's probability.
        tgt_in = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
        log_probs = model(src, tgt_in, mask).float().log_softmax(-1)  # (B, T, V)
        chosen = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
        # Positions after EOS hold PAD: they are not part of the answer.
        confidence = chosen.masked_fill(tokens == PAD, 0.0).min(-1).values.exp()  # (B,)
    finally:
        model.train(was_training)
    answers = [vocab.decode(row) for row in tokens]
    return list(zip(answers, confidence.tolist(), strict=True))


def translate_dates(
    model: Seq2SeqTransformer,
    vocab: CharVocab,
    texts: Sequence[str],
    *,
    order: str | None = None,
    pivot: int = DEFAULT_PIVOT,
    min_confidence: float = 0.0,
    beam_size: int = 1,
) -> list[DateResult]:
    """Translate each of ``texts`` into a verified ISO date or a refusal, in order.

    Args:
        model, vocab: the trained date translator.
        texts: written dates, one per item (an empty item is refused).
        order: ``"dmy"``/``"mdy"`` for ambiguous numeric dates; ``None`` refuses them.
        pivot: two-digit years name a year in ``[pivot, pivot + 99]``.
        min_confidence: answers the model gives with a lower probability are refused.
        beam_size: 1 for greedy decoding, more for beam search.

    Example:
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("dates", d_model=16, layers=1)
        >>> translate_dates(recipe.build_model(), recipe.vocab, ["hello"])[0].error
        "'hello' is not a date word"
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, got a single str; wrap it in a list")
    if not isinstance(min_confidence, (int, float)) or not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be a number in [0, 1], got {min_confidence!r}")
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
    readings = [read_date(t, order=order, pivot=pivot) for t in texts]
    # Identical lines (common in logs) are decoded once.
    sources = {model_source(t, order): None for t, r in zip(texts, readings, strict=True) if r.date}
    decoded = dict(zip(sources, decode_with_confidence(model, vocab, list(sources),
                                                       beam_size=beam_size), strict=True))  # fmt: skip
    results = []
    for text, reading in zip(texts, readings, strict=True):
        if reading.date is None:
            results.append(DateResult(text, None, reading.error))
            continue
        answer, confidence = decoded[model_source(text, order)]
        try:
            date = verify_answer(reading, answer)
        except ValueError as exc:
            results.append(DateResult(text, None, str(exc), confidence))
            continue
        if confidence < min_confidence:
            results.append(
                DateResult(
                    text,
                    None,
                    f"the model's confidence {confidence:.3f} is below {min_confidence}",
                    confidence,
                )
            )
            continue
        results.append(DateResult(text, date.isoformat(), None, confidence))
    return results


@dataclass
class DatesScore:
    """Counts of one scoring run; ``by_family`` maps a family to ``[exact, wrong, refused]``."""

    exact: int = 0
    wrong: int = 0
    refused: int = 0
    by_family: dict[str, list[int]] = field(default_factory=dict)
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # (input, expected, got)

    @property
    def total(self) -> int:
        """Items scored."""
        return self.exact + self.wrong + self.refused

    def rates(self) -> dict[str, float]:
        """``exact``, ``wrong`` and ``refused`` as shares of :attr:`total`."""
        n = max(1, self.total)
        return {"exact": self.exact / n, "wrong": self.wrong / n, "refused": self.refused / n}


def score_dates(
    items: Sequence[tuple[str, str, str, str | None]],
    translate: Callable[[list[str], str | None], list[str | None]],
) -> DatesScore:
    """Score a translator on ``(text, expected, family, order)`` items.

    ``expected`` is an ISO date, :data:`AMBIGUOUS` or :data:`REFUSE`; ``translate(texts, order)``
    returns an ISO string or ``None`` (refused) per text. An item is *exact* when the answer is
    the expected date, or a refusal where one is expected; *wrong* when a date is printed that
    is not the expected one (silently wrong); *refused* when no date is printed for an item
    that has one.

    Example:
        >>> score = score_dates([("22.11.26", "2026-11-22", "dmy", None),
        ...                      ("3/4/01", "AMBIGUOUS", "dmy", None)],
        ...                     lambda texts, order: ["2026-11-22", "2001-04-03"])
        >>> score.exact, score.wrong, score.refused
        (1, 1, 0)
    """
    score = DatesScore()
    groups: dict[str | None, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item[3], []).append(i)
    answers: list[str | None] = [None] * len(items)
    for order, indices in groups.items():
        got = translate([items[i][0] for i in indices], order)
        for i, answer in zip(indices, got, strict=True):
            answers[i] = answer
    for (text, expected, family, _), answer in zip(items, answers, strict=True):
        counts = score.by_family.setdefault(family, [0, 0, 0])
        if answer == expected or (answer is None and expected in (AMBIGUOUS, REFUSE)):
            score.exact += 1
            counts[0] += 1
            continue
        if answer is None:
            score.refused += 1
            counts[2] += 1
        else:
            score.wrong += 1
            counts[1] += 1
        score.misses.append((text, expected, answer or "(refused)"))
    return score
