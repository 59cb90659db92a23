"""Observers: modules that record the range of a tensor, per channel, for static quantization scales.

Each observer keeps, for every index of the dimensions it is told to keep (a head, or a head and a
head-dim channel), a statistic of |x| over all other dimensions, and returns its input unchanged.
``amax()`` turns what it saw into the value a scale is made from (scale = amax / 127). An observer
that has seen no data refuses, with a message.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Observer(torch.nn.Module):
    def __init__(self, keep_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.keep_dims = keep_dims
        self.batches = 0

    def _per_channel(self, x: Tensor) -> Tensor:
        """|x| laid out as (kept indices..., everything else)."""
        kept = [d % x.dim() for d in self.keep_dims]
        others = [d for d in range(x.dim()) if d not in kept]
        return x.detach().float().abs().permute(*kept, *others).flatten(len(kept))

    def forward(self, x: Tensor) -> Tensor:
        self.update(self._per_channel(x))
        self.batches += 1
        return x

    def update(self, magnitudes: Tensor) -> None:
        raise NotImplementedError

    def statistic(self) -> Tensor:
        raise NotImplementedError

    def amax(self) -> Tensor:
        """The range to quantize to, per kept index."""
        if self.batches == 0:
            raise RuntimeError(f"{type(self).__name__} has seen no data: run calibration batches through the "
                               "prepared model before asking for scales")
        return self.statistic()


class MinMaxObserver(_Observer):
    """The largest |x| ever seen."""

    def __init__(self, keep_dims: tuple[int, ...]) -> None:
        super().__init__(keep_dims)
        self.running: Tensor | None = None

    def update(self, magnitudes: Tensor) -> None:
        batch_max = magnitudes.amax(dim=-1)
        self.running = batch_max if self.running is None else torch.maximum(self.running, batch_max)

    def statistic(self) -> Tensor:
        return self.running


class MovingAverageMinMaxObserver(_Observer):
    """An exponential moving average of each batch's largest |x|: less hostage to one outlier batch."""

    def __init__(self, keep_dims: tuple[int, ...], averaging_constant: float = 0.01) -> None:
        super().__init__(keep_dims)
        self.averaging_constant = averaging_constant
        self.running: Tensor | None = None

    def update(self, magnitudes: Tensor) -> None:
        batch_max = magnitudes.amax(dim=-1)
        if self.running is None:
            self.running = batch_max
        else:
            self.running = self.running + self.averaging_constant * (batch_max - self.running)

    def statistic(self) -> Tensor:
        return self.running


class PercentileObserver(_Observer):
    """The ``percentile`` of |x| from a histogram per kept index: clips rare outliers."""

    def __init__(self, keep_dims: tuple[int, ...], percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(keep_dims)
        self.percentile, self.bins = percentile, bins
        self.counts: Tensor | None = None
        self.upper: Tensor | None = None  # histogram range [0, upper] per kept index

    def update(self, magnitudes: Tensor) -> None:
        flat = magnitudes.reshape(-1, magnitudes.shape[-1])
        batch_max = flat.amax(dim=-1).clamp(min=torch.finfo(torch.float32).tiny)
        if self.counts is None:
            self.upper = batch_max
            self.counts = torch.zeros(flat.shape[0], self.bins)
        elif (batch_max > self.upper).any():
            self._widen(torch.maximum(self.upper, batch_max))
        index = (flat / self.upper[:, None] * self.bins).long().clamp(max=self.bins - 1)
        self.counts.scatter_add_(1, index, torch.ones_like(flat))

    def _widen(self, upper: Tensor) -> None:
        # Move each old bin's count to the new bin that holds its centre.
        centres = (torch.arange(self.bins) + 0.5) / self.bins * self.upper[:, None]
        index = (centres / upper[:, None] * self.bins).long().clamp(max=self.bins - 1)
        widened = torch.zeros_like(self.counts)
        widened.scatter_add_(1, index, self.counts)
        self.counts, self.upper = widened, upper

    def statistic(self) -> Tensor:
        cdf = self.counts.cumsum(dim=-1) / self.counts.sum(dim=-1, keepdim=True)
        first = (cdf < self.percentile / 100).sum(dim=-1).clamp(max=self.bins - 1)
        value = (first + 1).float() / self.bins * self.upper
        return value.reshape(self._kept_shape)

    def forward(self, x: Tensor) -> Tensor:
        kept = [x.shape[d] for d in self.keep_dims]
        self._kept_shape = tuple(kept)
        return super().forward(x)


OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
             "percentile": PercentileObserver}
"""Observer kinds by the name ``prepare(model, observer=...)`` takes."""
