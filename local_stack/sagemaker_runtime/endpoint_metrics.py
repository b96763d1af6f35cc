"""Per-variant invocation metrics of the local endpoints, published to CloudWatch (moto).

What SageMaker publishes for a real-time endpoint, namespace ``AWS/SageMaker``, dimensions
``EndpointName`` and ``VariantName``
(https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html#cloudwatch-metrics-endpoint-invocation):

* ``Invocations`` (Count): requests the model answered, successfully or not;
* ``InvocationsPerInstance`` (Count): ``Invocations`` divided by the variant's instance count;
* ``Invocation4XXErrors`` / ``Invocation5XXErrors`` (Count): requests whose model answered a
  4xx / 5xx (or whose model server failed: 5xx);
* ``ModelLatency`` and ``OverheadLatency`` (Microseconds): time inside the model server, and
  the rest of the request's time in the runtime.

SageMaker publishes one datapoint per minute; the runtime aggregates each period into
statistic sets (``SampleCount``/``Sum``/``Minimum``/``Maximum``), so alarms on ``Sum`` or
``Average`` see what they would on AWS. The period is 60 s times the runtime's ``time_scale``.
The calls are signed as the service (``Runtime.client(..., as_service=True)``), not as the
endpoint's execution role. The local autoscaler reads the same invocations through
:meth:`InvocationMetrics.invocations_per_instance`.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

NAMESPACE = "AWS/SageMaker"
PERIOD_SECONDS = 60.0
# Long enough for the slowest target-tracking alarm (15 one-minute datapoints for scale-in).
_HISTORY_PERIODS = 16
_PUT_BATCH = 20  # metric datums per PutMetricData request kept small for moto's query API

_metrics: weakref.WeakKeyDictionary[Runtime, InvocationMetrics] = weakref.WeakKeyDictionary()
_metrics_lock = threading.Lock()


@dataclass
class _Stats:
    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def statistic_set(self) -> dict[str, float]:
        return {
            "SampleCount": self.count,
            "Sum": self.total,
            "Minimum": self.low,
            "Maximum": self.high,
        }


@dataclass
class _Period:
    invocations: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    instances: int = 1
    model_latency: _Stats = field(default_factory=_Stats)
    overhead_latency: _Stats = field(default_factory=_Stats)


class InvocationMetrics:
    """Counts a runtime's invocations per (endpoint, variant) and publishes them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.period = PERIOD_SECONDS * runtime.time_scale
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Period] = {}
        self._history: dict[tuple[str, str], collections.deque[tuple[float, int]]] = {}
        runtime.every("endpoint-metrics", self.period, self.publish)

    def record(
        self,
        endpoint: str,
        variant: str,
        instances: int,
        status: int,
        model_seconds: float | None,
        total_seconds: float,
    ) -> None:
        """One request answered with HTTP ``status`` (the model's, or 5xx for a failed
        server); ``model_seconds`` is ``None`` when the model was never reached."""
        key = (endpoint, variant)
        with self._lock:
            period = self._pending.setdefault(key, _Period())
            period.instances = max(1, instances)
            if model_seconds is not None:
                period.invocations += 1
                period.model_latency.add(model_seconds * 1e6)
                period.overhead_latency.add(max(0.0, total_seconds - model_seconds) * 1e6)
                self._history.setdefault(key, collections.deque()).append(
                    (time.monotonic(), max(1, instances))
                )
            if 400 <= status < 500:
                period.errors_4xx += 1
            elif status >= 500:
                period.errors_5xx += 1

    def invocations_per_instance(
        self, endpoint: str, variant: str, start: float, end: float
    ) -> float:
        """``InvocationsPerInstance`` summed over ``[start, end)`` (``time.monotonic()``)."""
        with self._lock:
            history = self._history.get((endpoint, variant), ())
            return sum(1.0 / n for t, n in history if start <= t < end)

    def forget(self, endpoint: str) -> None:
        """Stop publishing for a deleted endpoint."""
        with self._lock:
            for key in [k for k in self._pending if k[0] == endpoint]:
                del self._pending[key]
                self._history.pop(key, None)

    def publish(self) -> None:
        """Put the finished period's datapoints to CloudWatch and forget old history."""
        with self._lock:
            pending = self._pending
            # A variant that had traffic keeps publishing (zeros when idle), so alarms and
            # the autoscaler see an idle variant as idle rather than as missing data.
            self._pending = {key: _Period(instances=p.instances) for key, p in pending.items()}
            horizon = time.monotonic() - self.period * _HISTORY_PERIODS
            for history in self._history.values():
                while history and history[0][0] < horizon:
                    history.popleft()
        data = [datum for key, period in pending.items() for datum in _datums(key, period)]
        cloudwatch = self.runtime.client("cloudwatch", as_service=True)
        for start in range(0, len(data), _PUT_BATCH):
            cloudwatch.put_metric_data(
                Namespace=NAMESPACE, MetricData=data[start : start + _PUT_BATCH]
            )


def _datums(key: tuple[str, str], period: _Period) -> list[dict[str, Any]]:
    endpoint, variant = key
    dimensions = [
        {"Name": "EndpointName", "Value": endpoint},
        {"Name": "VariantName", "Value": variant},
    ]
    stamp = datetime.now(UTC)

    def count(name: str, value: float) -> dict[str, Any]:
        return {
            "MetricName": name,
            "Dimensions": dimensions,
            "Timestamp": stamp,
            "Value": value,
            "Unit": "Count",
        }

    datums = [
        count("Invocations", period.invocations),
        count("InvocationsPerInstance", period.invocations / period.instances),
        count("Invocation4XXErrors", period.errors_4xx),
        count("Invocation5XXErrors", period.errors_5xx),
    ]
    for name, stats in (
        ("ModelLatency", period.model_latency),
        ("OverheadLatency", period.overhead_latency),
    ):
        if stats.count:
            datums.append(
                {
                    "MetricName": name,
                    "Dimensions": dimensions,
                    "Timestamp": stamp,
                    "StatisticValues": stats.statistic_set(),
                    "Unit": "Microseconds",
                }
            )
    return datums


def metrics_of(runtime: Runtime) -> InvocationMetrics:
    """The runtime's metrics (created, with its publisher, on first use)."""
    with _metrics_lock:
        metrics = _metrics.get(runtime)
        if metrics is None:
            metrics = _metrics[runtime] = InvocationMetrics(runtime)
        return metrics
