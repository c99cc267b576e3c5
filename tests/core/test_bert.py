from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmcourse.bert import (
    IGNORE_INDEX,
    BertConfig,
    BertForPreTraining,
    BertModel,
    PretrainingCollator,
    mask_tokens,
    pretraining_loss,
    pretraining_step_loss,
)
from mmcourse.convert.bert import from_hf_bert, load_hf_bert, to_hf_bert, to_hf_bert_for_pretraining

TINY = BertConfig(vocab_size=60, context_length=24, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.1)
SPECIAL_IDS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK_ID = 4


def perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its initial value (LayerNorm ones, zero biases) so a mix-up would show."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def pair_batch(batch: int = 3, length: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random [CLS] A [SEP] B [SEP] ids with token_type_ids and a padded last row."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, TINY.vocab_size, (batch, length), generator=generator)  # (batch, L)
    token_type_ids = torch.zeros_like(input_ids)  # (batch, L)
    token_type_ids[:, length // 2 :] = 1
    attention_mask = torch.ones_like(input_ids)  # (batch, L)
    attention_mask[-1, length - 3 :] = 0
    input_ids[:, 0] = 2
    input_ids[-1, length - 3 :] = 0
    return input_ids, token_type_ids, attention_mask


# --- config and shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("d_model", 30), ("vocab_size", 0), ("dropout", 1.0), ("norm_eps", 0.0), ("pad_id", 60), ("n_layers", 1.5)],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(TypeError if isinstance(value, float) and field == "n_layers" else ValueError, match=field):
        BertConfig(**{**TINY.__dict__, field: value})


def test_config_is_frozen_and_defaults_are_berts() -> None:
    config = BertConfig()
    assert config.norm_eps == 1e-12 and config.type_vocab_size == 2 and config.pad_id == 0
    with pytest.raises(AttributeError):
        config.d_model = 7  # type: ignore[misc]


def test_shapes_weights_and_tied_decoder() -> None:
    model = BertForPreTraining(TINY).eval()
    input_ids, token_type_ids, attention_mask = pair_batch()
    output = model(input_ids, token_type_ids, attention_mask, need_weights=True)
    assert output.hidden_states.shape == (3, 12, 32) and output.pooled_output.shape == (3, 32)
    assert output.mlm_logits.shape == (3, 12, 60) and output.nsp_logits.shape == (3, 2)
    assert len(output.attn_weights) == 2 and output.attn_weights[0].shape == (3, 4, 12, 12)
    assert output.attn_weights[0][-1, :, :, -3:].abs().max() == 0  # nobody attends to padding
    assert model.mlm_head.decoder.weight is model.bert.embeddings.token_embedding.weight
    assert model(input_ids).attn_weights is None
    assert model.bert.layers[0].norm1.eps == 1e-12


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
    with pytest.raises(ValueError, match="type_vocab_size"):
        model(input_ids, token_type_ids + 1)


def test_ids_outside_the_vocabularies_name_the_argument_and_the_range() -> None:
    """These used to reach nn.Embedding and raise torch's bare 'IndexError: index out of range in self'."""
    model = BertForPreTraining(TINY)
    input_ids, token_type_ids, attention_mask = pair_batch()
    too_large = input_ids.clone()
    too_large[0, 1] = TINY.vocab_size
    with pytest.raises(ValueError, match=r"input_ids must hold ids in \[0, vocab_size=60\), got 1 outside .*60…60"):
        model(too_large, token_type_ids, attention_mask)
    with pytest.raises(ValueError, match=r"input_ids must hold ids in \[0, vocab_size=60\).*-1…-1"):
        model.bert(input_ids.masked_fill(attention_mask == 0, -1))
    with pytest.raises(ValueError, match=r"token_type_ids must hold ids in \[0, type_vocab_size=2\).*-1…-1"):
        model(input_ids, torch.full_like(token_type_ids, -1), attention_mask)
    with pytest.raises(TypeError, match="token_type_ids must be an int64 or int32 tensor"):
        model(input_ids, token_type_ids.float(), attention_mask)


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
    assert set(metrics) == {"mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"}
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


# --- parity with transformers -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_to_hf_bert_for_pretraining_gives_the_same_logits() -> None:
    model = BertForPreTraining(TINY)
    perturb(model)
    model.eval()
    hf_model = to_hf_bert_for_pretraining(model)
    assert not hf_model.training
    input_ids, token_type_ids, attention_mask = pair_batch()
    with torch.no_grad():
        ours = model(input_ids, token_type_ids, attention_mask)
        theirs = hf_model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(ours.mlm_logits[real], theirs.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    encoder = to_hf_bert(model.bert).eval()
    with torch.no_grad():
        hidden_states = encoder(input_ids=input_ids, token_type_ids=token_type_ids).last_hidden_state
    torch.testing.assert_close(hidden_states, model.bert(input_ids, token_type_ids).hidden_states)


@pytest.mark.slow
def test_from_hf_bert_for_pretraining_gives_the_same_logits(tmp_path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=48, max_position_embeddings=20)  # fmt: skip
    source = transformers.BertForPreTraining(hf_config)
    perturb(source)
    source.save_pretrained(tmp_path)
    hf_model = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    model = from_hf_bert(hf_model)
    assert isinstance(model, BertForPreTraining) and not model.training
    assert (model.config.d_ff, model.config.context_length, model.config.norm_eps) == (48, 20, 1e-12)
    input_ids, token_type_ids, attention_mask = pair_batch()
    with torch.no_grad():
        ours = model(input_ids, token_type_ids, attention_mask)
        theirs = hf_model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(ours.mlm_logits[real], theirs.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    assert isinstance(from_hf_bert(hf_model.bert), BertModel)


@pytest.mark.slow
def test_conversion_rejects_mismatched_shapes() -> None:
    hf_model = to_hf_bert_for_pretraining(BertForPreTraining(TINY))
    wider = BertForPreTraining(BertConfig(**{**TINY.__dict__, "d_ff": 80}))
    with pytest.raises(ValueError, match=r"layers\.0\.feed_forward\.linear1\.weight.*\(80, 32\).*\(64, 32\)"):
        load_hf_bert(wider, hf_model)
    with pytest.raises(ValueError, match="BertModel or BertForPreTraining"):
        from_hf_bert(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="BertForPreTraining"):
        to_hf_bert_for_pretraining(BertModel(TINY))


@pytest.mark.slow
def test_minilm_hidden_states_equal_transformers() -> None:
    from transformers import AutoModel, AutoTokenizer

    from mmcourse.data.models import minilm_dir

    hf_model = AutoModel.from_pretrained(minilm_dir()).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = from_hf_bert(hf_model)
    assert isinstance(model, BertModel) and model.config.n_layers == 6 and model.config.d_model == 384
    batch = tokenizer(["The quick brown fox.", "BERT reads the words on both sides of every blank."],
                      padding=True, return_tensors="pt")  # fmt: skip
    assert batch["attention_mask"][0].min() == 0  # the first sentence is padded
    with torch.no_grad():
        theirs = hf_model(**batch)
        ours = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours.hidden_states[real], theirs.last_hidden_state[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.pooled_output, theirs.pooler_output, atol=1e-5, rtol=1e-4)


def test_mean_pool_averages_only_real_tokens() -> None:
    from mmcourse.bert import mean_pool

    hidden_states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # the last position is padding
    torch.testing.assert_close(mean_pool(hidden_states, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(hidden_states, torch.ones(1, 2))
