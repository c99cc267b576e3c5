"""One small, readable training loop that every chapter reuses.

``train(model, loss_fn, batches, config)`` runs ``config.steps`` optimizer steps: forward through ``loss_fn``,
backward, optional gradient clipping, an optimizer step, a learning-rate schedule (constant, or linear warmup
then cosine decay), a ``tqdm.auto`` progress bar, and a ``History`` of losses, learning rates and evaluations.
The same loop trains every process of appendix A1 (:func:`mmcourse.distributed.train_steps`), which only changes
how a step's gradients are computed (micro-batches, averaged across processes).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmcourse.checks import check_finite_number, check_int, check_positive_int

IGNORE_INDEX = -100  # a target with this value gets no loss (F.cross_entropy's default ignore_index)
LossOutput = Tensor | tuple[Tensor, Mapping[str, float]]  # a scalar loss, or (loss, metrics to log)
LossFn = Callable[[nn.Module, Any], LossOutput]

SCHEDULES = ("constant", "cosine")


def best_device() -> torch.device:
    """CUDA if available, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices) so sampling repeats exactly."""
    check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (the trainable ones only, with ``trainable_only``); a shared tensor counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def batch_indices(step: int, batch_size: int, *highs: int) -> Tensor:
    """Batch number ``step``: ``batch_size`` random indices in [0, high) for each ``high``, from a generator seeded
    by the step, so batch ``step`` is the same in every run whatever ran before it. One high gives (batch_size,);
    several give one row each, (len(highs), batch_size), drawn in order: ``index, which = batch_indices(...)``."""
    check_int("step", step, minimum=0)
    check_positive_int("batch_size", batch_size)
    if not highs:
        raise ValueError("batch_indices needs at least one high (the number of items to draw from)")
    for high in highs:
        check_positive_int("high", high)
    generator = torch.Generator().manual_seed(step)
    rows = [torch.randint(high, (batch_size,), generator=generator) for high in highs]  # each (batch_size,)
    return rows[0] if len(rows) == 1 else torch.stack(rows)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global gradient norm; None turns clipping off
    schedule: str = "constant"  # "constant" or "cosine" (linear warmup, then cosine decay)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    eval_every: int = 0  # 0: evaluate only at the end (if an evaluate function is given)
    autocast_bf16: bool = False  # bf16 autocast on a GPU with bf16 arithmetic; ignored elsewhere (see uses_bf16)
    compile: bool = False  # run the forward through torch.compile (make bench measures whether it pays off)
    progress: bool = True

    def __post_init__(self) -> None:
        """Check every field: TypeError naming it for a wrong type, ValueError for a wrong value."""
        check_int("steps", self.steps, minimum=1)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        check_int("eval_every", self.eval_every, minimum=0)
        for name in ("learning_rate", "weight_decay", "min_lr_ratio"):
            check_finite_number(name, getattr(self, name))
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not isinstance(self.betas, (tuple, list)):
            raise TypeError(f"betas must be a tuple of two numbers, got {type(self.betas).__name__} {self.betas!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must hold two numbers (beta1, beta2), got {self.betas!r}")
        for index, beta in enumerate(self.betas):
            check_finite_number(f"betas[{index}]", beta)
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{index}] must be in [0, 1), got {beta!r}")
        object.__setattr__(self, "betas", tuple(self.betas))  # frozen: a list becomes a tuple, once
        if self.grad_clip is not None:
            check_finite_number("grad_clip", self.grad_clip)
            if not self.grad_clip > 0:
                raise ValueError(f"grad_clip must be > 0 or None (no clipping), got {self.grad_clip}")
        if not isinstance(self.schedule, str):
            raise TypeError(f"schedule must be a str, one of {SCHEDULES}, got {type(self.schedule).__name__}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        for name in ("autocast_bf16", "compile", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


@dataclass
class History:
    """What a training run leaves behind: per-step loss, learning rate and metrics, and evaluations."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0

    def evaluation_series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one evaluated quantity, for plotting."""
        steps = [step for step, values in self.evaluations if name in values]
        return steps, [values[name] for _, values in self.evaluations if name in values]


def lr_multiplier(step: int, config: TrainConfig) -> float:
    """The schedule's factor on ``config.learning_rate`` at ``step`` (0-based)."""
    if config.schedule == "constant":
        return 1.0
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def adamw(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on matrices (dim >= 2), none on biases, norms and other vectors."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no parameters with requires_grad=True: nothing to train")
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate, betas=config.betas)


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether ``train`` runs the forward pass under bf16 autocast: ``config.autocast_bf16`` on a CUDA device whose
    hardware computes in bf16 (Ampere and newer: A100, H100, RTX 30xx …). Older GPUs such as Colab's T4 only
    emulate bf16, which is slower than float32, so training there stays in float32."""
    if not config.autocast_bf16 or torch.device(device).type != "cuda":
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple, list or dict to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def _batch_source(batches: Iterable[Any] | Callable[[int], Any]) -> Callable[[int], Any]:
    """A function step -> batch: ``batches`` itself if callable, else its items, cycled epoch after epoch."""
    if callable(batches) and not hasattr(batches, "__iter__"):
        return batches  # type: ignore[return-value]
    iterator: Iterator[Any] = iter(batches)

    def next_batch(step: int) -> Any:
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(batches)
            try:
                return next(iterator)
            except StopIteration:
                message = "batches yielded nothing: pass a re-iterable (list, DataLoader) that is not empty"
                raise ValueError(message) from None

    return next_batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping) and batch:
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    return 1


def loss_and_gradients(model: nn.Module, loss_fn: LossFn, batch: Any) -> LossOutput:
    """``train``'s way to compute a step's gradients: ``loss_fn(model, batch)``, then backward (the gradients add to
    ``.grad``). Returns loss_fn's output: the scalar loss, or (loss, metrics)."""
    output = loss_fn(model, batch)
    loss = output[0] if isinstance(output, tuple) else output
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor (or a (scalar tensor, metrics dict) pair)")
    loss.backward()
    return output


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any] | Callable[[int], Any],
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    device: torch.device | None = None,
    history: History | None = None,
    lr_lambda: Callable[[int], float] | None = None,
    description: str = "training",
    gradients: Callable[[nn.Module, LossFn, Any], LossOutput] = loss_and_gradients,
    on_step: Callable[[int, float], None] | None = None,
) -> History:
    """Train ``model`` for ``config.steps`` steps and return the History.

    ``loss_fn(model, batch)`` returns the scalar loss, or ``(loss, {"accuracy": ...})`` to log metrics too.
    ``batches`` is a re-iterable of batches (cycled) or a function ``step -> batch``. Batches are moved to
    ``device`` (default: the model's). ``evaluate(model)`` runs every ``config.eval_every`` steps and at the end,
    under ``torch.no_grad()`` with the model in eval mode. Pass ``history`` to continue a previous run's record.
    ``lr_lambda(step)`` (0-based), when given, replaces ``config.schedule`` as the factor on each group's base
    learning rate: e.g. the Transformer paper's warmup schedule. With ``config.compile``, ``loss_fn`` receives the
    ``torch.compile`` wrapper of ``model`` (same parameters; calling it runs the compiled forward), while
    ``evaluate`` gets ``model`` itself; the first steps pay for compiling. ``gradients(model, loss_fn, batch)``
    computes each step's gradients and returns the loss (default :func:`loss_and_gradients`; appendix A1 passes
    one that accumulates micro-batches and averages across processes); ``on_step(step, loss)`` runs after each
    optimizer step.
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = device or next(model.parameters()).device
    optimizer = optimizer or adamw(model, config)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    history = history or History()
    next_batch = _batch_source(batches)
    use_autocast = uses_bf16(config, device)
    forward_model = torch.compile(model) if config.compile else model  # shares model's parameters
    start = time.perf_counter()

    def forward_loss(module: nn.Module, batch: Any) -> LossOutput:  # loss_fn, under bf16 autocast when it is on
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext():
            return loss_fn(module, batch)

    def run_evaluation(step: int) -> None:
        model.eval()
        with torch.no_grad():
            values = {key: float(value) for key, value in evaluate(model).items()}  # type: ignore[misc]
        model.train()
        history.evaluations.append((step, values))

    model.train()
    bar = tqdm(range(config.steps), desc=description, disable=not config.progress, mininterval=0.5)
    for step in bar:
        multiplier = lr_lambda(step) if lr_lambda is not None else lr_multiplier(step, config)
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * multiplier
        batch = to_device(next_batch(step), device)
        optimizer.zero_grad(set_to_none=True)
        output = gradients(forward_model, forward_loss, batch)  # forward and backward: .grad holds the step's
        loss, metrics = output if isinstance(output, tuple) else (output, {})
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower learning_rate or check the data")
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        history.losses.append(loss.item())
        history.learning_rates.append(optimizer.param_groups[0]["lr"])
        for key, value in metrics.items():
            history.metrics.setdefault(key, []).append(float(value))
        history.examples += _batch_size(batch)
        if step % 10 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{history.losses[-1]:.4f}", refresh=False)
        if on_step is not None:
            on_step(step, history.losses[-1])
        due = config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps
        if evaluate is not None and due:
            run_evaluation(step + 1)
    if evaluate is not None:
        run_evaluation(config.steps)
    model.eval()
    history.seconds += time.perf_counter() - start
    return history
