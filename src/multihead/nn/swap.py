"""Put the drop-in into a model that is already built."""

from __future__ import annotations

from torch import nn

from .attention import MultiheadAttention


def swap_attention(model: nn.Module) -> nn.Module:
    """Replace every :class:`torch.nn.MultiheadAttention` in ``model`` by
    :class:`MultiheadAttention`, in place, and return ``model``. Only that exact class is
    replaced: a subclass may have changed ``forward``, so it is left as it is.

    The new modules take over the old ones' parameter objects (so an optimizer built before the
    swap keeps training them), their training mode, device and dtype. No random numbers are drawn.
    Hooks registered on the old attention modules are not carried over. When ``model`` is itself a
    ``torch.nn.MultiheadAttention`` the replacement is returned.

    Example:
        >>> layer = torch.nn.TransformerEncoderLayer(32, 4, batch_first=True)
        >>> swap_attention(layer).self_attn.__class__.__name__
        'MultiheadAttention'
    """
    if type(model) is nn.MultiheadAttention:
        return _converted(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MultiheadAttention:
                setattr(parent, name, _converted(child))
    return model


def _converted(old: nn.MultiheadAttention) -> MultiheadAttention:
    ref = old.in_proj_weight if old.in_proj_weight is not None else old.q_proj_weight
    # Built on the meta device: nothing is allocated or initialised (no RNG draws), and the
    # placeholders are then replaced by the old module's own parameters.
    new = MultiheadAttention(
        old.embed_dim,
        old.num_heads,
        dropout=old.dropout,
        bias=old.in_proj_bias is not None,
        add_bias_kv=old.bias_k is not None,
        add_zero_attn=old.add_zero_attn,
        kdim=old.kdim,
        vdim=old.vdim,
        batch_first=old.batch_first,
        device="meta",
        dtype=ref.dtype,
    )
    for name in list(new._parameters):
        new._parameters[name] = old._parameters[name]
    new.out_proj = old.out_proj
    return new.train(old.training)
