"""Which ticks a schedule has (pure functions): the wall-clock rule across both DST transitions,
intervals, the misfire policies, and the definitions refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobkeeper.domain.schedules import ON_TIME, next_tick, plan_firing, validate_spec
from jobkeeper.errors import InvalidRequest

STOCKHOLM = "Europe/Stockholm"
# 2026 in Stockholm: clocks go 02:00 CET -> 03:00 CEST on 29 March (01:00 UTC), and
# 03:00 CEST -> 02:00 CET on 25 October (01:00 UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def ticks(spec: Any, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = next_tick(spec, after)
        found.append(after)
    return found


def test_a_daily_time_the_clock_skips_runs_once_at_the_end_of_the_gap() -> None:
    spec = validate_spec(cron="30 2 * * *", timezone=STOCKHOLM)
    assert ticks(spec, utc(2026, 3, 28, 12), 3) == [
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist that night: 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_several_skipped_times_become_one_tick() -> None:
    spec = validate_spec(cron="*/20 * * * *", timezone=STOCKHOLM)
    # 01:40 CET, then 02:00, 02:20 and 02:40 (skipped) and 03:00 CEST are one tick, then 03:20
    assert ticks(spec, utc(2026, 3, 29, 0, 30), 4) == [
        utc(2026, 3, 29, 0, 40),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 20),
        utc(2026, 3, 29, 1, 40),
    ]


def test_a_daily_time_the_clock_shows_twice_runs_once_at_its_first_occurrence() -> None:
    spec = validate_spec(cron="30 2 * * *", timezone=STOCKHOLM)
    assert ticks(spec, utc(2026, 10, 24, 12), 3) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two 02:30s
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]


def test_the_repeated_hour_does_not_run_again() -> None:
    spec = validate_spec(cron="*/20 * * * *", timezone=STOCKHOLM)
    assert ticks(spec, utc(2026, 10, 24, 23, 50), 5) == [
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 20),
        utc(2026, 10, 25, 0, 40),
        utc(2026, 10, 25, 2, 0),  # 03:00 CET: 02:00-02:40 CET are the same wall times again
        utc(2026, 10, 25, 2, 20),
    ]
    # a scheduler that looks during the repeated hour finds the next tick after it
    assert next_tick(spec, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 2, 0)


def test_catching_up_across_a_transition_counts_each_tick_once() -> None:
    spec = validate_spec(cron="*/20 * * * *", timezone=STOCKHOLM, misfire="all")
    plan = plan_firing(spec, utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 1, 25))
    assert plan.ticks == (
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 0, 20),
        utc(2026, 3, 29, 0, 40),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 20),
    )
    assert plan.next_tick == utc(2026, 3, 29, 1, 40)
    plan = plan_firing(spec, utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 2, 5))
    assert plan.ticks == (
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 0, 20),
        utc(2026, 10, 25, 0, 40),
        utc(2026, 10, 25, 2, 0),
    )


def test_an_interval_ticks_on_multiples_of_itself_in_utc_whatever_the_timezone() -> None:
    spec = validate_spec(every=timedelta(hours=1), timezone=STOCKHOLM)
    assert ticks(spec, utc(2026, 3, 29, 0, 30), 3) == [
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 2),
        utc(2026, 3, 29, 3),
    ]
    every_second = validate_spec(every=timedelta(seconds=1))
    assert next_tick(every_second, utc(2026, 1, 1, 0, 0, 5)) == utc(2026, 1, 1, 0, 0, 6)


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        ("latest", [utc(2026, 1, 1, 5)]),
        ("all", [utc(2026, 1, 1, 3), utc(2026, 1, 1, 4), utc(2026, 1, 1, 5)]),
        ("none", []),
    ],
)
def test_after_downtime_the_misfire_policy_says_which_ticks_run(
    misfire: str, expected: list[datetime]
) -> None:
    spec = validate_spec(cron="0 * * * *", misfire=misfire, max_catch_up=3)
    # down from before midnight to 05:30: six hourly ticks were missed
    plan = plan_firing(spec, utc(2026, 1, 1, 0), utc(2026, 1, 1, 5, 30))
    assert list(plan.ticks) == expected
    assert plan.next_tick == utc(2026, 1, 1, 6)  # missed or not, the schedule moves on


def test_under_misfire_none_a_tick_on_time_still_runs() -> None:
    spec = validate_spec(cron="0 * * * *", misfire="none")
    on_time = plan_firing(spec, utc(2026, 1, 1, 1), utc(2026, 1, 1, 1) + ON_TIME)
    assert on_time.ticks == (utc(2026, 1, 1, 1),)
    late = plan_firing(spec, utc(2026, 1, 1, 1), utc(2026, 1, 1, 1, 0, 1) + ON_TIME)
    assert late.ticks == ()


def test_nothing_is_due_before_the_next_tick() -> None:
    spec = validate_spec(cron="* * * * *")
    plan = plan_firing(spec, utc(2026, 1, 1, 1, 1), utc(2026, 1, 1, 1, 0, 59))
    assert plan.ticks == ()
    assert plan.next_tick == utc(2026, 1, 1, 1, 1)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "not cron"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # croniter's seconds field: not cron
        ({"cron": "0 0 30 2 *"}, "cron"),  # never matches
        ({"cron": "@reboot"}, "cron"),
        ({}, "cron"),
        ({"cron": "* * * * *", "every": timedelta(seconds=5)}, "cron"),
        ({"every": timedelta(milliseconds=1500)}, "every"),
        ({"every": timedelta(0)}, "every"),
        ({"every": 5}, "every"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "* * * * *", "timezone": "Europe"}, "timezone"),
        ({"cron": "* * * * *", "timezone": "../../etc/passwd"}, "timezone"),
        ({"cron": "* * * * *", "misfire": "sometimes"}, "misfire"),
        ({"cron": "* * * * *", "misfire": "all", "max_catch_up": 0}, "max_catch_up"),
    ],
)
def test_a_bad_definition_is_refused_naming_its_field(
    arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_spec(**arguments)
    assert refused.value.field == field


def test_cron_nicknames_and_extra_spaces_are_read() -> None:
    assert validate_spec(cron="@hourly").cron == "@hourly"
    assert validate_spec(cron=" */5  * * * * ").cron == "*/5 * * * *"
