"""Task bodies of the endpoint DAG (the wiring is in ``endpoint_dag.py``).

Per stage: plan the endpoint config, its rollback alarms and its scaling (pure builders in
``endpoint_requests``) → create the config and put the alarms → create the endpoint, leave it
alone when it already serves the config, or update it blue/green → wait (``EndpointDeployed
Sensor``: a rollback SageMaker reports as ``InService`` on the old config is a failure here) →
autoscaling → smoke test (roll back to the previous config on a mismatch). Functions take boto3
clients, so they run against the local stack in tests as they do against AWS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops_sagemaker import endpoint_requests as req
from mlops_sagemaker.config import Stage, UseCase
from mlops_sagemaker.failures import ClassifiedError, Kind
from mlops_sagemaker.model_registry import ModelVersion, select_model
from mlops_sagemaker.payloads import Payload

log = logging.getLogger(__name__)

# Statuses of an endpoint with a deployment in flight (DescribeEndpoint.EndpointStatus).
IN_PROGRESS = ("Creating", "Updating", "SystemUpdating", "RollingBack")


class DeploymentFailed(ClassifiedError):
    """A deployment did not end serving the requested config (failed, or rolled back)."""

    category = "deployment"


class EndpointBusy(ClassifiedError):
    """The endpoint is busy with another deployment: retrying later can succeed."""

    category = "deployment"
    kind = Kind.TRANSIENT


class SmokeTestFailed(ClassifiedError):
    """The deployed endpoint answered wrongly (or not at all) to the version's test rows."""

    category = "smoke-test"


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class StagePlan(Payload):
    """Every request of one stage's deployment, built before anything is sent."""

    stage: str
    endpoint_name: str
    endpoint_config: dict[str, Any]
    alarms: list[dict[str, Any]]
    deployment: dict[str, Any]
    scalable_target: dict[str, Any]
    scaling_policy: dict[str, Any]

    @property
    def config_name(self) -> str:
        """The endpoint config this plan deploys."""
        return self.endpoint_config["EndpointConfigName"]

    @property
    def instance_type(self) -> str:
        """The instance type of the planned variant."""
        return self.endpoint_config["ProductionVariants"][0]["InstanceType"]


@dataclass(frozen=True)
class Deployment(Payload):
    """What ``deploy`` did: ``created``, ``updated``, ``unchanged`` or ``in-progress``."""

    endpoint_name: str
    requested_config: str
    previous_config: str | None
    action: str


@dataclass(frozen=True)
class SmokeResult(Payload):
    """The smoke test's figures (latencies of single-row invocations, in milliseconds)."""

    endpoint_name: str
    rows: int
    max_abs_diff: float
    p50_ms: float
    p99_ms: float
    variants: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- version


def _event_arns(events: Mapping[Any, Iterable[Any]], parse_sqs: Callable[[list], list]) -> list:
    arns: list[str] = []
    for events_of_asset in events.values():
        extras = [dict(getattr(e, "extra", None) or {}) for e in events_of_asset]
        arns += [x["model_package_arn"] for x in extras if x.get("model_package_arn")]
        arns += parse_sqs(extras)
    return arns


def resolve_version(
    conn: Any,
    config: UseCase,
    requested: str,
    triggering_events: Mapping[Any, Iterable[Any]],
    parse_sqs: Callable[[list], list],
) -> ModelVersion:
    """The version to deploy: the run's Param ``model_version`` (a number or an ARN) when set;
    else the newest version the triggering Asset events approved that is still ``Approved``;
    else the config's selection (``latest_approved`` or ``pinned``). Only ``Approved``
    versions deploy."""
    group, selection = config.model_package_group, config.need_endpoint().model
    if requested.strip():
        return select_model(conn, group=group, selection="pinned", ds="", pinned=requested).to_use
    candidates = []
    for arn in _event_arns(triggering_events, parse_sqs):
        version = select_model(conn, group=group, selection="pinned", ds="", pinned=arn)
        candidates.append(version.to_use)
    if candidates:
        return max(candidates, key=lambda v: v.version)
    chosen = select_model(
        conn,
        group=group,
        selection=selection.selection,  # type: ignore[arg-type]
        ds="",
        pinned=selection.pinned_version,
    )
    return chosen.to_use


# --------------------------------------------------------------------------- planning


def plan_stage(config: UseCase, stage: Stage, model_name: str, version: ModelVersion) -> StagePlan:
    """Every request of ``stage``'s deployment of ``model_name`` (the version's model)."""
    section, network = config.need_endpoint(), config.sagemaker.network
    endpoint = config.endpoint_name(stage)
    storage = config.storage
    capture = req.CaptureSettings(
        enabled=section.data_capture.enabled,
        sampling_percentage=section.data_capture.sampling_percentage,
        destination=f"s3://{storage.bucket}/{storage.prefix}/{config.use_case}/endpoint/"
        f"{stage.name}/data_capture",
        kms_key_id=network.kms_key_id,
    )
    endpoint_config = req.endpoint_config_request(
        short_name=config.short_name,
        use_case=config.use_case,
        stage=stage.name,
        model_name=model_name,
        model_package_arn=version.arn,
        instance_type=stage.instance_type,
        instance_count=stage.autoscaling.min_instances,
        capture=capture,
        kms_key_id=network.volume_kms_key_id,
        base_tags=config.sagemaker.tags,
    )
    name = endpoint_config["EndpointConfigName"]
    alarms = []
    if section.alarms.enabled:
        settings = section.alarms
        alarms = req.alarm_requests(
            name,
            endpoint,
            req.AlarmSettings(
                settings.errors_5xx_threshold,
                settings.model_latency_p99_ms,
                settings.period_seconds,
                settings.evaluation_periods,
            ),
            endpoint_config["Tags"],
        )
    shift, scaling = stage.deployment, stage.autoscaling
    return StagePlan(
        stage=stage.name,
        endpoint_name=endpoint,
        endpoint_config=endpoint_config,
        alarms=alarms,
        deployment=req.deployment_config(
            req.ShiftSettings(**shift.model_dump()), [a["AlarmName"] for a in alarms]
        ),
        scalable_target=req.scalable_target_request(
            endpoint, scaling.min_instances, scaling.max_instances
        ),
        scaling_policy=req.scaling_policy_request(
            endpoint,
            scaling.target_invocations_per_instance,
            scaling.scale_in_cooldown_seconds,
            scaling.scale_out_cooldown_seconds,
        ),
    )


# --------------------------------------------------------------------------- configure


def _not_found(err: Any, *fragments: str) -> bool:
    error = err.response.get("Error", {})
    message = str(error.get("Message", ""))
    return error.get("Code") in ("ValidationException", "ValidationError") and any(
        f in message for f in fragments
    )


def ensure_endpoint_config(conn: Any, request: dict[str, Any]) -> bool:
    """Create the endpoint config unless one of its (content-addressed) name exists; True when
    this call created it."""
    try:
        conn.describe_endpoint_config(EndpointConfigName=request["EndpointConfigName"])
        return False
    except conn.exceptions.ClientError as err:
        if not _not_found(err, "Could not find endpoint configuration"):
            raise
    try:
        conn.create_endpoint_config(**request)
    except conn.exceptions.ClientError as err:
        if _not_found(err, "Cannot create already existing endpoint configuration"):
            return False
        raise
    return True


def put_alarms(cloudwatch: Any, alarms: list[dict[str, Any]]) -> list[str]:
    """Create or update the rollback alarms (PutMetricAlarm replaces an alarm of that name)."""
    for alarm in alarms:
        cloudwatch.put_metric_alarm(**alarm)
    return [a["AlarmName"] for a in alarms]


# --------------------------------------------------------------------------- deploy


def describe_endpoint(conn: Any, name: str) -> dict[str, Any] | None:
    """DescribeEndpoint, or ``None`` when the endpoint does not exist."""
    try:
        return conn.describe_endpoint(EndpointName=name)
    except conn.exceptions.ClientError as err:
        if _not_found(err, "Could not find endpoint"):
            return None
        raise


def _scaling_registered(autoscaling: Any, endpoint: str) -> bool:
    found = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[req.resource_id(endpoint)],
        ScalableDimension=req.SCALABLE_DIMENSION,
    )
    return bool(found.get("ScalableTargets"))


def deregister_scaling(autoscaling: Any, endpoint: str) -> bool:
    """Remove the variant's scalable target (and with it its policies); True if there was one."""
    if not _scaling_registered(autoscaling, endpoint):
        return False
    autoscaling.deregister_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=req.resource_id(endpoint),
        ScalableDimension=req.SCALABLE_DIMENSION,
    )
    return True


def _instance_type(conn: Any, config_name: str) -> str:
    described = conn.describe_endpoint_config(EndpointConfigName=config_name)
    return described["ProductionVariants"][0]["InstanceType"]


def switch_config(
    conn: Any, autoscaling: Any, endpoint: str, current: str, target: str, deployment: dict
) -> None:
    """UpdateEndpoint from ``current`` to ``target`` the way AWS documents it for a scaled
    variant: an update that changes the instance type needs the scalable target deregistered
    first ("Update or delete an endpoint that uses automatic scaling", SageMaker developer
    guide); otherwise the scaled instance count is kept."""
    type_changes = _instance_type(conn, current) != _instance_type(conn, target)
    scaled = _scaling_registered(autoscaling, endpoint)
    if type_changes and scaled:
        log.info("Instance type changes: deregistering the scalable target of %s first", endpoint)
        deregister_scaling(autoscaling, endpoint)
    retain = scaled and not type_changes
    conn.update_endpoint(**req.update_request(endpoint, target, deployment, retain_count=retain))


def _pending_config(described: Mapping[str, Any]) -> str | None:
    return (described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")


def deploy(conn: Any, autoscaling: Any, plan: StagePlan, tags: list[dict[str, str]]) -> Deployment:
    """Create the endpoint, or update it to the plan's config, or leave it when it serves it."""
    name, target = plan.endpoint_name, plan.config_name
    described = describe_endpoint(conn, name)
    if described is not None and described["EndpointStatus"] == "Failed":
        _delete_failed(conn, name, described)
        described = None
    if described is None:
        conn.create_endpoint(EndpointName=name, EndpointConfigName=target, Tags=tags)
        return Deployment(name, target, None, "created")
    status, current = described["EndpointStatus"], described["EndpointConfigName"]
    if status in IN_PROGRESS:
        if target in (current, _pending_config(described)):
            # A cleared task finds its own update in flight: the old config is still current.
            return Deployment(name, target, current if current != target else None, "in-progress")
        raise EndpointBusy(
            f"Endpoint {name} is {status} (another deployment of {_pending_config(described) or current}"
            " is in flight): retrying later"
        )
    if status != "InService":
        raise EndpointBusy(f"Endpoint {name} is {status}: it cannot be updated now")
    if current == target:
        return Deployment(name, target, current, "unchanged")
    switch_config(conn, autoscaling, name, current, target, plan.deployment)
    return Deployment(name, target, current, "updated")


def _delete_failed(conn: Any, name: str, described: Mapping[str, Any]) -> None:
    """A ``Failed`` endpoint can only be deleted (SageMaker refuses to update it)."""
    log.warning(
        "Endpoint %s is Failed (%s): deleting it to create it again",
        name,
        described.get("FailureReason", "no reason given"),
    )
    conn.delete_endpoint(EndpointName=name)
    deadline = time.monotonic() + 600
    while describe_endpoint(conn, name) is not None:
        if time.monotonic() > deadline:
            raise EndpointBusy(f"Endpoint {name} is still being deleted after 600 s")
        time.sleep(2)


# --------------------------------------------------------------------------- wait


def deployed(described: Mapping[str, Any] | None, name: str, requested: str) -> bool:
    """True once ``name`` serves ``requested``; False while a deployment is in flight; raises
    :class:`DeploymentFailed` when it failed or SageMaker rolled it back.

    The provider's waiter and ``SageMakerEndpointSensor`` take a rolled-back ``InService``
    (the endpoint back on its old ``EndpointConfigName``) and ``UpdateRollbackFailed`` as
    success; this is why the package has its own check."""
    if described is None:
        raise DeploymentFailed(f"Endpoint {name} does not exist (deleted during the deployment?)")
    status, current = described["EndpointStatus"], described["EndpointConfigName"]
    reason = described.get("FailureReason") or "no FailureReason given"
    if status in IN_PROGRESS:
        return False
    if status == "InService" and current == requested:
        return True
    if status == "InService":
        raise DeploymentFailed(
            f"SageMaker rolled the deployment of {requested} on {name} back: {reason}. The "
            f"endpoint still serves {current}."
        )
    raise DeploymentFailed(f"Endpoint {name} is {status} deploying {requested}: {reason}")


# --------------------------------------------------------------------------- scale


def apply_scaling(autoscaling: Any, plan: StagePlan) -> dict[str, Any]:
    """Register the scalable target and put the target-tracking policy (both idempotent)."""
    autoscaling.register_scalable_target(**plan.scalable_target)
    policy = autoscaling.put_scaling_policy(**plan.scaling_policy)
    return {
        "resource_id": plan.scalable_target["ResourceId"],
        "min": plan.scalable_target["MinCapacity"],
        "max": plan.scalable_target["MaxCapacity"],
        "policy_arn": policy.get("PolicyARN", ""),
    }


__all__ = [
    "Deployment",
    "DeploymentFailed",
    "EndpointBusy",
    "SmokeResult",
    "SmokeTestFailed",
    "StagePlan",
    "apply_scaling",
    "deploy",
    "deployed",
    "deregister_scaling",
    "describe_endpoint",
    "ensure_endpoint_config",
    "plan_stage",
    "put_alarms",
    "resolve_version",
    "switch_config",
]
