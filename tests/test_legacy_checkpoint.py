"""Models and checkpoints written by release 0.1.0 load and give the outputs they gave then.

The fixture was written by ``scripts/make_legacy_fixture.py`` with the 0.1.0 code, before the
modules were reorganised; it guards parameter names, config fields and numerics across
refactors. The outputs are 0.1.0's, not the current code's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import multihead
from multihead import MultiHeadAttention, TransformerConfig, ViTConfig
from multihead.train import load_trained

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = torch.load(FIXTURES / "legacy_0_1_0.pt", weights_only=True)
INPUTS = LEGACY["inputs"]


@pytest.mark.parametrize("case", LEGACY["cases"], ids=lambda c: c["name"])
def test_legacy_models_load_and_give_identical_outputs(case):
    kind = case["kind"]
    if kind == "MultiHeadAttention":
        model = MultiHeadAttention(**case["config"])
    elif kind == "ViTClassifier":
        model = multihead.ViTClassifier(ViTConfig(**case["config"]))
    else:
        model = getattr(multihead, kind)(TransformerConfig.from_dict(case["config"]))
    model.load_state_dict(case["state_dict"])  # strict: every key, the same names
    model.eval()
    with torch.no_grad():
        if kind == "Seq2SeqTransformer":
            out = model(INPUTS["ids"], INPUTS["tgt"], src_padding_mask=INPUTS["padding_mask"])
        elif kind in ("DecoderLM", "EncoderClassifier"):
            out = model(INPUTS["ids"], INPUTS["padding_mask"])
        elif kind == "ViTClassifier":
            out = model(INPUTS["images"])
        else:
            result = model(
                INPUTS["query"], INPUTS["key"], INPUTS["value"], causal=True, need_weights=True
            )
            torch.testing.assert_close(result.weights, case["weights"], rtol=0, atol=1e-6)
            out = result.output
    torch.testing.assert_close(out, case["output"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["copy", "text"])
def test_legacy_training_checkpoints_load_and_give_identical_outputs(task):
    trained = load_trained(FIXTURES / f"legacy_{task}_checkpoint.pt")
    ids, tgt = INPUTS["ids"], INPUTS["tgt"]
    with torch.no_grad():
        out = trained.model(ids % 10 + 4, tgt % 10 + 4) if task == "copy" else trained.model(ids)
    torch.testing.assert_close(out, LEGACY["trained_outputs"][task], rtol=0, atol=1e-5)
