"""The shared input checks."""

from __future__ import annotations

import math

import pytest

from mmcourse.checks import check_positive_int


def test_positive_int_accepts_ints_from_one() -> None:
    for value in (1, 7, 10**9):
        check_positive_int("n", value)


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)]
)
def test_positive_int_rejects_the_rest_naming_the_field(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="n_layers must be a positive int"):
        check_positive_int("n_layers", value)


def test_positive_int_argument_reads_positive_ints_and_rejects_the_rest() -> None:
    import argparse

    from mmcourse.checks import positive_int_argument

    assert positive_int_argument("12") == 12
    for text in ("0", "-1", "2.5", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a positive int, got '{text}'"):
            positive_int_argument(text)


def test_int_and_finite_number_checks_raise_type_error_for_types_and_value_error_for_values() -> None:
    from mmcourse.checks import check_finite_number, check_int

    check_int("steps", 0, minimum=0)
    check_finite_number("rate", 1)
    check_finite_number("rate", -2.5)
    for value in (2.5, "3", True, None):
        with pytest.raises(TypeError, match="steps must be an int"):
            check_int("steps", value)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        check_int("steps", 0, minimum=1)
    for value in ("1", True, None, [1.0]):
        with pytest.raises(TypeError, match="rate must be a number"):
            check_finite_number("rate", value)
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="rate must be a finite number"):
            check_finite_number("rate", value)


def test_token_ids_check_names_the_argument_and_the_valid_range() -> None:
    import torch

    from mmcourse.checks import check_token_ids

    check_token_ids("input_ids", torch.tensor([[0, 4], [3, 1]]), 5)
    check_token_ids("input_ids", torch.zeros(2, 0, dtype=torch.int32), 5)  # nothing to check
    with pytest.raises(ValueError, match=r"input_ids must hold ids in \[0, vocab_size=5\), got 2 outside .*-1…7"):
        check_token_ids("input_ids", torch.tensor([[0, 7], [-1, 1]]), 5)
    with pytest.raises(ValueError, match=r"token_type_ids must hold ids in \[0, type_vocab_size=2\)"):
        check_token_ids("token_type_ids", torch.tensor([[0, 2]]), 2, "type_vocab_size")
    for ids in (torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), [[0, 1]]):
        with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
            check_token_ids("input_ids", ids, 5)


def test_importing_the_checks_does_not_import_torch() -> None:
    """The book's build imports positive_int_argument from here, and must stay quick: torch loads only in a check."""
    import subprocess
    import sys

    code = "import sys, mmcourse.checks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_dropout_and_positive_number_checks_name_the_field() -> None:
    from mmcourse.checks import check_dropout, check_positive_number

    check_dropout("dropout", 0)
    check_dropout("dropout", 0.5)
    check_positive_number("eps", 1e-12)
    for check, bad_values in ((check_dropout, (1.0, -0.1, math.nan)), (check_positive_number, (0, -1.0, math.inf))):
        for value in bad_values:
            with pytest.raises(ValueError, match="field"):
                check("field", value)
        for value in ("0.1", None, True):
            with pytest.raises(TypeError, match="field must be a number"):
                check("field", value)


@pytest.mark.parametrize(
    ("config", "field", "value", "error"),
    [
        ("mmcourse.bert:BertConfig", "norm_eps", math.inf, ValueError),
        ("mmcourse.bert:BertConfig", "dropout", "0.1", TypeError),
        ("mmcourse.clip:CLIPConfig", "init_temperature", math.nan, ValueError),
        ("mmcourse.clip:CLIPConfig", "max_scale", "100", TypeError),
        ("mmcourse.clip:TextEncoderConfig", "dropout", "0.1", TypeError),
        ("mmcourse.fusion:FusionConfig", "image_position_std", math.inf, ValueError),
        ("mmcourse.fusion:CaptionerConfig", "pad_id", 2.5, TypeError),
        ("mmcourse.transformer:TransformerConfig", "dropout", "0.1", TypeError),
        ("mmcourse.vision:ViTConfig", "dropout", "0.1", TypeError),
        ("mmcourse.gpt:GPTConfig", "rope_base", 0.0, ValueError),
    ],
)
def test_configs_reject_a_wrong_type_or_value_naming_the_field(
    config: str, field: str, value: object, error: type[Exception]
) -> None:
    import dataclasses
    import importlib
    import inspect

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    required = [p.name for p in inspect.signature(cls).parameters.values() if p.default is inspect.Parameter.empty]
    valid = cls(**{name: 64 if "vocab" in name or "size" in name else 4 for name in required})
    with pytest.raises(error, match=field):
        dataclasses.replace(valid, **{field: value})
