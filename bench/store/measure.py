"""What one timed workload yields, and the small helpers that time them."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurement:
    """One workload on one backend: ``count`` operations' worth of ``unit`` in ``seconds``.

    ``rate`` is ``count / seconds`` (events/s, or aggregates loaded per second for loads);
    latencies, when kept, are per call in milliseconds.
    """

    count: int
    seconds: float
    unit: str = "events"
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 99)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ms"]
        data.update(rate_per_s=self.rate, p50_ms=self.p50_ms, p99_ms=self.p99_ms)
        if self.latencies_ms:
            data.update(mean_ms=statistics.fmean(self.latencies_ms), max_ms=max(self.latencies_ms))
        return data


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(max(1, math.ceil(p / 100 * len(ordered))), len(ordered))
    return ordered[rank - 1]
