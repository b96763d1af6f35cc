"""Real-time endpoints of the local SageMaker runtime.

* Endpoint configs: ``Create``/``Describe``/``List``/``DeleteEndpointConfig``.
* Endpoints: ``Create``/``Describe``/``List``/``Update``/``DeleteEndpoint`` and
  ``UpdateEndpointWeightsAndCapacities``. Every production variant is served by a model server
  process (``_serving.py``: the model's ``inference.py`` driven by the ``sagemaker-inference``
  toolkit) that must load the model before the endpoint goes ``InService``
  (``Creating`` -> ``InService`` | ``Failed`` with a ``FailureReason``).
* ``UpdateEndpoint`` is a blue/green deployment: the old fleet keeps serving while the new one
  starts; traffic moves (all at once, or canary / linear steps of
  ``DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration``) only once the new
  fleet is healthy, then the old fleet is kept for ``TerminationWaitInSeconds`` (baking). If the
  new fleet fails to start, a fault is armed for the endpoint or config name, an alarm of
  ``AutoRollbackConfiguration.Alarms`` is in ``ALARM`` in CloudWatch while baking, or
  ``MaximumExecutionTimeoutInSeconds`` passes, the update rolls back: traffic returns to the old
  fleet and the endpoint is ``InService`` on its OLD ``EndpointConfigName`` with a
  ``FailureReason`` (what SageMaker reports after a failed update). In-flight requests always
  finish on the fleet that took them, so an update never fails a request.
* ``InvokeEndpoint`` (``POST /endpoints/<name>/invocations``, see :func:`invocation_response`):
  picks a variant by weight (or ``X-Amzn-SageMaker-Target-Variant``), forwards the body with
  ``Content-Type``/``Accept`` and answers with the model's body, ``Content-Type`` and
  ``x-Amzn-Invoked-Production-Variant``; a model error is ``ModelError`` (424) with
  ``OriginalStatusCode``/``OriginalMessage``, an unknown endpoint ``ValidationError``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from local_stack.sagemaker_runtime import _serving, tags
from local_stack.sagemaker_runtime.api import (
    SageMakerError,
    action,
    now,
    validate_name,
    validate_request,
    validation_error,
)
from local_stack.sagemaker_runtime.registry import (
    filter_and_sort,
    get_model,
    page_response,
    public,
    serving_container,
)

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

ENDPOINT_CONFIGS = "EndpointConfig"
ENDPOINTS = "Endpoint"
LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints"
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
SERVING_STATUSES = ("InService", "Updating", "RollingBack", "SystemUpdating")
_ALARM_POLL_SECONDS = 0.5
_REASON_LIMIT = 1024


class _DeployFailed(Exception):
    """A deployment failed; the message is the FailureReason."""


class _Superseded(Exception):
    """The endpoint was deleted (or updated again) while a deployment ran."""


# --- fleets ------------------------------------------------------------------------------------
@dataclass
class _Variant:
    name: str
    model_name: str
    image: str
    server: _serving.ModelServer
    instance_type: str | None
    current_weight: float
    desired_weight: float
    current_count: int
    desired_count: int
    resolved_at: Any = field(default_factory=now)

    def summary(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.image.encode()).hexdigest()
        repository = self.image.split("@", 1)[0].rsplit(":", 1)[0] if self.image else ""
        return {
            "VariantName": self.name,
            "DeployedImages": [
                {
                    "SpecifiedImage": self.image,
                    "ResolvedImage": f"{repository}@sha256:{digest}",
                    "ResolutionTime": self.resolved_at,
                }
            ],
            "CurrentWeight": float(self.current_weight),
            "DesiredWeight": float(self.desired_weight),
            "CurrentInstanceCount": int(self.current_count),
            "DesiredInstanceCount": int(self.desired_count),
        }


@dataclass
class _Fleet:
    """The model servers of one endpoint config deployed on an endpoint."""

    config_name: str
    variants: list[_Variant]

    def pick(self, target: str | None) -> _Variant:
        if target:
            for variant in self.variants:
                if variant.name == target:
                    return variant
            raise _invoke_error(
                "ValidationError", f"Variant {target} not found in the endpoint's config.", 400
            )
        weights = [max(0.0, v.current_weight) for v in self.variants]
        if sum(weights) <= 0:
            weights = [1.0] * len(self.variants)
        return random.choices(self.variants, weights=weights, k=1)[0]

    def stop(self, drain_timeout: float = 30.0) -> None:
        for variant in self.variants:
            variant.server.stop(drain_timeout=drain_timeout)


def _variant_count(variant: dict[str, Any]) -> int:
    if "InitialInstanceCount" in variant:
        return int(variant["InitialInstanceCount"])
    return 1  # serverless variants


def _start_fleet(runtime: Runtime, endpoint: str, config: dict[str, Any]) -> _Fleet:
    """Start a model server per production variant; raises :class:`_DeployFailed`."""
    specs = config["ProductionVariants"]

    def start(spec: dict[str, Any]) -> _Variant:
        variant_name = spec["VariantName"]
        try:
            container = serving_container(runtime, spec["ModelName"])
            model = _serving.prepare_model(runtime, container)
        except SageMakerError as err:
            raise _DeployFailed(err.message) from err
        except _serving.ServingError as err:
            raise _DeployFailed(
                f"Failed to download model data for production variant {variant_name}: {err}"
            ) from err
        server = _serving.ModelServer(
            runtime,
            model,
            f"{endpoint}-{variant_name}",
            f"{LOG_GROUP_PREFIX}/{endpoint}",
            f"{variant_name}/local-{uuid.uuid4().hex[:12]}",
        )
        timeout = spec.get("ContainerStartupHealthCheckTimeoutInSeconds")
        try:
            server.start(float(timeout) if timeout else _serving.DEFAULT_STARTUP_TIMEOUT)
        except _serving.ServingError as err:
            raise _DeployFailed(
                f"The primary container for production variant {variant_name} did not pass "
                f"the ping health check. Please check CloudWatch logs for this endpoint. "
                f"({err})"
            ) from err
        count = _variant_count(spec)
        weight = float(spec.get("InitialVariantWeight", 1.0))
        return _Variant(
            name=variant_name,
            model_name=spec["ModelName"],
            image=model.image,
            server=server,
            instance_type=spec.get("InstanceType"),
            current_weight=weight,
            desired_weight=weight,
            current_count=count,
            desired_count=count,
        )

    variants: list[_Variant] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(len(specs), thread_name_prefix=f"deploy-{endpoint}") as pool:
        for future in [pool.submit(start, spec) for spec in specs]:
            try:
                variants.append(future.result())
            except BaseException as err:
                errors.append(err)
    if errors:
        for variant in variants:
            variant.server.stop(drain_timeout=0)
        first = errors[0]
        if isinstance(first, _DeployFailed):
            raise first
        raise _DeployFailed(f"InternalFailure: {type(first).__name__}: {first}") from first
    return _Fleet(config["EndpointConfigName"], variants)


# --- endpoint configs --------------------------------------------------------------------------
def _config_arn(runtime: Runtime, name: str) -> str:
    return runtime.arn("endpoint-config", name)


def _get_config(runtime: Runtime, name: str) -> dict[str, Any]:
    with runtime.lock:
        config = runtime.store(ENDPOINT_CONFIGS).get(name)
    if config is None:
        raise validation_error(
            f'Could not find endpoint configuration "{_config_arn(runtime, name)}".'
        )
    return config


@action("CreateEndpointConfig")
def create_endpoint_config(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("CreateEndpointConfig", request)
    name = validate_name(request["EndpointConfigName"], "EndpointConfigName")
    variants = copy.deepcopy(request["ProductionVariants"])
    if not variants:
        raise validation_error("ProductionVariants must contain at least one variant.")
    names = [v["VariantName"] for v in variants]
    if len(set(names)) != len(names):
        raise validation_error("The variant names of an endpoint config must be unique.")
    for variant in variants:
        validate_name(variant["VariantName"], "VariantName")
        get_model(runtime, variant["ModelName"])
        if "InitialInstanceCount" not in variant and "ServerlessConfig" not in variant:
            raise validation_error(
                f"Production variant {variant['VariantName']} needs an InitialInstanceCount."
            )
        variant.setdefault("InitialVariantWeight", 1.0)
    arn = _config_arn(runtime, name)
    record: dict[str, Any] = {
        "EndpointConfigName": name,
        "EndpointConfigArn": arn,
        "ProductionVariants": variants,
        "CreationTime": now(),
        "_seq": time.monotonic_ns(),
    }
    for key in (
        "DataCaptureConfig",
        "KmsKeyId",
        "AsyncInferenceConfig",
        "ExplainerConfig",
        "ShadowProductionVariants",
        "ExecutionRoleArn",
        "VpcConfig",
        "EnableNetworkIsolation",
        "MetricsConfig",
    ):
        if key in request:
            record[key] = copy.deepcopy(request[key])
    with runtime.lock:
        store = runtime.store(ENDPOINT_CONFIGS)
        if name in store:
            raise validation_error(
                f'Cannot create already existing endpoint configuration "{arn}".'
            )
        store[name] = record
    tags.set_tags(runtime, arn, request.get("Tags"))
    return {"EndpointConfigArn": arn}


@action("DescribeEndpointConfig")
def describe_endpoint_config(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DescribeEndpointConfig", request)
    config = _get_config(runtime, request["EndpointConfigName"])
    with runtime.lock:
        return public(config)


@action("ListEndpointConfigs")
def list_endpoint_configs(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("ListEndpointConfigs", request)
    with runtime.lock:
        records = list(runtime.store(ENDPOINT_CONFIGS).values())
    items = filter_and_sort(
        records,
        request,
        "EndpointConfigName",
        "Descending",
        {"Name": "EndpointConfigName", "CreationTime": "_seq"},
    )
    keys = ("EndpointConfigName", "EndpointConfigArn", "CreationTime")
    return page_response([{k: r[k] for k in keys} for r in items], request, "EndpointConfigs")


@action("DeleteEndpointConfig")
def delete_endpoint_config(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DeleteEndpointConfig", request)
    name = request["EndpointConfigName"]
    with runtime.lock:
        record = runtime.store(ENDPOINT_CONFIGS).pop(name, None)
    if record is None:
        raise validation_error(
            f'Could not find endpoint configuration "{_config_arn(runtime, name)}".'
        )
    tags.forget(runtime, record["EndpointConfigArn"])
    return {}


# --- endpoints ---------------------------------------------------------------------------------
def _endpoint_arn(runtime: Runtime, name: str) -> str:
    return runtime.arn("endpoint", name)


def _get_endpoint(runtime: Runtime, name: str) -> dict[str, Any]:
    with runtime.lock:
        record = runtime.store(ENDPOINTS).get(name)
    if record is None:
        raise validation_error(f'Could not find endpoint "{_endpoint_arn(runtime, name)}".')
    return record


def _data_capture_summary(config: dict[str, Any]) -> dict[str, Any] | None:
    capture = config.get("DataCaptureConfig")
    if not capture:
        return None
    enabled = bool(capture.get("EnableCapture", True))
    summary = {
        "EnableCapture": enabled,
        "CaptureStatus": "Started" if enabled else "Stopped",
        "CurrentSamplingPercentage": int(capture.get("InitialSamplingPercentage", 0)),
        "DestinationS3Uri": capture.get("DestinationS3Uri", ""),
    }
    if capture.get("KmsKeyId"):
        summary["KmsKeyId"] = capture["KmsKeyId"]
    return summary


def _set_serving(runtime: Runtime, record: dict[str, Any], fleet: _Fleet) -> None:
    """Make ``fleet`` the endpoint's active fleet (hold ``runtime.lock``)."""
    record["_active"] = fleet
    record["_canary"] = None
    record["EndpointConfigName"] = fleet.config_name
    with contextlib.suppress(SageMakerError):
        summary = _data_capture_summary(_get_config(runtime, fleet.config_name))
        if summary:
            record["DataCaptureConfig"] = summary
        else:
            record.pop("DataCaptureConfig", None)


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    answer = public(record)
    fleet: _Fleet | None = record.get("_active")
    if fleet is not None and record["EndpointStatus"] != "Failed":
        answer["ProductionVariants"] = [v.summary() for v in fleet.variants]
    pending = record.get("_pending")
    if pending is not None:
        answer["PendingDeploymentSummary"] = _pending_summary(record, pending)
    return answer


def _pending_summary(record: dict[str, Any], pending: dict[str, Any]) -> dict[str, Any]:
    config = pending["config"]
    canary = record.get("_canary")
    fraction = canary[1] if canary else 0.0
    variants = []
    for spec in config["ProductionVariants"]:
        weight = float(spec.get("InitialVariantWeight", 1.0))
        count = _variant_count(spec)
        variants.append(
            {
                "VariantName": spec["VariantName"],
                "CurrentWeight": weight * fraction,
                "DesiredWeight": weight,
                "CurrentInstanceCount": count if pending["stage"] != "Creating" else 0,
                "DesiredInstanceCount": count,
                **({"InstanceType": spec["InstanceType"]} if "InstanceType" in spec else {}),
                "VariantStatus": [{"Status": pending["stage"], "StartTime": pending["since"]}],
            }
        )
    return {
        "EndpointConfigName": config["EndpointConfigName"],
        "ProductionVariants": variants,
        "StartTime": pending["start"],
    }


@action("CreateEndpoint")
def create_endpoint(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("CreateEndpoint", request)
    name = validate_name(request["EndpointName"], "EndpointName")
    config = copy.deepcopy(_get_config(runtime, request["EndpointConfigName"]))
    arn = _endpoint_arn(runtime, name)
    created = now()
    record: dict[str, Any] = {
        "EndpointName": name,
        "EndpointArn": arn,
        "EndpointConfigName": config["EndpointConfigName"],
        "EndpointStatus": "Creating",
        "CreationTime": created,
        "LastModifiedTime": created,
        "_seq": time.monotonic_ns(),
        "_generation": 1,
        "_active": None,
        "_canary": None,
        "_pending": None,
    }
    if request.get("DeploymentConfig"):
        record["LastDeploymentConfig"] = copy.deepcopy(request["DeploymentConfig"])
    with runtime.lock:
        store = runtime.store(ENDPOINTS)
        if name in store:
            raise validation_error(f'Cannot create already existing endpoint "{arn}".')
        store[name] = record
    tags.set_tags(runtime, arn, request.get("Tags"))
    _serving.warm_up()
    runtime.run_async(f"endpoint-{name}", lambda: _create(runtime, record, config, 1))
    return {"EndpointArn": arn}


def _still_current(runtime: Runtime, record: dict[str, Any], generation: int) -> bool:
    """Hold ``runtime.lock``: is the deployment ``generation`` still the endpoint's latest?"""
    current = runtime.store(ENDPOINTS).get(record["EndpointName"])
    return current is record and record["_generation"] == generation


def _injected_failure(runtime: Runtime, endpoint: str, config_name: str) -> str | None:
    delay = runtime.faults.delay_for(endpoint) + runtime.faults.delay_for(config_name)
    if delay:
        runtime.stopping.wait(delay)
    return runtime.faults.failure_for(endpoint) or runtime.faults.failure_for(config_name)


def _create(runtime: Runtime, record: dict[str, Any], config: dict[str, Any], gen: int) -> None:
    name = record["EndpointName"]
    try:
        failure = _injected_failure(runtime, name, config["EndpointConfigName"])
        if failure:
            raise _DeployFailed(failure)
        fleet = _start_fleet(runtime, name, config)
    except _DeployFailed as err:
        with runtime.lock:
            if _still_current(runtime, record, gen):
                record["EndpointStatus"] = "Failed"
                record["FailureReason"] = str(err)[:_REASON_LIMIT]
                record["LastModifiedTime"] = now()
        return
    except Exception as err:  # a bug: fail the endpoint rather than leave it Creating
        log.exception("creating endpoint %s failed", name)
        with runtime.lock:
            if _still_current(runtime, record, gen):
                record["EndpointStatus"] = "Failed"
                record["FailureReason"] = f"InternalFailure: {err}"[:_REASON_LIMIT]
        return
    with runtime.lock:
        current = _still_current(runtime, record, gen)
        if current:
            _set_serving(runtime, record, fleet)
            record["EndpointStatus"] = "InService"
            record["LastModifiedTime"] = now()
    if not current:
        fleet.stop(drain_timeout=0)


@action("DescribeEndpoint")
def describe_endpoint(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DescribeEndpoint", request)
    record = _get_endpoint(runtime, request["EndpointName"])
    with runtime.lock:
        return _describe(record)


@action("ListEndpoints")
def list_endpoints(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("ListEndpoints", request)
    with runtime.lock:
        records = [
            {k: v for k, v in r.items() if not k.startswith("_") or k == "_seq"}
            for r in runtime.store(ENDPOINTS).values()
        ]
    items = filter_and_sort(
        records,
        request,
        "EndpointName",
        "Descending",
        {"Name": "EndpointName", "CreationTime": "_seq", "Status": "EndpointStatus"},
        status_field="EndpointStatus",
    )
    keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
    return page_response([{k: r[k] for k in keys} for r in items], request, "Endpoints")


@action("UpdateEndpoint")
def update_endpoint(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("UpdateEndpoint", request)
    record = _get_endpoint(runtime, request["EndpointName"])
    config = copy.deepcopy(_get_config(runtime, request["EndpointConfigName"]))
    with runtime.lock:
        status = record["EndpointStatus"]
        if status == "Failed":
            raise validation_error(
                f'Cannot update failed endpoint "{record["EndpointArn"]}". Delete it instead.'
            )
        if status != "InService":
            raise validation_error(f'Cannot update in-progress endpoint "{record["EndpointArn"]}".')
        old_fleet: _Fleet = record["_active"]
        if request.get("RetainAllVariantProperties"):
            _retain_variant_properties(config, old_fleet, request)
        if request.get("DeploymentConfig"):
            record["LastDeploymentConfig"] = copy.deepcopy(request["DeploymentConfig"])
        elif not request.get("RetainDeploymentConfig"):
            record.pop("LastDeploymentConfig", None)
        deployment = copy.deepcopy(record.get("LastDeploymentConfig") or {})
        record["_generation"] += 1
        generation = record["_generation"]
        started = now()
        record["EndpointStatus"] = "Updating"
        record.pop("FailureReason", None)
        record["LastModifiedTime"] = started
        record["_pending"] = {
            "config": config,
            "stage": "Creating",
            "since": started,
            "start": started,
        }
    _serving.warm_up()
    runtime.run_async(
        f"endpoint-{record['EndpointName']}",
        lambda: _update(runtime, record, old_fleet, config, deployment, generation),
    )
    return {"EndpointArn": record["EndpointArn"]}


def _retain_variant_properties(
    config: dict[str, Any], old_fleet: _Fleet, request: dict[str, Any]
) -> None:
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


def _traffic_steps(deployment: dict[str, Any], fleet: _Fleet) -> list[tuple[float, float]]:
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
            raise _DeployFailed(
                f"Endpoint update rolled back: the alarm(s) {', '.join(firing)} went into ALARM "
                "state during the deployment."
            )
        if deadline is not None and time.monotonic() > deadline:
            raise _DeployFailed(
                "Endpoint update rolled back: the deployment did not finish within "
                "MaximumExecutionTimeoutInSeconds."
            )
        with runtime.lock:
            if not _still_current(runtime, record, generation):
                raise _Superseded()
        if runtime.stopping.is_set():
            raise _Superseded()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_ALARM_POLL_SECONDS, left))


def _set_stage(runtime: Runtime, record: dict[str, Any], generation: int, stage: str) -> None:
    with runtime.lock:
        if not _still_current(runtime, record, generation):
            raise _Superseded()
        pending = record.get("_pending")
        if pending is not None and pending["stage"] != stage:
            pending["stage"] = stage
            pending["since"] = now()


def _update(
    runtime: Runtime,
    record: dict[str, Any],
    old_fleet: _Fleet,
    config: dict[str, Any],
    deployment: dict[str, Any],
    generation: int,
) -> None:
    name = record["EndpointName"]
    policy = deployment.get("BlueGreenUpdatePolicy") or {}
    timeout = policy.get("MaximumExecutionTimeoutInSeconds")
    deadline = time.monotonic() + float(timeout) if timeout else None
    alarms = [
        a["AlarmName"]
        for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms", [])
    ]
    new_fleet: _Fleet | None = None
    try:
        failure = _injected_failure(runtime, name, config["EndpointConfigName"])
        if failure:
            raise _DeployFailed(failure)
        new_fleet = _start_fleet(runtime, name, config)
        if deadline is not None and time.monotonic() > deadline:
            raise _DeployFailed(
                "Endpoint update rolled back: the new fleet did not start within "
                "MaximumExecutionTimeoutInSeconds."
            )
        for fraction, seconds in _traffic_steps(deployment, new_fleet):
            with runtime.lock:
                if not _still_current(runtime, record, generation):
                    raise _Superseded()
                record["_canary"] = (new_fleet, fraction)
            _set_stage(runtime, record, generation, "ActivatingTraffic")
            if seconds > 0 or alarms:
                _set_stage(runtime, record, generation, "Baking")
                _bake(runtime, record, generation, seconds, alarms, deadline)
        with runtime.lock:
            if not _still_current(runtime, record, generation):
                raise _Superseded()
            _set_serving(runtime, record, new_fleet)
            record["EndpointStatus"] = "InService"
            record["LastModifiedTime"] = now()
            record["_pending"] = None
        old_fleet.stop()
    except _DeployFailed as err:
        with runtime.lock:
            if _still_current(runtime, record, generation):
                record["_canary"] = None
                record["_pending"] = None
                record["EndpointStatus"] = "InService"
                record["FailureReason"] = str(err)[:_REASON_LIMIT]
                record["LastModifiedTime"] = now()
        if new_fleet is not None:
            new_fleet.stop()
    except _Superseded:
        if new_fleet is not None:
            new_fleet.stop()
    except Exception as err:  # a bug: keep serving on the old fleet, report it
        log.exception("updating endpoint %s failed", name)
        with runtime.lock:
            if _still_current(runtime, record, generation):
                record["_canary"] = None
                record["_pending"] = None
                record["EndpointStatus"] = "InService"
                record["FailureReason"] = f"InternalFailure: {err}"[:_REASON_LIMIT]
        if new_fleet is not None:
            new_fleet.stop()


@action("UpdateEndpointWeightsAndCapacities")
def update_endpoint_weights_and_capacities(
    runtime: Runtime, request: dict[str, Any]
) -> dict[str, Any]:
    validate_request("UpdateEndpointWeightsAndCapacities", request)
    record = _get_endpoint(runtime, request["EndpointName"])
    with runtime.lock:
        if record["EndpointStatus"] != "InService":
            raise validation_error(f'Cannot update in-progress endpoint "{record["EndpointArn"]}".')
        fleet: _Fleet = record["_active"]
        variants = {v.name: v for v in fleet.variants}
        unknown = [
            d["VariantName"]
            for d in request["DesiredWeightsAndCapacities"]
            if d["VariantName"] not in variants
        ]
        if unknown:
            raise validation_error(
                f"The variant name(s) [{', '.join(unknown)}] is/are not present in the "
                "endpoint's current config."
            )
        for desired in request["DesiredWeightsAndCapacities"]:
            if (
                desired.get("DesiredInstanceCount") is not None
                and desired["DesiredInstanceCount"] < 0
            ):
                raise validation_error("DesiredInstanceCount must be >= 0.")
        for desired in request["DesiredWeightsAndCapacities"]:
            variant = variants[desired["VariantName"]]
            if desired.get("DesiredWeight") is not None:
                variant.desired_weight = float(desired["DesiredWeight"])
            if desired.get("DesiredInstanceCount") is not None:
                variant.desired_count = int(desired["DesiredInstanceCount"])
        record["_generation"] += 1
        generation = record["_generation"]
        record["EndpointStatus"] = "Updating"
        record["LastModifiedTime"] = now()

    def apply() -> None:
        runtime.stopping.wait(0.2)
        with runtime.lock:
            if not _still_current(runtime, record, generation):
                return
            for variant in fleet.variants:
                variant.current_weight = variant.desired_weight
                variant.current_count = variant.desired_count
            record["EndpointStatus"] = "InService"
            record["LastModifiedTime"] = now()

    runtime.run_async(f"endpoint-{record['EndpointName']}-scaling", apply)
    return {"EndpointArn": record["EndpointArn"]}


@action("DeleteEndpoint")
def delete_endpoint(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DeleteEndpoint", request)
    name = request["EndpointName"]
    with runtime.lock:
        record = runtime.store(ENDPOINTS).pop(name, None)
        if record is None:
            raise validation_error(f'Could not find endpoint "{_endpoint_arn(runtime, name)}".')
        record["_generation"] += 1
        record["EndpointStatus"] = "Deleting"
        fleets = [f for f in (record.get("_active"), (record.get("_canary") or (None,))[0]) if f]
    tags.forget(runtime, record["EndpointArn"])
    if fleets:

        def stop() -> None:
            for fleet in fleets:
                fleet.stop(drain_timeout=10)

        threading.Thread(target=stop, name=f"delete-{name}", daemon=True).start()
    return {}


# --- InvokeEndpoint ----------------------------------------------------------------------------
class _InvokeError(Exception):
    def __init__(self, code: str, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("Message", code))
        self.code = code
        self.status = status
        self.body = body

    def response(self) -> Response:
        return Response(
            json.dumps(self.body),
            status=self.status,
            headers={"x-amzn-ErrorType": self.code},
            content_type="application/json",
        )


def _invoke_error(code: str, message: str, status: int) -> _InvokeError:
    return _InvokeError(code, status, {"__type": code, "Message": message, "message": message})


def invocation_response(runtime: Runtime, name: str, request: Request) -> Response:
    """Answer ``POST /endpoints/<name>/invocations`` (SageMaker Runtime ``InvokeEndpoint``)."""
    try:
        return _invoke(runtime, name, request)
    except _InvokeError as err:
        return err.response()


def _invoke(runtime: Runtime, name: str, request: Request) -> Response:
    body = request.get_data()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise _invoke_error(
            "ValidationError", "Request payload size exceeds the limit of 6 MB.", 413
        )
    content_type = request.headers.get("Content-Type")
    accept = request.headers.get("Accept")
    target = request.headers.get("X-Amzn-SageMaker-Target-Variant")
    with runtime.lock:
        record = runtime.store(ENDPOINTS).get(name)
        if record is None:
            raise _invoke_error(
                "ValidationError",
                f"Endpoint {name} of account {runtime.account_id} not found.",
                400,
            )
        status = record["EndpointStatus"]
        fleet: _Fleet | None = record.get("_active")
        if status not in SERVING_STATUSES or fleet is None:
            raise _invoke_error(
                "ValidationError",
                f"Endpoint {name} of account {runtime.account_id} is not in service "
                f"(status {status}).",
                400,
            )
        canary = record.get("_canary")
        if canary is not None and random.random() < canary[1]:
            fleet = canary[0]
        variant = fleet.pick(target)
        if not variant.server.try_acquire():
            raise _invoke_error(
                "ServiceUnavailable", "The model server is restarting; try again.", 503
            )
    try:
        answer_status, answer_type, answer = variant.server.invoke(body, content_type, accept)
    except _serving.ServingError as err:
        raise _invoke_error("ServiceUnavailable", f"The model server failed: {err}", 503) from err
    finally:
        variant.server.release()
    if answer_status >= 400:
        raise _model_error(runtime, name, answer_status, answer)
    return Response(
        answer,
        status=200,
        headers={"x-Amzn-Invoked-Production-Variant": variant.name},
        content_type=answer_type,
    )


def _model_error(runtime: Runtime, name: str, status: int, answer: bytes) -> _InvokeError:
    original = answer.decode("utf-8", errors="replace")
    side = "client" if status < 500 else "server"
    group = f"{LOG_GROUP_PREFIX}/{name}"
    message = (
        f"Received {side} error ({status}) from primary with message "
        f'"{original.strip()[:1000]}". See CloudWatch log group {group} in account '
        f"{runtime.account_id} for more information."
    )
    return _InvokeError(
        "ModelError",
        424,
        {
            "__type": "ModelError",
            "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
            "Message": message,
            "message": message,
            "OriginalStatusCode": status,
            "OriginalMessage": original,
            "LogStreamArn": (
                f"arn:aws:logs:{runtime.region}:{runtime.account_id}:log-group:{group}"
            ),
        },
    )
