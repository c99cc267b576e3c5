"""Fine-tuning (微调) a pretrained encoder for classification (chapter 6): a head, what to train, checkpoints.

``SequenceClassifier`` puts a linear head on a pooled encoder and ``classification_loss`` is its ``loss_fn`` for
``train``; ``predict`` and ``classification_metrics`` evaluate it, or any classifier called with keyword inputs
(chapter 7's VQA models too). ``mark_trainable`` picks what learns: everything (full fine-tuning), nothing but
the head (a linear probe), the biases (BitFit, Ben Zaken et al. 2022) or the LoRA matrices of
:mod:`mmcourse.lora`. ``BestCheckpoint`` keeps the best model seen on validation; safetensors checkpoints and
LoRA adapters store the result. Adversarial training and distillation are :mod:`mmcourse.adversarial` and
:mod:`mmcourse.distillation`.

A batch is a dict: the model's inputs by keyword (``input_ids``, ``attention_mask`` …, or ``images`` …) and
``labels`` (batch,).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.bert import mean_pool
from mmcourse.checks import check_dropout, check_positive_int
from mmcourse.clip import last_hidden_state
from mmcourse.lora import is_lora_parameter, lora_layers, lora_state_dict
from mmcourse.train import parameter_count, to_device
from mmcourse.vision import POOLINGS

TRAINABLE_KINDS = ("all", "none", "lora", "bitfit")

# ---------------------------------------------------------------------------------------------------------------
# A classification head on an encoder
# ---------------------------------------------------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """encoder → pool (mean of the real tokens, or token 0 = [CLS]) → dropout → linear head → logits.

    The encoder is ours (``BertModel``) or a transformers one: anything that returns (batch, L, hidden_size) states.
    """

    def __init__(
        self, encoder: nn.Module, hidden_size: int, n_classes: int = 2, dropout: float = 0.1, pooling: str = "mean"
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        check_dropout("dropout", dropout)
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
        hidden_states = last_hidden_state(output)  # (batch, L, hidden_size)
        if hidden_states.size(-1) != self.head.in_features:
            raise ValueError(f"hidden_size={self.head.in_features} but the encoder returns vectors of size "
                             f"{hidden_states.size(-1)}")  # fmt: skip
        if self.pooling == "mean":
            pooled = mean_pool(hidden_states, attention_mask)  # (batch, hidden_size)
        else:
            pooled = hidden_states[:, 0]  # (batch, hidden_size): the [CLS] position
        return self.head(self.dropout(pooled))  # (batch, n_classes)


def classifier_logits(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """The model's logits (batch, classes), its inputs taken by keyword from the batch (all but "labels"); ours,
    or a transformers classifier (whose output holds .logits)."""
    output = model(**{name: value for name, value in batch.items() if name != "labels"})
    return getattr(output, "logits", output)


def classification_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the model's logits against batch["labels"], and the batch accuracy: a ``loss_fn`` for train.

    The accuracy stays a 0-dim tensor (``train`` turns it into a float), so the loss waits for no device."""
    logits = classifier_logits(model, batch)  # (batch, classes)
    loss = F.cross_entropy(logits, batch["labels"])
    accuracy = (logits.argmax(dim=-1) == batch["labels"]).float().mean().detach()
    return loss, {"accuracy": accuracy}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and keeping the best model
# ---------------------------------------------------------------------------------------------------------------


def classification_metrics(logits_or_predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """{"accuracy", "macro_f1"} from logits (N, classes) or predicted classes (N,) and labels (N,)."""
    from sklearn.metrics import f1_score

    predictions = logits_or_predictions
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=-1)  # (N,)
    if predictions.dim() != 1 or labels.shape != predictions.shape or len(labels) == 0:
        raise ValueError(f"logits_or_predictions must be (N, classes) or (N,) and labels (N,) with N > 0, got "
                         f"{tuple(logits_or_predictions.shape)} and {tuple(labels.shape)}")  # fmt: skip
    predictions, labels = predictions.detach().cpu(), labels.detach().cpu()
    return {
        "accuracy": (predictions == labels).float().mean().item(),
        "macro_f1": float(f1_score(labels.numpy(), predictions.numpy(), average="macro", zero_division=0)),
    }


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """Logits (N, classes) and labels (N,) on the CPU for every batch, in eval mode (restored after)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for batch in batches:
            batch = to_device(batch, device)
            all_logits.append(classifier_logits(model, batch).float().cpu())  # (batch, classes)
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
# What to train: full, linear probe, BitFit, LoRA
# ---------------------------------------------------------------------------------------------------------------


def _under(name: str, prefix: str) -> bool:
    """True when parameter ``name`` belongs to module ``prefix`` ("head" covers "head.weight", not "header.x")."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def mark_trainable(model: nn.Module, kind: str, also: Sequence[str] = ("head",)) -> tuple[int, int]:
    """Freeze all but: "all" everything, "none" nothing, "lora" the LoRA matrices, "bitfit" every bias; plus the
    parameters under any module named in ``also`` (a name prefix such as "head"). Returns (trainable, total)."""
    if kind not in TRAINABLE_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {TRAINABLE_KINDS}")
    if isinstance(also, str):
        also = (also,)
    named = list(model.named_parameters())
    if kind == "lora" and not any(is_lora_parameter(name) for name, _ in named):
        raise ValueError('kind="lora" but the model has no LoRA parameters: call apply_lora(model, ...) first')
    for name, parameter in named:
        chosen = (
            kind == "all"
            or (kind == "lora" and is_lora_parameter(name))
            or (kind == "bitfit" and name.rsplit(".", 1)[-1] == "bias")
            or any(_under(name, prefix) for prefix in also)
        )
        parameter.requires_grad_(chosen)
    return parameter_count(model, trainable_only=True), parameter_count(model)


# ---------------------------------------------------------------------------------------------------------------
# Saving: safetensors checkpoints and LoRA adapters
# ---------------------------------------------------------------------------------------------------------------


def _check_state(expected: Mapping[str, Tensor], loaded: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """ValueError naming the tensors when ``loaded`` lacks, adds or reshapes any of ``expected``'s tensors."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{os.fspath(path)} does not fit the model: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")  # fmt: skip
    for name, tensor in loaded.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"shape mismatch for {name!r} in {os.fspath(path)}: the file has {tuple(tensor.shape)}, "
                             f"the model {tuple(expected[name].shape)}")  # fmt: skip


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
        raise TypeError(f"module_or_state_dict must be an nn.Module or a dict, got {type(module_or_state_dict)}")
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
    model.load_state_dict(loaded)  # copies into the model's tensors: tied weights stay tied
    return model


def save_lora(model: nn.Module, path: str | os.PathLike) -> int:
    """Save only the LoRA matrices as safetensors; return the file size in bytes."""
    state = lora_state_dict(model)
    if not state:
        raise ValueError("model has no LoRA parameters to save: call apply_lora(model, ...) first")
    return save_checkpoint(state, path)


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``save_lora`` adapter into a model that has the same LoRA layers (same targets and rank).
    ValueError naming the path when the file is not a valid safetensors file."""
    merged = [name for name, layer in lora_layers(model) if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged[:3]} are merged: call unmerge_lora(model) before loading an adapter")
    loaded = _load_safetensors(path)
    _check_state(lora_state_dict(model), loaded, path)
    model.load_state_dict(loaded, strict=False)  # the adapter only: every other tensor stays
    return model
