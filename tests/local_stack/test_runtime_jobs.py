"""Processing, training and tuning jobs of the local SageMaker runtime, through real boto3.

Every test talks to ``LocalAwsEndpoint`` over HTTP (no mocks); responses are checked against
botocore's ``sagemaker`` output shapes (required members, types, enums). The job scripts are
tiny ones written here, independent of ``include/step_code``.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator

ROLE = "arn:aws:iam::123456789012:role/local-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1"
AWS_REGION = "us-east-1"  # as in conftest.py's local_aws fixture
TEST_BUCKET = "local-stack-tests"
_MODEL = botocore.session.get_session().get_service_model("sagemaker")


# --- helpers --------------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _enum_errors(value: Any, shape: Any, path: str) -> list[str]:
    errors = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                errors += _enum_errors(item, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            errors += _enum_errors(item, shape.member, f"{path}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            errors += _enum_errors(item, shape.value, f"{path}[{key}]")
    elif shape.type_name == "string" and shape.enum and value not in shape.enum:
        errors.append(f"{path}={value!r} not in {shape.enum}")
    return errors


def assert_matches_model(operation: str, response: dict[str, Any]) -> None:
    """The parsed response satisfies the operation's output shape (required members, types,
    ranges and enums), i.e. it is what SageMaker could have answered."""
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    shape = _MODEL.operation_model(operation).output_shape
    report = ParamValidator().validate(body, shape)
    assert not report.has_errors(), report.generate_report()
    assert not _enum_errors(body, shape, operation)


def wait_for(describe: Callable[[], dict[str, Any]], key: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = describe()
        if answer[key] not in ("InProgress", "Stopping"):
            return answer
        assert time.monotonic() < deadline, f"still {answer[key]} after {timeout} s"
        time.sleep(0.1)


def put_text(s3, key: str, text: str) -> str:
    s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=text.encode())
    return f"s3://{TEST_BUCKET}/{key}"


def put_sourcedir(s3, key: str, files: dict[str, str]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{TEST_BUCKET}/{key}"


def read_s3(s3, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def control(local_aws, method: str, body: dict | None = None) -> dict:
    """``POST``/``DELETE /_local/faults`` as a user of the endpoint would."""
    request = urllib.request.Request(
        f"{local_aws.url}/_local/faults",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def processing_request(
    name: str,
    script_uri: str,
    inputs: list[tuple[str, str, str]] = (),
    outputs: list[tuple[str, str, str]] = (),
    arguments: list[str] = (),
    instance_count: int = 1,
    environment: dict[str, str] | None = None,
    distribution: str = "FullyReplicated",
) -> dict[str, Any]:
    """A CreateProcessingJob request; inputs/outputs are (name, S3 URI, local path)."""
    request = {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": instance_count,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 1,
            }
        },
        "AppSpecification": {
            "ImageUri": IMAGE,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
            **({"ContainerArguments": list(arguments)} if arguments else {}),
        },
        "ProcessingInputs": [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": script_uri,
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ]
        + [
            {
                "InputName": input_name,
                "S3Input": {
                    "S3Uri": uri,
                    "LocalPath": local,
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": distribution,
                },
            }
            for input_name, uri, local in inputs
        ],
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
        "Tags": [{"Key": "test", "Value": "runtime-jobs"}],
    }
    if outputs:
        request["ProcessingOutputConfig"] = {
            "Outputs": [
                {
                    "OutputName": output_name,
                    "S3Output": {"S3Uri": uri, "LocalPath": local, "S3UploadMode": "EndOfJob"},
                }
                for output_name, uri, local in outputs
            ]
        }
    if environment:
        request["Environment"] = environment
    return request


def run_processing(sm, request: dict[str, Any]) -> dict[str, Any]:
    created = sm.create_processing_job(**request)
    assert_matches_model("CreateProcessingJob", created)
    name = request["ProcessingJobName"]
    return wait_for(
        lambda: sm.describe_processing_job(ProcessingJobName=name), "ProcessingJobStatus"
    )


def stream_messages(logs, group: str, job: str) -> list[str]:
    streams = logs.describe_log_streams(
        logGroupName=group, logStreamNamePrefix=job + "/", orderBy="LogStreamName"
    )["logStreams"]
    messages = []
    for stream in streams:
        assert re.fullmatch(rf"{re.escape(job)}/algo-\d+-\d{{10}}", stream["logStreamName"])
        events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])
        messages += [e["message"] for e in events["events"]]
    return messages


@pytest.fixture(scope="module")
def sm(aws_client):
    return aws_client("sagemaker")


@pytest.fixture(scope="module")
def s3(aws_client):
    return aws_client("s3")


@pytest.fixture(scope="module")
def logs(aws_client):
    return aws_client("logs")


# --- processing -------------------------------------------------------------------------------------
TRANSFORM_SCRIPT = """
import json, os, sys
from pathlib import Path

rows_dir, lookup_dir, upper_dir, summary_dir = map(Path, sys.argv[1:5])
lookup = json.loads((lookup_dir / "lookup.json").read_text())
names = sorted(p.relative_to(rows_dir).as_posix() for p in rows_dir.rglob("*") if p.is_file())
for name in names:
    (upper_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (upper_dir / name).write_text((rows_dir / name).read_text().upper())
resource = json.loads(Path("/opt/ml/config/resourceconfig.json".replace(
    "/opt/ml", os.environ["SAGEMAKER_BASE_DIR"])).read_text())
summary = {
    "files": names,
    "lookup": lookup,
    "flavour": os.environ["FLAVOUR"],
    "env_dir_exists": Path(os.environ["EXTRA_DIR"]).is_dir(),
    "host": resource["current_host"],
}
(summary_dir / "nested").mkdir()
(summary_dir / "nested" / "summary.json").write_text(json.dumps(summary))
print("processed", len(names), "files")
"""


def test_processing_job_with_two_inputs_and_two_outputs(sm, s3, logs) -> None:
    name = unique("proc-two")
    script = put_text(s3, f"{name}/code/script.py", TRANSFORM_SCRIPT)
    put_text(s3, f"{name}/rows/a.csv", "a,b\n1,2\n")
    put_text(s3, f"{name}/rows/sub/b.csv", "c,d\n")
    lookup = put_text(s3, f"{name}/lookup/lookup.json", json.dumps({"k": "v"}))
    out = f"s3://{TEST_BUCKET}/{name}/out"
    request = processing_request(
        name,
        script,
        inputs=[
            ("rows", f"s3://{TEST_BUCKET}/{name}/rows", "/opt/ml/processing/input/rows"),
            ("lookup", lookup, "/opt/ml/processing/input/lookup"),
        ],
        outputs=[
            ("upper", f"{out}/upper", "/opt/ml/processing/upper"),
            ("summary", f"{out}/summary/", "/opt/ml/processing/summary"),
        ],
        arguments=[
            "/opt/ml/processing/input/rows",
            "/opt/ml/processing/input/lookup",
            "/opt/ml/processing/upper",
            "/opt/ml/processing/summary",
        ],
        environment={"FLAVOUR": "vanilla", "EXTRA_DIR": "/opt/ml/processing/input/rows/sub"},
    )
    described = run_processing(sm, request)

    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    assert_matches_model("DescribeProcessingJob", described)
    assert described["CreationTime"] <= described["ProcessingStartTime"]
    assert described["ProcessingStartTime"] <= described["ProcessingEndTime"]
    assert described["ProcessingInputs"][1]["S3Input"]["S3DataDistributionType"] == (
        "FullyReplicated"
    )
    # S3Prefix keeps the key below the prefix: sub/b.csv stays in its folder.
    assert read_s3(s3, f"{out}/upper/a.csv") == b"A,B\n1,2\n"
    assert read_s3(s3, f"{out}/upper/sub/b.csv") == b"C,D\n"
    summary = json.loads(read_s3(s3, f"{out}/summary/nested/summary.json"))
    assert summary == {
        "files": ["a.csv", "sub/b.csv"],
        "lookup": {"k": "v"},
        "flavour": "vanilla",
        "env_dir_exists": True,
        "host": "algo-1",
    }
    assert "processed 2 files" in stream_messages(logs, "/aws/sagemaker/ProcessingJobs", name)

    listed = sm.list_processing_jobs(NameContains=name.upper(), StatusEquals="Completed")
    assert_matches_model("ListProcessingJobs", listed)
    assert [j["ProcessingJobName"] for j in listed["ProcessingJobSummaries"]] == [name]
    tags = sm.list_tags(ResourceArn=described["ProcessingJobArn"])["Tags"]
    assert tags == [{"Key": "test", "Value": "runtime-jobs"}]


SHARD_SCRIPT = """
import json, os, sys
from pathlib import Path

base = Path(os.environ["SAGEMAKER_BASE_DIR"])
host = json.loads((base / "config" / "resourceconfig.json").read_text())["current_host"]
seen = {
    "sharded": sorted(p.name for p in Path(sys.argv[1]).iterdir()),
    "replicated": sorted(p.name for p in Path(sys.argv[2]).iterdir()),
    "hosts": json.loads((base / "config" / "resourceconfig.json").read_text())["hosts"],
}
out = Path(sys.argv[3])
(out / f"{host}.json").write_text(json.dumps(seen))
if len(sys.argv) > 4:
    (out / "same-name.txt").write_text(host)
"""


def test_sharded_by_s3_key_gives_each_instance_a_disjoint_share(sm, s3) -> None:
    name = unique("proc-shard")
    script = put_text(s3, f"{name}/code/script.py", SHARD_SCRIPT)
    for i in range(7):
        put_text(s3, f"{name}/parts/part-{i}.csv", f"{i}\n")
    for i in range(2):
        put_text(s3, f"{name}/shared/ref-{i}.csv", f"{i}\n")
    out = f"s3://{TEST_BUCKET}/{name}/out"
    request = processing_request(
        name,
        script,
        inputs=[("parts", f"s3://{TEST_BUCKET}/{name}/parts", "/opt/ml/processing/parts")],
        outputs=[("seen", out, "/opt/ml/processing/seen")],
        arguments=[
            "/opt/ml/processing/parts",
            "/opt/ml/processing/shared",
            "/opt/ml/processing/seen",
        ],
        instance_count=2,
        distribution="ShardedByS3Key",
    )
    request["ProcessingInputs"].append(
        {
            "InputName": "shared",
            "S3Input": {
                "S3Uri": f"s3://{TEST_BUCKET}/{name}/shared",
                "LocalPath": "/opt/ml/processing/shared",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
            },
        }
    )
    described = run_processing(sm, request)
    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")

    seen = {h: json.loads(read_s3(s3, f"{out}/{h}.json")) for h in ("algo-1", "algo-2")}
    first, second = set(seen["algo-1"]["sharded"]), set(seen["algo-2"]["sharded"])
    assert first and second and not first & second
    assert first | second == {f"part-{i}.csv" for i in range(7)}
    assert all(s["replicated"] == ["ref-0.csv", "ref-1.csv"] for s in seen.values())
    assert all(s["hosts"] == ["algo-1", "algo-2"] for s in seen.values())

    # Two instances writing one file name with different content: no silent overwrite.
    clash = unique("proc-clash")
    request = {**request, "ProcessingJobName": clash}
    request["AppSpecification"] = {
        **request["AppSpecification"],
        "ContainerArguments": [*request["AppSpecification"]["ContainerArguments"], "clash"],
    }
    request["ProcessingOutputConfig"] = {
        "Outputs": [
            {
                "OutputName": "seen",
                "S3Output": {
                    "S3Uri": f"s3://{TEST_BUCKET}/{clash}/out",
                    "LocalPath": "/opt/ml/processing/seen",
                    "S3UploadMode": "EndOfJob",
                },
            }
        ]
    }
    described = run_processing(sm, request)
    assert described["ProcessingJobStatus"] == "Failed"
    assert "same-name.txt" in described["FailureReason"]
    assert "algo-1 and algo-2" in described["FailureReason"]


def test_manifest_file_input_downloads_the_listed_objects(sm, s3) -> None:
    name = unique("proc-manifest")
    script = put_text(
        s3,
        f"{name}/code/script.py",
        """
import sys
from pathlib import Path
files = sorted(p.relative_to(sys.argv[1]).as_posix() for p in Path(sys.argv[1]).rglob("*")
               if p.is_file())
Path(sys.argv[2], "files.txt").write_text(",".join(files))
""",
    )
    for key in ("a.csv", "dir/b.csv", "not-listed.csv"):
        put_text(s3, f"{name}/pool/{key}", key)
    manifest = put_text(
        s3,
        f"{name}/manifest.json",
        json.dumps([{"prefix": f"s3://{TEST_BUCKET}/{name}/pool/"}, "a.csv", "dir/b.csv"]),
    )
    request = processing_request(
        name,
        script,
        inputs=[("listed", manifest, "/opt/ml/processing/listed")],
        outputs=[("files", f"s3://{TEST_BUCKET}/{name}/out", "/opt/ml/processing/files")],
        arguments=["/opt/ml/processing/listed", "/opt/ml/processing/files"],
    )
    request["ProcessingInputs"][1]["S3Input"]["S3DataType"] = "ManifestFile"
    described = run_processing(sm, request)
    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    assert read_s3(s3, f"s3://{TEST_BUCKET}/{name}/out/files.txt") == b"a.csv,dir/b.csv"


def test_failing_processing_script_reports_its_message_or_stderr(sm, s3) -> None:
    with_file = unique("proc-fail-file")
    script = put_text(
        s3,
        f"{with_file}/code/script.py",
        """
import os, sys
from pathlib import Path
out = Path(os.environ["SAGEMAKER_BASE_DIR"]) / "output"
out.mkdir(parents=True, exist_ok=True)
(out / "message").write_text("column amount is missing")
print("validation failed", file=sys.stderr)
sys.exit(1)
""",
    )
    described = run_processing(sm, processing_request(with_file, script))
    assert_matches_model("DescribeProcessingJob", described)
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == "AlgorithmError: column amount is missing"
    assert described["ExitMessage"] == "column amount is missing"

    crashing = unique("proc-fail-crash")
    script = put_text(
        s3,
        f"{crashing}/code/script.py",
        "print('working')\nraise RuntimeError('boom: the input is empty')\n",
    )
    described = run_processing(sm, processing_request(crashing, script))
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"].startswith("AlgorithmError: ExitCode 1")
    assert described["FailureReason"].endswith("RuntimeError: boom: the input is empty")
    failed = sm.list_processing_jobs(NameContains=crashing, StatusEquals="Failed")
    assert failed["ProcessingJobSummaries"][0]["FailureReason"] == described["FailureReason"]


def test_create_validation_duplicates_and_unknown_names(sm, s3) -> None:
    name = unique("proc-dup")
    script = put_text(s3, f"{name}/code/script.py", "print('hi')\n")
    request = processing_request(name, script)
    run_processing(sm, request)
    with pytest.raises(ClientError) as duplicate:
        sm.create_processing_job(**request)
    assert duplicate.value.response["Error"]["Code"] == "ResourceInUse"
    assert "already exists" in duplicate.value.response["Error"]["Message"]
    assert name in duplicate.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as missing:
        sm.describe_processing_job(ProcessingJobName=unique("never-created"))
    assert missing.value.response["Error"]["Code"] == "ValidationException"
    assert missing.value.response["Error"]["Message"] == "Requested resource not found."

    with pytest.raises(ClientError) as too_long:
        sm.create_processing_job(**{**request, "ProcessingJobName": "x" * 64})
    assert too_long.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as bad_path:
        bad = processing_request(unique("proc-bad"), script)
        bad["ProcessingInputs"][0]["S3Input"]["LocalPath"] = "/tmp/code"
        sm.create_processing_job(**bad)
    assert "/opt/ml/processing/" in bad_path.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as stopped_twice:
        sm.stop_processing_job(ProcessingJobName=name)
    assert "Completed" in stopped_twice.value.response["Error"]["Message"]


def test_stop_processing_job(sm, s3) -> None:
    name = unique("proc-stop")
    script = put_text(
        s3, f"{name}/code/script.py", "import time\nprint('x', flush=True)\ntime.sleep(60)\n"
    )
    sm.create_processing_job(**processing_request(name, script))
    deadline = time.monotonic() + 30
    while "ProcessingStartTime" not in sm.describe_processing_job(ProcessingJobName=name):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    sm.stop_processing_job(ProcessingJobName=name)
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] in (
        "Stopping",
        "Stopped",
    )
    described = wait_for(
        lambda: sm.describe_processing_job(ProcessingJobName=name), "ProcessingJobStatus", 20
    )
    assert described["ProcessingJobStatus"] == "Stopped"


# --- training -----------------------------------------------------------------------------------------
TRAIN_SCRIPT = """
import argparse, json, os, sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, required=True)
parser.add_argument("--kernel", required=True)
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
model_dir = Path(os.environ["SM_MODEL_DIR"])
(model_dir / "args.json").write_text(json.dumps({"argv": sys.argv[1:], "env": os.environ["MY_SETTING"]}))
(model_dir / "weights").mkdir()
(model_dir / "weights" / "w.txt").write_text(str(args.alpha * 2))
channel = Path(os.environ["SM_CHANNEL_TRAIN"])
print("train files:", sorted(p.name for p in channel.iterdir()))
(Path(os.environ["SM_OUTPUT_DATA_DIR"]) / "extra.txt").write_text("diagnostics")
print("train:loss=0.9;")
print("train:loss=0.25;")
print(f"validation:auc={args.alpha / 10};")
"""
METRICS = [
    {"Name": "validation:auc", "Regex": r"validation:auc=([0-9.]+);"},
    {"Name": "train:loss", "Regex": r"train:loss=([0-9.]+);"},
    {"Name": "never:printed", "Regex": r"never=([0-9.]+)"},
]


def training_request(name: str, sourcedir: str, train_uri: str, **hyperparameters: str) -> dict:
    return {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRICS,
        },
        "HyperParameters": {
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(sourcedir),
            "sagemaker_region": json.dumps(AWS_REGION),
            **hyperparameters,
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": train_uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "text/csv",
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{TEST_BUCKET}/{name}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
        "Environment": {"MY_SETTING": "from-environment"},
    }


@pytest.fixture(scope="module")
def trained(sm, s3) -> dict[str, Any]:
    """One completed training job (shared by the training and the provider tests)."""
    name = unique("train-ok")
    sourcedir = put_sourcedir(s3, f"{name}/code/sourcedir.tar.gz", {"train.py": TRAIN_SCRIPT})
    put_text(s3, f"{name}/data/train/part-0.csv", "1,2\n")
    put_text(s3, f"{name}/data/train/part-1.csv", "3,4\n")
    request = training_request(
        name, sourcedir, f"s3://{TEST_BUCKET}/{name}/data/train", alpha="7", kernel='"rbf"'
    )
    created = sm.create_training_job(**request)
    assert_matches_model("CreateTrainingJob", created)
    return wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus")


def test_training_job_runs_the_script_like_the_sklearn_container(trained, sm, s3, logs) -> None:
    name = trained["TrainingJobName"]
    assert trained["TrainingJobStatus"] == "Completed", trained.get("FailureReason")
    assert_matches_model("DescribeTrainingJob", trained)
    assert trained["SecondaryStatus"] == "Completed"
    statuses = [t["Status"] for t in trained["SecondaryStatusTransitions"]]
    assert statuses == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert trained["CreationTime"] <= trained["TrainingStartTime"] <= trained["TrainingEndTime"]
    assert trained["BillableTimeInSeconds"] >= 1

    artifacts = trained["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifacts == f"s3://{TEST_BUCKET}/{name}/output/{name}/output/model.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(read_s3(s3, artifacts))) as tar:
        assert sorted(tar.getnames()) == ["args.json", "weights", "weights/w.txt"]
        saved = json.loads(tar.extractfile("args.json").read())
        assert tar.extractfile("weights/w.txt").read() == b"14.0"
    # Hyperparameters arrive as --name value (JSON-decoded by the toolkit), sagemaker_* not.
    argv = saved["argv"]
    assert argv[argv.index("--alpha") + 1] == "7" and argv[argv.index("--kernel") + 1] == "rbf"
    assert not any(a.startswith("--sagemaker") for a in argv)
    assert saved["env"] == "from-environment"
    output = read_s3(s3, artifacts.replace("model.tar.gz", "output.tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(output)) as tar:
        assert tar.extractfile("extra.txt").read() == b"diagnostics"

    metrics = {m["MetricName"]: m for m in trained["FinalMetricDataList"]}
    assert set(metrics) == {"validation:auc", "train:loss"}
    assert metrics["validation:auc"]["Value"] == pytest.approx(0.7)
    assert metrics["train:loss"]["Value"] == pytest.approx(0.25)  # the last value counts
    assert trained["TrainingStartTime"] <= metrics["validation:auc"]["Timestamp"]

    messages = stream_messages(logs, "/aws/sagemaker/TrainingJobs", name)
    assert "train files: ['part-0.csv', 'part-1.csv']" in messages
    listed = sm.list_training_jobs(NameContains=name, SortBy="Name", SortOrder="Ascending")
    assert_matches_model("ListTrainingJobs", listed)
    assert listed["TrainingJobSummaries"][0]["TrainingJobStatus"] == "Completed"


def test_training_failure_reason_and_max_runtime(sm, s3) -> None:
    failing = unique("train-fail")
    sourcedir = put_sourcedir(
        s3,
        f"{failing}/code/sourcedir.tar.gz",
        {"train.py": "import sys\nraise ValueError('label column has one class only')\n"},
    )
    data = put_text(s3, f"{failing}/data/x.csv", "1\n")
    slow = unique("train-slow")
    slow_dir = put_sourcedir(
        s3,
        f"{slow}/code/sourcedir.tar.gz",
        {"train.py": "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"},
    )
    request = training_request(slow, slow_dir, data)
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 3}
    sm.create_training_job(**request)
    sm.create_training_job(**training_request(failing, sourcedir, data))

    failed = wait_for(
        lambda: sm.describe_training_job(TrainingJobName=failing), "TrainingJobStatus"
    )
    assert failed["TrainingJobStatus"] == "Failed"
    assert failed["FailureReason"].startswith("AlgorithmError: ExecuteUserScriptError")
    assert "ValueError: label column has one class only" in failed["FailureReason"]
    assert failed["SecondaryStatus"] == "Failed"

    stopped = wait_for(lambda: sm.describe_training_job(TrainingJobName=slow), "TrainingJobStatus")
    assert stopped["TrainingJobStatus"] == "Stopped"
    assert stopped["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert_matches_model("DescribeTrainingJob", stopped)
    assert (stopped["TrainingEndTime"] - stopped["TrainingStartTime"]).total_seconds() < 15


def test_stop_training_job(sm, s3) -> None:
    name = unique("train-stop")
    sourcedir = put_sourcedir(
        s3, f"{name}/code/sourcedir.tar.gz", {"train.py": "import time\ntime.sleep(60)\n"}
    )
    sm.create_training_job(
        **training_request(name, sourcedir, put_text(s3, f"{name}/d/x.csv", "1\n"))
    )
    deadline = time.monotonic() + 30
    while sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sm.stop_training_job(TrainingJobName=name)
    described = wait_for(
        lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus"
    )
    assert described["TrainingJobStatus"] == "Stopped"
    statuses = [t["Status"] for t in described["SecondaryStatusTransitions"]]
    assert statuses[:3] == ["Starting", "Downloading", "Training"]
    assert statuses[3:] == ["Stopping", "Uploading", "Stopped"]


# --- hyperparameter tuning ----------------------------------------------------------------------
TUNE_SCRIPT = """
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--trees", type=int)
parser.add_argument("--rate", type=float)
parser.add_argument("--criterion")
parser.add_argument("--fixed")
args = parser.parse_args()
assert args.fixed == "static-value", args.fixed
score = args.trees / 10 + args.rate + {"gini": 0.0, "entropy": 0.5, "log_loss": 0.25}[args.criterion]
print(f"validation:score={score};")
"""


def expected_score(hps: dict[str, str]) -> float:
    bonus = {"gini": 0.0, "entropy": 0.5, "log_loss": 0.25}[hps["criterion"]]
    return int(hps["trees"]) / 10 + float(hps["rate"]) + bonus


def tuning_request(name: str, sourcedir: str, data: str, strategy: str, objective: str) -> dict:
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": objective, "MetricName": "score"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {
                "IntegerParameterRanges": [{"Name": "trees", "MinValue": "1", "MaxValue": "20"}],
                "ContinuousParameterRanges": [
                    {
                        "Name": "rate",
                        "MinValue": "0.001",
                        "MaxValue": "0.5",
                        "ScalingType": "Logarithmic",
                    }
                ],
                "CategoricalParameterRanges": [
                    {"Name": "criterion", "Values": ["gini", "entropy", "log_loss"]}
                ],
            },
            "RandomSeed": 7,
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {
                "sagemaker_program": json.dumps("train.py"),
                "sagemaker_submit_directory": json.dumps(sourcedir),
                "fixed": "static-value",
            },
            "AlgorithmSpecification": {
                "TrainingImage": IMAGE,
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": "score", "Regex": r"validation:score=([0-9.]+);"}],
            },
            "RoleArn": ROLE,
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data}},
                }
            ],
            "OutputDataConfig": {"S3OutputPath": f"s3://{TEST_BUCKET}/{name}/output"},
            "ResourceConfig": {
                "InstanceType": "ml.m5.large",
                "InstanceCount": 1,
                "VolumeSizeInGB": 1,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": 120},
        },
        "Tags": [{"Key": "purpose", "Value": "tuning-test"}],
    }


@pytest.fixture(scope="module")
def tuning_code(s3) -> tuple[str, str]:
    prefix = unique("tuning-code")
    sourcedir = put_sourcedir(s3, f"{prefix}/sourcedir.tar.gz", {"train.py": TUNE_SCRIPT})
    return sourcedir, put_text(s3, f"{prefix}/data/x.csv", "1\n")


@pytest.mark.parametrize(
    ("strategy", "objective"), [("Random", "Maximize"), ("Bayesian", "Minimize")]
)
def test_tuning_finds_the_best_training_job(sm, tuning_code, strategy, objective) -> None:
    name = unique(f"hpo-{strategy[:3].lower()}")
    request = tuning_request(name, *tuning_code, strategy, objective)
    created = sm.create_hyper_parameter_tuning_job(**request)
    assert_matches_model("CreateHyperParameterTuningJob", created)
    first = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert_matches_model("DescribeHyperParameterTuningJob", first)
    described = wait_for(
        lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
        "HyperParameterTuningJobStatus",
    )
    assert described["HyperParameterTuningJobStatus"] == "Completed", described.get("FailureReason")
    assert_matches_model("DescribeHyperParameterTuningJob", described)
    assert described["TrainingJobStatusCounters"]["Completed"] == 4
    assert described["ObjectiveStatusCounters"] == {"Succeeded": 4, "Pending": 0, "Failed": 0}
    assert described["HyperParameterTuningEndTime"] >= described["CreationTime"]

    listed = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue", SortOrder="Descending"
    )
    assert_matches_model("ListTrainingJobsForHyperParameterTuningJob", listed)
    summaries = listed["TrainingJobSummaries"]
    assert len(summaries) == 4
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries]
    assert values == sorted(values, reverse=True)
    configs = [s["TunedHyperParameters"] for s in summaries]
    assert len({tuple(sorted(c.items())) for c in configs}) == 4, "configurations must differ"
    for summary in summaries:
        hps = summary["TunedHyperParameters"]
        assert re.fullmatch(rf"{name}-\d{{3}}-[0-9a-f]{{8}}", summary["TrainingJobName"])
        assert 1 <= int(hps["trees"]) <= 20 and 0.001 <= float(hps["rate"]) <= 0.5
        assert hps["criterion"] in ("gini", "entropy", "log_loss")
        assert summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(
            expected_score(hps)
        )
    pick = max if objective == "Maximize" else min
    truly_best = pick(summaries, key=lambda s: expected_score(s["TunedHyperParameters"]))
    best = described["BestTrainingJob"]
    assert best["TrainingJobName"] == truly_best["TrainingJobName"]
    assert best["TunedHyperParameters"] == truly_best["TunedHyperParameters"]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"] == {
        "Type": objective,
        "MetricName": "score",
        "Value": pytest.approx(expected_score(best["TunedHyperParameters"])),
    }

    child = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    assert child["TuningJobArn"] == described["HyperParameterTuningJobArn"]
    assert child["HyperParameters"]["fixed"] == "static-value"
    assert child["HyperParameters"]["_tuning_objective_metric"] == "score"
    assert {"Key": "purpose", "Value": "tuning-test"} in sm.list_tags(
        ResourceArn=child["TrainingJobArn"]
    )["Tags"]
    by_name = sm.list_hyper_parameter_tuning_jobs(NameContains=name)
    assert_matches_model("ListHyperParameterTuningJobs", by_name)
    assert by_name["HyperParameterTuningJobSummaries"][0]["Strategy"] == strategy


def test_tuning_validation_and_all_failing_jobs(sm, s3, tuning_code) -> None:
    sourcedir, data = tuning_code
    wrong_metric = tuning_request(unique("hpo-bad"), sourcedir, data, "Random", "Maximize")
    wrong_metric["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"][
        "MetricName"
    ] = "accuracy"
    with pytest.raises(ClientError) as error:
        sm.create_hyper_parameter_tuning_job(**wrong_metric)
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "accuracy" in error.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as too_long:
        sm.create_hyper_parameter_tuning_job(
            **tuning_request("h" * 33, sourcedir, data, "Random", "Maximize")
        )
    assert too_long.value.response["Error"]["Code"] == "ValidationException"

    name = unique("hpo-fail")
    broken = put_sourcedir(
        s3,
        f"{name}/sourcedir.tar.gz",
        {"train.py": "raise SystemExit('no usable rows in the train channel')\n"},
    )
    request = tuning_request(name, broken, data, "Random", "Maximize")
    request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] = 2
    sm.create_hyper_parameter_tuning_job(**request)
    with pytest.raises(ClientError) as duplicate:
        sm.create_hyper_parameter_tuning_job(**request)
    assert duplicate.value.response["Error"]["Code"] == "ResourceInUse"
    described = wait_for(
        lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
        "HyperParameterTuningJobStatus",
    )
    assert described["HyperParameterTuningJobStatus"] == "Failed"
    assert "BestTrainingJob" not in described
    assert described["TrainingJobStatusCounters"]["NonRetryableError"] == 2
    first = sorted(
        sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
            "TrainingJobSummaries"
        ],
        key=lambda s: s["CreationTime"],
    )[0]
    assert first["TrainingJobName"] in described["FailureReason"]
    assert "no usable rows in the train channel" in described["FailureReason"]


# --- fault injection --------------------------------------------------------------------------------
def test_injected_failure_and_delay(local_aws, sm, s3, logs) -> None:
    name = unique("proc-fault")
    slow = unique("proc-delay")
    script = put_text(s3, f"{name}/code/script.py", "print('ran')\n")
    try:
        armed = control(
            local_aws,
            "POST",
            {"fail": {"proc-fault-*": "CapacityError: injected"}, "delay": {slow: 1}},
        )
        assert armed["fail"] == {"proc-fault-*": "CapacityError: injected"}
        described = run_processing(sm, processing_request(name, script))
        delayed = run_processing(sm, processing_request(slow, script))
    finally:
        assert control(local_aws, "DELETE") == {"fail": {}, "throttle": {}, "delay": {}}
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == "CapacityError: injected"
    assert "ProcessingStartTime" not in described  # failed without running
    assert delayed["ProcessingJobStatus"] == "Completed"
    assert (delayed["ProcessingStartTime"] - delayed["CreationTime"]).total_seconds() >= 1


def test_throttling_is_retried_by_boto3_and_unknown_actions_are_named(
    local_aws, aws_client
) -> None:
    patient = aws_client("sagemaker", retries={"mode": "standard", "max_attempts": 5})
    impatient = aws_client("sagemaker", retries={"total_max_attempts": 1})
    try:
        control(local_aws, "POST", {"throttle": {"ListProcessingJobs": 2}})
        assert "ProcessingJobSummaries" in patient.list_processing_jobs()
        assert local_aws.runtime.faults.throttles["ListProcessingJobs"] == 0
        control(local_aws, "POST", {"throttle": {"*": 1}})
        with pytest.raises(ClientError) as throttled:
            impatient.list_training_jobs()
        assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    finally:
        control(local_aws, "DELETE")
    with pytest.raises(ClientError) as unknown:
        impatient.list_labeling_jobs()
    assert unknown.value.response["Error"]["Code"] == "UnknownOperationException"
    assert "ListLabelingJobs" in unknown.value.response["Error"]["Message"]


# --- through the Airflow provider ---------------------------------------------------------------------


def test_airflow_processing_operator_completes_and_raises_on_failure(
    airflow_aws_connection, s3
) -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator

    name = unique("af-proc")
    script = put_text(
        s3,
        f"{name}/code/script.py",
        "import sys, pathlib\npathlib.Path(sys.argv[1], 'done.txt').write_text('ok')\n",
    )
    out = f"s3://{TEST_BUCKET}/{name}/out"
    request = processing_request(
        name,
        script,
        outputs=[("result", out, "/opt/ml/processing/result")],
        arguments=["/opt/ml/processing/result"],
    )
    operator = SageMakerProcessingOperator(
        task_id="process", config=request, wait_for_completion=True, check_interval=1
    )
    result = operator.execute(context={})
    assert result["Processing"]["ProcessingJobStatus"] == "Completed"
    assert read_s3(s3, f"{out}/done.txt") == b"ok"

    failing = unique("af-proc-fail")
    bad_script = put_text(
        s3, f"{failing}/code/script.py", "raise SystemExit('the extract for 1996-02-29 is empty')\n"
    )
    operator = SageMakerProcessingOperator(
        task_id="process_fail",
        config=processing_request(failing, bad_script),
        wait_for_completion=True,
        check_interval=1,
    )
    with pytest.raises(Exception, match="the extract for 1996-02-29 is empty"):
        operator.execute(context={})


def test_airflow_hook_tails_training_logs(airflow_aws_connection, trained) -> None:
    """The provider's log tailing (``print_log=True``) finds and prints the job's stream."""
    from airflow.providers.amazon.aws.hooks.sagemaker import LogState, SageMakerHook

    printed: list[str] = []

    class Capture:
        def info(self, message: str, *args: Any, **kwargs: Any) -> None:
            printed.append(str(message) % args if args else str(message))

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args, **kwargs: None

    hook = SageMakerHook(aws_conn_id="aws_default")
    hook._log = Capture()  # Airflow's structlog logger does not reach pytest's caplog
    state, _description, _ = hook.describe_training_job_with_log(
        trained["TrainingJobName"], {}, [], 1, LogState.JOB_COMPLETE, trained, time.monotonic()
    )
    assert state == LogState.COMPLETE
    assert "validation:auc=0.7;" in printed
    assert "train files: ['part-0.csv', 'part-1.csv']" in printed
