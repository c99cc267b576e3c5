"""From a language model to an assistant (chapter 8): supervised fine-tuning and direct preference optimisation.

Supervised fine-tuning (SFT, instruction tuning) trains on prompt–response pairs with the next-token loss on the
response tokens only: ``sft_example`` sets the targets of every prompt position to ``IGNORE_INDEX``.
Direct preference optimisation (DPO, Rafailov et al. 2023) trains on pairs of responses to one prompt, one preferred:

    loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where π is the policy being trained, π_ref a frozen copy of the SFT model, and β·(log π - log π_ref) the implicit
reward of a response. ``response_log_probs`` gives the summed log-probabilities the loss needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_finite_number
from mmcourse.train import IGNORE_INDEX


def sft_example(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(input_ids, targets) for one prompt–response pair, each of length len(prompt) + len(response) - 1.

    input_ids are the tokens but the last; targets[t] is the token after position t, or IGNORE_INDEX where that
    token belongs to the prompt, so that only the response is learned."""
    if len(prompt_ids) < 1 or len(response_ids) < 1:
        raise ValueError(f"prompt_ids and response_ids must be non-empty, got {len(prompt_ids)} and "
                         f"{len(response_ids)} tokens")  # fmt: skip
    tokens = [*prompt_ids, *response_ids]
    targets = [IGNORE_INDEX] * (len(prompt_ids) - 1) + list(response_ids)  # target of the prompt's last token: 1st
    return tokens[:-1], targets


def sft_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0, mask_prompt: bool = True
) -> tuple[Tensor, Tensor]:
    """Right-padded (input_ids (batch, T), targets (batch, T)) for prompt–response id pairs; padding and (with
    ``mask_prompt``) prompt positions get IGNORE_INDEX targets."""
    if not pairs:
        raise ValueError("pairs must hold at least one (prompt_ids, response_ids) pair")
    examples = []
    for prompt_ids, response_ids in pairs:
        input_ids, targets = sft_example(prompt_ids, response_ids)
        if not mask_prompt:
            targets = [*prompt_ids[1:], *response_ids]
        examples.append((input_ids, targets))
    longest = max(len(input_ids) for input_ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)  # (batch, T)
    targets = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)  # (batch, T)
    for row, (ids, row_targets) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        targets[row, : len(row_targets)] = torch.tensor(row_targets)
    return input_ids, targets


def masked_next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the positions whose target is not IGNORE_INDEX. logits (batch, T, vocab_size).
    (``sft_batch`` gives every row response targets; targets that are all IGNORE_INDEX would give NaN.)"""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (batch, T, vocab_size) and targets (batch, T), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")  # fmt: skip
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def response_log_probs(model: nn.Module, input_ids: Tensor, targets: Tensor) -> Tensor:
    """Summed log-probability (batch,) that ``model`` gives the target tokens (those not IGNORE_INDEX):
    log π(response | prompt) for batches built by ``sft_batch``. Gradients flow when the caller allows them."""
    if input_ids.dim() != 2 or targets.shape != input_ids.shape:
        raise ValueError(f"input_ids and targets must be (batch, T) of one shape, got {tuple(input_ids.shape)} and "
                         f"{tuple(targets.shape)}")  # fmt: skip
    logits = model(input_ids)  # (batch, T, vocab_size)
    log_probs = logits.float().log_softmax(dim=-1)  # (batch, T, vocab_size)
    keep = targets != IGNORE_INDEX  # (batch, T)
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (batch, T)
    return (picked * keep).sum(dim=-1)  # (batch,)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO's loss from the summed log-probabilities (batch,) of the chosen and rejected responses under the policy
    and the reference. Returns (mean loss, chosen_rewards (batch,), rejected_rewards (batch,)), the rewards being
    β·(log π - log π_ref), detached. When the policy equals the reference the loss is ln 2."""
    shape = policy_chosen.shape
    if policy_chosen.dim() != 1 or any(t.shape != shape for t in (policy_rejected, reference_chosen,
                                                                   reference_rejected)):  # fmt: skip
        shapes = [tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)]
        raise ValueError(f"the four log-probability tensors must be (batch,) of one shape, got {shapes}")
    check_finite_number("beta", beta)
    if not beta > 0:
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    chosen_logratio = policy_chosen - reference_chosen  # (batch,)
    rejected_logratio = policy_rejected - reference_rejected  # (batch,)
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
    return loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def preferred_rate(chosen_log_probs: Tensor, rejected_log_probs: Tensor) -> float:
    """Share of pairs whose chosen response is more probable than the rejected one."""
    if chosen_log_probs.shape != rejected_log_probs.shape or chosen_log_probs.dim() != 1:
        raise ValueError(f"both must be (batch,) of one shape, got {tuple(chosen_log_probs.shape)} and "
                         f"{tuple(rejected_log_probs.shape)}")  # fmt: skip
    return (chosen_log_probs > rejected_log_probs).float().mean().item()
