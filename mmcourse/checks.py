"""Input checks shared by the package's configs, models and functions: each raises an error naming the bad field.

This module imports torch only inside the checks that need it, so that command-line tools can use the argparse
helper without loading torch.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def check_positive_int(name: str, value: object) -> None:
    """TypeError naming ``name`` unless ``value`` is an int (a bool does not count); ValueError unless it is >= 1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_int(name: str, value: object, minimum: int | None = None) -> None:
    """TypeError naming ``name`` unless ``value`` is an int (a bool does not count); ValueError unless it is at
    least ``minimum`` (when given)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_finite_number(name: str, value: object) -> None:
    """TypeError naming ``name`` unless ``value`` is an int or a float (a bool does not count); ValueError when it
    is inf or NaN."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number (an int or a float), got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive_number(name: str, value: object) -> None:
    """TypeError naming ``name`` unless ``value`` is an int or a float (not a bool); ValueError unless finite, > 0."""
    check_finite_number(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_dropout(name: str, value: object) -> None:
    """TypeError naming ``name`` unless ``value`` is an int or a float (not a bool); ValueError unless in [0, 1)."""
    check_finite_number(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_stage_widths(widths: object, image_size: int) -> None:
    """A convolutional stack's ``widths``, one stage each halving the image: a non-empty tuple of positive ints, and
    ``image_size`` divisible by 2 ** len(widths). ValueError (TypeError for a width that is no int) otherwise."""
    if not isinstance(widths, tuple) or not widths:
        raise ValueError(f"widths must be a non-empty tuple of ints, got {widths!r}")
    for width in widths:
        check_positive_int("widths", width)
    if image_size % 2 ** len(widths):
        raise ValueError(f"image_size={image_size} must be divisible by 2**len(widths)={2 ** len(widths)}: each "
                         "stage halves it")  # fmt: skip


def check_token_ids(name: str, ids: Tensor, vocab_size: int, size_name: str = "vocab_size") -> None:
    """Raise unless ``ids`` is an int64 / int32 tensor of ids in [0, vocab_size): TypeError for another type,
    ValueError naming ``name``, the valid range (``size_name=vocab_size``) and the ids found outside it.

    The range check reads the tensor (one reduction and one wait for the device): call it once per call at a model's
    entry point, for the ids that come from outside, not inside layers or once per generated token.
    """
    import torch

    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        kind = f"a {ids.dtype} tensor" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an int64 or int32 tensor of token ids, got {kind}")
    outside = (ids < 0) | (ids >= vocab_size)  # same shape as ids
    if bool(outside.any()):
        found = ids[outside]
        raise ValueError(
            f"{name} must hold ids in [0, {size_name}={vocab_size}), got {found.numel()} outside that range "
            f"({found.min().item()}…{found.max().item()})"
        )


def positive_int_argument(text: str) -> int:
    """An argparse ``type`` for options that take a positive int; argparse names the option in its error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value
