"""Bridges to other ecosystems: Hugging Face ``transformers`` and ONNX.

Each submodule imports its optional dependency only when used:

* :mod:`multihead.interop.huggingface`: ``register()`` our attention as
  ``attn_implementation="multihead"``; ``convert()`` BERT / GPT-2 weights into our models.
* :mod:`multihead.interop.onnx`: ``export_onnx()`` with symbolic batch and sequence sizes.

``torch.nn.MultiheadAttention`` conversion lives on the module itself:
:meth:`multihead.MultiHeadAttention.from_torch` / ``to_torch``.
"""
