import pytest
import torch
from torch import nn

from mmcourse.generation import beam_search, evaluating, gnmt_length_penalty, greedy_decode
from mmcourse.transformer import Seq2SeqTransformer, TransformerConfig

BOS, EOS, PAD = 1, 2, 0


def sequence_log_probability(model: nn.Module, src_ids: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """The oracle: total log-probability (batch,) of generated ``sequences`` (batch, T) (no BOS), up to and
    including EOS, by one teacher-forced decoder pass."""
    src_attention_mask = (src_ids != PAD).long()  # (batch, S)
    bos = torch.full((sequences.size(0), 1), BOS, dtype=torch.long)  # (batch, 1)
    with evaluating(model):
        memory = model.encode(src_ids, src_attention_mask)  # (batch, S, d_model)
        tgt_ids = torch.cat([bos, sequences], dim=1)[:, :-1]  # (batch, T) decoder inputs
        logits = model.decode(tgt_ids, memory, src_attention_mask, torch.ones_like(tgt_ids))  # (batch, T, V)
        token_log_probs = logits.float().log_softmax(dim=-1).gather(-1, sequences[..., None])[..., 0]  # (batch, T)
    is_eos = (sequences == EOS).long()  # (batch, T)
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # (batch, T) positions past the first EOS
    return token_log_probs.masked_fill(after_eos, 0.0).sum(dim=1)  # (batch,)


def random_model(seed: int, vocab_size: int = 8) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size, vocab_size, d_model=16, n_heads=2, n_encoder_layers=1,
                               n_decoder_layers=1, d_ff=32, dropout=0.0)  # fmt: skip
    return Seq2SeqTransformer(config).eval()


def sources(seed: int, batch: int = 3, length: int = 5, vocab_size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (batch, length), generator=generator)  # (batch, S), no special ids


def test_greedy_pads_after_eos_and_stops_early() -> None:
    model = random_model(0)
    src_ids = sources(0, batch=6)
    output = greedy_decode(model, src_ids, BOS, EOS, max_length=12)
    assert output.shape[0] == 6 and 1 <= output.shape[1] <= 12
    for row in output.tolist():
        if EOS in row:
            assert all(token == PAD for token in row[row.index(EOS) + 1 :])
    if (output == EOS).any(dim=1).all():
        assert (output[:, -1] == EOS).any(), "stops at the step where the last sequence finished"


def test_greedy_is_batch_independent() -> None:
    model = random_model(1)
    src_ids = sources(1, batch=4)
    padded = torch.cat([src_ids, torch.zeros(4, 2, dtype=torch.long)], dim=1)  # pad_id columns
    padded[0, :] = torch.cat([src_ids[0], torch.tensor([4, 5])])  # row 0 is longer, the others padded
    together = greedy_decode(model, padded, BOS, EOS, max_length=8)
    for row in range(4):
        alone = greedy_decode(model, padded[row : row + 1, : 7 if row == 0 else 5], BOS, EOS, max_length=8)
        assert together[row, : alone.size(1)].tolist() == alone[0].tolist()


def test_generation_restores_the_training_flag() -> None:
    model = random_model(0).train()
    greedy_decode(model, sources(0), BOS, EOS, max_length=4)
    assert model.training


@pytest.mark.parametrize("seed", range(3))
def test_beam_size_one_is_greedy(seed: int) -> None:
    model = random_model(seed)
    src_ids = sources(seed, batch=4)
    greedy = greedy_decode(model, src_ids, BOS, EOS, max_length=10)
    sequences, scores = beam_search(model, src_ids, BOS, EOS, max_length=10, beam_size=1)
    assert sequences.shape[:2] == (4, 1) and scores.shape == (4, 1)
    assert torch.equal(sequences[:, 0], greedy)


def test_beam_scores_sorted_and_match_the_sequences() -> None:
    model = random_model(3)
    src_ids = sources(3, batch=3)
    sequences, scores = beam_search(model, src_ids, BOS, EOS, max_length=8, beam_size=4, length_penalty=0.6)
    assert sequences.shape[:2] == (3, 4) and scores.shape == (3, 4)
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "best first"
    for beam in range(4):
        candidates = sequences[:, beam]  # (batch, T)
        log_probability = sequence_log_probability(model, src_ids, candidates)  # (batch,)
        is_eos = candidates == EOS  # (batch, T)
        first_eos = is_eos.float().argmax(dim=1) + 1  # (batch,) length up to and including EOS
        lengths = torch.where(is_eos.any(dim=1), first_eos, candidates.size(1))  # (batch,)
        torch.testing.assert_close(scores[:, beam], log_probability / gnmt_length_penalty(lengths, 0.6))


class BranchingModel(nn.Module):
    """A toy model whose next-token distribution depends only on the last token: greedy takes the wrong branch.

    After BOS: A 0.6, B 0.4. After A: A 0.36, C 0.34, EOS 0.30. After B or C: EOS. Greedy follows A, A, A …
    (probability 0.6 · 0.36^k); the best sequence is B EOS (0.4).
    """

    A, B, C = 3, 4, 5

    def __init__(self) -> None:
        super().__init__()
        table = torch.full((6, 6), 1e-9)  # (last token, next token)
        table[BOS, self.A], table[BOS, self.B] = 0.6, 0.4
        table[self.A, self.A], table[self.A, self.C], table[self.A, EOS] = 0.36, 0.34, 0.30
        table[self.B, EOS] = table[self.C, EOS] = table[EOS, EOS] = table[PAD, EOS] = 1.0
        self.register_buffer("log_table", table.log())

    def encode(self, src_ids: torch.Tensor, src_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(src_ids.size(0), 1, 1)  # (batch, 1, 1): the source plays no part

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor, *masks: object) -> torch.Tensor:
        return self.log_table[tgt_ids]  # (batch, T, vocab_size)


def test_beam_finds_the_sequence_greedy_misses() -> None:
    model, src_ids = BranchingModel(), torch.full((2, 3), 3)
    greedy = greedy_decode(model, src_ids, BOS, EOS, max_length=5, pad_id=PAD)
    assert greedy.tolist() == [[3, 3, 3, 3, 3]] * 2
    sequences, scores = beam_search(model, src_ids, BOS, EOS, max_length=5, beam_size=2, length_penalty=0.0)
    assert sequences[:, 0].tolist() == [[4, 2, 0, 0, 0]] * 2, "B EOS, then padding"
    torch.testing.assert_close(scores[:, 0], torch.tensor(0.4).log().expand(2))
    assert (scores[:, 0] > sequence_log_probability(model, src_ids, greedy)).all()


def test_beam_beats_greedy_on_a_random_model() -> None:
    model = random_model(3, vocab_size=6)  # seed chosen so that greedy is suboptimal for some rows
    src_ids = sources(3, batch=16, vocab_size=6)
    greedy = greedy_decode(model, src_ids, BOS, EOS, max_length=6)
    sequences, _ = beam_search(model, src_ids, BOS, EOS, max_length=6, beam_size=4, length_penalty=0.0)
    greedy_score = sequence_log_probability(model, src_ids, greedy)  # (batch,)
    beam_score = sequence_log_probability(model, src_ids, sequences[:, 0])  # (batch,)
    assert (beam_score >= greedy_score - 1e-5).all(), "the best beam is never worse than greedy"
    assert (beam_score > greedy_score + 1e-3).any(), "and somewhere strictly better"


def test_bad_arguments_raise() -> None:
    model, src_ids = random_model(0), sources(0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src_ids, BOS, EOS, max_length=5, beam_size=0)
    with pytest.raises(ValueError, match="max_length"):
        beam_search(model, src_ids, BOS, EOS, max_length=0)
    with pytest.raises(ValueError, match="max_length"):
        greedy_decode(model, src_ids, BOS, EOS, max_length=0)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, src_ids, BOS, EOS, max_length=5, length_penalty=-1.0)
    with pytest.raises(ValueError, match="src_ids"):
        greedy_decode(model, src_ids[0], BOS, EOS, max_length=5)
    with pytest.raises(ValueError, match="src_attention_mask"):  # a non-token source needs its mask
        greedy_decode(model, src_ids[..., None], BOS, EOS, max_length=5)


def test_greedy_and_beam_check_source_ids_once_naming_the_field() -> None:
    from mmcourse.generation import beam_search, greedy_decode
    from mmcourse.transformer import Seq2SeqTransformer, TransformerConfig

    config = TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=16, n_heads=2, d_ff=32,
                               n_encoder_layers=1, n_decoder_layers=1)  # fmt: skip
    model = Seq2SeqTransformer(config).eval()
    outside = torch.tensor([[3, 4, 12]])  # 12 is past src_vocab_size
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match="src_ids must hold ids in \\[0, src_vocab_size=12\\)"):
            decode(model, outside, bos_id=1, eos_id=2, max_length=4)
        with pytest.raises(TypeError, match="bos_id must be an int"):
            decode(model, outside[:, :2], bos_id=1.0, eos_id=2, max_length=4)
