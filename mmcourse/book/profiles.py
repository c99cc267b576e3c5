"""Run profiles: one switch, ``MMCOURSE_PROFILE``, sizes every chapter.

- ``fast``: tests and CI; tiny sizes, seconds per notebook, still asserting that learning happens.
- ``cpu``: the default without a GPU; results worth reading within minutes per chapter on 2 cores.
- ``gpu``: the default when CUDA is available; the sizes that reproduce the published numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

PROFILES: tuple[str, ...] = ("fast", "cpu", "gpu")
ENV_VAR = "MMCOURSE_PROFILE"

T = TypeVar("T")


def default_profile() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def current_profile() -> str:
    """The profile named by ``MMCOURSE_PROFILE``, or the machine's default when it is unset or empty."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return default_profile()
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; valid profiles are: {', '.join(PROFILES)}")
    return value


def select(configs: Mapping[str, T], profile: str | None = None) -> T:
    """Pick the config for ``profile`` (default: the current one) from ``{"fast": ..., "cpu": ..., "gpu": ...}``."""
    missing = [name for name in PROFILES if name not in configs]
    extra = [name for name in configs if name not in PROFILES]
    if missing or extra:
        raise ValueError(
            f"configs must have exactly the keys {', '.join(PROFILES)}; missing={missing}, unknown={extra}"
        )
    profile = current_profile() if profile is None else profile
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not a profile; valid profiles are: {', '.join(PROFILES)}")
    return configs[profile]
