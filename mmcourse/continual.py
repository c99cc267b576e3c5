"""Continual learning (chapter 8, 持续学习): learning tasks one after another without forgetting the earlier ones.

``accuracy_matrix[i, j]`` is the accuracy on task j after training stage i; ``forgetting`` reads from it how much
each task lost between its best and the end. Two mitigations: rehearsal keeps a ``ReplayBuffer`` of earlier
examples (reservoir sampling: every example seen has the same chance to be in it) and mixes them into later
batches; elastic weight consolidation (EWC, Kirkpatrick et al. 2017) adds the penalty
(λ/2) Σ_i F_i (θ_i - θ*_i)², with θ* the weights after the earlier task and F the diagonal of its Fisher information.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from mmcourse.checks import check_finite_number, check_int, check_positive_int

Item = TypeVar("Item")


class ReplayBuffer(Generic[Item]):
    """A fixed-size memory of past examples filled by reservoir sampling (Vitter's algorithm R)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        check_positive_int("capacity", capacity)
        self.capacity = capacity
        self.items: list[Item] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Item) -> None:
        """Offer one example: kept for sure while the buffer has room, then with probability capacity / seen."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        slot = self.rng.randrange(self.seen)  # uniform in [0, seen)
        if slot < self.capacity:
            self.items[slot] = item

    def extend(self, items: Iterable[Item]) -> None:
        """Offer every example of ``items`` in turn."""
        for item in items:
            self.add(item)

    def sample(self, n: int) -> list[Item]:
        """n stored examples drawn uniformly without replacement (all of them, shuffled, if fewer are stored)."""
        check_int("n", n, minimum=0)
        if not self.items:
            raise ValueError("the buffer is empty: add examples before sampling")
        return self.rng.sample(self.items, min(n, len(self.items)))


def fisher_diagonal(
    model: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor], batches: Iterable[Any]
) -> dict[str, Tensor]:
    """The diagonal of the (empirical) Fisher information, one tensor per trainable parameter: the mean over
    ``batches`` of the squared gradient of ``loss_fn(model, batch)`` (use batches of one example for the exact
    per-example Fisher; larger batches give a cheaper, smaller estimate)."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not parameters:
        raise ValueError("the model has no parameters with requires_grad=True")
    fisher = {name: torch.zeros_like(p) for name, p in parameters.items()}
    count = 0
    was_training = model.training
    model.eval()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for name, parameter in parameters.items():
            if parameter.grad is not None:
                fisher[name] += parameter.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("batches yielded nothing")
    return {name: value / count for name, value in fisher.items()}


class EWC:
    """Elastic weight consolidation: remember the weights θ* and Fisher F of a finished task; ``penalty(model)``
    is (λ/2) Σ F (θ - θ*)² over those parameters. Consolidating again adds the new task's term to the old ones."""

    def __init__(self, strength: float) -> None:
        check_finite_number("strength", strength)
        if strength < 0:
            raise ValueError(f"strength must be a number >= 0, got {strength!r}")
        self.strength = float(strength)
        self.terms: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []  # (anchors θ*, Fisher F) per task

    def consolidate(self, model: nn.Module, fisher: dict[str, Tensor]) -> None:
        """Store the model's current weights as anchors, with ``fisher`` (name → tensor of the parameter's shape)."""
        parameters = dict(model.named_parameters())
        for name, value in fisher.items():
            if name not in parameters or parameters[name].shape != value.shape:
                raise ValueError(f"fisher[{name!r}] does not match a parameter of the model")
        anchors = {name: parameters[name].detach().clone() for name in fisher}
        self.terms.append((anchors, {name: value.detach().clone() for name, value in fisher.items()}))

    def penalty(self, model: nn.Module) -> Tensor:
        """(λ/2) Σ_tasks Σ_i F_i (θ_i - θ*_i)², a scalar; zero before any task is consolidated."""
        parameters = dict(model.named_parameters())
        device = next(model.parameters()).device
        total = torch.zeros((), device=device)
        for anchors, fisher in self.terms:
            for name, anchor in anchors.items():
                total = total + (fisher[name] * (parameters[name] - anchor) ** 2).sum()
        return 0.5 * self.strength * total


def check_accuracy_matrix(matrix: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """The matrix as a float tensor (stages, tasks), stages = tasks; ValueError otherwise."""
    matrix = torch.as_tensor(matrix, dtype=torch.float32)
    if matrix.dim() != 2 or matrix.size(0) != matrix.size(1):
        raise ValueError(f"accuracy matrix must be square (stages, tasks), got shape {tuple(matrix.shape)}")
    return matrix


def average_accuracy(matrix: Tensor | Sequence[Sequence[float]]) -> float:
    """Mean accuracy over all tasks after the last stage (the last row)."""
    return check_accuracy_matrix(matrix)[-1].mean().item()


def forgetting(matrix: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """Per task but the last, (tasks - 1,): its best accuracy at any stage before the last, minus its final
    accuracy (Chaudhry et al. 2018). Positive = forgotten."""
    matrix = check_accuracy_matrix(matrix)
    if matrix.size(0) < 2:
        raise ValueError("forgetting needs at least two stages")
    tasks = matrix.size(1) - 1
    best = torch.stack([matrix[task:-1, task].max() for task in range(tasks)])  # (tasks - 1,) from its own stage
    return best - matrix[-1, :tasks]  # (tasks - 1,)
