"""Data-parallel training of the chapter 4 GPT over several processes (appendix A1).

Every process (a *rank*) holds the same model, takes its own slice of each global batch, and the ranks average
their gradients before the optimizer step, so that all of them take the same step as one process would on the
whole batch. Four strategies, the same numbers:

- ``none``: one process, no communication (the reference);
- ``ddp``: ``torch.nn.parallel.DistributedDataParallel``, which all-reduces gradients in buckets during backward;
- ``allreduce``: the same by hand: broadcast the weights once, then ``all_reduce`` every gradient after backward;
- ``fsdp``: ``torch.distributed.fsdp.fully_shard`` (FSDP2): each rank stores only its shard of the weights,
  gradients and optimizer state, gathering whole weights layer by layer when it needs them.

Gradient accumulation (梯度累积) runs ``accumulation_steps`` micro-batches through forward and backward before each
step, skipping the gradient synchronisation for all but the last (DDP's ``no_sync``). The loop is the book's one
training loop, :func:`mmcourse.train.train`, with this rank's batches and a gradient step that accumulates and
averages.

The training script is this module: ``torchrun --nproc_per_node=2 -m mmcourse.distributed --strategy ddp --out DIR``
(CPU processes talk through gloo, GPU processes through NCCL). Rank 0 writes ``DIR/<strategy>.json`` (losses,
timing, sizes) and ``DIR/<strategy>.pt`` (the gradients of the first step and the weights after ``check_steps``).
:func:`launch` runs it from Python (a notebook) with ``subprocess`` and reads the results back.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmcourse.checks import check_finite_number, check_int, check_positive_int
from mmcourse.gpt import GPT, GPTConfig, next_token_loss
from mmcourse.train import TrainConfig, adamw, batch_indices, set_seed, train

STRATEGIES = ("none", "ddp", "allreduce", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = "PROGRESS "  # rank 0 prints one such line per step; launch() turns them into a progress bar

Batch = tuple[Tensor, Tensor]  # (input_ids (batch, T), targets (batch, T))


@dataclass(frozen=True)
class DistributedConfig:
    steps: int = 20
    check_steps: int = 5  # the weights after this many steps are saved, to compare with one process
    global_batch_size: int = 16  # sequences per optimizer step: all ranks and all micro-batches together
    accumulation_steps: int = 1  # micro-batches per rank per optimizer step
    context_length: int = 64
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0  # max global gradient norm; None turns clipping off
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = ("steps", "check_steps", "global_batch_size", "accumulation_steps", "context_length", "d_model")
        for name in (*sizes, "n_heads", "n_layers"):
            check_positive_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=0)
        if self.check_steps > self.steps:
            raise ValueError(f"check_steps={self.check_steps} must be <= steps={self.steps}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.global_batch_size % self.accumulation_steps:
            raise ValueError(f"global_batch_size={self.global_batch_size} must be divisible by "
                             f"accumulation_steps={self.accumulation_steps}")  # fmt: skip
        self.train_config()  # learning_rate, weight_decay and grad_clip: checked as TrainConfig checks them

    def train_config(self) -> TrainConfig:
        """The shared loop's settings: chapter 4's AdamW (betas 0.9, 0.99; weight decay on the matrices only), a
        constant learning rate, clipping, no progress bar (rank 0 prints PROGRESS lines instead)."""
        return TrainConfig(steps=self.steps, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                           betas=(0.9, 0.99), grad_clip=self.grad_clip, progress=False)  # fmt: skip

    def micro_batch_size(self, world_size: int) -> int:
        """Sequences per forward pass on one rank: global_batch_size / (world_size · accumulation_steps)."""
        check_positive_int("world_size", world_size)
        share = world_size * self.accumulation_steps
        if self.global_batch_size % share:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be divisible by world_size={world_size} × "
                f"accumulation_steps={self.accumulation_steps} = {share}"
            )
        return self.global_batch_size // share

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The chapter 4 GPT of this size (GPT-2 style, no dropout: every rank computes the same function)."""
        return GPTConfig(
            vocab_size=vocab_size,
            context_length=self.context_length,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
        )


# ---------------------------------------------------------------------------------------------------------------
# Data: character-level Shakespeare, the same global batch on every rank


def character_ids(text: str, characters: Sequence[str]) -> Tensor:
    """``text`` as character-level ids (N,) int64: each character's index in ``characters`` (the vocabulary);
    characters that are not in it are left out."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) one per character
    size = max([int(code_points.max(initial=0)), *(ord(character) for character in characters)]) + 1
    index = np.full(size, -1, dtype=np.int64)  # code point -> position in the vocabulary, -1 for none
    index[[ord(character) for character in characters]] = np.arange(len(characters))
    ids = index[code_points]  # (N,)
    return torch.from_numpy(ids[ids >= 0])


def shakespeare_ids() -> tuple[Tensor, list[str]]:
    """All 42 works as one character-level sequence: (ids (N,) int64, the sorted characters = the vocabulary)."""
    from mmcourse.data.shakespeare import load_shakespeare

    works = load_shakespeare()
    text = "\n".join(works[name] for name in sorted(works))
    characters = sorted(set(text))
    return character_ids(text, characters), characters


def get_batch(ids: Tensor, step: int, batch_size: int, context_length: int, seed: int = 0) -> Batch:
    """Batch number ``step``: ``batch_size`` random windows of ``ids``, the same in every process and run (drawn by
    :func:`mmcourse.train.batch_indices`). Returns (input_ids (batch, T), targets (batch, T)), shifted by one."""
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError(f"ids must be a 1-D int64 tensor, got {_describe(ids)}")
    check_int("step", step, minimum=0)
    check_int("seed", seed, minimum=0)
    check_positive_int("context_length", context_length)
    if len(ids) < context_length + 2:
        raise ValueError(f"ids has {len(ids)} tokens, fewer than context_length + 2 = {context_length + 2}")
    starts = batch_indices(seed * 1_000_003 + step, batch_size, len(ids) - context_length - 1)  # (batch,)
    windows = ids[starts[:, None] + torch.arange(context_length + 1)]  # (batch, T + 1)
    return windows[:, :-1], windows[:, 1:]  # (batch, T), (batch, T)


def local_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's contiguous slice of a global batch: rows rank·B/W … (rank+1)·B/W of each tensor."""
    _check_batch(batch, "batch")
    _check_rank(rank, world_size)
    size = batch[0].size(0)
    if size % world_size:
        raise ValueError(f"the batch of {size} sequences does not split evenly over world_size={world_size}")
    share = size // world_size
    return batch[0][rank * share : (rank + 1) * share], batch[1][rank * share : (rank + 1) * share]


def micro_batches(batch: Batch, accumulation_steps: int) -> list[Batch]:
    """Split a batch into ``accumulation_steps`` equal micro-batches (equal sizes: see accumulate_gradients)."""
    _check_batch(batch, "batch")
    check_positive_int("accumulation_steps", accumulation_steps)
    size = batch[0].size(0)
    if size % accumulation_steps:
        raise ValueError(
            f"the batch of {size} sequences does not split into accumulation_steps={accumulation_steps} equal parts"
        )
    return list(zip(batch[0].chunk(accumulation_steps), batch[1].chunk(accumulation_steps), strict=True))


# ---------------------------------------------------------------------------------------------------------------
# Gradients: accumulation, synchronisation, averaging by hand


def gpt_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy of ``model`` on (input_ids, targets)."""
    input_ids, targets = batch
    return next_token_loss(model(input_ids), targets)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Forward and backward inside this context synchronise gradients across ranks only if ``enabled``:
    DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync``; a plain module never synchronises anyway."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def accumulate_gradients(
    model: nn.Module, batches: Sequence[Batch], loss_fn: Callable[[nn.Module, Batch], Tensor] = gpt_loss
) -> Tensor:
    """Forward and backward over equal-sized micro-batches, each loss divided by their number, so the summed
    gradients are those of the mean loss over all of them: one big batch. Only the last backward synchronises
    gradients across ranks. Returns the mean loss (detached). Gradients add to what ``.grad`` holds."""
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence) or not batches:
        raise ValueError(f"batches must be a non-empty list of (input_ids, targets), got {_describe(batches)}")
    for index, batch in enumerate(batches):
        _check_batch(batch, f"batches[{index}]")
    if len({batch[0].size(0) for batch in batches}) > 1:
        raise ValueError(f"batches must all hold the same number of sequences, got {[len(b[0]) for b in batches]}")
    total = None
    for index, batch in enumerate(batches):
        with gradient_sync(model, enabled=index == len(batches) - 1):
            loss = loss_fn(model, batch) / len(batches)  # scalar: this micro-batch's share of the mean
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def average_gradients(model: nn.Module) -> None:
    """DDP by hand: sum every gradient over the ranks (all-reduce), then divide by the number of ranks."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("average_gradients needs a process group: call torch.distributed.init_process_group first")
    world_size = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)  # every rank now holds the sum over ranks
            parameter.grad /= world_size


def broadcast_parameters(model: nn.Module, source: int = 0) -> None:
    """Copy rank ``source``'s weights into every rank (DDP does this when it wraps the model)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("broadcast_parameters needs a process group: call torch.distributed.init_process_group")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, source)


# ---------------------------------------------------------------------------------------------------------------
# Processes, devices, backends


def pick_backend(device: torch.device | str) -> str:
    """The communication backend for tensors on ``device``: NCCL between GPUs, gloo between CPU processes."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a name like 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(f"device={str(device)!r}: data-parallel training here runs on 'cpu' (gloo) or 'cuda' (NCCL)")


def pick_device(requested: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """The device of one process: GPU ``local_rank`` when there is one GPU per process on this node (or
    ``requested='cuda'``), else the CPU."""
    if requested not in DEVICES:
        raise ValueError(f"device={requested!r} is not one of {DEVICES}")
    _check_rank(local_rank, local_world_size, "local_rank", "local_world_size")
    enough_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= local_world_size
    if requested == "cuda" and not enough_gpus:
        raise ValueError(
            f"device='cuda' needs one GPU per process: {local_world_size} processes, {torch.cuda.device_count()} GPUs"
        )
    if requested == "cuda" or (requested == "auto" and enough_gpus):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def wrap_model(model: GPT, strategy: str, device: torch.device) -> nn.Module:
    """Prepare ``model`` (already on ``device``) for ``strategy``: DDP's wrapper, the by-hand broadcast, or FSDP2's
    sharding (each block a unit, then the whole model for the embeddings, final norm and the tied head)."""
    if not isinstance(model, GPT) or not isinstance(device, torch.device):
        raise TypeError(f"model must be a mmcourse.gpt.GPT and device a torch.device, got {type(model).__name__} "
                        f"and {type(device).__name__}")  # fmt: skip
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    if strategy == "none":
        return model
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"strategy={strategy!r} needs a process group: launch with torchrun")
    if strategy == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "allreduce":
        broadcast_parameters(model)
        return model
    from torch.distributed.fsdp import fully_shard  # torch >= 2.6

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The GPT inside a DDP wrapper, or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_tensors(named: Sequence[tuple[str, Tensor | None]]) -> dict[str, Tensor]:
    """``{name: whole tensor on the CPU}``; an FSDP shard (a DTensor) is gathered from every rank, so every rank
    must call this. Entries that are None (no gradient) are left out."""
    gathered = {}
    for name, tensor in named:
        if tensor is None:
            continue
        if hasattr(tensor, "full_tensor"):  # a DTensor: this rank holds one shard
            tensor = tensor.full_tensor()
        gathered[name] = tensor.detach().cpu().clone()
    return gathered


def local_elements(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[int, int]:
    """(parameter elements, optimizer-state elements) stored by this rank: all of them with DDP, one shard of each
    with FSDP."""

    def count(tensor: Tensor) -> int:
        return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).numel()

    parameters = sum(count(p) for p in model.parameters())
    states = optimizer.state.values() if optimizer is not None else []
    state = sum(count(v) for s in states for v in s.values() if isinstance(v, Tensor) and v.dim() > 0)
    return parameters, state


# ---------------------------------------------------------------------------------------------------------------
# Training: the same loop for one process and for every rank


@dataclass
class RunResult:
    """What one training run leaves: per-step losses, timing, stored sizes, the first gradients, checked weights."""

    losses: list[float]
    seconds: float
    parameter_elements: int
    optimizer_elements: int
    first_gradients: dict[str, Tensor]
    checked_weights: dict[str, Tensor]


def train_steps(
    model: nn.Module,
    ids: Tensor,
    config: DistributedConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    strategy: str = "none",
    device: torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train for ``config.steps`` steps with :func:`mmcourse.train.train`. Each step takes global batch ``step``
    (the same in every process), keeps this rank's slice, runs it as ``config.accumulation_steps`` micro-batches,
    averages gradients across ranks (DDP and FSDP inside backward; ``allreduce`` by hand after it), clips, and
    steps AdamW. With ``world_size=1`` and ``strategy='none'`` this is plain single-process training on the whole
    batch. ``on_step(step, loss)`` runs after each step (the loss averaged over the ranks)."""
    import torch.distributed as dist

    if not isinstance(config, DistributedConfig):
        raise TypeError(f"config must be a DistributedConfig, got {type(config).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    config.micro_batch_size(world_size)  # checks world_size and the split
    _check_rank(rank, world_size)
    if strategy == "none" and world_size != 1:
        raise ValueError(f"strategy='none' does not fit world_size={world_size}: it trains one process alone")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be callable or None, got {type(on_step).__name__}")
    inner = unwrap(model)
    optimizer = adamw(model, config.train_config())
    first_gradients: dict[str, Tensor] = {}
    checked_weights: dict[str, Tensor] = {}

    def rank_batch(step: int) -> list[Batch]:  # this rank's slice of global batch `step`, in micro-batches
        batch = get_batch(ids, step, config.global_batch_size, config.context_length, config.seed)
        return micro_batches(local_batch(batch, rank, world_size), config.accumulation_steps)

    def gradients(module: nn.Module, loss_fn: Callable[[nn.Module, Batch], Tensor], parts: list[Batch]) -> Tensor:
        loss = accumulate_gradients(module, parts, loss_fn)  # this rank's mean loss; DDP, FSDP average gradients
        if strategy == "allreduce":
            average_gradients(module)
        if world_size > 1:
            dist.all_reduce(loss)  # for the log only: the mean loss over the whole global batch
            loss /= world_size
        if not first_gradients:  # step 0, before clipping: what the check compares with one process
            first_gradients.update(full_tensors([(name, p.grad) for name, p in inner.named_parameters()]))
        return loss

    def after_step(step: int, loss: float) -> None:
        if step + 1 == config.check_steps:
            checked_weights.update(full_tensors(list(inner.named_parameters())))
        if on_step is not None:
            on_step(step, loss)

    history = train(model, gpt_loss, rank_batch, config.train_config(), optimizer=optimizer, device=device,
                    gradients=gradients, on_step=after_step)  # fmt: skip
    parameter_elements, optimizer_elements = local_elements(model, optimizer)
    return RunResult(history.losses, history.seconds, parameter_elements, optimizer_elements, first_gradients,
                     checked_weights)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The script: python -m mmcourse.distributed (one process) or torchrun -m mmcourse.distributed (several)


def run_worker(
    config: DistributedConfig, strategies: Sequence[str], out: Path, device: str = "auto", progress: bool = True
) -> None:
    """One process of a run (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK…; without them, a single process).
    Trains one fresh, identically seeded model per strategy; rank 0 writes ``out/<strategy>.json`` and ``.pt``."""
    import torch.distributed as dist

    if not isinstance(config, DistributedConfig):
        raise TypeError(f"config must be a DistributedConfig, got {type(config).__name__}")
    _check_strategies(strategies)
    out = Path(out)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank, local_world_size = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    launched = "RANK" in os.environ
    if not launched and set(strategies) != {"none"}:
        raise ValueError(f"strategies {list(strategies)} need several processes: launch with torchrun")
    if launched and "none" in strategies and world_size > 1:
        raise ValueError(f"strategy 'none' is for one process, but torchrun started WORLD_SIZE={world_size}")
    config.micro_batch_size(world_size)
    this_device = pick_device(device, local_rank, local_world_size)
    backend = pick_backend(this_device)
    if launched:
        if this_device.type == "cuda":
            torch.cuda.set_device(this_device)
        dist.init_process_group(backend=backend)
    try:
        ids, characters = shakespeare_ids()
        for strategy in strategies:
            set_seed(config.seed)
            model = GPT(config.gpt_config(len(characters))).to(this_device)
            model = wrap_model(model, strategy, this_device)

            def report(step: int, loss: float, strategy: str = strategy) -> None:
                if progress and rank == 0:
                    line = json.dumps({"strategy": strategy, "step": step + 1, "steps": config.steps, "loss": loss})
                    print(PROGRESS + line, flush=True)

            result = train_steps(
                model, ids, config, rank=rank, world_size=world_size, strategy=strategy, device=this_device,
                on_step=report,
            )  # fmt: skip
            parameters = sum(p.numel() for p in unwrap(model).parameters())  # global sizes, also for DTensors
            tokens = config.steps * config.global_batch_size * config.context_length
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                summary = {
                    "strategy": strategy,
                    "world_size": world_size,
                    "backend": backend if launched else None,
                    "device": this_device.type,
                    "threads_per_process": torch.get_num_threads(),
                    "micro_batch_size": config.micro_batch_size(world_size),
                    "config": dataclasses.asdict(config),
                    "losses": result.losses,
                    "seconds": result.seconds,
                    "tokens_per_second": tokens / result.seconds,
                    "parameters": parameters,
                    "parameter_elements_per_rank": result.parameter_elements,
                    "optimizer_elements_per_rank": result.optimizer_elements,
                    "torch": torch.__version__,
                }
                (out / f"{strategy}.json").write_text(json.dumps(summary, indent=1))
                state = {"first_gradients": result.first_gradients, "checked_weights": result.checked_weights}
                torch.save(state, out / f"{strategy}.pt")
            if launched:
                dist.barrier()
    finally:
        if launched:
            dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.distributed",
        description="Train the chapter 4 GPT on Shakespeare, data-parallel when launched by torchrun.",
    )
    parser.add_argument("--strategy", action="append", choices=STRATEGIES, help="repeat to train several in turn")
    parser.add_argument("--out", type=Path, required=True, help="folder for <strategy>.json and <strategy>.pt")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: one GPU per process if enough")
    parser.add_argument("--no-progress", action="store_true", help="do not print a PROGRESS line per step")
    for field in dataclasses.fields(DistributedConfig):
        kind = float if field.name in ("learning_rate", "weight_decay", "grad_clip") else int
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=_optional(kind), default=field.default)
    return parser


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def config_arguments(config: DistributedConfig) -> list[str]:
    """The command-line arguments that recreate ``config`` in the script."""
    if not isinstance(config, DistributedConfig):
        raise TypeError(f"config must be a DistributedConfig, got {type(config).__name__}")
    return [f"--{name.replace('_', '-')}={value}" for name, value in dataclasses.asdict(config).items()]


def main(argv: Sequence[str] | None = None) -> int:
    """The script's entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    fields = {field.name for field in dataclasses.fields(DistributedConfig)}
    try:
        config = DistributedConfig(**{name: value for name, value in vars(args).items() if name in fields})
        run_worker(config, args.strategy or ["none"], args.out, args.device, progress=not args.no_progress)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Launching from Python (a notebook, a test): subprocess, never multi-process code inside the caller


def launch_command(
    config: DistributedConfig, strategies: Sequence[str], processes: int, out: Path | str, device: str = "auto"
) -> list[str]:
    """The command line: ``python -m mmcourse.distributed`` for one process and strategy 'none', else torchrun
    (``python -m torch.distributed.run``) with ``processes`` workers on this machine, rendezvous on 127.0.0.1."""
    if not isinstance(config, DistributedConfig):
        raise TypeError(f"config must be a DistributedConfig, got {type(config).__name__}")
    _check_strategies(strategies)
    check_positive_int("processes", processes)
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {DEVICES}")
    if not isinstance(out, (str, Path)) or not str(out):
        raise ValueError(f"out must be a folder path, got {out!r}")
    config.micro_batch_size(processes)
    if ("none" in strategies) != (processes == 1 and set(strategies) == {"none"}):
        raise ValueError(
            f"strategies {list(strategies)} with processes={processes}: 'none' runs alone in one process; "
            "ddp, allreduce and fsdp need torchrun (processes >= 1)"
        )
    script = ["-m", "mmcourse.distributed", *(f"--strategy={s}" for s in strategies), f"--out={out}"]
    script += [f"--device={device}", *config_arguments(config)]
    if set(strategies) == {"none"}:
        return [sys.executable, *script]
    torchrun = ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}"]
    torchrun += ["--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0"]  # a free port on this machine
    return [sys.executable, *torchrun, *script]


def launch(
    config: DistributedConfig,
    strategies: Sequence[str],
    processes: int,
    out: Path | str,
    *,
    device: str = "auto",
    threads_per_process: int | None = None,
    timeout: float = 600.0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the script in a subprocess (torchrun for several processes), show a progress bar per strategy, and
    return ``{strategy: the JSON summary rank 0 wrote}``. ``threads_per_process`` sets OMP_NUM_THREADS (default:
    OMP_NUM_THREADS if set, else the CPU cores divided among the processes). Raises RuntimeError with the output's
    last lines if it fails."""
    from tqdm.auto import tqdm

    command = launch_command(config, strategies, processes, out, device)
    if threads_per_process is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads_per_process = int(os.environ["OMP_NUM_THREADS"])  # the caller already chose (make test: 1)
    if threads_per_process is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads_per_process = max(1, cores // processes)
    check_positive_int("threads_per_process", threads_per_process)
    check_finite_number("timeout", timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    out = Path(out)
    for strategy in strategies:  # never read back an earlier run's files
        for suffix in (".json", ".pt"):
            (out / f"{strategy}{suffix}").unlink(missing_ok=True)
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads_per_process), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(timeout, stop)
    timer.start()
    bars: dict[str, Any] = {}
    tail: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(PROGRESS):
                update = json.loads(line[len(PROGRESS) :])
                bar = bars.get(update["strategy"])
                if bar is None:
                    bar = bars[update["strategy"]] = tqdm(
                        total=update["steps"], desc=update["strategy"], disable=not progress, mininterval=0.5
                    )
                bar.set_postfix(loss=f"{update['loss']:.3f}", refresh=False)
                bar.update(update["step"] - bar.n)
                if update["step"] == update["steps"]:
                    bar.close()
            else:
                tail = (tail + [line.rstrip()])[-40:]
        status = process.wait()
    finally:
        timer.cancel()
        for bar in bars.values():
            bar.close()
    if status != 0:
        reason = f"was stopped after timeout={timeout} s" if timed_out.is_set() else "failed"
        raise RuntimeError(f"{' '.join(command)} {reason} (exit status {status}); its last lines:\n" + "\n".join(tail))
    return {strategy: json.loads((out / f"{strategy}.json").read_text()) for strategy in strategies}


def load_state(out: Path | str, strategy: str) -> dict[str, dict[str, Tensor]]:
    """What rank 0 saved for ``strategy``: {"first_gradients": {...}, "checked_weights": {...}}."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    path = Path(out) / f"{strategy}.pt"
    if not path.is_file():
        raise ValueError(f"out={str(out)!r} holds no {path.name}: run launch(..., strategies=[{strategy!r}]) first")
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def _check_batch(batch: object, name: str) -> None:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
        raise ValueError(f"{name} must be a pair (input_ids, targets) of tensors, got {_describe(batch)}")
    input_ids, targets = batch
    if input_ids.dim() != 2 or input_ids.shape != targets.shape or input_ids.size(0) < 1:
        raise ValueError(
            f"{name} must hold input_ids and targets of the same shape (batch >= 1, T), got "
            f"{tuple(input_ids.shape)} and {tuple(targets.shape)}"
        )


def _check_rank(rank: object, world_size: int, name: str = "rank", size_name: str = "world_size") -> None:
    check_positive_int(size_name, world_size)
    check_int(name, rank, minimum=0)
    if not rank < world_size:  # type: ignore[operator]
        raise ValueError(f"{name} must be an int in [0, {size_name}={world_size}), got {rank!r}")


def _check_strategies(strategies: object) -> None:
    if isinstance(strategies, (str, bytes)) or not isinstance(strategies, Sequence) or not strategies:
        raise ValueError(f"strategies must be a non-empty list such as ['ddp'], got {strategies!r}")
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategies: {strategy!r} is not one of {STRATEGIES}")
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"strategies must not repeat, got {list(strategies)}")


if __name__ == "__main__":
    raise SystemExit(main())
