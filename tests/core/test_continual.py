from collections import Counter

import pytest
import torch
from torch import nn

from mmcourse.continual import EWC, ReplayBuffer, average_accuracy, fisher_diagonal, forgetting


def test_replay_buffer_keeps_everything_until_full() -> None:
    buffer = ReplayBuffer(5, seed=0)
    buffer.extend(range(3))
    assert sorted(buffer.items) == [0, 1, 2] and len(buffer) == 3
    assert sorted(buffer.sample(10)) == [0, 1, 2]  # fewer stored than asked: all of them
    buffer.extend(range(3, 100))
    assert len(buffer) == 5 and buffer.seen == 100 and len(set(buffer.sample(5))) == 5


def test_replay_buffer_is_a_uniform_sample_of_the_stream() -> None:
    counts = Counter()
    for seed in range(2000):
        buffer = ReplayBuffer(10, seed=seed)
        buffer.extend(range(50))
        counts.update(buffer.items)
    shares = torch.tensor([counts[item] / 2000 for item in range(50)])  # each item kept with chance 10/50
    assert (shares - 0.2).abs().max() < 0.05
    assert abs(shares[:25].mean().item() - shares[25:].mean().item()) < 0.02  # early and late items alike


def test_replay_buffer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3).sample(1)
    buffer = ReplayBuffer(3)
    buffer.add("x")
    with pytest.raises(ValueError, match="n must"):
        buffer.sample(-1)
    with pytest.raises(TypeError, match="n must"):
        buffer.sample(1.5)


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    features, labels = batch
    return nn.functional.cross_entropy(model(features), labels)


def data(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, generator=generator), torch.randint(0, 2, (4,), generator=generator)) for _ in range(5)]


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ewc = EWC(strength=10.0)
    assert ewc.penalty(model).item() == 0.0  # nothing consolidated yet
    fisher = fisher_diagonal(model, loss_fn, data(0))
    assert set(fisher) == {"weight", "bias"} and all((value >= 0).all() for value in fisher.values())
    ewc.consolidate(model, fisher)
    assert ewc.penalty(model).item() == 0.0
    with torch.no_grad():
        model.weight += 0.1
    expected = 0.5 * 10.0 * (fisher["weight"] * 0.1**2).sum()
    torch.testing.assert_close(ewc.penalty(model), expected)
    ewc.penalty(model).backward()
    torch.testing.assert_close(model.weight.grad, 10.0 * fisher["weight"] * 0.1)  # λ F (θ - θ*)


def test_fisher_is_the_mean_squared_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = data(1)
    expected = torch.zeros_like(model.weight)
    for batch in batches:
        model.zero_grad()
        loss_fn(model, batch).backward()
        expected += model.weight.grad**2
    torch.testing.assert_close(fisher_diagonal(model, loss_fn, batches)["weight"], expected / len(batches))
    with pytest.raises(ValueError, match="nothing"):
        fisher_diagonal(model, loss_fn, [])


def test_ewc_keeps_weights_near_the_anchor_during_training() -> None:
    def train(strength: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ewc = EWC(strength)
        ewc.consolidate(model, {"weight": torch.ones(2, 3), "bias": torch.ones(2)})
        anchor = model.weight.detach().clone()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for batch in data(2) * 10:
            loss = loss_fn(model, batch) + ewc.penalty(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (model.weight - anchor).norm().item()

    assert train(5.0) < 0.5 * train(0.0)
    with pytest.raises(ValueError, match="strength"):
        EWC(-1.0)
    with pytest.raises(TypeError, match="strength"):
        EWC("strong")
    with pytest.raises(ValueError, match="does not match"):
        EWC(1.0).consolidate(nn.Linear(3, 2), {"weight": torch.ones(3, 3)})


def test_accuracy_matrix_summaries() -> None:
    matrix = [[0.9, 0.5, 0.5], [0.7, 0.8, 0.5], [0.6, 0.85, 0.9]]
    torch.testing.assert_close(forgetting(matrix), torch.tensor([0.3, -0.05]))  # task 2 improved: negative
    assert average_accuracy(matrix) == pytest.approx((0.6 + 0.85 + 0.9) / 3)
    with pytest.raises(ValueError, match="square"):
        forgetting([[0.5, 0.5]])
