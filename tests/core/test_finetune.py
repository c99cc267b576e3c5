import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.bert import BertConfig, BertForPreTraining, BertModel
from mmcourse.finetune import (
    FGM,
    BestCheckpoint,
    LoRALinear,
    SequenceClassifier,
    adversarial_loss,
    apply_lora,
    classification_loss,
    classification_metrics,
    count_parameters,
    distillation_loss,
    embedding_attack_accuracy,
    load_checkpoint,
    load_lora,
    lora_state_dict,
    mark_trainable,
    merge_lora,
    peft_lora,
    predict,
    save_checkpoint,
    save_lora,
    unmerge_lora,
)
from mmcourse.gpt import GPT, GPTConfig
from mmcourse.train import TrainConfig, train

TINY = BertConfig(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)


@pytest.fixture(scope="module", autouse=True)
def optimiser_ready() -> None:
    """Build one optimiser up front: torch's first one takes about a second (a lazy import), so no test pays it."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def classifier(seed: int = 0, dropout: float = 0.0, pooling: str = "mean") -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(BertModel(TINY), TINY.d_model, n_classes=2, dropout=dropout, pooling=pooling)


def labelled_batch(size: int = 8, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random sequences with some padding at the end and random labels, as a collated batch."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY.vocab_size, (size, length), generator=generator)  # (batch, L)
    lengths = torch.randint(length // 2, length + 1, (size,), generator=generator)  # (batch,)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (batch, L)
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, TINY.pad_id),
        "attention_mask": attention_mask,
        "labels": torch.arange(size) % 2,  # (batch,) balanced
    }


def loss_only(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return classification_loss(model, batch)[0]


# ---------------------------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_pools_the_encoder(pooling: str) -> None:
    model = classifier(pooling=pooling).eval()
    batch = labelled_batch()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
        hidden_states = model.encoder(batch["input_ids"], attention_mask=batch["attention_mask"]).hidden_states
    mask = batch["attention_mask"][..., None].float()  # (batch, L, 1)
    pooled = (hidden_states * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden_states[:, 0]
    assert logits.shape == (8, 2)
    torch.testing.assert_close(logits, model.head(pooled))


def test_classifier_validates_its_arguments() -> None:
    encoder = BertModel(TINY)
    for arguments, field in [
        ({"pooling": "max"}, "pooling"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_classes": 1}, "n_classes"),
        ({"hidden_size": 0}, "hidden_size"),
    ]:
        with pytest.raises(ValueError, match=field):
            SequenceClassifier(encoder, **{"hidden_size": TINY.d_model, **arguments})
    with pytest.raises(ValueError, match="hidden_size=16"):
        SequenceClassifier(encoder, 16)(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3))


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
    with pytest.raises(ValueError, match="base"):
        LoRALinear(nn.Conv1d(4, 4, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_names"):
        apply_lora(BertModel(TINY), ("query",))


# ---------------------------------------------------------------------------------------------------------------
# What is trained
# ---------------------------------------------------------------------------------------------------------------


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def test_mark_trainable_picks_lora_bitfit_all_none_and_the_head() -> None:
    model = classifier()
    apply_lora(model, rank=2)
    trainable, total = mark_trainable(model, "lora")
    names = trainable_names(model)
    assert names and all(name.rsplit(".", 1)[-1] in ("lora_A", "lora_B") or name.startswith("head.") for name in names)
    assert {"head.weight", "head.bias"} <= set(names)
    lora_count = 2 * 2 * (2 * 32 + 32 * 2)  # 2 layers × (q, v) × (A + B)
    assert (trainable, total) == (lora_count + 32 * 2 + 2, count_parameters(model)[1])

    mark_trainable(model, "bitfit", also=())
    assert all(name.endswith("bias") for name in trainable_names(model))
    assert "encoder.layers.0.norm1.bias" in trainable_names(model)  # every bias, LayerNorm's too
    assert mark_trainable(model, "none", also=()) == (0, total)
    assert trainable_names(model) == []
    assert mark_trainable(model, "none") == (66, total)  # a linear probe: the head only
    assert mark_trainable(model, "all") == (total, total)


def test_mark_trainable_rejects_an_unknown_kind_and_lora_without_adapters() -> None:
    with pytest.raises(ValueError, match="kind"):
        mark_trainable(classifier(), "prefix")
    with pytest.raises(ValueError, match="apply_lora"):
        mark_trainable(classifier(), "lora")


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_with_tied_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BertForPreTraining(TINY)  # the MLM decoder shares the token embedding matrix
    size = save_checkpoint(model, tmp_path / "model.safetensors")
    assert size == (tmp_path / "model.safetensors").stat().st_size > 0
    torch.manual_seed(1)
    copy = load_checkpoint(BertForPreTraining(TINY), tmp_path / "model.safetensors")
    for (name, ours), theirs in zip(model.state_dict().items(), copy.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name
    assert copy.mlm_head.decoder.weight is copy.bert.embeddings.token_embedding.weight, "still tied"
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(BertModel(TINY), tmp_path / "model.safetensors")


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"", b"\x08" + bytes(7) + b'{"a": 1}'])
def test_loading_a_file_that_is_not_safetensors_names_the_path(tmp_path: Path, content: bytes) -> None:
    """safetensors' own error (e.g. 'header too large') used to come without the file's name."""
    from safetensors import SafetensorError

    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    model = classifier()
    apply_lora(model, rank=2)
    for load in (load_checkpoint, load_lora):
        with pytest.raises(ValueError, match=f"{path}.* is not a valid safetensors checkpoint") as raised:
            load(model, path)
        assert isinstance(raised.value.__cause__, SafetensorError)
    random_bytes = torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path.write_bytes(bytes(random_bytes.tolist()))
    with pytest.raises(ValueError, match="not a valid safetensors checkpoint"):
        load_checkpoint(model, path)


def test_lora_adapter_round_trip_is_small(tmp_path: Path) -> None:
    model = classifier(seed=0)
    apply_lora(model, rank=2)
    for name, parameter in model.named_parameters():
        if name.endswith("lora_B"):
            nn.init.normal_(parameter)
    adapter_size = save_lora(model, tmp_path / "adapter.safetensors")
    full_size = save_checkpoint(model, tmp_path / "full.safetensors")
    assert adapter_size * 10 < full_size
    other = classifier(seed=0)  # same base weights, fresh adapter
    apply_lora(other, rank=2)
    load_lora(other, tmp_path / "adapter.safetensors")
    for name, tensor in lora_state_dict(model).items():
        assert torch.equal(tensor, lora_state_dict(other)[name]), name
    batch = labelled_batch()
    torch.testing.assert_close(
        other.eval()(batch["input_ids"], batch["attention_mask"]),
        model.eval()(batch["input_ids"], batch["attention_mask"]),
    )
    wider = classifier(seed=0)
    apply_lora(wider, rank=4)
    with pytest.raises(ValueError, match=r"shape mismatch.*lora_A.*\(2, 32\).*\(4, 32\)"):
        load_lora(wider, tmp_path / "adapter.safetensors")
    fewer = classifier(seed=0)
    apply_lora(fewer, ("q_proj",), rank=2)
    with pytest.raises(ValueError, match="unexpected.*v_proj"):
        load_lora(fewer, tmp_path / "adapter.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Adversarial training
# ---------------------------------------------------------------------------------------------------------------


def test_fgm_perturbation_has_norm_epsilon_and_is_removed() -> None:
    model = classifier()
    batch = labelled_batch()
    fgm = FGM(model, epsilon=0.5)
    assert fgm.parameter_name == "encoder.embeddings.token_embedding.weight"
    with pytest.raises(RuntimeError, match="backward"):
        fgm.attack()
    original = fgm.parameter.detach().clone()
    loss_only(model, batch).backward()
    assert fgm.attack()
    perturbation = fgm.parameter.detach() - original
    assert perturbation.norm().item() == pytest.approx(0.5, rel=1e-4)
    direction = F.cosine_similarity(perturbation.flatten(), fgm.parameter.grad.flatten(), dim=0)
    assert direction.item() == pytest.approx(1.0, abs=1e-4)
    fgm.restore()
    assert torch.equal(fgm.parameter, original), "restored exactly"


def test_adversarial_loss_gradient_equals_the_two_backward_recipe() -> None:
    batch = labelled_batch()
    recipe, ours = classifier(seed=0), classifier(seed=0)  # dropout 0: both forwards are deterministic
    fgm = FGM(recipe, epsilon=1.0)
    loss_only(recipe, batch).backward()
    fgm.attack()
    loss_only(recipe, batch).backward()  # adds the adversarial loss's gradient
    fgm.restore()

    original = ours.encoder.embeddings.token_embedding.weight.detach().clone()
    adversarial_loss(ours, loss_only, batch, epsilon=1.0).backward()
    assert torch.equal(ours.encoder.embeddings.token_embedding.weight, original), "restored exactly"
    for (name, theirs), mine in zip(recipe.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_adversarial_loss_is_a_loss_fn_for_train_and_keeps_metrics() -> None:
    model = classifier()
    batch = labelled_batch()
    loss, metrics = adversarial_loss(model, classification_loss, batch, epsilon=1.0)
    assert loss.item() == pytest.approx(metrics["clean_loss"] + metrics["adversarial_loss"], rel=1e-5)
    assert metrics["adversarial_loss"] > metrics["clean_loss"], "the attack raises the loss"
    assert "accuracy" in metrics
    mark_trainable(model, "none")  # a frozen embedding: r still needs its gradient, and it gets no .grad
    config = TrainConfig(steps=2, learning_rate=1e-2, progress=False)
    history = train(model, lambda m, b: adversarial_loss(m, classification_loss, b, 1.0), [batch], config)
    assert len(history.losses) == 2 and "adversarial_loss" in history.metrics
    assert model.encoder.embeddings.token_embedding.weight.grad is None
    assert not model.encoder.embeddings.token_embedding.weight.requires_grad


def test_fgm_validates_epsilon_and_the_parameter_name() -> None:
    model = classifier()
    with pytest.raises(ValueError, match="epsilon"):
        FGM(model, epsilon=0.0)
    with pytest.raises(ValueError, match="parameter_name"):
        FGM(model, parameter_name="embeddings.word_vectors.weight")
    with pytest.raises(ValueError, match="epsilon"):
        adversarial_loss(model, loss_only, labelled_batch(), epsilon=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        embedding_attack_accuracy(model, [labelled_batch()], epsilon=math.nan)


def test_embedding_attack_lowers_accuracy_and_leaves_the_model_alone() -> None:
    model = classifier()
    batch = labelled_batch()
    config = TrainConfig(steps=30, learning_rate=3e-3, progress=False)
    train(model, classification_loss, [batch], config)  # fit the batch
    model.train()
    loss_only(model, batch).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    clean = embedding_attack_accuracy(model, [batch], epsilon=0.0)
    attacked = embedding_attack_accuracy(model, [batch], epsilon=50.0)
    assert clean == 1.0 and attacked < clean
    assert model.training, "the mode is restored"
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, weights[name]), name
        if name in grads:
            assert torch.equal(parameter.grad, grads[name]), name
        else:
            assert parameter.grad is None, name  # the pooler: mean pooling does not use it


# ---------------------------------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------------------------------


def test_distillation_loss_equals_the_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 3, generator=generator)  # (batch, classes) each
    labels = torch.tensor([0, 2, 1, 2])
    temperature, alpha = 3.0, 0.3
    soft = 0.0
    for row in range(4):
        p_teacher = torch.softmax(teacher[row] / temperature, dim=0)
        p_student = torch.softmax(student[row] / temperature, dim=0)
        soft += float((p_teacher * (p_teacher / p_student).log()).sum())
    hard = float(F.cross_entropy(student, labels))
    expected = alpha * hard + (1 - alpha) * temperature**2 * soft / 4
    loss = distillation_loss(student, teacher, labels, temperature, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(student, teacher, labels, 5.0, 1.0).item() == pytest.approx(hard, rel=1e-6)
    assert distillation_loss(teacher, teacher, None, 2.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_the_soft_gradient_size_independent_of_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 16, 5, generator=generator) * 0.5  # logits small next to T = 2 and 8

    def gradient_norm(temperature: float, scaled: bool) -> float:
        logits = student.clone().requires_grad_(True)
        loss = distillation_loss(logits, teacher, None, temperature, alpha=0.0)  # = T² KL
        (loss if scaled else loss / temperature**2).backward()
        return logits.grad.norm().item()

    scaled_ratio = gradient_norm(2.0, True) / gradient_norm(8.0, True)
    unscaled_ratio = gradient_norm(2.0, False) / gradient_norm(8.0, False)
    assert scaled_ratio == pytest.approx(1.0, abs=0.1)
    assert unscaled_ratio == pytest.approx(16.0, rel=0.1)  # (8/2)² without the T² factor


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"teacher_logits": torch.zeros(4, 2)}, "teacher_logits"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, "labels"),
        ({"labels": None}, "labels"),
    ],
)
def test_distillation_loss_rejects_bad_input(arguments: dict, field: str) -> None:
    base = {"student_logits": torch.zeros(4, 3), "teacher_logits": torch.zeros(4, 3), "labels": torch.zeros(4).long()}
    with pytest.raises(ValueError, match=field):
        distillation_loss(**{**base, **arguments})


# ---------------------------------------------------------------------------------------------------------------
# Evaluation, early stopping, learning
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # importing scikit-learn takes 1-2 s
def test_classification_metrics_accuracy_and_macro_f1() -> None:
    predictions = torch.tensor([0, 0, 0, 1])
    labels = torch.tensor([0, 0, 1, 1])
    metrics = classification_metrics(predictions, labels)
    f1_class_0, f1_class_1 = 2 * 2 / (2 * 2 + 1), 2 * 1 / (2 * 1 + 1)  # 2TP / (2TP + FP + FN)
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((f1_class_0 + f1_class_1) / 2)
    logits = F.one_hot(predictions, 2).float()  # (N, classes): the argmax is the prediction
    assert classification_metrics(logits, labels) == metrics
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(predictions, labels[:3])


def test_predict_collects_logits_and_labels_in_eval_mode() -> None:
    model = classifier(dropout=0.5)
    batches = [labelled_batch(seed=0), labelled_batch(size=3, seed=1)]
    logits, labels = predict(model, batches)
    assert logits.shape == (11, 2) and torch.equal(labels, torch.cat([b["labels"] for b in batches]))
    assert model.training, "the mode is restored"
    again, _ = predict(model, batches)
    assert torch.equal(logits, again), "eval mode: no dropout"


def test_best_checkpoint_keeps_and_restores_the_best() -> None:
    model = nn.Linear(3, 2)
    best = BestCheckpoint()
    with pytest.raises(ValueError, match="update"):
        best.restore(model)
    assert best.update(model, 0.5, step=10)
    kept = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not best.update(model, 0.4, step=20) and not best.update(model, math.nan, step=30)
    assert (best.best_score, best.best_step) == (0.5, 10)
    best.restore(model)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in kept.items())
    assert best.update(model, 0.6, step=40) and best.best_step == 40


@pytest.mark.parametrize("kind", ["all", "lora"])
def test_classifier_overfits_one_batch(kind: str) -> None:
    model = classifier(seed=0)
    if kind == "lora":
        apply_lora(model, rank=4)
    mark_trainable(model, kind)
    batch = labelled_batch()
    config = TrainConfig(steps=60, learning_rate=1e-2 if kind == "lora" else 3e-3, progress=False)
    history = train(model, classification_loss, [batch], config)
    assert history.losses[-1] < 0.1 * history.losses[0], (history.losses[0], history.losses[-1])
    assert history.metrics["accuracy"][-1] == 1.0


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
    assert count_parameters(peft_model)[0] == sum(p.numel() for p in theirs.values()), "peft freezes the rest"
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
