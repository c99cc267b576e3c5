"""LoRA (Hu et al. 2021): a frozen weight plus a trainable low-rank update, a parameter-efficient fine-tuning
(参数高效微调) method (chapter 6).

``LoRALinear`` wraps an ``nn.Linear``: y = base(x) + dropout(x) Aᵀ Bᵀ · alpha/rank, with only A and B trained.
``apply_lora`` wraps the model's projections of chosen names, ``merge_lora`` folds every update into its base
weight for inference and ``unmerge_lora`` takes it out again; ``lora_state_dict`` is the adapter alone.
``peft_lora`` is the same method from Hugging Face peft, for the comparison of the chapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mmcourse.checks import check_dropout, check_finite_number, check_positive_int

if TYPE_CHECKING:
    import peft

LORA_NAMES = ("lora_A", "lora_B")


def is_lora_parameter(name: str) -> bool:
    """True for our lora_A / lora_B and for peft's lora_A.<adapter>.weight / lora_B.<adapter>.weight."""
    return any(part in LORA_NAMES for part in name.split("."))


def _check_lora_arguments(rank: int, alpha: float, dropout: float) -> None:
    check_positive_int("rank", rank)
    for name, value in (("alpha", alpha), ("dropout", dropout)):
        check_finite_number(name, value)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    check_dropout("dropout", dropout)


class LoRALinear(nn.Module):
    """y = base(x) + dropout(x) A^T B^T · alpha/rank, with the base layer frozen and only A, B trained (Hu et al.).

    A (rank, in_features) starts like an nn.Linear weight (Kaiming-uniform), B (out_features, rank) at zero, so the
    wrapped layer starts as exactly its base layer. ``merge()`` folds B A · scaling into the base weight, so that
    inference costs nothing extra; ``unmerge()`` takes it out again.

    A base weight shared with another parameter (a GPT's LM head tied to its token embedding) cannot be merged:
    adding B A to it would change the other too. ``tied_to`` holds the other parameters' names, as ``apply_lora``
    and ``merge_lora`` found them in the model (a layer cannot see the model it is in), and ``merge()`` refuses then.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        _check_lora_arguments(rank, alpha, dropout)
        self.base = base
        self.base.requires_grad_(False)  # weight and bias stay as pretrained
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))  # (rank, in_features)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))  # (out_features, rank)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear, the LoRA paper's code and peft
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        self.tied_to: tuple[str, ...] = ()  # the model's other parameters sharing base.weight: set by apply_lora

    def delta_weight(self) -> Tensor:
        """The update the adapter makes to the base weight: B A · scaling, (out_features, in_features)."""
        return self.lora_B @ self.lora_A * self.scaling  # (out_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) → (..., out_features)."""
        output = self.base(x)  # (..., out_features)
        if self.merged:
            return output  # the update is already inside base.weight
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., rank) then (..., out_features)
        return output + update * self.scaling  # (..., out_features)

    @torch.no_grad()
    def merge(self) -> None:
        """Add B A · scaling into base.weight in place (a no-op when already merged). ValueError, leaving the weight
        as it is, when base.weight is shared with the parameters in ``tied_to``: merging would change them too."""
        if self.merged:
            return
        if self.tied_to:
            raise ValueError(f"cannot merge LoRA into a weight shared with {list(self.tied_to)} (tied weights): "
                             "merging would change those too; keep the adapter unmerged, or untie the weights before "
                             "apply_lora")  # fmt: skip
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract B A · scaling from base.weight again (a no-op when not merged)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every LoRALinear in ``model`` with its name; ValueError when there is none."""
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if not layers:
        raise ValueError("model has no LoRALinear layers: call apply_lora(model, ...) first")
    return layers


def _record_ties(model: nn.Module) -> None:
    """Set each LoRALinear's ``tied_to``: the names of the model's other parameters that share its base weight's
    memory (the same Parameter, as a tied LM head and token embedding, or a view of the same storage)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(parameter.untyped_storage().data_ptr() or id(parameter), []).append(name)
    for name, layer in lora_layers(model):
        weight = layer.base.weight
        own = f"{name}.base.weight" if name else "base.weight"
        shared = names.get(weight.untyped_storage().data_ptr() or id(weight), [])
        layer.tied_to = tuple(other for other in shared if other != own)


def apply_lora(
    model: nn.Module,
    target_names: Sequence[str] = ("q_proj", "v_proj"),
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap every nn.Linear whose name ends in one of ``target_names`` in a LoRALinear; return the wrapped names.

    Only the wrapped layers' base weights are frozen here: call ``mark_trainable(model, "lora")`` next. A wrapped
    layer whose weight is tied to another parameter (a GPT's LM head) trains, but cannot be merged (see LoRALinear).
    """
    if isinstance(target_names, str):
        target_names = (target_names,)
    _check_lora_arguments(rank, alpha, dropout)
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    names = [name for name in linear_names if name.rsplit(".", 1)[-1] in target_names]
    if not names:
        endings = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
        raise ValueError(f"target_names={tuple(target_names)} matched no nn.Linear in the model (already wrapped?); "
                         f"the model's nn.Linear names end in {endings}")  # fmt: skip
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank, alpha, dropout))
    _record_ties(model)
    return names


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRALinear's update into its base weight; return how many layers there are.

    ValueError, before any weight changes, when a wrapped layer's weight is shared with another parameter of the
    model (a GPT's LM head tied to the token embedding): merging it would change that parameter too.
    """
    layers = lora_layers(model)
    _record_ties(model)
    tied = {name: list(layer.tied_to) for name, layer in layers if layer.tied_to and not layer.merged}
    if tied:
        raise ValueError(f"cannot merge LoRA layers whose weight is shared with other parameters (tied weights), "
                         f"{tied}: merging would change those too; keep the adapters unmerged, or untie the weights "
                         "before apply_lora")  # fmt: skip
    for _, layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo ``merge_lora``: subtract every LoRALinear's update from its base weight; return how many layers."""
    layers = lora_layers(model)
    for _, layer in layers:
        layer.unmerge()
    return len(layers)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA matrices (lora_A, lora_B) of the model's state dict, as detached copies: the adapter."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if is_lora_parameter(name)}


def peft_lora(
    hf_model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("query", "value"),
) -> peft.PeftModel:
    """``hf_model`` wrapped by peft's LoRA on ``target_modules`` (BERT's query and value by default), biases frozen.

    peft changes ``hf_model`` in place (its targets become lora layers) and freezes everything but the adapters.
    """
    from peft import LoraConfig, get_peft_model

    _check_lora_arguments(rank, alpha, dropout)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none")  # fmt: skip
    return get_peft_model(hf_model, config)
