"""``make bench``'s settings: a value no run could honour is refused before anything starts."""

from __future__ import annotations

import pytest

from jobqueue.bench.__main__ import main
from jobqueue.bench.run import BenchConfig


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--warm-up-jobs", "-5", "--warm-up-jobs: must be at least 0, got -5"),
        ("--jobs", "0", "--jobs: must be over 0, got 0"),
        ("--latency-rate-per-s", "-1", "--latency-rate-per-s: must be over 0, got -1"),
        (
            "--comparison-latency-rate-per-s",
            "-1",
            "--comparison-latency-rate-per-s: must be at least 0, got -1",
        ),
        (
            "--latency-submits",
            "sideways",
            "--latency-submits: must be one of stream, unary, got 'sideways'",
        ),
    ],
)
def test_a_value_no_run_could_honour_exits_two_naming_the_flag(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([flag, value])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_runs_may_skip_the_warm_up_the_profile_and_the_comparison() -> None:
    config = BenchConfig(warm_up_jobs=0, profile_jobs=0, comparison_latency_rate_per_s=0)

    assert (config.warm_up_jobs, config.profile_jobs, config.comparison_latency_rate_per_s) == (
        0,
        0,
        0,
    )
