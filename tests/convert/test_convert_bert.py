"""Golden parity with transformers' BERT: the same weights in our BertModel / BertForPreTraining and in
transformers' give the same hidden states and logits (mmcourse.convert.bert)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PAIRS_BERT as TINY
from conftest import pair_batch

from mmcourse.bert import BertConfig, BertForPreTraining, BertModel
from mmcourse.convert.bert import from_hf_bert, load_hf_bert, to_hf_bert, to_hf_bert_for_pretraining


def perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its initial value (LayerNorm ones, zero biases) so a mix-up would show."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def assert_same_pretraining_logits(model: BertForPreTraining, hf_model: torch.nn.Module) -> None:
    """Our MLM logits (at real tokens) and NSP logits equal transformers' on the pair batch."""
    input_ids, token_type_ids, attention_mask = pair_batch()
    with torch.no_grad():
        ours = model(input_ids, token_type_ids, attention_mask)
        theirs = hf_model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(ours.mlm_logits[real], theirs.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_to_hf_bert_gives_the_same_logits_and_hidden_states() -> None:
    model = BertForPreTraining(TINY)
    perturb(model)
    model.eval()
    hf_model = to_hf_bert_for_pretraining(model)
    assert not hf_model.training
    input_ids, token_type_ids, attention_mask = pair_batch()
    assert_same_pretraining_logits(model, hf_model)
    real = attention_mask.bool()
    encoder = to_hf_bert(model.bert).eval()
    with torch.no_grad():
        theirs = encoder(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        ours = model.bert(input_ids, token_type_ids, attention_mask)
        their_weights = encoder(input_ids=input_ids, token_type_ids=token_type_ids, output_attentions=True).attentions
    torch.testing.assert_close(ours.hidden_states[real], theirs.last_hidden_state[real])
    torch.testing.assert_close(ours.pooled_output, theirs.pooler_output)
    torch.testing.assert_close(model.bert.attention_weights(input_ids, token_type_ids), torch.stack(their_weights))


@pytest.mark.slow
def test_from_hf_bert_gives_the_same_logits(tmp_path: Path) -> None:
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
    assert_same_pretraining_logits(model, hf_model)
    encoder = from_hf_bert(hf_model.bert)
    assert isinstance(encoder, BertModel)
    with torch.no_grad():
        expected = model(input_ids, token_type_ids, attention_mask).hidden_states  # the pretraining model's encoder
        torch.testing.assert_close(encoder(input_ids, token_type_ids, attention_mask).hidden_states, expected)


@pytest.mark.slow
def test_load_hf_bert_rejects_what_does_not_fit() -> None:
    hf_model = to_hf_bert_for_pretraining(BertForPreTraining(TINY))
    wider = BertForPreTraining(BertConfig(**{**TINY.__dict__, "d_ff": 80}))
    with pytest.raises(ValueError, match=r"layers\.0\.feed_forward\.linear1\.weight.*\(80, 32\).*\(64, 32\)"):
        load_hf_bert(wider, hf_model)
    with pytest.raises(TypeError, match="cannot load a BertModel into a BertForPreTraining"):
        load_hf_bert(BertForPreTraining(TINY), hf_model.bert)
    with pytest.raises(TypeError, match="BertModel or BertForPreTraining"):
        from_hf_bert(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BertForPreTraining"):
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
