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
    float64 from its parameters: pre- or post-norm, LayerNorm or RMSNorm, MLP or gated
    feed-forward, grouped-query attention, with or without biases. The embeddings (token and
    additive positions) are taken from the model, run in float64; everything after them is
    plain math here."""
    cfg = lm.config
    p = {k: v.detach().double() for k, v in lm.state_dict().items()}
    x = copy.deepcopy(lm.decoder).double().embed(ids)  # (B, N, E)
    b, n, e = x.shape
    h = cfg.num_heads
    hkv = cfg.num_kv_heads or h
    d = e // h
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    acts = {
        "gelu": lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2))),
        "gelu_tanh": lambda v: (
            0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
        ),
        "relu": lambda v: v.clamp_min(0),
        "silu": lambda v: v / (1 + torch.exp(-v)),
    }
    act = acts[cfg.activation]

    def norm(v: Tensor, name: str) -> Tensor:
        if cfg.norm == "rmsnorm":
            v = v / torch.sqrt((v**2).mean(-1, keepdim=True) + cfg.norm_eps)
        else:
            mean = v.mean(-1, keepdim=True)
            v = (v - mean) / torch.sqrt(((v - mean) ** 2).mean(-1, keepdim=True) + cfg.norm_eps)
        v = v * p[name + ".weight"]
        return v + p[name + ".bias"] if name + ".bias" in p else v

    def linear(v: Tensor, name: str) -> Tensor:
        v = v @ p[name + ".weight"].T
        return v + p[name + ".bias"] if name + ".bias" in p else v

    for i in range(cfg.num_decoder_layers):
        pre = f"decoder.layers.{i}."
        a = norm(x, pre + "norm1") if cfg.norm_first else x
        q = linear(a, pre + "self_attn.q_proj").view(b, n, h, d).transpose(1, 2)
        k = linear(a, pre + "self_attn.k_proj").view(b, n, hkv, d).transpose(1, 2)
        v = linear(a, pre + "self_attn.v_proj").view(b, n, hkv, d).transpose(1, 2)
        k, v = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        weights = scores.masked_fill(~allowed, -math.inf).softmax(-1)
        out = linear((weights @ v).transpose(1, 2).reshape(b, n, h * d), pre + "self_attn.out_proj")
        x = x + out if cfg.norm_first else norm(x + out, pre + "norm1")
        f_in = norm(x, pre + "norm2") if cfg.norm_first else x
        ff = pre + "feed_forward."
        hidden = act(linear(f_in, ff + "linear1"))
        if cfg.ffn == "gated":
            hidden = act(linear(f_in, ff + "gate")) * linear(f_in, ff + "linear1")
        f = linear(hidden, ff + "linear2")
        x = x + f if cfg.norm_first else norm(x + f, pre + "norm2")
    if "decoder.norm.weight" in p:
        x = norm(x, "decoder.norm")
    return linear(x, "lm_head")
