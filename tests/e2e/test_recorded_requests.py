"""What the operators ACTUALLY send to SageMaker during DAG runs, checked against every rule.

The training DAG runs (``airflow dags test``) against the local stack with every config option
switched on (VPC subnets + security groups, both KMS keys, network isolation, inter-container
traffic encryption, tags) for the first, a leap and the last date of the TPC-H range. The local
SageMaker runtime records each call at its endpoint (``GET /_local/sagemaker/calls``); every
recorded request is then run through the same validator the runtime uses, so what is checked is
what went over the wire, not what our builders returned. CI time is kept down with a tuning job
of two training jobs and a low quality gate (the gate is not what is tested here).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml
from e2e_support import free_port

from local_stack.sagemaker_runtime import validation
from local_stack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "mlops_tpch_orders_training"
FAST = {"sagemaker_check_interval_seconds": 1}
RUN_DATES = ["1993-01-01", "1996-02-29", "1998-08-02"]
BATCH_DAG_ID = "mlops_tpch_orders_batch_inference"
BATCH_DATE = "1998-08-01"
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VOLUME_KEY = "arn:aws:kms:us-east-1:123456789012:key/abcd1234-ab12-cd34-ef56-abcdef123456"
SUBNETS = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
SECURITY_GROUPS = ["sg-0123456789abcdef0"]


def all_options_include(tmp_path: Path) -> dict[str, str]:
    """An include/ copy whose config switches every SageMaker option on, with a small tuning."""
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include", include)
    path = include / "config" / "tpch_orders.yaml"
    config = yaml.safe_load(path.read_text())
    config["sagemaker"]["network"] = {
        "enable_network_isolation": True,
        "enable_inter_container_traffic_encryption": True,
        "vpc": {"subnets": SUBNETS, "security_group_ids": SECURITY_GROUPS},
        "kms_key_id": KMS_KEY,
        "volume_kms_key_id": VOLUME_KEY,
    }
    config["sagemaker"]["tags"] = {**config["sagemaker"]["tags"], "cost-center": "ml-1234"}
    config["training"]["tuning"]["max_jobs"] = 2
    config["training"]["tuning"]["max_parallel_jobs"] = 2
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return {"MLOPS_INCLUDE_DIR": str(include)}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The calls recorded during one DAG run per date, and each run's outcome."""
    home = Path(tmp_path_factory.mktemp("stack"))
    env = all_options_include(Path(tmp_path_factory.mktemp("include")))
    runs = {}
    with LocalStack(presto_port=free_port(), aws_port=free_port(), home=home) as stack:
        stack.migrate_db()
        for ds in RUN_DATES:
            conf = json.dumps({**FAST, "evaluation_threshold": 0.5})
            result = stack.airflow(
                "dags", "test", DAG_ID, ds, "--conf", conf, check=False, extra_env=env
            )
            runs[ds] = (result.returncode, result.stdout + result.stderr)
        # Batch scoring with every option on too: the isolated model serves the repacked
        # artifact (its code inside), the transform writes with the KMS keys.
        result = stack.airflow(
            "dags", "test", BATCH_DAG_ID, BATCH_DATE, "--conf", json.dumps(FAST),
            check=False, extra_env=env,
        )  # fmt: skip
        runs[f"batch {BATCH_DATE}"] = (result.returncode, result.stdout + result.stderr)
        with urllib.request.urlopen(f"{stack.aws_url}/_local/sagemaker/calls") as answer:
            calls = json.load(answer)
        sm = stack.client("sagemaker")
        training = [
            sm.describe_training_job(TrainingJobName=job["TrainingJobName"])
            for job in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
        ]
    return {"runs": runs, "calls": calls, "training_jobs": training}


def test_every_run_with_all_options_on_registers_a_version_and_scores(recorded) -> None:
    for ds, (code, log) in recorded["runs"].items():
        assert code == 0, f"{ds}: {log[-5000:]}"
    created = [c for c in recorded["calls"] if c["Action"] == "CreateModelPackage"]
    assert len(created) == len(RUN_DATES)
    assert all("ErrorCode" not in c for c in created)


def test_every_recorded_request_satisfies_every_rule(recorded) -> None:
    calls = recorded["calls"]
    actions = {c["Action"] for c in calls}
    assert {
        "CreateProcessingJob",
        "CreateHyperParameterTuningJob",
        "CreateModelPackageGroup",
        "CreateModelPackage",
    } <= actions
    broken = []
    for call in calls:
        found = validation.violations(call["Action"], call["Request"])
        if found:
            broken.append(f"{call['Action']}: {validation.report(found)}")
    assert broken == []
    # Refusals do happen (the provider's name check describes a job before creating it and
    # gets "Requested resource not found"), but none for breaking a rule of the model.
    refused = [c.get("ErrorMessage", "") for c in calls if "ErrorCode" in c]
    assert not [m for m in refused if re.match(r"\d+ validation errors? detected", m)], refused


def test_the_requests_carry_every_option(recorded) -> None:
    calls = recorded["calls"]
    by_action: dict[str, list[dict]] = {}
    for call in calls:
        by_action.setdefault(call["Action"], []).append(call["Request"])
    for request in by_action["CreateProcessingJob"]:
        network = request["NetworkConfig"]
        assert (
            network["EnableNetworkIsolation"] and network["EnableInterContainerTrafficEncryption"]
        )
        assert network["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
        assert request["ProcessingOutputConfig"]["KmsKeyId"] == KMS_KEY
        assert request["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == VOLUME_KEY
        assert {"Key": "cost-center", "Value": "ml-1234"} in request["Tags"]
    (tuning, *_) = by_action["CreateHyperParameterTuningJob"]
    definition = tuning["TrainingJobDefinition"]
    assert definition["EnableNetworkIsolation"] is True
    assert definition["EnableInterContainerTrafficEncryption"] is True
    assert definition["OutputDataConfig"]["KmsKeyId"] == KMS_KEY
    assert definition["ResourceConfig"]["VolumeKmsKeyId"] == VOLUME_KEY
    assert definition["VpcConfig"]["Subnets"] == SUBNETS
    # Tags go on the group, never on a versioned package (botocore's docs of CreateModelPackage).
    assert all("Tags" not in r for r in by_action["CreateModelPackage"])
    (group, *_) = by_action["CreateModelPackageGroup"]
    tagged = [g for g in by_action["CreateModelPackageGroup"] if g.get("Tags")]
    assert tagged, group
    assert {"Key": "cost-center", "Value": "ml-1234"} in tagged[0]["Tags"]
    dates = {r["CustomerMetadataProperties"]["run_date"] for r in by_action["CreateModelPackage"]}
    assert dates == set(RUN_DATES)
    for request in by_action["CreateModelPackage"]:  # isolated: the code is in the artifact
        (container,) = request["InferenceSpecification"]["Containers"]
        assert "/model-with-code-" in container["ModelDataUrl"]
        assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    (model,) = by_action["CreateModel"]
    assert model["EnableNetworkIsolation"] is True
    assert model["VpcConfig"] == {"Subnets": SUBNETS, "SecurityGroupIds": SECURITY_GROUPS}
    (transform,) = by_action["CreateTransformJob"]
    assert transform["TransformOutput"]["KmsKeyId"] == KMS_KEY
    assert transform["TransformResources"]["VolumeKmsKeyId"] == VOLUME_KEY
    assert {"Key": "cost-center", "Value": "ml-1234"} in transform["Tags"]


def test_isolated_training_jobs_got_their_code_through_the_code_channel(recorded) -> None:
    """With isolation the local runtime gives a job no endpoint, credentials or network: the runs
    above only registered versions because the code arrived as the ``code`` input channel."""
    training = recorded["training_jobs"]
    assert len(training) == 2 * len(RUN_DATES)
    for described in training:
        assert described["TrainingJobStatus"] == "Completed"
        assert described["EnableNetworkIsolation"] is True
        channels = {c["ChannelName"]: c for c in described["InputDataConfig"]}
        assert set(channels) == {"train", "validation", "code"}
        code_uri = channels["code"]["DataSource"]["S3DataSource"]["S3Uri"]
        assert code_uri.endswith("/sourcedir.tar.gz")
        assert json.loads(described["HyperParameters"]["sagemaker_submit_directory"]) == (
            "/opt/ml/input/data/code/sourcedir.tar.gz"
        )
