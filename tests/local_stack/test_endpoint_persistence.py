"""The local AWS endpoint keeps its state in its work folder across restarts and crashes.

The endpoint runs as ``python -m local_stack.aws_endpoint`` (what ``make ui``/``make demo``
start), is stopped with SIGTERM or killed with SIGKILL, and is started again on the same work
folder; real boto3 checks what survived. ``--clean`` starts empty.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "persisted-bucket"
ROLE = "arn:aws:iam::123456789012:role/local-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1"
GROUP = "persisted-group"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of binary, beyond moto's in-memory buffer size
SCRIPT = """
import os, pathlib
out = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"], "processing", "output")
out.mkdir(parents=True, exist_ok=True)
(out / "result.txt").write_text("done")
print("script ran")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoint:
    """``python -m local_stack.aws_endpoint`` on a work folder, as a child process."""

    def __init__(self, workdir: Path, log: Path) -> None:
        self.workdir = workdir
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> Endpoint:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "local_stack.aws_endpoint", "--port", str(self.port),
                 "--workdir", str(self.workdir), *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{self.url}/_local/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(self.log.read_text()[-3000:])

    def end(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def client(self, service: str):
        return boto3.client(
            service, endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id="local", aws_secret_access_key="local",
        )  # fmt: skip

    def control(self, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/_local/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    running = Endpoint(tmp_path / "work", tmp_path / "endpoint.log")
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.end(signal.SIGKILL)


def processing_request(name: str) -> dict:
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
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
        },
        "ProcessingInputs": [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": f"s3://{BUCKET}/code/script.py",
                    "LocalPath": "/opt/ml/processing/input/code",
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
                        "S3Uri": f"s3://{BUCKET}/out/{name}",
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
    }


def wait_terminal(sm, name: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_processing_job(ProcessingJobName=name)
        if job["ProcessingJobStatus"] not in ("InProgress", "Stopping"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def make_state(ep: Endpoint) -> dict:
    """A bucket with objects, a completed and a running processing job, a model package group
    with a version and tags; returns what should survive."""
    s3, sm = ep.client("s3"), ep.client("sagemaker")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/payload.bin", Body=PAYLOAD, Metadata={"kind": "test"})
    s3.put_object(Bucket=BUCKET, Key="code/script.py", Body=SCRIPT.encode())
    s3.put_object(Bucket=BUCKET, Key="gone.txt", Body=b"deleted before the restart")
    s3.delete_object(Bucket=BUCKET, Key="gone.txt")
    sm.create_processing_job(**processing_request("persisted-done"))
    done = wait_terminal(sm, "persisted-done")
    assert done["ProcessingJobStatus"] == "Completed", done
    ep.control("faults", {"delay": {"persisted-running": 600}})
    sm.create_processing_job(**processing_request("persisted-running"))
    sm.create_model_package_group(
        ModelPackageGroupName=GROUP, Tags=[{"Key": "team", "Value": "mlops"}]
    )
    version = sm.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus="PendingManualApproval",
        CustomerMetadataProperties={"run_date": "1996-02-29"},
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )["ModelPackageArn"]
    head = s3.head_object(Bucket=BUCKET, Key="data/payload.bin")
    return {
        "done": done,
        "version": version,
        "etag": head["ETag"],
        "modified": head["LastModified"],
    }


def assert_state_survived(ep: Endpoint, before: dict) -> None:
    s3, sm = ep.client("s3"), ep.client("sagemaker")
    body = s3.get_object(Bucket=BUCKET, Key="data/payload.bin")
    assert body["Body"].read() == PAYLOAD
    assert body["Metadata"] == {"kind": "test"}
    assert (body["ETag"], body["LastModified"]) == (before["etag"], before["modified"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "gone.txt" not in keys, keys
    assert "out/persisted-done/result.txt" in keys, keys
    output = s3.get_object(Bucket=BUCKET, Key="out/persisted-done/result.txt")["Body"].read()
    assert output == b"done"

    done = sm.describe_processing_job(ProcessingJobName="persisted-done")
    for key in ("ProcessingJobStatus", "ProcessingJobArn", "CreationTime", "ProcessingEndTime"):
        assert done[key] == before["done"][key]
    running = sm.describe_processing_job(ProcessingJobName="persisted-running")
    assert running["ProcessingJobStatus"] == "Failed"
    assert running["FailureReason"].startswith("InternalServerError: the local AWS endpoint")
    names = {j["ProcessingJobName"] for j in sm.list_processing_jobs()["ProcessingJobSummaries"]}
    assert names == {"persisted-done", "persisted-running"}
    with pytest.raises(ClientError, match="already exists"):
        sm.create_processing_job(**processing_request("persisted-done"))

    package = sm.describe_model_package(ModelPackageName=before["version"])
    assert package["ModelPackageVersion"] == 1
    assert package["CustomerMetadataProperties"] == {"run_date": "1996-02-29"}
    group_arn = sm.describe_model_package_group(ModelPackageGroupName=GROUP)["ModelPackageGroupArn"]
    assert sm.list_tags(ResourceArn=group_arn)["Tags"] == [{"Key": "team", "Value": "mlops"}]
    again = sm.create_model_package(
        ModelPackageGroupName=GROUP,
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )["ModelPackageArn"]
    assert again.endswith(f"/{GROUP}/2"), "the version counter restarted"
    streams = ep.client("logs").describe_log_streams(
        logGroupName="/aws/sagemaker/ProcessingJobs", logStreamNamePrefix="persisted-done/"
    )["logStreams"]
    assert streams, "the job's CloudWatch log stream was lost"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_state_survives_a_restart_and_clean_start_forgets_it(endpoint, sig) -> None:
    before = make_state(endpoint.start())
    time.sleep(1.2)  # CloudWatch Logs are saved within DEBOUNCE_SECONDS, not per request
    report = endpoint.control("state")
    assert report["persist"] and report["saves"]["s3"]["saves"] >= 4
    endpoint.end(sig)

    endpoint.start()
    assert_state_survived(endpoint, before)
    # The running job's failure is itself saved: a second restart keeps the same reason.
    reason = endpoint.client("sagemaker").describe_processing_job(
        ProcessingJobName="persisted-running"
    )["FailureReason"]
    endpoint.end(signal.SIGKILL)
    endpoint.start()
    sm = endpoint.client("sagemaker")
    assert (
        sm.describe_processing_job(ProcessingJobName="persisted-running")["FailureReason"] == reason
    )
    endpoint.end(signal.SIGTERM)

    endpoint.start("--clean")
    assert endpoint.client("s3").list_buckets()["Buckets"] == []
    with pytest.raises(ClientError, match="Requested resource not found"):
        endpoint.client("sagemaker").describe_processing_job(ProcessingJobName="persisted-done")
    assert (
        endpoint.client("sagemaker").list_model_package_groups()["ModelPackageGroupSummaryList"]
        == []
    )


def test_save_overhead_per_request_is_small(endpoint) -> None:
    """Each S3 write is saved before its answer; report what that costs with many objects."""
    ep = endpoint.start()
    s3 = ep.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.joblib")
        info.size = len(PAYLOAD)
        tar.addfile(info, io.BytesIO(PAYLOAD))
    for i in range(300):
        s3.put_object(Bucket=BUCKET, Key=f"many/{i:04d}", Body=archive.getvalue()[: 1000 + i])
    report = ep.control("state")["saves"]["s3"]
    print(f"S3 save per write with up to 300 objects: {report}")
    assert report["saves"] >= 300
    assert report["p95_ms"] < 100, report
