"""Adversarial training (对抗训练) on the token embeddings: the Fast Gradient Method (Miyato et al. 2017, chapter 6).

Words are discrete, so the attack moves the token-embedding matrix instead: by r = epsilon · g / ||g||, along the
gradient g of the loss. ``FGM`` does it by hand around a backward (attack, second backward, restore);
``adversarial_loss`` is the same recipe as one ``loss_fn`` for ``train``; ``embedding_attack_accuracy`` measures
how a classifier holds up under the attack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mmcourse.checks import check_finite_number
from mmcourse.finetune import classification_loss, classifier_logits
from mmcourse.train import to_device

TOKEN_EMBEDDING = "embeddings.token_embedding.weight"  # our BertModel's name for the token embedding matrix
HF_TOKEN_EMBEDDING = "embeddings.word_embeddings.weight"  # the same matrix in a transformers BertModel

LossFunction = Callable[[nn.Module, Mapping[str, Tensor]], Tensor | tuple[Tensor, Mapping[str, object]]]


def _check_epsilon(epsilon: float, zero_allowed: bool = False) -> None:
    """TypeError unless epsilon is a number; ValueError unless it is finite and > 0 (or 0, when allowed)."""
    check_finite_number("epsilon", epsilon)
    if epsilon < 0 or (epsilon == 0 and not zero_allowed):
        raise ValueError(f"epsilon must be a finite number {'>=' if zero_allowed else '>'} 0, got {epsilon!r}")


def _find_parameter(model: nn.Module, parameter_name: str) -> tuple[str, nn.Parameter]:
    """The parameter called ``parameter_name`` or ending in "." + it (e.g. inside a classifier's encoder).

    Our token-embedding name and transformers' stand in for each other, so the default finds either.
    """
    named = dict(model.named_parameters())
    candidates = [parameter_name]
    if parameter_name in (TOKEN_EMBEDDING, HF_TOKEN_EMBEDDING):
        candidates += [name for name in (TOKEN_EMBEDDING, HF_TOKEN_EMBEDDING) if name != parameter_name]
    for candidate in candidates:
        matches = [name for name in named if name == candidate or name.endswith("." + candidate)]
        if len(matches) > 1:
            raise ValueError(f"parameter_name={parameter_name!r} is ambiguous: it matches {matches}")
        if matches:
            return matches[0], named[matches[0]]
    embeddings = [name for name in named if "embed" in name]
    raise ValueError(f"parameter_name={parameter_name!r} is not a parameter of the model (embeddings: {embeddings})")


def _loss_only(output: Tensor | tuple[Tensor, Mapping[str, object]]) -> Tensor:
    """The scalar loss from a loss function's output: a tensor, or a (tensor, metrics) pair."""
    loss = output[0] if isinstance(output, tuple) else output
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss_of must return a scalar tensor (or a (scalar tensor, metrics dict) pair)")
    return loss


@contextmanager
def _requiring_grad(parameter: nn.Parameter) -> Iterator[None]:
    """Let autograd track ``parameter`` for a while, even if it is frozen; its requires_grad is restored after.

    A frozen parameter gets no .grad from a later backward: autograd skips leaves that no longer require grad.
    """
    required = parameter.requires_grad
    parameter.requires_grad_(True)
    try:
        yield
    finally:
        parameter.requires_grad_(required)


def fgm_perturbation(gradient: Tensor, epsilon: float) -> Tensor:
    """r = epsilon · g / ||g|| (the whole matrix's L2 norm); zeros when ||g|| is 0 or not finite. No device sync."""
    norm = gradient.norm()
    usable = torch.isfinite(norm) & (norm > 0)  # (): a tensor, not a Python bool
    return torch.where(usable, epsilon * gradient / norm, torch.zeros_like(gradient))  # same shape as the matrix


class FGM:
    """Fast Gradient Method (Miyato et al. 2017) on an embedding matrix: after a backward, ``attack()`` moves the
    matrix by r = epsilon · g / ||g|| along its gradient g, a second forward/backward adds the adversarial loss's
    gradient, and ``restore()`` puts the matrix back before the optimiser step."""

    def __init__(self, model: nn.Module, epsilon: float = 1.0, parameter_name: str = TOKEN_EMBEDDING) -> None:
        _check_epsilon(epsilon)
        self.epsilon = epsilon
        self.parameter_name, self.parameter = _find_parameter(model, parameter_name)
        self.original: Tensor | None = None

    @torch.no_grad()
    def attack(self) -> bool:
        """Add r to the matrix in place and remember the original; False (nothing done) when ||g|| is 0 or inf."""
        if self.original is not None:
            raise RuntimeError("attack() called twice: call restore() after each attack()")
        if self.parameter.grad is None:
            raise RuntimeError(f"{self.parameter_name} has no .grad: call loss.backward() before FGM.attack()")
        perturbation = fgm_perturbation(self.parameter.grad, self.epsilon)
        if not bool(perturbation.any()):
            return False
        self.original = self.parameter.detach().clone()
        self.parameter.add_(perturbation)
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original matrix back exactly (a no-op when there was no attack)."""
        if self.original is not None:
            self.parameter.copy_(self.original)
            self.original = None


def adversarial_loss(
    model: nn.Module,
    loss_of: LossFunction,
    batch: Mapping[str, Tensor],
    epsilon: float,
    parameter_name: str = TOKEN_EMBEDDING,
) -> Tensor | tuple[Tensor, dict[str, object]]:
    """clean loss + loss with the embedding matrix moved by FGM's r: a ``loss_fn`` for ``train`` whose single
    backward gives the sum of both gradients, as the two-backward FGM recipe does. Returns what ``loss_of`` does
    (a tensor, or the pair with "clean_loss" and "adversarial_loss" added to the metrics, as 0-dim tensors).

    The matrix is changed in place under no_grad and restored before returning: that is safe when the model uses it
    only through a lookup (nn.Embedding keeps the ids for backward, not the matrix); a model that also multiplies by
    it (a tied decoder) makes backward raise autograd's in-place error instead of giving a wrong gradient.
    """
    _check_epsilon(epsilon)
    _, embedding = _find_parameter(model, parameter_name)
    with _requiring_grad(embedding):  # a frozen embedding is fine: only r needs its gradient
        output = loss_of(model, batch)
        clean = _loss_only(output)
        (gradient,) = torch.autograd.grad(clean, embedding, retain_graph=True)  # .grad is left alone
    original = embedding.detach().clone()
    with torch.no_grad():
        embedding.add_(fgm_perturbation(gradient, epsilon))
    try:
        adversarial = _loss_only(loss_of(model, batch))  # the graph sees the perturbed values, r is a constant
    finally:
        with torch.no_grad():
            embedding.copy_(original)
    total = clean + adversarial
    if isinstance(output, tuple):
        return total, {**output[1], "clean_loss": clean.detach(), "adversarial_loss": adversarial.detach()}
    return total


def embedding_attack_accuracy(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    epsilon: float,
    loss_of: LossFunction = classification_loss,
    parameter_name: str = TOKEN_EMBEDDING,
) -> float:
    """Accuracy when each batch is attacked by FGM of size ``epsilon`` using its true labels (epsilon 0: clean).

    Per batch: gradient of ``loss_of`` w.r.t. the embedding matrix, perturb, predict, restore. The model runs in
    eval mode; parameters, their .grad and requires_grad, and the model's mode are left as they were.
    """
    _check_epsilon(epsilon, zero_allowed=True)
    _, embedding = _find_parameter(model, parameter_name)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in batches:
            batch = to_device(batch, embedding.device)
            perturbation = None
            if epsilon > 0:
                with torch.enable_grad(), _requiring_grad(embedding):
                    clean = _loss_only(loss_of(model, batch))
                    (gradient,) = torch.autograd.grad(clean, embedding)  # (vocab_size, d_model)
                perturbation = fgm_perturbation(gradient, epsilon)
            original = embedding.detach().clone()
            try:
                with torch.no_grad():
                    if perturbation is not None:
                        embedding.add_(perturbation)
                    predictions = classifier_logits(model, batch).argmax(dim=-1)  # (batch,)
            finally:
                with torch.no_grad():
                    embedding.copy_(original)
            correct += int((predictions == batch["labels"]).sum())
            total += len(predictions)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("batches yielded no examples")
    return correct / total
