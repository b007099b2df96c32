"""Train an :class:`~multihead.modules.EncoderClassifier` on labelled texts a user brings.

The recipe, chosen so that it carries over to other sentence-classification files rather than
being tuned to one:

* a WordPiece vocabulary learned from the training texts (:mod:`multihead.tasks.tokenize`),
  sized from how many words occur at least twice;
* a small pre-norm encoder whose depth grows with the amount of data, mean-pooled;
* AdamW with warm-up and cosine decay over a fixed number of epochs, evaluated once per epoch
  (on small data an "epoch" is several passes, at least :data:`MIN_UPDATES_PER_EPOCH` updates),
  with early stopping on validation macro-F1 and the best weights kept;
* class-weighted cross-entropy (``n / (C * n_c)``, sklearn's "balanced") when the most
  frequent class is over 1.5 times as common as the rarest.

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
from multihead.tasks.tokenize import WordPieceTokenizer, suggest_vocab_size
from multihead.train.checkpoint import load_checkpoint, save_checkpoint
from multihead.train.optim import make_optimizer, make_scheduler

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
    epochs: int = 20  # the cosine schedule's length; early stopping usually ends sooner
    patience: int = 4  # epochs without a better validation macro-F1 before stopping
    # Evaluate and keep an exponential moving average of the weights (Polyak & Juditsky, 1992):
    # on a few thousand texts the raw weights swing from batch to batch; the average does not.
    # None: 1 - 2 / (updates per epoch), an average over about the last half epoch.
    ema_decay: float | None = None
    label_smoothing: float = 0.0
    class_weights: str = "auto"  # "auto" (when imbalanced) | "balanced" | "none"
    max_seconds: float | None = None  # stop after the epoch that passes this wall time
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "d_ff", "max_len", "batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.class_weights not in ("auto", "balanced", "none"):
            raise ValueError(
                f"class_weights must be 'auto', 'balanced' or 'none', got {self.class_weights!r}"
            )
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


class TextClassifier:
    """A trained classifier: the model, its tokenizer and label names.

    Example:
        >>> clf = load_text_classifier("runs/textclass/checkpoint.pt")  # doctest: +SKIP
        >>> clf.predict(["a gorgeous , witty film"])[0]                  # doctest: +SKIP
        ['1']
    """

    def __init__(
        self,
        model: EncoderClassifier,
        tokenizer: WordPieceTokenizer,
        labels: Sequence[str],
        max_len: int,
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.labels, self.max_len = list(labels), max_len

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
        """Class probabilities ``(B, C)`` for ``texts``, columns in :attr:`labels` order."""
        self.model.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.encode_batch(texts[i : i + batch_size], max_len=self.max_len)
            out.append(torch.softmax(self.model(ids, mask).float(), dim=-1))
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
        maps = self.model.attention_maps(ids, mask).encoder_self
        if not maps or not piece_word:
            return words, torch.full((len(words),), 1.0 / max(1, len(words)))
        pooled = maps[-1][0].float().mean(dim=(0, 1))  # (N,): heads, then queries
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


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
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


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


@torch.no_grad()
def _evaluate(
    model: nn.Module, rows: list[list[int]], targets: list[int], pad_id: int, num_classes: int
) -> dict[str, Any]:
    model.eval()
    predictions, loss_sum = [], 0.0
    for i in range(0, len(rows), 128):
        ids, mask = _pad(rows[i : i + 128], pad_id)
        logits = model(ids, mask).float()
        target = torch.tensor(targets[i : i + 128])
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        predictions += logits.argmax(-1).tolist()
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
        ...     config=TextClassConfig(epochs=1, d_model=32, d_ff=64))
        >>> r.labels
        ['neg', 'pos']
    """
    config = config or TextClassConfig()
    others = [("validation", valid)] + ([("test", test)] if test else [])
    labels = check_labels(train, others)
    if not valid:
        raise ValueError("valid must hold at least one example (early stopping needs it)")
    index = {label: i for i, label in enumerate(labels)}
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

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
    model = EncoderClassifier(model_config)

    # A small data set is passed over several times per "epoch", so that early stopping and
    # the schedule see enough updates between evaluations to mean something.
    passes = math.ceil(MIN_UPDATES_PER_EPOCH / math.ceil(len(train_rows) / config.batch_size))
    steps_per_epoch = passes * math.ceil(len(train_rows) / config.batch_size)
    ema_decay = config.ema_decay if config.ema_decay is not None else 1 - 2 / steps_per_epoch
    total = steps_per_epoch * config.epochs
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(
        optimizer, schedule="cosine", warmup=min(steps_per_epoch, total // 10), total_steps=total
    )
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
    }
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
        for batch in [b for _ in range(passes) for b in _batches(lengths, config.batch_size, rng)]:
            ids, mask = _pad([train_rows[i] for i in batch], tokenizer.pad_id)
            if config.word_dropout > 0:
                drop = (torch.rand(ids.shape) < config.word_dropout) & mask
                ids = ids.masked_fill(drop, tokenizer.unk_id)
            target = torch.tensor([train_y[i] for i in batch])
            loss = nn.functional.cross_entropy(
                model(ids, mask), target, weight=weights, label_smoothing=config.label_smoothing
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
        v = _evaluate(averaged, valid_rows, valid_y, tokenizer.pad_id, len(labels))
        row = {
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
            save_checkpoint(ckpt_path, {**payload_base, "model": best_state, "epoch": epoch})
        if log is not None:
            log(
                f"epoch {epoch}: train loss {row['train_loss']:.4f}, valid loss {v['loss']:.4f}, "
                f"accuracy {v['accuracy']:.4f}, macro-F1 {v['macro_f1']:.4f}"
                + (" (best)" if best_epoch == epoch else "")
            )
        if epoch - best_epoch >= config.patience:
            stopped_early = True
            break
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            stopped_early = True
            break
    train_seconds = time.perf_counter() - start
    assert best_state is not None  # at least one epoch ran
    model.load_state_dict(best_state)
    valid_metrics = _evaluate(model, valid_rows, valid_y, tokenizer.pad_id, len(labels))
    test_metrics = None
    if test:
        test_rows, test_y = encode(test)
        test_metrics = _evaluate(model, test_rows, test_y, tokenizer.pad_id, len(labels))
    return TextClassResult(
        checkpoint=ckpt_path,
        labels=labels,
        epochs_run=len(history),
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        train_seconds=train_seconds,
        history=history,
        valid=valid_metrics,
        test=test_metrics,
        class_weights=None if weights is None else weights.tolist(),
        model_config=model_config.to_dict(),
    )


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
    model = EncoderClassifier(TransformerConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    tokenizer = WordPieceTokenizer.from_json(ckpt["tokenizer"])
    return TextClassifier(model, tokenizer, ckpt["labels"], int(ckpt["max_len"]))
