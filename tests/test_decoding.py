"""Greedy decoding, beam search and sampling against plain reference loops and hand-made models."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from multihead.decoding import beam_search, greedy_decode, sample
from multihead.modules.models import DecoderLM, Seq2SeqTransformer, TransformerConfig

PAD, BOS, EOS = 0, 1, 2
A, B, C = 3, 4, 5


def random_seq2seq(
    vocab: int, seed: int, sharpness: float = 5.0, **overrides
) -> Seq2SeqTransformer:
    """A random model whose output distributions are peaked enough to stop at EOS sometimes."""
    torch.manual_seed(seed)
    fields: dict = dict(
        vocab_size=vocab,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        tie_embeddings=False,
        max_len=16,
    )
    fields.update(overrides)
    model = Seq2SeqTransformer(TransformerConfig(**fields)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


def random_source(batch: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (batch, 5), generator=g)
    lengths = torch.randint(1, 6, (batch,), generator=g)
    mask = torch.arange(5)[None, :] < lengths[:, None]  # (B, 5)
    return src, mask


class TableSeq2Seq(Seq2SeqTransformer):
    """A 'model' whose next-token probabilities come from ``table(first source id, prefix)``.

    ``encode`` passes the source ids through as the memory, so ``decode`` can read them back;
    this also checks that beam search moves the memory with its hypotheses.
    """

    def __init__(self, table: Callable[[int, tuple[int, ...]], dict[int, float]], vocab: int):
        config = TransformerConfig(
            vocab_size=vocab,
            d_model=4,
            num_heads=1,
            d_ff=4,
            num_encoder_layers=0,
            num_decoder_layers=0,
        )
        super().__init__(config)
        self.table = table

    def encode(self, src, src_padding_mask=None):
        return src.float().unsqueeze(-1).expand(-1, -1, self.config.d_model)

    def decode(self, tgt, memory, memory_padding_mask=None, tgt_padding_mask=None):
        v = self.config.vocab_size
        out = torch.empty(tgt.shape[0], tgt.shape[1], v)
        for row in range(tgt.shape[0]):
            key = int(memory[row, 0, 0])
            for t in range(tgt.shape[1]):
                probs = torch.full((v,), 1e-9)
                for token, p in self.table(key, tuple(tgt[row, 1 : t + 1].tolist())).items():
                    probs[token] = p
                out[row, t] = (probs / probs.sum()).log()
        return out


def reference_greedy(model: Seq2SeqTransformer, src, mask, max_len: int) -> list[list[int]]:
    """One sequence at a time, re-running the whole model on the prefix at every step."""
    results = []
    for row in range(src.shape[0]):
        prefix = [BOS]
        for _ in range(max_len):
            logits = model(src[row : row + 1], torch.tensor([prefix]), mask[row : row + 1])
            logits[..., PAD] = -math.inf  # PAD is never generated: it marks "after EOS"
            prefix.append(int(logits[0, -1].argmax()))
            if prefix[-1] == EOS:
                break
        results.append(prefix[1:])
    return results


def as_rows(out: torch.Tensor) -> list[list[int]]:
    """Output rows cut after the first EOS, checking that only PAD follows it."""
    rows = []
    for seq in out.tolist():
        if EOS in seq:
            end = seq.index(EOS) + 1
            assert all(t == PAD for t in seq[end:]), seq
            seq = seq[:end]
        rows.append(seq)
    return rows


# ------------------------------------------------------------------------------ greedy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_step_by_step_argmax(seed: int) -> None:
    model = random_seq2seq(7, seed)
    src, mask = random_source(4, 7, seed)
    out = greedy_decode(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=6)
    expected = reference_greedy(model, src, mask, 6)
    assert out.dtype == torch.long
    assert out.shape == (4, max(len(r) for r in expected))
    assert as_rows(out) == expected


def test_greedy_stops_per_sequence_and_pads() -> None:
    def table(key: int, prefix: tuple[int, ...]) -> dict[int, float]:
        script = [A, EOS] if key == A else [A, B, C, EOS]
        return {script[len(prefix)]: 0.9} if len(prefix) < len(script) else {EOS: 0.9}

    model = TableSeq2Seq(table, 6)
    out = greedy_decode(model, torch.tensor([[A], [B]]), bos_id=BOS, eos_id=EOS, max_len=10)
    assert out.tolist() == [[A, EOS, PAD, PAD], [A, B, C, EOS]]
    # max_len cuts sequences that have not finished.
    out = greedy_decode(model, torch.tensor([[B]]), bos_id=BOS, eos_id=EOS, max_len=2)
    assert out.tolist() == [[A, B]]


def test_decoding_restores_training_mode_and_disables_dropout() -> None:
    model = random_seq2seq(7, 3, dropout=0.5).train()
    src, mask = random_source(3, 7, 3)
    first = greedy_decode(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=5)
    second = greedy_decode(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=5)
    assert torch.equal(first, second)
    assert model.training


# ------------------------------------------------------------------------------ beam search


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_size_one_equals_greedy(seed: int) -> None:
    model = random_seq2seq(8, seed)
    src, mask = random_source(5, 8, seed)
    greedy = greedy_decode(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=7)
    beam = beam_search(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=7, beam_size=1)
    assert torch.equal(beam, greedy)


def test_beam_search_beats_greedy_on_a_garden_path() -> None:
    def table(key: int, prefix: tuple[int, ...]) -> dict[int, float]:
        if prefix == ():
            return {A: 0.5, B: 0.4, C: 0.1}
        if prefix == (A,):
            return {C: 0.35, A: 0.33, B: 0.32}
        if prefix == (B,):
            return {EOS: 0.9, A: 0.1}
        return {EOS: 1.0}

    model = TableSeq2Seq(table, 6)
    src = torch.tensor([[A], [B]])
    greedy = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=5)
    assert greedy.tolist() == [[A, C, EOS]] * 2  # P = 0.5 * 0.35 = 0.175
    for alpha in (0.0, 0.6):
        beam = beam_search(
            model, src, bos_id=BOS, eos_id=EOS, max_len=5, beam_size=2, length_penalty=alpha
        )
        assert beam.tolist() == [[B, EOS]] * 2  # P = 0.4 * 0.9 = 0.36


def sequence_log_probs(model, src_row, mask_row, hyps: list[tuple[int, ...]]) -> list[float]:
    """log P(hyp | src) by teacher forcing, for hypotheses of one length."""
    tgt_in = torch.tensor([(BOS, *h[:-1]) for h in hyps])
    n = len(hyps)
    logits = model(src_row.expand(n, -1), tgt_in, mask_row.expand(n, -1))
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    picked = log_probs.gather(-1, torch.tensor(hyps).unsqueeze(-1)).squeeze(-1)
    return picked.sum(-1).tolist()


class PositionBiasedSeq2Seq(Seq2SeqTransformer):
    """A random model plus a random bias per output position: its best output's length depends
    on the length penalty, which a plain random model's (almost always just EOS) does not."""

    position_bias: torch.Tensor  # (max_len, V)

    def decode(self, tgt, memory, memory_padding_mask=None, tgt_padding_mask=None):
        logits = super().decode(tgt, memory, memory_padding_mask, tgt_padding_mask)
        return logits + self.position_bias[: tgt.shape[1]]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_is_exact_search(alpha: float) -> None:
    """A beam wider than the number of hypotheses keeps them all, so it must return the best
    ``log P / ((5 + len) / 6) ** alpha`` over every sequence that ends at EOS or at max_len."""
    vocab, max_len, seed = 6, 3, 5
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        tie_embeddings=False,
        max_len=16,
    )
    model = PositionBiasedSeq2Seq(config).eval()
    model.position_bias = torch.randn(16, vocab)
    src, mask = random_source(2, vocab, seed)
    tokens = range(1, vocab)  # everything but PAD
    out = beam_search(
        model,
        src,
        mask,
        bos_id=BOS,
        eos_id=EOS,
        max_len=max_len,
        beam_size=len(tokens) ** max_len,
        length_penalty=alpha,
    )
    hyps = {
        seq[:length]
        for seq in itertools.product(tokens, repeat=max_len)
        for length in range(1, max_len + 1)
        if EOS not in seq[: length - 1] and (seq[length - 1] == EOS or length == max_len)
    }
    for row, got in enumerate(as_rows(out)):
        src_row, mask_row = src[row : row + 1], mask[row : row + 1]
        best = -math.inf
        for length in range(1, max_len + 1):
            group = sorted(h for h in hyps if len(h) == length)
            scores = sequence_log_probs(model, src_row, mask_row, group)
            best = max(best, max(s / ((5 + length) / 6) ** alpha for s in scores))
        (mine,) = sequence_log_probs(model, src_row, mask_row, [tuple(got)])
        assert mine / ((5 + len(got)) / 6) ** alpha == pytest.approx(best, abs=1e-5)


def test_beam_search_output_format() -> None:
    model = random_seq2seq(7, 5, sharpness=8.0)
    src, mask = random_source(3, 7, 5)
    out = beam_search(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=6, beam_size=3)
    assert out.dtype == torch.long and out.shape[0] == 3 and 1 <= out.shape[1] <= 6
    rows = as_rows(out)  # only PAD after EOS
    assert max(len(r) for r in rows) == out.shape[1]  # no all-PAD columns at the end


# ------------------------------------------------------------------------------ sampling


def random_lm(seed: int, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    fields: dict = dict(
        vocab_size=9,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_decoder_layers=2,
        dropout=0.0,
        max_len=16,
    )
    fields.update(overrides)
    return DecoderLM(TransformerConfig(**fields)).eval()


def reference_argmax(lm: DecoderLM, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    tokens = prompt
    for _ in range(steps):
        tokens = torch.cat([tokens, lm(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize(
    "options",
    [{"top_k": 1}, {"top_k": 1, "temperature": 3.0}, {"top_p": 1e-6}, {"top_p": 1e-6, "top_k": 4}],
)
def test_sampling_with_one_candidate_is_argmax(options: dict) -> None:
    lm = random_lm(0)
    prompt = torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(0))
    out = sample(
        lm, prompt, max_new_tokens=6, generator=torch.Generator().manual_seed(1), **options
    )
    assert torch.equal(out, reference_argmax(lm, prompt, 6))


def test_sampling_is_reproducible_with_a_seeded_generator() -> None:
    lm = random_lm(1)
    prompt = torch.randint(0, 9, (4, 2), generator=torch.Generator().manual_seed(0))

    def draw(seed: int) -> torch.Tensor:
        return sample(lm, prompt, max_new_tokens=10, generator=torch.Generator().manual_seed(seed))

    first = draw(5)
    assert first.shape == (4, 12) and torch.equal(first[:, :2], prompt)
    assert torch.equal(first, draw(5))
    assert not torch.equal(first, draw(6))


def test_top_k_and_top_p_restrict_the_support() -> None:
    lm = random_lm(2)
    prompt = torch.tensor([[3, 1, 4]])
    probs = torch.softmax(lm(prompt)[0, -1].double(), dim=-1).tolist()
    ranked = sorted(range(9), key=lambda i: -probs[i])
    many = prompt.expand(400, -1)
    g = torch.Generator().manual_seed(0)

    drawn = set(sample(lm, many, max_new_tokens=1, top_k=3, generator=g)[:, -1].tolist())
    assert drawn <= set(ranked[:3]) and len(drawn) > 1

    nucleus, mass = [], 0.0
    for token in ranked:  # the fewest most likely tokens with mass >= 0.5
        nucleus.append(token)
        mass += probs[token]
        if mass >= 0.5:
            break
    drawn = set(sample(lm, many, max_new_tokens=1, top_p=0.5, generator=g)[:, -1].tolist())
    assert drawn <= set(nucleus) and len(drawn) > 1


def test_sampling_stops_at_eos_and_pads() -> None:
    class ScriptedLM(DecoderLM):
        """Rows starting with A say EOS at once; the others say C forever."""

        def forward(self, ids, padding_mask=None):
            logits = torch.full((*ids.shape, 9), -10.0)
            logits[..., C] = torch.where(ids[:, :1] == A, -10.0, 10.0)
            logits[..., EOS] = torch.where(ids[:, :1] == A, 10.0, -10.0)
            return logits

    lm = ScriptedLM(TransformerConfig(vocab_size=9, d_model=4, num_heads=1, d_ff=4))
    out = sample(lm, torch.tensor([[A, B], [B, B]]), max_new_tokens=3, eos_id=EOS)
    assert out.tolist() == [[A, B, EOS, PAD, PAD], [B, B, C, C, C]]
    out = sample(lm, torch.tensor([[A, B], [A, C]]), max_new_tokens=3, eos_id=EOS)
    assert out.tolist() == [[A, B, EOS], [A, C, EOS]]  # all finished: stop early


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": 2.0}, TypeError, "top_k"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
        ({"eos_id": 9}, ValueError, "eos_id"),
        ({"max_new_tokens": 14}, ValueError, "max_len=16"),
    ],
)
def test_sample_argument_errors(options: dict, error: type, match: str) -> None:
    lm = random_lm(3, positional="learned")
    kwargs = {"max_new_tokens": 2, **options}
    with pytest.raises(error, match=match):
        sample(lm, torch.zeros(1, 4, dtype=torch.long), **kwargs)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"beam_size": 0}, ValueError, "beam_size"),
        ({"max_len": 0}, ValueError, "max_len"),
        ({"bos_id": 7}, ValueError, "bos_id"),
        ({"eos_id": -1}, ValueError, "eos_id"),
        ({"max_len": 17}, ValueError, "max_len=16"),
    ],
)
def test_seq2seq_decoding_argument_errors(options: dict, error: type, match: str) -> None:
    model = random_seq2seq(7, 0, positional="learned")
    kwargs = {"bos_id": BOS, "eos_id": EOS, "max_len": 4, **options}
    src = torch.full((1, 3), A)
    with pytest.raises(error, match=match):
        beam_search(model, src, **kwargs)
    if "beam_size" not in options:
        with pytest.raises(error, match=match):
            greedy_decode(model, src, **kwargs)
    with pytest.raises(TypeError, match="Seq2SeqTransformer"):
        greedy_decode(random_lm(0), src, bos_id=BOS, eos_id=EOS, max_len=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DecoderLM"):
        sample(model, src, max_new_tokens=1)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ smoke


def test_overfits_the_copy_task() -> None:
    """A tiny model learns to copy 40 random digit strings and greedy decoding gets all right."""
    torch.manual_seed(0)
    digits, n = 10, 40
    lengths = torch.randint(2, 6, (n,))
    src = torch.randint(3, 3 + digits, (n, 5))
    src_mask = torch.arange(5)[None, :] < lengths[:, None]  # (n, 5)
    src = src.masked_fill(~src_mask, PAD)
    target = torch.full((n, 6), PAD)  # digits, EOS, then PAD
    for i, length in enumerate(lengths.tolist()):
        target[i, :length] = src[i, :length]
        target[i, length] = EOS
    tgt_in = torch.cat([torch.full((n, 1), BOS), target[:, :-1]], dim=1)
    tgt_mask = tgt_in != PAD

    config = TransformerConfig(
        vocab_size=3 + digits,
        d_model=32,
        num_heads=2,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dropout=0.0,
        max_len=16,
    )
    model = Seq2SeqTransformer(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(400):
        logits = model(src, tgt_in, src_mask, tgt_mask)
        loss = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            out = greedy_decode(model, src, src_mask, bos_id=BOS, eos_id=EOS, max_len=6)
            padded = F.pad(out, (0, 6 - out.shape[1]), value=PAD)
            if torch.equal(padded, target):
                break
    out = greedy_decode(model, src, src_mask, bos_id=BOS, eos_id=EOS, max_len=6)
    assert torch.equal(F.pad(out, (0, 6 - out.shape[1]), value=PAD), target), loss.item()
