"""Autoscaling, CloudWatch metrics, data capture and AWS's scaled-variant rule of the local
endpoints, driven with real boto3 clients against ``LocalAwsEndpoint(port=0)`` whose service
clocks run 50 times faster (``time_scale=0.02``: a CloudWatch minute is 1.2 s).

The models are the tiny LogisticRegressions of ``test_runtime_serving``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_runtime_serving import (
    BUCKET,
    IMAGE,
    INFERENCE_PY,
    ROLE,
    _client,
    _joblib_bytes,
    _tar,
    _trained,
)

from local_stack.aws_endpoint.server import LocalAwsEndpoint
from local_stack.sagemaker_runtime import _serving
from local_stack.sagemaker_runtime.autoscaling import Policy, desired_capacity

TIME_SCALE = 0.02
MINUTE = 60 * TIME_SCALE
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAwsEndpoint]:
    endpoint = LocalAwsEndpoint(
        port=0, workdir=tmp_path_factory.mktemp("scaling"), time_scale=TIME_SCALE
    ).start()
    s3 = _client("s3", endpoint.url)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(
        Bucket=BUCKET,
        Key="models/a/model.tar.gz",
        Body=_tar(
            {
                "model.joblib": _joblib_bytes(_trained(1)),
                "tag.txt": b"A",
                "code/inference.py": INFERENCE_PY.encode(),
            }
        ),
    )
    sm = _client("sagemaker", endpoint.url)
    sm.create_model(
        ModelName="scaling-model",
        PrimaryContainer={
            "Image": IMAGE,
            "ModelDataUrl": f"s3://{BUCKET}/models/a/model.tar.gz",
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            },
        },
        ExecutionRoleArn=ROLE,
    )
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def sm(aws: LocalAwsEndpoint) -> Any:
    return _client("sagemaker", aws.url)


@pytest.fixture(scope="module")
def smr(aws: LocalAwsEndpoint) -> Any:
    return _client("sagemaker-runtime", aws.url)


def _deploy(sm: Any, name: str, instance_type: str = "ml.m5.large", **config: Any) -> None:
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-{instance_type.replace('.', '-')}",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "scaling-model",
                "InitialInstanceCount": 1,
                "InstanceType": instance_type,
            }
        ],
        **config,
    )
    if not sm.list_endpoints(NameContains=name)["Endpoints"]:
        sm.create_endpoint(
            EndpointName=name, EndpointConfigName=f"{name}-{instance_type.replace('.', '-')}"
        )
        _in_service(sm, name)


def _in_service(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sm.describe_endpoint(EndpointName=name)
        if described["EndpointStatus"] not in ("Creating", "Updating", "SystemUpdating"):
            assert described["EndpointStatus"] == "InService", described
            return described
        time.sleep(0.1)
    raise AssertionError(f"{name} not InService after {timeout} s")


def _count(sm: Any, name: str) -> int:
    return sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]


class _Load(threading.Thread):
    """Invokes an endpoint until stopped, or ``limit`` requests, or ``seconds`` pass."""

    def __init__(self, smr: Any, name: str, limit: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.smr, self.name, self.limit, self.seconds = smr, name, limit, seconds
        self.stop_event = threading.Event()
        self.done = 0
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop_event.is_set() and self.done < self.limit:
            if time.monotonic() > deadline:
                return
            try:
                self.smr.invoke_endpoint(
                    EndpointName=self.name, ContentType="text/csv", Body=b"0.9,0.8\n"
                )["Body"].read()
            except Exception as err:
                self.failures.append(repr(err))
            self.done += 1

    def finish(self) -> None:
        self.stop_event.set()
        self.join(30)


def _wait_for_count(sm: Any, name: str, count: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _count(sm, name) == count:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{name} did not reach {count} instances in {timeout} s")


def _register(name: str, url: str, target: float, low: int = 1, high: int = 3) -> Any:
    scaling = _client("application-autoscaling", url)
    resource = f"endpoint/{name}/variant/AllTraffic"
    scaling.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        MinCapacity=low,
        MaxCapacity=high,
    )
    scaling.put_scaling_policy(
        PolicyName=f"{name}-invocations",
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": target,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
            "ScaleOutCooldown": 60,
            "ScaleInCooldown": 60,
        },
    )
    return scaling


def _statistic(aws: LocalAwsEndpoint, name: str, metric: str, statistic: str) -> float:
    answer = _client("cloudwatch", aws.url).get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName=metric,
        Dimensions=[
            {"Name": "EndpointName", "Value": name},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(minutes=5),
        Period=3600,
        Statistics=[statistic],
    )
    return sum(point[statistic] for point in answer["Datapoints"])


def test_target_tracking_scales_out_to_max_under_load_then_in_to_min(
    aws: LocalAwsEndpoint, sm: Any, smr: Any
) -> None:
    name = "scaling-load"
    _deploy(sm, name)
    _register(name, aws.url, target=20.0)
    loads = [_Load(smr, name, limit=20_000, seconds=90) for _ in range(3)]
    for load in loads:
        load.start()
    try:
        scaled_out = _wait_for_count(sm, name, 3, timeout=60)
        record = aws.runtime.store("Endpoint")[name]
        processes = len(record["_active"].variants[0].servers)
    finally:
        for load in loads:
            load.finish()
    assert processes == min(3, _serving.cpu_bound())
    scaled_in = _wait_for_count(sm, name, 1, timeout=90)
    assert [f for load in loads for f in load.failures] == []
    # Scale-in waits for 15 quiet one-minute datapoints; scale-out needs only 3.
    assert scaled_in >= 15 * MINUTE * 0.9, (scaled_out, scaled_in)
    assert len(aws.runtime.store("Endpoint")[name]["_active"].variants[0].servers) == 1
    time.sleep(2 * MINUTE)  # the last period is published
    requests = sum(load.done for load in loads)
    assert _statistic(aws, name, "Invocations", "Sum") == requests
    assert 0 < _statistic(aws, name, "InvocationsPerInstance", "Sum") < requests
    assert _statistic(aws, name, "ModelLatency", "SampleCount") == requests
    assert _statistic(aws, name, "Invocation5XXErrors", "Sum") == 0


def test_model_errors_are_counted_by_the_status_the_model_answered(
    aws: LocalAwsEndpoint, sm: Any, smr: Any
) -> None:
    """A handler exception is the toolkit's 500: a ``ModelError`` for the caller, counted in
    ``Invocation5XXErrors`` as SageMaker counts a model's 5xx; still an invocation."""
    name = "scaling-errors"
    _deploy(sm, name)
    for _ in range(3):
        with pytest.raises(ClientError) as excinfo:
            smr.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=b"x,y\n")
        assert excinfo.value.response["Error"]["Code"] == "ModelError"
        assert excinfo.value.response["OriginalStatusCode"] == 500
    smr.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=b"0.1,0.2\n")
    time.sleep(2 * MINUTE)
    assert _statistic(aws, name, "Invocation5XXErrors", "Sum") == 3
    assert _statistic(aws, name, "Invocation4XXErrors", "Sum") == 0
    assert _statistic(aws, name, "Invocations", "Sum") == 4


def test_update_changing_the_instance_type_of_a_scaled_variant_is_refused(
    aws: LocalAwsEndpoint, sm: Any, smr: Any
) -> None:
    name = "scaling-resize"
    _deploy(sm, name)
    _deploy(sm, name, instance_type="ml.c5.xlarge")
    scaling = _register(name, aws.url, target=1000.0)
    with pytest.raises(ClientError) as excinfo:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-ml-c5-xlarge")
    error = excinfo.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "AllTraffic" in error["Message"] and "DeregisterScalableTarget" in error["Message"]
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == f"{name}-ml-m5-large"
    scaling.deregister_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=f"endpoint/{name}/variant/AllTraffic",
        ScalableDimension=DIMENSION,
    )
    load = _Load(smr, name, limit=100_000, seconds=120)
    load.start()
    try:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-ml-c5-xlarge")
        described = _in_service(sm, name)
    finally:
        load.finish()
    assert described["EndpointConfigName"] == f"{name}-ml-c5-xlarge"
    assert load.done > 0 and load.failures == []


def test_data_capture_writes_sagemaker_json_lines(aws: LocalAwsEndpoint, sm: Any, smr: Any) -> None:
    name = "scaling-capture"
    _deploy(
        sm,
        name,
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        },
    )
    answers = [
        smr.invoke_endpoint(
            EndpointName=name,
            ContentType="text/csv",
            Accept="application/json",
            Body=f"0.{i},0.5\n".encode(),
            InferenceId=f"req-{i}",
        )["Body"].read()
        for i in range(5)
    ]
    s3 = _client("s3", aws.url)
    deadline = time.monotonic() + 30
    keys: list[str] = []
    while not keys and time.monotonic() < deadline:
        time.sleep(MINUTE / 2)
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"capture/{name}/AllTraffic/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
    assert keys, "no capture file was written"
    when = r"\d{4}/\d\d/\d\d/\d\d/\d\d-\d\d-\d{3}"
    pattern = rf"capture/{name}/AllTraffic/{when}-[0-9a-f-]{{36}}\.jsonl"
    assert all(re.fullmatch(pattern, key) for key in keys), keys
    events = [
        json.loads(line)
        for key in keys
        for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
    ]
    events.sort(key=lambda e: e["eventMetadata"]["inferenceId"])
    assert [e["eventMetadata"]["inferenceId"] for e in events] == [f"req-{i}" for i in range(5)]
    first = events[0]
    assert first["eventVersion"] == "0"
    assert first["captureData"]["endpointInput"] == {
        "observedContentType": "text/csv",
        "mode": "INPUT",
        "data": "0.0,0.5\n",
        "encoding": "CSV",
    }
    output = first["captureData"]["endpointOutput"]
    assert output["mode"] == "OUTPUT" and output["encoding"] == "BASE64"  # JSON not listed
    assert base64.b64decode(output["data"]) == answers[0]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["eventMetadata"]["inferenceTime"]
    )


@pytest.mark.parametrize(
    ("current", "datapoints", "wanted"),
    [
        (1, [50.0, 50.0, 50.0], 3),  # 1 * 50 / 20 -> 3 (capped at max 3)
        (1, [30.0, 30.0, 30.0], 2),
        (1, [50.0, 50.0], 1),  # only 2 datapoints above: not yet
        (2, [50.0, 10.0, 50.0], 2),  # one datapoint below: no scale-out
        (3, [0.0] * 15, 1),
        (3, [0.0] * 14, 3),  # 14 quiet datapoints are not enough
        (3, [19.0] * 15, 3),  # below the target but above 90 % of it
        (2, [5.0] * 15, 1),
        (5, [], 3),  # above the max: brought inside the range at once
    ],
)
def test_target_tracking_rule(current: int, datapoints: list[float], wanted: int) -> None:
    policy = Policy("e", "v", 1, 3, 20.0, 60.0, 60.0, True, True)
    assert desired_capacity(policy, current, datapoints) == wanted
