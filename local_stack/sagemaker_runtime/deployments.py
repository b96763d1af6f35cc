"""Deployments of the local endpoints: ``CreateEndpoint``'s first fleet and ``UpdateEndpoint``'s
blue/green update, run in the runtime's threads.

An update starts the new fleet while the old one keeps serving; traffic moves (all at once, or
canary / linear steps of ``DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration``)
only once the new fleet is healthy, then the old fleet is kept for
``TerminationWaitInSeconds`` (baking). If the new fleet fails to start, a fault is armed for the
endpoint or config name, an alarm of ``AutoRollbackConfiguration.Alarms`` is in ``ALARM`` in
CloudWatch while baking, or ``MaximumExecutionTimeoutInSeconds`` passes, the update rolls back:
traffic returns to the old fleet and the endpoint is ``InService`` on its OLD
``EndpointConfigName`` with a ``FailureReason`` (what SageMaker reports after a failed update).
In-flight requests always finish on the fleet that took them, so an update never fails a
request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime.api import SageMakerError, now
from local_stack.sagemaker_runtime.endpoint_configs import data_capture_summary, get_config
from local_stack.sagemaker_runtime.fleets import DeployFailed, Fleet, start_fleet

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

ENDPOINTS = "Endpoint"
_ALARM_POLL_SECONDS = 0.5
_REASON_LIMIT = 1024


class Superseded(Exception):
    """The endpoint was deleted (or updated again) while a deployment ran."""


def still_current(runtime: Runtime, record: dict[str, Any], generation: int) -> bool:
    """Hold ``runtime.lock``: is the deployment ``generation`` still the endpoint's latest?"""
    current = runtime.store(ENDPOINTS).get(record["EndpointName"])
    return current is record and record["_generation"] == generation


def injected_failure(runtime: Runtime, endpoint: str, config_name: str) -> str | None:
    """Wait out a fault's delay; the FailureReason of a fault armed for either name."""
    delay = runtime.faults.delay_for(endpoint) + runtime.faults.delay_for(config_name)
    if delay:
        runtime.stopping.wait(delay)
    return runtime.faults.failure_for(endpoint) or runtime.faults.failure_for(config_name)


def set_serving(runtime: Runtime, record: dict[str, Any], fleet: Fleet) -> None:
    """Make ``fleet`` the endpoint's active fleet (hold ``runtime.lock``)."""
    record["_active"] = fleet
    record["_canary"] = None
    record["EndpointConfigName"] = fleet.config_name
    with contextlib.suppress(SageMakerError):
        summary = data_capture_summary(get_config(runtime, fleet.config_name))
        if summary:
            record["DataCaptureConfig"] = summary
        else:
            record.pop("DataCaptureConfig", None)


def create(runtime: Runtime, record: dict[str, Any], config: dict[str, Any], gen: int) -> None:
    """Start an endpoint's first fleet (in a runtime thread): ``InService`` or ``Failed``."""
    name = record["EndpointName"]
    try:
        failure = injected_failure(runtime, name, config["EndpointConfigName"])
        if failure:
            raise DeployFailed(failure)
        fleet = start_fleet(runtime, name, config)
    except DeployFailed as err:
        with runtime.lock:
            if still_current(runtime, record, gen):
                record["EndpointStatus"] = "Failed"
                record["FailureReason"] = str(err)[:_REASON_LIMIT]
                record["LastModifiedTime"] = now()
        return
    except Exception as err:  # a bug: fail the endpoint rather than leave it Creating
        log.exception("creating endpoint %s failed", name)
        with runtime.lock:
            if still_current(runtime, record, gen):
                record["EndpointStatus"] = "Failed"
                record["FailureReason"] = f"InternalFailure: {err}"[:_REASON_LIMIT]
        return
    with runtime.lock:
        current = still_current(runtime, record, gen)
        if current:
            set_serving(runtime, record, fleet)
            record["EndpointStatus"] = "InService"
            record["LastModifiedTime"] = now()
    if not current:
        fleet.stop(drain_timeout=0)


def retain_variant_properties(
    config: dict[str, Any], old_fleet: Fleet, request: dict[str, Any]
) -> None:
    """``RetainAllVariantProperties``: same-named variants keep their current count/weight."""
    excluded = {
        p["VariantPropertyType"] for p in request.get("ExcludeRetainedVariantProperties", [])
    }
    old = {v.name: v for v in old_fleet.variants}
    for spec in config["ProductionVariants"]:
        variant = old.get(spec["VariantName"])
        if variant is None:
            continue
        if "DesiredInstanceCount" not in excluded:
            spec["InitialInstanceCount"] = variant.desired_count
        if "DesiredWeight" not in excluded:
            spec["InitialVariantWeight"] = variant.desired_weight


def _traffic_steps(deployment: dict[str, Any], fleet: Fleet) -> list[tuple[float, float]]:
    """(fraction of traffic on the new fleet, seconds to bake at it), in order."""
    policy = deployment.get("BlueGreenUpdatePolicy")
    if not policy:
        rolling = deployment.get("RollingUpdatePolicy") or {}
        return [(1.0, float(rolling.get("WaitIntervalInSeconds", 0)))]
    routing = policy.get("TrafficRoutingConfiguration") or {}
    wait = float(routing.get("WaitIntervalInSeconds", 0))
    termination = float(policy.get("TerminationWaitInSeconds", 0))
    kind = routing.get("Type", "ALL_AT_ONCE")
    instances = max(1, sum(v.desired_count for v in fleet.variants))

    def fraction(size: dict[str, Any] | None) -> float:
        if not size:
            return 1.0
        if size.get("Type") == "INSTANCE_COUNT":
            return min(1.0, float(size.get("Value", 1)) / instances)
        return min(1.0, float(size.get("Value", 100)) / 100.0)

    if kind == "CANARY":
        return [(fraction(routing.get("CanarySize")), wait), (1.0, termination)]
    if kind == "LINEAR":
        step = max(0.01, fraction(routing.get("LinearStepSize")))
        steps = []
        current = step
        while current < 1.0 - 1e-9:
            steps.append((current, wait))
            current += step
        return [*steps, (1.0, termination)]
    return [(1.0, wait + termination)]


def _alarms_in_alarm(runtime: Runtime, names: list[str]) -> list[str]:
    if not names:
        return []
    try:
        answer = runtime.client("cloudwatch").describe_alarms(AlarmNames=names)
    except Exception as err:  # CloudWatch trouble must not roll back a healthy deployment
        log.warning("could not read alarms %s: %s", names, err)
        return []
    alarms = answer.get("MetricAlarms", []) + answer.get("CompositeAlarms", [])
    return [a["AlarmName"] for a in alarms if a.get("StateValue") == "ALARM"]


def _bake(
    runtime: Runtime,
    record: dict[str, Any],
    generation: int,
    seconds: float,
    alarms: list[str],
    deadline: float | None,
) -> None:
    """Wait ``seconds`` while watching the rollback alarms; raises to roll back."""
    end = time.monotonic() + seconds
    while True:
        firing = _alarms_in_alarm(runtime, alarms)
        if firing:
            raise DeployFailed(
                f"Endpoint update rolled back: the alarm(s) {', '.join(firing)} went into ALARM "
                "state during the deployment."
            )
        if deadline is not None and time.monotonic() > deadline:
            raise DeployFailed(
                "Endpoint update rolled back: the deployment did not finish within "
                "MaximumExecutionTimeoutInSeconds."
            )
        with runtime.lock:
            if not still_current(runtime, record, generation):
                raise Superseded()
        if runtime.stopping.is_set():
            raise Superseded()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_ALARM_POLL_SECONDS, left))


def _set_stage(runtime: Runtime, record: dict[str, Any], generation: int, stage: str) -> None:
    with runtime.lock:
        if not still_current(runtime, record, generation):
            raise Superseded()
        pending = record.get("_pending")
        if pending is not None and pending["stage"] != stage:
            pending["stage"] = stage
            pending["since"] = now()


def _roll_back(runtime: Runtime, record: dict[str, Any], generation: int, reason: str) -> None:
    """Keep the endpoint on its old fleet, ``InService`` with ``reason`` as FailureReason."""
    with runtime.lock:
        if still_current(runtime, record, generation):
            record["_canary"] = None
            record["_pending"] = None
            record["EndpointStatus"] = "InService"
            record["FailureReason"] = reason[:_REASON_LIMIT]
            record["LastModifiedTime"] = now()


def _shift_traffic(
    runtime: Runtime,
    record: dict[str, Any],
    generation: int,
    new_fleet: Fleet,
    deployment: dict[str, Any],
    deadline: float | None,
) -> None:
    """Move traffic to ``new_fleet`` step by step, baking after each step."""
    alarms = [
        a["AlarmName"]
        for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms", [])
    ]
    for fraction, seconds in _traffic_steps(deployment, new_fleet):
        with runtime.lock:
            if not still_current(runtime, record, generation):
                raise Superseded()
            record["_canary"] = (new_fleet, fraction)
        _set_stage(runtime, record, generation, "ActivatingTraffic")
        if seconds > 0 or alarms:
            _set_stage(runtime, record, generation, "Baking")
            _bake(runtime, record, generation, seconds, alarms, deadline)


def update(
    runtime: Runtime,
    record: dict[str, Any],
    old_fleet: Fleet,
    config: dict[str, Any],
    deployment: dict[str, Any],
    generation: int,
) -> None:
    """Run ``UpdateEndpoint``'s blue/green deployment of ``config`` (in a runtime thread)."""
    name = record["EndpointName"]
    timeout = (deployment.get("BlueGreenUpdatePolicy") or {}).get(
        "MaximumExecutionTimeoutInSeconds"
    )
    deadline = time.monotonic() + float(timeout) if timeout else None
    new_fleet: Fleet | None = None
    try:
        failure = injected_failure(runtime, name, config["EndpointConfigName"])
        if failure:
            raise DeployFailed(failure)
        new_fleet = start_fleet(runtime, name, config)
        if deadline is not None and time.monotonic() > deadline:
            raise DeployFailed(
                "Endpoint update rolled back: the new fleet did not start within "
                "MaximumExecutionTimeoutInSeconds."
            )
        _shift_traffic(runtime, record, generation, new_fleet, deployment, deadline)
        with runtime.lock:
            if not still_current(runtime, record, generation):
                raise Superseded()
            set_serving(runtime, record, new_fleet)
            record["EndpointStatus"] = "InService"
            record["LastModifiedTime"] = now()
            record["_pending"] = None
        old_fleet.stop()
        return
    except DeployFailed as err:
        _roll_back(runtime, record, generation, str(err))
    except Superseded:
        pass
    except Exception as err:  # a bug: keep serving on the old fleet, report it
        log.exception("updating endpoint %s failed", name)
        _roll_back(runtime, record, generation, f"InternalFailure: {err}")
    if new_fleet is not None:
        new_fleet.stop()
