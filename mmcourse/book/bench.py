"""Measuring what pieces cost: wall-clock time (median of repeats) and peak memory, on CPU or CUDA.

Peak memory on CUDA comes from the caching allocator's statistics. On the CPU torch keeps no such statistics:
on Linux we reset the process's peak resident memory (``/proc/self/clear_refs``), run the call, and read how far
the peak (``VmHWM``) rose above the memory in use before it. Elsewhere CPU memory is reported as not measured.

``python -m mmcourse.book.bench`` (``make bench``) puts our pieces beside a reference on this machine, in one run:
explicit attention vs torch's fused kernel, generation with vs without the KV cache, our GPT's training vs
transformers' GPT-2 and vs itself under ``torch.compile``, our BERT's and CLIP's forward passes vs transformers'
models of the same config, and each chapter's execution time in the fast and cpu profiles. Each pair runs back to
back, repeat after repeat, so both see the same machine; the table gives median [min–max] of each side and of
their per-repeat ratio. ``--quick`` is the seconds-long version for CI.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.attention import scaled_dot_product_attention
from mmcourse.bert import BertConfig, BertModel
from mmcourse.book.device import describe, machine_name
from mmcourse.book.notebooks import cache_dir as notebook_cache_dir
from mmcourse.book.notebooks import chapter_notebooks, cores, environment
from mmcourse.book.notebooks import execute as execute_notebooks
from mmcourse.book.results import repository_root
from mmcourse.book.runbook import runbook_times
from mmcourse.checks import check_positive_int, positive_int_argument
from mmcourse.clip import CLIP, CLIPConfig, TextEncoder, TextEncoderConfig
from mmcourse.convert.bert import to_hf_bert
from mmcourse.convert.gpt import to_hf_gpt2
from mmcourse.generation import generate
from mmcourse.gpt import GPT, GPTConfig, next_token_loss
from mmcourse.train import TrainConfig, parameter_count, uses_bf16
from mmcourse.vision import VisionTransformer, ViTConfig

if TYPE_CHECKING:
    import transformers


ATTENTION_IMPLEMENTATIONS = ("explicit", "fused")


@dataclass(frozen=True)
class Timing:
    """Median and spread (min, max) of repeated wall-clock measurements, in seconds."""

    median: float
    minimum: float
    maximum: float
    repeats: int

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> Timing:
        """The median and spread of these measurements."""
        if not seconds:
            raise ValueError("seconds must hold at least one measurement")
        return cls(statistics.median(seconds), min(seconds), max(seconds), len(seconds))


def time_call(function: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Run ``function`` ``warmup`` times, then time ``repeats`` runs (synchronising CUDA) and summarise."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return Timing.from_seconds(times)


def attention_inputs(
    length: int, batch: int = 1, n_heads: int = 8, head_dim: int = 64, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v of shape (batch, n_heads, length, head_dim)."""
    if length < 1 or batch < 1 or n_heads < 1 or head_dim < 1:
        raise ValueError(
            f"sizes must be positive: length={length}, batch={batch}, n_heads={n_heads}, head_dim={head_dim}"
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, n_heads, length, head_dim)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return tuple(torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3))  # type: ignore[return-value]


def attention_function(implementation: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
    """A no-argument callable running causal attention with ``implementation`` ("explicit" or "fused")."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}; valid: {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    length = q.size(-2)
    mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    if implementation == "explicit":
        return lambda: scaled_dot_product_attention(q, k, v, mask)[0]
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def peak_memory_cuda(function: Callable[[], object]) -> int:
    """Bytes the CUDA allocator held at its peak while ``function`` ran, above what was held before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        function()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise OSError(f"{field} not in /proc/self/status")


def _release_free_memory() -> None:
    """Hand memory that glibc keeps after ``free`` back to the system, so that reusing it counts as new."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_cpu(function: Callable[[], object]) -> int | None:
    """Bytes of resident memory that ``function`` added at its peak (Linux only; None where not measurable)."""
    try:
        _release_free_memory()
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak resident set size (VmHWM) to the current one
    except OSError:
        return None
    with torch.no_grad():
        function()
    return max(0, _status_bytes("VmHWM") - before)


@dataclass(frozen=True)
class AttentionCost:
    """Time and memory of one attention implementation at one sequence length."""

    implementation: str
    length: int
    seconds: float
    seconds_min: float
    seconds_max: float
    peak_bytes: int | None


def attention_cost(
    lengths: tuple[int, ...],
    repeats: int = 5,
    batch: int = 1,
    n_heads: int = 8,
    head_dim: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> list[AttentionCost]:
    """Time (median of ``repeats``) and peak memory of explicit vs fused causal attention per sequence length."""
    from tqdm.auto import tqdm

    if not lengths or any(length < 1 for length in lengths):
        raise ValueError(f"lengths must be positive sequence lengths, got {lengths!r}")
    costs = []
    steps = [(length, name) for length in lengths for name in ATTENTION_IMPLEMENTATIONS]
    for length, name in tqdm(steps, desc="attention cost", disable=not progress):
        q, k, v = attention_inputs(length, batch, n_heads, head_dim, device)
        function = attention_function(name, q, k, v)
        peak = peak_memory_cuda(function) if device.startswith("cuda") else peak_memory_cpu(function)
        with torch.no_grad():
            timing = time_call(function, repeats)
        costs.append(AttentionCost(name, length, timing.median, timing.minimum, timing.maximum, peak))
    return costs


# ---------------------------------------------------------------------------------------------------------------
# make bench: each figure beside a reference, measured in the same run, summarised as ratios
# ---------------------------------------------------------------------------------------------------------------

SECTIONS = ("attention", "generation", "training", "reference", "compile", "bert", "clip", "notebooks")
PROFILE_CACHE = "cpu"  # the profile whose notebook times come from `make book`'s execution cache
MIB = 2**20


@dataclass(frozen=True)
class Summary:
    """Median and spread (min, max) of repeated measurements of one quantity."""

    median: float
    minimum: float
    maximum: float
    repeats: int


def summarise(values: Sequence[float], name: str = "values") -> Summary:
    """Median, min and max of ``values`` (at least one finite number); ``name`` says which in an error."""
    values = list(values)
    if not values:
        raise ValueError(f"{name} must hold at least one measurement, got none")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be finite numbers, got {value!r}")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def ratios(ours: Sequence[float], reference: Sequence[float]) -> Summary:
    """Summary of ours[i] / reference[i]. Repeat i of both ran back to back, so each ratio compares the two under
    the same machine state; the spread says how much that state moved the comparison."""
    if len(ours) != len(reference):
        raise ValueError(
            f"ours and reference must hold one value per repeat each, got {len(ours)} and {len(reference)} values"
        )
    summarise(ours, "ours")
    summarise(reference, "reference")
    if any(value <= 0 for value in reference):
        raise ValueError(f"reference values must be > 0 to divide by, got {list(reference)!r}")
    return summarise([mine / theirs for mine, theirs in zip(ours, reference, strict=True)], "ratios")


@dataclass(frozen=True)
class Row:
    """One compared figure: ours and the reference (None where not measured), ours ÷ reference, and where the
    numbers came from."""

    case: str
    metric: str  # what is measured and its unit, e.g. "time (ms)", "tokens/s"
    ours: Summary | None
    reference: Summary | None
    ratio: Summary | None
    source: str


def compare(
    case: str, metric: str, ours: Sequence[float] | None, reference: Sequence[float] | None, source: str
) -> Row:
    """A Row from the raw per-repeat values. The ratio is left out (None) where a side is missing or a reference
    value is 0 (nothing to divide by)."""
    ours_summary = None if ours is None else summarise(ours, "ours")
    reference_summary = None if reference is None else summarise(reference, "reference")
    ratio = None
    if ours is not None and reference is not None and all(value > 0 for value in reference):
        ratio = ratios(ours, reference)
    return Row(case, metric, ours_summary, reference_summary, ratio, source)


@dataclass(frozen=True)
class Section:
    """A group of rows comparing one thing of ours (``ours``) with one reference (``reference``)."""

    name: str  # the key in the JSON: one of SECTIONS
    title: str
    ours: str
    reference: str
    rows: tuple[Row, ...]
    note: str = ""
    errors: tuple[str, ...] = ()  # what failed to run; `make bench` exits 1 when any section has one


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(
    ours: Callable[[], object],
    reference: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    device: str = "cpu",
) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` runs of ``ours`` and of ``reference``, interleaved so that both see the same machine:
    even repeats run ours first, odd ones the reference first. ``warmup`` untimed runs of each come before."""
    check_positive_int("repeats", repeats)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    for _ in range(warmup):
        ours()
        reference()
    seconds: tuple[list[float], list[float]] = ([], [])
    for repeat in range(repeats):
        order = (0, 1) if repeat % 2 == 0 else (1, 0)
        for side in order:
            function = (ours, reference)[side]
            _synchronize(device)
            start = time.perf_counter()
            function()
            _synchronize(device)
            seconds[side].append(time.perf_counter() - start)
    return seconds


def _milliseconds(seconds: Sequence[float]) -> list[float]:
    return [1000 * value for value in seconds]


def _per_second(amount: float, seconds: Sequence[float]) -> list[float]:
    return [amount / value for value in seconds]


def _measured(repeats: int, warmup: int = 1) -> str:
    return f"this run: {repeats} repeat{'s' * (repeats > 1)} interleaved, after {warmup} warm-up"


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------------------------------


def attention_section(
    lengths: Sequence[int], repeats: int, n_heads: int = 8, head_dim: int = 64, device: str = "cpu"
) -> Section:
    """Causal attention, batch 1: our explicit softmax(q kᵀ/√d) v vs ``F.scaled_dot_product_attention``; time and
    peak memory per sequence length."""
    lengths = tuple(lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive int sequence lengths, got {lengths!r}")
    check_positive_int("repeats", repeats)
    peak_memory = peak_memory_cuda if device.startswith("cuda") else peak_memory_cpu
    memory_source = "CUDA allocator peak" if device.startswith("cuda") else "peak resident memory (VmHWM)"
    rows = []
    for length in lengths:
        q, k, v = attention_inputs(length, 1, n_heads, head_dim, device)  # (1, n_heads, L, head_dim) each
        explicit, fused = attention_function("explicit", q, k, v), attention_function("fused", q, k, v)
        with torch.no_grad():
            seconds = time_pair(explicit, fused, repeats, device=device)
        rows.append(compare(f"L={length}", "time (ms)", *map(_milliseconds, seconds), _measured(repeats)))
        peaks: tuple[list[int | None], list[int | None]] = ([], [])
        for _ in range(repeats):
            peaks[0].append(peak_memory(explicit))
            peaks[1].append(peak_memory(fused))
        if any(peak is None for side in peaks for peak in side):
            rows.append(compare(f"L={length}", "peak memory (MiB)", None, None, "not measured: no /proc on this OS"))
            continue
        mebibytes = [[peak / MIB for peak in side] for side in peaks]  # type: ignore[operator]
        zero = " (ratio: the reference added no measurable memory)" if min(mebibytes[1]) == 0 else ""
        source = f"this run: {memory_source}, {repeats} repeat{'s' * (repeats > 1)}{zero}"
        rows.append(compare(f"L={length}", "peak memory (MiB)", mebibytes[0], mebibytes[1], source))
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return Section(
        "attention",
        "Attention, explicit vs fused",
        "explicit (mmcourse.attention.scaled_dot_product_attention)",
        "F.scaled_dot_product_attention(is_causal=True)",
        tuple(rows),
        f"causal, batch 1, {n_heads} heads, head_dim {head_dim}, {dtype}; memory is what the call added at its peak",
    )


def generation_section(
    config: GPTConfig, prompt_length: int, new_tokens: Sequence[int], repeats: int, batch: int = 1, device: str = "cpu"
) -> Section:
    """Greedy generation with mmcourse.generation.generate: with the KV cache (one new token per forward) vs
    without (the whole sequence each step); tokens/s per number of new tokens."""
    check_positive_int("prompt_length", prompt_length)
    check_positive_int("repeats", repeats)
    check_positive_int("batch", batch)
    new_tokens = tuple(new_tokens)
    if not new_tokens or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in new_tokens):
        raise ValueError(f"new_tokens must be positive ints, got {new_tokens!r}")
    if prompt_length + max(new_tokens) > config.context_length:
        raise ValueError(
            f"prompt_length + new_tokens = {prompt_length + max(new_tokens)} must fit context_length="
            f"{config.context_length}: past it the window slides and the cache is rebuilt each step"
        )
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(config.vocab_size, (batch, prompt_length), generator=generator).to(device)  # (batch, T)
    rows = []
    for count in new_tokens:

        def cached(count: int = count) -> torch.Tensor:
            return generate(model, prompt, count, temperature=0, use_cache=True)  # (batch, T + count)

        def uncached(count: int = count) -> torch.Tensor:
            return generate(model, prompt, count, temperature=0, use_cache=False)  # (batch, T + count)

        if not torch.equal(cached(), uncached()):  # doubles as the warm-up
            raise RuntimeError("generation with and without the KV cache gave different tokens")
        seconds = time_pair(cached, uncached, repeats, warmup=0, device=device)
        rates = [_per_second(batch * count, side) for side in seconds]
        case = f"prompt {prompt_length} + {count} new"
        rows.append(compare(case, "tokens/s", *rates, _measured(repeats)))
    return Section(
        "generation",
        "GPT generation with the KV cache",
        "use_cache=True",
        "use_cache=False",
        tuple(rows),
        f"mmcourse.gpt.GPT d_model={config.d_model}, {config.n_layers} layers, {config.n_heads} heads, "
        f"vocab {config.vocab_size}; greedy, batch {batch}; both give the same tokens (checked)",
    )


def _next_token_batch(config: GPTConfig, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (seed 0), batch × (context_length + 1), split into inputs and next-token targets (batch, T)."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(config.vocab_size, (batch, config.context_length + 1), generator=generator).to(device)
    return tokens[:, :-1], tokens[:, 1:]


def _training_steps(
    logits_of: Callable[[], torch.Tensor],
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    bf16: bool = False,
) -> None:
    """``steps`` steps of forward (``logits_of``), next-token loss, backward and optimizer step; the forward and the
    loss under CUDA bf16 autocast when ``bf16``."""
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = next_token_loss(logits_of(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def training_section(config: GPTConfig, batch: int, steps: int, repeats: int, device: str = "cpu") -> Section:
    """Training throughput (forward, next-token loss, backward, AdamW step) of our GPT vs transformers'
    GPT2LMHeadModel built from the same config with the same initial weights (mmcourse.convert.gpt.to_hf_gpt2)."""
    check_positive_int("batch", batch)
    check_positive_int("steps", steps)
    check_positive_int("repeats", repeats)
    torch.manual_seed(0)
    ours = GPT(config).to(device).train()
    theirs = to_hf_gpt2(ours).train()  # same config, same weights
    length = config.context_length
    inputs, targets = _next_token_batch(config, batch, device)  # (batch, T) each
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=inputs, use_cache=False).logits, ours(inputs))
    our_optimizer = torch.optim.AdamW(ours.parameters(), lr=3e-4)
    their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=3e-4)

    seconds = time_pair(
        lambda: _training_steps(lambda: ours(inputs), targets, our_optimizer, steps),
        lambda: _training_steps(
            lambda: theirs(input_ids=inputs, use_cache=False).logits, targets, their_optimizer, steps
        ),
        repeats,
        device=device,
    )
    rates = [_per_second(steps * batch * length, side) for side in seconds]
    row = compare(f"batch {batch} × {length} tokens, {steps} steps", "tokens/s", *rates, _measured(repeats))
    return Section(
        "training",
        "GPT training throughput",
        "mmcourse.gpt.GPT",
        f"transformers GPT2LMHeadModel ({theirs.config._attn_implementation} attention)",
        (row,),
        f"same config and initial weights (to_hf_gpt2; logits checked equal): d_model={config.d_model}, "
        f"{config.n_layers} layers, {config.n_heads} heads, vocab {config.vocab_size}; forward + loss + backward "
        "+ AdamW step, float32",
    )


def reference_section(config: GPTConfig, batch: int, steps: int, repeats: int, device: str = "cpu") -> Section:
    """Training throughput of our GPT vs a minimal plain-torch GPT of the same sizes
    (:class:`mmcourse.book.reference_gpt.MinimalGPT`: fused q/k/v, no biases, fused attention, tied head): once
    with chapter 4's options (biases), once with ``bias=False``, so that the rows show what the biases cost."""
    from mmcourse.book.reference_gpt import MinimalGPT

    check_positive_int("batch", batch)
    check_positive_int("steps", steps)
    check_positive_int("repeats", repeats)
    length = config.context_length
    inputs, targets = _next_token_batch(config, batch, device)  # (batch, T) each
    torch.manual_seed(0)
    reference = MinimalGPT(config.vocab_size, length, config.d_model, config.n_heads, config.n_layers).to(device)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=3e-4)

    rows, counts = [], [f"reference {parameter_count(reference):,} parameters"]
    for name, options in (("chapter 4's options", {}), ("bias=False", {"bias": False})):
        torch.manual_seed(0)
        ours = GPT(replace(config, **options)).to(device).train()
        counts.append(f"ours with {name} {parameter_count(ours):,}")
        optimizer = torch.optim.AdamW(ours.parameters(), lr=3e-4)
        seconds = time_pair(
            lambda ours=ours, optimizer=optimizer: _training_steps(lambda: ours(inputs), targets, optimizer, steps),
            lambda: _training_steps(lambda: reference(inputs), targets, reference_optimizer, steps),
            repeats,
            device=device,
        )
        rates = [_per_second(steps * batch * length, side) for side in seconds]
        rows.append(compare(f"ours with {name}, batch {batch} × {length}, {steps} steps", "tokens/s", *rates,
                            _measured(repeats)))  # fmt: skip
    return Section(
        "reference",
        "GPT training throughput against a minimal GPT",
        "mmcourse.gpt.GPT",
        "MinimalGPT (mmcourse.book.reference_gpt: fused q/k/v, no biases, fused attention, tied head)",
        tuple(rows),
        f"d_model={config.d_model}, {config.n_layers} layers, {config.n_heads} heads, vocab {config.vocab_size}; "
        f"forward + loss + backward + AdamW step, float32, random tokens (throughput only: the loss each reaches on "
        f"real text is not compared here); {'; '.join(counts)}",
    )


def compile_section(config: GPTConfig, batch: int, steps: int, repeats: int, device: str = "cpu") -> Section:
    """Does ``torch.compile`` pay off here? GPT training throughput with the forward compiled vs eager: two copies
    of one model with the same weights, each with its own AdamW; both under bf16 autocast where ``train`` would use
    it (``uses_bf16``: a GPU that computes in bf16), as the gpu profile trains. The time to compile (the first
    step) is reported apart from the throughput."""
    check_positive_int("batch", batch)
    check_positive_int("steps", steps)
    check_positive_int("repeats", repeats)
    torch.manual_seed(0)
    eager = GPT(config).to(device).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)  # OptimizedModule: calls run the compiled forward of twin
    length = config.context_length
    inputs, targets = _next_token_batch(config, batch, device)  # (batch, T) each
    optimizers = {id(eager): torch.optim.AdamW(eager.parameters(), lr=3e-4)}
    optimizers[id(compiled)] = torch.optim.AdamW(twin.parameters(), lr=3e-4)
    bf16 = uses_bf16(TrainConfig(autocast_bf16=True), torch.device(device))  # as the gpu profile's training

    def train(model: nn.Module, count: int = steps) -> None:
        _training_steps(lambda: model(inputs), targets, optimizers[id(model)], count, bf16)

    torch._dynamo.reset()  # forget what this process compiled before ...
    with tempfile.TemporaryDirectory() as cache, environment(TORCHINDUCTOR_CACHE_DIR=cache):  # ... and the disk cache
        _synchronize(device)
        start = time.perf_counter()
        train(compiled, 1)  # the first call compiles the forward and the backward
        _synchronize(device)
        compile_seconds = time.perf_counter() - start
    seconds = time_pair(lambda: train(compiled), lambda: train(eager), repeats, device=device)
    rates = [_per_second(steps * batch * length, side) for side in seconds]
    row = compare(f"batch {batch} × {length} tokens, {steps} steps", "tokens/s", *rates, _measured(repeats))
    precision = "bf16 autocast" if bf16 else "float32"
    return Section(
        "compile",
        "torch.compile: GPT training throughput",
        "torch.compile(GPT)",
        "the same GPT, eager",
        (row,),
        f"d_model={config.d_model}, {config.n_layers} layers, {precision}; forward + loss + backward + AdamW step; "
        f"compiling (the first step, from an empty cache) took {compile_seconds:.1f} s, not in the throughput",
    )


def _padded_batch(
    batch: int, length: int, low: int, high: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids in [low, high) (batch, length) and a right-padded attention_mask (batch, length) whose rows keep
    between length/2 and length tokens; padded positions hold id 0."""
    kept = torch.randint(max(1, length // 2), length + 1, (batch,), generator=generator)  # (batch,)
    attention_mask = (torch.arange(length) < kept[:, None]).long()  # (batch, length), 1 = real token
    input_ids = torch.randint(low, high, (batch, length), generator=generator) * attention_mask  # (batch, length)
    return input_ids, attention_mask


def bert_section(config: BertConfig, batch: int, length: int, repeats: int, device: str = "cpu") -> Section:
    """Forward pass of our BertModel vs transformers' BertModel with the same config and weights (to_hf_bert),
    with its sdpa and its eager attention, on a padded batch."""
    check_positive_int("batch", batch)
    check_positive_int("length", length)
    check_positive_int("repeats", repeats)
    if length > config.context_length:
        raise ValueError(f"length={length} must be <= context_length={config.context_length}")
    torch.manual_seed(0)
    ours = BertModel(config).to(device).eval()
    theirs = to_hf_bert(ours).eval()  # same config, same weights
    input_ids, attention_mask = _padded_batch(batch, length, 1, config.vocab_size, torch.Generator().manual_seed(0))
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)  # (batch, length) each
    rows = []
    for implementation in ("sdpa", "eager"):
        theirs.set_attn_implementation(implementation)
        with torch.no_grad():
            real = attention_mask.bool()  # (batch, length): compare the real tokens' states only
            expected = ours(input_ids, attention_mask=attention_mask).hidden_states[real]
            actual = theirs(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[real]
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            seconds = time_pair(
                lambda: ours(input_ids, attention_mask=attention_mask),
                lambda: theirs(input_ids=input_ids, attention_mask=attention_mask),
                repeats,
                device=device,
            )
        case = f"batch {batch} × {length} (padded), HF {implementation}"
        rows.append(compare(case, "forward (ms)", *map(_milliseconds, seconds), _measured(repeats)))
    return Section(
        "bert",
        "BERT forward",
        "mmcourse.bert.BertModel",
        "transformers BertModel (attention as named)",
        tuple(rows),
        f"same config and weights (to_hf_bert; hidden states checked equal): d_model={config.d_model}, "
        f"{config.n_layers} layers, {config.n_heads} heads, d_ff={config.d_ff}, vocab {config.vocab_size}; eval, "
        "no gradients",
    )


def hf_clip_like(image: ViTConfig, text: TextEncoderConfig, embed_dim: int) -> transformers.CLIPModel:
    """A transformers CLIPModel of the same widths, depths, heads, image and patch size and text length as our
    CLIP(VisionTransformer(image), TextEncoder(text)); exact GELU as ours; its own random weights."""
    from transformers import CLIPConfig as HFCLIPConfig
    from transformers import CLIPModel

    check_positive_int("embed_dim", embed_dim)
    hf_config = HFCLIPConfig(
        text_config={
            "vocab_size": text.vocab_size,
            "hidden_size": text.d_model,
            "intermediate_size": text.d_ff,
            "num_hidden_layers": text.n_layers,
            "num_attention_heads": text.n_heads,
            "max_position_embeddings": text.context_length,
            "hidden_act": "gelu",
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": text.vocab_size - 1,
        },
        vision_config={
            "hidden_size": image.d_model,
            "intermediate_size": image.d_ff,
            "num_hidden_layers": image.n_layers,
            "num_attention_heads": image.n_heads,
            "image_size": image.image_size,
            "patch_size": image.patch_size,
            "num_channels": image.channels,
            "hidden_act": "gelu",
        },
        projection_dim=embed_dim,
    )
    return CLIPModel(hf_config)


def clip_section(
    image: ViTConfig, text: TextEncoderConfig, embed_dim: int, batch: int, repeats: int, device: str = "cpu"
) -> Section:
    """Forward pass with the contrastive loss, N image-caption pairs: our CLIP (ViT + text encoder) vs transformers'
    CLIPModel of a comparable config (hf_clip_like); the weights differ."""
    check_positive_int("batch", batch)
    check_positive_int("repeats", repeats)
    torch.manual_seed(0)
    ours = CLIP(VisionTransformer(image), TextEncoder(text), CLIPConfig(embed_dim=embed_dim)).to(device).eval()
    theirs = hf_clip_like(image, text, embed_dim).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    shape = (batch, image.channels, image.image_size, image.image_size)
    images = torch.rand(shape, generator=generator).to(device)  # (N, C, H, W)
    input_ids, attention_mask = _padded_batch(batch, text.context_length, 3, text.vocab_size - 1, generator)
    last = attention_mask.sum(dim=1) - 1  # (N,) the last real token: end of text, where both towers pool
    input_ids[torch.arange(batch), last] = text.vocab_size - 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)  # (N, L) each
    with torch.no_grad():
        seconds = time_pair(
            lambda: ours(images, input_ids, attention_mask),
            lambda: theirs(input_ids=input_ids, pixel_values=images, attention_mask=attention_mask, return_loss=True),
            repeats,
            device=device,
        )
    case = f"{batch} pairs, {image.image_size}px/{image.patch_size}, text {text.context_length}"
    row = compare(case, "forward (ms)", *map(_milliseconds, seconds), _measured(repeats))
    return Section(
        "clip",
        "CLIP forward",
        "mmcourse.clip.CLIP (VisionTransformer + TextEncoder)",
        f"transformers CLIPModel ({theirs.config._attn_implementation} attention)",
        (row,),
        f"comparable config, NOT the same weights: vision d_model={image.d_model} × {image.n_layers} layers, text "
        f"d_model={text.d_model} × {text.n_layers} layers, {image.n_heads}/{text.n_heads} heads, embed_dim "
        f"{embed_dim}; transformers' text tower is causal and its vision tower adds a pre-LayerNorm; loss included",
    )


@dataclass(frozen=True)
class CachedRun:
    """One notebook execution that ``make book`` stored in Jupyter Book's execution cache."""

    seconds: float
    recorded: str  # when the build cached it, UTC
    current: bool  # the cached run is of the notebook's code as it is now


def cached_execution_times(cache_dir: Path, notebooks: Sequence[Path]) -> dict[str, CachedRun]:
    """Execution times that ``make book`` recorded for ``notebooks``, by file name, from its execution cache.

    In cache mode MyST-NB keeps each executed notebook in a jupyter-cache folder (``book/build.py``: one per
    profile, ``_build/.jupyter_cache/<profile>``) with the time in the record's ``data["execution_seconds"]``.
    The record of the notebook's code as it is now is used; failing that, the newest record of that file name
    (``current=False``). A folder without a cache gives {} and is not created.
    """
    if not (Path(cache_dir) / "global.db").is_file():
        return {}
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    records = cache.list_cache_records()
    found = {}
    for notebook in map(Path, notebooks):
        try:
            record, current = cache.match_cache_file(str(notebook)), True
        except KeyError:  # no record of this code: the notebook changed since, or was never built
            same_file = [record for record in records if Path(record.uri).name == notebook.name]
            if not same_file:
                continue
            record, current = max(same_file, key=lambda record: record.created), False
        seconds = (record.data or {}).get("execution_seconds")
        if seconds is not None:
            found[notebook.name] = CachedRun(float(seconds), record.created.strftime("%Y-%m-%d %H:%M UTC"), current)
    return found


def notebooks_section(root: Path | None, execute: bool, timeout: int = 600) -> Section:
    """Each chapter's execution time: the fast profile executed now (when ``execute``), the cpu profile as the last
    ``make book`` recorded it or, failing that, as ``make runbook`` measured it on this machine (re-running it would
    take over an hour on two cores)."""
    title, ours, reference = "Chapter notebooks, execution time", "fast profile", f"{PROFILE_CACHE} profile"
    if root is None:
        return Section("notebooks", title, ours, reference, (), "not measured: mmcourse is not run from a checkout")
    cache_dir = notebook_cache_dir(root, PROFILE_CACHE)
    paths = [path for path in chapter_notebooks(root) if path.stem[:2].isdigit()]  # the chapters, not appendices
    cached = cached_execution_times(cache_dir, paths)
    runbook_runs = runbook_times(Path(root) / "book" / "runbook", machine_name(), PROFILE_CACHE)
    workers = min(2, cores())  # as make test runs them: two at a time on two cores, one thread each
    executions = execute_notebooks(paths, "fast", workers=workers, threads=1, timeout=timeout) if execute else []
    rows, errors = [], []
    for index, notebook in enumerate(paths):
        fast, fast_source = None, "fast: not measured (--quick executes no notebook)"
        if execute:
            execution = executions[index]
            if execution.problems():  # reported in the table and the exit code
                fast_source = f"fast: failed ({execution.failure.ename if execution.failure else 'a check'})"
                errors += execution.problems()
            else:
                fast, fast_source = [execution.seconds], "fast: executed now (the book's executor, 1 run)"
        run = cached.get(notebook.name)
        measured = runbook_runs.get(notebook.stem)
        if run is None and measured is not None:
            threads = f", {measured.torch_threads} torch thread(s)" if measured.torch_threads else ""
            cpu, cpu_source = [measured.seconds], f"{PROFILE_CACHE}: book/runbook, {measured.date}{threads}"
        elif run is None:
            where = "no cache there" if not (cache_dir / "global.db").is_file() else "no record of this notebook"
            runbook = "no finished run in this machine's book/runbook file"
            cpu, cpu_source = None, f"{PROFILE_CACHE}: not measured (no `make book` run: {where}; {runbook})"
        else:
            changed = "" if run.current else ", notebook changed since"
            cpu, cpu_source = [run.seconds], f"{PROFILE_CACHE}: `make book` cache, {run.recorded}{changed}"
        rows.append(compare(notebook.stem, "execution (s)", fast, cpu, f"{fast_source}; {cpu_source}"))
    note = (
        f"fast: executed now by the book's executor, {workers} at a time, one torch thread each (OMP_NUM_THREADS=1), "
        f"as make test runs them; {PROFILE_CACHE}: MyST-NB's execution_seconds in {cache_dir.relative_to(root)} "
        "(jupyter-cache), as make book ran it, else this machine's book/runbook file; not re-run"
    )
    return Section("notebooks", title, ours, reference, tuple(rows), note, tuple(errors))


# ---------------------------------------------------------------------------------------------------------------
# Sizes, the report, the table, the command
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSizes:
    """What ``make bench`` measures and how often; FULL fits in well under 10 minutes on two cores."""

    repeats: int
    attention_lengths: tuple[int, ...]
    gpt: GPTConfig  # generation and training
    prompt_length: int
    new_tokens: tuple[int, ...]
    train_batch: int
    train_steps: int  # optimiser steps per timed repeat
    bert: BertConfig
    bert_batch: int
    bert_length: int
    vit: ViTConfig
    text: TextEncoderConfig
    embed_dim: int
    clip_batch: int
    execute_notebooks: bool = field(default=True)

    def __post_init__(self) -> None:
        for name in ("repeats", "prompt_length", "train_batch", "train_steps", "bert_batch", "bert_length"):
            check_positive_int(name, getattr(self, name))
        for name in ("embed_dim", "clip_batch"):
            check_positive_int(name, getattr(self, name))


FULL = BenchSizes(
    repeats=5,
    attention_lengths=(256, 512, 1024, 2048),
    gpt=GPTConfig(vocab_size=65, context_length=256, d_model=128, n_heads=4, n_layers=4),  # chapter 4's size
    prompt_length=16,
    new_tokens=(32, 160),
    train_batch=8,
    train_steps=2,
    bert=BertConfig(vocab_size=8000, context_length=128, d_model=256, n_heads=4, n_layers=4, d_ff=1024),
    bert_batch=8,
    bert_length=128,
    vit=ViTConfig(),  # chapter 5's tower: 48 px, patch 8, d_model 128, 4 layers
    text=TextEncoderConfig(),  # 32 tokens, d_model 128, 2 layers
    embed_dim=128,
    clip_batch=64,
)
QUICK = BenchSizes(
    repeats=1,
    attention_lengths=(16, 32),
    gpt=GPTConfig(vocab_size=32, context_length=16, d_model=16, n_heads=2, n_layers=1),
    prompt_length=4,
    new_tokens=(4,),
    train_batch=2,
    train_steps=1,
    bert=BertConfig(vocab_size=64, context_length=16, d_model=16, n_heads=2, n_layers=1, d_ff=32),
    bert_batch=2,
    bert_length=16,
    vit=ViTConfig(image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=1, d_ff=32),
    text=TextEncoderConfig(vocab_size=64, context_length=8, d_model=16, n_heads=2, n_layers=1, d_ff=32),
    embed_dim=16,
    clip_batch=4,
    execute_notebooks=False,
)


def run_bench(sizes: BenchSizes, device: str = "cpu", root: Path | None = None) -> list[Section]:
    """Every section, in SECTIONS order, at ``sizes`` on ``device``; ``root``: the checkout with the notebooks."""
    repeats = sizes.repeats
    builders: dict[str, Callable[[], Section]] = {
        "attention": lambda: attention_section(sizes.attention_lengths, repeats, device=device),
        "generation": lambda: generation_section(sizes.gpt, sizes.prompt_length, sizes.new_tokens, repeats, 1, device),
        "training": lambda: training_section(sizes.gpt, sizes.train_batch, sizes.train_steps, repeats, device),
        "reference": lambda: reference_section(sizes.gpt, sizes.train_batch, sizes.train_steps, repeats, device),
        "compile": lambda: compile_section(sizes.gpt, sizes.train_batch, sizes.train_steps, repeats, device),
        "bert": lambda: bert_section(sizes.bert, sizes.bert_batch, sizes.bert_length, repeats, device),
        "clip": lambda: clip_section(sizes.vit, sizes.text, sizes.embed_dim, sizes.clip_batch, repeats, device),
        "notebooks": lambda: notebooks_section(root, sizes.execute_notebooks),
    }
    sections = []
    for name in SECTIONS:
        _progress(f"{name} ...")
        start = time.perf_counter()
        sections.append(builders[name]())
        _progress(f"{name}: {time.perf_counter() - start:.1f} s")
    return sections


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none): above the core count, other processes
    competed with the measurements."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def as_json(
    sections: Sequence[Section], sizes: BenchSizes, mode: str, device: str, seconds: float, load_at_start: float | None
) -> dict:
    """The report as plain data: the machine, the sizes, and every section's rows (None where not measured)."""
    return {
        "mode": mode,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": describe(),
        "machine": machine_name(),
        "torch_device": device,
        "torch": torch.__version__,
        "transformers": _package_version("transformers"),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "duration_s": round(seconds, 1),
        "load_average_start": load_at_start,
        "load_average_end": load_average(),
        "ratio": "ours / reference per repeat (repeat i of both ran back to back); median, minimum, maximum",
        "sizes": asdict(sizes),
        "sections": {
            section.name: {
                "title": section.title,
                "ours": section.ours,
                "reference": section.reference,
                "note": section.note,
                "errors": list(section.errors),
                "rows": [asdict(row) for row in section.rows],
            }
            for section in sections
        },
    }


def format_number(value: float) -> str:
    """Three significant digits, no exponent for everyday sizes: 1,234 · 123 · 12.3 · 1.23 · 0.123."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return "0" if magnitude == 0 else f"{value:.3g}"


def format_summary(summary: Summary | None, suffix: str = "") -> str:
    """'median [min–max]' (the spread left out for a single measurement); '—' where not measured."""
    if summary is None:
        return "—"
    text = format_number(summary.median) + suffix
    if summary.repeats > 1:
        text += f" [{format_number(summary.minimum)}–{format_number(summary.maximum)}]"
    return text


def format_table(sections: Sequence[Section], header: str = "") -> str:
    """The report as text: per section a title naming ours and the reference, its note, then one aligned line per
    row (case, metric, ours, reference, ours ÷ reference, source) and any errors."""
    columns = ("case", "metric", "ours", "reference", "ours ÷ ref", "source")
    cells = {
        id(row): (
            row.case,
            row.metric,
            format_summary(row.ours),
            format_summary(row.reference),
            format_summary(row.ratio, "×"),
            row.source,
        )
        for section in sections
        for row in section.rows
    }
    widths = [max([len(name), *(len(line[index]) for line in cells.values())]) for index, name in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  " + "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)).rstrip()

    lines = [header] if header else []
    lines.append("Each pair ran back to back in this run. Values: median [min–max] over the repeats; ratio per repeat.")
    for section in sections:
        lines += ["", f"{section.title} — ours: {section.ours}; reference: {section.reference}"]
        if section.note:
            lines.append(textwrap.fill(section.note, 116, initial_indent="  (", subsequent_indent="   ") + ")")
        lines.append(line(columns))
        lines += [line(cells[id(row)]) for row in section.rows]
        lines += [f"  ERROR: {error}" for error in section.errors]
    return "\n".join(lines)


def default_output() -> Path:
    """_build/bench/bench.json in the checkout (or under the working directory when not run from one)."""
    root = repository_root()
    return (root if root is not None else Path.cwd()) / "_build" / "bench" / "bench.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.book.bench",
        description="Our pieces beside torch's and transformers' on this machine, and each chapter's execution time.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat, no notebook execution (CI)")
    parser.add_argument("--output", type=Path, default=None, help="the JSON report (default: _build/bench/bench.json)")
    parser.add_argument(
        "--repeats", type=positive_int_argument, default=None, help="timed repeats per figure (default: 5)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if available")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    output = args.output if args.output is not None else default_output()
    if output.is_dir():
        parser.error(f"--output {output} is a directory: give the path of a .json file")
    sizes = QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = replace(sizes, repeats=args.repeats)
    mode = "quick" if args.quick else "full"
    start, load_at_start = time.perf_counter(), load_average()
    sections = run_bench(sizes, device, repository_root())
    seconds = time.perf_counter() - start
    report = as_json(sections, sizes, mode, device, seconds, load_at_start)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    threads, loads = report["torch_threads"], (report["load_average_start"], report["load_average_end"])
    header = f"mmcourse bench ({mode}, {seconds:.0f} s) | {report['device']} | torch threads: {threads}"
    header += f" | load average: {loads[0]} at the start, {loads[1]} at the end"
    print(format_table(sections, header))
    print(f"\nJSON: {output}")
    failed = [error for section in sections for error in section.errors]
    if failed:
        print(f"{len(failed)} measurement(s) failed: see ERROR above.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
