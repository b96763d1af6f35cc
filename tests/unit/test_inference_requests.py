"""The batch-inference requests (CreateModel, CreateTransformJob) for several run dates and
network/KMS/VPC settings.

Every request is checked by botocore's ``ParamValidator`` (types, required members) and by
every other rule of the ``sagemaker`` service model (``local_stack.sagemaker_runtime.
validation``: lengths, ranges, enums, patterns, worded like AWS). Names fit SageMaker's limits,
are stable for the same inputs and change with what they hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import botocore.session
import pytest
from botocore.validate import ParamValidator

from local_stack.sagemaker_runtime import validation
from local_stack.sagemaker_runtime._jsonpath import compile_path
from mlops_sagemaker.failures import ClassifiedError, Kind
from mlops_sagemaker.inference_requests import model_request, transform_request
from mlops_sagemaker.naming import MAX_NAME

RUN_DATES = ["1993-01-01", "1996-02-29", "1996-12-31", "1998-08-02"]
SHORT = "tpch-ord"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/mlops-tpch-orders/7"
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
_SERVICE = botocore.session.get_session().get_service_model("sagemaker")


@dataclass(frozen=True)
class Vpc:
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Network:
    """Shaped like the config's network settings (what the builders read of them)."""

    enable_network_isolation: bool = False
    vpc: Vpc = field(default_factory=Vpc)


OPEN = Network()
LOCKED = Network(True, Vpc(["subnet-0a1b2c3d", "subnet-4e5f6a7b"], ["sg-0123456789abcdef0"]))


def validate(operation: str, request: dict) -> None:
    shape = _SERVICE.operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    found = validation.violations(operation, request)
    assert not found, validation.report(found)


def model(network: Network = OPEN, package: str = PACKAGE, **tags: str) -> dict:
    return model_request(
        short_name=SHORT,
        use_case="tpch_orders",
        model_package_arn=package,
        role_arn=ROLE,
        network=network,
        base_tags={"team": "mlops", **tags},
    )


def transform(ds: str, kms: str = "", **overrides: object) -> dict:
    arguments: dict = {
        "short_name": SHORT,
        "ds": ds,
        "model_name": model()["ModelName"],
        "input_uri": f"s3://mlops-local/mlops/tpch_orders/batch_inference/{ds}/input/",
        "output_uri": f"s3://mlops-local/mlops/tpch_orders/batch_inference/{ds}/predictions/",
        "data_fingerprint": "0123456789abcdef",
        "instance_type": "ml.m5.large",
        "instance_count": 2,
        "max_payload_mb": 6,
        "max_concurrent_transforms": 4,
        "invocations_timeout_seconds": 600,
        "invocations_max_retries": 3,
        "kms_key_id": kms,
        "volume_kms_key_id": kms,
        "tags": [
            {"Key": "mlops:run-date", "Value": ds},
            {"Key": "mlops:use-case", "Value": "tpch_orders"},
        ],
    }
    return transform_request(**{**arguments, **overrides})


@pytest.mark.parametrize("network", [OPEN, LOCKED], ids=["open", "isolated-vpc"])
def test_model_request_is_valid_and_carries_the_settings(network: Network) -> None:
    request = model(network)
    validate("CreateModel", request)
    assert request["PrimaryContainer"] == {"ModelPackageName": PACKAGE}
    assert request["ExecutionRoleArn"] == ROLE
    assert request["EnableNetworkIsolation"] is network.enable_network_isolation
    if network.vpc.subnets:
        assert request["VpcConfig"] == {
            "Subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
            "SecurityGroupIds": ["sg-0123456789abcdef0"],
        }
    else:
        assert "VpcConfig" not in request
    assert request["Tags"] == [
        {"Key": "mlops:managed-by", "Value": "airflow"},
        {"Key": "mlops:model-package-version", "Value": "7"},
        {"Key": "mlops:use-case", "Value": "tpch_orders"},
        {"Key": "team", "Value": "mlops"},
    ]


def test_model_name_is_content_addressed() -> None:
    name = model()["ModelName"]
    assert name.startswith(f"{SHORT}-mdl-") and len(name) == len(SHORT) + 15 <= MAX_NAME
    assert model()["ModelName"] == name
    # Tags are not what the model is: editing them keeps the model.
    assert model(owner="someone")["ModelName"] == name
    # Another version, another network setting: another model.
    other_version = PACKAGE.replace("/7", "/8")
    assert model(package=other_version)["ModelName"] != name
    assert model(LOCKED)["ModelName"] != name


@pytest.mark.parametrize("kms", ["", KMS], ids=["no-kms", "kms"])
@pytest.mark.parametrize("ds", RUN_DATES)
def test_transform_request_is_valid_for_botocore(ds: str, kms: str) -> None:
    request = transform(ds, kms)
    validate("CreateTransformJob", request)
    name = request["TransformJobName"]
    assert name.startswith(f"{SHORT}-{ds.replace('-', '')}-bt-") and name.endswith("-1")
    assert len(name) <= MAX_NAME
    if kms:
        assert request["TransformOutput"]["KmsKeyId"] == KMS
        assert request["TransformResources"]["VolumeKmsKeyId"] == KMS
    else:
        assert "KmsKeyId" not in request["TransformOutput"]
        assert "VolumeKmsKeyId" not in request["TransformResources"]


def test_transform_design_gzip_csv_with_keys_in_and_out() -> None:
    request = transform("1996-02-29")
    assert request["TransformInput"] == {
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": "s3://mlops-local/mlops/tpch_orders/batch_inference/1996-02-29/input/",
            }
        },
        "ContentType": "text/csv",
        "CompressionType": "Gzip",
        "SplitType": "Line",
    }
    assert request["BatchStrategy"] == "MultiRecord"
    assert request["TransformOutput"]["Accept"] == "text/csv"
    assert request["TransformOutput"]["AssembleWith"] == "Line"
    assert request["ModelClientConfig"] == {
        "InvocationsTimeoutInSeconds": 600,
        "InvocationsMaxRetries": 3,
    }
    assert "Environment" not in request
    # The filters on a record, evaluated with SageMaker's documented JSONPath semantics (the
    # local runtime's implementation): the model gets the features only; the output keeps the
    # key and the model's prediction,probability.
    processing = request["DataProcessing"]
    record = ["4711", "1520.5", "0.04", "17"]
    assert compile_path(processing["InputFilter"]).apply_row(record) == ["1520.5", "0.04", "17"]
    assert processing["JoinSource"] == "Input"
    joined = [*record, "1", "0.83"]
    assert compile_path(processing["OutputFilter"]).apply_row(joined) == ["4711", "1", "0.83"]


def test_transform_names_are_stable_and_follow_their_inputs() -> None:
    name = transform("1996-02-29")["TransformJobName"]
    assert transform("1996-02-29")["TransformJobName"] == name
    changed = [
        transform("1996-02-29", data_fingerprint="fedcba9876543210"),
        transform("1996-02-29", model_name=model(LOCKED)["ModelName"]),
        transform("1996-02-29", instance_count=1),
        transform("1996-03-01"),
    ]
    names = {request["TransformJobName"] for request in changed}
    assert name not in names and len(names) == len(changed)


@pytest.mark.parametrize(
    ("payload", "concurrency", "wording"),
    [
        (20, 6, "6 x 20 MB exceeds SageMaker's 100 MB"),
        (101, 1, "max_payload_mb 101 must be 1-100"),
        (0, 1, "max_payload_mb 0 must be 1-100"),
        (6, 0, "max_concurrent_transforms 0 at least 1"),
    ],
)
def test_payload_limits_are_permanent_request_errors(
    payload: int, concurrency: int, wording: str
) -> None:
    with pytest.raises(ClassifiedError, match=wording) as err:
        transform("1996-02-29", max_payload_mb=payload, max_concurrent_transforms=concurrency)
    assert err.value.kind is Kind.PERMANENT and err.value.category == "request"


def test_model_needs_a_versioned_package_and_a_name_that_fits() -> None:
    unversioned = "arn:aws:sagemaker:us-east-1:123456789012:model-package/standalone"
    with pytest.raises(ClassifiedError, match="is not the ARN of a versioned model package"):
        model(package=unversioned)
    with pytest.raises(ClassifiedError, match="breaks the naming rule or limit 63"):
        model_request(
            short_name="x" * 50,
            use_case="tpch_orders",
            model_package_arn=PACKAGE,
            role_arn=ROLE,
            network=OPEN,
            base_tags={},
        )
