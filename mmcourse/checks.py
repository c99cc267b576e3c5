"""Input checks shared by the package's configs and functions: each raises ValueError naming the bad field."""

from __future__ import annotations


def check_positive_int(name: str, value: object) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= 1 (a bool does not count as an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
