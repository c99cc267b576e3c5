"""Fine-tuning (微调) a pretrained encoder (chapter 6): a classification head, and what to train besides it.

``SequenceClassifier`` puts a linear head on a pooled encoder. ``mark_trainable`` picks what learns: everything
(full fine-tuning), nothing but the head (a linear probe), the biases (BitFit, Ben Zaken et al. 2022) or the
low-rank matrices of ``LoRALinear`` (LoRA, Hu et al. 2021), a parameter-efficient fine-tuning (参数高效微调)
method that ``apply_lora`` puts on chosen projections and ``peft_lora`` reproduces with Hugging Face peft.
``FGM`` and ``adversarial_loss`` do adversarial training (对抗训练) on the token embeddings (Miyato et al. 2017);
``distillation_loss`` is knowledge distillation (知识蒸馏, Hinton et al. 2015). Around them: safetensors
checkpoints and adapters, accuracy and macro F1, and keeping the best model seen on validation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.bert import mean_pool
from mmcourse.checks import check_positive_int
from mmcourse.train import to_device

if TYPE_CHECKING:
    import peft

POOLINGS = ("mean", "cls")
TRAINABLE_KINDS = ("all", "none", "lora", "bitfit")
LORA_NAMES = ("lora_A", "lora_B")
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"  # our BertModel's name for the token embedding matrix
HF_TOKEN_EMBEDDING = "embeddings.word_embeddings.weight"  # the same matrix in a transformers BertModel

Batch = Mapping[str, Tensor]  # "input_ids", "attention_mask" (batch, L), "labels" (batch,), maybe "token_type_ids"
LossFunction = Callable[[nn.Module, Batch], Tensor | tuple[Tensor, Mapping[str, float]]]


def _check_fraction(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless 0 <= value < 1 (a dropout probability)."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _check_positive(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# A classification head on an encoder
# ---------------------------------------------------------------------------------------------------------------


def _last_hidden_state(output: Any) -> Tensor:
    """The encoder's last-layer vectors (batch, L, d): ours (.hidden_states), transformers' (.last_hidden_state)."""
    if isinstance(output, Tensor):
        return output
    hidden_states = getattr(output, "last_hidden_state", None)  # transformers (where .hidden_states is a tuple)
    if hidden_states is None:
        hidden_states = getattr(output, "hidden_states", None)  # our BertOutput
    if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 3:
        raise ValueError(
            f"the encoder must return (batch, L, d) vectors as .last_hidden_state (transformers) or .hidden_states "
            f"(mmcourse BertModel), got {type(output).__name__}"
        )
    return hidden_states


class SequenceClassifier(nn.Module):
    """encoder → pool (mean of the real tokens, or token 0 = [CLS]) → dropout → linear head → logits."""

    def __init__(
        self, encoder: nn.Module, hidden_size: int, n_classes: int = 2, dropout: float = 0.1, pooling: str = "mean"
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        _check_fraction("dropout", dropout)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        self.pooling = pooling
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)  # as BERT initialises its classifier
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids, attention_mask (1 = real token), token_type_ids (batch, L) → logits (batch, n_classes)."""
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden_states = _last_hidden_state(output)  # (batch, L, hidden_size)
        if hidden_states.size(-1) != self.head.in_features:
            raise ValueError(
                f"hidden_size={self.head.in_features} but the encoder returns vectors of size {hidden_states.size(-1)}"
            )
        if self.pooling == "mean":
            pooled = mean_pool(hidden_states, attention_mask)  # (batch, hidden_size)
        else:
            pooled = hidden_states[:, 0]  # (batch, hidden_size): the [CLS] position
        return self.head(self.dropout(pooled))  # (batch, n_classes)


def _logits(model: nn.Module, batch: Batch) -> Tensor:
    """The model's logits (batch, classes) for a batch dict: a SequenceClassifier or a transformers classifier."""
    output = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    return getattr(output, "logits", output)  # transformers returns an output object with .logits


def classification_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of the model's logits against batch["labels"], and the batch accuracy: a ``loss_fn`` for train."""
    logits = _logits(model, batch)  # (batch, classes)
    loss = F.cross_entropy(logits, batch["labels"])
    accuracy = (logits.argmax(dim=-1) == batch["labels"]).float().mean().item()
    return loss, {"accuracy": accuracy}


# ---------------------------------------------------------------------------------------------------------------
# LoRA: a frozen weight plus a trainable low-rank update
# ---------------------------------------------------------------------------------------------------------------


def _check_lora_arguments(rank: int, alpha: float, dropout: float) -> None:
    check_positive_int("rank", rank)
    _check_positive("alpha", alpha)
    _check_fraction("dropout", dropout)


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
            raise ValueError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
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
            raise ValueError(
                f"cannot merge LoRA into a weight shared with {list(self.tied_to)} (tied weights): merging would "
                "change those too; keep the adapter unmerged, or untie the weights before apply_lora"
            )
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


def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
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
    for name, layer in _lora_layers(model):
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
        raise ValueError(
            f"target_names={tuple(target_names)} matched no nn.Linear in the model (already wrapped?); "
            f"the model's nn.Linear names end in {endings}"
        )
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
    layers = _lora_layers(model)
    _record_ties(model)
    tied = {name: list(layer.tied_to) for name, layer in layers if layer.tied_to and not layer.merged}
    if tied:
        raise ValueError(
            f"cannot merge LoRA layers whose weight is shared with other parameters (tied weights), {tied}: merging "
            "would change those too; keep the adapters unmerged, or untie the weights before apply_lora"
        )
    for _, layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo ``merge_lora``: subtract every LoRALinear's update from its base weight; return how many layers."""
    layers = _lora_layers(model)
    for _, layer in layers:
        layer.unmerge()
    return len(layers)


# ---------------------------------------------------------------------------------------------------------------
# What to train: full, linear probe, BitFit, LoRA
# ---------------------------------------------------------------------------------------------------------------


def _is_lora_parameter(name: str) -> bool:
    """True for our lora_A / lora_B and for peft's lora_A.<adapter>.weight / lora_B.<adapter>.weight."""
    return any(part in LORA_NAMES for part in name.split("."))


def _under(name: str, prefix: str) -> bool:
    """True when parameter ``name`` belongs to module ``prefix`` ("head" covers "head.weight", not "header.x")."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a tied (shared) matrix counts once."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return trainable, sum(parameter.numel() for parameter in model.parameters())


def mark_trainable(model: nn.Module, kind: str, also: Sequence[str] = ("head",)) -> tuple[int, int]:
    """Freeze all but: "all" everything, "none" nothing, "lora" the LoRA matrices, "bitfit" every bias; plus the
    parameters under any module named in ``also`` (a name prefix such as "head"). Returns (trainable, total)."""
    if kind not in TRAINABLE_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {TRAINABLE_KINDS}")
    if isinstance(also, str):
        also = (also,)
    named = list(model.named_parameters())
    if kind == "lora" and not any(_is_lora_parameter(name) for name, _ in named):
        raise ValueError('kind="lora" but the model has no LoRA parameters: call apply_lora(model, ...) first')
    for name, parameter in named:
        chosen = (
            kind == "all"
            or (kind == "lora" and _is_lora_parameter(name))
            or (kind == "bitfit" and name.rsplit(".", 1)[-1] == "bias")
            or any(_under(name, prefix) for prefix in also)
        )
        parameter.requires_grad_(chosen)
    return count_parameters(model)


# ---------------------------------------------------------------------------------------------------------------
# Saving: safetensors checkpoints and LoRA adapters
# ---------------------------------------------------------------------------------------------------------------


def _check_state(expected: Mapping[str, Tensor], loaded: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """ValueError naming the tensors when ``loaded`` lacks, adds or reshapes any of ``expected``'s tensors."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{os.fspath(path)} does not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in loaded.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"shape mismatch for {name!r} in {os.fspath(path)}: the file has {tuple(tensor.shape)}, "
                f"the model {tuple(expected[name].shape)}"
            )


@torch.no_grad()
def _copy_into(model: nn.Module, loaded: Mapping[str, Tensor]) -> None:
    """Copy each loaded tensor into the model's tensor of that name (state_dict tensors share the storage)."""
    state = model.state_dict()
    for name, tensor in loaded.items():
        state[name].copy_(tensor)


def save_checkpoint(module_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | os.PathLike) -> int:
    """Save a model's (or a state dict's) tensors as safetensors; return the file size in bytes.

    Every tensor is copied first: safetensors refuses tensors that share memory, as a tied embedding and decoder do.
    """
    from safetensors.torch import save_file

    if isinstance(module_or_state_dict, nn.Module):
        state = module_or_state_dict.state_dict()
    elif isinstance(module_or_state_dict, Mapping):
        state = module_or_state_dict
    else:
        raise ValueError(f"module_or_state_dict must be an nn.Module or a dict, got {type(module_or_state_dict)}")
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}
    save_file(tensors, os.fspath(path), metadata={"format": "pt"})
    return os.path.getsize(path)


def _load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file; ValueError naming the path when the file is not one (a missing file
    raises FileNotFoundError, which names it already)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(path))
    except SafetensorError as error:
        raise ValueError(f"{os.fspath(path)} is not a valid safetensors checkpoint ({error})") from error


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``save_checkpoint`` file into ``model`` in place (every tensor must be there, with its shape).
    ValueError naming the path when the file is not a valid safetensors file."""
    loaded = _load_safetensors(path)
    _check_state(model.state_dict(), loaded, path)
    _copy_into(model, loaded)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA matrices (lora_A, lora_B) of the model's state dict, as detached copies: the adapter."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if _is_lora_parameter(name)}


def save_lora(model: nn.Module, path: str | os.PathLike) -> int:
    """Save only the LoRA matrices as safetensors; return the file size in bytes."""
    state = lora_state_dict(model)
    if not state:
        raise ValueError("model has no LoRA parameters to save: call apply_lora(model, ...) first")
    return save_checkpoint(state, path)


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``save_lora`` adapter into a model that has the same LoRA layers (same targets and rank).
    ValueError naming the path when the file is not a valid safetensors file."""
    merged = [name for name, layer in _lora_layers(model) if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged[:3]} are merged: call unmerge_lora(model) before loading an adapter")
    loaded = _load_safetensors(path)
    _check_state(lora_state_dict(model), loaded, path)
    _copy_into(model, loaded)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Adversarial training on the token embeddings: FGM
# ---------------------------------------------------------------------------------------------------------------


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


def _loss_only(output: Tensor | tuple[Tensor, Mapping[str, float]]) -> Tensor:
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


def _perturbation(gradient: Tensor, epsilon: float) -> Tensor | None:
    """r = epsilon · g / ||g|| (the whole matrix's L2 norm), or None when ||g|| is 0 or not finite."""
    norm = gradient.norm()
    if not torch.isfinite(norm) or norm == 0:
        return None
    return epsilon * gradient / norm  # same shape as the matrix


class FGM:
    """Fast Gradient Method (Miyato et al. 2017) on an embedding matrix: after a backward, ``attack()`` moves the
    matrix by r = epsilon · g / ||g|| along its gradient g, a second forward/backward adds the adversarial loss's
    gradient, and ``restore()`` puts the matrix back before the optimiser step."""

    def __init__(self, model: nn.Module, epsilon: float = 1.0, parameter_name: str = TOKEN_EMBEDDING) -> None:
        _check_positive("epsilon", epsilon)
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
        perturbation = _perturbation(self.parameter.grad, self.epsilon)
        if perturbation is None:
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
    batch: Batch,
    epsilon: float,
    parameter_name: str = TOKEN_EMBEDDING,
) -> Tensor | tuple[Tensor, dict[str, float]]:
    """clean loss + loss with the embedding matrix moved by FGM's r: a ``loss_fn`` for ``train`` whose single
    backward gives the sum of both gradients, as the two-backward FGM recipe does. Returns what ``loss_of`` does
    (a tensor, or the pair with "clean_loss" and "adversarial_loss" added to the metrics).

    The matrix is changed in place under no_grad and restored before returning: that is safe when the model uses it
    only through a lookup (nn.Embedding keeps the ids for backward, not the matrix); a model that also multiplies by
    it (a tied decoder) makes backward raise autograd's in-place error instead of giving a wrong gradient.
    """
    _check_positive("epsilon", epsilon)
    _, embedding = _find_parameter(model, parameter_name)
    with _requiring_grad(embedding):  # a frozen embedding is fine: only r needs its gradient
        output = loss_of(model, batch)
        clean = _loss_only(output)
        (gradient,) = torch.autograd.grad(clean, embedding, retain_graph=True)  # .grad is left alone
    perturbation = _perturbation(gradient, epsilon)
    if perturbation is None:
        adversarial = clean
    else:
        original = embedding.detach().clone()
        with torch.no_grad():
            embedding.add_(perturbation)
        try:
            adversarial = _loss_only(loss_of(model, batch))  # the graph sees the perturbed values, r is a constant
        finally:
            with torch.no_grad():
                embedding.copy_(original)
    total = clean + adversarial
    if isinstance(output, tuple):
        metrics = {**output[1], "clean_loss": clean.item(), "adversarial_loss": adversarial.item()}
        return total, metrics
    return total


def embedding_attack_accuracy(
    model: nn.Module,
    batches: Iterable[Batch],
    epsilon: float,
    loss_of: LossFunction = classification_loss,
    parameter_name: str = TOKEN_EMBEDDING,
) -> float:
    """Accuracy when each batch is attacked by FGM of size ``epsilon`` using its true labels (epsilon 0: clean).

    Per batch: gradient of ``loss_of`` w.r.t. the embedding matrix, perturb, predict, restore. The model runs in
    eval mode; parameters, their .grad and requires_grad, and the model's mode are left as they were.
    """
    if not isinstance(epsilon, (int, float)) or not 0 <= epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    _, embedding = _find_parameter(model, parameter_name)
    device = embedding.device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in batches:
            batch = to_device(batch, device)
            perturbation = None
            if epsilon > 0:
                with torch.enable_grad(), _requiring_grad(embedding):
                    clean = _loss_only(loss_of(model, batch))
                    (gradient,) = torch.autograd.grad(clean, embedding)  # (vocab_size, d_model)
                perturbation = _perturbation(gradient, epsilon)
            original = embedding.detach().clone()
            try:
                with torch.no_grad():
                    if perturbation is not None:
                        embedding.add_(perturbation)
                    predictions = _logits(model, batch).argmax(dim=-1)  # (batch,)
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


# ---------------------------------------------------------------------------------------------------------------
# Knowledge distillation
# ---------------------------------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> Tensor:
    """alpha · CE(student, labels) + (1 - alpha) · T² · KL(softmax(teacher/T) || softmax(student/T)), batchmean.

    Why T²: the soft term's gradient w.r.t. a student logit is (p_student - p_teacher) / T, and for logits small
    next to T, softmax(z/T) ≈ (1 + (z - mean z)/T) / classes, so it is ≈ (z_student - z_teacher) / (classes · T²),
    centred: multiplying by T² keeps its size independent of T (Hinton et al. 2015). The teacher gets no gradient.
    ``labels`` may be None when alpha is 0 (no hard labels, only the teacher).
    """
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must both be (batch, classes), got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    _check_positive("temperature", temperature)
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if labels is None and alpha > 0:
        raise ValueError("labels are needed when alpha > 0 (the hard-label cross-entropy); pass alpha=0 without them")
    if labels is not None and labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be (batch,)={tuple(student_logits.shape[:1])}, got {tuple(labels.shape)}")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)  # (batch, classes)
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)  # (batch, classes)
    soft = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)  # KL(t || s)
    loss = (1.0 - alpha) * temperature**2 * soft
    if labels is not None and alpha > 0:
        loss = loss + alpha * F.cross_entropy(student_logits, labels)
    return loss


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and keeping the best model
# ---------------------------------------------------------------------------------------------------------------


def classification_metrics(logits_or_predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """{"accuracy", "macro_f1"} from logits (N, classes) or predicted classes (N,) and labels (N,)."""
    from sklearn.metrics import f1_score

    predictions = logits_or_predictions
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=-1)  # (N,)
    if predictions.dim() != 1 or labels.shape != predictions.shape:
        raise ValueError(
            f"logits_or_predictions must be (N, classes) or (N,) and labels (N,), got "
            f"{tuple(logits_or_predictions.shape)} and {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise ValueError("labels is empty: nothing to score")
    predictions, labels = predictions.detach().cpu(), labels.detach().cpu()
    return {
        "accuracy": (predictions == labels).float().mean().item(),
        "macro_f1": float(f1_score(labels.numpy(), predictions.numpy(), average="macro", zero_division=0)),
    }


def predict(model: nn.Module, batches: Iterable[Batch], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Logits (N, classes) and labels (N,) on the CPU for every batch, in eval mode without gradients."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch, device)
                all_logits.append(_logits(model, batch).float().cpu())  # (batch, classes)
                all_labels.append(batch["labels"].cpu())  # (batch,)
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("batches yielded nothing to predict")
    return torch.cat(all_logits), torch.cat(all_labels)  # (N, classes), (N,)


class BestCheckpoint:
    """Early stopping's memory: a CPU copy of the weights at the best validation score so far (higher is better)."""

    def __init__(self) -> None:
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, Tensor] | None = None

    def update(self, model: nn.Module, score: float, step: int) -> bool:
        """Keep a copy of the weights if ``score`` beats the best so far (a NaN never does); True when it did."""
        if not float(score) > self.best_score:
            return False
        self.best_score, self.best_step = float(score), step
        self.best_state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> nn.Module:
        """Load the best weights back into ``model`` in place."""
        if self.best_state is None:
            raise ValueError("no checkpoint kept yet: call update(model, score, step) first")
        model.load_state_dict(self.best_state)
        return model


# ---------------------------------------------------------------------------------------------------------------
# The same LoRA with Hugging Face peft
# ---------------------------------------------------------------------------------------------------------------


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
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none"
    )
    return get_peft_model(hf_model, config)
