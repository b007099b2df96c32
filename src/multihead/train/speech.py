"""A Transformer speech classifier (spoken words) and its training with augmentation.

The model (:class:`SpeechClassifier`), as in speech Transformers (Dong et al., 2018;
Gulati et al., 2020, "Conformer", Sec. 2): per-utterance normalised log-mel frames ->
two stride-2 3x3 convolutions (4x fewer frames, so attention is 16x cheaper) -> a linear map to
``d_model`` -> pre-norm Transformer encoder layers with rotary positions -> the mean over real
frames -> a linear classifier.

Training augments every batch afresh (:mod:`multihead.train.speech_augment`: noise, speed and
vocal-tract stretches, SpecAugment, mixup, chosen by a named recipe), and keeps the weights of
the epoch that does best on validation. This module re-exports the augmentation's public
names, so ``from multihead.train.speech import AugmentConfig`` keeps working.

Random gain is not needed: per-utterance normalisation (``normalise``) removes it.

Shape legend: ``B`` batch, ``T`` samples, ``F`` frames, ``M`` mel bands, ``E`` model size,
``C`` classes.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multihead.modules import EncoderLayer
from multihead.tasks.features import (
    MelConfig,
    batch_features,
    mel_filterbank,
    pad_waves,
    speaker_offsets,
)
from multihead.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from multihead.train.speech_augment import (
    RECIPES,
    AugmentConfig,
    add_noise,
    augment_features,
    mixup_loss,
    speech_recipe,
    stretch_features,
)
from multihead.train.speech_report import confusion_matrix, plot_confusion

__all__ = [
    "RECIPES",
    "AugmentConfig",
    "SpeechCheckpoint",
    "SpeechClassifier",
    "SpeechEnsemble",
    "SpeechModel",
    "SpeechModelConfig",
    "SpeechTrainConfig",
    "SpeechTrainResult",
    "augment_features",
    "batch_features",
    "confusion_matrix",
    "load_speech_checkpoint",
    "pad_waves",
    "plot_confusion",
    "predict_waves",
    "save_speech_checkpoint",
    "speech_recipe",
    "stretch_features",
    "train_speech",
]


@dataclass(frozen=True, kw_only=True)
class SpeechModelConfig:
    """Shape of :class:`SpeechClassifier` (small: a few thousand clips train it on a CPU)."""

    n_mels: int = 40
    conv_channels: int = 16  # the convolutions cost most per parameter; 16 is enough
    d_model: int = 96
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int = 192
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeechModelConfig:
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class SpeechTrainConfig:
    """Optimisation and stopping."""

    max_epochs: int = 100  # rarely reached: early stopping or the time limit ends a run first
    batch_size: int = 64  # per-sample cost on a CPU falls by a third from 32 to 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 2
    patience: int = 20  # epochs without a better validation accuracy before stopping
    valid_fraction: float = 0.1
    time_limit_s: float | None = 270.0  # stop in time for a 5-minute budget on 2 cores
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")


class SpeechClassifier(nn.Module):
    """Convolutional subsampling + Transformer encoder + mean pooling + linear classifier.

    Shapes: ``features (B, F, M)``, ``lengths (B,)`` real frames -> ``logits (B, C)``.

    Example:
        >>> model = SpeechClassifier(SpeechModelConfig(), num_classes=10)
        >>> model(torch.randn(2, 50, 40), torch.tensor([50, 30])).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: SpeechModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        c = config.conv_channels
        self.conv1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        bands = (config.n_mels + 3) // 4  # two stride-2 convolutions with padding 1
        self.project = nn.Linear(c * bands, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(
                config.d_model,
                config.num_heads,
                config.d_ff,
                dropout=config.dropout,
                norm_first=True,
                rotary=True,  # relative positions: the same word said later scores the same
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, num_classes)

    @staticmethod
    def subsampled_lengths(lengths: Tensor) -> Tensor:
        """Frames left after the two stride-2 convolutions (kernel 3, padding 1)."""
        once = (lengths - 1) // 2 + 1
        return (once - 1) // 2 + 1

    def forward(
        self, features: Tensor, lengths: Tensor, *, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``features (B, F, M)``, ``lengths (B,)`` -> ``logits (B, C)`` (and, with
        ``need_weights``, each layer's attention ``(B, H, F/4, F/4)``)."""
        b, _, m = features.shape
        if m != self.config.n_mels:
            raise ValueError(f"features must have {self.config.n_mels} mel bands, got {m}")
        once = (lengths - 1) // 2 + 1
        x = F.gelu(self.conv1(features.unsqueeze(1)))  # (B, C, F/2, M/2)
        # Zero the frames past each utterance's end, so the second convolution sees the same
        # zeros there as at the end of an unpadded utterance: padding never changes a result.
        past = torch.arange(x.shape[2], device=x.device)[None, :] >= once[:, None]  # (B, F/2)
        x = F.gelu(self.conv2(x.masked_fill(past[:, None, :, None], 0.0)))  # (B, C, F/4, M/4)
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, F/4, C * M/4)
        x = self.dropout(self.project(x))  # (B, F/4, E)
        n = x.shape[1]
        real = torch.arange(n, device=x.device)[None, :] < self.subsampled_lengths(lengths)[:, None]
        maps: list[Tensor] = []
        for layer in self.layers:
            x, w = layer(x, padding_mask=real, need_weights=need_weights)
            if w is not None:
                maps.append(w)
        x = self.norm(x)
        pooled = x.masked_fill(~real.unsqueeze(-1), 0.0).sum(1) / real.sum(1, keepdim=True).clamp(
            min=1
        )  # (B, E)
        logits = self.head(pooled)
        return (logits, maps) if need_weights else logits


class SpeechEnsemble(nn.Module):
    """Several :class:`SpeechClassifier` of the same classes, trained with different seeds;
    its "logits" are the log of their mean probabilities, so a softmax of them averages the
    members' probabilities.

    Shapes: ``features (B, F, M)``, ``lengths (B,)`` -> ``(B, C)``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> members = [SpeechClassifier(SpeechModelConfig(), 3).eval() for _ in range(2)]
        >>> x, n = torch.randn(1, 20, 40), torch.tensor([20])
        >>> mean = (members[0](x, n).softmax(-1) + members[1](x, n).softmax(-1)) / 2
        >>> torch.allclose(SpeechEnsemble(members)(x, n).softmax(-1), mean, atol=1e-6)
        True
    """

    def __init__(self, members: Sequence[SpeechClassifier]) -> None:
        super().__init__()
        if not members:
            raise ValueError("members must hold at least one SpeechClassifier, got none")
        classes = {m.head.out_features for m in members}
        if len(classes) != 1:
            raise ValueError(f"members must have the same number of classes, got {classes}")
        # A checkpoint stores one configuration for all members.
        configs = [m.config for m in members]
        if any(c != configs[0] for c in configs):
            raise ValueError(f"members must share one SpeechModelConfig, got {configs}")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    @property
    def head(self) -> nn.Linear:
        """The first member's classifier layer (its ``out_features`` is the class count)."""
        head = self.members[0].head
        assert isinstance(head, nn.Linear)
        return head

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        probs = torch.stack([torch.softmax(m(features, lengths), -1) for m in self.members])
        return probs.mean(0).clamp(min=1e-30).log()  # (B, C)


SpeechModel = SpeechClassifier | SpeechEnsemble  # what predictions and checkpoints take


@torch.no_grad()
def predict_waves(
    model: SpeechModel,
    waves: Sequence[np.ndarray],
    mel: MelConfig,
    *,
    batch_size: int = 64,
    views: Sequence[tuple[float, float]] = ((1.0, 1.0),),
    offsets: Tensor | None = None,
) -> Tensor:
    """Class probabilities for mono waveforms at ``mel.sample_rate``: ``-> (B, C)``.

    ``offsets (B, M)``: each clip's speaker mean, for a model trained with
    ``mel.speaker_norm`` (:func:`~multihead.tasks.features.speaker_offsets`).

    ``views`` are ``(speed, warp)`` stretches of each utterance's features
    (:func:`~multihead.train.speech_augment.stretch_features`); the probabilities are averaged
    over them (test-time augmentation). The default, one view ``(1, 1)``, is the plain
    prediction.

    Utterances are batched by similar length so little padding is computed. Features are
    computed one utterance at a time, so a file's result never depends on the files it is
    batched with.
    """
    if not views:
        raise ValueError("views must hold at least one (speed, warp) pair, got none")
    if mel.speaker_norm and offsets is None:
        raise ValueError(
            "offsets must give each clip's speaker mean for a model trained with "
            "mel.speaker_norm (speaker_offsets, or the checkpoint's speaker_mean for a speaker "
            "of whom only one clip is at hand), got None"
        )
    if offsets is not None and tuple(offsets.shape) != (len(waves), mel.n_mels):
        raise ValueError(
            f"offsets must be (clips, n_mels) = {(len(waves), mel.n_mels)}, "
            f"got {tuple(offsets.shape)}"
        )
    model.eval()
    fb = mel_filterbank(mel)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    probs = torch.zeros(len(waves), model.head.out_features)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        one = [
            batch_features(
                *pad_waves([waves[i]], mel),
                mel,
                fb,
                None if offsets is None else offsets[i : i + 1],
            )[0][0]
            for i in idx
        ]  # (F_i, M) each
        frames = torch.tensor([len(f) for f in one])
        feats = torch.nn.utils.rnn.pad_sequence(one, batch_first=True)  # (B, F, M)
        for speed, warp in views:
            x, n = stretch_features(feats, frames, speed=speed, warp=warp)
            logits = model(x, n)
            assert isinstance(logits, Tensor)
            probs[idx] += torch.softmax(logits, dim=-1) / len(views)
    return probs


def _score(record: dict[str, float]) -> tuple[float, float]:
    """What makes an epoch better: validation accuracy, and between equal accuracies the lower
    validation loss (a share of the training speakers' clips is soon classified perfectly; the
    loss still tells a more confident model from a lucky one)."""
    return record["valid_accuracy"], -record["valid_loss"]


@dataclass
class SpeechTrainResult:
    """What :func:`train_speech` returns: the best model (by validation accuracy) and its
    history. ``history`` has one dict per epoch (``epoch``, ``loss``, ``valid_accuracy``,
    ``valid_loss``, ``seconds``); ``step_losses`` the training loss of every update. The rest is read off
    the history, so it cannot disagree with it."""

    model: SpeechClassifier
    history: list[dict[str, float]]
    step_losses: list[float]
    stopped_by: str
    # With mel.speaker_norm: the training speakers' means averaged, speakers weighted alike
    # (M,), the stand-in for a speaker of whom only one clip is at hand.
    speaker_mean: Tensor | None = None

    @property
    def best(self) -> dict[str, float]:
        """The record of the epoch whose weights ``model`` holds (the first best one)."""
        return max(self.history, key=_score)

    @property
    def best_epoch(self) -> int:
        return int(self.best["epoch"])

    @property
    def valid_accuracy(self) -> float:
        return self.best["valid_accuracy"]

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def seconds(self) -> float:
        return self.history[-1]["seconds"]


LabelledWaves = tuple[Sequence[np.ndarray], Sequence[int]]  # (waves (T_i,) each, class ids)


def _split_valid(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded, per-class split of indices into ``(train, valid)``."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    valid: list[int] = []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        n_valid = round(len(idx) * fraction) if len(idx) > 1 else 0
        valid += idx[:n_valid]
        train += idx[n_valid:]
    return sorted(train), sorted(valid)


def _length_batches(
    indices: Sequence[int], lengths: Tensor, batch_size: int, gen: torch.Generator
) -> list[Tensor]:
    """Shuffled batches of similar length: shuffle, sort within pools of 8 batches, cut into
    batches, shuffle the batches. Short clips then do not pay for the longest one's padding."""
    order = torch.tensor(list(indices))[torch.randperm(len(indices), generator=gen)]
    pool = batch_size * 8
    batches: list[Tensor] = []
    for s in range(0, len(order), pool):
        chunk = order[s : s + pool]
        chunk = chunk[torch.argsort(lengths[chunk])]
        batches += list(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def train_speech(
    waves: Sequence[np.ndarray],
    labels: Sequence[int],
    num_classes: int,
    *,
    mel: MelConfig,
    model_config: SpeechModelConfig,
    config: SpeechTrainConfig,
    valid: LabelledWaves | None = None,
    extra: LabelledWaves | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
    speakers: Sequence[str | None] | None = None,
) -> SpeechTrainResult:
    """Train a :class:`SpeechClassifier` with early stopping on validation accuracy.

    Args:
        waves: mono waveforms at ``mel.sample_rate``, ``(T_i,)`` each.
        labels: class ids in ``[0, num_classes)``.
        mel, model_config, config: front end, model shape and optimisation.
        valid: ``(waves, labels)`` to stop on; by default a seeded ``config.valid_fraction``
            of ``waves``, drawn per class (on a speaker split, a held-out training speaker
            measures what matters, a new voice, far better).
        extra: ``(waves, labels)`` used for training only, never for validation (synthetic
            voices, other data sets).
        progress: called with each epoch's record.
        max_steps: stop after this many updates (smoke tests).
        speakers: the speaker of each of ``waves``, needed by ``mel.speaker_norm`` (then
            ``valid`` and ``extra``, when given, each count as one speaker).
    """
    for name, pair in (("waves", (waves, labels)), ("valid", valid), ("extra", extra)):
        if pair is not None and len(pair[0]) != len(pair[1]):
            raise ValueError(
                f"{name}: waves and labels differ in length: {len(pair[0])} vs {len(pair[1])}"
            )
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    if valid is None:
        train_idx, valid_idx = _split_valid(labels, config.valid_fraction, config.seed)
        valid_waves = [waves[i] for i in valid_idx]
        valid_y = torch.tensor([labels[i] for i in valid_idx], dtype=torch.long)
    else:
        train_idx = list(range(len(waves)))
        valid_waves, valid_y = list(valid[0]), torch.tensor(list(valid[1]), dtype=torch.long)
    extra_waves, extra_labels = extra if extra is not None else ([], [])
    train_idx += range(len(waves), len(waves) + len(extra_waves))
    offsets: Tensor | None = None  # (N + extra, M) speaker means, with mel.speaker_norm
    valid_offsets: Tensor | None = None
    speaker_mean: Tensor | None = None
    if mel.speaker_norm:
        if speakers is None or len(speakers) != len(waves):
            raise ValueError(
                "speakers must name the speaker of each of waves when mel.speaker_norm is set, "
                f"got {None if speakers is None else len(speakers)} for {len(waves)} clips"
            )
        own = speaker_offsets(waves, speakers, mel)  # (N, M)
        first = {s: i for i, s in reversed(list(enumerate(speakers)))}  # one row per speaker
        speaker_mean = own[list(first.values())].mean(0)
        offsets = torch.cat([own, speaker_offsets(extra_waves, [None] * len(extra_waves), mel)])
        valid_offsets = (
            offsets[valid_idx]
            if valid is None
            else speaker_offsets(valid_waves, [None] * len(valid_waves), mel)
        )
    model = SpeechClassifier(model_config, num_classes)
    fb = mel_filterbank(mel)
    all_waves, all_lengths = pad_waves([*waves, *extra_waves], mel)
    y = torch.tensor([*labels, *extra_labels], dtype=torch.long)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total = steps_per_epoch * config.max_epochs
    warmup = max(1, steps_per_epoch * config.warmup_epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = time.perf_counter()

    def lr_factor(step: int) -> float:
        # Linear warm-up, then a cosine decay over whichever runs out first, the epochs or the
        # time limit: on a busy machine the run still ends with a small learning rate instead of
        # being cut off at its peak. (When the time limit binds, runs are not bit-reproducible.)
        done = step / total
        if config.time_limit_s:
            done = max(done, (time.perf_counter() - start) / config.time_limit_s)
        return min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    best_score, best_epoch, best_state = (-math.inf, 0.0), 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    step_losses: list[float] = []
    stopped_by = "max_epochs"
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        losses = []
        for idx in _length_batches(train_idx, all_lengths, config.batch_size, gen):
            lengths = all_lengths[idx]
            x = add_noise(all_waves[idx, : int(lengths.max())], lengths, config.augment, gen)
            feats, frames = batch_features(
                x, lengths, mel, fb, None if offsets is None else offsets[idx]
            )
            feats, frames = augment_features(feats, frames, config.augment, gen)
            loss = mixup_loss(model, feats, frames, y[idx], config.augment.mixup, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step_losses.append(loss.item())
            if max_steps is not None and len(step_losses) >= max_steps:
                break
        if valid_waves:
            probs = predict_waves(model, valid_waves, mel, offsets=valid_offsets)
            acc = float((probs.argmax(-1) == valid_y).float().mean())
            valid_loss = float(F.nll_loss(torch.log(probs.clamp(min=1e-12)), valid_y))
        else:  # no validation share: keep the lowest training loss
            acc, valid_loss = -float(np.mean(losses)), float(np.mean(losses))
        record = {
            "epoch": float(epoch),
            "loss": float(np.mean(losses)),
            "valid_accuracy": acc,
            "valid_loss": valid_loss,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if progress is not None:
            progress(record)
        if _score(record) > best_score:
            best_score, best_epoch, best_state = (
                _score(record),
                epoch,
                copy.deepcopy(model.state_dict()),
            )
        if max_steps is not None and len(step_losses) >= max_steps:
            stopped_by = "max_steps"
            break
        if epoch - best_epoch >= config.patience:
            stopped_by = "early_stopping"
            break
        if config.time_limit_s is not None and record["seconds"] >= config.time_limit_s:
            stopped_by = "time_limit"
            break
    model.load_state_dict(best_state)
    model.eval()
    return SpeechTrainResult(model, history, step_losses, stopped_by, speaker_mean)


# ------------------------------------------------------------------ checkpoints and reports

SPEECH_TASK = "speech"


def save_speech_checkpoint(
    path: str | os.PathLike[str],
    model: SpeechModel,
    *,
    mel: MelConfig,
    labels: Sequence[str],
    max_seconds: float,
    tta: Sequence[tuple[float, float]] = ((1.0, 1.0),),
    speaker_mean: Tensor | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write everything :func:`load_speech_checkpoint` needs, atomically, as plain values;
    ``tta`` are the ``(speed, warp)`` views :func:`predict_waves` should average over,
    ``speaker_mean (M,)`` the stand-in speaker mean of a ``mel.speaker_norm`` model."""
    payload: dict[str, Any] = {
        "task": SPEECH_TASK,
        "model_config": model.config.to_dict(),
        "mel_config": mel.to_dict(),
        "labels": list(labels),
        "max_seconds": float(max_seconds),
        "tta": [[float(speed), float(warp)] for speed, warp in tta],
        "speaker_mean": None if speaker_mean is None else speaker_mean.detach().cpu().float(),
    }
    if isinstance(model, SpeechEnsemble):
        payload["model_states"] = [
            {k: v.detach().cpu() for k, v in m.state_dict().items()} for m in model.members
        ]
    else:
        payload["model_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload.update(extra or {})
    return save_checkpoint(path, payload)


class SpeechCheckpoint(NamedTuple):
    """What :func:`load_speech_checkpoint` returns."""

    model: SpeechModel  # in eval mode
    mel: MelConfig  # the front end it was trained with
    labels: list[str]
    max_seconds: float  # longer recordings are refused
    tta: tuple[tuple[float, float], ...]  # (speed, warp) views to average over
    speaker_mean: Tensor | None  # (M,) with mel.speaker_norm: for a clip without its speaker


def load_speech_checkpoint(path: str | os.PathLike[str]) -> SpeechCheckpoint:
    """Model, front end, labels, longest accepted recording and test-time views from a speech
    checkpoint (one written before test-time augmentation existed has the plain view)."""
    data = load_checkpoint(path)
    if data.get("task") != SPEECH_TASK:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {data.get('task')!r} model, not a speech "
            "classifier; train one with: multihead train speech --data DIR"
        )
    labels = [str(label) for label in data["labels"]]
    # One model ("model_state") or an ensemble ("model_states").
    states = data["model_states"] if "model_states" in data else [data["model_state"]]
    config = SpeechModelConfig.from_dict(data["model_config"])
    members = [SpeechClassifier(config, len(labels)) for _ in states]
    for member, state in zip(members, states, strict=True):
        member.load_state_dict(state)
    model: SpeechModel = members[0] if len(members) == 1 else SpeechEnsemble(members)
    model.eval()
    tta = tuple((float(s), float(w)) for s, w in data.get("tta", [[1.0, 1.0]]))
    mel = MelConfig.from_dict(data["mel_config"])
    return SpeechCheckpoint(
        model, mel, labels, float(data["max_seconds"]), tta, data.get("speaker_mean")
    )
