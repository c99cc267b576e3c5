"""The shared input checks."""

from __future__ import annotations

import pytest

from mmcourse.checks import check_positive_int


def test_positive_int_accepts_ints_from_one() -> None:
    for value in (1, 7, 10**9):
        check_positive_int("n", value)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_positive_int_rejects_the_rest_naming_the_field(value: object) -> None:
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        check_positive_int("n_layers", value)


def test_positive_int_argument_reads_positive_ints_and_rejects_the_rest() -> None:
    import argparse

    from mmcourse.checks import positive_int_argument

    assert positive_int_argument("12") == 12
    for text in ("0", "-1", "2.5", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a positive int, got '{text}'"):
            positive_int_argument(text)
