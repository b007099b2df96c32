"""The text classifier's model: an encoder plus a linear term on the text's n-grams.

:class:`NgramEncoderClassifier` is an :class:`~multihead.modules.EncoderClassifier` whose class
logits add a linear function of the text's bag of word-piece unigrams and hashed bigrams, the
model of fastText (Joulin et al., 2017, "Bag of Tricks for Efficient Text Classification"),
trained jointly with the encoder (:func:`text_model_loss`). On a few thousand sentences a
Transformer fits the training set in two or three epochs; a bag of bigrams is what linear
sentiment models live on (Wang & Manning, 2012), and the two make different errors. How much
each part weighs in the sum is fitted on validation data after training
(:func:`fit_mixing_weights`). The n-gram weights are an ``nn.Embedding`` with one row per
unigram (the vocabulary) and one per hash bucket of bigrams, ``C`` columns, initialised to
zero: a new model is exactly the encoder, and an n-gram's weight grows only as far as the data
supports it.

Example:
    >>> from multihead.modules import TransformerConfig
    >>> config = TransformerConfig(vocab_size=30, d_model=16, num_heads=2, d_ff=32,
    ...                            num_classes=3)
    >>> model = NgramEncoderClassifier(config, ngram_buckets=64)
    >>> model(torch.randint(0, 30, (4, 7))).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor, nn

from multihead.modules import EncoderClassifier, TransformerConfig
from multihead.tasks.tokenize import pad_rows
from multihead.train.optim import make_optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ClassifierOptions(TypedDict, total=False):
    """The keyword options of :meth:`EncoderClassifier.forward`."""

    token_type_ids: Tensor | None


__all__ = [
    "BIGRAM_PRIME",
    "NgramEncoderClassifier",
    "bigram_buckets",
    "fit_mixing_on_rows",
    "fit_mixing_weights",
    "length_batches",
    "new_text_model",
    "text_model_loss",
    "text_model_optimizer",
]

# A prime above any vocabulary we build (at most 30,000 pieces), so that (a, b) -> a * P + b is
# one-to-one before the modulo; only the bucket count then makes bigrams collide.
BIGRAM_PRIME = 1_000_003


def bigram_buckets(ids: Tensor, buckets: int) -> Tensor:
    """The hash bucket of each pair of neighbouring ids: ``(B, N)`` -> ``(B, N - 1)`` in
    ``[0, buckets)``; deterministic (plain integer arithmetic, no salted string hash), so a
    checkpoint classifies the same on every machine.

    Example:
        >>> bigram_buckets(torch.tensor([[3, 5, 7]]), 100).tolist()
        [[14, 22]]
    """
    return (ids[:, :-1] * BIGRAM_PRIME + ids[:, 1:]) % buckets


class NgramEncoderClassifier(EncoderClassifier):
    """:class:`EncoderClassifier` plus a linear term on hashed unigrams and bigrams.

    ``logits = head(mean_n encoder(ids)_n) + mean_g W[g]``, where ``g`` runs over the text's
    word-piece unigrams (row = piece id) and bigrams (row = ``V + bigram_buckets``) among real
    tokens. Shapes: ``ids (B, N)``, ``padding_mask (B, N)`` (True = real) -> ``(B, C)``.
    Padded positions never change the result. The ``state_dict`` is the encoder classifier's
    plus ``ngrams.weight (V + ngram_buckets, C)``.
    """

    def __init__(self, config: TransformerConfig, ngram_buckets: int) -> None:
        super().__init__(config)
        if not isinstance(ngram_buckets, int) or isinstance(ngram_buckets, bool):
            raise TypeError(f"ngram_buckets must be an int, got {type(ngram_buckets).__name__}")
        if ngram_buckets < 1:
            raise ValueError(f"ngram_buckets must be >= 1, got {ngram_buckets}")
        assert config.num_classes is not None  # EncoderClassifier has checked it
        self.ngram_buckets = ngram_buckets
        self.ngrams = nn.Embedding(config.vocab_size + ngram_buckets, config.num_classes)
        nn.init.zeros_(self.ngrams.weight)  # start as the encoder alone
        # Weights of the two parts' logits in the sum: 1 and 1 while training, then fitted on
        # validation data by :func:`fit_mixing_weights` (a buffer: saved, never trained).
        self.register_buffer("mix", torch.ones(2))

    def ngram_logits(self, ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The n-gram term alone: ``(B, N)`` ids -> ``(B, C)``, the mean of the weights of
        the text's unigrams and bigrams (zeros for a text without real tokens)."""
        if padding_mask is None:
            padding_mask = torch.ones_like(ids, dtype=torch.bool)
        rows = torch.cat([ids, self.config.vocab_size + bigram_buckets(ids, self.ngram_buckets)], 1)
        real = torch.cat([padding_mask, padding_mask[:, :-1] & padding_mask[:, 1:]], 1)
        weight = real.to(self.ngrams.weight.dtype).unsqueeze(-1)  # (B, 2N - 1, 1)
        total = (self.ngrams(rows) * weight).sum(1)  # (B, C)
        return total / weight.sum(1).clamp_min(1.0)

    def parts(self, ids: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder's logits and :meth:`ngram_logits`, each ``(B, C)``, before the
        mixing weights ``mix`` of :meth:`forward`."""
        return super().forward(ids, padding_mask), self.ngram_logits(ids, padding_mask)

    def forward(
        self, ids: Tensor, padding_mask: Tensor | None = None, **options: Unpack[ClassifierOptions]
    ) -> Tensor:
        """Class logits ``(B, C)``: ``mix[0]`` times the encoder's (``options`` as in
        :meth:`EncoderClassifier.forward`) plus ``mix[1]`` times :meth:`ngram_logits`."""
        logits = super().forward(ids, padding_mask, **options)
        mix = self.get_buffer("mix")
        return mix[0] * logits + mix[1] * self.ngram_logits(ids, padding_mask)


def new_text_model(config: TransformerConfig, ngram_buckets: int | None) -> EncoderClassifier:
    """The model a text-classifier checkpoint holds: with an n-gram term when
    ``ngram_buckets > 0``; without when it is 0 or None (checkpoints from before the term)."""
    if ngram_buckets:
        return NgramEncoderClassifier(config, ngram_buckets)
    return EncoderClassifier(config)


def text_model_optimizer(
    model: EncoderClassifier, *, lr: float, weight_decay: float, ngram_lr_scale: float
) -> torch.optim.AdamW:
    """AdamW as :func:`~multihead.train.optim.make_optimizer`, with the n-gram weights of an
    :class:`NgramEncoderClassifier` in a group of their own at ``ngram_lr_scale * lr`` (and no
    decay, as any embedding table): each of those weights is updated only by the texts that
    hold its n-gram, so a linear model on sparse counts needs far larger steps than the encoder
    to fit in a few epochs (fastText trains at rates near 0.1)."""
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    if isinstance(model, NgramEncoderClassifier):
        ngrams = model.ngrams.weight
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if p is not ngrams]
        optimizer.add_param_group(
            {"params": [ngrams], "lr": lr * ngram_lr_scale, "weight_decay": 0.0}
        )
    return optimizer


def text_model_loss(
    model: EncoderClassifier,
    ids: Tensor,
    padding_mask: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    label_smoothing: float,
    ngram_loss_weight: float,
) -> Tensor:
    """The training loss: cross-entropy of the model's logits ``(B, C)`` against ``target
    (B,)``, plus, for an :class:`NgramEncoderClassifier`, ``ngram_loss_weight`` times the
    cross-entropy of its n-gram term alone.

    Why the second term: the encoder fits the training set within a few epochs, after which
    the loss of the sum teaches the n-gram term nothing more; with a loss of its own it learns
    to classify on its own (as fastText alone does), with errors that differ from the encoder's.
    """
    if isinstance(model, NgramEncoderClassifier) and ngram_loss_weight:
        encoder, ngram = model.parts(ids, padding_mask)
        loss = nn.functional.cross_entropy(
            encoder + ngram, target, weight=weight, label_smoothing=label_smoothing
        )
        return loss + ngram_loss_weight * nn.functional.cross_entropy(ngram, target, weight=weight)
    logits = model(ids, padding_mask)
    return nn.functional.cross_entropy(
        logits, target, weight=weight, label_smoothing=label_smoothing
    )


def fit_mixing_weights(
    encoder: Tensor, ngram: Tensor, target: Tensor, *, weight: Tensor | None = None
) -> Tensor:
    """The positive weights ``(a, b)`` minimising the cross-entropy of ``a * encoder + b *
    ngram`` (logits ``(B, C)`` each) against ``target (B,)``, as a tensor ``(2,)``; each kept
    within ``[e^-4, e^4]`` so that separable data cannot send them to infinity.

    Fitted on validation data after training, as temperature scaling (Guo et al., 2017) or
    stacking: on the training set the encoder ends near zero loss, so the sum learned there
    leaves the n-gram term, whose errors differ, too small a say on new texts. Two numbers fitted
    on held-out texts cannot overfit them noticeably.

    Example:
        >>> enc = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> ngram = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> a, b = fit_mixing_weights(enc, ngram, torch.tensor([0, 1, 1])).tolist()
        >>> b > a
        True
    """
    enc, ng = encoder.detach().double(), ngram.detach().double()
    w = None if weight is None else weight.double()
    log_ab = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_ab], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        a, b = log_ab.clamp(-4.0, 4.0).exp()
        loss = nn.functional.cross_entropy(a * enc + b * ng, target, weight=w)
        loss.backward()
        return loss

    opt.step(closure)
    return log_ab.detach().clamp(-4.0, 4.0).exp().float()


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of indices into ``lengths`` for one pass over the data."""
    # Shuffle, then sort within windows of 50 batches by length so that batches pad little,
    # then shuffle the batches: nearly the randomness of plain shuffling at less padding cost.
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def fit_mixing_on_rows(
    model: EncoderClassifier,
    rows: Sequence[Sequence[int]],
    targets: Sequence[int],
    pad_id: int,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """:func:`fit_mixing_weights` on ``model``'s two parts over the texts ``rows`` (ids)."""
    if not isinstance(model, NgramEncoderClassifier):
        raise TypeError(f"model must be an NgramEncoderClassifier, got {type(model).__name__}")
    model.eval()
    parts = [model.parts(*pad_rows(rows[i : i + 128], pad_id)) for i in range(0, len(rows), 128)]
    encoder, ngram = (torch.cat(p) for p in zip(*parts, strict=True))
    with torch.enable_grad():
        return fit_mixing_weights(encoder, ngram, torch.tensor(list(targets)), weight=weight)
