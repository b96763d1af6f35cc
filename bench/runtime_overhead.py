"""Benchmark: wall-clock overhead of the local SageMaker runtime around a job's script.

Usage: ``.venv/bin/python bench/runtime_overhead.py [--jobs 10]``. Starts the local AWS endpoint
in-process, then runs trivial processing and training jobs one after another through boto3.
The scripts record ``time.time()`` when they start and finish; the client notes when it sent
Create* and polls Describe* every 10 ms. Reported per job kind (median / p90 / max, seconds):

* submitted -> script started: Create* sent -> first line of the user script ran;
* script finished -> Completed: last line of the script ran -> Describe* first says Completed;
* also the runtime's own server-side figures from ``GET /_local/timings``.

For training, "script started" is the user's ``train.py``, so it includes the
``sagemaker-training`` toolkit's own start-up (about a second of imports), as on SageMaker.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from local_stack.aws_endpoint import LocalAwsEndpoint

BUCKET = "bench"
ROLE = "arn:aws:iam::123456789012:role/bench"
IMAGE = "local/sklearn:bench"
SCRIPT = """
import json, os, sys, time
started = time.time()
out = sys.argv[1] if len(sys.argv) > 1 else os.environ["SM_MODEL_DIR"]
os.makedirs(out, exist_ok=True)
finished = time.time()
with open(os.path.join(out, "times.json"), "w") as f:
    json.dump({"started": started, "finished": finished}, f)
"""


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):6.3f}  p90 {p90:6.3f}  max {ordered[-1]:6.3f}"


def _wait(describe, key: str) -> float:
    while True:
        status = describe()[key]
        if status in ("Completed", "Failed", "Stopped"):
            if status != "Completed":
                raise RuntimeError(f"benchmark job ended {status}")
            return time.time()
        time.sleep(0.01)


def _times_from_tar(s3, key: str) -> dict:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return json.load(tar.extractfile("times.json"))


def main() -> None:
    """Run the jobs and print the overhead table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalAwsEndpoint(port=0, workdir=Path(tmp)) as ep:
        session = dict(
            endpoint_url=ep.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3, sm = boto3.client("s3", **session), boto3.client("sagemaker", **session)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="code/script.py", Body=SCRIPT.encode())
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            info = tarfile.TarInfo("train.py")
            info.size = len(SCRIPT)
            tar.addfile(info, io.BytesIO(SCRIPT.encode()))
        s3.put_object(Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=packed.getvalue())
        s3.put_object(Bucket=BUCKET, Key="data/x.csv", Body=b"1\n")

        rows: dict[str, tuple[list[float], list[float]]] = {
            "processing": ([], []),
            "training": ([], []),
        }
        for i in range(args.jobs):
            name = f"bench-proc-{i}"
            submitted = time.time()
            sm.create_processing_job(
                ProcessingJobName=name,
                RoleArn=ROLE,
                AppSpecification={
                    "ImageUri": IMAGE,
                    "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
                    "ContainerArguments": ["/opt/ml/processing/output"],
                },
                ProcessingInputs=[
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
                ProcessingOutputConfig={
                    "Outputs": [
                        {
                            "OutputName": "out",
                            "S3Output": {
                                "S3Uri": f"s3://{BUCKET}/out/{name}/",
                                "LocalPath": "/opt/ml/processing/output",
                                "S3UploadMode": "EndOfJob",
                            },
                        }
                    ]
                },
                ProcessingResources={
                    "ClusterConfig": {
                        "InstanceCount": 1,
                        "InstanceType": "ml.m5.large",
                        "VolumeSizeInGB": 1,
                    }
                },
            )
            done = _wait(
                lambda n=name: sm.describe_processing_job(ProcessingJobName=n),
                "ProcessingJobStatus",
            )
            times = json.loads(
                s3.get_object(Bucket=BUCKET, Key=f"out/{name}/times.json")["Body"].read()
            )
            rows["processing"][0].append(times["started"] - submitted)
            rows["processing"][1].append(done - times["finished"])

        for i in range(args.jobs):
            name = f"bench-train-{i}"
            submitted = time.time()
            sm.create_training_job(
                TrainingJobName=name,
                RoleArn=ROLE,
                AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
                HyperParameters={
                    "sagemaker_program": json.dumps("train.py"),
                    "sagemaker_submit_directory": json.dumps(
                        f"s3://{BUCKET}/code/sourcedir.tar.gz"
                    ),
                },
                InputDataConfig=[
                    {
                        "ChannelName": "train",
                        "DataSource": {
                            "S3DataSource": {
                                "S3DataType": "S3Prefix",
                                "S3Uri": f"s3://{BUCKET}/data/",
                            }
                        },
                    }
                ],
                OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/models/"},
                ResourceConfig={
                    "InstanceType": "ml.m5.large",
                    "InstanceCount": 1,
                    "VolumeSizeInGB": 1,
                },
                StoppingCondition={"MaxRuntimeInSeconds": 600},
            )
            done = _wait(
                lambda n=name: sm.describe_training_job(TrainingJobName=n), "TrainingJobStatus"
            )
            times = _times_from_tar(s3, f"models/{name}/output/model.tar.gz")
            rows["training"][0].append(times["started"] - submitted)
            rows["training"][1].append(done - times["finished"])

        with urllib.request.urlopen(f"{ep.url}/_local/timings") as response:
            server = json.loads(response.read())

    print(f"local SageMaker runtime overhead, {args.jobs} jobs of each kind, seconds")
    for kind, (start, finish) in rows.items():
        print(f"{kind:10} submitted -> script started:    {_stats(start)}")
        print(f"{kind:10} script finished -> Completed:   {_stats(finish)}")
    for kind in ("processing", "training"):
        own = [r for r in server if r["Kind"].lower().startswith(kind[:5])]
        started = [r["SubmittedToScriptStarted"] for r in own if "SubmittedToScriptStarted" in r]
        ended = [r["ScriptFinishedToTerminal"] for r in own if "ScriptFinishedToTerminal" in r]
        if started and ended:
            print(f"{kind:10} server side: start {_stats(started)} | end {_stats(ended)}")


if __name__ == "__main__":
    main()
