"""Chapter 6's adversarial training: FGM on the token embeddings, the one-backward loss, the attack's accuracy."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import classifier, labelled_batch
from torch import nn

from mmcourse.adversarial import FGM, adversarial_loss, embedding_attack_accuracy, fgm_perturbation
from mmcourse.finetune import classification_loss, mark_trainable
from mmcourse.train import TrainConfig, train


@pytest.fixture(scope="module", autouse=True)
def optimiser_ready() -> None:
    """Build one optimiser up front: torch's first one takes about a second (a lazy import), so no test pays it."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def loss_only(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return classification_loss(model, batch)[0]


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
    assert loss.item() == pytest.approx(float(metrics["clean_loss"] + metrics["adversarial_loss"]), rel=1e-5)
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


def test_fgm_perturbation_of_a_zero_or_infinite_gradient_is_zero() -> None:
    """No NaN and no device sync: r is 0 when ||g|| is 0 or not finite, and FGM.attack then does nothing."""
    gradient = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fgm_perturbation(gradient, 0.5), 0.5 * gradient / gradient.norm())
    assert torch.equal(fgm_perturbation(torch.zeros(3, 2), 0.5), torch.zeros(3, 2))
    assert torch.equal(fgm_perturbation(torch.full((3, 2), math.inf), 0.5), torch.zeros(3, 2))
    model = classifier()
    fgm = FGM(model)
    fgm.parameter.grad = torch.zeros_like(fgm.parameter)
    original = fgm.parameter.detach().clone()
    assert not fgm.attack() and torch.equal(fgm.parameter, original)
    with pytest.raises(TypeError, match="epsilon"):
        FGM(model, epsilon="1")
