"""What ``multihead visualize`` computes: load a checkpoint, run one input through it with
attention captured, and write the heatmap grids, the HTML view and per-head statistics.

:func:`visualize` is the library entry point; the command line is
:mod:`multihead.commands.visualize`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._files import write_atomic
from ..decoding import greedy_decode
from ..modules.models import DecoderLM, Seq2SeqTransformer
from ..tasks import BOS, EOS, CharVocab
from ..tasks.date_reading import model_source
from .capture import AttentionMap, capture_attention, maps_from_record
from .heatmaps import attention_grid, save_figure
from .html import write_attention_html
from .stats import HeadStats, record_stats, stats_markdown

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_TEXTS",
    "VisualizeResult",
    "visualize",
]

DEFAULT_CHECKPOINT = Path("runs/demo/checkpoint.pt")  # where `multihead demo` saves
DEFAULT_TEXTS = {
    "dates": "Nov 22, 2026",
    "copy": "3141592",
    "reverse": "3141592",
    "sort": "3141592",
    "text": "To be, or not to be, that is the question",
}
_FALLBACK_TEXT = "3141592"


def default_checkpoint(task: str | None) -> Path:
    """The checkpoint ``multihead visualize`` reads when ``--checkpoint`` is not given.

    Example:
        >>> str(default_checkpoint(None)), str(default_checkpoint("reverse"))
        ('runs/demo/checkpoint.pt', 'runs/reverse/checkpoint.pt')
    """
    if task is None or task == "dates":
        return DEFAULT_CHECKPOINT
    return Path("runs") / task / "checkpoint.pt"


@dataclass(frozen=True, kw_only=True)
class VisualizeResult:
    """What :func:`visualize` wrote and saw."""

    task: str
    text: str  # the input
    output: str | None  # the decoded output (sequence-to-sequence), else None
    files: dict[str, Path]  # "png", "svg", "html", "stats" -> path
    maps: list[AttentionMap]
    stats: list[HeadStats]


def _labels(vocab: CharVocab, ids: list[int]) -> list[str]:
    return [vocab.decode([i], strip_special=False) for i in ids]


def _seq2seq_maps(
    model: Seq2SeqTransformer, vocab: CharVocab, text: str, max_output_len: int
) -> tuple[str, list[AttentionMap], list[HeadStats]]:
    src_ids = vocab.encode(text)
    src = torch.tensor([src_ids])  # (1, Ns)
    limit = min(max_output_len, model.config.max_len)
    out = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=limit)[0].tolist()
    if EOS in out:
        out = out[: out.index(EOS) + 1]
    # Position t of the decoder reads written[t - 1] (BOS first) and writes written[t]; one
    # teacher-forced pass over what greedy decoding chose gives each step's attention exactly,
    # because the decoder is causal.
    reads = [BOS, *out[:-1]]
    with torch.no_grad(), capture_attention(model) as record:
        model(src, torch.tensor([reads]))
    src_labels = _labels(vocab, src_ids)
    writes, read_labels = _labels(vocab, out), _labels(vocab, reads)
    tokens: dict[str, tuple[list[str], list[str]]] = {}
    special: dict[str, torch.Tensor] = {}
    for name, calls in record.calls.items():
        if not calls:
            continue
        call = calls[-1]
        if name.startswith("encoder."):
            tokens[name] = (src_labels, src_labels)
            special[name] = torch.zeros(call.num_keys, dtype=torch.bool)
        elif call.self_attention:
            tokens[name] = (writes, read_labels)
            special[name] = torch.tensor([i in (BOS, EOS) for i in reads])
        else:
            tokens[name] = (writes, src_labels)
            special[name] = torch.zeros(call.num_keys, dtype=torch.bool)
    stats = record_stats(record, special_keys=special)
    return vocab.decode(out), maps_from_record(record, tokens), stats


def _lm_maps(
    model: DecoderLM, vocab: CharVocab, text: str
) -> tuple[list[AttentionMap], list[HeadStats]]:
    ids = vocab.encode(text)
    if len(ids) > model.config.max_len:
        raise ValueError(
            f"--text has {len(ids)} characters but the model reads at most "
            f"max_len={model.config.max_len}"
        )
    with torch.no_grad(), capture_attention(model) as record:
        model(torch.tensor([ids]))
    labels = _labels(vocab, ids)
    tokens = {name: (labels, labels) for name in record}
    return maps_from_record(record, tokens), record_stats(record)


def visualize(
    checkpoint: str | os.PathLike[str],
    *,
    text: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    task: str | None = None,
) -> VisualizeResult:
    """Load ``checkpoint``, run ``text`` through it while capturing attention, write pictures.

    Args:
        checkpoint: a checkpoint written by training (``multihead demo`` / ``train``).
        text: the input (default: :data:`DEFAULT_TEXTS` for the checkpoint's task).
        out_dir: the folder to write into (default: ``attention`` next to the checkpoint).
        task: when given, must be the task the checkpoint was trained on.

    Example:
        >>> import tempfile
        >>> from multihead.train.checkpoint import save_checkpoint
        >>> from multihead.train.recipes import get_recipe
        >>> recipe = get_recipe("reverse", d_model=16, layers=1)
        >>> d = tempfile.mkdtemp()
        >>> _ = save_checkpoint(f"{d}/c.pt", {"step": 0,
        ...     "model": recipe.build_model().state_dict(), **recipe.checkpoint_meta()})
        >>> result = visualize(f"{d}/c.pt", text="123")
        >>> sorted(result.files)
        ['html', 'png', 'stats', 'svg']
    """
    from ..train.recipes import load_trained
    from ..train.rundir import removed_if_failed

    path = Path(checkpoint)
    if not path.exists():
        # FileNotFoundError is one of the CLI's expected failures (one line, exit 2); viz does
        # not import the CLI, whose module sits above every other.
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}; run 'multihead demo' first to train one "
            "(or pass --checkpoint PATH)"
        )
    trained = load_trained(path)
    if task is not None and trained.task != task:
        raise ValueError(
            f"--task {task!r} does not match the checkpoint, which was trained on {trained.task!r}"
        )
    model: nn.Module = trained.model.eval()
    vocab = trained.vocab
    if vocab is None or not isinstance(model, (Seq2SeqTransformer, DecoderLM)):
        raise ValueError(
            f"visualize draws attention over characters; checkpoint {str(path)!r} holds a "
            f"{trained.kind!r} model (task {trained.task!r}) without a character vocabulary"
        )
    if text is None:
        text = DEFAULT_TEXTS.get(trained.task, _FALLBACK_TEXT)
    if not isinstance(text, str) or not text:
        raise ValueError(f"--text must be a non-empty string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: undecodable bytes from the shell
        raise ValueError(
            f"--text is not valid UTF-8 text (undecodable byte at position {exc.start})"
        ) from None
    if trained.task == "dates":
        # The date translator reads the normalised text (lower case, single spaces).
        text = model_source(text)

    output: str | None = None
    if isinstance(model, Seq2SeqTransformer):
        if len(text) > model.config.max_len:
            raise ValueError(
                f"--text has {len(text)} characters but the model reads at most "
                f"max_len={model.config.max_len}"
            )
        max_output_len = int(trained.checkpoint.get("max_output_len") or model.config.max_len)
        output, maps, stats = _seq2seq_maps(model, vocab, text, max_output_len)
        subtitle = f"{text}  \u2192  {output}"
    else:
        maps, stats = _lm_maps(model, vocab, text)
        subtitle = text

    out = Path(out_dir) if out_dir is not None else path.parent / "attention"
    title = f"Attention of the {trained.task} model (step {trained.step})"
    fig = attention_grid(maps, title=f"{title}: {subtitle}")
    table = stats_markdown(stats)
    # A failure while writing (a full disk, Ctrl-C) leaves no empty folder behind.
    with removed_if_failed(out, "out_dir"):
        files = {
            "png": save_figure(fig, out / "attention_grid.png"),
            "svg": save_figure(fig, out / "attention_grid.svg"),
            "html": write_attention_html(
                maps, out / "attention.html", title=title, subtitle=subtitle
            ),
        }
        files["stats"] = write_atomic(
            out / "attention_stats.md",
            f"# Per-head attention statistics\n\n{title}: `{subtitle}`\n\n{table}\n".encode(),
        )
    return VisualizeResult(
        task=trained.task, text=text, output=output, files=files, maps=maps, stats=stats
    )
