"""``MultiHeadAttention``: the projections around :func:`multihead.functional.attention`,
plus what lives between them and the kernel: rotary embeddings and ALiBi biases (position
schemes that act on q/k or on the logits) and key/value caches for incremental decoding.

``state_dict`` keys: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (each ``.weight`` and,
with ``bias=True``, ``.bias``), in ``nn.Linear`` layout ``(out_features, in_features)``:
``q_proj (H * Dk, E)``, ``k_proj (Hkv * Dk, kdim)``, ``v_proj (Hkv * Dv, vdim)``,
``out_proj (E, H * Dv)``. Heads are contiguous row blocks (head ``h`` owns rows
``h * Dk : (h + 1) * Dk``). Rotary tables and ALiBi slopes are not in the ``state_dict``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks as M
from .._validation import check_bool, check_choice, check_int, check_options, check_probability
from ..cache import KVCache, StaticKVCache
from ..distributed.model import ContextParallel, context_parallel_forward
from ..functional import AttentionResult, AttentionSpec, get_backend, select_backend
from ..functional._checks import check_mask
from ..functional._prepare import build_spec
from ..positional import RotaryEmbedding, alibi_slopes, check_positions
from . import torch_convert
from .observers import add_attention_observer, has_attention_observers, notify_attention_observers

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ForwardOptions", "MultiHeadAttention", "add_attention_observer"]


class ForwardOptions(TypedDict, total=False):
    """The keywords of :meth:`MultiHeadAttention.forward` after its inputs, as
    :meth:`MultiHeadAttention.why_backend` takes them."""

    mask: Tensor | None
    key_padding_mask: Tensor | None
    causal: bool
    need_weights: bool
    window: int | tuple[int, int] | None
    cache: KVCache | StaticKVCache | None
    positions: Tensor | None


# forward's arguments in its order, as forward hands them to _spec: query; key, value, mask,
# key_padding_mask; causal, need_weights; window; cache; positions.
_Call = tuple[
    Tensor, "Tensor | None", "Tensor | None", "Tensor | None", "Tensor | None", bool, bool,
    "int | tuple[int, int] | None", "KVCache | StaticKVCache | None", "Tensor | None",
]  # fmt: skip


def _plain_linear(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not nn.modules.module._global_forward_hooks
        and not nn.modules.module._global_forward_pre_hooks
    )


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention (Vaswani et al., 2017, Sec. 3.2.2), batch first.

    .. math::
        \mathrm{MultiHead}(Q, K, V) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_H) W^O,
        \quad \mathrm{head}_i = \mathrm{Attention}(Q W_i^Q, K W_i^K, V W_i^V)

    Args:
        embed_dim: ``E``, the size of the query input and of the output.
        num_heads: ``H``, the number of query heads.
        kdim: size of the key *input* (default ``E``).
        vdim: size of the value *input* (default ``E``).
        head_dim: ``Dk``, per-head query/key size (default ``E // H``; then ``E % H == 0``).
        v_head_dim: ``Dv``, per-head value size (default ``head_dim``).
        num_kv_heads: ``Hkv``, key/value heads for grouped-query (``1``: multi-query)
            attention; ``H % Hkv == 0`` (default ``H``).
        bias: add biases to the four projections.
        dropout: dropout on the attention probabilities while training.
        backend: kernel name or ``"auto"`` (see :func:`multihead.functional.backend_names`).
        score: ``"dot"`` or ``"cosine"`` (cosine similarity with inverse temperature
            ``sqrt(Dk)``).
        rotary: rotate queries and keys by their absolute positions (RoPE, Su et al., 2021;
            half-split pairing, see :class:`multihead.positional.RotaryEmbedding`) before
            attending and before caching. Needs an even ``head_dim``.
        rope_base: RoPE's wavelength base.
        alibi: add ALiBi's head-specific linear bias ``-m_h |i - j|`` to the logits (Press et
            al., 2022). Not combinable with ``rotary``.

    Positions (for ``rotary`` and ``alibi``): keys are at ``0 .. Nk - 1`` (counting cached
    keys) and queries are aligned bottom-right, the last query with the last key, as causal
    masks are: without a cache a self-attention query ``i`` is at position ``i``; with a
    :class:`~multihead.cache.KVCache` the new tokens are at ``cache.length .. + Nq - 1``.
    ``positions`` overrides this for self-attention with ``rotary`` (e.g. left-padded prompts).

    Shapes (forward): ``query (B, Nq, E)``, ``key (B, Nk, kdim)``, ``value (B, Nk, vdim)``;
    ``mask`` ``(Nq, Nk)``, ``(B, Nq, Nk)`` or ``(B|1, H|1, Nq, Nk)``; ``key_padding_mask``
    ``(B, Nk)``. Bool masks: ``True`` = may attend (``True`` = real token for padding). Float
    masks are added to the logits. Returns ``(output (B, Nq, E), weights (B, H, Nq, Nk) or
    None)``. With a ``KVCache``, ``Nk`` counts the cached keys and ``key_padding_mask`` covers
    every token seen, ``(B, cache.length + Nq)``.

    ``context_parallel`` (a :class:`~multihead.distributed.ContextParallel`, default ``None``):
    self-attention over this rank's shard of each sequence (see ``docs/distributed.md``).

    Example:
        >>> mha = MultiHeadAttention(64, 8)
        >>> x = torch.randn(2, 10, 64)
        >>> out, weights = mha(x, causal=True, need_weights=True)
        >>> out.shape, weights.shape
        (torch.Size([2, 10, 64]), torch.Size([2, 8, 10, 10]))

    Incremental decoding with a cache equals the full causal pass:

        >>> from multihead.cache import KVCache
        >>> mha = MultiHeadAttention(16, 4, num_kv_heads=2, rotary=True).eval()
        >>> x = torch.randn(1, 5, 16)
        >>> full = mha(x, causal=True).output
        >>> cache = KVCache(max_len=5)
        >>> steps = [mha(x[:, :3], causal=True, cache=cache).output]
        >>> steps += [mha(x[:, t : t + 1], causal=True, cache=cache).output for t in (3, 4)]
        >>> torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
        True
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        num_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        score: str = "dot",
        rotary: bool = False,
        rope_base: float = 10000.0,
        alibi: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        embed_dim = check_int(embed_dim, "embed_dim")
        num_heads = check_int(num_heads, "num_heads")
        if head_dim is None:
            if embed_dim % num_heads != 0:
                raise ValueError(
                    f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} "
                    "unless head_dim is given"
                )
            head_dim = embed_dim // num_heads
        head_dim = check_int(head_dim, "head_dim")
        v_head_dim = check_int(head_dim if v_head_dim is None else v_head_dim, "v_head_dim")
        num_kv_heads = check_int(
            num_heads if num_kv_heads is None else num_kv_heads, "num_kv_heads"
        )
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}"
            )
        check_probability(dropout, "dropout")
        check_choice(score, "score", ("dot", "cosine"))
        if backend != "auto":
            get_backend(backend)  # fail at construction, not on the first call
        check_bool(rotary, "rotary")
        check_bool(alibi, "alibi")
        if rotary and alibi:
            raise ValueError(
                "rotary=True and alibi=True cannot be combined: both encode relative positions"
            )

        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.kdim = check_int(embed_dim if kdim is None else kdim, "kdim")
        self.vdim = check_int(embed_dim if vdim is None else vdim, "vdim")
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim
        self.dropout = float(dropout)
        self.backend = backend
        self.score = score

        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, num_kv_heads * v_head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(num_heads * v_head_dim, embed_dim, bias=bias, **factory)
        self.rotary: RotaryEmbedding | None = (
            RotaryEmbedding(head_dim, base=rope_base) if rotary else None
        )
        self.alibi_slopes: Tensor | None
        if alibi:
            # A non-persistent buffer: the slopes are fixed by H (Press et al., 2022, Sec. 3).
            self.register_buffer("alibi_slopes", alibi_slopes(num_heads), persistent=False)
        else:
            self.alibi_slopes = None
        # Set by multihead.distributed.enable_context_parallel: sequences sharded across ranks.
        self.context_parallel: ContextParallel | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections and zero biases, as ``torch.nn.MultiheadAttention``."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    @property
    def bias(self) -> bool:
        return self.q_proj.bias is not None

    def extra_repr(self) -> str:
        # Options that only matter when set are shown only then; kdim and vdim go together.
        other_inputs = self.kdim != self.embed_dim or self.vdim != self.embed_dim
        fields: tuple[tuple[str, object, bool], ...] = (
            ("embed_dim", self.embed_dim, True),
            ("num_heads", self.num_heads, True),
            ("num_kv_heads", self.num_kv_heads, self.num_kv_heads != self.num_heads),
            ("head_dim", self.head_dim, True),
            ("v_head_dim", self.v_head_dim, self.v_head_dim != self.head_dim),
            ("kdim", self.kdim, other_inputs),
            ("vdim", self.vdim, other_inputs),
            ("dropout", self.dropout, True),
            ("backend", self.backend, True),
            ("score", self.score, self.score != "dot"),
            ("alibi", True, self.alibi_slopes is not None),
        )
        return ", ".join(f"{name}={value!r}" for name, value, shown in fields if shown)

    # ----------------------------------------------------------------------------- forward

    def _check_input(self, x: Tensor, name: str, size: int, size_name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != size:
            raise ValueError(
                f"{name} must be 3-D (B, N, {size_name}={size}), got shape {tuple(x.shape)}"
            )

    def _check_shapes(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        self._check_input(query, "query", self.embed_dim, "embed_dim")
        self._check_input(key, "key", self.kdim, "kdim")
        self._check_input(value, "value", self.vdim, "vdim")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                "query, key and value must share the batch size and key/value the length, got "
                f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
            )

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project inputs and split heads: ``q (B, H, Nq, Dk)``, ``k (B, Hkv, Nk, Dk)``,
        ``v (B, Hkv, Nk, Dv)``. One fused matrix product for self-attention under autograd."""
        # Fused only when autograd records the product: concatenating the weights copies all
        # three matrices on every call, as much memory traffic as the product itself at batch 1,
        # so decoding (no grad) runs three products on the weights in place instead.
        # Also only for plain nn.Linear projections without hooks: fusing bypasses their
        # forward, which wrappers (LoRA, quantized layers) and hooks rely on.
        fuse = (
            torch.is_grad_enabled()
            and self.q_proj.weight.requires_grad
            and all(_plain_linear(p) for p in (self.q_proj, self.k_proj, self.v_proj))
        )
        if query is key and key is value and fuse:
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            bias = (
                torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
                if self.q_proj.bias is not None
                else None
            )
            q, k, v = F.linear(query, weight, bias).split(
                [
                    self.q_proj.out_features,
                    self.k_proj.out_features,
                    self.v_proj.out_features,
                ],
                dim=-1,
            )
            return self._heads(q, k, v)
        k, v = self._project_kv(key, value)
        return self._project_query(query), k, v

    def _heads(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # (B, N, heads * D) -> (B, heads, N, D)
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.num_kv_heads, self.v_head_dim)).transpose(1, 2)
        return q, k, v

    def _project_query(self, query: Tensor) -> Tensor:
        return self.q_proj(query).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _project_kv(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        k = self.k_proj(key).unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(value).unflatten(-1, (self.num_kv_heads, self.v_head_dim)).transpose(1, 2)
        return k, v  # (B, Hkv, Nk, Dk), (B, Hkv, Nk, Dv)

    def build_mask(
        self,
        mask: Tensor | None,
        key_padding_mask: Tensor | None,
        batch: int,
        nq: int,
        nk: int,
        device: torch.device | None = None,
    ) -> Tensor | None:
        """Check ``mask`` and ``key_padding_mask`` (against ``device``, the query's, when given)
        and combine them into one 4-D mask (or ``None``). Called before any cache changes, so a
        failing call leaves the cache as is."""
        if mask is not None:
            M.check_mask_dtype(mask, "mask")
            if mask.dim() == 3:
                if mask.shape != (batch, nq, nk):
                    raise ValueError(
                        f"a 3-D mask must be (B, Nq, Nk) = {(batch, nq, nk)}, "
                        f"got shape {tuple(mask.shape)}"
                    )
                mask = mask.unsqueeze(1)
            mask = check_mask(mask, (batch, self.num_heads, nq, nk), device)
        if key_padding_mask is not None:
            M.check_mask_dtype(key_padding_mask, "key_padding_mask")
            if key_padding_mask.shape != (batch, nk):
                raise ValueError(
                    f"key_padding_mask must be (B, Nk) = {(batch, nk)}, "
                    f"got shape {tuple(key_padding_mask.shape)}"
                )
            if device is not None and key_padding_mask.device != device:
                raise ValueError(
                    f"key_padding_mask must be on the query's device {device}, "
                    f"got {key_padding_mask.device}"
                )
            key_padding_mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk)
        if mask is None or key_padding_mask is None:
            return mask if key_padding_mask is None else key_padding_mask
        return M.combine_masks(mask, key_padding_mask)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        *,
        window: int | tuple[int, int] | None = None,
        cache: KVCache | StaticKVCache | None = None,
        positions: Tensor | None = None,
    ) -> AttentionResult:
        """Attend from ``query`` to ``key``/``value`` (self-attention when ``key`` is None;
        ``value`` defaults to ``key``). See the class docstring for shapes.

        Args:
            window: sliding window, as in :func:`multihead.functional.attention`.
            cache: a :class:`~multihead.cache.KVCache` for self-attention (``key`` and
                ``value`` None): only ``query``'s tokens are projected, appended, and attend to
                every cached key (``causal`` is bottom-right aligned, so the new tokens see all
                earlier ones). A :class:`~multihead.cache.StaticKVCache` for cross-attention:
                ``key``/``value`` are projected on the first call and reused afterwards.
            positions: absolute positions ``(Nq,)`` or ``(B, Nq)`` of the query tokens, for
                self-attention with ``rotary`` (default: counted from ``cache.length``).
        """
        call = (query, key, value, mask, key_padding_mask, causal, need_weights, window, cache)
        if self.context_parallel is not None:  # this rank's shard of each sequence
            return AttentionResult(context_parallel_forward(self, *call, positions), None)
        # 1) project, 2) positions (RoPE), 3) cache, 4) attend, 5) concat heads + W_O.
        spec = self._spec((*call, positions))
        if has_attention_observers():
            notify_attention_observers(self, spec)
        out, weights = select_backend(spec, self.backend)[0].fn(spec)
        out = out.transpose(1, 2).flatten(2)  # (B, H, Nq, Dv) -> (B, Nq, H * Dv)
        return AttentionResult(self.out_proj(out), weights)

    def _spec(self, call: _Call) -> AttentionSpec:
        """Everything :meth:`forward` does before the kernel, for ``forward``'s arguments in
        its order: the call's :class:`~multihead.functional.AttentionSpec` (projected, rotated,
        cached). Updates the cache as ``forward`` does; :meth:`why_backend` passes a copy."""
        query, key, value, mask, key_padding_mask, causal, need_weights = call[:7]
        window, cache, positions = call[7:]
        self._check_input(query, "query", self.embed_dim, "embed_dim")
        check_bool(causal, "causal")
        check_bool(need_weights, "need_weights")
        self_attention = (key is None or key is query) and (value is None or value is query)
        b, nq, _ = query.shape
        if positions is not None:
            if not self_attention:
                raise ValueError("positions is only for self-attention (key and value None)")
            if self.rotary is None:
                raise ValueError(
                    "positions needs rotary=True (ALiBi and plain attention read positions from "
                    "the key order)"
                )
            positions = check_positions(positions, b, nq)

        if isinstance(cache, StaticKVCache):
            q, k, v, full_mask = self._cross_cached(
                query, key, value, mask, key_padding_mask, cache
            )
        elif isinstance(cache, KVCache):
            if not self_attention:
                raise ValueError(
                    "a KVCache caches self-attention: pass key=None and value=None (use a "
                    "StaticKVCache for cross-attention)"
                )
            q, k, v, full_mask, window = self._self_cached(
                query, mask, key_padding_mask, causal, need_weights, window, cache, positions
            )
        elif cache is not None:
            raise TypeError(
                f"cache must be a KVCache, a StaticKVCache or None, got {type(cache).__name__}"
            )
        else:
            key = query if key is None else key
            value = key if value is None else value
            self._check_shapes(query, key, value)
            full_mask = self.build_mask(mask, key_padding_mask, b, nq, key.shape[1], query.device)
            q, k, v = self.project(query, key, value)
            if self.rotary is not None:
                q, k = self.rotary.rotate_qk(q, k, 0, positions, same_tokens=self_attention)
        return build_spec(
            q,
            k,
            v,
            full_mask,
            # One query at the end sees every earlier key: the causal mask is a no-op.
            causal=causal and nq > 1,
            window=window,
            scale=None,
            score=self.score,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
            alibi_slopes=self.alibi_slopes,
        )

    def _cross_cached(
        self,
        query: Tensor,
        key: Tensor | None,
        value: Tensor | None,
        mask: Tensor | None,
        key_padding_mask: Tensor | None,
        cache: StaticKVCache,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        if self.rotary is not None or self.alibi_slopes is not None:
            raise ValueError(
                "a StaticKVCache (cross-attention) cannot be used with rotary or alibi, "
                "which encode positions within one sequence"
            )
        b, nq, _ = query.shape
        if cache.is_set:
            k, v = cache.key, cache.value
            assert k is not None and v is not None
            if k.shape[0] != b:
                raise ValueError(
                    f"query has batch size {b} but the StaticKVCache holds {k.shape[0]} "
                    "rows; call cache.reorder(indices) when rows move (beam search)"
                )
        else:
            key = query if key is None else key
            value = key if value is None else value
            self._check_shapes(query, key, value)
            k, v = self._project_kv(key, value)
        full_mask = self.build_mask(mask, key_padding_mask, b, nq, k.shape[2], query.device)
        if not cache.is_set:
            cache.set(k, v)  # only once the call is known to be valid
        return self._project_query(query), k, v, full_mask

    def _self_cached(
        self,
        query: Tensor,
        mask: Tensor | None,
        key_padding_mask: Tensor | None,
        causal: bool,
        need_weights: bool,
        window: int | tuple[int, int] | None,
        cache: KVCache,
        positions: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int | tuple[int, int] | None]:
        b, nq, _ = query.shape
        offset = cache.length
        total = offset + nq
        # Checked before the cache changes, so that a failed call leaves it as it was.
        if key_padding_mask is not None and (
            not isinstance(key_padding_mask, Tensor) or key_padding_mask.shape != (b, total)
        ):
            got = (
                tuple(key_padding_mask.shape)
                if isinstance(key_padding_mask, Tensor)
                else type(key_padding_mask).__name__
            )
            raise ValueError(
                "with a KVCache, key_padding_mask covers every token seen: "
                f"(B, cache.length + Nq) = {(b, total)}, got {got}"
            )
        if cache.window is not None:
            if window is not None and M.as_window(window, causal=True) != (cache.window, 0):
                raise ValueError(
                    f"window={window!r} disagrees with the cache's window={cache.window}"
                )
            # A single new query sees exactly the keys the cache returns.
            window = (cache.window, 0) if nq > 1 else None
        nk = cache.next_num_keys(nq)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask[:, total - nk :]
        # Masks are checked before the cache changes, so that a failed call leaves it as it
        # was (a retried step must not append its tokens twice).
        full_mask = self.build_mask(mask, key_padding_mask, b, nq, nk, query.device)
        q, k, v = self.project(query, query, query)
        if self.rotary is not None:
            q, k = self.rotary.rotate_qk(q, k, offset, positions)
        if self.backend != "auto":
            # A named backend that cannot run the call must fail before the cache changes:
            # plan on stand-ins of the keys the cache is about to return.
            stand_in = AttentionSpec(
                query=q,
                key=k.new_empty((*k.shape[:2], nk, k.shape[3])),
                value=v.new_empty((*v.shape[:2], nk, v.shape[3])),
                mask=full_mask,
                causal=causal and nq > 1,
                window=M.as_window(window, causal=causal),
                scale=1.0,
                dropout_p=self.dropout if self.training else 0.0,
                need_weights=need_weights,
                alibi_slopes=self.alibi_slopes,
            )
            select_backend(stand_in, self.backend)
        k, v = cache.update(k, v)  # every key to attend to, the new ones last
        assert k.shape[2] == nk, (k.shape, nk)
        return q, k, v, full_mask, window

    def why_backend(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        **options: Unpack[ForwardOptions],
    ) -> str:
        """Which kernel :meth:`forward` with these arguments would use, and why the others
        were not. Built by the same code as :meth:`forward` (a given cache is copied, not
        changed), in the module's current train/eval mode. The keywords are
        :meth:`forward`'s (:class:`ForwardOptions`).

        Example:
            >>> mha = MultiHeadAttention(16, 2)
            >>> why = mha.why_backend(torch.randn(1, 3, 16), need_weights=True)
            >>> why.split()[0], "sdpa: fused kernels do not return attention weights" in why
            ('math', True)
        """
        check_options(options, ForwardOptions, "why_backend")
        if self.context_parallel is not None:
            return (
                "context_parallel (the sequence is sharded over the process group: "
                "multihead.distributed.context_parallel_attention)"
            )
        cache = options.get("cache")
        if cache is not None:
            options["cache"] = cache.clone()
        given = (options.get(name, default) for name, default in _FORWARD_DEFAULTS)
        with torch.no_grad():
            spec = self._spec(cast(_Call, (query, key, value, *given)))
        chosen, skipped = select_backend(spec, self.backend)
        if not skipped:
            return chosen.name
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        return f"{chosen.name} (skipped: {why})"

    # ----------------------------------------------------------------------------- interop

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """Build a ``MultiHeadAttention`` with the weights of a ``torch.nn.MultiheadAttention``.

        The result computes the same outputs, weights (per head) and gradients. Inputs are
        batch first whatever the torch module's ``batch_first``, and masks follow multihead's
        convention (bool ``True`` = may attend): invert a torch bool ``attn_mask`` or
        ``key_padding_mask`` with ``~``.

        Example:
            >>> torch_mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
            >>> mha = MultiHeadAttention.from_torch(torch_mha)
        """
        return torch_convert.from_torch(cls, module)

    def to_torch(self) -> nn.MultiheadAttention:
        """A ``torch.nn.MultiheadAttention(batch_first=True)`` with the same weights.

        Raises ``ValueError`` for options torch cannot represent (grouped-query heads, head sizes
        other than ``E // H``, ``v_head_dim != head_dim``, cosine scores).
        """
        return torch_convert.to_torch(self)


# The defaults of forward's keywords, read from its signature so that they are declared once.
_FORWARD_DEFAULTS: tuple[tuple[str, object], ...] = tuple(
    (p.name, p.default)
    for p in inspect.signature(MultiHeadAttention.forward).parameters.values()
    if p.name in ForwardOptions.__annotations__
)
