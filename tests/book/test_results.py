import json
from pathlib import Path

import pytest

from mmcourse.book.results import chapter_results, format_value, load, record


def test_record_writes_one_file_per_profile_and_chapter(results_dir: Path) -> None:
    assert record("01_attention", "attention_ratio", 2.5, "x") == 2.5
    record("01_attention", "attention_ratio", 3.0, "x")  # re-recording replaces the value
    record("02_transformer", "transformer_accuracy", 0.97)
    stored = json.loads((results_dir / "fast" / "01_attention.json").read_text())
    assert stored["attention_ratio"]["value"] == 3.0
    assert stored["attention_ratio"]["profile"] == "fast"
    assert {r.name for r in load(results_dir)} == {"attention_ratio", "transformer_accuracy"}
    assert [r.chapter for r in load(results_dir)] == ["01_attention", "02_transformer"]


@pytest.mark.parametrize(
    ("chapter", "name", "value", "message"),
    [
        ("Chapter 1", "ratio", 1.0, "chapter must look like"),
        ("01_attention", "Ratio!", 1.0, "name must be lowercase"),
        ("01_attention", "ratio", "fast", "value for 'ratio' must be a number"),
        ("01_attention", "ratio", float("nan"), "must be finite"),
    ],
)
def test_record_rejects_bad_input(results_dir: Path, chapter: str, name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record(chapter, name, value)  # type: ignore[arg-type]


def test_a_chapter_binds_its_results_once(results_dir: Path) -> None:
    results = chapter_results("03_bert")
    assert results.record("mlm_accuracy", 0.5, "", "a note") == 0.5
    (stored,) = load(results_dir)
    assert (stored.chapter, stored.name, stored.value, stored.note) == ("03_bert", "mlm_accuracy", 0.5, "a note")
    with pytest.raises(TypeError, match="chapter must be a str"):
        chapter_results(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chapter must look like"):
        chapter_results("Chapter 3")


def test_format_value() -> None:
    assert format_value(0.123456) == "0.1235"
    assert format_value(12345.0) == "12345"
    assert format_value(0.0) == "0"
    assert format_value(1.5e-7) == "1.500e-07"


def test_committed_measurements_fill_only_the_profiles_this_build_did_not_run() -> None:
    from mmcourse.book.results import Result, with_measurements

    def result(profile: str, name: str, value: float) -> Result:
        return Result("01_attention", name, value, "", profile, "machine", "2026-11-25", "2.13", "")

    built = [result("cpu", "ratio", 8.0)]
    measured = [result("cpu", "ratio", 9.0), result("gpu", "ratio", 28.0), result("gpu", "other", 1.0)]
    merged = with_measurements(built, measured)
    assert [(r.profile, r.name, r.value) for r in merged] == [("cpu", "ratio", 8.0), ("gpu", "other", 1.0),
                                                             ("gpu", "ratio", 28.0)]  # fmt: skip
