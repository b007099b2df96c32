"""Write tests/fixtures/legacy_0_1_0.pt: models as release 0.1.0 saved them, with their outputs.

Run once (after copying two `multihead train copy|text --steps 3 --d-model 16 --layers 1
--heads 2 --batch-size 4` checkpoints into tests/fixtures/), with the 0.1.0 code (commit d1d083c), before the modules were split (issue 9). The
test ``tests/test_legacy_checkpoint.py`` rebuilds each model from its stored config with the
current code, loads the stored ``state_dict`` and checks that it gives the stored outputs, so a
refactor that changes parameter names, defaults or numerics is caught. Not run by the tests.
"""

from __future__ import annotations

import sys

import torch

from multihead import (
    DecoderLM,
    EncoderClassifier,
    MultiHeadAttention,
    Seq2SeqTransformer,
    TransformerConfig,
    ViTClassifier,
    ViTConfig,
)

torch.manual_seed(0)
cases = []
base = dict(vocab_size=23, d_model=16, num_heads=4, d_ff=32, dropout=0.0, max_len=64)
token_models = [
    ("seq2seq_postnorm_sinusoidal", Seq2SeqTransformer, dict(norm_first=False)),
    ("seq2seq_gqa_learned", Seq2SeqTransformer, dict(num_kv_heads=2, positional="learned")),
    ("lm_rope_gqa_gated", DecoderLM, dict(positional="rope", num_kv_heads=1, ffn="gated",
                                          activation="silu", norm="rmsnorm", bias=False)),
    ("lm_alibi", DecoderLM, dict(positional="alibi")),
    ("classifier_bert_like", EncoderClassifier, dict(num_classes=3, embedding_norm=True,
                                                      type_vocab_size=2, embed_scale=False)),
]
ids = torch.randint(1, 23, (2, 9))
tgt = torch.randint(1, 23, (2, 7))
pad = torch.ones(2, 9, dtype=torch.bool)
pad[1, 6:] = False
for name, cls, extra in token_models:
    config = TransformerConfig(**base, **extra)
    model = cls(config).eval()
    with torch.no_grad():
        if cls is Seq2SeqTransformer:
            out = model(ids, tgt, src_padding_mask=pad)
        elif cls is DecoderLM:
            out = model(ids, pad)
        else:
            out = model(ids, pad)
    cases.append({"name": name, "kind": cls.__name__, "config": config.to_dict(),
                  "state_dict": model.state_dict(), "output": out})
vit_config = ViTConfig(image_size=8, patch_size=2, d_model=16, num_heads=4, d_ff=32, dropout=0.0)
vit = ViTClassifier(vit_config).eval()
images = torch.randn(2, 1, 8, 8)
with torch.no_grad():
    cases.append({"name": "vit", "kind": "ViTClassifier",
                  "config": {k: getattr(vit_config, k) for k in vit_config.__dataclass_fields__},
                  "state_dict": vit.state_dict(), "output": vit(images)})
mha = MultiHeadAttention(16, 4, kdim=12, vdim=10, head_dim=6, v_head_dim=5, num_kv_heads=2).eval()
x, kv_k, kv_v = torch.randn(2, 5, 16), torch.randn(2, 7, 12), torch.randn(2, 7, 10)
with torch.no_grad():
    mha_out = mha(x, kv_k, kv_v, causal=True, need_weights=True)
cases.append({"name": "mha_cross", "kind": "MultiHeadAttention",
              "config": dict(embed_dim=16, num_heads=4, kdim=12, vdim=10, head_dim=6,
                             v_head_dim=5, num_kv_heads=2),
              "state_dict": mha.state_dict(), "output": mha_out.output,
              "weights": mha_out.weights})
from multihead.train.recipes import load_trained  # noqa: E402

trained_outputs = {}
for task in ("copy", "text"):
    trained = load_trained(f"tests/fixtures/legacy_{task}_checkpoint.pt")
    with torch.no_grad():
        if task == "copy":
            trained_outputs[task] = trained.model(ids % 10 + 4, tgt % 10 + 4)
        else:
            trained_outputs[task] = trained.model(ids)
torch.save({"trained_outputs": trained_outputs, "inputs": {"ids": ids, "tgt": tgt, "padding_mask": pad, "images": images,
                       "query": x, "key": kv_k, "value": kv_v},
            "cases": cases, "written_by": "multihead 0.1.0"}, sys.argv[1])
print(f"wrote {len(cases)} cases to {sys.argv[1]}")
