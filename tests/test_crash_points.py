"""Crash points end the process at the named step, the n-th time it is reached, and only then."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.crash_points import CRASH_AT_ENV, CRASH_EXIT_STATUS
from tests.support.processes import environment

REACH_THREE_TIMES = """
from monitor.crash_points import CrashPoint, crash_point
for step in range(3):
    crash_point(CrashPoint.SNAPSHOT_COMMITTED)
    crash_point(CrashPoint.SNAPSHOT_INSERTED)
    print(step, flush=True)
"""


def reach_three_times(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = environment() | ({CRASH_AT_ENV: spec} if spec is not None else {})
    return subprocess.run(
        [sys.executable, "-c", REACH_THREE_TIMES],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("spec", "steps_done"),
    [("after-snapshot-insert", 0), ("after-snapshot-commit:2", 1), ("after-snapshot-insert:3", 2)],
)
def test_the_process_exits_at_the_nth_time_the_point_is_reached(spec: str, steps_done: int) -> None:
    result = reach_three_times(spec)
    assert result.returncode == CRASH_EXIT_STATUS
    assert result.stdout.split() == [str(step) for step in range(steps_done)]
    assert f"crash point {spec.partition(':')[0]} reached" in result.stderr


@pytest.mark.parametrize("spec", [None, "", "after-smtp-250"])
def test_an_unarmed_or_unreached_point_changes_nothing(spec: str | None) -> None:
    result = reach_three_times(spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "2"]


@pytest.mark.parametrize("spec", ["after-lunch", "after-snapshot-insert:x"])
def test_a_bad_crash_point_names_the_variable_and_the_known_points(spec: str) -> None:
    result = reach_three_times(spec)
    assert result.returncode == 1
    assert f"{CRASH_AT_ENV}='{spec}'" in result.stderr
    assert "after-snapshot-insert, after-snapshot-commit, after-smtp-250" in result.stderr
