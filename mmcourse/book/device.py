"""The device to compute on, seeding, and the one-line summary printed at the top of each chapter."""

from __future__ import annotations

import os
import platform

import torch

from mmcourse.book.profiles import current_profile
from mmcourse.train import best_device, set_seed


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
