"""A local Application Auto Scaling executor for the local endpoints' variants.

moto stores scalable targets and scaling policies but never acts on them; this executor does
what the service does for SageMaker variants, so that a target-tracking policy really changes
an endpoint's instance count (and the runtime's model-server processes follow, see
``fleets.Variant.resize``). Every evaluation it reads, signed as the service:

* the scalable targets of ``ServiceNamespace=sagemaker``, dimension
  ``sagemaker:variant:DesiredInstanceCount``, resource ``endpoint/<name>/variant/<variant>``
  (``MinCapacity``, ``MaxCapacity``, ``SuspendedState``);
* their ``TargetTrackingScaling`` policies on the predefined metric
  ``SageMakerVariantInvocationsPerInstance`` (``TargetValue``, ``ScaleOutCooldown``,
  ``ScaleInCooldown``, ``DisableScaleIn``). Other policy types and customised metrics are not
  evaluated (logged once).

and evaluates them the way target tracking's two CloudWatch alarms do
(https://docs.aws.amazon.com/autoscaling/application/userguide/target-tracking-scaling-policy-overview.html
and https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-prerequisites.html):
scale out when the last 3 one-minute datapoints of ``InvocationsPerInstance`` are above the
target, scale in when the last 15 are below 90 % of it, to
``ceil(instances * metric / target)`` within ``[MinCapacity, MaxCapacity]``; a count outside the
range is brought inside it at once; no new scaling in the same direction within its cooldown
(300 s each by default for SageMaker); nothing while the endpoint is not ``InService``. A minute
is 60 s times the runtime's ``time_scale``; the datapoints are those ``endpoint_metrics``
publishes to CloudWatch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime.endpoint_metrics import PERIOD_SECONDS, metrics_of

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
SCALE_OUT_DATAPOINTS = 3
SCALE_IN_DATAPOINTS = 15
SCALE_IN_RATIO = 0.9
DEFAULT_COOLDOWN_SECONDS = 300.0
# Evaluations per datapoint: a breach is seen within a quarter of a period.
_EVALUATIONS_PER_PERIOD = 4

_scalers: weakref.WeakKeyDictionary[Runtime, Autoscaler] = weakref.WeakKeyDictionary()
_scalers_lock = threading.Lock()


@dataclass(frozen=True)
class Policy:
    """A scalable target with its target-tracking policy."""

    endpoint: str
    variant: str
    min_capacity: int
    max_capacity: int
    target: float | None
    scale_out_cooldown: float
    scale_in_cooldown: float
    scale_in_enabled: bool
    scale_out_enabled: bool


def _policies(runtime: Runtime, warned: set[str]) -> list[Policy]:
    client = runtime.client("application-autoscaling", as_service=True)
    targets = client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    out = []
    for target in targets:
        parts = target["ResourceId"].split("/")
        if target.get("ScalableDimension") != DIMENSION or len(parts) != 4:
            continue
        tracking = None
        for policy in policies:
            if policy["ResourceId"] != target["ResourceId"]:
                continue
            config = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
            metric = (config.get("PredefinedMetricSpecification") or {}).get("PredefinedMetricType")
            if policy.get("PolicyType") == "TargetTrackingScaling" and metric == METRIC:
                tracking = config
            elif policy["PolicyName"] not in warned:
                warned.add(policy["PolicyName"])
                log.warning("local autoscaling does not evaluate policy %s", policy["PolicyName"])
        suspended = target.get("SuspendedState") or {}
        out.append(
            Policy(
                endpoint=parts[1],
                variant=parts[3],
                min_capacity=int(target["MinCapacity"]),
                max_capacity=int(target["MaxCapacity"]),
                target=float(tracking["TargetValue"]) if tracking else None,
                scale_out_cooldown=float(
                    (tracking or {}).get("ScaleOutCooldown", DEFAULT_COOLDOWN_SECONDS)
                ),
                scale_in_cooldown=float(
                    (tracking or {}).get("ScaleInCooldown", DEFAULT_COOLDOWN_SECONDS)
                ),
                scale_in_enabled=not (tracking or {}).get("DisableScaleIn", False)
                and not suspended.get("DynamicScalingInSuspended", False),
                scale_out_enabled=not suspended.get("DynamicScalingOutSuspended", False),
            )
        )
    return out


def desired_capacity(policy: Policy, current: int, datapoints: list[float]) -> int:
    """The instance count target tracking asks for, given the newest-first per-minute
    ``InvocationsPerInstance`` datapoints (pure: the rule this module documents)."""
    if current < policy.min_capacity or current > policy.max_capacity:
        return min(max(current, policy.min_capacity), policy.max_capacity)
    if policy.target is None or policy.target <= 0:
        return current
    recent = datapoints[:SCALE_OUT_DATAPOINTS]
    if (
        policy.scale_out_enabled
        and len(recent) == SCALE_OUT_DATAPOINTS
        and all(value > policy.target for value in recent)
    ):
        wanted = math.ceil(current * recent[0] / policy.target)
        return min(max(wanted, current + 1), policy.max_capacity)
    window = datapoints[:SCALE_IN_DATAPOINTS]
    if (
        policy.scale_in_enabled
        and len(window) == SCALE_IN_DATAPOINTS
        and all(value < SCALE_IN_RATIO * policy.target for value in window)
    ):
        wanted = math.ceil(current * window[0] / policy.target)
        return max(min(wanted, current - 1), policy.min_capacity)
    return current


class Autoscaler:
    """Evaluates a runtime's scaling policies periodically and applies their decisions."""

    def __init__(self, runtime: Runtime, apply: Any) -> None:
        self.runtime = runtime
        self.minute = PERIOD_SECONDS * runtime.time_scale
        self._apply = apply
        self._last_scaling: dict[tuple[str, str], tuple[str, float]] = {}
        self._warned: set[str] = set()
        runtime.every("autoscaling", self.minute / _EVALUATIONS_PER_PERIOD, self.evaluate)

    def _datapoints(self, endpoint: str, variant: str) -> list[float]:
        """Newest first: per-minute InvocationsPerInstance of the complete minutes so far."""
        metrics = metrics_of(self.runtime)
        now = time.monotonic()
        return [
            metrics.invocations_per_instance(
                endpoint, variant, now - (i + 1) * self.minute, now - i * self.minute
            )
            for i in range(SCALE_IN_DATAPOINTS)
        ]

    def _cooling_down(self, key: tuple[str, str], direction: str, policy: Policy) -> bool:
        last = self._last_scaling.get(key)
        if last is None or last[0] != direction:
            return False
        cooldown = policy.scale_out_cooldown if direction == "out" else policy.scale_in_cooldown
        return time.monotonic() - last[1] < cooldown * self.runtime.time_scale

    def evaluate(self) -> None:
        """One evaluation of every policy (the periodic task)."""
        for policy in _policies(self.runtime, self._warned):
            key = (policy.endpoint, policy.variant)
            current = self._apply(policy.endpoint, policy.variant, None)
            if current is None:  # no such endpoint/variant, or not InService
                continue
            last = self._last_scaling.get(key)
            if last is None and policy.min_capacity <= current <= policy.max_capacity:
                # Only datapoints from after the target was registered (when AWS creates the
                # policy's alarms) or the last scaling count: this is that moment.
                self._last_scaling[key] = ("registered", time.monotonic())
                continue
            complete = int((time.monotonic() - last[1]) / self.minute) if last else 0
            wanted = desired_capacity(policy, current, self._datapoints(*key)[:complete])
            if wanted == current:
                continue
            direction = "out" if wanted > current else "in"
            if self._cooling_down(key, direction, policy):
                continue
            log.info(
                "autoscaling %s/%s from %d to %d instances",
                policy.endpoint,
                policy.variant,
                current,
                wanted,
            )
            self._apply(policy.endpoint, policy.variant, wanted)
            self._last_scaling[key] = (direction, time.monotonic())


def start_autoscaler(runtime: Runtime, apply: Any) -> Autoscaler:
    """Start the runtime's autoscaler once. ``apply(endpoint, variant, count)`` sets a
    variant's instance count and returns the current one (``count=None``: only read it;
    ``None`` when the endpoint cannot be scaled now)."""
    with _scalers_lock:
        scaler = _scalers.get(runtime)
        if scaler is None:
            scaler = _scalers[runtime] = Autoscaler(runtime, apply)
        return scaler
