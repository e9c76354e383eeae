"""`observe_many` leaves a histogram as that many `observe` calls do: every bucket, the sum and
the count, on bucket edges and past the last one too."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.metrics import observe_many

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("gap_seconds", "gaps", ["model"], buckets=BUCKETS, registry=registry)


@pytest.mark.parametrize(
    "observations",
    [
        [(0.005, 7)],
        [(0.01, 3), (0.001, 2), (0.0, 4)],  # on bucket edges: `<=`, as observe
        [(2.5, 5), (0.5, 1)],  # past the last finite bucket: +Inf
    ],
)
def test_many_at_once_equal_one_by_one(observations: list[tuple[float, int]]) -> None:
    at_once, one = histogram()
    by_one, other = histogram()
    for value, count in observations:
        observe_many(one.labels("m"), value, count)
        for _ in range(count):
            other.labels("m").observe(value)
    assert samples(at_once) == samples(by_one)


def samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines, without the histograms' creation times."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]
