"""service/runtimes/tensor.py `_finite`: the finiteness check of float inputs, in slices numpy runs
holding the GIL for small inputs and at once for big ones, finds a non-finite value wherever it is."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtimes.tensor import FINITE_SLICES, GIL_KEPT, _finite

SIZES = [1, GIL_KEPT - 1, GIL_KEPT, GIL_KEPT + 1, 784, FINITE_SLICES * GIL_KEPT, 2001, 12_544]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_finite_values_pass(size: int, dtype: type) -> None:
    values = np.random.default_rng(size).normal(size=size).astype(dtype)
    assert _finite(values)
    assert _finite(values.reshape(1, size))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_anywhere_is_found(size: int, bad: float) -> None:
    # every slice's first and last value, and the array's own ends
    places = {0, size - 1} | {p for s in range(0, size, GIL_KEPT) for p in (s, s + GIL_KEPT - 1)}
    for place in sorted(p for p in places if p < size):
        values = np.zeros(size, dtype=np.float32)
        values[place] = bad
        assert not _finite(values.reshape(size, 1)), (size, place)


def test_empty_and_multi_axis_inputs() -> None:
    assert _finite(np.zeros((0, 3), dtype=np.float32))
    picture = np.zeros((2, 1, 28, 28), dtype=np.float32)
    picture[1, 0, 27, 27] = np.nan
    assert not _finite(picture)
    assert not _finite(np.asfortranarray(picture[:, 0]))  # not contiguous: reshape copies
