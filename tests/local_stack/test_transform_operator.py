"""``ensure_model`` and ``IdempotentTransformOperator`` against the local AWS endpoint, with the
project's own ``inference.py`` serving a registered model package, as the batch-inference DAG
uses them.

The model is a scikit-learn LogisticRegression on two features (``f1 + f2 > 1``) pickled by
the image's own scikit-learn, with the ``model_metadata.json`` that ``train.py`` writes next to
it; the serving code is the project's step-code bundle (``code_bundle.build_bundle``). Input
rows are far from the decision boundary, so every prediction is known.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from local_stack import images
from mlops_sagemaker.code_bundle import build_bundle
from mlops_sagemaker.failures import TransientFailure
from mlops_sagemaker.inference_requests import model_request, transform_request
from mlops_sagemaker.naming import fingerprint
from mlops_sagemaker.operators import IdempotentTransformOperator, ensure_model

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "local-stack-tests"  # created by the conftest's local_aws fixture
REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-local"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
GROUP = "transform-operator-tests"
SHORT = "tfop"
PREFIX = "transform-operator"

# Run with the image's interpreter: a model its scikit-learn can load, plus train.py's metadata.
TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import joblib, numpy as np
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(7)
features = rng.uniform(0, 1, size=(400, 2))
labels = (features.sum(axis=1) > 1.0).astype(int)
out = Path(sys.argv[1])
joblib.dump(LogisticRegression(C=100.0).fit(features, labels), out / "model.joblib")
metadata = {"feature_columns": ["f1", "f2"], "positive_class": 1, "decision_threshold": 0.5}
(out / "model_metadata.json").write_text(json.dumps(metadata))
"""


class RecordingTaskInstance:
    """What the provider's operator link needs of ``context["ti"]``: ``xcom_push``."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture(scope="module")
def sm(aws_client) -> Any:
    return aws_client("sagemaker")


@pytest.fixture(scope="module")
def s3(aws_client) -> Any:
    return aws_client("s3")


def _model_tarball(tmp_path: Path) -> bytes:
    subprocess.run(
        [str(images.interpreter_for(IMAGE)), "-c", TRAIN_SCRIPT, str(tmp_path)],
        check=True,
        capture_output=True,
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("model.joblib", "model_metadata.json"):
            tar.add(tmp_path / name, arcname=name)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def package(sm, s3, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registered model package version serving the model with the project's inference.py,
    its container built like ``sagemaker_requests.registration_request`` builds it."""
    model_key = f"{PREFIX}/model/model.tar.gz"
    code_key = f"{PREFIX}/code/sourcedir.tar.gz"
    s3.put_object(
        Bucket=BUCKET, Key=model_key, Body=_model_tarball(tmp_path_factory.mktemp("model"))
    )
    s3.put_object(
        Bucket=BUCKET, Key=code_key, Body=build_bundle(ROOT / "include/step_code").tarball
    )
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    return sm.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [
                {
                    "Image": IMAGE,
                    "ModelDataUrl": f"s3://{BUCKET}/{model_key}",
                    "Environment": {
                        "SAGEMAKER_PROGRAM": "inference.py",
                        "SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{BUCKET}/{code_key}",
                        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                        "SAGEMAKER_REGION": REGION,
                    },
                    "Framework": "SKLEARN",
                    "FrameworkVersion": "1.2-1",
                }
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
            "SupportedTransformInstanceTypes": ["ml.m5.large"],
        },
    )["ModelPackageArn"]


# The config's network settings as ``model_request`` reads them: open, no VPC.
OPEN_NETWORK = SimpleNamespace(
    enable_network_isolation=False, vpc=SimpleNamespace(subnets=[], security_group_ids=[])
)


def model_for(package: str, role: str = ROLE) -> dict[str, Any]:
    """The DAG's CreateModel request for ``package`` (its name hashes package, role, network)."""
    return model_request(
        short_name=SHORT,
        use_case="transform_operator_tests",
        model_package_arn=package,
        role_arn=role,
        network=OPEN_NETWORK,
        base_tags={"team": "mlops"},
    )


@pytest.fixture(scope="module")
def model_name(sm, package: str) -> str:
    """The model the transform tests run (created here, whatever test comes first)."""
    request = model_for(package)
    ensure_model(sm, request)
    return request["ModelName"]


# Far from the boundary f1 + f2 = 1: (low, low) -> 0, (high, high) -> 1.
ROWS = [
    [("k-001", 0.05, 0.10), ("k-002", 0.90, 0.85), ("k-003", 0.20, 0.15)],
    [("k-004", 0.95, 0.99), ("k-005", 0.10, 0.02)],
]


def put_input(s3, ds: str, rows: list[list[tuple[str, float, float]]]) -> tuple[str, str]:
    """Gzip CSV parts without header (key, features in training order); returns the prefix
    URI and a fingerprint of the content."""
    prefix = f"{PREFIX}/{ds}/input"
    bodies = []
    for index, part in enumerate(rows):
        text = "".join(f"{key},{a},{b}\n" for key, a, b in part)
        bodies.append(text)
        object_key = f"{prefix}/part-{index:05d}.csv.gz"
        s3.put_object(Bucket=BUCKET, Key=object_key, Body=gzip.compress(text.encode(), mtime=0))
    return f"s3://{BUCKET}/{prefix}/", fingerprint(bodies, 16)


def request_for(s3, model_name: str, ds: str, rows=ROWS) -> dict[str, Any]:
    input_uri, data_fingerprint = put_input(s3, ds, rows)
    return transform_request(
        short_name=SHORT,
        ds=ds,
        model_name=model_name,
        input_uri=input_uri,
        output_uri=f"s3://{BUCKET}/{PREFIX}/{ds}/predictions/",
        data_fingerprint=data_fingerprint,
        instance_type="ml.m5.large",
        instance_count=1,
        max_payload_mb=1,
        max_concurrent_transforms=2,
        invocations_timeout_seconds=60,
        invocations_max_retries=0,
        kms_key_id="",
        volume_kms_key_id="",
        tags=[{"Key": "mlops:run-date", "Value": ds}],
    )


def run(request: dict[str, Any], deferrable: bool = False) -> dict[str, Any]:
    operator = IdempotentTransformOperator(
        task_id="transform",
        config=dict(request),
        aws_conn_id="aws_default",
        wait_for_completion=True,
        check_interval=1,
        deferrable=deferrable,
    )
    return operator.execute({"params": {}, "ti": RecordingTaskInstance()})


def jobs_of(sm, request: dict[str, Any]) -> dict[str, str]:
    base = request["TransformJobName"][:-2]
    summaries = sm.list_transform_jobs(NameContains=base)["TransformJobSummaries"]
    return {s["TransformJobName"]: s["TransformJobStatus"] for s in summaries}


# --- tests -----------------------------------------------------------------------------------
def test_ensure_model_creates_once_then_reuses(sm, package: str) -> None:
    # Its own role, so its own model name: created by this test, not by the module fixture.
    request = model_for(package, role=f"{ROLE}-ensure")
    name = request["ModelName"]
    assert ensure_model(sm, request) is True
    assert ensure_model(sm, request) is False
    assert [m["ModelName"] for m in sm.list_models(NameContains=name)["Models"]] == [name]
    described = sm.describe_model(ModelName=name)
    assert described["PrimaryContainer"] == {"ModelPackageName": package}
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=described["ModelArn"])["Tags"]}
    assert tags["mlops:model-package-version"] == package.rsplit("/", 1)[-1]


def test_ensure_model_raises_other_validation_errors(sm, package: str) -> None:
    """A missing package is a ValidationException too: it must fail, not pass as "exists"."""
    missing = package.rsplit("/", 1)[0] + "/999"
    request = model_for(missing)
    with pytest.raises(sm.exceptions.ClientError, match=r"ModelPackage .*/999 does not exist"):
        ensure_model(sm, request)
    assert sm.list_models(NameContains=request["ModelName"])["Models"] == []


def test_transform_runs_once_and_a_rerun_reuses_the_job(
    airflow_aws_connection, sm, s3, model_name: str
) -> None:
    request = request_for(s3, model_name, "1996-02-29")
    first = run(request)["Transform"]
    assert first["TransformJobStatus"] == "Completed", first.get("FailureReason")
    assert first["TransformJobName"] == request["TransformJobName"]
    # The re-run (a cleared task) finds the completed job: no second job, same answer. So does
    # a deferrable re-run, without deferring.
    assert run(request)["Transform"]["TransformJobArn"] == first["TransformJobArn"]
    assert run(request, deferrable=True)["Transform"]["TransformJobArn"] == first["TransformJobArn"]
    assert jobs_of(sm, request) == {request["TransformJobName"]: "Completed"}

    output = first["TransformOutput"]["S3OutputPath"].removeprefix(f"s3://{BUCKET}/")
    for index, part in enumerate(ROWS):
        out_key = f"{output.rstrip('/')}/part-{index:05d}.csv.gz.out"
        lines = s3.get_object(Bucket=BUCKET, Key=out_key)["Body"].read().decode().splitlines()
        rows = [line.split(",") for line in lines]
        assert [r[0] for r in rows] == [key for key, _, _ in part]
        assert all(len(r) == 3 for r in rows), lines
        for (_, a, b), (_, prediction, probability) in zip(part, rows, strict=True):
            assert prediction == str(int(a + b > 1)), lines
            assert (float(probability) >= 0.5) == (prediction == "1"), lines


def test_failed_transform_fails_the_task_with_sagemakers_reason(
    airflow_aws_connection, sm, s3, model_name: str, faults
) -> None:
    request = request_for(s3, model_name, "1996-03-01")
    reason = "ClientError: injected: the input for 1996-03-01 has no readable record"
    faults.configure({"fail": {request["TransformJobName"]: reason}})
    with pytest.raises(AirflowFailException) as failed:
        run(request)
    message = str(failed.value)
    assert message.startswith(f"SageMaker transform job {request['TransformJobName']} ended Failed")
    assert reason in message and message.endswith("[permanent: sagemaker-job]")


def test_transient_failure_retries_under_the_next_attempt(
    airflow_aws_connection, sm, s3, model_name: str, faults
) -> None:
    request = request_for(s3, model_name, "1996-03-02")
    faults.configure({"fail": {request["TransformJobName"]: "CapacityError: no ml.m5.large"}})
    with pytest.raises(TransientFailure, match=r"CapacityError: no ml\.m5\.large"):
        run(request)
    faults.clear()
    retried = run(request)["Transform"]
    second = request["TransformJobName"][:-1] + "2"
    assert retried["TransformJobName"] == second
    assert jobs_of(sm, request) == {request["TransformJobName"]: "Failed", second: "Completed"}


def test_deferred_transform_is_checked_when_it_resumes(
    airflow_aws_connection, sm, s3, model_name: str
) -> None:
    rows = [[("k-101", 0.9, 0.9), ("k-102", 0.1, 0.1)]]
    request = request_for(s3, model_name, "1996-03-03", rows)
    operator = IdempotentTransformOperator(
        task_id="transform",
        config=dict(request),
        aws_conn_id="aws_default",
        check_interval=1,
        deferrable=True,
    )
    context = {"params": {}, "ti": RecordingTaskInstance()}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    assert deferred.value.trigger.job_name == request["TransformJobName"]
    waiter = sm.get_waiter("transform_job_completed_or_stopped")
    waiter.wait(TransformJobName=request["TransformJobName"], WaiterConfig={"Delay": 1})
    event = {"status": "success", "job_name": request["TransformJobName"]}
    resumed = operator.execute_complete(context, event)["Transform"]
    assert resumed["TransformJobStatus"] == "Completed"
