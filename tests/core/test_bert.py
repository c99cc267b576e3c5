"""Chapter 3: BERT, its masking rule, its collator and its losses (parity with transformers: tests/convert)."""

from __future__ import annotations

import pytest
import torch
from conftest import PAIRS_BERT as TINY
from conftest import pair_batch

from mmcourse.bert import (
    BertConfig,
    BertForPreTraining,
    BertModel,
    PretrainingCollator,
    mask_tokens,
    mean_pool,
    pretraining_loss,
    pretraining_step_loss,
)
from mmcourse.train import IGNORE_INDEX

SPECIAL_IDS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK_ID = 4


# --- config and shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [("d_model", 30, ValueError), ("vocab_size", 0, ValueError), ("dropout", 1.0, ValueError),
     ("norm_eps", 0.0, ValueError), ("pad_id", 60, ValueError), ("pad_id", -1, ValueError),
     ("n_layers", 1.5, TypeError), ("pad_id", "0", TypeError)],
)  # fmt: skip
def test_config_validation_names_the_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        BertConfig(**{**TINY.__dict__, field: value})


def test_config_is_frozen_and_defaults_are_berts() -> None:
    config = BertConfig()
    assert config.norm_eps == 1e-12 and config.type_vocab_size == 2 and config.pad_id == 0
    with pytest.raises(AttributeError):
        config.d_model = 7  # type: ignore[misc]


def test_shapes_weights_and_tied_decoder() -> None:
    model = BertForPreTraining(TINY).eval()
    input_ids, token_type_ids, attention_mask = pair_batch()
    output = model(input_ids, token_type_ids, attention_mask)
    assert output.hidden_states.shape == (3, 12, 32) and output.pooled_output.shape == (3, 32)
    assert output.mlm_logits.shape == (3, 12, 60) and output.nsp_logits.shape == (3, 2)
    attn_weights = model.bert.attention_weights(input_ids, token_type_ids, attention_mask)
    assert attn_weights.shape == (2, 3, 4, 12, 12)  # (n_layers, batch, n_heads, L, L)
    assert attn_weights[:, -1, :, :, -3:].abs().max() == 0  # nobody attends to padding
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(2, 3, 4, 12))
    assert model.mlm_head.decoder.weight is model.bert.embeddings.token_embedding.weight
    assert model.bert.layers[0].norm1.eps == 1e-12


def test_padding_changes_no_real_hidden_state() -> None:
    model = BertModel(TINY).eval()
    input_ids, token_type_ids, _ = pair_batch(batch=2, length=8)
    padded = torch.cat([input_ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # (batch, L + 3)
    padded_types = torch.cat([token_type_ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    attention_mask = (torch.arange(11) < 8).long().expand(2, 11)
    with torch.no_grad():
        expected = model(input_ids, token_type_ids).hidden_states
        actual = model(padded, padded_types, attention_mask).hidden_states[:, :8]
    torch.testing.assert_close(actual, expected)


def test_bad_inputs_name_the_tensor() -> None:
    model = BertModel(TINY)
    input_ids, token_type_ids, _ = pair_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids[0])
    with pytest.raises(ValueError, match="context_length"):
        model(torch.ones(1, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(input_ids, token_type_ids[:, :5])
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids, token_type_ids, torch.ones(3, 4))
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        model(input_ids.float())
    with pytest.raises(TypeError, match="token_type_ids must be an int64 or int32 tensor"):
        BertForPreTraining(TINY)(input_ids, token_type_ids.float())
    with pytest.raises(TypeError, match="BertConfig"):
        BertModel(TINY.__dict__)


# --- masking ------------------------------------------------------------------------------------------------------


def test_mask_tokens_statistics_on_a_large_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 1000, (256, 128), generator=generator)  # (batch, L)
    special_tokens_mask = torch.zeros_like(input_ids)
    input_ids[:, 0], input_ids[:, 64], input_ids[:, -1] = 2, 3, 3  # [CLS] … [SEP] … [SEP]
    special_tokens_mask[:, [0, 64, 127]] = 1
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, 100:] = 0  # pads, not marked as special: attention_mask must keep them out too
    input_ids[::2, 100:] = 0
    masked, labels = mask_tokens(input_ids, special_tokens_mask, 1000, MASK_ID, generator=generator,
                                 attention_mask=attention_mask)  # fmt: skip
    chosen = labels != IGNORE_INDEX
    maskable = (special_tokens_mask == 0) & (attention_mask == 1)
    assert not chosen[~maskable].any()  # never a special token or a pad
    assert torch.equal(masked[~maskable], input_ids[~maskable])
    assert torch.equal(labels[chosen], input_ids[chosen])  # labels: the original ids, -100 elsewhere
    assert torch.equal(masked[~chosen], input_ids[~chosen])  # unchosen tokens untouched
    n_maskable, n_chosen = maskable.sum().item(), chosen.sum().item()
    assert abs(n_chosen / n_maskable - 0.15) < 0.005  # ~4,200 chosen of ~28,000: 3 sigma ≈ 0.006 of 0.15
    as_mask = (masked[chosen] == MASK_ID).float().mean().item()
    kept = (masked[chosen] == input_ids[chosen]).float().mean().item()
    replaced = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(replaced - 0.1) < 0.015


def test_mask_tokens_is_reproducible_and_validates() -> None:
    input_ids, _, attention_mask = pair_batch()
    special = (input_ids < 5).long()
    first = mask_tokens(input_ids, special, 60, MASK_ID, generator=torch.Generator().manual_seed(3))
    second = mask_tokens(input_ids, special, 60, MASK_ID, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(ValueError, match="special_tokens_mask"):
        mask_tokens(input_ids, special[:, :3], 60, MASK_ID)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(input_ids, special, 60, MASK_ID, mlm_probability=0.0)
    with pytest.raises(ValueError, match="mask_id"):
        mask_tokens(input_ids, special, 60, 60)


def test_pretraining_loss_ignores_minus_100() -> None:
    model = BertForPreTraining(TINY).eval()
    input_ids, token_type_ids, attention_mask = pair_batch()
    outputs = model(input_ids, token_type_ids, attention_mask)
    mlm_labels = torch.full_like(input_ids, IGNORE_INDEX)
    mlm_labels[:, 3] = input_ids[:, 3]
    nsp_labels = torch.tensor([0, 1, IGNORE_INDEX])
    loss, metrics = pretraining_loss(outputs, mlm_labels, nsp_labels)
    expected_mlm = torch.nn.functional.cross_entropy(outputs.mlm_logits[:, 3], input_ids[:, 3])
    expected_nsp = torch.nn.functional.cross_entropy(outputs.nsp_logits[:2], nsp_labels[:2])
    torch.testing.assert_close(loss, expected_mlm + expected_nsp)
    assert list(metrics) == ["mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"]
    assert all(value.dim() == 0 and not value.requires_grad for value in metrics.values())  # no .item() in the loss
    mlm_accuracy = (outputs.mlm_logits[:, 3].argmax(-1) == input_ids[:, 3]).float().mean()
    assert float(metrics["mlm_accuracy"]) == mlm_accuracy.item()
    torch.testing.assert_close(metrics["nsp_loss"], expected_nsp)
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
             "mlm_labels": mlm_labels, "nsp_labels": nsp_labels}  # fmt: skip
    torch.testing.assert_close(pretraining_step_loss(model, batch)[0], loss)  # MLM head on chosen rows only
    with pytest.raises(ValueError, match="mlm_labels"):
        pretraining_loss(outputs, mlm_labels[:, :4], nsp_labels)
    with pytest.raises(ValueError, match="nsp_labels"):
        pretraining_loss(outputs, mlm_labels, nsp_labels[:2])


# --- the collator with a real WordPiece tokenizer -----------------------------------------------------------------

TEXTS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles, and by opposing end them.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    from mmcourse.tokenizers import train_wordpiece

    return train_wordpiece(TEXTS, vocab_size=200, min_frequency=1)


def test_collator_builds_a_pretraining_batch(tokenizer) -> None:  # noqa: ANN001
    pairs = [(TEXTS[0], TEXTS[1], True), (TEXTS[2], TEXTS[0], False), ("to be", "or not", True)]
    batch = PretrainingCollator(tokenizer, max_length=16, seed=0)(pairs)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels"}
    assert batch["input_ids"].shape == batch["mlm_labels"].shape == (3, 16)  # truncated to max_length
    assert batch["nsp_labels"].tolist() == [0, 1, 0]  # BERT: 0 = is next
    assert batch["attention_mask"][2].tolist() == [1] * 7 + [0] * 9  # [CLS] to be [SEP] or not [SEP] + pads
    assert batch["token_type_ids"][2, :7].tolist() == [0, 0, 0, 0, 1, 1, 1]
    specials = torch.isin(batch["input_ids"], torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id]))
    assert (batch["mlm_labels"][specials | (batch["attention_mask"] == 0)] == IGNORE_INDEX).all()
    again = PretrainingCollator(tokenizer, max_length=16, seed=0)(pairs)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="pairs"):
        PretrainingCollator(tokenizer)([])


@pytest.mark.slow
def test_overfits_one_batch(tokenizer) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), context_length=32, d_model=32, n_heads=2, n_layers=1, d_ff=64,
                        dropout=0.0)  # fmt: skip
    model = BertForPreTraining(config)
    pairs = [(TEXTS[i % 3], TEXTS[(i + 1) % 3] if i % 2 else TEXTS[(i + 2) % 3], bool(i % 2)) for i in range(8)]
    batch = PretrainingCollator(tokenizer, max_length=32, mlm_probability=0.3, seed=0)(pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss, metrics = pretraining_step_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    assert metrics["nsp_accuracy"] == 1.0 and metrics["mlm_accuracy"] == 1.0


def test_mean_pool_averages_only_real_tokens() -> None:
    hidden_states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # the last position is padding
    torch.testing.assert_close(mean_pool(hidden_states, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(hidden_states, torch.ones(1, 2))
