"""Binary sentiment splits of the installed snippets: fixed, disjoint, and the near-zero band left out."""

from __future__ import annotations

import pytest

from mmcourse.data.sentiment import binary_splits, load_sentiment


def test_splits_are_fixed_disjoint_and_cover_the_kept_snippets() -> None:
    splits = binary_splits("movies")
    again = binary_splits("movies")
    assert splits == again
    texts = {name: {item.text + str(item.rating) for item in items} for name, items in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    kept = [s for s in load_sentiment("movies") if abs(s.rating) >= 0.5]
    assert sum(len(items) for items in splits.values()) == len(kept)
    assert len(splits["train"]) == round(0.8 * len(kept))
    assert abs(len(splits["validation"]) - len(splits["test"])) <= 1


def test_labels_follow_the_rating_and_the_band_is_left_out() -> None:
    splits = binary_splits("tweets", band=1.0)
    items = [item for part in splits.values() for item in part]
    assert all(abs(item.rating) >= 1.0 for item in items)
    assert all(item.label == int(item.rating > 0) for item in items)
    assert {item.label for item in items} == {0, 1}
    assert binary_splits("tweets", seed=1)["train"] != binary_splits("tweets", seed=0)["train"]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"band": -1.0}, "band"), ({"fractions": (0.5, 0.5, 0.5)}, "fractions"), ({"domain": "films"}, "domain")],
)
def test_bad_arguments_are_named(arguments: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        binary_splits(**arguments)
