"""The local SageMaker runtime's model registry, batch transform and real-time endpoints, driven
with real boto3 clients (and the Airflow provider) against ``LocalAwsEndpoint(port=0)``.

The models are tiny scikit-learn LogisticRegressions on two features with their own
``inference.py`` (below), so these tests do not depend on the project's step code. Two models
answer with different ``model`` tags so that a blue/green update is visible in the responses.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from sklearn.linear_model import LogisticRegression

from local_stack import images
from local_stack.aws_endpoint.server import LocalAwsEndpoint
from mlops_sagemaker.config import load_use_case
from mlops_sagemaker.inference_requests import model_request
from mlops_sagemaker.model_artifact import ensure_model_with_code
from mlops_sagemaker.sagemaker_requests import CodeLocations, RunInfo, registration_request

REGION = "us-east-1"
BUCKET = "serving-tests"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-local"
ROOT = Path(__file__).resolve().parents[2]

INFERENCE_PY = """
import json
import os
import sys
from pathlib import Path

import joblib
import numpy as np


def model_fn(model_dir):
    if (Path(model_dir) / "broken").exists():
        raise RuntimeError("model file is corrupt: cannot load")
    tag = (Path(model_dir) / "tag.txt").read_text().strip()
    return {"model": joblib.load(Path(model_dir) / "model.joblib"), "tag": tag}


def _row(values, where):
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"record {where} has a non-numeric feature: {values!r}") from None


def input_fn(body, content_type):
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    if content_type == "text/csv":
        rows = [_row(l.split(","), i) for i, l in enumerate(body.splitlines()) if l.strip()]
    elif content_type == "application/json":
        doc = json.loads(body)
        doc = doc.get("instances", doc) if isinstance(doc, dict) else doc
        rows = [_row(r, i) for i, r in enumerate(doc if isinstance(doc[0], list) else [doc])]
    elif content_type == "application/jsonlines":
        rows = [_row(json.loads(l), i) for i, l in enumerate(body.splitlines()) if l.strip()]
    else:
        raise ValueError(f"unsupported content type {content_type}")
    print(f"batch of {len(rows)} records", file=sys.stderr, flush=True)
    return np.array(rows)


def predict_fn(data, model):
    return model["model"].predict_proba(data)[:, 1], model["tag"]


def output_fn(prediction, accept):
    probabilities, tag = prediction
    records = [
        {"prediction": int(p >= 0.5), "probability": round(float(p), 6), "model": tag}
        for p in probabilities
    ]
    if accept == "text/csv":
        lines = [f"{r['prediction']},{r['probability']}" for r in records]
        return "\\n".join(lines) + "\\n", "text/csv"
    if accept == "application/jsonlines":
        return "\\n".join(json.dumps(r) for r in records) + "\\n", "application/jsonlines"
    return json.dumps({"predictions": records, "model": tag}), "application/json"
"""


# --- fixtures ----------------------------------------------------------------------------------
def _client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAwsEndpoint]:
    endpoint = LocalAwsEndpoint(port=0, workdir=tmp_path_factory.mktemp("runtime")).start()
    _client("s3", endpoint.url).create_bucket(Bucket=BUCKET)
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def sm(aws: LocalAwsEndpoint) -> Any:
    return _client("sagemaker", aws.url)


@pytest.fixture(scope="module")
def smr(aws: LocalAwsEndpoint) -> Any:
    return _client("sagemaker-runtime", aws.url)


@pytest.fixture(scope="module")
def s3(aws: LocalAwsEndpoint) -> Any:
    return _client("s3", aws.url)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _joblib_bytes(model: LogisticRegression) -> bytes:
    """``model`` pickled by the image's scikit-learn (the servers run the image's venv, which
    cannot load a pickle of the host's newer scikit-learn): same coefficients, same answers."""
    fitted = {
        "coef_": model.coef_.tolist(),
        "intercept_": model.intercept_.tolist(),
        "classes_": model.classes_.tolist(),
    }
    script = (
        "import io, json, sys, joblib, numpy as np\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "model = LogisticRegression()\n"
        "for name, value in json.loads(sys.argv[1]).items():\n"
        "    setattr(model, name, np.array(value))\n"
        "model.n_features_in_ = model.coef_.shape[1]\n"
        "buffer = io.BytesIO(); joblib.dump(model, buffer); sys.stdout.buffer.write(buffer.getvalue())\n"
    )
    python = images.interpreter_for(IMAGE)
    return subprocess.run(
        [str(python), "-c", script, json.dumps(fitted)], capture_output=True, check=True
    ).stdout


def _trained(seed: int) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 1, size=(200, 2))
    labels = (features.sum(axis=1) > 1.0).astype(int)
    return LogisticRegression().fit(features, labels)


@pytest.fixture(scope="module")
def models(s3: Any) -> dict[str, Any]:
    """Artifacts in S3: model A (code in a separate sourcedir.tar.gz, as the SDK uploads it),
    model B (code repacked into model.tar.gz under code/), a model that fails to load."""
    model_a, model_b = _trained(1), _trained(2)
    code = INFERENCE_PY.encode()
    objects = {
        "models/a/model.tar.gz": _tar({"model.joblib": _joblib_bytes(model_a), "tag.txt": b"A"}),
        "models/a/sourcedir.tar.gz": _tar({"inference.py": code}),
        "models/b/model.tar.gz": _tar(
            {"model.joblib": _joblib_bytes(model_b), "tag.txt": b"B", "code/inference.py": code}
        ),
        "models/broken/model.tar.gz": _tar({"broken": b"", "code/inference.py": code}),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    base = f"s3://{BUCKET}/models"
    return {
        "A": {
            "estimator": model_a,
            "container": {
                "Image": IMAGE,
                "ModelDataUrl": f"{base}/a/model.tar.gz",
                "Environment": {
                    "SAGEMAKER_PROGRAM": "inference.py",
                    "SAGEMAKER_SUBMIT_DIRECTORY": f"{base}/a/sourcedir.tar.gz",
                },
            },
        },
        "B": {
            "estimator": model_b,
            "container": {
                "Image": IMAGE,
                "ModelDataUrl": f"{base}/b/model.tar.gz",
                "Environment": {
                    "SAGEMAKER_PROGRAM": "inference.py",
                    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                },
            },
        },
        "broken": {
            "container": {
                "Image": IMAGE,
                "ModelDataUrl": f"{base}/broken/model.tar.gz",
                "Environment": {"SAGEMAKER_PROGRAM": "inference.py"},
            }
        },
    }


def _wait(describe: Any, status_key: str, transitional: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = describe()
        if answer[status_key] not in transitional:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"still {answer[status_key]} after {timeout} s: {answer}")
        time.sleep(0.2)


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error["Message"]


# --- model registry ----------------------------------------------------------------------------
def test_registry_versions_listing_and_approval(sm: Any, models: dict[str, Any]) -> None:
    group = "churn-registry"
    sm.create_model_package_group(
        ModelPackageGroupName=group, ModelPackageGroupDescription="churn models"
    )
    with pytest.raises(ClientError) as excinfo:
        sm.create_model_package_group(ModelPackageGroupName=group)
    code, message = _error(excinfo)
    assert code == "ValidationException"
    assert message.startswith("Model Package Group already exists")

    metrics = {
        "ModelQuality": {
            "Statistics": {
                "ContentType": "application/json",
                "S3Uri": f"s3://{BUCKET}/eval/evaluation.json",
            }
        }
    }
    arns = []
    for index in range(3):
        arns.append(
            sm.create_model_package(
                ModelPackageGroupName=group,
                ModelPackageDescription=f"run {index}",
                InferenceSpecification={
                    "Containers": [models["A"]["container"]],
                    "SupportedContentTypes": ["text/csv"],
                    "SupportedResponseMIMETypes": ["text/csv"],
                    "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
                    "SupportedTransformInstanceTypes": ["ml.m5.large"],
                },
                ModelMetrics=metrics,
                CustomerMetadataProperties={"ds": f"1995-01-0{index + 1}", "auc": "0.9"},
                ClientToken=f"token-{index}",
            )["ModelPackageArn"]
        )
    assert arns == [
        f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{group}/{v}" for v in (1, 2, 3)
    ]
    # ClientToken makes a retried create idempotent.
    again = sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification={
            "Containers": [models["A"]["container"]],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        ClientToken="token-2",
    )
    assert again["ModelPackageArn"] == arns[2]

    listed = sm.list_model_packages(
        ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending"
    )["ModelPackageSummaryList"]
    assert [p["ModelPackageVersion"] for p in listed] == [3, 2, 1]
    assert {p["ModelApprovalStatus"] for p in listed} == {"PendingManualApproval"}

    first_page = sm.list_model_packages(
        ModelPackageGroupName=group, SortOrder="Descending", MaxResults=2
    )
    assert len(first_page["ModelPackageSummaryList"]) == 2
    second_page = sm.list_model_packages(
        ModelPackageGroupName=group,
        SortOrder="Descending",
        MaxResults=2,
        NextToken=first_page["NextToken"],
    )
    assert [p["ModelPackageVersion"] for p in second_page["ModelPackageSummaryList"]] == [1]
    assert "NextToken" not in second_page

    sm.update_model_package(
        ModelPackageArn=arns[1],
        ModelApprovalStatus="Approved",
        ApprovalDescription="looks good",
        CustomerMetadataProperties={"approved_by": "qa"},
        CustomerMetadataPropertiesToRemove=["auc"],
    )
    approved = sm.list_model_packages(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        SortBy="CreationTime",
        SortOrder="Descending",
        MaxResults=1,
    )["ModelPackageSummaryList"]
    assert [p["ModelPackageArn"] for p in approved] == [arns[1]]

    described = sm.describe_model_package(ModelPackageName=arns[1])
    assert described["ModelPackageStatus"] == "Completed"
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["ApprovalDescription"] == "looks good"
    assert described["ModelPackageGroupName"] == group
    assert described["ModelPackageVersion"] == 2
    assert described["ModelMetrics"] == metrics
    assert described["CustomerMetadataProperties"] == {"ds": "1995-01-02", "approved_by": "qa"}
    assert described["LastModifiedTime"] >= described["CreationTime"]
    assert (
        described["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
        == (models["A"]["container"]["ModelDataUrl"])
    )
    assert sm.describe_model_package_group(ModelPackageGroupName=group)[
        "ModelPackageGroupStatus"
    ] == ("Completed")

    with pytest.raises(ClientError) as excinfo:
        sm.create_model_package(
            ModelPackageGroupName="no-such-group",
            InferenceSpecification={
                "Containers": [{"Image": IMAGE}],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["text/csv"],
            },
        )
    assert _error(excinfo)[0] == "ValidationException"


def test_airflow_register_model_version_operator(
    aws: LocalAwsEndpoint, sm: Any, models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import (
        SageMakerRegisterModelVersionOperator,
    )

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": aws.url, "region_name": REGION},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    arns = []
    for attempt in range(2):  # the second run finds the group and adds version 2
        operator = SageMakerRegisterModelVersionOperator(
            task_id=f"register_{attempt}",
            image_uri=IMAGE,
            model_url=models["A"]["container"]["ModelDataUrl"],
            package_group_name="airflow-registered",
            package_desc="registered by Airflow",
            extras={
                "CustomerMetadataProperties": {"ds": "1995-03-01"},
                "ModelMetrics": {
                    "ModelQuality": {
                        "Statistics": {
                            "ContentType": "application/json",
                            "S3Uri": f"s3://{BUCKET}/eval.json",
                        }
                    }
                },
            },
        )
        arns.append(operator.execute(context={}))
    assert [arn.rsplit("/", 1)[-1] for arn in arns] == ["1", "2"]
    described = sm.describe_model_package(ModelPackageName=arns[1])
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert described["CustomerMetadataProperties"] == {"ds": "1995-03-01"}
    assert described["InferenceSpecification"]["SupportedContentTypes"] == ["text/csv"]


def test_models_create_from_package_describe_delete(sm: Any, models: dict[str, Any]) -> None:
    sm.create_model_package_group(ModelPackageGroupName="model-source")
    package = sm.create_model_package(
        ModelPackageGroupName="model-source",
        InferenceSpecification={
            "Containers": [models["A"]["container"]],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        ModelApprovalStatus="Approved",
    )["ModelPackageArn"]
    sm.create_model(
        ModelName="from-package",
        PrimaryContainer={"ModelPackageName": package},
        ExecutionRoleArn=ROLE,
    )
    described = sm.describe_model(ModelName="from-package")
    assert described["PrimaryContainer"] == {"ModelPackageName": package}
    assert described["ModelArn"].endswith(":model/from-package")
    assert "from-package" in [m["ModelName"] for m in sm.list_models()["Models"]]
    with pytest.raises(ClientError) as excinfo:
        sm.create_model(ModelName="from-package", PrimaryContainer={"ModelPackageName": package})
    assert _error(excinfo)[1].startswith("Cannot create already existing model")
    sm.delete_model(ModelName="from-package")
    with pytest.raises(ClientError) as excinfo:
        sm.describe_model(ModelName="from-package")
    assert _error(excinfo) == (
        "ValidationException",
        f'Could not find model "arn:aws:sagemaker:{REGION}:123456789012:model/from-package".',
    )


# --- batch transform ---------------------------------------------------------------------------
def _csv_rows(count: int, seed: int, prefix: str) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 1, size=(count, 2)).round(6)
    lines = [f"{prefix}{i},{a},{b}" for i, (a, b) in enumerate(features)]
    return lines, features


@pytest.fixture(scope="module")
def transform_jobs(sm: Any, s3: Any, models: dict[str, Any]) -> dict[str, Any]:
    """Start every transform job at once (they run in parallel), wait for all of them."""
    sm.create_model_package_group(ModelPackageGroupName="transform-source")
    package = sm.create_model_package(
        ModelPackageGroupName="transform-source",
        InferenceSpecification={
            "Containers": [models["A"]["container"]],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )["ModelPackageArn"]
    sm.create_model(
        ModelName="transform-model",
        PrimaryContainer={"ModelPackageName": package},
        ExecutionRoleArn=ROLE,
    )
    # CSV: a big file (more than MaxPayloadInMB=1 after the key column is dropped) and a
    # small one.
    big, big_features = _csv_rows(60_000, 11, "big-")
    small, small_features = _csv_rows(5, 12, "small-")
    s3.put_object(Bucket=BUCKET, Key="tf/csv/part-0.csv", Body="\n".join(big) + "\n")
    s3.put_object(Bucket=BUCKET, Key="tf/csv/part-1.csv", Body="\n".join(small) + "\n")
    # JSON lines.
    json_lines = [
        json.dumps({"id": f"j{i}", "features": [float(a), float(b)]})
        for i, (a, b) in enumerate(small_features)
    ]
    s3.put_object(Bucket=BUCKET, Key="tf/jsonl/records.jsonl", Body="\n".join(json_lines))
    # A record the model rejects.
    s3.put_object(Bucket=BUCKET, Key="tf/bad/part-0.csv", Body="k1,0.1,0.2\nk2,0.5,oops\n")

    def start(name: str, prefix: str, **overrides: Any) -> None:
        request: dict[str, Any] = {
            "TransformJobName": name,
            "ModelName": "transform-model",
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 1,
            "MaxConcurrentTransforms": 2,
            "TransformInput": {
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/{prefix}"}
                },
                "ContentType": "text/csv",
                "SplitType": "Line",
            },
            "TransformOutput": {
                "S3OutputPath": f"s3://{BUCKET}/out/{name}",
                "Accept": "text/csv",
                "AssembleWith": "Line",
            },
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
            "DataProcessing": {"InputFilter": "$[1:]", "JoinSource": "Input"},
        }
        request.update(overrides)
        sm.create_transform_job(**request)

    started = time.monotonic()
    start("tf-csv", "tf/csv/")
    start(
        "tf-jsonl",
        "tf/jsonl/",
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/tf/jsonl/"}
            },
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
        },
        TransformOutput={
            "S3OutputPath": f"s3://{BUCKET}/out/tf-jsonl",
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        DataProcessing={
            "InputFilter": "$.features",
            "JoinSource": "Input",
            "OutputFilter": "$['id','SageMakerOutput']",
        },
    )
    start(
        "tf-single",
        "tf/csv/part-1.csv",
        BatchStrategy="SingleRecord",
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"},
    )
    start("tf-bad", "tf/bad/")
    results = {}
    for name in ("tf-csv", "tf-jsonl", "tf-single", "tf-bad"):
        results[name] = _wait(
            lambda n=name: sm.describe_transform_job(TransformJobName=n),
            "TransformJobStatus",
            {"InProgress", "Stopping"},
        )
    return {
        "results": results,
        "elapsed": time.monotonic() - started,
        "big": (big, big_features),
        "small": (small, small_features),
        "estimator": models["A"]["estimator"],
    }


def _read(s3: Any, key: str) -> str:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def _expected(estimator: Any, features: np.ndarray) -> list[tuple[int, float]]:
    probabilities = estimator.predict_proba(features)[:, 1]
    return [(int(p >= 0.5), round(float(p), 6)) for p in probabilities]


def test_transform_csv_join_multi_record(
    transform_jobs: dict[str, Any], s3: Any, aws: LocalAwsEndpoint
) -> None:
    job = transform_jobs["results"]["tf-csv"]
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    assert job["TransformEndTime"] >= job["TransformStartTime"] >= job["CreationTime"]
    estimator = transform_jobs["estimator"]
    for part, (lines, features) in (
        ("part-0.csv", transform_jobs["big"]),
        ("part-1.csv", transform_jobs["small"]),
    ):
        output = _read(s3, f"out/tf-csv/{part}.out").splitlines()
        assert len(output) == len(lines)
        expected = _expected(estimator, features)
        for line, source, (prediction, probability) in zip(output, lines, expected, strict=True):
            key, a, b, predicted, prob = line.split(",")
            assert f"{key},{a},{b}" == source
            assert int(predicted) == prediction
            assert float(prob) == pytest.approx(probability, abs=1e-6)
    # The big file went to the model in more than one mini-batch (MaxPayloadInMB=1).
    logs = _client("logs", aws.url)
    streams = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TransformJobs", logStreamNamePrefix="tf-csv/"
    )["logStreams"]
    messages = [
        event["message"]
        for stream in streams
        for event in logs.get_log_events(
            logGroupName="/aws/sagemaker/TransformJobs", logStreamName=stream["logStreamName"]
        )["events"]
    ]
    batches = [int(m.split()[2]) for m in messages if m.startswith("batch of")]
    assert sum(batches) == 60_005
    assert len(batches) >= 3


def test_transform_json_lines_join_and_output_filter(
    transform_jobs: dict[str, Any], s3: Any
) -> None:
    job = transform_jobs["results"]["tf-jsonl"]
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    output = [json.loads(line) for line in _read(s3, "out/tf-jsonl/records.jsonl.out").splitlines()]
    _, features = transform_jobs["small"]
    expected = _expected(transform_jobs["estimator"], features)
    assert [record["id"] for record in output] == [f"j{i}" for i in range(len(features))]
    for record, (prediction, probability) in zip(output, expected, strict=True):
        assert set(record) == {"id", "SageMakerOutput"}
        assert record["SageMakerOutput"]["prediction"] == prediction
        assert record["SageMakerOutput"]["probability"] == pytest.approx(probability)
        assert record["SageMakerOutput"]["model"] == "A"


def test_transform_single_record_with_output_filter(
    transform_jobs: dict[str, Any], s3: Any
) -> None:
    job = transform_jobs["results"]["tf-single"]
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    lines, features = transform_jobs["small"]
    output = _read(s3, "out/tf-single/part-1.csv.out").splitlines()
    expected = _expected(transform_jobs["estimator"], features)
    assert [line.split(",")[0] for line in output] == [line.split(",")[0] for line in lines]
    for line, (_, probability) in zip(output, expected, strict=True):
        assert float(line.split(",")[1]) == pytest.approx(probability, abs=1e-6)


def test_transform_bad_record_fails_with_model_message(
    transform_jobs: dict[str, Any], sm: Any
) -> None:
    job = transform_jobs["results"]["tf-bad"]
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: ")
    assert "has a non-numeric feature" in job["FailureReason"]
    assert "oops" in job["FailureReason"]
    summaries = sm.list_transform_jobs(StatusEquals="Failed")["TransformJobSummaries"]
    assert [s["TransformJobName"] for s in summaries] == ["tf-bad"]
    with pytest.raises(ClientError) as excinfo:
        sm.describe_transform_job(TransformJobName="no-such-job")
    assert _error(excinfo)[0] == "ValidationException"


def test_transform_stop_and_injected_failure(
    aws: LocalAwsEndpoint, sm: Any, transform_jobs: dict[str, Any]
) -> None:
    aws.runtime.faults.configure(
        {"delay": {"tf-slow": 60}, "fail": {"tf-faulty": "InternalServerError: injected"}}
    )
    try:
        for name in ("tf-slow", "tf-faulty"):
            sm.create_transform_job(
                TransformJobName=name,
                ModelName="transform-model",
                TransformInput={
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": f"s3://{BUCKET}/tf/csv/",
                        }
                    },
                    "ContentType": "text/csv",
                    "SplitType": "Line",
                },
                TransformOutput={"S3OutputPath": f"s3://{BUCKET}/out/{name}"},
                TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
            )
        assert sm.describe_transform_job(TransformJobName="tf-slow")["TransformJobStatus"] == (
            "InProgress"
        )
        sm.stop_transform_job(TransformJobName="tf-slow")
        stopped = _wait(
            lambda: sm.describe_transform_job(TransformJobName="tf-slow"),
            "TransformJobStatus",
            {"InProgress", "Stopping"},
        )
        failed = _wait(
            lambda: sm.describe_transform_job(TransformJobName="tf-faulty"),
            "TransformJobStatus",
            {"InProgress", "Stopping"},
        )
    finally:
        aws.runtime.faults.clear()
    assert stopped["TransformJobStatus"] == "Stopped"
    assert failed["TransformJobStatus"] == "Failed"
    assert failed["FailureReason"] == "InternalServerError: injected"
    with pytest.raises(ClientError) as excinfo:
        sm.create_transform_job(
            TransformJobName="tf-slow",
            ModelName="transform-model",
            TransformInput={
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/x"}}
            },
            TransformOutput={"S3OutputPath": "s3://b/y"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        )
    assert _error(excinfo)[0] == "ResourceInUse"


def test_isolated_model_from_the_repacked_artifact_serves_a_batch_transform(
    sm: Any, s3: Any, models: dict[str, Any]
) -> None:
    """With network isolation the registered container is model A's ``model.tar.gz`` repacked
    with its ``sourcedir.tar.gz`` under ``code/`` (``model_artifact``), served from
    ``/opt/ml/model/code``; the isolated model the batch DAG creates from it (``model_request``)
    scores like model A. An ``s3://`` code location would fail it
    (test_runtime_isolation.py)."""
    source = models["A"]["container"]
    sourcedir = source["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"]
    repacked = ensure_model_with_code(s3, source["ModelDataUrl"], sourcedir)
    config = load_use_case(ROOT / "include/config/tpch_orders.yaml")
    network = config.sagemaker.network.model_copy(update={"enable_network_isolation": True})
    sagemaker = config.sagemaker.model_copy(update={"network": network})
    config = config.model_copy(update={"sagemaker": sagemaker})
    run = RunInfo("1996-02-29", "1996-02-29T00:00:00+00:00", "1996-03-01T00:00:00+00:00", "m")
    registration = registration_request(
        config, run, CodeLocations("v1", f"s3://{BUCKET}/scripts/", sourcedir), IMAGE, REGION,
        source["ModelDataUrl"], f"s3://{BUCKET}/evaluation.json", f"s3://{BUCKET}/baseline.json",
        {}, model_with_code_url=repacked,
    )  # fmt: skip
    (container,) = registration["InferenceSpecification"]["Containers"]
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    sm.create_model_package_group(ModelPackageGroupName=registration["ModelPackageGroupName"])
    package = sm.create_model_package(**registration)["ModelPackageArn"]
    sm.update_model_package(ModelPackageArn=package, ModelApprovalStatus="Approved")
    model = model_request(
        short_name="iso", use_case="isolated", model_package_arn=package, role_arn=ROLE,
        network=network, base_tags={},
    )  # fmt: skip
    sm.create_model(**model)
    assert sm.describe_model(ModelName=model["ModelName"])["EnableNetworkIsolation"] is True
    lines, features = _csv_rows(50, 13, "iso-")
    s3.put_object(Bucket=BUCKET, Key="iso/in/day.csv", Body="\n".join(lines) + "\n")
    sm.create_transform_job(
        TransformJobName="tf-isolated",
        ModelName=model["ModelName"],
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/iso/in/"}
            },
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/iso/out", "Accept": "text/csv"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input"},
    )
    job = _wait(
        lambda: sm.describe_transform_job(TransformJobName="tf-isolated"),
        "TransformJobStatus",
        {"InProgress", "Stopping"},
    )
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    output = _read(s3, "iso/out/day.csv.out").splitlines()
    expected = _expected(models["A"]["estimator"], features)
    assert len(output) == len(lines)
    for line, row, (prediction, probability) in zip(output, lines, expected, strict=True):
        key, a, b, predicted, prob = line.split(",")
        assert f"{key},{a},{b}" == row
        assert int(predicted) == prediction
        assert float(prob) == pytest.approx(probability, abs=1e-6)


# --- endpoints ---------------------------------------------------------------------------------
def _endpoint_status(sm: Any, name: str) -> dict[str, Any]:
    return _wait(
        lambda: sm.describe_endpoint(EndpointName=name),
        "EndpointStatus",
        {"Creating", "Updating", "SystemUpdating", "RollingBack"},
    )


class _Caller(threading.Thread):
    """Invokes the endpoint continuously and records every answer or failure."""

    def __init__(self, smr: Any, name: str) -> None:
        super().__init__(daemon=True)
        self.smr, self.name = smr, name
        self.stop_event = threading.Event()
        self.tags: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                answer = self.smr.invoke_endpoint(
                    EndpointName=self.name,
                    ContentType="application/json",
                    Accept="application/json",
                    Body=json.dumps([[0.9, 0.8]]),
                )
                self.tags.append(json.loads(answer["Body"].read())["model"])
            except Exception as err:
                self.failures.append(repr(err))
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)


def test_endpoint_lifecycle_blue_green_and_rollback(
    aws: LocalAwsEndpoint, sm: Any, smr: Any, models: dict[str, Any]
) -> None:
    for key in ("A", "B", "broken"):
        sm.create_model(
            ModelName=f"ep-model-{key.lower()}",
            PrimaryContainer=models[key]["container"],
            ExecutionRoleArn=ROLE,
        )
        sm.create_endpoint_config(
            EndpointConfigName=f"ep-config-{key.lower()}",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": f"ep-model-{key.lower()}",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                    "InitialVariantWeight": 1.0,
                }
            ],
            DataCaptureConfig={
                "EnableCapture": True,
                "InitialSamplingPercentage": 100,
                "DestinationS3Uri": f"s3://{BUCKET}/capture",
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            },
        )
    name = "churn-endpoint"
    sm.create_endpoint(EndpointName=name, EndpointConfigName="ep-config-a")
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    described = _endpoint_status(sm, name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    (variant,) = described["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["CurrentInstanceCount"] == variant["DesiredInstanceCount"] == 1
    assert variant["DeployedImages"][0]["SpecifiedImage"] == IMAGE
    assert described["DataCaptureConfig"]["CaptureStatus"] == "Started"
    with pytest.raises(ClientError) as excinfo:
        sm.create_endpoint(EndpointName=name, EndpointConfigName="ep-config-a")
    assert _error(excinfo)[1].startswith("Cannot create already existing endpoint")

    # CSV and JSON invocations.
    answer = smr.invoke_endpoint(
        EndpointName=name, ContentType="text/csv", Accept="text/csv", Body="0.9,0.8\n0.1,0.2\n"
    )
    assert answer["ContentType"] == "text/csv"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    expected = _expected(models["A"]["estimator"], np.array([[0.9, 0.8], [0.1, 0.2]]))
    rows = [line.split(",") for line in answer["Body"].read().decode().splitlines()]
    assert [(int(p), float(q)) for p, q in rows] == expected
    answer = smr.invoke_endpoint(
        EndpointName=name, ContentType="application/json", Body=json.dumps([[0.9, 0.8]])
    )
    assert answer["ContentType"] == "application/json"
    assert json.loads(answer["Body"].read())["model"] == "A"

    # A request the model rejects: ModelError with the model's status and message.
    with pytest.raises(ClientError) as excinfo:
        smr.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="0.1,oops\n")
    error = excinfo.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 500
    assert "has a non-numeric feature" in error["OriginalMessage"]

    # Blue/green update to model B under continuous traffic: no failed request.
    caller = _Caller(smr, name)
    caller.start()
    try:
        time.sleep(0.3)
        sm.update_endpoint(EndpointName=name, EndpointConfigName="ep-config-b")
        during = sm.describe_endpoint(EndpointName=name)
        assert during["EndpointStatus"] == "Updating"
        assert during["EndpointConfigName"] == "ep-config-a"
        assert during["PendingDeploymentSummary"]["EndpointConfigName"] == "ep-config-b"
        described = _endpoint_status(sm, name)
        assert described["EndpointStatus"] == "InService"
        assert described["EndpointConfigName"] == "ep-config-b"
        assert "FailureReason" not in described
        time.sleep(0.3)  # requests taken by the old fleet before the switch have finished
        served_before = len(caller.tags)

        # An update whose model cannot load rolls back: InService on the old config.
        sm.update_endpoint(EndpointName=name, EndpointConfigName="ep-config-broken")
        described = _endpoint_status(sm, name)
        assert described["EndpointStatus"] == "InService"
        assert described["EndpointConfigName"] == "ep-config-b"
        assert "did not pass the ping health check" in described["FailureReason"]
        assert "model file is corrupt" in described["FailureReason"]

        after_broken = len(caller.tags)

        # A rollback alarm in ALARM while baking rolls back, too (model A serves during the
        # bake, then traffic returns to B).
        cloudwatch = _client("cloudwatch", aws.url)
        cloudwatch.put_metric_alarm(
            AlarmName="churn-endpoint-errors",
            Namespace="AWS/SageMaker",
            MetricName="Invocation5XXErrors",
            Dimensions=[{"Name": "EndpointName", "Value": name}],
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
        )
        cloudwatch.set_alarm_state(
            AlarmName="churn-endpoint-errors", StateValue="ALARM", StateReason="test"
        )
        deployment = {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                "TerminationWaitInSeconds": 1,
                "MaximumExecutionTimeoutInSeconds": 600,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "churn-endpoint-errors"}]},
        }
        sm.update_endpoint(
            EndpointName=name, EndpointConfigName="ep-config-a", DeploymentConfig=deployment
        )
        described = _endpoint_status(sm, name)
        assert described["EndpointStatus"] == "InService"
        assert described["EndpointConfigName"] == "ep-config-b"
        assert "churn-endpoint-errors" in described["FailureReason"]
        assert described["LastDeploymentConfig"] == deployment

        # A fault armed for the config name rolls back as well.
        aws.runtime.faults.configure({"fail": {"ep-config-a": "injected deployment failure"}})
        try:
            sm.update_endpoint(EndpointName=name, EndpointConfigName="ep-config-a")
            described = _endpoint_status(sm, name)
        finally:
            aws.runtime.faults.clear()
        assert described["EndpointConfigName"] == "ep-config-b"
        assert described["FailureReason"] == "injected deployment failure"
        after_rollbacks = len(caller.tags)
        time.sleep(0.3)
    finally:
        caller.finish()
    assert caller.failures == []
    assert "A" in caller.tags[:served_before]
    assert set(caller.tags[served_before:after_broken]) == {"B"}
    assert set(caller.tags[after_rollbacks:]) == {"B"}

    # Weights and capacities (what autoscaling calls).
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}],
    )
    described = _endpoint_status(sm, name)
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert name in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]

    sm.delete_endpoint(EndpointName=name)
    with pytest.raises(ClientError) as excinfo:
        smr.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="0.1,0.2\n")
    assert _error(excinfo) == (
        "ValidationError",
        f"Endpoint {name} of account 123456789012 not found.",
    )
    with pytest.raises(ClientError) as excinfo:
        sm.describe_endpoint(EndpointName=name)
    assert _error(excinfo)[0] == "ValidationException"


def test_endpoint_with_unloadable_model_fails(sm: Any, models: dict[str, Any]) -> None:
    sm.create_model(ModelName="unloadable", PrimaryContainer=models["broken"]["container"])
    sm.create_endpoint_config(
        EndpointConfigName="unloadable",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "unloadable", "InitialInstanceCount": 1}
        ],
    )
    sm.create_endpoint(EndpointName="unloadable", EndpointConfigName="unloadable")
    described = _endpoint_status(sm, "unloadable")
    assert described["EndpointStatus"] == "Failed"
    assert "model file is corrupt" in described["FailureReason"]
    assert "ProductionVariants" not in described
    with pytest.raises(ClientError) as excinfo:
        sm.update_endpoint(EndpointName="unloadable", EndpointConfigName="unloadable")
    assert _error(excinfo)[0] == "ValidationException"
    sm.delete_endpoint(EndpointName="unloadable")
    assert "unloadable" not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]


def test_airflow_transform_and_endpoint_operators(
    aws: LocalAwsEndpoint, s3: Any, sm: Any, models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider operators the DAGs use: model + transform, endpoint create, then the
    operator's create-falls-back-to-update path."""
    from airflow.providers.amazon.aws.operators.sagemaker import (
        SageMakerEndpointOperator,
        SageMakerTransformOperator,
    )

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": aws.url, "region_name": REGION},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    s3.put_object(Bucket=BUCKET, Key="op/in/day.csv", Body="k1,0.1,0.2\nk2,0.9,0.9\n")
    result = SageMakerTransformOperator(
        task_id="transform",
        check_interval=1,
        config={
            "Model": {
                "ModelName": "op-model-a",
                "PrimaryContainer": models["A"]["container"],
                "ExecutionRoleArn": ROLE,
            },
            "Transform": {
                "TransformJobName": "op-transform",
                "ModelName": "op-model-a",
                "TransformInput": {
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": f"s3://{BUCKET}/op/in/",
                        }
                    },
                    "ContentType": "text/csv",
                    "SplitType": "Line",
                },
                "TransformOutput": {
                    "S3OutputPath": f"s3://{BUCKET}/op/out",
                    "Accept": "text/csv",
                    "AssembleWith": "Line",
                },
                "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
                "DataProcessing": {"InputFilter": "$[1:]", "JoinSource": "Input"},
            },
        },
    ).execute(context={})
    assert result["Transform"]["TransformJobStatus"] == "Completed"
    lines = _read(s3, "op/out/day.csv.out").splitlines()
    assert [line.split(",")[:3] for line in lines] == [["k1", "0.1", "0.2"], ["k2", "0.9", "0.9"]]

    def deploy(config_name: str, model_key: str) -> dict[str, Any]:
        return SageMakerEndpointOperator(
            task_id=f"deploy_{config_name}",
            check_interval=1,
            config={
                "Model": {
                    "ModelName": f"op-model-{config_name}",
                    "PrimaryContainer": models[model_key]["container"],
                    "ExecutionRoleArn": ROLE,
                },
                "EndpointConfig": {
                    "EndpointConfigName": config_name,
                    "ProductionVariants": [
                        {
                            "VariantName": "AllTraffic",
                            "ModelName": f"op-model-{config_name}",
                            "InitialInstanceCount": 1,
                            "InstanceType": "ml.m5.large",
                        }
                    ],
                },
                "Endpoint": {"EndpointName": "op-endpoint", "EndpointConfigName": config_name},
            },
        ).execute(context={})

    first = deploy("op-config-1", "A")
    assert first["Endpoint"]["EndpointStatus"] == "InService"
    second = deploy("op-config-2", "B")  # the endpoint exists: the operator updates it
    assert second["Endpoint"]["EndpointStatus"] == "InService"
    assert second["Endpoint"]["EndpointConfigName"] == "op-config-2"
    sm.delete_endpoint(EndpointName="op-endpoint")
