"""Plain-dict SageMaker requests built from the use-case config and the run's context.

These functions are pure (no AWS call): the DAG's planning tasks call them at run time and the
provider operators send the result; tests validate them against botocore's service model for
many run dates. Job names carry a fingerprint of the request itself (see ``naming``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from mlops_sagemaker.config import UseCase
from mlops_sagemaker.failures import ClassifiedError
from mlops_sagemaker.naming import (
    MAX_NAME,
    MAX_TUNING_NAME,
    RunPaths,
    attempt_name,
    fingerprint,
    job_base_name,
)

PROCESSING_ROOT = "/opt/ml/processing"
# With network isolation the training container cannot download ``sagemaker_submit_directory``
# from S3; SageMaker delivers the tarball as the input channel ``code`` and the hyperparameter
# names its path in the container, as the SageMaker Python SDK does (aws/sagemaker-python-sdk
# v2 ``src/sagemaker/estimator.py``: ``code_channel_name = "code"``,
# ``CONTAINER_CODE_CHANNEL_SOURCEDIR_PATH``, ``_prepare_for_training``).
CODE_CHANNEL = "code"
CODE_CHANNEL_SOURCEDIR = f"/opt/ml/input/data/{CODE_CHANNEL}/sourcedir.tar.gz"
CONTENT_TYPES = ["text/csv", "application/json", "application/jsonlines"]
# Where a model artifact repacked with its code (``model_artifact``) has the code in the serving
# container: SageMaker unpacks model.tar.gz into /opt/ml/model (the SDK's
# ``Model._framework_env_vars`` with network isolation).
MODEL_CODE_DIR = "/opt/ml/model/code"


@dataclass(frozen=True)
class RunInfo:
    """What the requests need to know about the DAG run."""

    ds: str
    data_interval_start: str
    data_interval_end: str
    run_id: str

    @property
    def ds_nodash(self) -> str:
        """The run date as YYYYMMDD."""
        return self.ds.replace("-", "")


@dataclass(frozen=True)
class CodeLocations:
    """Where the content-addressed step code lives in S3."""

    version: str
    scripts_uri: str  # prefix holding every step script (processing jobs get the whole folder)
    sourcedir_uri: str  # the same scripts as the tarball training/serving containers take

    def as_dict(self) -> dict[str, str]:
        """JSON-friendly form for XCom."""
        return asdict(self)


def run_paths(config: UseCase, ds: str, pipeline: str = "training") -> RunPaths:
    """The S3 layout of a run of ``pipeline`` for ``ds``."""
    return RunPaths(config.storage.bucket, config.storage.prefix, config.use_case, pipeline, ds)


def tags(config: UseCase, run: RunInfo, step: str) -> list[dict[str, str]]:
    """Config tags plus the tags that let anyone trace a job back to its DAG run."""
    merged = {
        **config.sagemaker.tags,
        "mlops:use-case": config.use_case,
        "mlops:run-date": run.ds,
        "mlops:step": step,
        "mlops:managed-by": "airflow",
    }
    return [{"Key": k, "Value": v} for k, v in sorted(merged.items())]


def _vpc(config: UseCase) -> dict[str, Any] | None:
    vpc = config.sagemaker.network.vpc
    if not vpc.subnets:
        return None
    return {"Subnets": list(vpc.subnets), "SecurityGroupIds": list(vpc.security_group_ids)}


def _named(request: dict[str, Any], key: str, base: str, limit: int) -> dict[str, Any]:
    request[key] = attempt_name(base, 1, limit)
    return request


def _s3_input(
    name: str, uri: str, local_path: str, distribution: str = "FullyReplicated"
) -> dict[str, Any]:
    return {
        "InputName": name,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": local_path,
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": distribution,
        },
    }


def _code_channel(sourcedir_uri: str) -> dict[str, Any]:
    """The ``code`` training channel carrying ``sourcedir.tar.gz`` (for network isolation).

    As the SDK builds it (``_Job._prepare_channel`` with a plain URI): an ``S3Prefix`` naming
    the one object, ``FullyReplicated``, no content type. ``CompressionType`` stays ``None``:
    ``Gzip`` applies to Pipe mode only, and the toolkit unpacks the tarball itself.
    """
    return {
        "ChannelName": CODE_CHANNEL,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": sourcedir_uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "CompressionType": "None",
    }


def _s3_output(name: str, uri: str, local_path: str) -> dict[str, Any]:
    return {
        "OutputName": name,
        "S3Output": {"S3Uri": uri, "LocalPath": local_path, "S3UploadMode": "EndOfJob"},
    }


def _processing_request(
    config: UseCase,
    run: RunInfo,
    step: str,
    image_uri: str,
    script: str,
    arguments: list[str],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    upstream: str,
    instance_count: int | None = None,
) -> dict[str, Any]:
    settings = config.sagemaker
    output_config: dict[str, Any] = {"Outputs": outputs}
    if settings.network.kms_key_id:
        output_config["KmsKeyId"] = settings.network.kms_key_id
    cluster: dict[str, Any] = {
        "InstanceCount": instance_count or settings.processing.instance_count,
        "InstanceType": settings.processing.instance_type,
        "VolumeSizeInGB": settings.processing.volume_size_gb,
    }
    if settings.network.volume_kms_key_id:
        cluster["VolumeKmsKeyId"] = settings.network.volume_kms_key_id
    request: dict[str, Any] = {
        "RoleArn": settings.role_arn,
        "AppSpecification": {
            "ImageUri": image_uri,
            "ContainerEntrypoint": ["python3", f"{PROCESSING_ROOT}/input/code/{script}"],
            "ContainerArguments": arguments,
        },
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": output_config,
        "ProcessingResources": {"ClusterConfig": cluster},
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.processing.max_runtime_seconds},
        "Environment": {"PYTHONUNBUFFERED": "1"},
        "Tags": tags(config, run, step),
    }
    network: dict[str, Any] = {}
    if settings.network.enable_network_isolation:
        network["EnableNetworkIsolation"] = True
    if settings.network.enable_inter_container_traffic_encryption:
        network["EnableInterContainerTrafficEncryption"] = True
    if vpc := _vpc(config):
        network["VpcConfig"] = vpc
    if network:
        request["NetworkConfig"] = network
    base = job_base_name(config.short_name, run.ds_nodash, step, fingerprint([request, upstream]))
    return _named(request, "ProcessingJobName", base, MAX_NAME)


def sharded_split_instances(config: UseCase) -> int | None:
    """Instances of a sharded split (``presto_unload``: Presto wrote many files), else None."""
    extract = config.extract
    return extract.unload.split_instance_count if extract.mode == "presto_unload" else None


def _split_arguments(config: UseCase) -> list[str]:
    data, split = config.dataset, config.need_training().split
    return [
        "--key-column", data.key_column,
        "--label-column", data.label_column,
        "--feature-columns", ",".join(data.feature_columns),
        "--train-fraction", str(split.train),
        "--validation-fraction", str(split.validation),
        "--split-salt", split.salt,
    ]  # fmt: skip


def split_request(
    config: UseCase,
    run: RunInfo,
    code: CodeLocations,
    image_uri: str,
    extract_data_uri: str,
    data_fingerprint: str,
) -> dict[str, Any]:
    """CreateProcessingJob request running ``preprocess.py`` on the extracted rows.

    Sharded (``presto_unload``): several instances, each given its share of the files
    (``ShardedByS3Key``), each writing its part of the splits under its host name; the
    baseline comes from :func:`baseline_request`."""
    paths = run_paths(config, run.ds)
    out = f"{PROCESSING_ROOT}/output"
    instances = sharded_split_instances(config)
    arguments = [
        "--input-dir", f"{PROCESSING_ROOT}/input/data", "--output-dir", out,
        *_split_arguments(config),
    ]  # fmt: skip
    names = ["train", "validation", "test", "baseline"]
    if instances:
        arguments += ["--shard-outputs", "--resource-config", "/opt/ml/config/resourceconfig.json"]
        names.remove("baseline")
    distribution = "ShardedByS3Key" if instances else "FullyReplicated"
    inputs = [
        _s3_input("data", extract_data_uri, f"{PROCESSING_ROOT}/input/data", distribution),
        _s3_input("code", code.scripts_uri, f"{PROCESSING_ROOT}/input/code"),
    ]
    outputs = [_s3_output(n, paths.uri("split", n, ""), f"{out}/{n}") for n in names]
    return _processing_request(
        config, run, "split", image_uri, "preprocess.py", arguments, inputs, outputs,
        upstream=data_fingerprint, instance_count=instances,
    )  # fmt: skip


def baseline_request(
    config: UseCase,
    run: RunInfo,
    code: CodeLocations,
    image_uri: str,
    split_outputs: dict[str, str],
    split_job_name: str,
) -> dict[str, Any]:
    """CreateProcessingJob request running ``preprocess.py --merge-dir`` on one instance over
    a sharded split's outputs: the checks that need every row (unique keys, both label
    classes, no empty split) and the one training baseline, as an unsharded split writes it."""
    paths = run_paths(config, run.ds)
    splits, out = f"{PROCESSING_ROOT}/input/splits", f"{PROCESSING_ROOT}/output"
    arguments = ["--merge-dir", splits, "--output-dir", out, *_split_arguments(config)]
    inputs = [
        *(_s3_input(n, split_outputs[n], f"{splits}/{n}") for n in ("train", "validation", "test")),
        _s3_input("code", code.scripts_uri, f"{PROCESSING_ROOT}/input/code"),
    ]
    outputs = [_s3_output("baseline", paths.uri("split", "baseline", ""), f"{out}/baseline")]
    return _processing_request(
        config, run, "baseline", image_uri, "preprocess.py", arguments, inputs, outputs,
        upstream=split_job_name,
    )  # fmt: skip


def tuning_request(
    config: UseCase,
    run: RunInfo,
    code: CodeLocations,
    image_uri: str,
    region: str,
    split_outputs: dict[str, str],
    split_job_name: str,
) -> dict[str, Any]:
    """CreateHyperParameterTuningJob request tuning the RandomForest with ``train.py``.

    ``split_outputs`` maps the split job's output names to their S3 URIs (from its describe
    output); ``split_job_name`` ties the fingerprint to the exact data the split produced.
    """
    settings, tuning, data = config.sagemaker, config.need_training().tuning, config.dataset
    paths = run_paths(config, run.ds)
    # The SageMaker SDK JSON-encodes framework hyperparameters; the training toolkit decodes them.
    isolated = settings.network.enable_network_isolation
    static = {
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": CODE_CHANNEL_SOURCEDIR if isolated else code.sourcedir_uri,
        "sagemaker_region": region,
        "sagemaker_container_log_level": 20,
        "key_column": data.key_column,
        "label_column": data.label_column,
        "feature_columns": ",".join(data.feature_columns),
        **tuning.static_hyperparameters,
    }
    ranges: dict[str, list[dict[str, Any]]] = {
        "IntegerParameterRanges": [
            {"Name": n, "MinValue": str(r.min), "MaxValue": str(r.max), "ScalingType": r.scaling}
            for n, r in tuning.integer_ranges.items()
        ],
        "ContinuousParameterRanges": [
            {"Name": n, "MinValue": str(r.min), "MaxValue": str(r.max), "ScalingType": r.scaling}
            for n, r in tuning.continuous_ranges.items()
        ],
        "CategoricalParameterRanges": [
            {"Name": n, "Values": list(v)} for n, v in tuning.categorical_ranges.items()
        ],
    }
    resource: dict[str, Any] = {
        "InstanceType": settings.training.instance_type,
        "InstanceCount": settings.training.instance_count,
        "VolumeSizeInGB": settings.training.volume_size_gb,
    }
    if settings.network.volume_kms_key_id:
        resource["VolumeKmsKeyId"] = settings.network.volume_kms_key_id
    output: dict[str, Any] = {"S3OutputPath": paths.uri("tuning", "")}
    if settings.network.kms_key_id:
        output["KmsKeyId"] = settings.network.kms_key_id
    channels = [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": split_outputs[name],
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": "text/csv",
            "CompressionType": "None",
        }
        for name in ("train", "validation")
    ]
    if isolated:
        channels.append(_code_channel(code.sourcedir_uri))
    definition: dict[str, Any] = {
        "StaticHyperParameters": {k: json.dumps(v) for k, v in static.items()},
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": tuning.objective.metric_name, "Regex": tuning.objective.regex}
            ],
        },
        "RoleArn": settings.role_arn,
        "InputDataConfig": channels,
        "OutputDataConfig": output,
        "ResourceConfig": resource,
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.training.max_runtime_seconds},
        "EnableNetworkIsolation": settings.network.enable_network_isolation,
        "EnableInterContainerTrafficEncryption": (
            settings.network.enable_inter_container_traffic_encryption
        ),
    }
    if vpc := _vpc(config):
        definition["VpcConfig"] = vpc
    request: dict[str, Any] = {
        "HyperParameterTuningJobConfig": {
            "Strategy": tuning.strategy,
            "HyperParameterTuningJobObjective": {
                "Type": tuning.objective.type,
                "MetricName": tuning.objective.metric_name,
            },
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": tuning.max_jobs,
                "MaxParallelTrainingJobs": tuning.max_parallel_jobs,
            },
            "ParameterRanges": ranges,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": definition,
        "Tags": tags(config, run, "tuning"),
    }
    base = job_base_name(
        config.short_name, run.ds_nodash, "tuning", fingerprint([request, split_job_name])
    )
    return _named(request, "HyperParameterTuningJobName", base, MAX_TUNING_NAME)


def evaluation_request(
    config: UseCase,
    run: RunInfo,
    code: CodeLocations,
    image_uri: str,
    model_data_url: str,
    test_uri: str,
) -> dict[str, Any]:
    """CreateProcessingJob request running ``evaluate.py`` on the best model and the test split."""
    paths = run_paths(config, run.ds)
    arguments = [
        "--model-dir", f"{PROCESSING_ROOT}/model",
        "--test-dir", f"{PROCESSING_ROOT}/test",
        "--output-dir", f"{PROCESSING_ROOT}/evaluation",
    ]  # fmt: skip
    inputs = [
        _s3_input("model", model_data_url, f"{PROCESSING_ROOT}/model"),
        _s3_input("test", test_uri, f"{PROCESSING_ROOT}/test"),
        _s3_input("code", code.scripts_uri, f"{PROCESSING_ROOT}/input/code"),
    ]
    outputs = [
        _s3_output("evaluation", paths.uri("evaluation", ""), f"{PROCESSING_ROOT}/evaluation")
    ]
    return _processing_request(
        config, run, "evaluation", image_uri, "evaluate.py", arguments, inputs, outputs,
        upstream=model_data_url,
    )  # fmt: skip


def registration_request(
    config: UseCase,
    run: RunInfo,
    code: CodeLocations,
    image_uri: str,
    region: str,
    model_data_url: str,
    evaluation_uri: str,
    baseline_uri: str,
    metadata: dict[str, Any],
    *,
    model_with_code_url: str | None = None,
) -> dict[str, Any]:
    """CreateModelPackage request for a new version in the use case's model package group
    (which ``model_package_group_request`` creates, with the tags).

    ``model_with_code_url`` is ``model_data_url`` repacked with the step code under ``code/``
    (``model_artifact.ensure_model_with_code``); the container then serves it with
    ``SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code``. It is required with network isolation: an
    isolated model cannot download the code from S3. Without it the container takes the
    training artifact and downloads ``code.sourcedir_uri``.

    ``registration_key`` (in the description and the metadata) identifies the run date + model:
    re-running the registration finds the version it created instead of adding another.
    ``baseline_uri`` (the split's ``baseline.json``, per-feature bins of the train split) goes
    into ``DriftCheckBaselines``: batch inference reads it to measure drift against the exact
    data this version learnt from.
    """
    registry = config.need_training().registry
    if config.sagemaker.network.enable_network_isolation and not model_with_code_url:
        raise ClassifiedError(
            "Network isolation is on but the registration has no model artifact with the code "
            "inside: an isolated model cannot download SAGEMAKER_SUBMIT_DIRECTORY from S3. Pass "
            "model_with_code_url (model_artifact.ensure_model_with_code).",
            category="request",
        )
    # The key names the training artifact, not the repacked one: a re-run finds its version
    # whatever bytes the repack produced.
    key = fingerprint([run.ds, model_data_url], length=16)
    properties = {k: str(v)[:256] for k, v in {**metadata, "registration_key": key}.items()}
    description = f"{registry.description or config.use_case} | run {run.ds} [{key}]"
    return {
        "ModelPackageGroupName": registry.model_package_group,
        "ModelPackageDescription": description[:1024],
        "ModelApprovalStatus": registry.approval_status,
        "InferenceSpecification": {
            "Containers": [
                {
                    "Image": image_uri,
                    "ModelDataUrl": model_with_code_url or model_data_url,
                    "Environment": {
                        "SAGEMAKER_PROGRAM": "inference.py",
                        "SAGEMAKER_SUBMIT_DIRECTORY": (
                            MODEL_CODE_DIR if model_with_code_url else code.sourcedir_uri
                        ),
                        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                        "SAGEMAKER_REGION": region,
                    },
                    "Framework": "SKLEARN",
                    "FrameworkVersion": config.sagemaker.sklearn_framework_version,
                }
            ],
            "SupportedContentTypes": CONTENT_TYPES,
            "SupportedResponseMIMETypes": CONTENT_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": list(registry.inference_instance_types),
            "SupportedTransformInstanceTypes": list(registry.transform_instance_types),
        },
        "ModelMetrics": {
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}
            }
        },
        "DriftCheckBaselines": {
            "ModelDataQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": baseline_uri}
            }
        },
        # No Tags: a versioned package takes its group's tags (see model_package_group_request).
        "CustomerMetadataProperties": properties,
        "ClientToken": key,
    }


def model_package_group_request(config: UseCase) -> dict[str, Any]:
    """CreateModelPackageGroup request carrying the tags of every version in the group.

    botocore's documentation of ``CreateModelPackage.Tags``: with ``ModelPackageGroupName`` the
    package "uses the tags associated with the model group. In this case, you cannot supply a
    tag argument." So the tags go on the group (created before the first registration); what
    is specific to a version (run date, jobs, metrics) is in its CustomerMetadataProperties.
    """
    registry = config.need_training().registry
    merged = {
        **config.sagemaker.tags,
        "mlops:use-case": config.use_case,
        "mlops:managed-by": "airflow",
    }
    return {
        "ModelPackageGroupName": registry.model_package_group,
        "ModelPackageGroupDescription": (registry.description or config.use_case)[:1024],
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(merged.items())],
    }
