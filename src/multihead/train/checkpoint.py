"""Checkpoints that survive crashes and load without running pickled code.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (dicts,
lists, tuples, str, int, float, bool, None), so :func:`load_checkpoint` can use
``torch.load(weights_only=True)``. Configurations and the vocabulary are stored as their
``to_dict()`` forms, never as objects.

Writes are atomic: the new file is written to a temporary file in the same directory, flushed
and fsynced, and only then renamed over the old one with :func:`os.replace`. Before the rename
the old file is kept as ``<name>.prev<suffix>`` (``checkpoint.pt`` -> ``checkpoint.prev.pt``), so
a crash or a full disk at any moment leaves at least one complete checkpoint behind.

``torch.load`` does not notice flipped bytes inside tensor data, so every checkpoint carries a
SHA-256 digest of its contents, checked on load; a truncated or corrupted file raises
:class:`CheckpointError` naming the file and the previous checkpoint to fall back to.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multihead.modules.models import (
    DecoderLM,
    Seq2SeqTransformer,
    TransformerConfig,
    ViTClassifier,
    ViTConfig,
)
from multihead.tasks import CharVocab

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "TrainedModel",
    "capture_rng_state",
    "load_checkpoint",
    "load_trained",
    "previous_path",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "multihead-checkpoint"
CHECKPOINT_VERSION = 1
_DIGEST_KEY = "sha256"


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: truncated, corrupted or not ours."""


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint that ``path`` replaced.

    Example:
        >>> previous_path("runs/demo/checkpoint.pt").name
        'checkpoint.prev.pt'
    """
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def _update_digest(h: Any, value: object) -> None:
    # A type tag before each value keeps e.g. the str "1" and the int 1 apart.
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        # Viewed as bytes, so bfloat16 (which numpy lacks) hashes too.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            _update_digest(h, key)
            _update_digest(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for item in value:
            _update_digest(h, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(
            f"checkpoint values must be tensors or plain Python values (dict, list, tuple, str, "
            f"int, float, bool, None) so they load with weights_only=True, got "
            f"{type(value).__name__}"
        )


def _digest(payload: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    _update_digest(h, {k: v for k, v in payload.items() if k != _DIGEST_KEY})
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; not possible on every OS.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically, keeping the file it replaces as the previous one.

    ``payload`` must hold only tensors and plain Python values (checked, ``TypeError``
    otherwise). The format marker, version and a content digest are added.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = save_checkpoint(f"{d}/ckpt.pt", {"step": 1, "w": torch.ones(2)})
        >>> _ = save_checkpoint(f"{d}/ckpt.pt", {"step": 2, "w": torch.ones(2)})
        >>> load_checkpoint(f"{d}/ckpt.pt")["step"], load_checkpoint(f"{d}/ckpt.prev.pt")["step"]
        (2, 1)
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping, got {type(payload).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    data["format"] = CHECKPOINT_FORMAT
    data["version"] = CHECKPOINT_VERSION
    data[_DIGEST_KEY] = _digest(data)  # also rejects values weights_only could not load

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            # Keep the old checkpoint under its .prev name via a temporary hard link, so that
            # `target` itself is never missing, not even between the two renames.
            prev = previous_path(target)
            prev_tmp = Path(f"{tmp}.prev")
            try:
                os.link(target, prev_tmp)
            except OSError:  # no hard links on this file system
                shutil.copy2(target, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}.prev")):
            leftover.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fallback_hint(path: Path) -> str:
    prev = previous_path(path)
    if prev.exists() and prev != path:
        return f"; the previous checkpoint {str(prev)!r} is untouched, resume from it instead"
    return ""


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in one short line of our own words.

    Never PyTorch's advice to retry with ``weights_only=False``: for a file that failed the
    safe load, that advice means running whatever code the file carries.
    """
    text = " ".join(str(exc).split())
    if "weights_only" in text or "Weights only" in text:
        return "it holds pickled objects beyond tensors and plain values, which a safe load refuses"
    first = text.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises ``FileNotFoundError`` when ``path`` does not exist and :class:`CheckpointError` when
    it is truncated, corrupted or not a multihead checkpoint.

    Example:
        >>> import tempfile
        >>> p = save_checkpoint(f"{tempfile.mkdtemp()}/c.pt", {"step": 7})
        >>> load_checkpoint(p)["step"]
        7
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is not a file")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"checkpoint {str(p)!r} cannot be read: permission denied")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of files that then fail anyway; the error
            # below says all there is to say, on one line.
            warnings.simplefilter("ignore")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError...
        raise CheckpointError(
            f"checkpoint {str(p)!r} is truncated or corrupted and cannot be read "
            f"({_load_failure(exc)}){_fallback_hint(p)}"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is not a multihead checkpoint (no format marker "
            f"{CHECKPOINT_FORMAT!r}){_fallback_hint(p)}"
        )
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(p)!r} has format version {data.get('version')!r}; this multihead "
            f"reads version {CHECKPOINT_VERSION}"
        )
    try:
        actual = _digest(data)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} holds unexpected values: {exc}") from exc
    if data.get(_DIGEST_KEY) != actual:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupted: its contents do not match the SHA-256 digest "
            f"stored when it was written{_fallback_hint(p)}"
        )
    return data


def capture_rng_state() -> dict[str, Any]:
    """The Python and torch (CPU and CUDA) random states, as checkpoint-safe values.

    NumPy's global generator is not captured: nothing in training draws from it (the tasks use
    their own seeded ``numpy.random.Generator`` per batch).

    Example:
        >>> state = capture_rng_state()
        >>> a = torch.rand(1); restore_rng_state(state); bool(torch.rand(1) == a)
        True
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`.

    Example:
        >>> restore_rng_state(capture_rng_state())
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# ------------------------------------------------------------------------------ trained models


@dataclass(frozen=True, kw_only=True)
class TrainedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what it was trained on."""

    model: nn.Module
    kind: str
    task: str
    vocab: CharVocab | None
    checkpoint: Mapping[str, Any]
    path: str

    @property
    def step(self) -> int:
        """Updates the model was trained for."""
        return int(self.checkpoint["step"])

    @property
    def metrics(self) -> dict[str, float]:
        """The last validation metrics recorded in the checkpoint."""
        return dict(self.checkpoint.get("metrics") or {})


def load_trained(path: str | os.PathLike[str]) -> TrainedModel:
    """Rebuild the model saved at ``path`` (weights, config, vocabulary), in eval mode on the CPU.

    Example:
        >>> import tempfile
        >>> from multihead.train.loop import TrainConfig, train
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("copy", d_model=16, layers=1)
        >>> out = tempfile.mkdtemp()
        >>> _ = train(recipe.build_model(), recipe,
        ...           TrainConfig(steps=1, batch_size=2, out_dir=out, progress=False, device="cpu"))
        >>> load_trained(f"{out}/checkpoint.pt").kind
        'seq2seq'
    """
    ckpt = load_checkpoint(path)
    kind = ckpt.get("model_kind")
    try:
        if kind in ("seq2seq", "lm"):
            config = TransformerConfig.from_dict(ckpt["model_config"])
            model: nn.Module = (
                Seq2SeqTransformer(config) if kind == "seq2seq" else DecoderLM(config)
            )
        elif kind == "vit":
            model = ViTClassifier(ViTConfig.from_dict(ckpt["model_config"]))
        else:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has unknown model kind {kind!r}; expected "
                "'seq2seq', 'lm' or 'vit'"
            )
        model.load_state_dict(ckpt["model"])
        vocab = CharVocab.from_dict(ckpt["vocab"]) if ckpt.get("vocab") is not None else None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not describe a model this multihead can rebuild: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc
    model.eval()
    return TrainedModel(
        model=model,
        kind=str(kind),
        task=str(ckpt.get("task")),
        vocab=vocab,
        checkpoint=ckpt,
        path=str(Path(path)),
    )


# ------------------------------------------------------------------ finding the demo checkpoint
# (kept at the end of the file: the date translator's lookup, used by translate, demo and visualize)

DEMO_CHECKPOINT = Path("runs/demo/checkpoint.pt")


def user_data_dir() -> Path:
    """The per-user folder where ``multihead demo`` keeps a copy of its checkpoint.

    ``$MULTIHEAD_HOME`` when set, else ``$XDG_DATA_HOME/multihead``, else
    ``~/.local/share/multihead`` (the XDG base-directory default).

    Example:
        >>> import os
        >>> os.environ["MULTIHEAD_HOME"] = "/tmp/mh"; str(user_data_dir())
        '/tmp/mh'
        >>> del os.environ["MULTIHEAD_HOME"]
    """
    home = os.environ.get("MULTIHEAD_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "multihead"


def user_checkpoint_path() -> Path:
    """Where the per-user copy of the demo checkpoint lives: ``user_data_dir()/checkpoint.pt``."""
    return user_data_dir() / "checkpoint.pt"


def find_checkpoint(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint to translate with: ``explicit`` if given, else ``./runs/demo/checkpoint.pt``,
    else the per-user copy (:func:`user_checkpoint_path`).

    Raises ``FileNotFoundError`` naming every place looked.

    Example:
        >>> import tempfile
        >>> p = save_checkpoint(f"{tempfile.mkdtemp()}/c.pt", {"step": 1})
        >>> find_checkpoint(p) == p
        True
    """
    places = [DEMO_CHECKPOINT, user_checkpoint_path()] if explicit is None else [Path(explicit)]
    for place in places:
        if place.is_file():
            return place
    looked = ", ".join(repr(str(p.absolute())) for p in places)
    raise FileNotFoundError(f"no checkpoint found; looked at {looked}")


def copy_checkpoint(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy a checkpoint atomically (temporary file, then :func:`os.replace`); returns ``target``.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> p = save_checkpoint(f"{folder}/c.pt", {"step": 1})
        >>> load_checkpoint(copy_checkpoint(p, f"{folder}/sub/d.pt"))["step"]
        1
    """
    dest = Path(target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
