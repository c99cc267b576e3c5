"""Chapter 6's classification fine-tuning: the classifier, what is trained, evaluation, checkpoints, learning."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIFIER_BERT as TINY
from conftest import classifier, labelled_batch
from torch import nn

from mmcourse.bert import BertConfig, BertForPreTraining, BertModel
from mmcourse.finetune import (
    BestCheckpoint,
    SequenceClassifier,
    classification_loss,
    classification_metrics,
    load_checkpoint,
    load_lora,
    mark_trainable,
    predict,
    save_checkpoint,
    save_lora,
)
from mmcourse.lora import apply_lora, lora_state_dict
from mmcourse.train import TrainConfig, parameter_count, train


@pytest.fixture(scope="module", autouse=True)
def optimiser_ready() -> None:
    """Build one optimiser up front: torch's first one takes about a second (a lazy import), so no test pays it."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


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
    with pytest.raises(TypeError, match="encoder"):
        SequenceClassifier(BertConfig, TINY.d_model)  # the config class, not a model
    with pytest.raises(TypeError, match="dropout"):
        SequenceClassifier(encoder, TINY.d_model, dropout="0.1")


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
    assert (trainable, total) == (lora_count + 32 * 2 + 2, parameter_count(model))

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
    with pytest.raises(TypeError, match="module_or_state_dict"):
        save_checkpoint([1, 2], tmp_path / "list.safetensors")


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
    with pytest.raises(ValueError, match="nothing to predict"):
        predict(model, [])


def test_predict_passes_a_batch_to_the_model_by_keyword() -> None:
    """Any classifier whose inputs are named as the batch's keys: here one that reads "images"."""

    class ImageClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.linear(images)

    torch.manual_seed(0)
    model = ImageClassifier()
    images, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    logits, returned = predict(
        model, [{"images": images[:3], "labels": labels[:3]}, {"images": images[3:], "labels": labels[3:]}]
    )
    torch.testing.assert_close(logits, model(images).detach())
    assert torch.equal(returned, labels)
    loss, metrics = classification_loss(model, {"images": images, "labels": labels})
    assert loss.dim() == 0 and isinstance(metrics["accuracy"], torch.Tensor) and metrics["accuracy"].dim() == 0


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
