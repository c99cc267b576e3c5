import datetime

import pytest

from mmcourse.data.dates import (
    DATE_FORMATS,
    FIRST_DATE,
    LAST_DATE,
    date_splits,
    format_date,
    format_examples,
    generate_dates,
)


def test_examples_cover_every_format() -> None:
    examples = format_examples()
    assert list(examples) == list(DATE_FORMATS) and len(set(examples.values())) == len(DATE_FORMATS)
    assert examples["day_month_year"] == "23 November 2026"
    assert examples["short_month_day_year"] == "Nov 23, 2026"
    assert examples["weekday_day_month_year"] == "Monday 23 November 2026"  # 2026-11-23 is a Monday
    assert examples["french_weekday"] == "lundi 23 novembre 2026"
    assert examples["german"] == "23. November 2026"
    assert examples["spanish"] == "23 de noviembre de 2026"
    assert examples["chinese_weekday"] == "2026年11月23日星期一"
    assert examples["short_month_day_short_year"] == "Nov 23, 26"
    assert examples["upper_short_month_day_year"] == "NOV 23, 2026"
    assert format_examples(datetime.date(2024, 3, 1))["french"] == "1er mars 2024"


def test_weekdays_are_those_of_the_date() -> None:
    for source, target in generate_dates(300, seed=1, formats=["weekday_day_month_year"]):
        assert source.split()[0] == datetime.date.fromisoformat(target).strftime("%A")
    assert format_date(datetime.date(1969, 7, 20), "spanish_weekday") == "domingo, 20 de julio de 1969"
    assert format_date(datetime.date(2000, 1, 1), "chinese_weekday") == "2000年1月1日星期六"


def test_two_digit_years_follow_the_window() -> None:
    assert format_date(datetime.date(1950, 1, 1), "day_short_month_short_year") == "1 Jan 50"
    assert format_date(datetime.date(2049, 12, 31), "numeric_day_first_dots_short_year") == "31.12.49"
    for source, target in generate_dates(200, seed=2, formats=["short_month_day_short_year"]):
        short_year = int(source.rsplit(" ", 1)[1])
        assert int(target[:4]) == (1900 + short_year if short_year >= 50 else 2000 + short_year)


def test_generation_is_deterministic_and_in_range() -> None:
    pairs = generate_dates(500, seed=7)
    assert pairs == generate_dates(500, seed=7) and pairs != generate_dates(500, seed=8)
    assert len({source for source, _ in pairs}) == 500
    for _, target in pairs:
        assert FIRST_DATE <= datetime.date.fromisoformat(target) <= LAST_DATE
    formats_seen = {
        name
        for source, target in pairs
        for name in DATE_FORMATS
        if format_date(datetime.date.fromisoformat(target), name) == source
    }
    assert formats_seen == set(DATE_FORMATS), "every format is produced"


def test_no_source_string_shared_between_splits() -> None:
    train, validation, test = date_splits(2000, 300, 300, seed=0)
    assert (len(train), len(validation), len(test)) == (2000, 300, 300)
    sources = [{source for source, _ in split} for split in (train, validation, test)]
    assert not sources[0] & sources[1] and not sources[0] & sources[2] and not sources[1] & sources[2]
    assert date_splits(2000, 300, 300, seed=0) == (train, validation, test)
    assert date_splits(2000, 300, 300, seed=1)[2] != test


def test_every_source_reads_one_way() -> None:
    """No source string is produced by two different dates (in any two formats): the task is learnable."""
    readings: dict[str, str] = {}
    day = datetime.date(2001, 1, 1)
    while day <= datetime.date(2012, 12, 31):
        for name in DATE_FORMATS:
            source = format_date(day, name)
            assert readings.setdefault(source, day.isoformat()) == day.isoformat(), source
        day += datetime.timedelta(days=1)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="format_name"):
        format_date(datetime.date(2000, 1, 1), "klingon")
    with pytest.raises(ValueError, match="day"):
        format_date(datetime.date(2050, 1, 1), "chinese")
    with pytest.raises(ValueError, match="n_validation"):
        date_splits(10, -1, 10)
    with pytest.raises(ValueError, match="formats"):
        generate_dates(5, formats=["nope"])
