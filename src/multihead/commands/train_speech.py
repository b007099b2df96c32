"""``multihead train speech``: a spoken-word classifier trained on a folder of WAV files.

Labels come from sub-folders or from a file-name pattern (default ``^(\\w+?)_``, as in
``7_george_12.wav``); files may be 8 or 16 kHz (any rate is resampled), mono or stereo, 8 to
32-bit PCM. Broken files (empty, truncated, not WAV, 0 s, too long) are left out with a warning
naming each one. Held-out test set: ``--test-data DIR``, or ``--split index`` (recordings 0-4 of
every label and speaker), ``speaker`` (one whole speaker, ``--test-speaker``; default the last
one alphabetically) or ``random``.

The ``new-speakers`` recipe (default for ``--split speaker``) subtracts each speaker's mean
log-mel, trains an ensemble of 3 models (``--ensemble``) and stores test-time views
(``--tta speed``) for ``recognize``; ``--adapt-speaker`` also picks one vocal-tract warp per
test speaker (docs/speech.md).

Writes into --out (default runs/speech): checkpoint.pt, metrics.json, confusion.png.

Example:
    multihead train speech --data recordings/ --split speaker --test-speaker lucas
    multihead recognize --checkpoint runs/speech/checkpoint.pt clip.wav
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multihead._files import write_atomic
from multihead.commands._common import int_in, set_threads
from multihead.errors import CommandError
from multihead.tasks.features import MelConfig
from multihead.tasks.speech import (
    MAX_SECONDS,
    SPLITS,
    SpeechExample,
    load_examples,
    scan_folder,
    split_examples,
)
from multihead.tasks.synth_digits import ACCENTS, VARIANTS, espeak_available, synthetic_voices
from multihead.train.speech import (
    RECIPES,
    SpeechEnsemble,
    SpeechModelConfig,
    SpeechTrainConfig,
    confusion_matrix,
    plot_confusion,
    predict_waves,
    save_speech_checkpoint,
    speech_recipe,
    train_speech,
)
from multihead.train.speech_tta import (
    RECIPE_ENSEMBLE,
    RECIPE_TTA,
    TTA_PRESETS,
    predict_by_speaker,
    tta_views,
)

__all__ = ["add_options", "run"]


# (flag, argparse keywords) of the speech block. --data and --epochs are shared with
# textclass's block, which may have declared them already; a flag declared is kept as it is.
_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--data", {"metavar": "PATH", "help": "training data (speech: a WAV folder)"}),
    ("--test-data", {"metavar": "DIR", "help": "a separate folder of test WAV files"}),
    ("--label-regex", {"metavar": "REGEX", "help": "label = group 1 in the file name"}),
    ("--split", {"choices": SPLITS, "default": "index", "help": "default: index"}),
    ("--test-speaker", {"metavar": "NAME", "help": "for --split speaker"}),
    (
        "--valid-speaker",
        {
            "metavar": "NAME",
            "help": "stop early on this training speaker, held out from training ('none': "
            "on a 10%% share of every speaker; default: none)",
        },
    ),
    (
        "--extra-train",
        {
            "metavar": "DIR",
            "action": "append",
            "help": "more labelled WAV files for training only (repeatable)",
        },
    ),
    (
        "--synthetic-voices",
        {
            "type": int_in(0, len(ACCENTS) * len(VARIANTS)),
            "default": 0,
            "metavar": "N",
            "help": "also train on the labels said by N espeak-ng voices (default 0)",
        },
    ),
    (
        "--recipe",
        {
            "choices": RECIPES,
            "help": "front end and augmentation: 'new-speakers' (the default for --split "
            "speaker) for voices never heard in training, else 'standard'",
        },
    ),
    (
        "--tta",
        {
            "choices": tuple(TTA_PRESETS),
            "help": "test-time augmentation, stored in the checkpoint for recognize "
            f"(default: {RECIPE_TTA['new-speakers']!r} with recipe new-speakers, else "
            f"{RECIPE_TTA['standard']!r})",
        },
    ),
    (
        "--ensemble",
        {
            "type": int_in(1, 10),
            "metavar": "N",
            "help": "train N models (seeds SEED..SEED+N-1, sharing --time-limit) and average "
            f"their probabilities (default: {RECIPE_ENSEMBLE['new-speakers']} with recipe "
            f"new-speakers, else {RECIPE_ENSEMBLE['standard']})",
        },
    ),
    (
        "--adapt-speaker",
        {
            "action": "store_true",
            "help": "test: choose one vocal-tract warp per test speaker (the file names' "
            "speaker field), as recognize --adapt-speaker does for a batch",
        },
    ),
    ("--epochs", {"type": int, "help": "most passes over the data (default 100)"}),
    ("--time-limit", {"type": float, "metavar": "S", "help": "stop after S seconds (default 270)"}),
    (
        "--max-seconds",
        {
            "type": float,
            "default": MAX_SECONDS,
            "metavar": "S",
            "help": f"refuse recordings longer than S seconds (default {MAX_SECONDS:g})",
        },
    ),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    """Declare the speech options of ``multihead train`` (the shared ones -- ``--steps``,
    ``--batch-size``, ``--lr``, ``--d-model``, ``--layers``, ``--heads``, ``--out``, ``--seed``,
    ``--threads``, ``--json``, ``--no-progress`` -- are the train command's own)."""
    group = parser.add_argument_group(
        "speech", "multihead train speech --data DIR: spoken words from a folder of WAV files"
    )
    for flag, keywords in _OPTIONS:
        if flag not in parser._option_string_actions:
            group.add_argument(flag, **keywords)


def _warn_refused(refused: list[str], what: str) -> None:
    if not refused:
        return
    print(f"warning: left out {len(refused)} {what} file(s):", file=sys.stderr)
    for message in refused[:10]:
        print(f"  {message}", file=sys.stderr)
    if len(refused) > 10:
        print(f"  ... and {len(refused) - 10} more", file=sys.stderr)


def _examples(args: argparse.Namespace) -> tuple[list[SpeechExample], list[SpeechExample]]:
    if args.data is None:
        raise CommandError("train speech: --data DIR (a folder of WAV files) is required")
    # Every folder is checked before any audio is read: a typo in the last one costs nothing.
    for flag, folders in (("--test-data", [args.test_data]), ("--extra-train", args.extra_train)):
        for folder in folders or []:
            if folder is not None and not Path(folder).is_dir():
                raise CommandError(f"{flag}: {str(folder)!r} is not a folder")
    examples, skipped = scan_folder(args.data, args.label_regex, name="--data")
    _warn_refused(skipped, "unlabelled")
    if not examples:
        raise CommandError(f"--data: no labelled .wav files in {args.data!r}")
    if args.test_data is not None:
        test, skipped = scan_folder(args.test_data, args.label_regex, name="--test-data")
        _warn_refused(skipped, "unlabelled test")
        if not test:
            raise CommandError(f"--test-data: no labelled .wav files in {args.test_data!r}")
        return examples, test
    return split_examples(examples, args.split, test_speaker=args.test_speaker, seed=args.seed or 0)


def _load(
    examples: list[SpeechExample], what: str, args: argparse.Namespace, mel: MelConfig
) -> tuple[list[np.ndarray], list[SpeechExample]]:
    """Read the audio of ``examples``, leaving out (with a warning) the files that fail."""
    waves, kept, refused = load_examples(examples, mel.sample_rate, max_seconds=args.max_seconds)
    _warn_refused(refused, what)
    return waves, kept


def _known(
    waves: list[np.ndarray], examples: list[SpeechExample], index: dict[str, int], what: str
) -> tuple[list[np.ndarray], list[SpeechExample], list[int]]:
    """Leave out (with a warning) the files whose label the model is not trained on."""
    unseen = [e.path for e in examples if e.label not in index]
    _warn_refused([f"{p}: its label is not among the training labels" for p in unseen], what)
    keep = [i for i, e in enumerate(examples) if e.label in index]
    kept = [examples[i] for i in keep]
    return [waves[i] for i in keep], kept, [index[e.label] for e in kept]


def _hold_out_speaker(
    train: list[SpeechExample], name: str | None
) -> tuple[list[SpeechExample], list[SpeechExample]]:
    """``(train, valid)``: ``valid`` is training speaker ``name``'s files (none for ``None``
    or ``"none"``)."""
    if name is None or name == "none":
        return train, []
    speakers = sorted({e.speaker for e in train if e.speaker is not None})
    if name not in speakers:
        raise CommandError(
            f"--valid-speaker: {name!r} is not one of the training speakers {speakers}"
        )
    if len(speakers) < 2:
        raise CommandError(f"--valid-speaker needs at least 2 training speakers, found {speakers}")
    return [e for e in train if e.speaker != name], [e for e in train if e.speaker == name]


def _extra_training(
    args: argparse.Namespace, labels: list[str], index: dict[str, int], mel: MelConfig
) -> tuple[list[np.ndarray], list[int]]:
    """Clips for training only: ``--extra-train`` folders and ``--synthetic-voices``."""
    waves: list[np.ndarray] = []
    ids: list[int] = []
    for folder in args.extra_train or []:
        examples, skipped = scan_folder(folder, args.label_regex, name="--extra-train")
        _warn_refused(skipped, "unlabelled extra")
        more, examples = _load(examples, "extra", args, mel)
        more, _, more_ids = _known(more, examples, index, "extra")
        waves += more
        ids += more_ids
    if args.synthetic_voices:
        if not espeak_available():
            print(
                "notice: espeak-ng is not installed, so --synthetic-voices adds nothing "
                "(scripts/ensure-espeak.sh installs it)",
                file=sys.stderr,
            )
        else:
            said, said_labels = synthetic_voices(
                labels,
                voices=args.synthetic_voices,
                sample_rate=mel.sample_rate,
                seed=args.seed or 0,
            )
            waves += said
            ids += [index[label] for label in said_labels]
    return waves, ids


def run(args: argparse.Namespace) -> int:
    """Run ``multihead train speech``; returns the exit status."""
    set_threads(args.threads)
    out = Path(args.out if args.out is not None else os.path.join("runs", "speech"))
    recipe = args.recipe or ("new-speakers" if args.split == "speaker" else "standard")
    mel, augment = speech_recipe(recipe)
    tta = args.tta or RECIPE_TTA[recipe]
    # --ensemble is declared by textclass's options too (plain int there): check it here.
    members = RECIPE_ENSEMBLE[recipe] if args.ensemble is None else args.ensemble
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 10:
        raise CommandError(f"--ensemble must be an integer from 1 to 10, got {members!r}")
    views = tta_views(tta)
    train_ex, test_ex = _examples(args)
    train_ex, valid_ex = _hold_out_speaker(train_ex, args.valid_speaker)
    train_waves, train_ex = _load(train_ex, "training", args, mel)
    labels = sorted({e.label for e in train_ex}, key=lambda s: (len(s), s))
    if len(labels) < 2:
        raise CommandError(f"--data: a classifier needs at least 2 labels, found {labels}")
    index = {label: i for i, label in enumerate(labels)}
    test_waves, test_ex, test_ids = _known(*_load(test_ex, "test", args, mel), index, "test")
    valid: tuple[list[np.ndarray], list[int]] | None = None
    if valid_ex:
        valid_waves, _, valid_ids = _known(
            *_load(valid_ex, "validation", args, mel), index, "validation"
        )
        valid = (valid_waves, valid_ids)
    extra = _extra_training(args, labels, index, mel)

    defaults = SpeechModelConfig()
    model_config = SpeechModelConfig(
        n_mels=mel.n_mels,
        d_model=args.d_model or defaults.d_model,
        num_layers=args.layers or defaults.num_layers,
        num_heads=args.heads or defaults.num_heads,
        d_ff=2 * (args.d_model or defaults.d_model),
    )
    base = SpeechTrainConfig()
    time_limit = args.time_limit if args.time_limit is not None else base.time_limit_s
    configs = [
        SpeechTrainConfig(
            max_epochs=args.epochs or base.max_epochs,
            batch_size=args.batch_size or base.batch_size,
            lr=args.lr or base.lr,
            # The time limit is the whole run's: an ensemble's members share it.
            time_limit_s=None if time_limit is None else time_limit / members,
            seed=(args.seed or 0) + k,
            augment=augment,
        )
        for k in range(members)
    ]
    chatty = not (args.no_progress or args.json)
    if chatty:
        print(
            f"training on {len(train_waves)} recordings of {len(labels)} labels"
            f"{f' and {len(extra[0])} extra' if extra[0] else ''}, "
            f"validating on {len(valid[0]) if valid else 'a share of them'}, "
            f"testing on {len(test_waves)}"
            f"{f'; an ensemble of {members} models' if members > 1 else ''}"
        )

    def progress(record: dict[str, float]) -> None:
        if chatty:
            print(
                f"epoch {record['epoch']:.0f}: loss {record['loss']:.4f}, validation accuracy "
                f"{record['valid_accuracy']:.3f} ({record['seconds']:.0f} s)",
                flush=True,
            )

    results = [
        train_speech(
            train_waves,
            [index[e.label] for e in train_ex],
            len(labels),
            mel=mel,
            model_config=model_config,
            config=config,
            valid=valid,
            extra=extra if extra[0] else None,
            progress=progress,
            max_steps=args.steps,
            speakers=[e.speaker for e in train_ex],
        )
        for config in configs
    ]
    result = results[0]
    model = result.model if members == 1 else SpeechEnsemble([r.model for r in results])
    metrics: dict[str, Any] = {
        "task": "speech",
        "recipe": recipe,
        "tta": tta,
        "adapt_speaker": bool(args.adapt_speaker),
        "ensemble": members,
        "train_files": len(train_waves),
        "extra_train_clips": len(extra[0]),
        "valid_files": len(valid[0]) if valid else None,
        "test_files": len(test_waves),
        "labels": labels,
        # Of the first model; "members" has every model's.
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "stopped_by": result.stopped_by,
        "valid_accuracy": round(result.valid_accuracy, 4),
        "train_seconds": round(sum(r.seconds for r in results), 1),
        "members": [
            {
                "seed": c.seed,
                "epochs": r.epochs,
                "best_epoch": r.best_epoch,
                "stopped_by": r.stopped_by,
                "valid_accuracy": round(r.valid_accuracy, 4),
                "train_seconds": round(r.seconds, 1),
            }
            for c, r in zip(configs, results, strict=True)
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    if test_waves:
        if args.adapt_speaker or mel.speaker_norm:
            probs, warps = predict_by_speaker(
                model,
                test_waves,
                [e.speaker for e in test_ex],
                mel,
                views=views,
                adapt=args.adapt_speaker,
            )
            if args.adapt_speaker:
                metrics["speaker_warps"] = {str(k): v for k, v in warps.items()}
        else:
            probs = predict_waves(model, test_waves, mel, views=views)
        actual = torch.tensor(test_ids)
        matrix = confusion_matrix(probs.argmax(-1), actual, len(labels))
        accuracy = float(matrix.diag().sum()) / len(test_waves)
        metrics["test_accuracy"] = round(accuracy, 4)
        metrics["confusion"] = matrix.tolist()
        plot_confusion(matrix, labels, out / "confusion.png", title=f"test accuracy {accuracy:.1%}")
    checkpoint = save_speech_checkpoint(
        out / "checkpoint.pt",
        model,
        mel=mel,
        labels=labels,
        max_seconds=args.max_seconds,
        tta=views,
        speaker_mean=result.speaker_mean,
        extra={"metrics": {k: v for k, v in metrics.items() if k != "confusion"}},
    )
    metrics["checkpoint"] = str(checkpoint)
    write_atomic(out / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    if args.json:
        print(json.dumps(metrics))
        return 0
    test = f"{metrics['test_accuracy']:.1%}" if test_waves else "no test files"
    print(
        f"speech: {'+'.join(str(r.epochs) for r in results)} epoch(s) in "
        f"{sum(r.seconds for r in results):.0f} s ({', '.join(r.stopped_by for r in results)}); "
        f"validation {'/'.join(f'{r.valid_accuracy:.1%}' for r in results)}, test {test}"
    )
    print(f"wrote {out}/ (checkpoint.pt, metrics.json{', confusion.png' if test_waves else ''})")
    sys.stdout.flush()
    return 0
