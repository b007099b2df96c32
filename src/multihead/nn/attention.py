"""The drop-in module: :class:`torch.nn.MultiheadAttention`'s interface on
:func:`multihead.functional.attention`. PyTorch's conventions are translated at the boundary
(``_kernel_mask``, ``_project``); see the package docstring for the legend."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .._validation import check_int
from ..functional import attention, get_backend
from ._checks import check_inputs, check_mask_dtype, check_mask_shapes

__all__ = ["MultiheadAttention"]


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """PyTorch's reading of a mask as a bias: bool ``True`` becomes ``-inf``."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def _append_open_keys(mask: Tensor, extra: int) -> Tensor:
    """Append ``extra`` key columns that nothing masks (for ``bias_k``/``bias_v`` and the zero key)."""
    pad = torch.zeros(*mask.shape[:-1], extra, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, pad], dim=-1)


def _top_left_causal(nq: int, nk: int, device: torch.device) -> Tensor:
    """Bool ``(Nq, Nk)``, ``True`` = may attend: query ``i`` sees keys ``0..i``, as PyTorch's
    ``is_causal`` (our ``causal=True`` aligns bottom-right, which differs when ``Nq != Nk``)."""
    return torch.ones(nq, nk, dtype=torch.bool, device=device).tril()


class MultiheadAttention(nn.Module):
    r"""Multi-head attention with :class:`torch.nn.MultiheadAttention`'s exact interface.

    .. math::
        \mathrm{MultiHead}(Q, K, V) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_H) W^O,
        \quad \mathrm{head}_i = \mathrm{softmax}\!\left(\frac{Q W_i^Q (K W_i^K)^\top}{\sqrt{D}}
        + \mathrm{mask}\right) V W_i^V

    Constructor, parameter names, ``state_dict`` layout and initialisation (under the same seed)
    are PyTorch's, so ``load_state_dict`` works in both directions and the module can stand in
    for ``nn.TransformerEncoderLayer.self_attn`` and friends.

    Args:
        embed_dim: model size ``E``.
        num_heads: query heads ``H``; ``E`` must be divisible by ``H``.
        dropout: dropout on the attention probabilities in training.
        bias: biases on the input and output projections.
        add_bias_kv: learned key and value appended to every sequence (parameters ``bias_k``,
            ``bias_v``).
        add_zero_attn: a zero key and value appended after those.
        kdim, vdim: feature sizes of ``key`` and ``value`` (default ``E``); when either differs
            the projections are ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``.
        batch_first: inputs and outputs are ``(B, L, E)`` instead of ``(L, B, E)``.
        device, dtype: where and how the parameters are created.
        num_kv_heads: (keyword-only extra) key/value heads ``Hkv`` for grouped-query attention;
            ``H % Hkv == 0``. With ``Hkv < H`` the projections are separate weights, so the
            ``state_dict`` is no longer PyTorch's.
        backend: (keyword-only extra) kernel for ``need_weights=False`` calls, a name of
            :func:`multihead.functional.backend_names` or ``"auto"``.

    Example:
        >>> mha = MultiheadAttention(32, 4, 0.0, batch_first=True)
        >>> x = torch.randn(2, 5, 32)
        >>> out, weights = mha(x, x, x, key_padding_mask=torch.tensor([[False] * 5, [False] * 3 + [True] * 2]))
        >>> out.shape, weights.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 5, 5]))
    """

    bias_k: Tensor | None
    bias_v: Tensor | None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        num_kv_heads: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_int(embed_dim, "embed_dim")
        check_int(num_heads, "num_heads")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                f"num_heads={num_heads}"
            )
        hkv = num_heads if num_kv_heads is None else check_int(num_kv_heads, "num_kv_heads")
        if num_heads % hkv != 0:
            raise ValueError(
                f"num_heads must be a multiple of num_kv_heads, got num_heads={num_heads} and "
                f"num_kv_heads={hkv}"
            )
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if backend != "auto":
            get_backend(backend)  # raises ValueError listing the names
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else check_int(kdim, "kdim")
        self.vdim = embed_dim if vdim is None else check_int(vdim, "vdim")
        self.num_heads = num_heads
        self.num_kv_heads = hkv
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        self.backend = backend
        # PyTorch's name; its Transformer layers read it to decide on their fused fast path,
        # which needs the packed (3E, E) weight and so never applies to grouped-query heads.
        self._qkv_same_embed_dim = (
            self.kdim == embed_dim and self.vdim == embed_dim and hkv == num_heads
        )
        kv_size = hkv * self.head_dim
        # Parameters are created in PyTorch's order with PyTorch's initialisers, so a seed gives
        # the same weights as torch.nn.MultiheadAttention under that seed.
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(kv_size, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(kv_size, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(embed_dim + 2 * kv_size, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        # PyTorch's class for this layer, so dynamic quantization treats it as PyTorch does.
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, kv_size, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, kv_size, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # PyTorch's initialisation, in PyTorch's order (see the note on parameter creation).
        if self.in_proj_weight is not None:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None and self.bias_v is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def extra_repr(self) -> str:
        extras = [f"embed_dim={self.embed_dim}", f"num_heads={self.num_heads}"]
        if self.num_kv_heads != self.num_heads:
            extras.append(f"num_kv_heads={self.num_kv_heads}")
        if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
            extras.append(f"kdim={self.kdim}, vdim={self.vdim}")
        extras.append(f"dropout={self.dropout}, batch_first={self.batch_first}")
        if self.backend != "auto":
            extras.append(f"backend={self.backend!r}")
        return ", ".join(extras)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``, with PyTorch's semantics.

        Args:
            query: ``(L, B, E)``, ``(B, L, E)`` with ``batch_first``, or unbatched ``(L, E)``.
            key: ``(S, B, kdim)``, ``(B, S, kdim)`` or ``(S, kdim)``.
            value: ``(S, B, vdim)``, ``(B, S, vdim)`` or ``(S, vdim)``.
            key_padding_mask: ``(B, S)`` (``(S,)`` unbatched); bool ``True`` = padding (ignored),
                float = added to the logits.
            need_weights: also return the attention weights (PyTorch's default).
            attn_mask: ``(L, S)`` or ``(B*H, L, S)`` (``(H, L, S)`` unbatched); bool ``True`` =
                may NOT attend, float = added to the logits.
            average_attn_weights: return weights averaged over heads ``(B, L, S)`` instead of per
                head ``(B, H, L, S)``.
            is_causal: PyTorch's hint that ``attn_mask`` is the causal mask. It requires
                ``attn_mask``; when neither ``key_padding_mask`` nor ``need_weights`` is given the
                mask is not read and a top-left causal structure is used instead, otherwise the
                hint is ignored and ``attn_mask`` is applied.

        Returns:
            ``(output, weights)``: output shaped like ``query``; weights (after dropout, as
            PyTorch's) or ``None``. Rows with every key masked give zeros, not NaN.
        """
        if any(isinstance(t, Tensor) and t.is_nested for t in (query, key, value)):
            return self._forward_nested(
                query, key, value, key_padding_mask, attn_mask, need_weights, average_attn_weights
            )
        return self._forward(
            query,
            key,
            value,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
            self.batch_first,
        )

    def _forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
        batch_first: bool,
    ) -> tuple[Tensor, Tensor | None]:
        batched = check_inputs(
            query, key, value, (self.embed_dim, self.kdim, self.vdim), batch_first
        )
        check_mask_dtype(key_padding_mask, "key_padding_mask")
        check_mask_dtype(attn_mask, "attn_mask")
        if is_causal and attn_mask is None:
            raise ValueError(
                "is_causal=True is PyTorch's hint that attn_mask is the causal mask and needs "
                "attn_mask (nn.Transformer.generate_square_subsequent_mask(L) makes one)"
            )
        if not batched:  # one sequence: run it as a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            batch_first = True
        b = query.shape[0] if batch_first else query.shape[1]
        nq = query.shape[1] if batch_first else query.shape[0]
        nk = key.shape[1] if batch_first else key.shape[0]
        check_mask_shapes(attn_mask, key_padding_mask, b, nq, nk, self.num_heads, batched)
        # PyTorch's hint: without padding or weights, the causal structure replaces attn_mask.
        causal_hint = is_causal and key_padding_mask is None and not need_weights
        if causal_hint:
            attn_mask = None

        q, k, v = self._project(query, key, value, batch_first)  # (B, H|Hkv, L|S, D)
        k, v, extra = self._append_keys(k, v)
        mask = self._kernel_mask(attn_mask, key_padding_mask, b, nq, extra, q.dtype)
        if need_weights:
            out, weights = self._attend_with_weights(q, k, v, mask)
        else:
            causal = False
            if causal_hint:
                nk_all = k.shape[2]
                if nq == nk_all:
                    causal = True  # our bottom-right alignment equals PyTorch's top-left here
                else:
                    mask = _top_left_causal(nq, nk_all, q.device)[None, None]
            out = attention(
                q,
                k,
                v,
                mask,
                causal=causal,
                dropout_p=self.dropout if self.training else 0.0,
                backend=self.backend,
            ).output
            weights = None

        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(nq, b, self.embed_dim))  # (L, B, E)
        if batch_first:
            # A (B, L, E) view of (L, B, E) memory, as PyTorch returns: a dropout applied to the
            # output then draws its mask in the same memory order, so seeded runs stay equal.
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (B, L, S)
        if not batched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _forward_nested(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        need_weights: bool,
        average_attn_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention over a nested tensor of ``B`` sequences ``(L_i, E)``, as PyTorch's
        encoder passes it when its fused path is declined for a layer (for instance because a
        hook is attached): run padded with a padding mask, return a nested output. Weights, if
        asked for, come as a padded tensor ``(B, [H,] max L, max L)``."""
        if not (query is key and key is value):
            raise TypeError(
                "nested tensors are supported for self-attention only (query is key is value)"
            )
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError(
                "with a nested query, padding is given by the sequences' lengths: pass neither "
                "key_padding_mask nor attn_mask"
            )
        lengths = [t.shape[0] for t in query.unbind()]
        padded = query.to_padded_tensor(0.0)  # (B, max L, E)
        positions = torch.arange(padded.shape[1], device=padded.device)
        pad = positions[None, :] >= torch.tensor(lengths, device=padded.device)[:, None]
        out, weights = self._forward(
            padded, padded, padded, pad, need_weights, None, average_attn_weights, False, True
        )
        parts = [out[i, :n] for i, n in enumerate(lengths)]
        return torch.nested.as_nested_tensor(parts, layout=torch.strided), weights

    def _project(
        self, query: Tensor, key: Tensor, value: Tensor, batch_first: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Input projections, split into heads: ``(B, H, L, D)``, ``(B, Hkv, S, D)`` twice."""
        e, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        bias = self.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.split([e, kv, kv])
        if self.in_proj_weight is not None:
            w = self.in_proj_weight
            # One matrix product for what shares an input, as PyTorch does.
            if query is key and key is value:
                q, k, v = F.linear(query, w, bias).split([e, kv, kv], dim=-1)
            elif key is value:
                w_q, w_kv = w.split([e, 2 * kv])
                b_kv = None if bias is None else bias[e:]
                q = F.linear(query, w_q, b_q)
                k, v = F.linear(key, w_kv, b_kv).split([kv, kv], dim=-1)
            else:
                w_q, w_k, w_v = w.split([e, kv, kv])
                q, k, v = (
                    F.linear(query, w_q, b_q),
                    F.linear(key, w_k, b_k),
                    F.linear(value, w_v, b_v),
                )
        else:
            assert self.q_proj_weight is not None  # for mypy: set whenever in_proj_weight is not
            q = F.linear(query, self.q_proj_weight, b_q)
            k = F.linear(key, self.k_proj_weight, b_k)
            v = F.linear(value, self.v_proj_weight, b_v)
        # (B, N, H, D) -> (B, H, N, D) when batch first; (N, B, H, D) -> (B, H, N, D) otherwise
        order = (0, 2, 1, 3) if batch_first else (1, 2, 0, 3)
        d = self.head_dim
        return (
            q.unflatten(-1, (self.num_heads, d)).permute(order),
            k.unflatten(-1, (self.num_kv_heads, d)).permute(order),
            v.unflatten(-1, (self.num_kv_heads, d)).permute(order),
        )

    def _append_keys(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """Append ``bias_k``/``bias_v`` and then a zero key/value, as PyTorch does; return how
        many keys were added, so that the masks can be widened to match."""
        b, hkv, _, d = k.shape
        extra = 0
        if self.bias_k is not None and self.bias_v is not None:
            bias_k = self.bias_k.view(1, hkv, 1, d).expand(b, -1, -1, -1)  # (B, Hkv, 1, D)
            bias_v = self.bias_v.view(1, hkv, 1, d).expand(b, -1, -1, -1)
            k, v = torch.cat([k, bias_k], dim=2), torch.cat([v, bias_v], dim=2)
            extra += 1
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(b, hkv, 1, d)], dim=2)
            v = torch.cat([v, v.new_zeros(b, hkv, 1, d)], dim=2)
            extra += 1
        return k, v, extra

    def _kernel_mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        b: int,
        nq: int,
        extra: int,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """PyTorch's two masks as one 4-D mask in the kernel's convention: bool ``True`` = may
        attend when both are bool (or only one is given), else their sum as an additive bias."""
        masks = []
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(b, self.num_heads, nq, -1)  # (B, H, L, S)
            else:
                attn_mask = attn_mask[None, None]  # (1, 1, L, S)
            masks.append(attn_mask)
        if key_padding_mask is not None:
            masks.append(key_padding_mask[:, None, None, :])  # (B, 1, 1, S)
        if not masks:
            return None
        if extra:
            masks = [_append_open_keys(m, extra) for m in masks]
        if all(m.dtype == torch.bool for m in masks):
            allowed = ~masks[0]
            for m in masks[1:]:
                allowed = allowed & ~m
            return allowed
        bias = _as_additive(masks[0], dtype)
        for m in masks[1:]:
            bias = bias + _as_additive(m, dtype)
        return bias

    def _attend_with_weights(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Softmax attention that keeps its probabilities: they are computed once and serve both
        as the returned weights and for the output, ``P @ V``.

        Returns ``(output (B, H, L, D), weights (B, H, L, S))``; weights are after dropout in
        training, as PyTorch returns them.
        """
        b, h, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        # Softmax in float32 for half-precision inputs, so large logits cannot overflow.
        work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        # Scaling q before the product costs (B, H, L, D) work, not (B, H, L, S) as after it.
        q, k = q.to(work) * (1.0 / math.sqrt(d)), k.to(work)
        bias = None
        if mask is not None and mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=work, device=mask.device)
            bias = bias.masked_fill(~mask, -math.inf)  # (B|1, H|1, L|1, S), the mask's size
        elif mask is not None:
            bias = mask.to(work)
        if bias is not None and hkv == h:
            # The bias is added inside the batched product, as PyTorch's baddbmm does: one pass
            # over (B, H, L, S) fewer than a separate addition.
            flat_bias = (
                bias.expand(b, h, -1, -1).flatten(0, 1) if bias.shape[:2] != (1, 1) else bias[0]
            )
            logits = torch.baddbmm(
                flat_bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2)
            ).view(b, h, nq, nk)
        else:
            q = q.unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, L, D): groups share a key head
            logits = (q @ k.unsqueeze(2).transpose(-1, -2)).flatten(1, 2)  # (B, H, L, S)
            if bias is not None:
                logits = logits + bias
        if bias is None:
            probs = torch.softmax(logits, dim=-1)
        else:
            # Logits are finite, so a row has no key exactly where its bias is all -inf: found
            # at the mask's own (broadcast) size instead of scanning the full logits.
            dead = torch.isneginf(bias).all(dim=-1, keepdim=True)  # (B|1, H|1, L|1, 1)
            if torch.compiler.is_compiling() or bool(dead.any()):
                # Finite logits in empty rows keep softmax and its gradient finite; the rows'
                # probabilities are then zeroed.
                probs = torch.softmax(logits.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
            else:
                probs = torch.softmax(logits, dim=-1)
        if self.training and self.dropout > 0.0:
            probs = F.dropout(probs, p=self.dropout)
        out = probs.unflatten(1, (hkv, h // hkv)) @ v.to(work).unsqueeze(2)  # (B, Hkv, G, L, D)
        return out.flatten(1, 2).to(v.dtype), probs.to(v.dtype)

    def merge_masks(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, query: Tensor
    ) -> tuple[Tensor | None, int | None]:
        """PyTorch's helper for its fused Transformer fast path, which reads this module's
        parameters directly: masks in PyTorch's convention and its mask type code (0: only
        ``attn_mask`` ``(L, L)``, 1: only ``key_padding_mask`` ``(B, L)``, 2: both, merged to
        ``(B, H, L, L)``)."""
        if attn_mask is None:
            return key_padding_mask, None if key_padding_mask is None else 1
        b, n, _ = query.shape
        if attn_mask.dim() == 3:
            expanded = attn_mask.view(b, -1, n, n)
        else:
            expanded = attn_mask.view(1, 1, n, n).expand(b, self.num_heads, -1, -1)
        if key_padding_mask is None:
            return expanded, 2
        padding = key_padding_mask.view(b, 1, 1, n).expand(-1, self.num_heads, -1, -1)
        return expanded + padding, 2
