"""Durations (SPEC §1): syntax, units and rounding to the nearest step, halves up."""

import pytest

from modules.config.durations import Duration, parse_duration
from modules.errors import ConfigError


@pytest.mark.parametrize(
    "text,steps_per_epoch,total_steps,expected",
    [
        (120, 7, 1000, 120),
        ("120", 7, 1000, 120),
        ("120 steps", 7, 1000, 120),
        ("1 step", 7, 1000, 1),
        ("  40  STEPS ", 7, 1000, 40),
        ("1.5 epochs", 4, 1000, 6),
        ("1.5 epochs", 3, 1000, 5),  # 4.5 -> 5, halves up
        ("0.5 epochs", 7, 1000, 4),  # 3.5 -> 4
        ("2.5 epochs", 1, 1000, 3),  # 2.5 -> 3, not banker's rounding to 2
        ("1 epoch", 9, 1000, 9),
        ("10%", 7, 25, 3),  # 2.5 -> 3
        ("10%", 7, 24, 2),  # 2.4 -> 2
        ("10%", 7, 15, 2),  # 1.5 -> 2
        ("29%", 7, 50, 15),  # 14.5 exactly; 0.29 * 50 in binary floating point is just below
        ("35%", 7, 90, 32),  # 31.5
        ("0.57 epochs", 50, 1000, 29),  # 28.5
        ("100%", 7, 33, 33),
        (".5 epochs", 10, 1000, 5),
        ("0%", 7, 33, 0),
    ],
)
def test_duration_to_steps(text, steps_per_epoch, total_steps, expected):
    assert parse_duration(text, "scheduler.warmup").to_steps(steps_per_epoch, total_steps) == expected


def test_halves_round_up_for_every_percentage():
    # Independent integer arithmetic: round(a * T / 100), halves up, is (2 * a * T + 100) // 200.
    for percent in range(0, 101):
        for total in range(1, 120):
            got = parse_duration(f"{percent}%", "x").to_steps(1, total)
            assert got == (2 * percent * total + 100) // 200, (percent, total)


def test_halves_round_up_for_fractional_epochs():
    for hundredths in range(0, 400):
        for steps_per_epoch in range(1, 60):
            got = parse_duration(f"{hundredths / 100} epochs", "x").to_steps(steps_per_epoch, 10**6)
            assert got == (2 * hundredths * steps_per_epoch + 100) // 200, (hundredths, steps_per_epoch)


@pytest.mark.parametrize("bad", ["ten", "10 minutes", "-5", "5 epochs 2", "", "%", "1e3", True, None, [5], -1])
def test_bad_durations_name_the_key(bad):
    with pytest.raises(ConfigError) as raised:
        parse_duration(bad, "scheduler.warmup")
    assert raised.value.key == "scheduler.warmup"
    assert str(raised.value).startswith("scheduler.warmup")


def test_percentages_over_100_are_refused():
    with pytest.raises(ConfigError, match="at most 100%"):
        parse_duration("150%", "scheduler.decay")


def test_str_reads_back():
    for text in ("120 steps", "1.5 epochs", "10%"):
        duration = parse_duration(text, "x")
        assert parse_duration(str(duration), "x") == duration
    assert parse_duration(7, "x") == Duration(7.0, "steps")


@pytest.mark.parametrize("text, steps_per_epoch, total_steps, expected", [
    ("0.50000000000000000001 epochs", 1, 100, 1),  # just past the half as written; the float is exactly 0.5
    ("0.49999999999999999999 epochs", 1, 100, 0),  # just below; the float reads 0.5, which would round up
    ("2.49999999999999999999", 1, 100, 2),
    ("100.000000000000000001%", 1, 100, None),  # past 100% as written, though the float is exactly 100
    ("12345678901234567891 steps", 1, 100, 12345678901234567891),  # an integer beyond float precision
])
def test_decimals_are_rounded_on_exactly_what_was_written(text, steps_per_epoch, total_steps, expected):
    if expected is None:
        with pytest.raises(ConfigError):
            parse_duration(text, "scheduler.warmup")
        return
    assert parse_duration(text, "scheduler.warmup").to_steps(steps_per_epoch, total_steps) == expected
