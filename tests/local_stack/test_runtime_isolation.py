"""Network isolation in the local SageMaker runtime, driven through real boto3.

On SageMaker an isolated container "can't make any outbound network calls, even to other AWS
services such as Amazon S3" and gets no AWS credentials
(https://docs.aws.amazon.com/sagemaker/latest/dg/mkt-algo-model-internet-free.html). The
scripts here probe S3 from inside the job and report what they observed; the same job without
isolation is the control. The code of an isolated training job reaches it only through an
input channel: a ``sagemaker_submit_directory`` on S3 fails, as it would on SageMaker.
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from local_stack.sagemaker_runtime import isolation

ROLE = "arn:aws:iam::123456789012:role/local-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1"
BUCKET = "local-stack-tests"  # created by conftest.py's local_aws fixture
CODE_CHANNEL_SOURCEDIR = "/opt/ml/input/data/code/sourcedir.tar.gz"

# Tries S3 twice: with whatever the environment offers (endpoint, credentials, config files,
# instance metadata), and with the endpoint and credentials hard-coded. Writes what happened.
PROBE = """
import argparse, json, os, sys
from pathlib import Path
import boto3
from botocore.config import Config

parser = argparse.ArgumentParser()
parser.add_argument("--bucket")
parser.add_argument("--key")
parser.add_argument("--endpoint")
parser.add_argument("--out")
args, _ = parser.parse_known_args()

def probe(**kwargs):
    try:
        client = boto3.client("s3", **kwargs)
        body = client.get_object(Bucket=args.bucket, Key=args.key)["Body"].read()
        return {"read": body.decode()}
    except Exception as err:
        return {"error": type(err).__name__, "message": str(err)[:300]}

hard_coded = dict(
    endpoint_url=args.endpoint, aws_access_key_id="local", aws_secret_access_key="local",
    region_name="us-east-1", config=Config(connect_timeout=3, retries={"max_attempts": 1}),
)
result = {
    "environment": probe(config=Config(connect_timeout=3, retries={"max_attempts": 1})),
    "hard_coded": probe(**hard_coded),
    "aws_variables": sorted(k for k in os.environ if k.startswith("AWS_") or "ENDPOINT" in k),
}
print("probe:", json.dumps(result), flush=True)
out = Path(args.out or os.environ.get("SM_MODEL_DIR", "."))
(out / "probe.json").write_text(json.dumps(result))
"""


# --- helpers --------------------------------------------------------------------------------------
def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _wait(describe: Callable[[], dict[str, Any]], key: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while (answer := describe())[key] in ("InProgress", "Stopping"):
        assert time.monotonic() < deadline, f"still {answer[key]} after {timeout} s"
        time.sleep(0.1)
    return answer


def _put(s3, key: str, body: bytes) -> str:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def _sourcedir(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_tar_member(s3, uri: str, member: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read()


def _channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "CompressionType": "None",
    }


def _training(
    name: str, submit: str, channels: list[dict[str, Any]], isolated: bool, **hps: str
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": {
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(submit),
            **{k: json.dumps(v) for k, v in hps.items()},
        },
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/{name}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
        "EnableNetworkIsolation": isolated,
    }
    if channels:  # at least one channel when given at all (botocore: min length 1)
        request["InputDataConfig"] = channels
    return request


def _train(sm, request: dict[str, Any]) -> dict[str, Any]:
    sm.create_training_job(**request)
    name = request["TrainingJobName"]
    return _wait(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus")


@pytest.fixture(scope="module")
def sm(aws_client):
    return aws_client("sagemaker")


@pytest.fixture(scope="module")
def s3(aws_client):
    return aws_client("s3")


@pytest.fixture(scope="module")
def secret(s3) -> tuple[str, str]:
    """An object the probes try to read: (key, content)."""
    key = f"{_unique('isolation')}/secret.txt"
    _put(s3, key, b"the data")
    return key, "the data"


def _probe_training(sm, s3, local_aws, secret, isolated: bool) -> dict[str, Any]:
    """Run the probe as an SDK-style isolated job would: code through the ``code`` channel."""
    name = _unique("iso-train" if isolated else "open-train")
    code = _put(s3, f"{name}/code/sourcedir.tar.gz", _sourcedir({"train.py": PROBE}))
    request = _training(
        name,
        CODE_CHANNEL_SOURCEDIR,
        [_channel("code", code)],
        isolated,
        bucket=BUCKET,
        key=secret[0],
        endpoint=local_aws.url,
    )
    described = _train(sm, request)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert described["EnableNetworkIsolation"] is isolated
    artifacts = described["ModelArtifacts"]["S3ModelArtifacts"]
    return json.loads(_read_tar_member(s3, artifacts, "probe.json"))


# --- (a) an isolated script cannot reach S3; the same job without isolation can -------------------
def test_isolated_training_script_cannot_reach_s3(sm, s3, local_aws, secret) -> None:
    probe = _probe_training(sm, s3, local_aws, secret, isolated=True)
    assert probe["environment"]["error"] == "NoCredentialsError", probe
    assert "Unable to locate credentials" in probe["environment"]["message"]
    assert "AWS_ACCESS_KEY_ID" not in probe["aws_variables"]
    assert "AWS_ENDPOINT_URL" not in probe["aws_variables"]
    assert "S3_ENDPOINT_URL" not in probe["aws_variables"]
    if isolation.network_namespace_available():
        # Even with the endpoint and credentials hard-coded: no network at all.
        assert probe["hard_coded"]["error"] == "EndpointConnectionError", probe
    else:
        pytest.skip("no network namespaces on this machine: only the environment is isolated")


def test_the_same_training_job_without_isolation_reaches_s3(sm, s3, local_aws, secret) -> None:
    probe = _probe_training(sm, s3, local_aws, secret, isolated=False)
    assert probe["environment"] == {"read": secret[1]}, probe
    assert probe["hard_coded"] == {"read": secret[1]}, probe
    assert "AWS_ENDPOINT_URL" in probe["aws_variables"]


def _processing(name: str, script: str, arguments: list[str], isolated: bool) -> dict[str, Any]:
    local = "/opt/ml/processing"
    return {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 1,
            }
        },
        "AppSpecification": {
            "ImageUri": IMAGE,
            "ContainerEntrypoint": ["python3", f"{local}/input/code/probe.py"],
            "ContainerArguments": [*arguments, "--out", f"{local}/out"],
        },
        "ProcessingInputs": [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": script,
                    "LocalPath": f"{local}/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "out",
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/{name}/out",
                        "LocalPath": f"{local}/out",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
        "NetworkConfig": {"EnableNetworkIsolation": isolated},
    }


def test_isolated_processing_script_cannot_reach_s3(sm, s3, local_aws, secret) -> None:
    results = {}
    arguments = ["--bucket", BUCKET, "--key", secret[0], "--endpoint", local_aws.url]
    for isolated in (True, False):
        name = _unique("iso-proc" if isolated else "open-proc")
        script = _put(s3, f"{name}/code/probe.py", PROBE.encode())
        sm.create_processing_job(**_processing(name, script, arguments, isolated))
        described = _wait(
            lambda n=name: sm.describe_processing_job(ProcessingJobName=n), "ProcessingJobStatus"
        )
        assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
        body = s3.get_object(Bucket=BUCKET, Key=f"{name}/out/probe.json")["Body"].read()
        results[isolated] = json.loads(body)
    assert results[True]["environment"]["error"] == "NoCredentialsError", results[True]
    assert results[False]["environment"] == {"read": secret[1]}, results[False]
    if isolation.network_namespace_available():
        assert results[True]["hard_coded"]["error"] == "EndpointConnectionError", results[True]
        assert results[False]["hard_coded"] == {"read": secret[1]}, results[False]


# --- (b) the code of an isolated job: S3 submit directory fails, the code channel works -----------
TRAIN = """
import os
from pathlib import Path
Path(os.environ["SM_MODEL_DIR"], "trained.txt").write_text("ok")
print("trained")
"""


def _log_text(logs, job: str) -> str:
    group = "/aws/sagemaker/TrainingJobs"
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=job + "/")
    return "\n".join(
        event["message"]
        for stream in streams["logStreams"]
        for event in logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])[
            "events"
        ]
    )


def test_isolated_training_cannot_download_an_s3_submit_directory(sm, s3, aws_client) -> None:
    """The toolkit itself tries the download (``files.s3_download``) and finds no credentials;
    SageMaker reports the toolkit's traceback, cut to the FailureReason's 1024 characters."""
    name = _unique("iso-s3code")
    code = _put(s3, f"{name}/code/sourcedir.tar.gz", _sourcedir({"train.py": TRAIN}))
    described = _train(sm, _training(name, code, [], isolated=True))
    assert described["TrainingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("AlgorithmError: Framework Error:"), reason
    assert "in s3_download" in reason, reason
    log_text = _log_text(aws_client("logs"), name)
    assert "botocore.exceptions.NoCredentialsError: Unable to locate credentials" in log_text
    assert "trained" not in log_text.splitlines()  # the script never ran


def test_isolated_training_gets_its_code_through_the_code_channel(sm, s3) -> None:
    name = _unique("iso-chancode")
    code = _put(s3, f"{name}/code/sourcedir.tar.gz", _sourcedir({"train.py": TRAIN}))
    request = _training(name, CODE_CHANNEL_SOURCEDIR, [_channel("code", code)], isolated=True)
    described = _train(sm, request)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    artifacts = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert _read_tar_member(s3, artifacts, "trained.txt") == b"ok"


def test_the_same_s3_submit_directory_works_without_isolation(sm, s3) -> None:
    name = _unique("open-s3code")
    code = _put(s3, f"{name}/code/sourcedir.tar.gz", _sourcedir({"train.py": TRAIN}))
    described = _train(sm, _training(name, code, [], isolated=False))
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")


def test_isolated_environment_keeps_nothing_that_reaches_aws() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "t",
        "AWS_PROFILE": "p",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4566",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.2/creds",
        "S3_ENDPOINT_URL": "http://127.0.0.1:4566",
        "BOTO_CONFIG": "/root/.boto",
        "HTTPS_PROXY": "http://proxy:3128",
        "http_proxy": "http://proxy:3128",
        "AWS_REGION": "us-east-1",
        "SM_MODEL_DIR": "/opt/ml/model",
    }
    assert isolation.isolated_env(env) == {
        "AWS_REGION": "us-east-1",
        "SM_MODEL_DIR": "/opt/ml/model",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# --- models: an isolated serving container cannot download SAGEMAKER_SUBMIT_DIRECTORY ------------
def test_isolated_model_with_s3_code_fails_the_transform_job(sm, s3) -> None:
    """The SDK repacks an isolated model's code into ``model.tar.gz`` (``code/``) and sets
    ``SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code``; an ``s3://`` one cannot be fetched."""
    name = _unique("iso-model")
    model_data = _put(s3, f"{name}/model.tar.gz", _sourcedir({"model.txt": "m"}))
    code = _put(s3, f"{name}/code/sourcedir.tar.gz", _sourcedir({"inference.py": TRAIN}))
    _put(s3, f"{name}/input/rows.csv", b"1,2\n")
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": IMAGE,
            "ModelDataUrl": model_data,
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": code,
            },
        },
        EnableNetworkIsolation=True,
    )
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=name,
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/{name}/input"}
            },
            "ContentType": "text/csv",
        },
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/{name}/output"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )
    described = _wait(
        lambda: sm.describe_transform_job(TransformJobName=name), "TransformJobStatus"
    )
    assert described["TransformJobStatus"] == "Failed"
    assert (
        "cannot be downloaded by a model with EnableNetworkIsolation"
        in (described["FailureReason"])
    )
