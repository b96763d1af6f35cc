"""Plain-dict SageMaker requests of the batch-inference DAG: the model and its batch transform.

Pure functions (no AWS call), like ``sagemaker_requests``: they take plain values (not the
config classes) so that the DAG's planning tasks can call them with whatever the use-case config
holds; tests validate the results against botocore's ``sagemaker`` service model.

Names are content-addressed: the model's name is a hash of what the model is (package version,
role, network), so the same package is the same model on every run date; the transform job's
name is ``<short_name>-<YYYYMMDD>-bt-<request hash>-<attempt>`` (see ``naming``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Protocol

from mlops_sagemaker.failures import ClassifiedError
from mlops_sagemaker.naming import MAX_NAME, attempt_name, fingerprint, job_base_name

# SageMaker's ModelName rule (botocore's service model: EntityName).
_MODEL_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# The model package version is the last path segment of a versioned package's ARN:
# arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>.
_VERSIONED_PACKAGE = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[^:]*:\d{12}:model-package/[^/]+/(\d+)$"
)
# MaxPayloadInMB and MaxConcurrentTransforms x MaxPayloadInMB may not exceed 100 MB (botocore's
# documentation of CreateTransformJob.MaxPayloadInMB); the service model only says min 0.
MAX_TRANSFORM_PAYLOAD_MB = 100
CSV = "text/csv"
# The row key is the first column of every input record; the model gets the rest.
INPUT_FILTER = "$[1:]"
# Input record + the model's ``prediction,probability`` -> key, prediction, probability.
OUTPUT_FILTER = "$[0,-2,-1]"


class VpcSettings(Protocol):
    """What the builders read of the config's VPC settings."""

    @property
    def subnets(self) -> Sequence[str]: ...

    @property
    def security_group_ids(self) -> Sequence[str]: ...


class NetworkSettings(Protocol):
    """What ``model_request`` reads of the config's network settings."""

    @property
    def enable_network_isolation(self) -> bool: ...

    @property
    def vpc(self) -> VpcSettings: ...


def _request_error(message: str) -> ClassifiedError:
    # Building the same request again gives the same error: permanent, fix the config.
    return ClassifiedError(message, category="request")


def package_version(model_package_arn: str) -> str:
    """The version number of a versioned model package ARN (``.../<group>/<version>``)."""
    match = _VERSIONED_PACKAGE.match(model_package_arn)
    if not match:
        raise _request_error(
            f"{model_package_arn!r} is not the ARN of a versioned model package "
            "(arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>); batch "
            "inference runs a registered version of the use case's model package group"
        )
    return match.group(1)


def model_request(
    *,
    short_name: str,
    use_case: str,
    model_package_arn: str,
    role_arn: str,
    network: NetworkSettings,
    base_tags: Mapping[str, str],
) -> dict[str, Any]:
    """CreateModel request serving the registered ``model_package_arn``.

    The container is the package's (``PrimaryContainer.ModelPackageName``): image, artifact and
    environment come from the registry, never rebuilt here. ``ModelName`` is
    ``<short_name>-mdl-<hash>`` with the hash over the request without name and tags and no run
    date: the same package with the same role and network settings is the same model, reused
    across run dates (``operators.ensure_model``), while another version or setting gets
    another model.
    """
    request: dict[str, Any] = {
        "PrimaryContainer": {"ModelPackageName": model_package_arn},
        "ExecutionRoleArn": role_arn,
        "EnableNetworkIsolation": network.enable_network_isolation,
    }
    if network.vpc.subnets:
        request["VpcConfig"] = {
            "Subnets": list(network.vpc.subnets),
            "SecurityGroupIds": list(network.vpc.security_group_ids),
        }
    name = f"{short_name}-mdl-{fingerprint(request, 10)}"
    if len(name) > MAX_NAME or not _MODEL_NAME.match(name):
        raise _request_error(
            f"SageMaker model name {name!r} breaks the naming rule or limit {MAX_NAME}: "
            "shorten short_name (letters, digits, hyphens)"
        )
    merged = {
        **base_tags,
        "mlops:use-case": use_case,
        "mlops:model-package-version": package_version(model_package_arn),
        "mlops:managed-by": "airflow",
    }
    return {
        "ModelName": name,
        **request,
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(merged.items())],
    }


def _check_payload(max_payload_mb: int, max_concurrent_transforms: int) -> None:
    if not 1 <= max_payload_mb <= MAX_TRANSFORM_PAYLOAD_MB or max_concurrent_transforms < 1:
        raise _request_error(
            f"max_payload_mb {max_payload_mb} must be 1-{MAX_TRANSFORM_PAYLOAD_MB} and "
            f"max_concurrent_transforms {max_concurrent_transforms} at least 1"
        )
    if max_payload_mb * max_concurrent_transforms > MAX_TRANSFORM_PAYLOAD_MB:
        raise _request_error(
            f"max_concurrent_transforms x max_payload_mb = {max_concurrent_transforms} x "
            f"{max_payload_mb} MB exceeds SageMaker's {MAX_TRANSFORM_PAYLOAD_MB} MB: lower one"
        )


def transform_request(
    *,
    short_name: str,
    ds: str,
    model_name: str,
    input_uri: str,
    output_uri: str,
    data_fingerprint: str,
    instance_type: str,
    instance_count: int,
    max_payload_mb: int,
    max_concurrent_transforms: int,
    invocations_timeout_seconds: int,
    invocations_max_retries: int,
    kms_key_id: str,
    volume_kms_key_id: str,
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    """CreateTransformJob request scoring the rows under ``input_uri`` with ``model_name``.

    The design, end to end:

    * **Input**: every object under the ``input_uri`` prefix (``S3Prefix``) is a gzip CSV part
      (``CompressionType=Gzip``; SageMaker decompresses it) *without a header*, one row per
      line: the row key first, then the features in training order.
    * **Records**: ``SplitType=Line`` makes each line a record and ``BatchStrategy=MultiRecord``
      packs as many records as fit in ``max_payload_mb`` into one request to the model.
    * **Filters** (``DataProcessing``): ``InputFilter $[1:]`` drops the key, so the model gets
      exactly the features in training order (``inference.py`` reads a header-less CSV that
      way). The model answers ``text/csv`` (``Accept``) with ``prediction,probability`` per
      record; ``JoinSource=Input`` appends that answer to the *original* record, giving
      ``key, f1 ... fn, prediction, probability``, and ``OutputFilter $[0,-2,-1]`` keeps
      ``key, prediction, probability``. So every output line carries its key: results never
      depend on row order and can be joined back to the source.
    * **Output**: ``AssembleWith=Line`` writes one line per record to
      ``<output_uri>/<input object name>.out`` (not compressed), encrypted with ``kms_key_id``
      when set; ``volume_kms_key_id`` encrypts the instances' storage.
    * **Model client**: each request may take ``invocations_timeout_seconds`` and is retried
      ``invocations_max_retries`` times before the job fails. No ``Environment`` is needed:
      the model's container environment comes from its package.

    ``TransformJobName`` follows ``naming``: the hash covers the whole request and
    ``data_fingerprint`` (the input's content), so re-running a date with the same data finds
    its job, and new data gets a new job. The first attempt's name is returned; the operator
    picks the attempt.
    """
    _check_payload(max_payload_mb, max_concurrent_transforms)
    output: dict[str, Any] = {"S3OutputPath": output_uri, "Accept": CSV, "AssembleWith": "Line"}
    if kms_key_id:
        output["KmsKeyId"] = kms_key_id
    resources: dict[str, Any] = {"InstanceType": instance_type, "InstanceCount": instance_count}
    if volume_kms_key_id:
        resources["VolumeKmsKeyId"] = volume_kms_key_id
    request: dict[str, Any] = {
        "ModelName": model_name,
        "MaxConcurrentTransforms": max_concurrent_transforms,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": invocations_timeout_seconds,
            "InvocationsMaxRetries": invocations_max_retries,
        },
        "MaxPayloadInMB": max_payload_mb,
        "BatchStrategy": "MultiRecord",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": CSV,
            "CompressionType": "Gzip",
            "SplitType": "Line",
        },
        "TransformOutput": output,
        "TransformResources": resources,
        "DataProcessing": {
            "InputFilter": INPUT_FILTER,
            "JoinSource": "Input",
            "OutputFilter": OUTPUT_FILTER,
        },
        "Tags": list(tags),
    }
    ds_nodash = date.fromisoformat(ds).strftime("%Y%m%d")
    base = job_base_name(
        short_name, ds_nodash, "transform", fingerprint([request, data_fingerprint])
    )
    return {"TransformJobName": attempt_name(base, 1, MAX_NAME), **request}
