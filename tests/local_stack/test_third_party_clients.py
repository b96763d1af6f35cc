"""The local SageMaker runtime driven by clients nobody here wrote, and its request validation.

* The SageMaker Python SDK v3 (``sagemaker==3.27.0``: ``sagemaker.core.resources``, the
  ``Transformer``) through ``AWS_ENDPOINT_URL``: model registry get/list/update, a model from a
  model package, a batch transform, an endpoint and an invocation.
* botocore's own waiters (``training_job_completed_or_stopped``, ``endpoint_in_service``,
  ``transform_job_completed_or_stopped``) and paginators (``list_model_packages``,
  ``list_training_jobs``).
* The AWS CLI (``awscli`` 1.46.3, the release pinned to botocore 1.43.117).
* Negative controls: requests boto3 would refuse client-side, sent with
  ``Config(parameter_validation=False)``, are refused by the runtime with AWS's wording before
  any resource is looked up.

The model is a stdlib-only ``inference.py`` (it doubles the first CSV column), so these tests
depend on neither the project's step code nor scikit-learn.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local_stack.sagemaker_runtime import api

REGION = "us-east-1"
BUCKET = "local-stack-tests"  # created by the conftest's local_aws fixture
ROLE = "arn:aws:iam::123456789012:role/sagemaker-local"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
GROUP = "third-party-clients"

INFERENCE_PY = """
def model_fn(model_dir):
    with open(model_dir + "/factor.txt") as handle:
        return float(handle.read())


def input_fn(body, content_type):
    text = body.decode() if isinstance(body, bytes) else body
    return [float(line.split(",")[0]) for line in text.splitlines() if line.strip()]


def predict_fn(rows, factor):
    return [value * factor for value in rows]


def output_fn(values, accept):
    return "".join(f"{value:g}\\n" for value in values), "text/csv"
"""


def _model_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("factor.txt", b"2"), ("code/inference.py", INFERENCE_PY.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sm(aws_client) -> Any:
    return aws_client("sagemaker")


@pytest.fixture(scope="module")
def versions(aws_client, sm) -> list[str]:
    """Two versions in ``GROUP`` serving the doubling model; their ARNs, oldest first."""
    s3 = aws_client("s3")
    s3.put_object(Bucket=BUCKET, Key="third-party/model.tar.gz", Body=_model_archive())
    sm.create_model_package_group(
        ModelPackageGroupName=GROUP, Tags=[{"Key": "team", "Value": "mlops"}]
    )
    spec = {
        "Containers": [{"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/third-party/model.tar.gz"}],
        "SupportedContentTypes": ["text/csv"],
        "SupportedResponseMIMETypes": ["text/csv"],
        "SupportedTransformInstanceTypes": ["ml.m5.large"],
        "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
    }
    return [
        sm.create_model_package(
            ModelPackageGroupName=GROUP,
            InferenceSpecification=spec,
            CustomerMetadataProperties={"run_date": day},
        )["ModelPackageArn"]
        for day in ("1996-02-29", "1998-08-02")
    ]


@pytest.fixture
def sdk_session(local_aws, monkeypatch) -> boto3.Session:
    """A boto3 session whose clients (also the SDK's) reach the local endpoint."""
    from sagemaker.core.utils.utils import SageMakerClient

    monkeypatch.setenv("AWS_ENDPOINT_URL", local_aws.url)
    SageMakerClient.reset()
    yield boto3.Session(region_name=REGION)
    SageMakerClient.reset()


# --- versioned model packages as AWS returns them ------------------------------------------------
def test_a_versioned_package_has_no_name_of_its_own_and_is_described_by_arn(sm, versions) -> None:
    summaries = sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    assert [s["ModelPackageArn"] for s in summaries] == versions
    assert all("ModelPackageName" not in s for s in summaries)
    assert [s["ModelPackageVersion"] for s in summaries] == [1, 2]
    described = sm.describe_model_package(ModelPackageName=versions[1])
    assert "ModelPackageName" not in described
    assert described["ModelPackageGroupName"] == GROUP
    assert (
        sm.describe_model_package(ModelPackageName=f"{GROUP}/2")["ModelPackageArn"] == (versions[1])
    )
    # Describing the group's name as if it were the package's fails, as on AWS.
    with pytest.raises(ClientError, match="ValidationException"):
        sm.describe_model_package(ModelPackageName=GROUP)


def test_a_versioned_package_with_tags_is_refused(sm, versions) -> None:
    with pytest.raises(ClientError) as err:
        sm.create_model_package(
            ModelPackageGroupName=GROUP,
            InferenceSpecification={
                "Containers": [{"Image": IMAGE}],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["text/csv"],
            },
            Tags=[{"Key": "a", "Value": "b"}],
        )
    assert "Tags cannot be supplied with ModelPackageGroupName" in str(err.value)
    assert len(sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]) == 2


# --- the SageMaker Python SDK --------------------------------------------------------------------
def test_sdk_registry_get_list_update(sdk_session, versions) -> None:
    from sagemaker.core.resources import ModelPackage, ModelPackageGroup

    group = ModelPackageGroup.get(model_package_group_name=GROUP, session=sdk_session)
    assert group.model_package_group_status == "Completed"
    listed = list(
        ModelPackage.get_all(
            model_package_group_name=GROUP,
            sort_by="CreationTime",
            sort_order="Descending",
            session=sdk_session,
            region=REGION,
        )
    )
    assert [p.model_package_arn for p in listed] == versions[::-1]
    assert listed[0].customer_metadata_properties == {"run_date": "1998-08-02"}
    package = ModelPackage.get(model_package_name=versions[0], session=sdk_session, region=REGION)
    assert package.model_package_version == 1
    package.update(model_approval_status="Approved", approval_description="checked")
    assert package.model_approval_status == "Approved"
    again = ModelPackage.get(model_package_name=versions[0], session=sdk_session, region=REGION)
    assert (again.model_approval_status, again.approval_description) == ("Approved", "checked")


def test_sdk_model_from_package_transformer_endpoint_and_invoke(
    sdk_session, aws_client, versions
) -> None:
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import ContainerDefinition, ProductionVariant
    from sagemaker.core.transformer import Transformer

    suffix = uuid.uuid4().hex[:6]
    model = Model.create(
        model_name=f"from-package-{suffix}",
        primary_container=ContainerDefinition(model_package_name=versions[1]),
        execution_role_arn=ROLE,
        session=sdk_session,
        region=REGION,
    )
    assert model.model_arn.endswith(f"model/from-package-{suffix}")

    s3 = aws_client("s3")
    s3.put_object(Bucket=BUCKET, Key=f"third-party/in-{suffix}/rows.csv", Body=b"1,a\n2.5,b\n")
    transformer = Transformer(
        model_name=model.model_name,
        instance_count=1,
        instance_type="ml.m5.large",
        output_path=f"s3://{BUCKET}/third-party/out-{suffix}",
        sagemaker_session=Session(boto_session=sdk_session),
    )
    transformer.transform(
        f"s3://{BUCKET}/third-party/in-{suffix}/",
        content_type="text/csv",
        split_type="Line",
        wait=True,
        logs=False,
    )
    output = s3.get_object(Bucket=BUCKET, Key=f"third-party/out-{suffix}/rows.csv.out")
    assert output["Body"].read().decode().split() == ["2", "5"]

    EndpointConfig.create(
        endpoint_config_name=f"cfg-{suffix}",
        production_variants=[
            ProductionVariant(
                variant_name="AllTraffic",
                model_name=model.model_name,
                initial_instance_count=1,
                instance_type="ml.m5.large",
            )
        ],
        session=sdk_session,
        region=REGION,
    )
    endpoint = Endpoint.create(
        endpoint_name=f"ep-{suffix}",
        endpoint_config_name=f"cfg-{suffix}",
        session=sdk_session,
        region=REGION,
    )
    try:
        endpoint.wait_for_status("InService", poll=1, timeout=120)
        answer = endpoint.invoke(body="21,x\n", content_type="text/csv", accept="text/csv")
        assert answer.body.read().decode().strip() == "42"
    finally:
        endpoint.delete()


# --- botocore waiters and paginators -------------------------------------------------------------
def test_botocore_waiters(sm, versions) -> None:
    name = f"waited-{uuid.uuid4().hex[:8]}"
    sm.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python3", "-c", "print('trained')"],
        },
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/third-party/training"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 300},
    )
    fast = {"Delay": 1, "MaxAttempts": 120}
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name, WaiterConfig=fast)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Completed"

    model = f"waited-{uuid.uuid4().hex[:8]}"
    sm.create_model(
        ModelName=model, PrimaryContainer={"ModelPackageName": versions[0]}, ExecutionRoleArn=ROLE
    )
    sm.create_endpoint_config(
        EndpointConfigName=model,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    sm.create_endpoint(EndpointName=model, EndpointConfigName=model)
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=model, WaiterConfig=fast)
        assert sm.describe_endpoint(EndpointName=model)["EndpointStatus"] == "InService"
    finally:
        sm.delete_endpoint(EndpointName=model)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=model, WaiterConfig=fast)


def test_botocore_paginators(sm, versions) -> None:
    pages = list(
        sm.get_paginator("list_model_packages").paginate(
            ModelPackageGroupName=GROUP, PaginationConfig={"PageSize": 1}
        )
    )
    assert len(pages) >= 2
    arns = [s["ModelPackageArn"] for page in pages for s in page["ModelPackageSummaryList"]]
    assert arns == versions
    training = sm.get_paginator("list_training_jobs").paginate(PaginationConfig={"PageSize": 1})
    names = [s["TrainingJobName"] for page in training for s in page["TrainingJobSummaries"]]
    assert len(names) == len(set(names))
    assert len(names) == len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])


# --- the AWS CLI ---------------------------------------------------------------------------------
def _aws_cli(local_aws, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    command = [str(Path(sys.executable).with_name("aws")), *args, "--endpoint-url", local_aws.url]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_aws_cli_lists_and_describes_model_packages(local_aws, versions) -> None:
    result = _aws_cli(
        local_aws, "sagemaker", "list-model-packages", "--model-package-group-name", GROUP
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["ModelPackageSummaryList"]
    assert [s["ModelPackageArn"] for s in listed] == versions
    result = _aws_cli(
        local_aws, "sagemaker", "describe-model-package", "--model-package-name", versions[0]
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ModelPackageVersion"] == 1


# --- negative controls: the runtime validates every request like AWS ----------------------------
@pytest.fixture(scope="module")
def unchecked(aws_client) -> Any:
    """A SageMaker client that sends what boto3 would refuse client-side."""
    return aws_client("sagemaker", parameter_validation=False)


def _refused(call, **request: Any) -> str:
    with pytest.raises(ClientError) as err:
        call(**request)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    return err.value.response["Error"]["Message"]


def test_runtime_refuses_a_too_long_tuning_job_name(unchecked, local_aws) -> None:
    name = "t" * 33
    message = _refused(
        unchecked.create_hyper_parameter_tuning_job,
        HyperParameterTuningJobName=name,
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 1, "MaxParallelTrainingJobs": 1},
        },
    )
    assert message == (
        f"2 validation errors detected: Value '{name}' at 'hyperParameterTuningJobName' failed "
        "to satisfy constraint: Member must satisfy regular expression pattern: "
        f"[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,31}}; Value '{name}' at 'hyperParameterTuningJobName' "
        "failed to satisfy constraint: Member must have length less than or equal to 32"
    )
    calls = api.recorded_calls(local_aws.runtime, "CreateHyperParameterTuningJob")
    assert calls[-1]["ErrorCode"] == "ValidationException"


def test_runtime_refuses_bad_enums_and_lengths_in_list_filters(unchecked) -> None:
    message = _refused(unchecked.list_training_jobs, StatusEquals="Bogus")
    assert message == (
        "1 validation error detected: Value 'Bogus' at 'statusEquals' failed to satisfy "
        "constraint: Member must satisfy enum value set: [InProgress, Completed, Failed, "
        "Stopping, Stopped, Deleting]"
    )
    message = _refused(unchecked.list_model_packages, SortBy="Bogus")
    assert message.endswith("at 'sortBy' failed to satisfy constraint: Member must satisfy enum "
                            "value set: [Name, CreationTime]")  # fmt: skip
    message = _refused(unchecked.list_model_packages, NameContains="n" * 100)
    assert message.startswith("1 validation error detected: Value 'nnn")
    assert message.endswith(
        "at 'nameContains' failed to satisfy constraint: Member must have length less than or "
        "equal to 63"
    )


def test_runtime_refuses_an_unknown_instance_type_before_any_lookup(unchecked, sm) -> None:
    # The model does not exist either: validation answers first, as on AWS.
    message = _refused(
        unchecked.create_endpoint_config,
        EndpointConfigName="bogus-instance",
        ProductionVariants=[
            {"VariantName": "v", "ModelName": "no-such-model", "InstanceType": "ml.bogus.large"}
        ],
    )
    assert message.startswith(
        "1 validation error detected: Value 'ml.bogus.large' at "
        "'productionVariants.1.member.instanceType' failed to satisfy constraint: Member must "
        "satisfy enum value set: [ml.t2.medium, "
    )
    message = _refused(
        unchecked.create_transform_job,
        TransformJobName="bogus-instance",
        ModelName="no-such-model",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": f"s3://{BUCKET}/x/"}}},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/y/"},
        TransformResources={"InstanceType": "ml.bogus.large", "InstanceCount": 1},
    )  # fmt: skip
    assert "at 'transformResources.instanceType' failed to satisfy constraint" in message
    with pytest.raises(ClientError):
        sm.describe_endpoint_config(EndpointConfigName="bogus-instance")
