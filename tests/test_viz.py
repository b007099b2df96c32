"""multihead.viz: capture, heatmaps, HTML, statistics, head masking and pruning, the command.

References are written out by hand here (softmax of hand-projected scores, closed forms for
uniform attention, small matrices whose statistics are computed on paper), never captured
outputs of the code under test.
"""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

from multihead import MultiHeadAttention
from multihead.cli import main as cli_main
from multihead.decoding import greedy_decode
from multihead.modules.models import DecoderLM, Seq2SeqTransformer, TransformerConfig
from multihead.tasks import BOS, EOS, CharVocab
from multihead.train.checkpoint import save_checkpoint
from multihead.viz import (
    AttentionMap,
    attention_grid,
    attention_html,
    attention_modules,
    capture_attention,
    head_importance,
    head_stats,
    maps_from_record,
    mask_heads,
    prune_heads,
    prune_model,
    record_stats,
    save_figure,
    stats_markdown,
    write_attention_html,
)
from multihead.viz.heatmaps import tick_labels
from multihead.viz.html import page_data

E = 16


def seq2seq(**overrides: object) -> Seq2SeqTransformer:
    fields: dict = dict(vocab_size=12, d_model=E, num_heads=4, d_ff=32, dropout=0.0)
    fields.update(overrides)
    return Seq2SeqTransformer(TransformerConfig(**fields)).eval()


def hand_weights(
    mha: MultiHeadAttention,
    x: torch.Tensor,
    memory: torch.Tensor | None = None,
    *,
    causal: bool = False,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head, from the projection weights, in float64."""
    mem = x if memory is None else memory
    d = mha.head_dim
    wq, wk = mha.q_proj.weight.double(), mha.k_proj.weight.double()
    q = x.double() @ wq.T + mha.q_proj.bias.double()
    k = mem.double() @ wk.T + mha.k_proj.bias.double()
    b, nq, nk = x.shape[0], x.shape[1], mem.shape[1]
    group = mha.num_heads // mha.num_kv_heads
    out = torch.empty(b, mha.num_heads, nq, nk, dtype=torch.float64)
    for h in range(mha.num_heads):
        qh = q[..., h * d : (h + 1) * d]
        kv = h // group
        kh = k[..., kv * d : (kv + 1) * d]
        logits = qh @ kh.transpose(1, 2) / math.sqrt(d)
        if causal:
            shift = nk - nq
            allowed = torch.ones(nq, nk).tril(shift).bool()
            logits = logits.masked_fill(~allowed, float("-inf"))
        if key_padding is not None:
            logits = logits.masked_fill(~key_padding[:, None, :], float("-inf"))
        out[:, h] = torch.softmax(logits, dim=-1)
    return out


# ------------------------------------------------------------------------------ capture


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_capture_leaves_outputs_and_gradients_bitwise_identical(num_kv_heads):
    model = seq2seq(num_kv_heads=num_kv_heads)
    src, tgt = torch.randint(0, 12, (2, 7)), torch.randint(0, 12, (2, 5))
    pad = torch.ones(2, 7, dtype=torch.bool)
    pad[1, 5:] = False

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(src, tgt, pad)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    plain, grads = run()
    with capture_attention(model) as record:
        captured, grads_captured = run()
    assert torch.equal(plain, captured)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_captured, strict=True))
    assert len(record) == 6 and all(len(v) == 1 for v in record.values())


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_captured_weights_match_hand_computed_softmax(num_kv_heads):
    mha = MultiHeadAttention(E, 4, num_kv_heads=num_kv_heads).eval()
    nn.init.normal_(mha.q_proj.bias)
    nn.init.normal_(mha.k_proj.bias)
    x, mem = torch.randn(2, 5, E), torch.randn(2, 7, E)
    pad = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with capture_attention(mha) as record:
        mha(x, causal=True)
        mha(x, mem, key_padding_mask=pad)
    self_w, cross_w = record[""]
    torch.testing.assert_close(
        self_w.double(), hand_weights(mha, x, causal=True), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        cross_w.double(), hand_weights(mha, x, mem, key_padding=pad), atol=1e-6, rtol=0
    )
    assert cross_w[1, :, :, 4:].abs().max() == 0  # padded keys get nothing
    first, second = record.calls[""]
    assert first.self_attention and first.causal and not second.self_attention


def test_capture_selects_layers_heads_and_query_rows():
    model = seq2seq()
    src, tgt = torch.randint(0, 12, (1, 6)), torch.randint(0, 12, (1, 5))
    with capture_attention(model) as full:
        model(src, tgt)
    names = list(attention_modules(model))
    assert names == [
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
        "decoder.layers.0.self_attn",
        "decoder.layers.0.cross_attn",
        "decoder.layers.1.self_attn",
        "decoder.layers.1.cross_attn",
    ]
    # Rows sliced from a causal map must keep the full map's alignment (bottom-right).
    with capture_attention(
        model, layers=["decoder.layers.1.self_attn", 3], heads=[3, 0], queries=slice(1, None, 2)
    ) as part:
        model(src, tgt)
    assert list(part) == ["decoder.layers.1.self_attn", "decoder.layers.0.cross_attn"]
    for name in part:
        want = full[name][0][:, [3, 0]][:, :, 1::2]
        torch.testing.assert_close(part[name][0], want, atol=1e-6, rtol=0)
        call = part.calls[name][0]
        assert call.heads == (3, 0) and call.query_rows == [1, 3]
    with capture_attention(model, layers=-1, queries=slice(-1, None)) as last:
        model(src, tgt)
    assert list(last) == ["decoder.layers.1.cross_attn"]
    assert last.last("decoder.layers.1.cross_attn").shape == (1, 4, 1, 6)


def test_capture_is_opt_in_and_leaves_no_trace_on_the_modules():
    model = seq2seq()
    other = seq2seq()
    src, tgt = torch.randint(0, 12, (1, 4)), torch.randint(0, 12, (1, 3))
    with capture_attention(model) as record:
        other(src, tgt)  # another model's attention is not recorded
        assert all(len(v) == 0 for v in record.values())
        model(src, tgt)
    model(src, tgt)  # after the block: nothing more is recorded
    assert all(len(v) == 1 for v in record.values())
    for mha in attention_modules(model).values():
        assert not mha._forward_pre_hooks and not hasattr(mha, "record")
        assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for v in vars(mha).values())


def test_capture_records_every_cached_decoding_step_as_a_row_of_the_full_pass():
    model = seq2seq()
    src = torch.randint(3, 12, (1, 5))
    with capture_attention(model, layers=["decoder.layers.1.self_attn"]) as record:
        out = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=4)
    steps, calls = record["decoder.layers.1.self_attn"], record.calls["decoder.layers.1.self_attn"]
    assert len(steps) == out.shape[1]
    reads = torch.cat([torch.tensor([[BOS]]), out[:, :-1]], dim=1)
    with capture_attention(model, layers=["decoder.layers.1.self_attn"]) as full_record:
        model(src, reads)
    full = full_record["decoder.layers.1.self_attn"][0]  # (1, H, T, T)
    for t, (w, call) in enumerate(zip(steps, calls, strict=True)):
        # With a key/value cache, step t has one query that sits at key position t.
        assert call.num_queries in (1, t + 1) and call.num_keys == t + 1
        assert call.query_positions[-1] == t
        torch.testing.assert_close(w[:, :, -1], full[:, :, t, : t + 1], atol=1e-5, rtol=0)


def test_capture_finds_attention_in_any_container():
    # Any module tree works (this is how a Hugging Face model running our attention is seen).
    class Foreign(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleDict({"a": MultiHeadAttention(E, 2), "b": nn.Linear(E, E)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks["b"](self.blocks["a"](x)[0])

    model = Foreign()
    with capture_attention(model) as record:
        model(torch.randn(1, 3, E))
    assert list(record) == ["blocks.a"]


def test_capture_of_a_converted_hugging_face_model_matches_its_own_weights():
    hf = pytest.importorskip("multihead.interop.huggingface")
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_embd=E, n_layer=2, n_head=2, vocab_size=30, bos_token_id=0, eos_token_id=0
        )
    ).eval()
    gpt2.set_attn_implementation("eager")
    lm = hf.convert(gpt2)
    ids = torch.randint(0, 30, (2, 6))
    with torch.no_grad(), capture_attention(lm) as record:
        lm(ids)
    reference = gpt2(ids, output_attentions=True).attentions  # HF's eager weights per layer
    assert len(record) == len(reference) == 2
    for name, want in zip(record, reference, strict=True):
        torch.testing.assert_close(record[name][0], want, atol=1e-5, rtol=0)


def test_capture_rejects_bad_selections():
    model = seq2seq()
    with (
        pytest.raises(ValueError, match="unknown attention module 'nope'"),
        capture_attention(model, layers=["nope"]),
    ):
        pass
    with pytest.raises(ValueError, match="out of range"), capture_attention(model, layers=[6]):
        pass
    with (
        pytest.raises(ValueError, match=r"heads must be in \[0, 4\)"),
        capture_attention(model, heads=[4]),
    ):
        pass
    with (
        pytest.raises(TypeError, match="queries must be a slice"),
        capture_attention(
            model,
            queries=3,  # type: ignore[arg-type]
        ),
    ):
        pass
    with (
        pytest.raises(ValueError, match=r"holds no multihead\.MultiHeadAttention"),
        capture_attention(nn.Linear(2, 2)),
    ):
        pass


def test_maps_from_record_labels_recorded_rows():
    mha = MultiHeadAttention(E, 2)
    with capture_attention(mha, queries=slice(2, 4)) as record:
        mha(torch.randn(1, 5, E), torch.randn(1, 3, E))
    (m,) = maps_from_record(record, {"": ("abcde", "xyz")})
    assert m.kind == "cross" and m.query_tokens == ("c", "d") and m.key_tokens == tuple("xyz")
    with pytest.raises(ValueError, match="must hold 5 query and 3 key labels"):
        maps_from_record(record, {"": ("abc", "xyz")})


# ------------------------------------------------------------------------------ statistics


def test_head_stats_of_a_small_matrix_by_hand():
    # One head, 3 queries at positions 0..2, 3 keys; key 0 is special.
    w = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]]])
    (row,) = head_stats(w, special_keys=torch.tensor([True, False, False]), layer="L")
    ln2, h3 = math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert row.entropy == pytest.approx((0 + ln2 + h3) / 3)
    assert row.distance == pytest.approx((0 + 0.5 + 0.25) / 3)  # sum_j w |i - j|
    assert row.first == pytest.approx((1 + 0.5 + 0) / 3)
    assert row.special == pytest.approx(row.first)
    assert row.previous == pytest.approx((0.5 + 0.25) / 2)  # rows 1, 2
    assert row.diagonal == pytest.approx((1 + 0.5 + 0.75) / 3)
    assert row.rows == 3 and row.layer == "L"


def test_head_stats_skip_dead_and_masked_rows():
    w = torch.tensor([[[[0.0, 0.0], [0.5, 0.5], [1.0, 0.0]]]])  # row 0 attends to nothing
    (row,) = head_stats(w)
    assert row.rows == 2 and row.entropy == pytest.approx(math.log(2) / 2)
    (row,) = head_stats(w, query_mask=torch.tensor([[True, True, False]]))
    assert row.rows == 1 and row.entropy == pytest.approx(math.log(2))
    assert row.special is None


def test_record_stats_of_uniform_causal_attention_match_closed_forms():
    n = 6
    mha = MultiHeadAttention(E, 2)
    with torch.no_grad():  # zero queries: every allowed key gets the same weight
        mha.q_proj.weight.zero_()
        mha.q_proj.bias.zero_()
    with capture_attention(mha) as record:
        mha(torch.randn(3, n, E), causal=True)
    rows = record_stats(record)
    assert [r.head for r in rows] == [0, 1]
    for r in rows:  # query i spreads 1 / (i + 1) over keys 0..i
        assert r.entropy == pytest.approx(sum(math.log(i + 1) for i in range(n)) / n)
        assert r.first == pytest.approx(sum(1 / (i + 1) for i in range(n)) / n)
        assert r.diagonal == pytest.approx(r.first)
        assert r.previous == pytest.approx(sum(1 / (i + 1) for i in range(1, n)) / (n - 1))
        assert r.distance == pytest.approx(sum(i / 2 for i in range(n)) / n)
        assert r.rows == 3 * n


def test_stats_markdown_table():
    w = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    text = stats_markdown(head_stats(w, layer="enc.0"))
    lines = text.splitlines()
    assert lines[0].startswith("| layer | head | entropy (nats)")
    assert lines[2] == "| enc.0 | 0 | 0.00 | 0.00 | 0.50 | – | 0.00 | 1.00 |"


def test_mask_heads_equals_dropping_the_head_by_hand():
    mha = MultiHeadAttention(E, 4).eval()
    nn.init.normal_(mha.out_proj.bias)
    x = torch.randn(2, 5, E)
    # Reference: the concatenated head outputs, with head 2's slice set to zero by hand.
    captured = {}
    handle = mha.out_proj.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    mha(x)
    handle.remove()
    heads_out = captured["x"].clone()
    heads_out[..., 2 * 4 : 3 * 4] = 0
    want = heads_out @ mha.out_proj.weight.T + mha.out_proj.bias
    with mask_heads(mha, {"": [2]}):
        got, _ = mha(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not mha.out_proj._forward_pre_hooks  # gone after the block
    with (
        pytest.raises(ValueError, match=r"heads\[''\] heads must be in \[0, 4\)"),
        mask_heads(mha, {"": [9]}),
    ):
        pass


def test_head_importance_finds_the_head_that_matters():
    mha = MultiHeadAttention(E, 2).eval()
    with torch.no_grad():
        mha.out_proj.weight[:, 8:] = 0  # head 1 cannot change the output
    x = torch.randn(1, 4, E)
    with torch.no_grad():
        target = mha(x)[0]

    def score(model: nn.Module) -> float:  # higher is better: minus the error to the original
        with torch.no_grad():
            return -float((model(x)[0] - target).square().mean())

    drops = head_importance(mha, score)
    assert drops[("", 1)] == 0.0 and drops[("", 0)] > 0
    flipped = head_importance(mha, lambda m: -score(m), higher_is_better=False)
    assert flipped == pytest.approx(drops)


# ------------------------------------------------------------------------------ pruning


@pytest.mark.parametrize(
    ("num_kv_heads", "heads"), [(None, [1, 3]), (None, [0]), (4, [2, 3]), (2, [0, 1, 2, 3])]
)
def test_pruning_equals_masking(num_kv_heads, heads):
    mha = MultiHeadAttention(32, 8, num_kv_heads=num_kv_heads).eval()
    for p in (mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias, mha.out_proj.bias):
        nn.init.normal_(p)
    x, mem = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    with mask_heads(mha, {"": heads}):
        want_self, want_cross = mha(x, causal=True)[0], mha(x, mem)[0]
    before = sum(p.numel() for p in mha.parameters())
    pruned = prune_heads(copy.deepcopy(mha), heads)
    torch.testing.assert_close(pruned(x, causal=True)[0], want_self, atol=1e-6, rtol=0)
    torch.testing.assert_close(pruned(x, mem)[0], want_cross, atol=1e-6, rtol=0)
    kept = 8 - len(heads)
    assert pruned.num_heads == kept
    assert pruned.q_proj.out_features == kept * 4 and pruned.out_proj.in_features == kept * 4
    removed_kv = len(heads) * (num_kv_heads or 8) // 8
    assert pruned.num_kv_heads == (num_kv_heads or 8) - removed_kv
    assert sum(p.numel() for p in pruned.parameters()) < before
    assert all(p.requires_grad for p in pruned.parameters())


@pytest.mark.parametrize("options", [{"rotary": True}, {"alibi": True}, {"score": "cosine"}])
def test_capture_and_pruning_follow_position_schemes_and_scores(options):
    mha = MultiHeadAttention(E, 4, **options).eval()
    x = torch.randn(2, 5, E)
    with capture_attention(mha) as record:
        out, own = mha(x, causal=True, need_weights=True)
    torch.testing.assert_close(record[""][0], own, atol=1e-6, rtol=0)
    with mask_heads(mha, {"": [1]}):
        want = mha(x, causal=True)[0]
    torch.testing.assert_close(prune_heads(mha, [1])(x, causal=True)[0], want, atol=1e-6, rtol=0)


def test_prune_model_equals_masking_the_same_heads():
    model = seq2seq()
    src, tgt = torch.randint(0, 12, (2, 6)), torch.randint(0, 12, (2, 4))
    plan = {"encoder.layers.1.self_attn": [0, 2], "decoder.layers.0.cross_attn": [3]}
    with mask_heads(model, plan):
        want = model(src, tgt)
    prune_model(model, plan)
    torch.testing.assert_close(model(src, tgt), want, atol=1e-6, rtol=0)
    assert attention_modules(model)["decoder.layers.0.cross_attn"].num_heads == 3


def test_pruning_rejects_bad_plans_without_changing_anything():
    gqa = MultiHeadAttention(32, 8, num_kv_heads=4)
    with pytest.raises(ValueError, match="only whole groups can be removed"):
        prune_heads(gqa, [1, 2])
    with pytest.raises(ValueError, match="cannot remove all 8 heads"):
        prune_heads(MultiHeadAttention(32, 8), list(range(8)))
    with pytest.raises(ValueError, match="must not repeat"):
        prune_heads(MultiHeadAttention(32, 8), [1, 1])
    with pytest.raises(TypeError, match=r"multihead\.MultiHeadAttention"):
        prune_heads(nn.Linear(2, 2), [0])  # type: ignore[arg-type]
    model = seq2seq()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="unknown attention module"):
        prune_model(model, {"encoder.layers.0.self_attn": [0], "nope": [0]})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# ------------------------------------------------------------------------------ heatmaps


def _maps(seed: int = 0, nq: int = 4, nk: int = 6) -> list[AttentionMap]:
    g = torch.Generator().manual_seed(seed)
    enc = torch.softmax(torch.randn(3, nk, nk, generator=g), -1)
    cross = torch.softmax(torch.randn(3, nq, nk, generator=g), -1)
    src = tuple("abcdefghij"[:nk]) if nk <= 10 else tuple(f"t{i}" for i in range(nk))
    tgt = tuple("WXYZ"[:nq]) if nq <= 4 else tuple(f"q{i}" for i in range(nq))
    return [
        AttentionMap(name="enc", kind="self", weights=enc, heads=(0, 1, 2),
                     query_tokens=src, key_tokens=src),
        AttentionMap(name="cross", kind="cross", weights=cross, heads=(0, 1, 2),
                     query_tokens=tgt, key_tokens=src),
    ]  # fmt: skip


def test_attention_grid_draws_every_layer_and_head_with_token_labels():
    maps = _maps()
    fig = attention_grid(maps, title="t")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6  # 2 layers x 3 heads, and a colour bar besides
    for k, ax in enumerate(panels):
        m = maps[k // 3]
        torch.testing.assert_close(
            torch.as_tensor(ax.images[0].get_array()), m.weights[k % 3], atol=1e-6, rtol=0
        )
        assert [t.get_text() for t in ax.get_xticklabels()] == list(m.key_tokens)
        assert ax.get_title() == f"head {k % 3}"
    assert [t.get_text() for t in panels[3].get_yticklabels()] == ["W", "X", "Y", "Z"]
    assert panels[4].get_yticklabels() == []  # queries are written once per row


def test_tick_labels_shrink_then_thin():
    sizes = [tick_labels([str(i) for i in range(n)], 5.5)[2] for n in (8, 32, 64)]
    assert sizes[0] >= sizes[1] >= sizes[2] >= 4.0
    pos, labels, _ = tick_labels([f"t{i}" for i in range(64)], 5.5)
    assert len(labels) == 64
    pos, labels, _ = tick_labels([f"t{i}" for i in range(150)], 5.5)
    assert pos == list(range(0, 150, 3)) and labels[1] == "t3"


def test_save_figure_writes_png_and_svg_atomically(tmp_path):
    maps = _maps()
    maps[0] = AttentionMap(
        name="enc", kind="self", weights=maps[0].weights, heads=(0, 1, 2),
        query_tokens=("$", "a b", "<x>", "d", "e", "f"), key_tokens=tuple("abcdef"),
    )  # fmt: skip
    fig = attention_grid(maps)
    png = save_figure(fig, tmp_path / "g.png")
    svg = save_figure(fig, tmp_path / "sub" / "g.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(svg).getroot().tag.endswith("svg")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["g.png", "g.svg"]
    with pytest.raises(ValueError, match="must end in one of"):
        save_figure(fig, tmp_path / "g.jpg")


def test_grid_of_64_tokens_labels_every_token(tmp_path):
    (m,) = _maps(nq=64, nk=64)[1:]
    fig = attention_grid([m])
    ax = next(a for a in fig.axes if a.images)
    assert len(ax.get_xticklabels()) == 64 and len(ax.get_yticklabels()) == 64
    assert save_figure(fig, tmp_path / "big.png").stat().st_size < 300_000


# ------------------------------------------------------------------------------ HTML


def test_html_is_self_contained_and_carries_the_weights(tmp_path):
    maps = _maps()
    maps[1] = AttentionMap(
        name="cross", kind="cross", weights=maps[1].weights, heads=(0, 1, 2),
        query_tokens=("</script>", "<!--", "&amp;", "\"q\""), key_tokens=maps[1].key_tokens,
    )  # fmt: skip
    path = write_attention_html(maps, tmp_path / "a.html", title="T <b>", subtitle="s")
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page)
    assert page.count("</script>") == 2  # the two inline blocks; the token is escaped
    assert "<title>T &lt;b&gt;</title>" in page
    blob = re.search(
        r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S
    )
    data = json.loads(blob.group(1))
    assert data["maps"][1]["queries"][0] == "</script>"
    for got, m in zip(data["maps"], maps, strict=True):
        assert got["kind"] == m.kind and got["keys"] == list(m.key_tokens)
        torch.testing.assert_close(torch.tensor(got["weights"]), m.weights, atol=5e-4, rtol=0)


def test_page_data_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        page_data([])
    with pytest.raises(ValueError, match="decimals"):
        page_data(_maps(), decimals=0)
    with pytest.raises(TypeError, match="AttentionMap"):
        attention_html(["x"])  # type: ignore[list-item]


# ------------------------------------------------------------------------------ the command


def _write_checkpoint(path: Path, kind: str = "seq2seq") -> tuple[nn.Module, CharVocab]:
    vocab = CharVocab("0123456789")
    config = TransformerConfig(
        vocab_size=len(vocab), d_model=E, num_heads=2, d_ff=32, num_encoder_layers=1,
        num_decoder_layers=1, max_len=32,
    )  # fmt: skip
    model: nn.Module = Seq2SeqTransformer(config) if kind == "seq2seq" else DecoderLM(config)
    save_checkpoint(
        path,
        {
            "step": 0,
            "model": model.state_dict(),
            "task": "reverse" if kind == "seq2seq" else "text",
            "model_kind": kind,
            "model_config": config.to_dict(),
            "vocab": vocab.to_dict(),
            "max_output_len": 10,
        },
    )
    return model.eval(), vocab


def test_visualize_command_writes_pictures_and_json(tmp_path, capsys):
    model, vocab = _write_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "out"
    code = cli_main(
        ["visualize", "--checkpoint", str(tmp_path / "ckpt.pt"), "--text", "3141",
         "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["files"]) == {"png", "svg", "html", "stats"}
    for p in report["files"].values():
        assert Path(p).is_file() and Path(p).parent == out
    names = [m["name"] for m in report["modules"]]
    assert names == [
        "encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.cross_attn"
    ]  # fmt: skip
    expected = greedy_decode(
        model, torch.tensor([vocab.encode("3141")]), bos_id=BOS, eos_id=EOS, max_len=10
    )[0]
    assert report["output"] == vocab.decode(expected)
    assert len(report["stats"]) == 3 * 2
    assert "http" not in (out / "attention.html").read_text(encoding="utf-8")


def test_visualize_command_plain_output_and_language_models(tmp_path, capsys):
    _write_checkpoint(tmp_path / "lm.pt", kind="lm")
    assert cli_main(["visualize", "--checkpoint", str(tmp_path / "lm.pt"), "--text", "1234"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input:  1234"
    assert [line.split()[0] for line in lines[1:]] == ["wrote"] * 4
    assert (tmp_path / "attention" / "attention.html").is_file()  # default: next to the checkpoint


def test_visualize_command_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["visualize", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multihead demo" in err
    _write_checkpoint(tmp_path / "ckpt.pt")
    assert cli_main(["visualize", "--checkpoint", str(tmp_path / "ckpt.pt"), "--task", "sort"]) == 2
    assert "trained on 'reverse'" in capsys.readouterr().err


def test_visualize_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        cli_main(["visualize", "--help"])
    out = capsys.readouterr().out
    assert "Example:" in out and "--checkpoint" in out and "--json" in out


def test_capture_of_a_hugging_face_model_running_our_kernels():
    hf = pytest.importorskip("multihead.interop.huggingface")
    transformers = pytest.importorskip("transformers")
    name = hf.register()
    config = transformers.LlamaConfig(
        hidden_size=E,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=30,
    )
    llama = transformers.LlamaForCausalLM(config).eval()
    llama.set_attn_implementation("eager")
    ids = torch.randint(0, 30, (2, 6))
    with torch.no_grad():
        reference = llama(ids, output_attentions=True).attentions  # HF's eager weights
        want_logits = llama(ids).logits
    llama.set_attn_implementation(name)
    with torch.no_grad(), capture_attention(llama) as record:
        logits = llama(ids).logits
    assert list(record) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for layer, want in zip(record, reference, strict=True):
        torch.testing.assert_close(record[layer][0], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
