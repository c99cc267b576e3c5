"""Memory for training: what one optimizer step must hold, by formula, and measured.

A training step holds the weights, their gradients, the optimizer's state (AdamW: two moments per weight) and the
**activations**: the tensors the forward pass saves for the backward pass. The first three depend only on the
number of weights; the activations grow with batch × length. ``gpt_activation_bytes`` counts them for our GPT by
formula; ``saved_tensor_bytes`` measures them by asking autograd what it saves, so the formula can be checked on
any machine; on a GPU ``torch.cuda.max_memory_allocated`` gives the peak of a real step. The explicit attention
of chapter 1 (what ``GPT.attention_weights`` runs) keeps more: ``attention="explicit"`` counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mmcourse.checks import check_int, check_positive_int
from mmcourse.gpt import GPTConfig

# A Colab T4 (a 16 GB card): Colab shows 15.0 GB of GPU RAM, torch's out-of-memory messages there say 14.75 GiB
# total capacity (15.8e9 bytes). The budget is 15e9 bytes of the allocator's peak: the rest is left to the CUDA
# context and the allocator's cache, which come on top of it. The runbook checks every chapter against it.
T4_MEMORY_BYTES = 15 * 10**9

__all__ = ["T4_MEMORY_BYTES", "TrainingMemory", "gpt_activation_bytes", "saved_tensor_bytes", "training_memory"]

ATTENTIONS = ("fused", "explicit")
OPTIMIZERS = {"adamw": 2, "sgd": 0}  # state tensors per trainable weight: AdamW's two moments; plain SGD none


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step holds at its peak, by kind (the peak also has short-lived buffers not counted)."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations


def gpt_activation_bytes(config: GPTConfig, batch: int, length: int, attention: str = "fused") -> int:
    """Bytes our GPT's forward pass + next-token loss save for the backward pass, in float32, for a (batch, length)
    input of contiguous token ids and targets.

    With B = batch, L = length, d = d_model, F = d_ff, h = n_heads, V = vocab_size, each block saves 8·BLd + 2·BLF
    values: its two norms' inputs and outputs, q, k and v, the attention output (which the output projection reads
    as it is), and the MLP's hidden layer before and after GELU; plus 4·BL (each norm's mean and 1/std). The fused
    kernel adds h·BL (a log-sum-exp per query and head); the explicit attention of chapter 1 instead keeps the
    (B, h, L, L) weights twice (after the softmax, and after zeroing rows with no key) and its boolean masks (L² + 2L
    bytes). Outside the blocks: the final norm (2·BLd + 2·BL), the log-softmax of the logits (BLV), the token ids,
    positions and targets (int64) and the loss's weight sum (4 bytes). GPT-2 style configs (LayerNorm, GELU MLP,
    learned positions, all heads with their own keys) with dropout 0 only; others raise.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    check_positive_int("batch", batch)
    check_positive_int("length", length)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTIONS}")
    expected = {"norm": "layernorm", "mlp": "gelu", "positions": "learned", "n_kv_heads": config.n_heads, "dropout": 0}
    unsupported = {name: getattr(config, name) for name, wanted in expected.items() if getattr(config, name) != wanted}
    if unsupported:
        raise ValueError(f"gpt_activation_bytes counts GPT-2 style configs with dropout 0; this one has {unsupported}")
    if length > config.context_length:
        raise ValueError(f"length={length} is more than context_length={config.context_length}")
    tokens, d, d_ff, heads = batch * length, config.d_model, config.d_ff, config.n_heads
    per_block = 4 * (8 * tokens * d + 2 * tokens * d_ff + 4 * tokens)
    if attention == "fused":
        per_block += 4 * heads * tokens
    else:
        per_block += 4 * 2 * batch * heads * length * length + length * length + 2 * length
    outside = 4 * (2 * tokens * d + tokens * config.vocab_size + 2 * tokens) + 8 * (2 * tokens + length) + 4
    return config.n_layers * per_block + outside


def training_memory(model: nn.Module, activations: int, optimizer: str = "adamw") -> TrainingMemory:
    """Weights, gradients and optimizer state of ``model`` (trainable weights only get gradients and state, in the
    weights' own dtype), plus ``activations`` bytes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("activations", activations, minimum=0)  # bytes
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not one of {tuple(OPTIMIZERS)}")
    parameters = list({id(p): p for p in model.parameters()}.values())  # tied weights once
    weights = sum(p.numel() * p.element_size() for p in parameters)
    trainable = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
    return TrainingMemory(weights, trainable, OPTIMIZERS[optimizer] * trainable, activations)


def saved_tensor_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves while ``forward()`` runs (call it with the loss computation inside),
    each storage counted once however many ops save a view of it, and ``model``'s own weights left out (they are
    held anyway). What the backward pass will need: the activations of the formula above."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(forward):
        raise TypeError(f"forward must be a function of no arguments, got {type(forward).__name__}")
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output  # the graph (and what it saved) is freed with the output
    return sum(storages.values())
