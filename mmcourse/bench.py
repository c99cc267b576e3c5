"""Measuring what pieces cost: wall-clock time (median of repeats) and peak memory, on CPU or CUDA.

Peak memory on CUDA comes from the caching allocator's statistics. On the CPU torch keeps no such statistics:
on Linux we reset the process's peak resident memory (``/proc/self/clear_refs``), run the call, and read how far
the peak (``VmHWM``) rose above the memory in use before it. Elsewhere CPU memory is reported as not measured.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mmcourse.attention import scaled_dot_product_attention

ATTENTION_IMPLEMENTATIONS = ("explicit", "fused")


@dataclass(frozen=True)
class Timing:
    """Median and spread (min, max) of repeated wall-clock measurements, in seconds."""

    median: float
    minimum: float
    maximum: float
    repeats: int


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
    return Timing(statistics.median(times), min(times), max(times), repeats)


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


def as_records(costs: list[AttentionCost]) -> list[dict]:
    """Plain dictionaries (for a table or JSON)."""
    return [asdict(cost) for cost in costs]
