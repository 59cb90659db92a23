"""intfa_compile/observers.py: the calibration observers, plain modules that record ranges per head (Q, K) or per
head and channel (V) and return their input unchanged."""

from __future__ import annotations

import pytest
import torch

from intfa_compile.observers import MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver


def test_minmax_and_moving_average_observers_keep_per_head_ranges_and_return_input():
    x1, x2 = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8) * 3
    minmax, moving = MinMaxObserver((1,)), MovingAverageMinMaxObserver((1,), averaging_constant=0.5)
    for x in (x1, x2):
        assert minmax(x) is x and moving(x) is x
    first, second = x1.abs().amax(dim=(0, 2, 3)), x2.abs().amax(dim=(0, 2, 3))
    assert torch.equal(minmax.amax(), torch.maximum(first, second))
    assert torch.allclose(moving.amax(), first + 0.5 * (second - first))


def test_per_channel_observer_shape():
    observer = MinMaxObserver((1, 3))
    observer(torch.randn(2, 3, 10, 8))
    assert observer.amax().shape == (3, 8)


def test_percentile_observer_clips_an_outlier():
    x = torch.rand(1, 2, 10000, 4)
    x[0, 0, 0, 0] = 1000.0
    observer = PercentileObserver((1,), percentile=99.0)
    observer(x[:, :, :5000])
    observer(x[:, :, 5000:] * 2)  # a wider range later: the histogram is widened
    amax = observer.amax()
    assert amax.shape == (2,)
    assert (amax < 10).all() and (amax > 1).all()  # near the 99th percentile of |x| ~ U(0, 2), not 1000


def test_observer_without_data_refuses():
    with pytest.raises(RuntimeError, match="seen no data"):
        MinMaxObserver((1,)).amax()
