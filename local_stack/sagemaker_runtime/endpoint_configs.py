"""Endpoint configs of the local SageMaker runtime: ``Create``/``Describe``/``List``/
``DeleteEndpointConfig``, validated like SageMaker (unique variant names, existing models, an
instance count for every non-serverless variant)."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import tags
from local_stack.sagemaker_runtime.api import (
    action,
    now,
    validate_name,
    validate_request,
    validation_error,
)
from local_stack.sagemaker_runtime.registry import filter_and_sort, get_model, page_response, public

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

ENDPOINT_CONFIGS = "EndpointConfig"


def config_arn(runtime: Runtime, name: str) -> str:
    """The ARN of endpoint config ``name``."""
    return runtime.arn("endpoint-config", name)


def get_config(runtime: Runtime, name: str) -> dict[str, Any]:
    """The stored endpoint config ``name`` (``ValidationException`` if there is none)."""
    with runtime.lock:
        config = runtime.store(ENDPOINT_CONFIGS).get(name)
    if config is None:
        raise validation_error(
            f'Could not find endpoint configuration "{config_arn(runtime, name)}".'
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
    arn = config_arn(runtime, name)
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
    config = get_config(runtime, request["EndpointConfigName"])
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
            f'Could not find endpoint configuration "{config_arn(runtime, name)}".'
        )
    tags.forget(runtime, record["EndpointConfigArn"])
    return {}


def data_capture_summary(config: dict[str, Any]) -> dict[str, Any] | None:
    """``DescribeEndpoint``'s ``DataCaptureConfig`` for an endpoint serving ``config``."""
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
