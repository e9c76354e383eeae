"""How long a point is loaded: long enough that whole requests counted in a window do not skew
its rate (bench/loadgen.py, `longer_load_s`)."""

from __future__ import annotations

import pytest

from bench.loadgen import LoadResult, longer_load_s


def load(requests: int, concurrency: int = 1, errors: int = 0) -> LoadResult:
    return LoadResult("wrk", concurrency, 4.0, requests, errors, requests / 4.0, 1, 1, 1, 1, 0)


def test_enough_requests_per_connection_need_no_second_run() -> None:
    assert longer_load_s(load(16), 4.0) is None
    assert longer_load_s(load(64, concurrency=4), 4.0) is None


def test_few_requests_per_connection_scale_the_run_up_to_the_cap() -> None:
    assert longer_load_s(load(4), 4.0) == pytest.approx(16.0)  # 16 expected at the same rate
    assert longer_load_s(load(9, concurrency=4), 4.0) == pytest.approx(4.0 * 64 / 9)
    assert longer_load_s(load(1, concurrency=8), 4.0) == 40.0  # the cap
    assert longer_load_s(load(0), 4.0) == 40.0  # nothing finished: as long as allowed


def test_failed_or_already_long_runs_are_not_repeated() -> None:
    assert longer_load_s(load(2, errors=1), 4.0) is None
    assert longer_load_s(load(2), 40.0) is None
    assert longer_load_s(load(2), 5.0, min_per_connection=2) is None
