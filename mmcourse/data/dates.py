"""Generated date translation pairs: a date written many ways → ISO ``YYYY-MM-DD`` (chapter 2's task).

Dates are drawn uniformly from 1950-01-01 to 2049-12-31 and written in one of :data:`DATE_FORMATS` (English,
French, German, Spanish, Chinese, numeric, upper/lower case). Every format has a fixed field order, and the
formats are chosen so that no string can be read two ways, which keeps the task learnable:

- numeric formats are day-first (``23.11.2026``, ``23/11/2026``) or year-first (``2026/11/23``), never
  month-first, so ``03/04/2026`` is always 3 April;
- a two-digit year ``yy`` means 19yy for yy ≥ 50 and 20yy for yy < 50, exactly the 1950–2049 window, and it
  appears only after a month name or in day-first dotted form (``Nov 23, 26``, ``23 Nov 26``, ``23.11.26``);
- weekday names are those of the actual date.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence

FIRST_DATE = datetime.date(1950, 1, 1)
LAST_DATE = datetime.date(2049, 12, 31)

ENGLISH_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
ENGLISH_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FRENCH_MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
)  # fmt: skip
FRENCH_WEEKDAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
GERMAN_MONTHS = (
    "Januar", "Februar", "März", "April", "Mai", "Juni",
    "Juli", "August", "September", "Oktober", "November", "Dezember",
)  # fmt: skip
GERMAN_WEEKDAYS = ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag")
SPANISH_MONTHS = (
    "enero", "febrero", "marzo", "abril", "mayo", "junio",
    "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
)  # fmt: skip
SPANISH_WEEKDAYS = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
CHINESE_WEEKDAYS = ("一", "二", "三", "四", "五", "六", "日")  # 星期一 = Monday … 星期日 = Sunday


def _month(day: datetime.date) -> str:
    return ENGLISH_MONTHS[day.month - 1]


def _short_month(day: datetime.date) -> str:
    return ENGLISH_MONTHS[day.month - 1][:3]


def _short_year(day: datetime.date) -> str:
    return f"{day.year % 100:02d}"


def _french_day(day: datetime.date) -> str:
    return "1er" if day.day == 1 else str(day.day)  # French writes the first of the month "1er"


_FORMATTERS: dict[str, Callable[[datetime.date], str]] = {
    "day_month_year": lambda d: f"{d.day} {_month(d)} {d.year}",  # 23 November 2026
    "month_day_year": lambda d: f"{_month(d)} {d.day}, {d.year}",  # November 23, 2026
    "short_month_day_year": lambda d: f"{_short_month(d)} {d.day}, {d.year}",  # Nov 23, 2026
    "day_short_month_year": lambda d: f"{d.day} {_short_month(d)} {d.year}",  # 23 Nov 2026
    "weekday_day_month_year": lambda d: f"{ENGLISH_WEEKDAYS[d.weekday()]} {d.day} {_month(d)} {d.year}",
    "weekday_month_day_year": lambda d: f"{ENGLISH_WEEKDAYS[d.weekday()]}, {_month(d)} {d.day}, {d.year}",
    "short_month_day_short_year": lambda d: f"{_short_month(d)} {d.day}, {_short_year(d)}",  # Nov 23, 26
    "day_short_month_short_year": lambda d: f"{d.day} {_short_month(d)} {_short_year(d)}",  # 23 Nov 26
    "upper_day_month_year": lambda d: f"{d.day} {_month(d)} {d.year}".upper(),  # 23 NOVEMBER 2026
    "upper_short_month_day_year": lambda d: f"{_short_month(d)} {d.day}, {d.year}".upper(),  # NOV 23, 2026
    "lower_month_day_year": lambda d: f"{_month(d)} {d.day}, {d.year}".lower(),  # november 23, 2026
    "numeric_day_first_dots": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 23.11.2026
    "numeric_day_first_dots_short_year": lambda d: f"{d.day:02d}.{d.month:02d}.{_short_year(d)}",  # 23.11.26
    "numeric_day_first_slashes": lambda d: f"{d.day}/{d.month}/{d.year}",  # 23/11/2026
    "numeric_year_first_slashes": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",  # 2026/11/23
    "french": lambda d: f"{_french_day(d)} {FRENCH_MONTHS[d.month - 1]} {d.year}",  # 23 novembre 2026
    "french_weekday": lambda d: (
        f"{FRENCH_WEEKDAYS[d.weekday()]} {_french_day(d)} {FRENCH_MONTHS[d.month - 1]} {d.year}"
    ),
    "german": lambda d: f"{d.day}. {GERMAN_MONTHS[d.month - 1]} {d.year}",  # 23. November 2026
    "german_weekday": lambda d: f"{GERMAN_WEEKDAYS[d.weekday()]}, {d.day}. {GERMAN_MONTHS[d.month - 1]} {d.year}",
    "spanish": lambda d: f"{d.day} de {SPANISH_MONTHS[d.month - 1]} de {d.year}",  # 23 de noviembre de 2026
    "spanish_weekday": lambda d: (
        f"{SPANISH_WEEKDAYS[d.weekday()]}, {d.day} de {SPANISH_MONTHS[d.month - 1]} de {d.year}"
    ),
    "chinese": lambda d: f"{d.year}年{d.month}月{d.day}日",  # 2026年11月23日
    "chinese_weekday": lambda d: f"{d.year}年{d.month}月{d.day}日星期{CHINESE_WEEKDAYS[d.weekday()]}",
}

DATE_FORMATS: tuple[str, ...] = tuple(_FORMATTERS)

EXAMPLE_DATE = datetime.date(2026, 11, 23)  # a Monday


def _check_date(day: datetime.date) -> None:
    if not isinstance(day, datetime.date) or not FIRST_DATE <= day <= LAST_DATE:
        raise ValueError(f"day must be a datetime.date between {FIRST_DATE} and {LAST_DATE}, got {day!r}")


def format_date(day: datetime.date, format_name: str) -> str:
    """``day`` written in the format ``format_name`` (one of DATE_FORMATS)."""
    if format_name not in _FORMATTERS:
        raise ValueError(f"format_name={format_name!r} is not one of DATE_FORMATS: {DATE_FORMATS}")
    _check_date(day)
    return _FORMATTERS[format_name](day)


def format_examples(day: datetime.date = EXAMPLE_DATE) -> dict[str, str]:
    """One source string per format for ``day``, to show the task: {format name: text}."""
    return {name: format_date(day, name) for name in DATE_FORMATS}


def random_date(rng: random.Random) -> datetime.date:
    """A uniformly random date in [FIRST_DATE, LAST_DATE]."""
    span = (LAST_DATE - FIRST_DATE).days
    return FIRST_DATE + datetime.timedelta(days=rng.randint(0, span))


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def generate_dates(
    n: int, seed: int = 0, formats: Sequence[str] = DATE_FORMATS, exclude: set[str] | None = None
) -> list[tuple[str, str]]:
    """``n`` (source, ISO target) pairs with distinct sources, none in ``exclude``; deterministic given ``seed``.

    Each pair draws a format uniformly from ``formats``, then a date uniformly from 1950–2049.
    """
    _check_count("n", n)
    unknown = [name for name in formats if name not in _FORMATTERS]
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty subset of DATE_FORMATS, unknown: {unknown}")
    rng = random.Random(seed)
    seen = set(exclude or ())
    pairs: list[tuple[str, str]] = []
    attempts, limit = 0, 100 * n + 1000  # a guard: far more sources exist than any sensible n
    while len(pairs) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(f"could not draw {n} distinct sources from formats {tuple(formats)}")
        format_name = formats[rng.randrange(len(formats))]
        day = random_date(rng)
        source = _FORMATTERS[format_name](day)
        if source in seen:
            continue
        seen.add(source)
        pairs.append((source, day.isoformat()))
    return pairs


def date_splits(
    n_train: int, n_validation: int, n_test: int, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, validation, test) pair lists: no source string in two splits, deterministic given ``seed``.

    The same *date* may appear in two splits written in different formats; the exact source text never does.
    """
    for name, value in (("n_train", n_train), ("n_validation", n_validation), ("n_test", n_test)):
        _check_count(name, value)
    pairs = generate_dates(n_train + n_validation + n_test, seed)  # distinct sources, so disjoint splits
    return pairs[:n_train], pairs[n_train : n_train + n_validation], pairs[n_train + n_validation :]
