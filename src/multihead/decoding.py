"""Turning models into sequences: greedy decoding, beam search and sampling.

All run under ``torch.inference_mode`` and in evaluation mode (dropout off), and put the model
back in the mode they found it in. Token ids are ``torch.long``; ``B`` is the batch size.

How a step is computed is kept apart from the search: a ``_Stepper`` maps the tokens so far to
the next token's logits and can reorder its rows (beam search moves hypotheses between rows).
With ``use_cache=True`` (the default) a stepper keeps a key/value cache
(:class:`multihead.cache.DecoderCache`, preallocated to the longest possible output) and feeds
only the tokens it has not fed yet, so a step costs O(prefix) attention instead of a whole
forward pass over the prefix; beam search reorders the cache rows with its hypotheses. With
``use_cache=False``, or for a model whose ``forward``/``decode`` takes no ``cache`` argument,
each step re-runs the model on the whole prefix. Both give the same tokens.

Example:
    >>> import torch
    >>> from multihead.modules.models import Seq2SeqTransformer, TransformerConfig
    >>> config = TransformerConfig(vocab_size=12, d_model=16, num_heads=2, d_ff=32)
    >>> model = Seq2SeqTransformer(config)
    >>> out = greedy_decode(model, torch.randint(3, 12, (2, 5)), bos_id=1, eos_id=2, max_len=6)
    >>> out.shape[0], out.shape[1] <= 6
    (2, True)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import Tensor

from ._validation import (
    check_bool,
    check_int,
    check_options,
    check_padding_mask,
    check_token_ids,
)
from .cache import DecoderCache

if TYPE_CHECKING:
    from typing_extensions import Required, Unpack

__all__ = [
    "GenerateOptions",
    "LanguageModel",
    "SampleOptions",
    "SearchOptions",
    "Seq2SeqModel",
    "beam_search",
    "generate_lm",
    "greedy_decode",
    "length_penalty_factor",
    "sample",
]


# ------------------------------------------------------------------------------ what a model needs


@runtime_checkable
class Seq2SeqModel(Protocol):
    """What greedy decoding and beam search need of an encoder-decoder: encode the source once,
    decode steps against it (with a cache from ``new_cache``), and a ``config`` with
    ``vocab_size``, ``target_vocab_size``, ``pad_id``, ``positional`` and ``max_len``.
    :class:`~multihead.Seq2SeqTransformer` is one."""

    config: Any
    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def encode(self, src: Tensor, src_padding_mask: Tensor | None = None) -> Tensor: ...

    def decode(self, tgt: Tensor, memory: Tensor, *args: Any, **kwargs: Any) -> Tensor: ...

    def new_cache(self, *, max_len: int | None = None) -> DecoderCache: ...


@runtime_checkable
class LanguageModel(Protocol):
    """What sampling needs of a decoder-only LM: ``model(ids, cache=...)`` returns next-token
    logits ``(B, N, V)``, ``new_cache`` makes the cache, and ``config`` has ``vocab_size``,
    ``pad_id``, ``positional`` and ``max_len``. :class:`~multihead.DecoderLM` is one."""

    config: Any
    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def __call__(self, ids: Tensor, *args: Any, **kwargs: Any) -> Tensor: ...

    def new_cache(self, *, max_len: int | None = None) -> DecoderCache: ...


# ------------------------------------------------------------------------------ checks


def _check_model(model: Any, kind: type) -> None:
    # An encoder-decoder is callable and makes caches too: a language model has no encode.
    fits = isinstance(model, kind) and (kind is Seq2SeqModel or not isinstance(model, Seq2SeqModel))
    if not fits:
        what = (
            "an encoder-decoder (encode, decode, new_cache, config), e.g. Seq2SeqTransformer"
            if kind is Seq2SeqModel
            else "a decoder-only language model (forward, new_cache, config), e.g. DecoderLM"
        )
        raise TypeError(f"model must be {what}, got {type(model).__name__}")


def _check_token_id(value: Any, name: str, vocab_size: int) -> int:
    check_int(value, name, minimum=0)
    if value >= vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}), got {value}")
    return int(value)


def _check_positions(model: Seq2SeqModel | LanguageModel, length: int, what: str) -> None:
    config = model.config
    if config.positional == "learned" and length > config.max_len:
        raise ValueError(
            f"{what} needs {length} positions but the model learned only max_len={config.max_len}"
        )


@contextlib.contextmanager
def _evaluating(model: Seq2SeqModel | LanguageModel) -> Iterator[None]:
    """No autograd (inference mode: no version counters or views to track) and no dropout; the
    model's train/eval mode is restored afterwards. Results are cloned outside the block, so
    callers get ordinary tensors."""
    was_training = model.training
    model.train(False)
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _takes_cache(fn: Callable[..., Any]) -> bool:
    """Whether a model's ``forward``/``decode`` accepts ``cache=`` (subclasses may not)."""
    try:
        return "cache" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------ steppers


class _Stepper(Protocol):
    def next_logits(self, tokens: Tensor) -> Tensor:
        """``tokens (R, T)``, every token so far -> logits of the next one ``(R, V)``."""
        ...

    def select(self, rows: Tensor) -> None:
        """Keep (and repeat) the rows ``rows (R',)`` of the state, in that order."""
        ...


class _Seq2SeqStepper:
    """Decoder steps against a memory that is encoded once; with a cache, only the tokens not
    fed yet go through the decoder and cross-attention keys/values are projected once."""

    def __init__(
        self,
        model: Seq2SeqModel,
        memory: Tensor,
        memory_mask: Tensor | None,
        cache: DecoderCache | None = None,
    ):
        self.model = model
        self.memory = memory  # (R, Ns, E)
        self.memory_mask = memory_mask  # (R, Ns) or None
        self.cache = cache
        self.fed = 0  # tokens already in the cache

    def next_logits(self, tokens: Tensor) -> Tensor:
        if self.cache is None:
            return self.model.decode(tokens, self.memory, self.memory_mask)[:, -1]
        new = tokens[:, self.fed :]  # (R, T - fed)
        self.fed = tokens.shape[1]
        logits = self.model.decode(new, self.memory, self.memory_mask, cache=self.cache)
        return logits[:, -1]

    def select(self, rows: Tensor) -> None:
        self.memory = self.memory.index_select(0, rows)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder(rows)


class _LMStepper:
    """Decoder-only steps: the prompt and everything generated is the context."""

    def __init__(self, model: LanguageModel, cache: DecoderCache | None = None):
        self.model = model
        self.cache = cache
        self.fed = 0

    def next_logits(self, tokens: Tensor) -> Tensor:
        if self.cache is None:
            return self.model(tokens)[:, -1]
        new = tokens[:, self.fed :]
        self.fed = tokens.shape[1]
        return self.model(new, cache=self.cache)[:, -1]

    def select(self, rows: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)


def _seq2seq_stepper(
    model: Seq2SeqModel, src: Tensor, src_padding_mask: Tensor | None, cache_len: int | None
) -> _Seq2SeqStepper:
    memory = model.encode(src, src_padding_mask)
    cache = None
    if cache_len is not None and _takes_cache(model.decode):
        cache = model.new_cache(max_len=cache_len)
    return _Seq2SeqStepper(model, memory, src_padding_mask, cache)


def _check_seq2seq_args(
    model: Any, src: Any, src_padding_mask: Any, bos_id: Any, eos_id: Any, max_len: Any
) -> None:
    _check_model(model, Seq2SeqModel)
    vocab = model.config.target_vocab_size
    check_token_ids(src, "src", model.config.vocab_size)
    check_padding_mask(src_padding_mask, "src_padding_mask", tuple(src.shape))
    _check_token_id(bos_id, "bos_id", vocab)
    _check_token_id(eos_id, "eos_id", vocab)
    check_int(max_len, "max_len", minimum=1)
    # The last step feeds BOS and max_len - 1 tokens.
    _check_positions(model, max_len, f"max_len={max_len}")


def _forbid_pad(logits: Tensor, pad_id: int, eos_id: int) -> Tensor:
    """Never generate the pad token: in the output, pad means "after EOS" and nothing else.
    (Unless pad and EOS are one token, as in some GPT-2 setups.)"""
    if pad_id == eos_id:
        return logits
    return logits.index_fill(-1, torch.tensor([pad_id], device=logits.device), float("-inf"))


# ------------------------------------------------------------------------------ greedy


class SearchOptions(TypedDict, total=False):
    """The keywords :func:`greedy_decode` passes on to :func:`beam_search`."""

    bos_id: Required[int]
    eos_id: Required[int]
    max_len: Required[int]
    use_cache: bool


def greedy_decode(
    model: Seq2SeqModel,
    src: Tensor,
    src_padding_mask: Tensor | None = None,
    **options: Unpack[SearchOptions],
) -> Tensor:
    """Decode by taking the most likely token at every step (:func:`beam_search` with one
    hypothesis, which runs this loop without the beam's bookkeeping).

    The source is encoded once. Each sequence stops at its first ``eos_id`` (which is kept in
    the output); later positions hold ``model.config.pad_id``, which is never generated itself
    (unless it is also ``eos_id``). Decoding ends when every sequence has stopped or after
    ``max_len`` tokens.

    Args:
        model: a :class:`Seq2SeqTransformer`.
        src: ``(B, Ns)`` source ids.
        src_padding_mask: ``(B, Ns)`` bool, ``True`` = real token.
        bos_id: the token the decoder starts from (not part of the output).
        eos_id: the token that ends a sequence.
        max_len: the most tokens to generate.
        use_cache: decode incrementally with a key/value cache (same tokens, faster).

    Returns:
        ``(B, T)`` long, ``T <= max_len``: the tokens after BOS.

    Example:
        >>> from multihead.modules.models import Seq2SeqTransformer, TransformerConfig
        >>> model = Seq2SeqTransformer(TransformerConfig(vocab_size=9, d_model=8, num_heads=2,
        ...                                              d_ff=16))
        >>> greedy_decode(model, torch.tensor([[3, 4, 5]]), bos_id=1, eos_id=2, max_len=4).dtype
        torch.int64
    """
    check_options(options, SearchOptions, "greedy_decode", required=("bos_id", "eos_id", "max_len"))
    return beam_search(model, src, src_padding_mask, beam_size=1, **options)


def _greedy(stepper: _Stepper, tokens: Tensor, eos_id: int, pad_id: int, max_len: int) -> Tensor:
    """Extend ``tokens (B, 1)`` (BOS) by the most likely token until every row has emitted
    ``eos_id`` or ``max_len`` tokens are added; return the added ones ``(B, T)``."""
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for _ in range(max_len):
        logits = _forbid_pad(stepper.next_logits(tokens), pad_id, eos_id)
        next_token = logits.argmax(dim=-1)  # (B,)
        next_token = next_token.masked_fill(finished, pad_id)
        tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)  # (B, T + 1)
        finished |= next_token == eos_id
        if bool(finished.all()):
            break
    return tokens[:, 1:]


# ------------------------------------------------------------------------------ beam search


def length_penalty_factor(length: Tensor, alpha: float) -> Tensor:
    r"""The GNMT length penalty (Wu et al., 2016, Eq. 14): ``((5 + |Y|) / 6) ** alpha``.

    A hypothesis is ranked by ``log P(Y | X) / lp(Y)``; ``alpha = 0`` ranks by probability alone,
    larger ``alpha`` favours longer outputs.

    Example:
        >>> length_penalty_factor(torch.tensor([1, 7]), 1.0).tolist()
        [1.0, 2.0]
    """
    return ((5.0 + length.to(torch.float32)) / 6.0) ** alpha


def beam_search(
    model: Seq2SeqModel,
    src: Tensor,
    src_padding_mask: Tensor | None = None,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    use_cache: bool = True,
) -> Tensor:
    """Decode with beam search; return the best hypothesis for each input.

    Each input keeps ``beam_size`` hypotheses. At every step each unfinished hypothesis is
    extended by every token and the ``beam_size`` extensions with the highest log-probability
    ``log P(Y | X)`` are kept; a finished hypothesis (one that emitted ``eos_id``) stays in the
    beam unchanged and competes with the extensions. The search stops when all hypotheses have
    finished or after ``max_len`` tokens; the answer is the hypothesis with the best
    ``log P(Y | X) / lp(Y)`` (see :func:`length_penalty_factor`; ``|Y|`` counts the EOS).

    With ``beam_size=1`` this is :func:`greedy_decode`. Output format as :func:`greedy_decode`:
    ``(B, T)`` long, the tokens after BOS up to and including EOS, then ``config.pad_id``.
    ``use_cache``: decode incrementally; the key/value cache rows follow their hypotheses.

    Example:
        >>> from multihead.modules.models import Seq2SeqTransformer, TransformerConfig
        >>> model = Seq2SeqTransformer(TransformerConfig(vocab_size=9, d_model=8, num_heads=2,
        ...                                              d_ff=16))
        >>> out = beam_search(model, torch.tensor([[3, 4, 5]]), bos_id=1, eos_id=2, max_len=4)
        >>> out.shape[0]
        1
    """
    _check_seq2seq_args(model, src, src_padding_mask, bos_id, eos_id, max_len)
    k = check_int(beam_size, "beam_size", minimum=1)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise TypeError(f"length_penalty must be a float, got {type(length_penalty).__name__}")
    check_bool(use_cache, "use_cache")
    pad_id = model.config.pad_id
    b, device = src.shape[0], src.device
    cache_len = max_len if use_cache else None  # BOS and at most max_len - 1 tokens are fed
    if k == 1:  # the most likely token at every step: no beam bookkeeping
        with _evaluating(model):
            stepper = _seq2seq_stepper(model, src, src_padding_mask, cache_len)
            bos = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
            out = _greedy(stepper, bos, eos_id, pad_id, max_len)
        return out.clone()
    with _evaluating(model):
        stepper = _seq2seq_stepper(model, src, src_padding_mask, cache_len)
        # Every input's beam starts as k copies of [BOS]; only the first is live so that the
        # first step does not fill the beam with k copies of the same extension.
        stepper.select(torch.arange(b, device=device).repeat_interleave(k))
        tokens = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(b, k, device=device)  # log P(Y | X) so far
        scores[:, 1:] = float("-inf")
        finished = torch.zeros(b, k, dtype=torch.bool, device=device)
        lengths = torch.zeros(b, k, dtype=torch.long, device=device)  # tokens incl. EOS
        row_base = (torch.arange(b, device=device) * k).unsqueeze(1)  # (B, 1)
        for _ in range(max_len):
            logits = stepper.next_logits(tokens).float()  # (B * k, V)
            # Forbid pad after the softmax: scores stay log-probabilities under the model.
            log_probs = _forbid_pad(torch.log_softmax(logits, dim=-1), pad_id, eos_id)
            log_probs = log_probs.view(b, k, -1)  # (B, k, V)
            v = log_probs.shape[-1]
            # A finished hypothesis has exactly one continuation, pad, at no cost.
            carry = torch.full_like(log_probs, float("-inf"))
            carry[..., pad_id] = 0.0
            log_probs = torch.where(finished.unsqueeze(-1), carry, log_probs)
            candidates = (scores.unsqueeze(-1) + log_probs).view(b, k * v)  # (B, k * V)
            scores, flat = candidates.topk(k, dim=-1)  # (B, k)
            parent, token = flat // v, flat % v  # (B, k)
            rows = (row_base + parent).view(-1)  # (B * k,)
            stepper.select(rows)
            tokens = torch.cat([tokens.index_select(0, rows), token.view(-1, 1)], dim=1)
            was_finished = finished.gather(1, parent)
            lengths = lengths.gather(1, parent) + (~was_finished).long()
            finished = was_finished | (token == eos_id)
            # Slots with -inf (fewer live candidates than k) can never win: treat as finished.
            if bool((finished | torch.isneginf(scores)).all()):
                break
        normalized = scores / length_penalty_factor(lengths, float(length_penalty))
        best = normalized.argmax(dim=-1)  # (B,)
        best_rows = (row_base.squeeze(1) + best).long()
        out = tokens.index_select(0, best_rows)[:, 1:]  # (B, T)
        longest = int(lengths.gather(1, best.unsqueeze(1)).max())
    return out[:, :longest].clone()


# ------------------------------------------------------------------------------ sampling


def _filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set logits outside the top-k set and outside the top-p nucleus to ``-inf``."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Holtzman et al. (2020): the smallest set of most likely tokens with mass >= top_p.
        # A token is dropped when the tokens before it already reach top_p; the first never is.
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _DecodingOptions(TypedDict, total=False):
    temperature: float
    top_k: int | None
    top_p: float | None
    generator: torch.Generator | None
    eos_id: int | None
    use_cache: bool


class SampleOptions(_DecodingOptions, total=False):
    """The keywords :func:`sample` passes on to :func:`generate_lm` (defaults there)."""

    pad_id: int | None


class GenerateOptions(_DecodingOptions, total=False):
    """The keywords :meth:`DecoderLM.generate` passes on to :func:`generate_lm`."""

    do_sample: bool


def sample(
    model: LanguageModel, prompt: Tensor, *, max_new_tokens: int, **options: Unpack[SampleOptions]
) -> Tensor:
    """Continue ``prompt`` by sampling from a :class:`DecoderLM`.

    Each step divides the next-token logits by ``temperature``, keeps the ``top_k`` most likely
    tokens, then the nucleus of probability ``top_p`` (Holtzman et al., 2020), and samples.
    ``top_k=1`` (or a tiny ``top_p``) is greedy decoding.

    Args:
        model: a :class:`DecoderLM`.
        prompt: ``(B, N)`` ids, ``N >= 1``; all prompts share one length (no padding).
        max_new_tokens: the most tokens to add.
        temperature: ``> 0``; below 1 sharpens, above 1 flattens the distribution.
        top_k: ``>= 1`` or None (no limit).
        top_p: in ``(0, 1]`` or None (no limit).
        generator: the random source, for reproducible samples.
        eos_id: when given, a sequence stops at its first EOS (kept), is padded afterwards,
            and generation ends early once every sequence has stopped.
        pad_id: the id written after EOS (default ``model.config.pad_id``).
        use_cache: decode incrementally with a key/value cache (same samples, faster).

    Returns:
        ``(B, N + T)`` long, ``T <= max_new_tokens``: the prompt and the new tokens.

    Example:
        >>> from multihead.modules.models import DecoderLM, TransformerConfig
        >>> lm = DecoderLM(TransformerConfig(vocab_size=9, d_model=8, num_heads=2, d_ff=16))
        >>> g = torch.Generator().manual_seed(0)
        >>> sample(lm, torch.tensor([[3, 4]]), max_new_tokens=5, top_k=3, generator=g).shape
        torch.Size([1, 7])
    """
    check_options(options, SampleOptions, "sample")
    return generate_lm(model, prompt, max_new_tokens=max_new_tokens, do_sample=True, **options)


def generate_lm(
    model: LanguageModel,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Continue ``prompt (B, N)`` greedily (``do_sample=False``) or by sampling; the engine of
    :meth:`DecoderLM.generate` and :func:`sample` (see :func:`sample` for the arguments).
    Greedy decoding ignores ``temperature``, ``top_k``, ``top_p`` and ``generator``.

    Example:
        >>> from multihead.modules.models import DecoderLM, TransformerConfig
        >>> lm = DecoderLM(TransformerConfig(vocab_size=9, d_model=8, num_heads=2, d_ff=16))
        >>> cached = generate_lm(lm, torch.tensor([[3, 4]]), max_new_tokens=6)
        >>> torch.equal(cached, generate_lm(lm, torch.tensor([[3, 4]]), max_new_tokens=6,
        ...                                 use_cache=False))
        True
    """
    _check_model(model, LanguageModel)
    vocab = model.config.vocab_size
    check_token_ids(prompt, "prompt", vocab)
    if prompt.shape[1] < 1:
        raise ValueError(f"prompt must hold at least one token, got shape {tuple(prompt.shape)}")
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    check_bool(do_sample, "do_sample")
    check_bool(use_cache, "use_cache")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None:
        check_int(top_k, "top_k", minimum=1)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a float or None, got {type(top_p).__name__}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    if eos_id is not None:
        _check_token_id(eos_id, "eos_id", vocab)
    pad_id = model.config.pad_id if pad_id is None else _check_token_id(pad_id, "pad_id", vocab)
    # The last step feeds everything but the final token.
    total = prompt.shape[1] + max_new_tokens
    _check_positions(model, total - 1, "prompt + max_new_tokens")

    b, n = prompt.shape
    with _evaluating(model):
        room = max(total - 1, n)
        # A model may offer a leaner cached step than its forward (DecoderLM does).
        lean = getattr(model, "_lean_stepper", None) if use_cache else None
        stepper: _Stepper | None = lean(room) if callable(lean) else None
        if stepper is None:
            cached = use_cache and _takes_cache(getattr(model, "forward", model))
            stepper = _LMStepper(model, model.new_cache(max_len=room) if cached else None)
        # Written in place: no per-step concatenation of the growing sequence.
        tokens = torch.empty(b, total, dtype=torch.long, device=prompt.device)
        tokens[:, :n] = prompt
        finished = torch.zeros(b, dtype=torch.bool, device=prompt.device)
        length = n
        for _ in range(max_new_tokens):
            logits = stepper.next_logits(tokens[:, :length])  # (B, V)
            if do_sample:
                logits = _filter_logits(logits.float() / temperature, top_k, top_p)
                probs = torch.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            else:
                next_token = logits.argmax(dim=-1)  # (B,)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, pad_id)
            tokens[:, length] = next_token
            length += 1
            if eos_id is not None:
                finished |= next_token == eos_id
                if bool(finished.all()):
                    break
    return tokens[:, :length].clone()
