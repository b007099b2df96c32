"""Independent float64 references written plainly for the tests (not shared with the library).

Attention is deliberately naive: K/V are repeated per query head, masks are fully
materialized, and the softmax is computed per row over the allowed keys only.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def allowed_matrix(
    nq: int, nk: int, *, causal: bool, window: int | tuple[int, int] | None
) -> Tensor:
    """(Nq, Nk) bool, bottom-right aligned, written with explicit loops."""
    out = torch.ones(nq, nk, dtype=torch.bool)
    if window is None:
        left = right = None
    elif isinstance(window, int):
        left = right = window
    else:
        left, right = window
    for i in range(nq):
        p = i + nk - nq
        for j in range(nk):
            ok = True
            if causal and j > p:
                ok = False
            if left is not None and j < p - left:
                ok = False
            if right is not None and not causal and j > p + right:
                ok = False
            out[i, j] = ok
    return out


def attention64(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    scale: float | None = None,
    cosine: bool = False,
) -> tuple[Tensor, Tensor]:
    """Returns (output (B,H,Nq,Dv), weights (B,H,Nq,Nk)) in float64."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, nq, dk = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    if cosine:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scale = math.sqrt(dk) if scale is None else scale
    elif scale is None:
        scale = 1.0 / math.sqrt(dk)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    allowed = allowed_matrix(nq, nk, causal=causal, window=window).expand(b, h, nq, nk).clone()
    if mask is not None:
        if mask.dim() == 2:
            mask = mask[None, None]
        mask = mask.expand(b, h, nq, nk)
        if mask.dtype == torch.bool:
            allowed &= mask
        else:
            logits = logits + mask.double()
            allowed &= ~torch.isneginf(mask)
    weights = torch.zeros_like(logits)
    for idx in torch.nonzero(allowed.any(-1)).tolist():
        bi, hi, qi = idx
        row_ok = allowed[bi, hi, qi]
        row = logits[bi, hi, qi][row_ok]
        weights[bi, hi, qi, row_ok] = torch.softmax(row, dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", weights, torch.where(allowed.any(-2)[..., None], v, 0))
    return out, weights


def int8_dequantized64(float_model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A float64 copy of ``float_model`` whose linear weights are ``quantized``'s int8 codes
    times their scales, per row ``(N,)`` or per row and group of input channels ``(N, G)``
    (its fused q/k/v copy aside): the model the int8 layers stand for, computed plainly. The
    head gets its own matrix (the quantized head is not tied)."""
    reference = copy.deepcopy(float_model).double()
    head = reference.lm_head
    reference.lm_head = nn.Linear(head.in_features, head.out_features, bias=False).double()
    for name, module in quantized.named_modules():
        if hasattr(module, "qweight") and hasattr(module, "scale") and "qkv_proj" not in name:
            codes = module.qweight.double().cpu()
            scale = module.scale.double().cpu().reshape(codes.shape[0], -1)  # (N, groups)
            weight = codes * scale.repeat_interleave(codes.shape[1] // scale.shape[1], dim=1)
            with torch.no_grad():
                reference.get_submodule(name).weight.copy_(weight)
    return reference


def decoder_lm64(lm: nn.Module, ids: Tensor) -> Tensor:
    """Logits ``(B, N, V)`` of a :class:`DecoderLM` without rotary positions, written out in
    float64 from its parameters: pre- or post-norm, LayerNorm or RMSNorm (each with its own
    epsilon, affine or not, RMSNorm's default epsilon that of float32), MLP or gated
    feed-forward, grouped-query attention, any value head size, biases where the model has
    them. Sizes are read from each layer's modules. The embeddings (token and additive
    positions) are taken from the model, run in float64; everything after them is plain math."""
    p = {k: v.detach().double() for k, v in lm.state_dict().items()}
    x = copy.deepcopy(lm.decoder).double().embed(ids)  # (B, N, E)
    b, n, _ = x.shape
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    acts = {
        "gelu": lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2))),
        "gelu_tanh": lambda v: (
            0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
        ),
        "relu": lambda v: v.clamp_min(0),
        "silu": lambda v: v / (1 + torch.exp(-v)),
    }

    def norm(v: Tensor, name: str) -> Tensor:
        module = lm.get_submodule(name)
        eps = torch.finfo(torch.float32).eps if module.eps is None else module.eps
        if isinstance(module, nn.RMSNorm):
            v = v / torch.sqrt((v**2).mean(-1, keepdim=True) + eps)
        else:
            mean = v.mean(-1, keepdim=True)
            v = (v - mean) / torch.sqrt(((v - mean) ** 2).mean(-1, keepdim=True) + eps)
        v = v * p[name + ".weight"] if name + ".weight" in p else v
        return v + p[name + ".bias"] if name + ".bias" in p else v

    def linear(v: Tensor, name: str) -> Tensor:
        v = v @ p[name + ".weight"].T
        return v + p[name + ".bias"] if name + ".bias" in p else v

    for i, layer in enumerate(lm.decoder.layers):
        pre = f"decoder.layers.{i}."
        attn = layer.self_attn
        h, hkv, d, dv = attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.v_head_dim
        first = layer.norm_first
        a = norm(x, pre + "norm1") if first else x
        q = linear(a, pre + "self_attn.q_proj").view(b, n, h, d).transpose(1, 2)
        k = linear(a, pre + "self_attn.k_proj").view(b, n, hkv, d).transpose(1, 2)
        v = linear(a, pre + "self_attn.v_proj").view(b, n, hkv, dv).transpose(1, 2)
        k, v = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        weights = scores.masked_fill(~allowed, -math.inf).softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, h * dv)
        out = linear(out, pre + "self_attn.out_proj")
        x = x + out if first else norm(x + out, pre + "norm1")
        f_in = norm(x, pre + "norm2") if first else x
        ff = pre + "feed_forward."
        act = acts[layer.feed_forward.activation]
        hidden = act(linear(f_in, ff + "linear1"))
        if layer.feed_forward.gate is not None:
            hidden = act(linear(f_in, ff + "gate")) * linear(f_in, ff + "linear1")
        f = linear(hidden, ff + "linear2")
        x = x + f if first else norm(x + f, pre + "norm2")
    if not isinstance(lm.decoder.norm, nn.Identity):
        x = norm(x, "decoder.norm")
    return linear(x, "lm_head")
