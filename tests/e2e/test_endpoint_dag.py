"""The real endpoint DAG, run by ``airflow dags test`` against the local stack.

One training run registers a real model version; the versions the deployment cases need are
re-registrations of its artifact (a retrain's result without another tuning job), a broken
artifact (a model that cannot load) and a tampered evaluation (a smoke-test mismatch). Tests
build on the endpoint the earlier ones leave behind, in file order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_support import (
    ENDPOINT_POLICIES,
    ROOT,
    dags_test,
    include_copy,
    policies_and_calls,
    recorded_calls,
    rendered_policies,
    reregister,
    rest,
    task_states,
    versions,
    wait_for,
)

from local_stack.stack import LocalStack

TRAIN = "mlops_tpch_orders_training"
ENDPOINT = "mlops_tpch_orders_endpoint"
TEARDOWN = "mlops_tpch_orders_endpoint_teardown"
GROUP = "tpch-orders-late-delivery"
STAGING, PRODUCTION = "tpch-ord-staging", "tpch-ord-production"
SHIPPED = (ROOT / "include/config/tpch_orders.yaml").read_text()
SECTION = SHIPPED[SHIPPED.index("\nendpoint:\n") :]

FAST = """
endpoint:
  poll_interval_seconds: 1
  retries: 0
  stages:
    - name: staging
      autoscaling: {min_instances: 1, max_instances: 2, target_invocations_per_instance: 100}
      deployment: {type: CANARY, size_percent: 50, wait_interval_seconds: %(bake)s,
                   termination_wait_seconds: 1, max_execution_timeout_seconds: 600}
%(more)s
  alarms: {period_seconds: 10}
  smoke_test: {rows: 10}
  keep_unused: 1
"""
PRODUCTION_STAGE = """    - name: production
      requires_approval: true
      deployment: {type: ALL_AT_ONCE, wait_interval_seconds: 1, termination_wait_seconds: 1}
"""


def env(tmp_path: Path, *, bake: int = 1, production: bool = False) -> dict[str, str]:
    section = FAST % {"bake": bake, "more": PRODUCTION_STAGE if production else ""}
    return include_copy(tmp_path, {SECTION: section})


@pytest.fixture(scope="module")
def trained(stack: LocalStack) -> str:
    """Version 1: what the real training DAG registers, approved by a person (boto3)."""
    code, log = dags_test(stack, TRAIN, "1996-02-29", {"sagemaker_check_interval_seconds": 1})
    assert code == 0, log[-3000:]
    (arn,) = [v["ModelPackageArn"] for v in versions(stack, GROUP)]
    approve(stack, arn)
    return arn


def approve(stack: LocalStack, arn: str) -> None:
    stack.client("sagemaker").update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus="Approved", ApprovalDescription="by the test"
    )


def endpoint(stack: LocalStack, name: str = STAGING) -> dict | None:
    sm = stack.client("sagemaker")
    try:
        return sm.describe_endpoint(EndpointName=name)
    except sm.exceptions.ClientError:
        return None


def serves(stack: LocalStack, name: str = STAGING) -> str:
    return endpoint(stack, name)["EndpointConfigName"]


def model_of(stack: LocalStack, config_name: str) -> str:
    described = stack.client("sagemaker").describe_endpoint_config(EndpointConfigName=config_name)
    return described["ProductionVariants"][0]["ModelName"]


def package_of_model(stack: LocalStack, model_name: str) -> str:
    described = stack.client("sagemaker").describe_model(ModelName=model_name)
    return described["PrimaryContainer"]["ModelPackageName"]


def counts(stack: LocalStack) -> dict[str, int]:
    sm = stack.client("sagemaker")
    return {
        "models": len(sm.list_models(MaxResults=100)["Models"]),
        "configs": len(sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]),
    }


def predict(stack: LocalStack, row: list[float], name: str = STAGING) -> float:
    answer = stack.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=name, ContentType="text/csv", Accept="text/csv",
        Body=",".join(map(repr, row)) + "\n",
    )  # fmt: skip
    return float(answer["Body"].read().decode().split(",")[1])


def sample_row(stack: LocalStack, arn: str) -> tuple[list[float], float]:
    """A test row of ``arn``'s evaluation and the probability the evaluation computed."""
    uri = stack.client("sagemaker").describe_model_package(ModelPackageName=arn)["ModelMetrics"][
        "ModelQuality"
    ]["Statistics"]["S3Uri"]
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    sample = json.loads(body)["test_sample"]
    return sample["rows"][0], sample["probabilities"][0]


def states(stack: LocalStack, ds: str, dag_id: str = ENDPOINT) -> dict[str, tuple[int, str]]:
    return task_states(stack, dag_id, ds)


# --------------------------------------------------------------------------- the tests, in order


def test_first_deploy_creates_the_endpoint_with_scaling_alarms_and_a_passing_smoke_test(
    stack, trained, tmp_path
):
    code, log = dags_test(stack, ENDPOINT, "2026-01-01", {"model_version": "1"}, env(tmp_path))
    assert code == 0, log[-4000:]
    described = endpoint(stack)
    assert described["EndpointStatus"] == "InService"
    assert package_of_model(stack, model_of(stack, described["EndpointConfigName"])) == trained
    row, expected = sample_row(stack, trained)
    assert abs(predict(stack, row) - expected) <= 1e-9
    targets = stack.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{STAGING}/variant/AllTraffic"]
    )["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 2)]
    policies = stack.client("application-autoscaling").describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=f"endpoint/{STAGING}/variant/AllTraffic"
    )["ScalingPolicies"]
    assert [p["PolicyType"] for p in policies] == ["TargetTrackingScaling"]
    alarms = stack.client("cloudwatch").describe_alarms(
        AlarmNamePrefix=described["EndpointConfigName"]
    )["MetricAlarms"]
    assert sorted(a["MetricName"] for a in alarms) == ["Invocation5XXErrors", "ModelLatency"]
    assert "Smoke test passed on tpch-ord-staging: 10 rows" in log and "p99" in log


def test_a_rerun_creates_no_model_config_or_update(stack, trained, tmp_path):
    before, modified = counts(stack), endpoint(stack)["LastModifiedTime"]
    code, log = dags_test(stack, ENDPOINT, "2026-01-02", {}, env(tmp_path))
    assert code == 0, log[-4000:]
    assert counts(stack) == before
    assert endpoint(stack)["LastModifiedTime"] == modified
    assert "tpch-ord-staging: unchanged" in log


def test_canary_update_to_a_second_version(stack, trained, tmp_path):
    second = reregister(stack, trained, "1996-03-31", "Approved")
    old = serves(stack)
    code, log = dags_test(stack, ENDPOINT, "2026-01-03", {}, env(tmp_path))
    assert code == 0, log[-4000:]
    new = serves(stack)
    assert new != old and package_of_model(stack, model_of(stack, new)) == second
    assert "tpch-ord-staging: updated" in log


def test_a_model_that_cannot_load_is_rolled_back_and_the_task_names_the_config_served(
    stack, trained, tmp_path
):
    spec = stack.client("sagemaker").describe_model_package(ModelPackageName=trained)[
        "InferenceSpecification"
    ]
    # Beside the real artifact, so the execution role's use-case prefix grant covers it.
    good = spec["Containers"][0]["ModelDataUrl"]
    bucket, key = good.removeprefix("s3://").split("/", 1)
    broken_key = key.rsplit("/", 1)[0] + "/broken-model.tar.gz"
    stack.client("s3").put_object(Bucket=bucket, Key=broken_key, Body=b"not a tarball")
    spec["Containers"][0]["ModelDataUrl"] = f"s3://{bucket}/{broken_key}"
    broken = reregister(stack, trained, "1996-04-30", "Approved", InferenceSpecification=spec)
    served = serves(stack)
    code, log = dags_test(stack, ENDPOINT, "2026-01-04", {}, env(tmp_path))
    assert code != 0
    assert states(stack, "2026-01-04")["staging.wait"][1] == "failed"
    assert "rolled the deployment" in log and f"still serves {served}" in log
    assert serves(stack) == served, "still on the old config"
    row, expected = sample_row(stack, trained)
    assert abs(predict(stack, row) - expected) <= 1e-9, "the old version still answers"
    assert broken


def test_an_alarm_in_alarm_while_baking_rolls_back(stack, trained, tmp_path):
    reregister(stack, trained, "1996-05-31", "Approved")
    served = serves(stack)
    fired: list[str] = []

    def fire_when_baking() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not fired:
            described = endpoint(stack) or {}
            pending = (described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
            if described.get("EndpointStatus") == "Updating" and pending:
                name = f"{pending}-5xx"
                if stack.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]:
                    stack.client("cloudwatch").set_alarm_state(
                        AlarmName=name, StateValue="ALARM", StateReason="test: 5XX burst"
                    )
                    fired.append(name)
            time.sleep(0.5)

    thread = threading.Thread(target=fire_when_baking, daemon=True)
    thread.start()
    code, log = dags_test(stack, ENDPOINT, "2026-01-05", {}, env(tmp_path, bake=20))
    thread.join(timeout=5)
    assert fired, "the deployment never baked"
    assert code != 0
    assert fired[0] in log and f"still serves {served}" in log
    assert serves(stack) == served


def test_a_smoke_test_mismatch_rolls_the_endpoint_back(stack, trained, tmp_path):
    sm, s3 = stack.client("sagemaker"), stack.client("s3")
    metrics = sm.describe_model_package(ModelPackageName=trained)["ModelMetrics"]
    uri = metrics["ModelQuality"]["Statistics"]["S3Uri"]
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    evaluation = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    evaluation["test_sample"]["probabilities"][3] += 1e-6  # what a wrong model would give
    s3.put_object(Bucket=bucket, Key="tampered/evaluation.json", Body=json.dumps(evaluation))
    metrics["ModelQuality"]["Statistics"]["S3Uri"] = f"s3://{bucket}/tampered/evaluation.json"
    reregister(stack, trained, "1996-06-30", "Approved", ModelMetrics=metrics)
    served = serves(stack)
    code, log = dags_test(stack, ENDPOINT, "2026-01-06", {}, env(tmp_path))
    assert code != 0
    assert states(stack, "2026-01-06")["staging.smoke"] == (1, "failed")
    assert "row 3" in log and f"was rolled back and serves {served} again" in log
    assert serves(stack) == served


def test_cleanup_keeps_what_endpoints_use_and_the_newest_unused(stack, trained, tmp_path):
    """The failed runs above kept every config (cleanup runs only when nothing failed); the
    next good run deletes what no endpoint serves beyond keep_unused (1)."""
    sm = stack.client("sagemaker")

    def ours(kind: str, key: str, prefix: str) -> list[str]:
        listed = getattr(sm, f"list_{kind}")(MaxResults=100)[key]
        names = [x[key[:-1] + "Name"] for x in listed]
        return [n for n in names if n.startswith(prefix)]

    assert len(ours("endpoint_configs", "EndpointConfigs", "tpch-ord-staging-ec-")) == 5
    assert len(ours("models", "Models", "tpch-ord-mdl-")) == 5
    served = package_of_model(stack, model_of(stack, serves(stack))).rsplit("/", 1)[1]
    code, log = dags_test(stack, ENDPOINT, "2026-01-07", {"model_version": served}, env(tmp_path))
    assert code == 0, log[-3000:]
    configs = ours("endpoint_configs", "EndpointConfigs", "tpch-ord-staging-ec-")
    assert serves(stack) in configs and len(configs) == 2, configs
    alarms = stack.client("cloudwatch").describe_alarms(AlarmNamePrefix="tpch-ord-staging-ec-")
    owners = {a["AlarmName"].rsplit("-", 1)[0] for a in alarms["MetricAlarms"]}
    assert owners == set(configs), "the alarms went with their configs"
    # The served config's model, the kept config's model and the newest other unused one.
    models = ours("models", "Models", "tpch-ord-mdl-")
    assert model_of(stack, serves(stack)) in models and len(models) == 3, models


def _awaiting(stack: LocalStack, ds: str) -> str | None:
    import sqlite3

    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        row = db.execute(
            "SELECT ti.run_id, ti.state FROM task_instance ti JOIN dag_run r "
            "ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id WHERE ti.dag_id = ? "
            "AND ti.task_id = 'production.approve' AND date(r.logical_date) = ?",
            (ENDPOINT, ds),
        ).fetchone()
    return row[0] if row and row[1] in ("deferred", "awaiting_input") else None


@pytest.mark.parametrize("answer", ["Approve", "Reject"])
def test_production_waits_for_an_approval_in_the_ui(stack, trained, api, tmp_path, answer):
    base, token = api
    ds = {"Approve": "2026-01-08", "Reject": "2026-01-09"}[answer]
    newest = reregister(stack, trained, ds, "Approved")
    before = endpoint(stack, PRODUCTION)
    log = tmp_path / "dags-test.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", ENDPOINT, ds],
            env={**stack.airflow_env(), **env(tmp_path, production=True)}, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        run_id = wait_for("the production approval", lambda: _awaiting(stack, ds), 600, run)
        assert package_of_model(stack, model_of(stack, serves(stack))) == newest, "staging first"
        url = f"{base}/api/v2/dags/{ENDPOINT}/dagRuns/{run_id}/taskInstances/production.approve/-1/hitlDetails"  # fmt: skip
        detail = rest(url, token=token)
        assert detail and newest in detail["body"]
        assert rest(url, "PATCH", {"chosen_options": [answer], "params_input": {}}, token)
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        run.kill()
    final = states(stack, ds)
    if answer == "Approve":
        assert package_of_model(stack, model_of(stack, serves(stack, PRODUCTION))) == newest
        assert final["production.smoke"][1] == "success"
    else:
        assert final["production.deploy"][1] == "skipped"
        after = endpoint(stack, PRODUCTION)
        assert after["EndpointConfigName"] == before["EndpointConfigName"], "untouched"
        assert after["LastModifiedTime"] == before["LastModifiedTime"]


def test_teardown_removes_the_stage_and_is_idempotent(stack, trained, tmp_path):
    environment = env(tmp_path)
    for ds in ("2026-01-10", "2026-01-11"):
        code, log = dags_test(stack, TEARDOWN, ds, {"stage": "staging"}, environment)
        assert code == 0, log[-3000:]
        assert endpoint(stack) is None
    targets = stack.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{STAGING}/variant/AllTraffic"]
    )["ScalableTargets"]
    assert targets == []
    assert endpoint(stack, PRODUCTION)["EndpointStatus"] == "InService", "other stages stay"


def test_iam_policies_grant_exactly_what_the_endpoint_runs_called(stack, trained):
    """Every recorded AWS call is allowed by its role's policies, and every grant of the
    endpoint policies was used or is in ``iam.evaluate.NOT_EXERCISED_LOCALLY``."""
    from iam import evaluate

    policies = rendered_policies()
    for role, policy, role_calls in policies_and_calls(recorded_calls(stack), with_endpoint=True):
        assert evaluate.denied(policy, role_calls) == [], f"{role} needs more"
        extra = policies[ENDPOINT_POLICIES[role]]
        assert evaluate.unused(extra, role_calls, role) == [], f"{role} gets more"
