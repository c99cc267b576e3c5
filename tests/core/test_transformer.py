"""Chapter 2: the encoder-decoder Transformer (parity with nn.Transformer: tests/convert)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmcourse.data.dates import generate_dates
from mmcourse.tokenizers import CharVocabulary
from mmcourse.train import parameter_count
from mmcourse.transformer import Seq2SeqTransformer, TransformerConfig, sequence_loss, warmup_inverse_sqrt

TINY = {"d_model": 16, "n_heads": 2, "n_encoder_layers": 2, "n_decoder_layers": 2, "d_ff": 32, "dropout": 0.0}


def tiny_model(seed: int = 0, **overrides: object) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, **{**TINY, **overrides})
    return Seq2SeqTransformer(config).eval()


def test_encode_and_decode_return_tensors_and_the_weights_come_separately() -> None:
    model = tiny_model()
    src_ids, tgt_ids = torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 4))
    src_ids[1, 4:] = 0  # two pads
    src_attention_mask = (src_ids != 0).long()
    assert model(src_ids, tgt_ids).shape == (2, 4, 13)
    memory = model.encode(src_ids, src_attention_mask)
    logits = model.decode(tgt_ids, memory, src_attention_mask)
    assert memory.shape == (2, 6, 16) and logits.shape == (2, 4, 13)
    torch.testing.assert_close(logits, model(src_ids, tgt_ids, src_attention_mask))
    encoder_weights = model.encoder_attention_weights(src_ids, src_attention_mask)
    self_weights, cross_weights = model.decoder_attention_weights(tgt_ids, memory, src_attention_mask)
    assert encoder_weights.shape == (2, 2, 2, 6, 6)  # (layers, batch, n_heads, S, S)
    assert self_weights.shape == (2, 2, 2, 4, 4) and cross_weights.shape == (2, 2, 2, 4, 6)
    torch.testing.assert_close(cross_weights.sum(-1), torch.ones(2, 2, 2, 4))
    assert encoder_weights[:, 1, :, :, 4:].abs().max() == 0 and cross_weights[:, 1, :, :, 4:].abs().max() == 0
    assert self_weights.triu(diagonal=1).abs().max() == 0  # causal


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
        ({"pad_id": -1}, "pad_id"),
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


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"final_norm": "yes"}, "final_norm"), ({"norm_first": 1}, "norm_first"), ({"pad_id": 1.0}, "pad_id"),
     ({"d_model": 32.0}, "d_model")],
)  # fmt: skip
def test_config_wrong_types_raise_type_error(overrides: dict, field: str) -> None:
    with pytest.raises(TypeError, match=field):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, **overrides)


def test_bad_inputs_name_the_argument() -> None:
    model = tiny_model(context_length=8)
    with pytest.raises(ValueError, match="src_ids"):
        model.encode(torch.randint(1, 11, (2, 9)))  # longer than context_length
    with pytest.raises(TypeError, match="tgt_ids"):
        model(torch.randint(1, 11, (2, 3)), torch.ones(2, 3))  # float ids
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(1, 11, (2, 3)), torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="memory"):
        model.decode(torch.ones(2, 3, dtype=torch.long), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="src_attention_mask"):
        model.decode(torch.ones(2, 3, dtype=torch.long), torch.randn(2, 5, 16), torch.ones(2, 4))
    with pytest.raises(TypeError, match="TransformerConfig"):
        Seq2SeqTransformer({"src_vocab_size": 11, "tgt_vocab_size": 13})


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
