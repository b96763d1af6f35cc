"""Plain-dict requests of the endpoint DAG: endpoint config, deployment, alarms, autoscaling.

Pure functions (no AWS call), like ``sagemaker_requests`` and ``inference_requests``; tests
validate every result against botocore's service models (``sagemaker``, ``cloudwatch``,
``application-autoscaling``).

Names are content-addressed where the content defines the resource: an endpoint config is
``<short_name>-<stage>-ec-<hash>`` (hash of the request without name and tags, so the same model
on the same instances with the same capture settings is the same config on every run), its two
rollback alarms are ``<config name>-5xx`` and ``<config name>-latency`` (they live and die with
the config). Endpoints have the stable name of their stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlops_sagemaker.failures import ClassifiedError
from mlops_sagemaker.naming import MAX_NAME, fingerprint

VARIANT = "AllTraffic"  # the SageMaker Python SDK's default variant name
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
NAMESPACE = "AWS/SageMaker"
# CloudWatch reports SageMaker's ModelLatency in microseconds (SageMaker developer guide,
# "Monitor Amazon SageMaker AI with Amazon CloudWatch", endpoint invocation metrics).
_MICROSECONDS_PER_MS = 1000
_NAME_RULE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ALARM_SUFFIXES = ("-5xx", "-latency")


def _request_error(message: str) -> ClassifiedError:
    return ClassifiedError(message, category="request")


@dataclass(frozen=True)
class CaptureSettings:
    """Data capture of one endpoint config (``destination`` empty when disabled)."""

    enabled: bool
    sampling_percentage: int
    destination: str
    kms_key_id: str = ""


def endpoint_config_request(
    *,
    short_name: str,
    use_case: str,
    stage: str,
    model_name: str,
    model_package_arn: str,
    instance_type: str,
    instance_count: int,
    capture: CaptureSettings,
    kms_key_id: str,
    base_tags: Mapping[str, str],
) -> dict[str, Any]:
    """CreateEndpointConfig request of one stage serving ``model_name`` on one variant.

    ``InitialInstanceCount`` is the stage's ``min_instances``: Application Auto Scaling takes
    over after the deployment, and an update keeps the scaled count
    (``RetainAllVariantProperties``, see :func:`update_request`)."""
    request: dict[str, Any] = {
        "ProductionVariants": [
            {
                "VariantName": VARIANT,
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": instance_count,
                "InitialVariantWeight": 1.0,
            }
        ]
    }
    if capture.enabled:
        request["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": capture.sampling_percentage,
            "DestinationS3Uri": capture.destination,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {
                "CsvContentTypes": ["text/csv"],
                "JsonContentTypes": ["application/json", "application/jsonlines"],
            },
            **({"KmsKeyId": capture.kms_key_id} if capture.kms_key_id else {}),
        }
    if kms_key_id:
        request["KmsKeyId"] = kms_key_id
    name = f"{short_name}-{stage}-ec-{fingerprint(request, 10)}"
    # The longest alarm name (<config>-latency) must fit CloudWatch's 255 characters: it does.
    if len(name) > MAX_NAME or not _NAME_RULE.match(name):
        raise _request_error(
            f"endpoint config name {name!r} breaks SageMaker's naming rule or limit {MAX_NAME}: "
            "shorten short_name or the stage name"
        )
    merged = {
        **base_tags,
        "mlops:use-case": use_case,
        "mlops:stage": stage,
        "mlops:model-package-version": model_package_arn.rsplit("/", 1)[-1],
        "mlops:managed-by": "airflow",
    }
    return {
        "EndpointConfigName": name,
        **request,
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(merged.items())],
    }


@dataclass(frozen=True)
class ShiftSettings:
    """The stage's traffic shift (``config.TrafficShift`` as plain values)."""

    type: str
    size_percent: int
    wait_interval_seconds: int
    termination_wait_seconds: int
    max_execution_timeout_seconds: int


def deployment_config(shift: ShiftSettings, alarm_names: list[str]) -> dict[str, Any]:
    """``DeploymentConfig`` of an UpdateEndpoint: blue/green with the stage's traffic routing,
    rolled back automatically when one of ``alarm_names`` goes into ``ALARM`` while baking."""
    routing: dict[str, Any] = {
        "Type": shift.type,
        "WaitIntervalInSeconds": shift.wait_interval_seconds,
    }
    size = {"Type": "CAPACITY_PERCENT", "Value": shift.size_percent}
    if shift.type == "CANARY":
        routing["CanarySize"] = size
    elif shift.type == "LINEAR":
        routing["LinearStepSize"] = size
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": shift.termination_wait_seconds,
            "MaximumExecutionTimeoutInSeconds": shift.max_execution_timeout_seconds,
        }
    }
    if alarm_names:
        # AutoRollbackConfiguration takes 1-10 alarms (botocore: AlarmList).
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": n} for n in alarm_names]}
    return config


def update_request(
    endpoint_name: str, config_name: str, deployment: dict[str, Any], *, retain_count: bool
) -> dict[str, Any]:
    """UpdateEndpoint request. ``retain_count`` keeps the instance count autoscaling reached
    (``RetainAllVariantProperties`` with the weight excluded, so the new config's weight
    applies); it is off when the instance type changes (the scaling target was removed and the
    new fleet starts at the config's count)."""
    request: dict[str, Any] = {
        "EndpointName": endpoint_name,
        "EndpointConfigName": config_name,
        "DeploymentConfig": deployment,
    }
    if retain_count:
        request["RetainAllVariantProperties"] = True
        request["ExcludeRetainedVariantProperties"] = [{"VariantPropertyType": "DesiredWeight"}]
    return request


@dataclass(frozen=True)
class AlarmSettings:
    """Thresholds of the rollback alarms (``config.RollbackAlarms`` as plain values)."""

    errors_5xx_threshold: int
    model_latency_p99_ms: int
    period_seconds: int
    evaluation_periods: int


def alarm_requests(
    config_name: str, endpoint_name: str, settings: AlarmSettings, tags: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """PutMetricAlarm requests of the two rollback alarms of ``config_name``'s deployment.

    Both watch the endpoint's variant (``EndpointName``, ``VariantName``); missing data is not
    breaching, so an idle endpoint never rolls back."""
    dimensions = [
        {"Name": "EndpointName", "Value": endpoint_name},
        {"Name": "VariantName", "Value": VARIANT},
    ]
    common = {
        "Namespace": NAMESPACE,
        "Dimensions": dimensions,
        "Period": settings.period_seconds,
        "EvaluationPeriods": settings.evaluation_periods,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "ActionsEnabled": False,
        "Tags": tags,
    }
    return [
        {
            "AlarmName": f"{config_name}{ALARM_SUFFIXES[0]}",
            "AlarmDescription": f"5XX errors of {endpoint_name}: rolls back its deployment",
            "MetricName": "Invocation5XXErrors",
            "Statistic": "Sum",
            "Threshold": float(settings.errors_5xx_threshold),
            **common,
        },
        {
            "AlarmName": f"{config_name}{ALARM_SUFFIXES[1]}",
            "AlarmDescription": f"p99 model latency of {endpoint_name}: rolls back its deployment",
            "MetricName": "ModelLatency",
            "ExtendedStatistic": "p99",
            "Threshold": float(settings.model_latency_p99_ms * _MICROSECONDS_PER_MS),
            **common,
        },
    ]


def resource_id(endpoint_name: str) -> str:
    """Application Auto Scaling's ResourceId of the endpoint's variant."""
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


def scalable_target_request(endpoint_name: str, min_instances: int, max_instances: int) -> dict:
    """RegisterScalableTarget request (re-registering updates min/max: idempotent)."""
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": min_instances,
        "MaxCapacity": max_instances,
    }


def scaling_policy_request(
    endpoint_name: str, target: float, scale_in_cooldown: int, scale_out_cooldown: int
) -> dict[str, Any]:
    """PutScalingPolicy request: target tracking of invocations per instance (same name on
    every run, so putting it again updates it)."""
    return {
        "PolicyName": f"{endpoint_name}-invocations",
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": SCALABLE_DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(target),
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": scale_in_cooldown,
            "ScaleOutCooldown": scale_out_cooldown,
        },
    }


__all__ = [
    "ALARM_SUFFIXES",
    "SCALABLE_DIMENSION",
    "VARIANT",
    "AlarmSettings",
    "CaptureSettings",
    "ShiftSettings",
    "alarm_requests",
    "deployment_config",
    "endpoint_config_request",
    "resource_id",
    "scalable_target_request",
    "scaling_policy_request",
    "update_request",
]
