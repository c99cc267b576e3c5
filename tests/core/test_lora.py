"""Chapter 6's LoRA: the layer, applying and merging it (tied weights included), and parity with peft."""

import math

import pytest
import torch
from conftest import CLASSIFIER_BERT as TINY
from conftest import classifier, labelled_batch
from torch import nn

from mmcourse.adversarial import FGM
from mmcourse.bert import BertModel
from mmcourse.finetune import SequenceClassifier
from mmcourse.gpt import GPT, GPTConfig
from mmcourse.lora import LoRALinear, apply_lora, merge_lora, peft_lora, unmerge_lora
from mmcourse.train import parameter_count

# ---------------------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------------------


def test_lora_starts_as_its_base_layer_and_freezes_it() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 6)
    layer = LoRALinear(base, rank=4, alpha=8.0)
    x = torch.randn(3, 5, 12)
    assert torch.equal(layer(x), base(x)), "B = 0: the wrapped layer is exactly its base"
    assert layer.lora_A.shape == (4, 12) and layer.lora_B.shape == (6, 4) and layer.scaling == 2.0
    assert layer.lora_A.abs().sum() > 0 and layer.lora_A.abs().max() <= 1 / math.sqrt(12)  # Kaiming-uniform bound
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert [name for name, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


def test_lora_forward_is_base_plus_scaled_low_rank_update() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 6), rank=3, alpha=6.0)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 12)
    expected = x @ layer.base.weight.T + layer.base.bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


def test_merge_gives_the_same_output_and_unmerge_restores_the_weight() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 6), rank=4, alpha=16.0)
    nn.init.normal_(layer.lora_B)
    original = layer.base.weight.detach().clone()
    x = torch.randn(5, 12)
    unmerged = layer(x)
    layer.merge()
    layer.merge()  # a second merge is a no-op
    assert layer.merged and not torch.allclose(layer.base.weight, original)
    torch.testing.assert_close(layer(x), unmerged)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, original)
    torch.testing.assert_close(layer(x), unmerged)


def test_apply_lora_wraps_the_targets_and_merges_the_whole_model() -> None:
    model = classifier().eval()
    batch = labelled_batch()
    names = apply_lora(model, rank=4)
    assert names == [f"encoder.layers.{i}.self_attention.{p}_proj" for i in range(2) for p in "qv"]
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in names)
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            nn.init.normal_(module.lora_B, std=0.1)
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"])
        assert merge_lora(model) == 4
        merged = model(batch["input_ids"], batch["attention_mask"])
        unmerge_lora(model)
        after = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(model, ("q_proj",))  # already wrapped: no nn.Linear of that name is left
    with pytest.raises(ValueError, match="apply_lora"):
        merge_lora(BertModel(TINY))


def tiny_gpt_with_lora(tie_embeddings: bool) -> GPT:
    """A tiny GPT with LoRA on its LM head and its query projections, B drawn so that the adapters matter."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(40, context_length=16, d_model=32, n_heads=4, n_layers=2, tie_embeddings=tie_embeddings))
    apply_lora(model.eval(), ("lm_head", "q_proj"), rank=4)
    for name, parameter in model.named_parameters():
        if name.endswith("lora_B"):
            nn.init.normal_(parameter, std=0.1)
    return model


def test_merge_refuses_a_lora_head_tied_to_the_embedding_and_changes_nothing() -> None:
    """Merging into the tied head used to add B A to the token embedding too: the logits moved by ~17."""
    model = tiny_gpt_with_lora(tie_embeddings=True)
    assert model.lm_head.tied_to == ("token_embedding.weight",) and model.blocks[0].attention.q_proj.tied_to == ()
    input_ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        before = model(input_ids)
        with pytest.raises(ValueError, match=r"tied weights.*lm_head.*token_embedding\.weight"):
            merge_lora(model)
        with pytest.raises(ValueError, match=r"token_embedding\.weight.*tied weights"):
            model.lm_head.merge()
        assert torch.equal(model(input_ids), before)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert not any(module.merged for module in model.modules() if isinstance(module, LoRALinear))  # none half-done


def test_merge_of_an_untied_gpt_gives_the_same_logits() -> None:
    model = tiny_gpt_with_lora(tie_embeddings=False)
    embedding = model.token_embedding.weight.detach().clone()
    input_ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids)
        assert merge_lora(model) == 3
        torch.testing.assert_close(model(input_ids), before, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.token_embedding.weight, embedding)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"rank": 0}, "rank"), ({"rank": 2.0}, "rank"), ({"alpha": 0.0}, "alpha"), ({"dropout": 1.0}, "dropout")],
)
def test_lora_rejects_bad_arguments(arguments: dict, field: str) -> None:
    error = TypeError if isinstance(arguments.get("rank"), float) else ValueError
    with pytest.raises(error, match=field):
        LoRALinear(nn.Linear(4, 4), **arguments)
    with pytest.raises(error, match=field):
        apply_lora(BertModel(TINY), **arguments)


def test_lora_rejects_what_is_not_a_linear_layer() -> None:
    with pytest.raises(TypeError, match="base"):
        LoRALinear(nn.Conv1d(4, 4, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_names"):
        apply_lora(BertModel(TINY), ("query",))


# ---------------------------------------------------------------------------------------------------------------
# Parity with Hugging Face peft
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_our_lora_equals_peft_lora() -> None:
    import transformers

    from mmcourse.convert.bert import from_hf_bert

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=48, max_position_embeddings=20)  # fmt: skip
    hf_model = transformers.BertModel(hf_config).eval()
    model = from_hf_bert(hf_model).eval()  # before peft changes hf_model in place
    names = apply_lora(model, rank=4, alpha=8.0)
    peft_model = peft_lora(hf_model, rank=4, alpha=8.0)

    ours = {name: p for name, p in model.named_parameters() if "lora_" in name}
    theirs = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    assert sum(p.numel() for p in ours.values()) == sum(p.numel() for p in theirs.values()) == 2 * 2 * (4 * 32 * 2)
    assert parameter_count(peft_model, trainable_only=True) == sum(p.numel() for p in theirs.values()), "peft freezes"
    # peft: base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight, an nn.Linear per matrix;
    # ours: layers.0.self_attention.q_proj.lora_A, a bare Parameter of the same (rank, in_features) shape
    ours_to_theirs = {"q_proj": "query", "v_proj": "value"}
    with torch.no_grad():
        for name in names:
            index, projection = name.split(".")[1], name.rsplit(".", 1)[-1]
            prefix = f"base_model.model.encoder.layer.{index}.attention.self.{ours_to_theirs[projection]}"
            nn.init.normal_(theirs[f"{prefix}.lora_B.default.weight"])  # non-zero, so the adapters matter
            ours[f"{name}.lora_A"].copy_(theirs[f"{prefix}.lora_A.default.weight"])
            ours[f"{name}.lora_B"].copy_(theirs[f"{prefix}.lora_B.default.weight"])

    input_ids = torch.randint(1, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 8:] = 0
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = model(input_ids, attention_mask=attention_mask).hidden_states
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain[real], expected[real], atol=1e-3), "the adapters change the output"

    hf_classifier = SequenceClassifier(peft_model, 32).eval()  # a transformers encoder under our head
    assert hf_classifier(input_ids, attention_mask).shape == (3, 2)
    assert FGM(hf_classifier).parameter_name.endswith("embeddings.word_embeddings.weight")
