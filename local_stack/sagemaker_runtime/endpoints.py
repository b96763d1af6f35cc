"""Real-time endpoints of the local SageMaker runtime.

* ``Create``/``Describe``/``List``/``Update``/``DeleteEndpoint`` and
  ``UpdateEndpointWeightsAndCapacities``. Every production variant is served by model-server
  processes (``fleets.py``; ``_serving.py``: the model's ``inference.py`` driven by the
  ``sagemaker-inference`` toolkit) that must load the model before the endpoint goes
  ``InService`` (``Creating`` -> ``InService`` | ``Failed`` with a ``FailureReason``).
* ``UpdateEndpoint`` is a blue/green deployment with automatic rollback (``deployments.py``).
  As on AWS, an update that changes the instance type of a variant registered with
  Application Auto Scaling, or removes such a variant, is refused with a
  ``ValidationException``: the scalable target must be deregistered first
  (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-update.html).
* ``InvokeEndpoint``: ``invocations.py``, with per-variant CloudWatch metrics
  (``endpoint_metrics.py``) and data capture to S3 (``data_capture.py``).
* Target-tracking policies registered in Application Auto Scaling change the variants' instance
  counts (``autoscaling.py``), through the same path as ``UpdateEndpointWeightsAndCapacities``.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import _serving, deployments, tags
from local_stack.sagemaker_runtime.api import (
    action,
    now,
    validate_name,
    validate_request,
    validation_error,
)
from local_stack.sagemaker_runtime.autoscaling import DIMENSION, start_autoscaler
from local_stack.sagemaker_runtime.deployments import (
    ENDPOINTS,
    retain_variant_properties,
    still_current,
)
from local_stack.sagemaker_runtime.endpoint_configs import ENDPOINT_CONFIGS, get_config
from local_stack.sagemaker_runtime.endpoint_metrics import metrics_of
from local_stack.sagemaker_runtime.fleets import Fleet, variant_count
from local_stack.sagemaker_runtime.invocations import invocation_response
from local_stack.sagemaker_runtime.registry import filter_and_sort, page_response, public

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

# Re-exported for the endpoint's persistence and request routing.
__all__ = ["ENDPOINTS", "ENDPOINT_CONFIGS", "invocation_response"]


def _endpoint_arn(runtime: Runtime, name: str) -> str:
    return runtime.arn("endpoint", name)


def _get_endpoint(runtime: Runtime, name: str) -> dict[str, Any]:
    with runtime.lock:
        record = runtime.store(ENDPOINTS).get(name)
    if record is None:
        raise validation_error(f'Could not find endpoint "{_endpoint_arn(runtime, name)}".')
    return record


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    answer = public(record)
    fleet: Fleet | None = record.get("_active")
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
        count = variant_count(spec)
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
    config = copy.deepcopy(get_config(runtime, request["EndpointConfigName"]))
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
    deploy_first_fleet(runtime, record, config, 1)
    return {"EndpointArn": arn}


def deploy_first_fleet(
    runtime: Runtime, record: dict[str, Any], config: dict[str, Any], generation: int
) -> None:
    """Start an endpoint's fleet in a runtime thread (a new endpoint, or one reloaded from
    saved state) and the runtime's autoscaler if it is not running yet."""
    start_autoscaler(runtime, lambda *args: _autoscale(runtime, *args))
    runtime.run_async(
        f"endpoint-{record['EndpointName']}",
        lambda: deployments.create(runtime, record, config, generation),
    )


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
    config = copy.deepcopy(get_config(runtime, request["EndpointConfigName"]))
    with runtime.lock:
        serving = record["EndpointStatus"] == "InService"
    if serving:
        _refuse_scaled_variant_changes(runtime, record, config)
    with runtime.lock:
        status = record["EndpointStatus"]
        if status == "Failed":
            raise validation_error(
                f'Cannot update failed endpoint "{record["EndpointArn"]}". Delete it instead.'
            )
        if status != "InService":
            raise validation_error(f'Cannot update in-progress endpoint "{record["EndpointArn"]}".')
        old_fleet: Fleet = record["_active"]
        if request.get("RetainAllVariantProperties"):
            retain_variant_properties(config, old_fleet, request)
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
        lambda: deployments.update(runtime, record, old_fleet, config, deployment, generation),
    )
    return {"EndpointArn": record["EndpointArn"]}


@action("UpdateEndpointWeightsAndCapacities")
def update_endpoint_weights_and_capacities(
    runtime: Runtime, request: dict[str, Any]
) -> dict[str, Any]:
    validate_request("UpdateEndpointWeightsAndCapacities", request)
    record = _get_endpoint(runtime, request["EndpointName"])
    desired = request["DesiredWeightsAndCapacities"]
    with runtime.lock:
        if record["EndpointStatus"] != "InService":
            raise validation_error(f'Cannot update in-progress endpoint "{record["EndpointArn"]}".')
        fleet: Fleet = record["_active"]
        unknown = [d["VariantName"] for d in desired if fleet.variant(d["VariantName"]) is None]
        if unknown:
            raise validation_error(
                f"The variant name(s) [{', '.join(unknown)}] is/are not present in the "
                "endpoint's current config."
            )
        if any((d.get("DesiredInstanceCount") or 0) < 0 for d in desired):
            raise validation_error("DesiredInstanceCount must be >= 0.")
        _set_capacities(runtime, record, fleet, desired)
    return {"EndpointArn": record["EndpointArn"]}


def _set_capacities(
    runtime: Runtime, record: dict[str, Any], fleet: Fleet, desired: list[dict[str, Any]]
) -> None:
    """Set desired weights/counts (hold ``runtime.lock``); the endpoint is ``Updating`` until
    the variants run their new number of processes."""
    for wanted in desired:
        variant = fleet.variant(wanted["VariantName"])
        if variant is None:
            continue
        if wanted.get("DesiredWeight") is not None:
            variant.desired_weight = float(wanted["DesiredWeight"])
        if wanted.get("DesiredInstanceCount") is not None:
            variant.desired_count = int(wanted["DesiredInstanceCount"])
    record["_generation"] += 1
    generation = record["_generation"]
    record["EndpointStatus"] = "Updating"
    record["LastModifiedTime"] = now()

    def apply() -> None:
        runtime.stopping.wait(0.2)
        try:
            for variant in fleet.variants:
                variant.resize(variant.desired_count)
        except _serving.ServingError as err:  # keeps serving on the processes it has
            record["FailureReason"] = f"Scaling the endpoint failed: {err}"
        with runtime.lock:
            if not still_current(runtime, record, generation):
                return
            for variant in fleet.variants:
                variant.current_weight = variant.desired_weight
                variant.current_count = variant.desired_count
            record["EndpointStatus"] = "InService"
            record["LastModifiedTime"] = now()

    runtime.run_async(f"endpoint-{record['EndpointName']}-scaling", apply)


def _autoscale(runtime: Runtime, endpoint: str, variant_name: str, count: int | None) -> int | None:
    """The autoscaler's way in: the variant's count (``None`` if it cannot be scaled now),
    after setting it to ``count`` when given."""
    with runtime.lock:
        record = runtime.store(ENDPOINTS).get(endpoint)
        if record is None or record["EndpointStatus"] != "InService":
            return None
        fleet: Fleet = record["_active"]
        variant = fleet.variant(variant_name)
        if variant is None:
            return None
        if count is not None and count != variant.desired_count:
            _set_capacities(
                runtime,
                record,
                fleet,
                [{"VariantName": variant_name, "DesiredInstanceCount": count}],
            )
        return variant.desired_count


def _refuse_scaled_variant_changes(runtime: Runtime, record: dict[str, Any], config: dict) -> None:
    """AWS refuses an update that changes the instance type of, or removes, a variant that is
    an Application Auto Scaling target (endpoint-scaling-update.html)."""
    fleet: Fleet = record["_active"]
    new = {spec["VariantName"]: spec for spec in config["ProductionVariants"]}
    changed = [
        v.name
        for v in fleet.variants
        if v.name not in new or new[v.name].get("InstanceType") != v.instance_type
    ]
    if not changed:
        return
    answer = runtime.client("application-autoscaling", as_service=True).describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[f"endpoint/{record['EndpointName']}/variant/{name}" for name in changed],
        ScalableDimension=DIMENSION,
    )
    scaled = sorted(t["ResourceId"].rsplit("/", 1)[-1] for t in answer["ScalableTargets"])
    if scaled:
        raise validation_error(
            f"The variant(s) [{', '.join(scaled)}] of endpoint {record['EndpointName']} are "
            "registered with Application Auto Scaling and this update changes their instance "
            "type or removes them. Deregister the scalable target(s) (DeregisterScalableTarget) "
            "before the update and register them again afterwards."
        )


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
    metrics_of(runtime).forget(name)
    if fleets:

        def stop() -> None:
            for fleet in fleets:
                fleet.stop(drain_timeout=10)

        threading.Thread(target=stop, name=f"delete-{name}", daemon=True).start()
    return {}
