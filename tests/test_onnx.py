"""ONNX export: one file per module serves every batch size and length.

Each module is exported once at one shape and run in onnxruntime at another (a different batch
and sequence length than the export example), with padding and a row that has no real token,
against the same module in PyTorch eager mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from multihead import MultiHeadAttention  # noqa: E402
from multihead.interop.onnx import export_onnx  # noqa: E402
from multihead.modules.models import (  # noqa: E402
    DecoderLM,
    EncoderClassifier,
    TransformerConfig,
)

ATOL = 1e-5


def _export(module: torch.nn.Module, path: Path, **inputs: Any) -> Path:
    return export_onnx(module, path, example_inputs=inputs)


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _padding(batch: int, length: int) -> torch.Tensor:
    """Right padding of varied lengths; the last row is all padding."""
    lengths = torch.linspace(length, 0, batch).round().long()
    return torch.arange(length)[None, :] < lengths[:, None]  # (B, N), True = real


@pytest.fixture(scope="module")
def config() -> TransformerConfig:
    return TransformerConfig(
        vocab_size=50,
        d_model=32,
        num_heads=4,
        num_kv_heads=2,
        d_ff=64,
        num_encoder_layers=1,  # one layer shows the export; more only cost export time
        num_decoder_layers=1,
        num_classes=3,
        positional="rope",
    )


def test_mha_runs_at_other_shapes_with_an_empty_row(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2).eval()
    x = torch.randn(2, 5, 32)
    path = _export(
        mha, tmp_path / "mha.onnx", query=x, key_padding_mask=_padding(2, 5), causal=True
    )
    assert mha.backend == "auto" and not mha.training, "export leaves the module as it was"
    session = _session(path)
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["query", "key_padding_mask"]
    assert all(isinstance(d, str) for d in inputs[0].shape[:2]), "batch and length are symbolic"

    x2, padding2 = torch.randn(4, 9, 32), _padding(4, 9)
    (got,) = session.run(None, {"query": x2.numpy(), "key_padding_mask": padding2.numpy()})
    with torch.no_grad():
        expected, _ = mha(x2, key_padding_mask=padding2, causal=True)
    got_t = torch.from_numpy(got)
    assert torch.isfinite(got_t).all()
    torch.testing.assert_close(got_t, expected, atol=ATOL, rtol=0)
    # The all-padding row attends to nothing: zeros before out_proj, so just its bias.
    torch.testing.assert_close(got_t[-1], mha.out_proj.bias.detach().expand(9, 32))


def test_decoder_lm_runs_at_other_shapes(tmp_path: Path, config: TransformerConfig) -> None:
    torch.manual_seed(0)
    lm = DecoderLM(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    path = _export(lm, tmp_path / "lm.onnx", ids=ids, padding_mask=_padding(2, 6))
    ids2, padding2 = torch.randint(0, 50, (3, 11)), _padding(3, 11)
    (got,) = _session(path).run(None, {"ids": ids2.numpy(), "padding_mask": padding2.numpy()})
    with torch.no_grad():
        expected = lm(ids2, padding2)
    assert got.shape == (3, 11, 50)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=ATOL, rtol=0)


def test_encoder_classifier_runs_at_other_shapes(tmp_path: Path, config: TransformerConfig) -> None:
    torch.manual_seed(0)
    classifier = EncoderClassifier(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    path = _export(classifier, tmp_path / "cls.onnx", ids=ids, padding_mask=_padding(2, 6))
    ids2, padding2 = torch.randint(0, 50, (5, 4)), _padding(5, 4)
    (got,) = _session(path).run(None, {"ids": ids2.numpy(), "padding_mask": padding2.numpy()})
    with torch.no_grad():
        expected = classifier(ids2, padding2)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=ATOL, rtol=0)


class _Untraceable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if bool(x.sum() > 0) else x - 1  # a branch on a tensor value


def test_failed_export_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="_Untraceable"):
        export_onnx(_Untraceable(), target, example_inputs={"x": torch.randn(2, 3)})
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(TypeError, match="example_inputs"):
        export_onnx(mha, tmp_path / "a.onnx", example_inputs=(x,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"example_inputs\['query'\].*>= 2"):
        export_onnx(mha, tmp_path / "a.onnx", example_inputs={"query": torch.randn(1, 3, 8)})
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(mha, tmp_path / "a.bin", example_inputs={"query": x})
    with pytest.raises(TypeError, match="module"):
        export_onnx("mha", tmp_path / "a.onnx", example_inputs={"query": x})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        export_onnx(mha, tmp_path / "a.onnx", example_inputs={"query": x}, backend="nope")
    assert not any(tmp_path.iterdir())
