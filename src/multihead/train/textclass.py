"""Train an :class:`~multihead.modules.EncoderClassifier` on labelled texts a user brings.

The recipe, chosen so that it carries over to other sentence-classification files rather than
being tuned to one:

* a WordPiece vocabulary learned from the training texts (:mod:`multihead.tasks.tokenize`),
  sized from how many words occur at least twice;
* a small pre-norm encoder whose depth grows with the amount of data, mean-pooled;
* AdamW with warm-up and cosine decay over a fixed number of epochs, evaluated once per epoch
  (on small data an "epoch" is several passes, at least :data:`MIN_UPDATES_PER_EPOCH` updates),
  with early stopping on validation macro-F1 and the best weights kept;
* a linear term on the text's hashed word-piece unigrams and bigrams added to the encoder's
  logits and trained with it (fastText's bag of n-grams;
  :class:`~multihead.train.textmodel.NgramEncoderClassifier`);
* class-weighted cross-entropy (``n / (C * n_c)``, sklearn's "balanced") when the most
  frequent class is over 1.5 times as common as the rarest;
* an ensemble of :attr:`TextClassConfig.ensemble` such models trained from different seeds
  on the same tokenizer, whose probabilities are averaged (Dietterich, 2000): single models
  on a few thousand sentences differ by a point or two from seed to seed, and the average is
  steadier and better than a typical member.

Everything the classifier needs (weights, config, labels, tokenizer JSON) is in one checkpoint
written atomically with :func:`multihead.train.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from multihead.modules import EncoderClassifier, TransformerConfig
from multihead.tasks.textclass import TextExample, check_labels
from multihead.tasks.tokenize import WordPieceTokenizer, pad_rows, suggest_vocab_size
from multihead.train.checkpoint import load_checkpoint, save_checkpoint
from multihead.train.optim import make_scheduler
from multihead.train.textmodel import (
    fit_mixing_on_rows,
    length_batches,
    new_text_model,
    text_model_loss,
    text_model_optimizer,
)

__all__ = [
    "CHECKPOINT_KIND",
    "TextClassConfig",
    "TextClassResult",
    "TextClassifier",
    "classification_metrics",
    "load_text_classifier",
    "train_text_classifier",
]

CHECKPOINT_KIND = "textclass"
MIN_UPDATES_PER_EPOCH = 50


@dataclass(frozen=True, kw_only=True)
class TextClassConfig:
    """Settings of :func:`train_text_classifier`; ``None`` fields are chosen from the data."""

    vocab_size: int | None = None  # None: suggest_vocab_size (words seen twice or more)
    d_model: int = 128  # as the other CPU recipes; wider overfits a few thousand sentences
    num_heads: int = 4
    num_layers: int | None = None  # None: 1 below 2,000 training texts, else 2
    d_ff: int = 256
    dropout: float = 0.3  # small data: far above the paper's 0.1
    # Training pieces replaced by [UNK] at this rate (word dropout, Iyyer et al., 2015): the
    # model cannot lean on one rare word, which is most of its overfitting on small data.
    word_dropout: float = 0.1
    max_len: int = 128  # word pieces kept per text; longer texts are cut
    positional: str = "sinusoidal"  # any TransformerConfig.positional
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    # The cosine schedule's length. Short, as fastText's 5 and BERT fine-tuning's 2-4: on a
    # few thousand sentences the encoder fits the training set by epoch 3 and a longer
    # schedule only waits for patience to run out; the best epoch's weights are kept.
    epochs: int = 4
    patience: int = 4  # epochs without a better validation macro-F1 before stopping
    # Evaluate and keep an exponential moving average of the weights (Polyak & Juditsky, 1992):
    # on a few thousand texts the raw weights swing from batch to batch; the average does not.
    # None: 1 - 2 / (updates per epoch), an average over about the last half epoch.
    ema_decay: float | None = None
    label_smoothing: float = 0.0
    class_weights: str = "auto"  # "auto" (when imbalanced) | "balanced" | "none"
    # Stop after the epoch that passes this wall time (all members together; a member after
    # the first starts only if it is expected to finish in time).
    max_seconds: float | None = None
    seed: int = 0  # member k of the ensemble uses seed + k
    # Members trained (seeds seed, seed + 1, ...) and averaged. 5 fits five ~50-s SST-2
    # trainings in the 5-minute budget on 2 lightly loaded CPU cores (ensemble_seconds
    # drops the last ones on a busier machine).
    ensemble: int = 5
    # Members after the first start only if one as slow as the slowest so far would end within
    # this many seconds of the start (and within max_seconds): extra members are a bonus that
    # small data sets can afford; on large data, or a busy machine, the run gets fewer of them
    # rather than taking K times as long. None: always train all of them.
    ensemble_seconds: float | None = 300.0
    # The linear n-gram term (multihead.train.textmodel): hash buckets of word-piece bigrams
    # (0: the encoder alone; None: 2**18, whose rows of C weights keep collisions rare up to
    # ~100k distinct bigrams, fewer above 8 classes so that the table stays at 2**21 weights),
    # its learning rate over ``lr`` and the weight of its own cross-entropy (both explained in
    # text_model_optimizer and text_model_loss).
    ngram_buckets: int | None = None
    ngram_lr_scale: float = 30.0
    ngram_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "d_ff", "max_len", "batch_size", "epochs", "ensemble"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.ngram_buckets is not None and (
            not isinstance(self.ngram_buckets, int) or self.ngram_buckets < 0
        ):
            raise ValueError(f"ngram_buckets must be an int >= 0, got {self.ngram_buckets!r}")
        if not self.ngram_loss_weight >= 0:
            raise ValueError(f"ngram_loss_weight must be >= 0, got {self.ngram_loss_weight!r}")
        if not self.ngram_lr_scale > 0:
            raise ValueError(f"ngram_lr_scale must be > 0, got {self.ngram_lr_scale!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.class_weights not in ("auto", "balanced", "none"):
            raise ValueError(
                f"class_weights must be 'auto', 'balanced' or 'none', got {self.class_weights!r}"
            )
        for name in ("max_seconds", "ensemble_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        for name in ("dropout", "word_dropout", "ema_decay", "label_smoothing"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TextClassResult:
    """What :func:`train_text_classifier` returns (metrics are fractions in [0, 1])."""

    checkpoint: Path
    labels: list[str]
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    train_seconds: float
    history: list[dict[str, float]]  # per epoch: train loss, valid loss/accuracy/macro_f1
    valid: dict[str, Any]
    test: dict[str, Any] | None
    class_weights: list[float] | None
    model_config: dict[str, Any] = field(default_factory=dict)
    # One entry per ensemble member: seed, epochs_run, best_epoch, best validation accuracy.
    members: list[dict[str, Any]] = field(default_factory=list)


class TextClassifier:
    """A trained classifier: its model(s), tokenizer and label names.

    With several models (an ensemble) the class probabilities are their mean and the word
    attention is the mean of theirs.

    Example:
        >>> clf = load_text_classifier("runs/textclass/checkpoint.pt")  # doctest: +SKIP
        >>> clf.predict(["a gorgeous , witty film"])[0]                  # doctest: +SKIP
        ['1']
    """

    def __init__(
        self,
        model: EncoderClassifier | Sequence[EncoderClassifier],
        tokenizer: WordPieceTokenizer,
        labels: Sequence[str],
        max_len: int,
    ) -> None:
        models = [model] if isinstance(model, EncoderClassifier) else list(model)
        if not models:
            raise ValueError("model must be an EncoderClassifier or a non-empty list of them")
        self.models = [m.eval() for m in models]
        self.model = self.models[0]  # the first member, for code that wants a single model
        self.tokenizer = tokenizer
        self.labels, self.max_len = list(labels), max_len

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
        """Class probabilities ``(B, C)`` for ``texts``, columns in :attr:`labels` order
        (the mean over the ensemble's members)."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.encode_batch(texts[i : i + batch_size], max_len=self.max_len)
            probs = [torch.softmax(m.eval()(ids, mask).float(), dim=-1) for m in self.models]
            out.append(torch.stack(probs).mean(0))
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def predict(self, texts: Sequence[str]) -> tuple[list[str], Tensor]:
        """The most probable label of each text, and the probabilities ``(B, C)``."""
        probs = self.probabilities(texts)
        return [self.labels[int(i)] for i in probs.argmax(-1)], probs

    @torch.no_grad()
    def word_attention(self, text: str) -> tuple[list[str], Tensor]:
        """The words of ``text`` and the last layer's attention the pooled output gives them.

        The classifier reads the mean of the last layer's outputs, so the weight a word gets is
        the last layer's attention averaged over heads and over every (real) query position,
        summed over the word's pieces: ``(W,)``, summing to 1.
        """
        words, piece_word = self.tokenizer.word_index(text, max_len=self.max_len)
        ids, mask = self.tokenizer.encode_batch([text], max_len=self.max_len)
        maps = [m.attention_maps(ids, mask).encoder_self for m in self.models]
        if not all(maps) or not piece_word:
            return words, torch.full((len(words),), 1.0 / max(1, len(words)))
        # (N,): heads, then queries, then ensemble members
        pooled = torch.stack([m[-1][0].float().mean(dim=(0, 1)) for m in maps]).mean(0)
        weights = torch.zeros(len(words)).index_add_(
            0, torch.tensor(piece_word), pooled[: len(piece_word)]
        )
        return words, weights


def classification_metrics(
    targets: Sequence[int], predictions: Sequence[int], num_classes: int
) -> dict[str, Any]:
    """Accuracy, macro-F1 (mean of per-class F1; a class never predicted nor present counts 0)
    and the confusion matrix ``[true][predicted]``.

    Example:
        >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2)
        >>> m["accuracy"], round(m["macro_f1"], 4), m["confusion"]
        (0.75, 0.7333, [[1, 1], [0, 2]])
    """
    if len(targets) != len(predictions):
        raise ValueError(
            f"targets and predictions differ in length: {len(targets)}, {len(predictions)}"
        )
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(targets, predictions, strict=True):
        confusion[t][p] += 1
    f1s = []
    for c in range(num_classes):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(num_classes))
        actual = sum(confusion[c])
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    n = max(1, len(targets))
    return {
        "accuracy": sum(confusion[c][c] for c in range(num_classes)) / n,
        "macro_f1": sum(f1s) / num_classes,
        "confusion": confusion,
        "n": len(targets),
    }


def _class_weights(counts: Sequence[int], mode: str) -> Tensor | None:
    if mode == "none" or (mode == "auto" and max(counts) <= 1.5 * min(counts)):
        return None
    n, c = sum(counts), len(counts)
    return torch.tensor([n / (c * k) for k in counts], dtype=torch.float32)


@torch.no_grad()
def _evaluate(
    model: nn.Module | Sequence[nn.Module],
    rows: list[list[int]],
    targets: list[int],
    pad_id: int,
    num_classes: int,
) -> dict[str, Any]:
    # Several models: an ensemble, scored on the mean of their probabilities.
    models = [model] if isinstance(model, nn.Module) else list(model)
    predictions, loss_sum = [], 0.0
    for i in range(0, len(rows), 128):
        ids, mask = pad_rows(rows[i : i + 128], pad_id)
        probs = torch.stack([torch.softmax(m.eval()(ids, mask).float(), -1) for m in models])
        log_probs = probs.mean(0).clamp_min(1e-12).log()
        target = torch.tensor(targets[i : i + 128])
        loss_sum += float(nn.functional.nll_loss(log_probs, target, reduction="sum"))
        predictions += log_probs.argmax(-1).tolist()
    metrics = classification_metrics(targets, predictions, num_classes)
    metrics["loss"] = loss_sum / max(1, len(rows))
    metrics["predictions"] = predictions
    return metrics


def build_model_config(
    config: TextClassConfig, vocab_size: int, num_classes: int, n_train: int
) -> TransformerConfig:
    """The :class:`TransformerConfig` that :func:`train_text_classifier` uses for this data."""
    layers = config.num_layers if config.num_layers is not None else (1 if n_train < 2000 else 2)
    return TransformerConfig(
        vocab_size=vocab_size,
        d_model=config.d_model,
        num_heads=config.num_heads,
        num_encoder_layers=layers,
        num_decoder_layers=0,
        d_ff=config.d_ff,
        dropout=config.dropout,
        max_len=config.max_len,
        positional=config.positional,
        num_classes=num_classes,
    )


def train_text_classifier(
    train: Sequence[TextExample],
    valid: Sequence[TextExample],
    *,
    test: Sequence[TextExample] | None = None,
    config: TextClassConfig | None = None,
    out_dir: str | os.PathLike[str] = "runs/textclass",
    log: Callable[[str], None] | None = None,
) -> TextClassResult:
    """Learn a tokenizer and train an :class:`EncoderClassifier` on ``train``, stopping on
    ``valid``; evaluate the best weights on ``valid`` and ``test``; write ``checkpoint.pt``.

    Labels in ``valid``/``test`` unseen in ``train``, or a single training class, raise a
    ``ValueError`` naming the line. ``log`` receives one line per epoch.

    Example:
        >>> from multihead.tasks.textclass import generated_examples
        >>> import tempfile
        >>> data = generated_examples(200)
        >>> r = train_text_classifier(data[:160], data[160:], out_dir=tempfile.mkdtemp(),
        ...     config=TextClassConfig(epochs=1, d_model=32, d_ff=64, ensemble=2))
        >>> r.labels
        ['neg', 'pos']
    """
    config = config or TextClassConfig()
    others = [("validation", valid)] + ([("test", test)] if test else [])
    labels = check_labels(train, others)
    if not valid:
        raise ValueError("valid must hold at least one example (early stopping needs it)")
    index = {label: i for i, label in enumerate(labels)}
    if config.ngram_buckets is None:  # the dense table's size is buckets x classes
        config = dataclasses.replace(config, ngram_buckets=min(2**18, 2**21 // len(labels)))

    texts = [e.text for e in train]
    vocab_size = config.vocab_size or suggest_vocab_size(texts)
    tokenizer = WordPieceTokenizer.train(texts, vocab_size=vocab_size)

    def encode(examples: Sequence[TextExample]) -> tuple[list[list[int]], list[int]]:
        ids, mask = tokenizer.encode_batch([e.text for e in examples], max_len=config.max_len)
        rows = [row[m].tolist() for row, m in zip(ids, mask, strict=True)]
        return rows, [index[e.label] for e in examples]

    train_rows, train_y = encode(train)
    valid_rows, valid_y = encode(valid)
    counts = [Counter(train_y)[i] for i in range(len(labels))]
    weights = _class_weights(counts, config.class_weights)
    model_config = build_model_config(config, tokenizer.vocab_size, len(labels), len(train))
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    payload_base = {
        "kind": CHECKPOINT_KIND,
        "task": CHECKPOINT_KIND,
        "model_config": model_config.to_dict(),
        "train_config": config.to_dict(),
        "labels": labels,
        "tokenizer": tokenizer.to_json(),
        "max_len": config.max_len,
        "ngram_buckets": config.ngram_buckets,
    }
    data = _Data(train_rows, train_y, valid_rows, valid_y, tokenizer.pad_id, tokenizer.unk_id)
    start = time.perf_counter()
    states: list[dict[str, Tensor]] = []
    runs: list[_Member] = []
    for k in range(config.ensemble):
        elapsed = time.perf_counter() - start
        # A member after the first starts only if one as slow as the slowest so far still fits
        # the budget: a busy machine gets fewer members rather than a run past max_seconds.
        slowest = max((r.history[-1]["seconds"] for r in runs), default=0.0)
        limits = [t for t in (config.max_seconds, config.ensemble_seconds) if t is not None]
        if k and limits and elapsed + slowest > min(limits):
            if log is not None:
                log(f"ensemble: {k} member(s); another would not end within {min(limits):g} s")
            break
        budget = None if config.max_seconds is None else config.max_seconds - elapsed
        if k and log is not None:
            log(f"ensemble member {k + 1}/{config.ensemble} (seed {config.seed + k})")

        def save(state: dict[str, Tensor], epoch: int) -> None:
            # Written at each member's best epoch, so a stop at any time leaves a checkpoint
            # with the members finished so far plus the current one's best weights.
            models = [*states, state]
            save_checkpoint(
                ckpt_path, {**payload_base, "model": models[0], "models": models, "epoch": epoch}
            )

        run = _train_member(data, model_config, config, config.seed + k, weights, budget, save, log)
        if config.ngram_buckets:
            model = new_text_model(model_config, config.ngram_buckets)
            model.load_state_dict(run.state)
            # The weights of its two parts, fitted on validation (see fit_mixing_weights).
            mix = fit_mixing_on_rows(
                model, data.valid_rows, data.valid_y, data.pad_id, weight=weights
            )
            run.state["mix"] = mix
            save(run.state, run.best_epoch)
            if log is not None:
                log(f"n-gram term: weights {mix[0]:.3g} (encoder), {mix[1]:.3g} (n-grams)")
        states.append(run.state)
        runs.append(run)
    train_seconds = time.perf_counter() - start
    models = []
    for state in states:
        model = new_text_model(model_config, config.ngram_buckets)
        model.load_state_dict(state)
        models.append(model)
    valid_metrics = _evaluate(models, valid_rows, valid_y, tokenizer.pad_id, len(labels))
    test_metrics = None
    if test:
        test_rows, test_y = encode(test)
        test_metrics = _evaluate(models, test_rows, test_y, tokenizer.pad_id, len(labels))
    return TextClassResult(
        checkpoint=ckpt_path,
        labels=labels,
        epochs_run=sum(len(r.history) for r in runs),
        best_epoch=runs[0].best_epoch,
        stopped_early=any(r.stopped_early for r in runs),
        train_seconds=train_seconds,
        history=[row for r in runs for row in r.history],
        valid=valid_metrics,
        test=test_metrics,
        class_weights=None if weights is None else weights.tolist(),
        model_config=model_config.to_dict(),
        members=[
            {
                "seed": config.seed + k,
                "epochs_run": len(r.history),
                "best_epoch": r.best_epoch,
                "valid_accuracy": r.history[r.best_epoch - 1]["valid_accuracy"],
                "valid_macro_f1": r.history[r.best_epoch - 1]["valid_macro_f1"],
                "mixing_weights": r.state["mix"].tolist() if "mix" in r.state else None,
            }
            for k, r in enumerate(runs)
        ],
    )


@dataclass
class _Data:
    train_rows: list[list[int]]
    train_y: list[int]
    valid_rows: list[list[int]]
    valid_y: list[int]
    pad_id: int
    unk_id: int


@dataclass
class _Member:
    state: dict[str, Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool


def _train_member(
    data: _Data,
    model_config: TransformerConfig,
    config: TextClassConfig,
    seed: int,
    weights: Tensor | None,
    max_seconds: float | None,
    save: Callable[[dict[str, Tensor], int], None],
    log: Callable[[str], None] | None,
) -> _Member:
    """Train one model from ``seed``, early-stopped on validation macro-F1; its best
    (moving-average) weights, per-epoch history and best epoch (``history`` rows carry
    ``member``, the seed)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    num_classes = model_config.num_classes
    assert num_classes is not None  # build_model_config sets it
    model = new_text_model(model_config, config.ngram_buckets)
    train_rows, train_y = data.train_rows, data.train_y
    # A small data set is passed over several times per "epoch", so that early stopping and
    # the schedule see enough updates between evaluations to mean something.
    passes = math.ceil(MIN_UPDATES_PER_EPOCH / math.ceil(len(train_rows) / config.batch_size))
    steps_per_epoch = passes * math.ceil(len(train_rows) / config.batch_size)
    ema_decay = config.ema_decay if config.ema_decay is not None else 1 - 2 / steps_per_epoch
    total = steps_per_epoch * config.epochs
    optimizer = text_model_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, ngram_lr_scale=config.ngram_lr_scale
    )
    scheduler = make_scheduler(
        optimizer, schedule="cosine", warmup=min(steps_per_epoch, total // 10), total_steps=total
    )
    history: list[dict[str, float]] = []
    best_f1, best_epoch, best_state = -1.0, 0, None
    averaged = copy.deepcopy(model)  # holds the moving average; evaluated and saved
    avg_params = list(averaged.parameters())
    stopped_early = False
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum, seen = 0.0, 0
        lengths = [len(r) for r in train_rows]
        for batch in [
            b for _ in range(passes) for b in length_batches(lengths, config.batch_size, rng)
        ]:
            ids, mask = pad_rows([train_rows[i] for i in batch], data.pad_id)
            if config.word_dropout > 0:
                drop = (torch.rand(ids.shape) < config.word_dropout) & mask
                ids = ids.masked_fill(drop, data.unk_id)
            target = torch.tensor([train_y[i] for i in batch])
            loss = text_model_loss(
                model,
                ids,
                mask,
                target,
                weight=weights,
                label_smoothing=config.label_smoothing,
                ngram_loss_weight=config.ngram_loss_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for a, p in zip(avg_params, model.parameters(), strict=True):
                    a.lerp_(p, 1.0 - ema_decay)
            loss_sum += float(loss.detach()) * len(batch)
            seen += len(batch)
        v = _evaluate(averaged, data.valid_rows, data.valid_y, data.pad_id, num_classes)
        row = {
            "member": seed,
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "valid_loss": v["loss"],
            "valid_accuracy": v["accuracy"],
            "valid_macro_f1": v["macro_f1"],
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if v["macro_f1"] > best_f1:
            best_f1, best_epoch = v["macro_f1"], epoch
            best_state = {k: t.detach().clone() for k, t in averaged.state_dict().items()}
            save(best_state, epoch)
        if log is not None:
            log(
                f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid loss {v['loss']:.4f}, "
                f"accuracy {v['accuracy']:.4f}, macro-F1 {v['macro_f1']:.4f}"
                + (" (best)" if best_epoch == epoch else "")
            )
        if epoch - best_epoch >= config.patience:
            stopped_early = True
            break
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            stopped_early = True
            break
    assert best_state is not None  # at least one epoch ran
    return _Member(best_state, history, best_epoch, stopped_early)


def load_text_classifier(path: str | os.PathLike[str]) -> TextClassifier:
    """Load a checkpoint written by :func:`train_text_classifier` (``weights_only`` loading).

    ``ValueError`` when the file holds another kind of model.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"{str(path)!r} holds a {ckpt.get('kind') or ckpt.get('task')!r} model, not a text "
            f"classifier from `multihead train textclass`"
        )
    config = TransformerConfig.from_dict(ckpt["model_config"])
    models = []
    # "models" holds every ensemble member; checkpoints from before ensembles have "model",
    # and those from before the n-gram term no "ngram_buckets".
    buckets = int(ckpt.get("ngram_buckets", 0))
    for state in ckpt.get("models") or [ckpt["model"]]:
        model = new_text_model(config, buckets)
        model.load_state_dict(state)
        models.append(model)
    tokenizer = WordPieceTokenizer.from_json(ckpt["tokenizer"])
    return TextClassifier(models, tokenizer, ckpt["labels"], int(ckpt["max_len"]))
