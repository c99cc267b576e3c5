"""The device to compute on, seeding, and the one-line summary printed at the top of each chapter."""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from mmcourse.profiles import current_profile


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
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def machine_name() -> str:
    """A short description of this machine: the GPU's name, or the CPU and its core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {cores} cores"


def describe() -> str:
    """One line: profile, device, machine, torch version."""
    device = best_device()
    return f"mmcourse | profile={current_profile()} | device={device} ({machine_name()}) | torch {torch.__version__}"


def setup(seed: int = 0) -> torch.device:
    """Seed everything, print the summary line and return the best device: the first code line of a chapter."""
    set_seed(seed)
    print(describe())
    return best_device()
