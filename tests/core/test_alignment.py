import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.alignment import (
    dpo_loss,
    masked_next_token_loss,
    preferred_rate,
    response_log_probs,
    sft_batch,
    sft_example,
)
from mmcourse.gpt import GPT, GPTConfig
from mmcourse.train import IGNORE_INDEX


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, context_length=32, d_model=16, n_heads=2, n_layers=2))


def test_sft_example_masks_every_prompt_token() -> None:
    input_ids, targets = sft_example([1, 2, 3], [7, 8, 9])
    assert input_ids == [1, 2, 3, 7, 8]
    assert targets == [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]  # the prompt's last token predicts the first answer
    with pytest.raises(ValueError, match="non-empty"):
        sft_example([], [1])


def test_sft_batch_pads_and_masks() -> None:
    input_ids, targets = sft_batch([([1, 2], [5, 6, 7]), ([1, 2, 3, 4], [9])], pad_id=0)
    assert input_ids.tolist() == [[1, 2, 5, 6], [1, 2, 3, 4]]
    assert targets.tolist() == [[IGNORE_INDEX, 5, 6, 7], [IGNORE_INDEX] * 3 + [9]]
    _, unmasked = sft_batch([([1, 2], [5, 6, 7])], mask_prompt=False)
    assert unmasked.tolist() == [[2, 5, 6, 7]]
    with pytest.raises(ValueError, match="pairs"):
        sft_batch([])


def test_masked_loss_ignores_prompt_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    input_ids, targets = sft_batch([([1, 2], [5, 6, 7]), ([1, 2, 3, 4], [9])])
    kept = targets != IGNORE_INDEX
    expected = F.cross_entropy(logits[kept], targets[kept])
    torch.testing.assert_close(masked_next_token_loss(logits, targets), expected)
    changed = logits.clone()
    changed[~kept] = torch.randn_like(changed[~kept]) * 100  # the prompt positions' logits do not matter
    torch.testing.assert_close(masked_next_token_loss(changed, targets), expected)
    with pytest.raises(ValueError, match="targets"):
        masked_next_token_loss(logits, targets[:, :3])


def test_response_log_probs_sums_the_response_tokens() -> None:
    model = tiny_gpt().eval()
    input_ids, targets = sft_batch([([1, 2, 3], [4, 5])])
    with torch.no_grad():
        log_probs = model(input_ids).log_softmax(-1)[0]  # (T, vocab)
        expected = log_probs[2, 4] + log_probs[3, 5]
        torch.testing.assert_close(response_log_probs(model, input_ids, targets), expected[None])


def test_dpo_loss_against_a_hand_computation() -> None:
    policy_chosen, policy_rejected = torch.tensor([-5.0, -3.0]), torch.tensor([-7.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-6.0, -3.5]), torch.tensor([-6.5, -1.0])
    beta = 0.5
    # pair 1: chosen log-ratio +1, rejected -0.5: margin 1.5; pair 2: chosen +0.5, rejected -1: margin 1.5... by hand:
    margins = [beta * ((-5 + 6) - (-7 + 6.5)), beta * ((-3 + 3.5) - (-2 + 1))]  # [0.75, 0.75]
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, reference_chosen,
                                                      reference_rejected, beta)  # fmt: skip
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.25, -0.5]))


def test_dpo_loss_is_ln2_when_the_policy_is_the_reference() -> None:
    chosen, rejected = torch.randn(8), torch.randn(8)
    loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), 0.1)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert chosen_rewards.abs().max() == 0 and rejected_rewards.abs().max() == 0


def test_dpo_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=0)
    with pytest.raises(TypeError, match="beta"):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


def test_dpo_training_raises_the_preferred_rate() -> None:
    policy, reference = tiny_gpt(), tiny_gpt().eval()
    reference.requires_grad_(False)
    chosen = sft_batch([([1, 2], [3, 4]), ([5, 6], [7, 8])])
    rejected = sft_batch([([1, 2], [9, 9]), ([5, 6], [10, 11])])
    with torch.no_grad():
        reference_chosen, reference_rejected = (response_log_probs(reference, *chosen),
                                                response_log_probs(reference, *rejected))  # fmt: skip
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, _, _ = dpo_loss(response_log_probs(policy, *chosen), response_log_probs(policy, *rejected),
                              reference_chosen, reference_rejected, beta=0.5)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isclose(losses[0], math.log(2), rel_tol=1e-5) and losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        rate = preferred_rate(response_log_probs(policy, *chosen), response_log_probs(policy, *rejected))
    assert rate == 1.0
    assert preferred_rate(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        preferred_rate(torch.zeros(2), torch.zeros(3))
