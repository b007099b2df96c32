"""Hugging Face ``transformers`` interop: our kernels inside their models, their weights in ours.

Two directions:

* :func:`register` adds ``"multihead"`` to ``transformers``' ``AttentionInterface`` (and the
  matching entry to ``AttentionMaskInterface``), so that any model that dispatches through the
  interface (BERT, GPT-2, LLaMA, Mistral, Qwen, ...) runs its attention on
  :func:`multihead.functional.attention` when loaded with ``attn_implementation="multihead"``.
  Grouped-query key/value heads are passed through unrepeated, ``output_attentions=True``
  returns our per-head weights, and a query with no key to attend to (a left-padding position)
  gets zeros instead of NaN.
* :func:`convert` builds our :class:`~multihead.modules.models.Encoder` /
  :class:`~multihead.modules.models.EncoderClassifier` from a BERT model and our
  :class:`~multihead.modules.models.DecoderLM` from a GPT-2 model, with the same weights and the
  same outputs.

``transformers`` is an optional extra (``pip install multihead[hf]``); it is imported only when
these functions run.

Example:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from multihead.interop.huggingface import register, convert
    >>> name = register()
    >>> hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50,
    ...                                 bos_token_id=0, eos_token_id=0),
    ...                      ).eval()
    >>> hf.set_attn_implementation(name)
    >>> lm = convert(hf)
    >>> ids = torch.randint(0, 50, (1, 6))
    >>> bool(torch.allclose(lm(ids), hf(ids).logits, atol=1e-5))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import masks as M
from ..functional import attention, get_backend, make_spec
from ..modules.models import DecoderLM, Encoder, EncoderClassifier, TransformerConfig
from ..modules.observers import has_attention_observers, notify_attention_observers

__all__ = ["NAME", "attention_forward", "convert", "register"]

NAME = "multihead"  # the attn_implementation string users pass to from_pretrained/from_config

_REGISTERED: dict[str, str] = {}  # name -> backend, for idempotent register() calls


def registered_names() -> frozenset[str]:
    """The ``attn_implementation`` names :func:`register` has added in this process."""
    return frozenset(_REGISTERED)


# ------------------------------------------------------------------------------ attention


def _weights_requested(kwargs: dict[str, Any]) -> bool:
    """Whether the caller wants attention weights back.

    Some models (LLaMA, BERT) forward ``output_attentions`` to the attention function; others
    (GPT-2) pop it and let ``transformers``' output-capturing hooks read the weights from the
    attention module's return value. Computing weights forces the math kernel, so ask both.
    """
    if kwargs.get("output_attentions"):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # older/newer transformers without output capturing hooks
        return False
    collected = _active_collector.get()
    return bool(collected) and ("attentions" in collected or "cross_attentions" in collected)


def _hf_float_mask(mask: Tensor) -> Tensor:
    """HF's additive masks forbid with ``finfo.min`` rather than ``-inf``; make those ``-inf``
    so a row with nothing to attend to is recognised as empty (zeros, not a uniform average)."""
    return mask.masked_fill(mask <= torch.finfo(mask.dtype).min, float("-inf"))


def attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    *,
    backend: str = "auto",
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The ``AttentionInterface`` function: HF's kernel signature on top of ours.

    Args:
        module: the HF attention module (read for ``is_causal``).
        query: ``(B, H, Nq, D)``; key/value: ``(B, Hkv, Nk, D)`` (not repeated for GQA).
        attention_mask: what the registered mask function built: ``None`` or a bool
            ``(B, 1, Nq, Nk)`` mask, ``True`` = may attend (padding, causality and sliding
            windows already combined), or a custom float mask passed straight through by HF.
        dropout: attention dropout (HF passes 0 in evaluation).
        scaling: logit scale (default ``1/sqrt(D)``; GPT-2's layer-wise scaling arrives here).
        is_causal: overrides ``module.is_causal`` when the mask was skipped.
        backend: a multihead backend name or ``"auto"``.

    Returns:
        ``(output (B, Nq, H, Dv), weights (B, H, Nq, Nk) or None)`` as HF expects.
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='multihead' does not support logit softcapping")
    if kwargs.get("s_aux") is not None:
        raise ValueError("attn_implementation='multihead' does not support attention sinks (s_aux)")
    if kwargs.get("cache") is not None:
        raise ValueError(
            "attn_implementation='multihead' does not support paged caches (continuous batching)"
        )
    nq, nk = query.shape[2], key.shape[2]
    mask = attention_mask
    causal = False
    window = None
    if mask is None:
        # The mask function skipped materializing a plain causal (or empty) mask, as it does
        # for sdpa; causality then comes from the module, and never for a single query.
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
        causal = causal and nq > 1
        if causal and nk > nq:
            # HF skips the mask here only for a prefill into an empty static cache, where it
            # relies on top-left alignment: the keys past the queries are unwritten slots.
            key, value = key[:, :, :nq], value[:, :, :nq]
        sliding = kwargs.get("sliding_window")
        if causal and sliding is not None:
            window = (int(sliding) - 1, 0)  # HF's window counts the query itself
    elif mask.dtype != torch.bool:
        mask = _hf_float_mask(mask)
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5-style relative bias: fold it into one additive mask
        mask = M.combine_masks(mask, bias)
    need_weights = _weights_requested(kwargs)
    if has_attention_observers():  # multihead.viz.capture_attention is recording
        notify_attention_observers(
            module, make_spec(query, key, value, mask, causal=causal, window=window, scale=scaling)
        )
    out, weights = attention(
        query,
        key,
        value,
        mask=mask,
        causal=causal,
        window=window,
        scale=scaling,
        dropout_p=float(dropout),
        need_weights=need_weights,
        backend="math" if need_weights and backend == "auto" else backend,
    )
    return out.transpose(1, 2).contiguous(), weights  # (B, Nq, H, Dv)


def register(name: str = NAME, *, backend: str = "auto") -> str:
    """Register multihead's attention with ``transformers`` under ``name``; returns ``name``.

    After this, ``AutoModel.from_pretrained(..., attn_implementation=name)`` (or
    ``model.set_attn_implementation(name)``) runs attention on
    :func:`multihead.functional.attention` with ``backend``. Padding masks reach the kernel as
    bool masks (``True`` = may attend), built by the same mask function as ``"sdpa"``.
    Calling it again with the same arguments is a no-op.

    Example:
        >>> from transformers import AutoModel, BertConfig
        >>> name = register()
        >>> config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=64, vocab_size=50)
        >>> model = AutoModel.from_config(config, attn_implementation=name)
        >>> model.config._attn_implementation
        'multihead'
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if name in ("eager", "sdpa") or name.startswith(("flash", "flex", "paged")):
        raise ValueError(f"name must not shadow a built-in implementation, got {name!r}")
    if backend != "auto":
        get_backend(backend)  # a ValueError listing the registered names
    if _REGISTERED.get(name) == backend:
        return name
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    def forward(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        return attention_forward(
            module, query, key, value, attention_mask, backend=backend, **kwargs
        )

    forward.__doc__ = attention_forward.__doc__
    AttentionInterface.register(name, forward)
    # sdpa's mask function gives bool masks (True = attend) and None when is_causal suffices;
    # without an entry here HF would pass no mask at all to an unknown implementation.
    AttentionMaskInterface.register(name, sdpa_mask)
    _REGISTERED[name] = backend
    return name


# ------------------------------------------------------------------------------ convert


class PooledEncoderClassifier(EncoderClassifier):
    """:class:`~multihead.modules.models.EncoderClassifier` that classifies BERT's way: the
    first token's output through a ``tanh`` pooler, instead of the mean over real tokens.

    ``state_dict`` adds ``pooler.{weight,bias} (E, E)`` to the parent's keys.

    Example:
        >>> config = TransformerConfig(vocab_size=30, d_model=16, num_heads=2, d_ff=32,
        ...                            num_classes=3)
        >>> model = PooledEncoderClassifier(config)
        >>> model.pooler.weight.shape, model(torch.randint(0, 30, (4, 7))).shape
        (torch.Size([16, 16]), torch.Size([4, 3]))
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.pooler = nn.Linear(config.d_model, config.d_model)

    def _pool(self, hidden: Tensor, padding_mask: Tensor | None) -> Tensor:
        """The first ([CLS]) token's output through the pooler: ``(B, N, E)`` -> ``(B, E)``."""
        return torch.tanh(self.pooler(hidden[:, 0]))


_BERT_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
                     "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}  # fmt: skip
_GPT2_ACTIVATIONS = _BERT_ACTIVATIONS


def _unsupported(model: Any, what: str) -> ValueError:
    return ValueError(f"cannot convert {type(model).__name__}: {what}")


def _activation(model: Any, name: Any, table: dict[str, str]) -> str:
    if name not in table:
        raise _unsupported(model, f"activation {name!r} (supported: {sorted(table)})")
    return table[name]


def _dropout(value: Any) -> float:
    return 0.0 if value is None else float(value)


def _bert_config(model: Any, num_classes: int | None) -> TransformerConfig:
    c = model.config
    if getattr(c, "is_decoder", False) or getattr(c, "add_cross_attention", False):
        raise _unsupported(model, "is_decoder / add_cross_attention (a BERT decoder)")
    kind = getattr(c, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise _unsupported(model, f"position_embedding_type={kind!r} (only 'absolute')")
    pad = c.pad_token_id if c.pad_token_id is not None else 0
    return TransformerConfig(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        num_heads=c.num_attention_heads,
        num_encoder_layers=c.num_hidden_layers,
        num_decoder_layers=0,
        d_ff=c.intermediate_size,
        dropout=_dropout(c.hidden_dropout_prob),
        attn_dropout=_dropout(c.attention_probs_dropout_prob),
        max_len=c.max_position_embeddings,
        positional="learned",
        norm_first=False,  # BERT is post-norm ("Add & Norm")
        activation=_activation(model, c.hidden_act, _BERT_ACTIVATIONS),
        norm_eps=c.layer_norm_eps,
        embed_scale=False,
        embedding_norm=True,
        type_vocab_size=c.type_vocab_size,
        tie_embeddings=False,
        pad_id=pad,
        num_classes=num_classes,
    )


def _bert_state(bert: Any, prefix: str) -> dict[str, Tensor]:
    """Our ``state_dict`` entries of one BERT encoder stack (``bert`` is a ``BertModel``);
    ``prefix`` is ``"encoder."`` inside a classifier and ``""`` for a bare :class:`Encoder`."""
    emb = bert.embeddings
    state = {
        f"{prefix}embedding.weight": emb.word_embeddings.weight,
        f"{prefix}positional.weight": emb.position_embeddings.weight,
        f"{prefix}token_type.weight": emb.token_type_embeddings.weight,
        f"{prefix}embedding_norm.weight": emb.LayerNorm.weight,
        f"{prefix}embedding_norm.bias": emb.LayerNorm.bias,
    }
    for i, layer in enumerate(bert.encoder.layer):
        p = f"{prefix}layers.{i}"
        attn = layer.attention
        parts = {
            "self_attn.q_proj": attn.self.query,
            "self_attn.k_proj": attn.self.key,
            "self_attn.v_proj": attn.self.value,
            "self_attn.out_proj": attn.output.dense,
            "norm1": attn.output.LayerNorm,
            "feed_forward.linear1": layer.intermediate.dense,
            "feed_forward.linear2": layer.output.dense,
            "norm2": layer.output.LayerNorm,
        }
        for name, module in parts.items():
            state[f"{p}.{name}.weight"] = module.weight
            state[f"{p}.{name}.bias"] = module.bias
    return state


def _gpt2_config(model: Any) -> TransformerConfig:
    c = model.config
    if getattr(c, "add_cross_attention", False):
        raise _unsupported(model, "add_cross_attention=True")
    if not getattr(c, "scale_attn_weights", True):
        raise _unsupported(model, "scale_attn_weights=False (unscaled dot products)")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        raise _unsupported(model, "scale_attn_by_inverse_layer_idx=True (per-layer scaling)")
    pad = c.pad_token_id if c.pad_token_id is not None else 0
    return TransformerConfig(
        vocab_size=c.vocab_size,
        d_model=c.n_embd,
        num_heads=c.n_head,
        num_encoder_layers=0,
        num_decoder_layers=c.n_layer,
        d_ff=c.n_inner if c.n_inner is not None else 4 * c.n_embd,
        dropout=_dropout(c.resid_pdrop),
        attn_dropout=_dropout(c.attn_pdrop),
        max_len=c.n_positions,
        positional="learned",
        norm_first=True,
        activation=_activation(model, c.activation_function, _GPT2_ACTIVATIONS),
        norm_eps=c.layer_norm_epsilon,
        final_norm=True,
        embed_scale=False,
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        pad_id=pad,
    )


def _gpt2_state(lm: Any) -> dict[str, Tensor]:
    """Our ``DecoderLM`` ``state_dict`` from a ``GPT2LMHeadModel``. GPT-2's ``Conv1D`` stores
    ``(in, out)`` weights, the transpose of ``nn.Linear``'s ``(out, in)``."""
    gpt = lm.transformer
    e = lm.config.n_embd
    state = {
        "decoder.embedding.weight": gpt.wte.weight,
        "decoder.positional.weight": gpt.wpe.weight,
        "decoder.norm.weight": gpt.ln_f.weight,
        "decoder.norm.bias": gpt.ln_f.bias,
        "lm_head.weight": lm.lm_head.weight,
    }
    for i, block in enumerate(gpt.h):
        p = f"decoder.layers.{i}"
        # c_attn maps E -> 3E laid out as [q | k | v], heads contiguous within each.
        qkv_w = block.attn.c_attn.weight.t()  # (3E, E)
        qkv_b = block.attn.c_attn.bias
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[f"{p}.self_attn.{name}.weight"] = qkv_w[j * e : (j + 1) * e]
            state[f"{p}.self_attn.{name}.bias"] = qkv_b[j * e : (j + 1) * e]
        linears = {
            "self_attn.out_proj": block.attn.c_proj,
            "feed_forward.linear1": block.mlp.c_fc,
            "feed_forward.linear2": block.mlp.c_proj,
        }
        for name, conv in linears.items():
            state[f"{p}.{name}.weight"] = conv.weight.t()
            state[f"{p}.{name}.bias"] = conv.bias
        for ours, theirs in (("norm1", block.ln_1), ("norm2", block.ln_2)):
            state[f"{p}.{ours}.weight"] = theirs.weight
            state[f"{p}.{ours}.bias"] = theirs.bias
    return state


def _load(model: nn.Module, state: dict[str, Tensor], source: nn.Module) -> None:
    """Copy ``state`` into ``model``: every key must match, so a mapping that forgets a weight
    fails here instead of leaving it randomly initialized."""
    ref = next(source.parameters())
    model.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    model.train(source.training)


def convert(hf_model: nn.Module) -> Encoder | EncoderClassifier | DecoderLM:
    """A multihead model with the weights of a Hugging Face model, computing the same outputs.

    * ``BertModel`` -> :class:`Encoder` (``hidden`` = ``last_hidden_state``; the pooler,
      which only feeds classification heads, is dropped);
    * ``BertForSequenceClassification`` -> :class:`PooledEncoderClassifier` (the logits);
    * ``GPT2LMHeadModel`` -> :class:`DecoderLM` (the logits; ``generate`` gives HF's greedy
      tokens).

    Our models take ``padding_mask`` (bool, ``True`` = real token: ``attention_mask.bool()``)
    with right padding, and ``token_type_ids=`` for BERT. The copy is independent of
    ``hf_model`` (weights are cloned), on its device and dtype, in its train/eval mode.

    Raises:
        TypeError: an architecture other than the ones above.
        ValueError: a supported architecture with an option we do not implement (e.g. GPT-2's
            ``scale_attn_by_inverse_layer_idx``, BERT's relative position embeddings).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=64,
        ...                             vocab_size=50)).eval()
        >>> encoder = convert(bert)
        >>> ids = torch.randint(0, 50, (2, 5))
        >>> bool(torch.allclose(encoder(ids).hidden, bert(ids).last_hidden_state, atol=1e-5))
        True
    """
    if not isinstance(hf_model, nn.Module):
        raise TypeError(f"hf_model must be a transformers model, got {type(hf_model).__name__}")
    hf: Any = hf_model  # transformers' submodules are untyped attributes
    kind = type(hf).__name__
    model: Encoder | EncoderClassifier | DecoderLM
    if kind == "BertModel":
        model = Encoder(_bert_config(hf, None))
        state = _bert_state(hf, "")
    elif kind == "BertForSequenceClassification":
        c = hf.config
        model = PooledEncoderClassifier(_bert_config(hf, c.num_labels))
        # BERT drops out the pooled vector with classifier_dropout, else hidden_dropout_prob.
        p = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        model.dropout.p = float(p)
        if hf.bert.pooler is None:
            raise _unsupported(hf, "a BERT without its pooler")
        state = _bert_state(hf.bert, "encoder.")
        state |= {
            "pooler.weight": hf.bert.pooler.dense.weight,
            "pooler.bias": hf.bert.pooler.dense.bias,
            "head.weight": hf.classifier.weight,
            "head.bias": hf.classifier.bias,
        }
    elif kind == "GPT2LMHeadModel":
        model = DecoderLM(_gpt2_config(hf))
        state = _gpt2_state(hf)
    else:
        raise TypeError(
            f"convert supports BertModel, BertForSequenceClassification and GPT2LMHeadModel, "
            f"got {kind}"
        )
    _load(model, state, hf_model)
    return model
