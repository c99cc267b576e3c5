"""Input checks shared by the package's configs and functions: each raises ValueError naming the bad field."""

from __future__ import annotations

import argparse


def check_positive_int(name: str, value: object) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= 1 (a bool does not count as an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def positive_int_argument(text: str) -> int:
    """An argparse ``type`` for options that take a positive int; argparse names the option in its error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value
