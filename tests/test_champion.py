"""slade_core.champion: recorded scores compare only when measured the same way, the new
model must be strictly better, and NaN never wins; on request it must beat its control too."""

from __future__ import annotations

import dataclasses
import math

import pytest

from slade_core.champion import RecordedScore, Verdict, judge, promote

CHAMPION = RecordedScore(
    map_at_r=0.5, preset="quickstart", protocol="test-vs-test", data_digest="d1"
)


def _new(map_at_r: float, **measured_on: str) -> RecordedScore:
    return dataclasses.replace(CHAMPION, map_at_r=map_at_r, **measured_on)


def _not_called() -> tuple[float, float]:
    raise AssertionError("re-scored although both scores were measured the same way")


@pytest.mark.parametrize(
    ("new", "wins"),
    [(0.6, True), (0.5, False), (0.4, False), (math.nan, False)],
    ids=["better", "tie", "worse", "nan"],
)
def test_same_measurement_compares_the_recorded_scores(new, wins):
    verdict = judge(_new(new), CHAMPION, _not_called)
    assert verdict.new_wins is wins
    assert (verdict.new, verdict.champion) == pytest.approx((new, 0.5), nan_ok=True)


def test_a_nan_champion_is_never_beaten():
    nan_champion = dataclasses.replace(CHAMPION, map_at_r=math.nan)
    assert not judge(_new(0.9), nan_champion, _not_called).new_wins


@pytest.mark.parametrize(
    "other",
    [{"preset": "birds"}, {"protocol": "query-vs-gallery"}, {"data_digest": "d2"}],
    ids=["preset", "protocol", "data"],
)
@pytest.mark.parametrize(
    ("rescored", "wins"),
    [((0.3, 0.2), True), ((0.3, 0.3), False), ((0.9, 0.95), False), ((math.nan, 0.1), False)],
    ids=["better", "tie", "worse", "nan"],
)
def test_another_measurement_rescores_both_and_ignores_the_records(other, rescored, wins):
    # the recorded scores say the opposite of the re-scored ones in the deciding cases
    recorded = 0.1 if wins else 0.9
    verdict = judge(_new(recorded, **other), CHAMPION, lambda: rescored)
    assert verdict.new_wins is wins
    assert (verdict.new, verdict.champion) == pytest.approx(rescored, nan_ok=True)


def test_a_champion_without_a_record_is_rescored():
    calls = []

    def rescore() -> tuple[float, float]:
        calls.append(1)
        return 0.7, 0.6

    assert judge(_new(0.1), None, rescore) == Verdict(new=0.7, champion=0.6)
    assert calls == [1]


@pytest.mark.parametrize(
    ("new_wins", "gain", "promoted"),
    [
        (True, None, True),  # no control rule: the champion verdict alone
        (False, None, False),
        (True, 0.01, True),
        (True, 0.0, False),  # a tie with the control: the unlabeled images did not help
        (True, -0.02, False),
        (True, math.nan, False),
        (False, 0.05, False),  # beating the control never beats the champion by itself
    ],
)
def test_promotion_can_also_require_the_student_to_beat_its_control(new_wins, gain, promoted):
    assert promote(new_wins, gain) is promoted
