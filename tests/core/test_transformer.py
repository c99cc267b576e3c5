import math

import pytest
import torch
from torch import nn

from mmcourse.attention import causal_mask, padding_mask
from mmcourse.convert.torch_layers import load_torch_transformer
from mmcourse.data.dates import generate_dates
from mmcourse.tokenizers import CharVocabulary
from mmcourse.train import parameter_count
from mmcourse.transformer import Seq2SeqTransformer, TransformerConfig, sequence_loss, warmup_inverse_sqrt

TINY = {"d_model": 16, "n_heads": 2, "n_encoder_layers": 2, "n_decoder_layers": 2, "d_ff": 32, "dropout": 0.0}


def tiny_model(seed: int = 0, **overrides: object) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, **{**TINY, **overrides})
    return Seq2SeqTransformer(config).eval()


@pytest.mark.filterwarnings("ignore:.*nested.tensor:UserWarning")
@pytest.mark.parametrize("norm_first", [False, True])
def test_stacks_match_torch_transformer(norm_first: bool) -> None:
    torch.manual_seed(0)
    reference = nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.0,
        batch_first=True, norm_first=norm_first,
    ).eval()  # fmt: skip
    model = load_torch_transformer(tiny_model(norm_first=norm_first, final_norm=True), reference)
    source, target = torch.randn(3, 7, 16), torch.randn(3, 5, 16)  # already embedded (batch, S/T, d_model)
    src_attention_mask = (torch.arange(7)[None, :] < torch.tensor([[7], [4], [2]])).long()  # (batch, S)
    tgt_attention_mask = (torch.arange(5)[None, :] < torch.tensor([[5], [5], [3]])).long()  # (batch, T)
    with torch.no_grad():  # the fast path (nested tensors) of torch's encoder runs too
        expected = reference(
            source, target, tgt_mask=~causal_mask(5), src_key_padding_mask=~src_attention_mask.bool(),
            tgt_key_padding_mask=~tgt_attention_mask.bool(), memory_key_padding_mask=~src_attention_mask.bool(),
        )  # fmt: skip
        memory, _ = model.encoder(source, padding_mask(src_attention_mask))  # (batch, S, d_model)
        self_mask = causal_mask(5) & padding_mask(tgt_attention_mask)  # (batch, 1, T, T)
        actual, _, _ = model.decoder(target, memory, self_mask, padding_mask(src_attention_mask))
        torch_memory = reference.encoder(source, src_key_padding_mask=~src_attention_mask.bool())
    torch.testing.assert_close(actual, expected)
    real = src_attention_mask.bool()  # torch's nested-tensor path writes zeros at padded positions
    torch.testing.assert_close(memory[real], torch_memory[real])


@pytest.mark.filterwarnings("ignore:.*nested.tensor:UserWarning")
def test_post_ln_without_final_norm_cannot_load_torch() -> None:
    reference = nn.Transformer(16, 2, 2, 2, 32, 0.0, batch_first=True)
    with pytest.raises(ValueError, match="final_norm"):
        load_torch_transformer(tiny_model(norm_first=False), reference)


def test_shapes_and_weights() -> None:
    model = tiny_model()
    src_ids, tgt_ids = torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 4))
    assert model(src_ids, tgt_ids).shape == (2, 4, 13)
    memory, encoder_weights = model.encode(src_ids, need_weights=True)
    assert memory.shape == (2, 6, 16) and encoder_weights.shape == (2, 2, 2, 6, 6)
    logits, self_weights, cross_weights = model.decode(tgt_ids, memory, need_weights=True)
    assert logits.shape == (2, 4, 13)
    assert self_weights.shape == (2, 2, 2, 4, 4) and cross_weights.shape == (2, 2, 2, 4, 6)
    torch.testing.assert_close(cross_weights.sum(-1), torch.ones(2, 2, 2, 4))


def test_tied_and_shared_embeddings() -> None:
    model = tiny_model()
    assert model.output_projection.weight is model.tgt_embedding.weight
    assert model.src_embedding is not model.tgt_embedding
    config = TransformerConfig(13, 13, share_embeddings=True, **TINY)
    shared = Seq2SeqTransformer(config)
    assert shared.src_embedding is shared.tgt_embedding
    assert parameter_count(shared) == parameter_count(tiny_model()) - 11 * 16
    untied = tiny_model(tie_output=False)
    assert parameter_count(untied) == parameter_count(tiny_model()) + 13 * 16


def test_causal_decoder_later_tokens_do_not_change_earlier_logits() -> None:
    model = tiny_model()
    src_ids, tgt_ids = torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 5))
    changed = tgt_ids.clone()
    changed[:, 3:] = (changed[:, 3:] % 12) + 1  # different, still no pad
    before, after = model(src_ids, tgt_ids), model(src_ids, changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_source_padding_changes_no_real_logit() -> None:
    model = tiny_model()
    src_ids, tgt_ids = torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 5))
    padded = torch.cat([src_ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # (batch, S + 3) pad_id = 0
    torch.testing.assert_close(model(padded, tgt_ids), model(src_ids, tgt_ids))
    explicit_mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], dim=1).long()
    noise = torch.cat([src_ids, torch.randint(1, 11, (2, 3))], dim=1)  # junk under a 0 mask is ignored too
    torch.testing.assert_close(model(noise, tgt_ids, src_attention_mask=explicit_mask), model(src_ids, tgt_ids))


def test_target_padding_changes_no_real_logit_and_no_nan() -> None:
    model = tiny_model()
    src_ids, tgt_ids = torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 4))
    padded = torch.cat([tgt_ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # (batch, T + 3)
    logits = model(src_ids, padded)
    torch.testing.assert_close(logits[:, :4], model(src_ids, tgt_ids))
    assert torch.isfinite(logits).all()
    fully_padded_source = torch.zeros(2, 6, dtype=torch.long)  # a row with no real token at all
    logits = model(fully_padded_source, padded)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_model": 30, "n_heads": 4}, "n_heads"),
        ({"d_model": 0}, "d_model"),
        ({"n_encoder_layers": 0}, "n_encoder_layers"),
        ({"n_decoder_layers": -1}, "n_decoder_layers"),
        ({"d_ff": 0}, "d_ff"),
        ({"dropout": 1.0}, "dropout"),
        ({"context_length": 0}, "context_length"),
        ({"activation": "tanh"}, "activation"),
        ({"share_embeddings": True, "tgt_vocab_size": 12}, "share_embeddings"),
        ({"pad_id": 10}, "pad_id"),
        ({"src_vocab_size": 0}, "src_vocab_size"),
        ({"final_norm": "yes"}, "final_norm"),
        ({"d_model": 6, "n_heads": 2, "src_vocab_size": 10, "tgt_vocab_size": 10, "pad_id": 0}, None),
    ],
)
def test_config_validation_names_the_field(overrides: dict, field: str | None) -> None:
    arguments = {"src_vocab_size": 10, "tgt_vocab_size": 10, **overrides}
    if field is None:
        TransformerConfig(**arguments)  # valid
        return
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**arguments)


def test_bad_inputs_raise() -> None:
    model = tiny_model(context_length=8)
    with pytest.raises(ValueError, match="src_ids"):
        model.encode(torch.randint(1, 11, (2, 9)))  # longer than context_length
    with pytest.raises(ValueError, match="tgt_ids"):
        model(torch.randint(1, 11, (2, 3)), torch.full((2, 3), 13))  # id out of the target vocabulary
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(1, 11, (2, 3)), torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4))


def test_warmup_inverse_sqrt_peaks_at_warmup() -> None:
    d_model, warmup = 512, 4000
    rates = [warmup_inverse_sqrt(step, d_model, warmup) for step in range(1, 3 * warmup)]
    assert max(range(len(rates)), key=rates.__getitem__) + 1 == warmup
    assert rates[warmup - 1] == pytest.approx(d_model**-0.5 * warmup**-0.5)
    assert rates[0] == pytest.approx(d_model**-0.5 * warmup**-1.5)
    assert rates[4 * warmup // 2 - 1] == pytest.approx(rates[warmup - 1] / math.sqrt(2))  # 1/√step decay
    for bad in ({"step": 0}, {"d_model": 0}, {"warmup": 0}):
        arguments = {"step": 1, "d_model": d_model, "warmup": warmup, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            warmup_inverse_sqrt(**arguments)


def test_sequence_loss_ignores_padding() -> None:
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 2, 0], [3, 0, 0]])
    expected = nn.functional.cross_entropy(logits[labels != 0], labels[labels != 0])
    torch.testing.assert_close(sequence_loss(logits, labels, pad_id=0), expected)
    with pytest.raises(ValueError, match="labels"):
        sequence_loss(logits, labels[:, :2])


def test_overfits_a_batch_of_dates() -> None:
    torch.manual_seed(0)
    pairs = generate_dates(8, seed=3)
    vocabulary = CharVocabulary.from_texts([text for pair in pairs for text in pair])
    src_ids, src_attention_mask = vocabulary.encode_batch([source for source, _ in pairs])
    tgt_ids, _ = vocabulary.encode_batch([target for _, target in pairs], add_bos=True, add_eos=True)
    config = TransformerConfig(len(vocabulary), len(vocabulary), d_model=32, n_heads=2, n_encoder_layers=1,
                               n_decoder_layers=1, d_ff=64, dropout=0.0)  # fmt: skip
    model = Seq2SeqTransformer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        logits = model(src_ids, tgt_ids[:, :-1], src_attention_mask)  # (batch, T - 1, vocab_size)
        loss = sequence_loss(logits, tgt_ids[:, 1:], vocabulary.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 < losses[0]
    model.eval()
    predictions = model(src_ids, tgt_ids[:, :-1], src_attention_mask).argmax(-1)  # (batch, T - 1)
    assert torch.equal(predictions, tgt_ids[:, 1:])
