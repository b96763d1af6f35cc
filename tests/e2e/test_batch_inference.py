"""The real batch-inference DAG, run by ``airflow dags test`` against the local stack.

One training run registers a real model version; further versions for the approval and
selection cases are re-registrations of its artifact under other run dates (what a retrain
would register, without paying for another tuning job). Each test is one or more whole DAG runs.
Tests build on the versions the earlier ones leave behind, in file order.
"""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import e2e_support
import pyarrow.parquet as pq
import pytest
from e2e_support import (
    include_copy,
    policies_and_calls,
    recorded_calls,
    rest,
    task_states,
    wait_for,
)

from local_stack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "mlops_tpch_orders_training"
BATCH = "mlops_tpch_orders_batch_inference"
GROUP = "tpch-orders-late-delivery"
PREFIX = "mlops/tpch_orders/batch_inference"
TRAIN_DS = "1996-02-29"
FAST = {"sagemaker_check_interval_seconds": 1}


@pytest.fixture(scope="module")
def trained(stack: LocalStack) -> str:
    """ARN of the version the real training DAG registers for TRAIN_DS (pending approval)."""
    code, log = dags_test(stack, TRAIN, TRAIN_DS)
    assert code == 0, log[-3000:]
    (arn,) = [v["ModelPackageArn"] for v in versions(stack)]
    return arn


def dags_test(stack: LocalStack, dag_id: str, ds: str, conf: dict | None = None, env=None):
    return e2e_support.dags_test(stack, dag_id, ds, {**FAST, **(conf or {})}, env)


def mode(name: str, **extra: str) -> dict[str, str]:
    replacements = {"    mode: auto ": f"    mode: {name} "}
    replacements.update(extra)
    return replacements


def versions(stack: LocalStack) -> list[dict]:
    return e2e_support.versions(stack, GROUP)


def reregister(stack: LocalStack, arn: str, run_date: str, status: str) -> str:
    """A new version of ``arn``'s artifact registered as if trained for ``run_date``."""
    return e2e_support.reregister(stack, arn, run_date, status)


def counts(stack: LocalStack) -> dict[str, int]:
    sm = stack.client("sagemaker")
    return {
        "models": len(sm.list_models(MaxResults=100)["Models"]),
        "transforms": len(sm.list_transform_jobs(MaxResults=100)["TransformJobSummaries"]),
    }


def transforms_for(stack: LocalStack, ds: str) -> list[dict]:
    sm = stack.client("sagemaker")
    found = sm.list_transform_jobs(NameContains=f"-{ds.replace('-', '')}-bt-", MaxResults=100)
    return found["TransformJobSummaries"]


def objects(stack: LocalStack, prefix: str) -> dict[str, bytes]:
    s3 = stack.client("s3")
    listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"]: s3.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read() for o in listed
    }


def extracted_keys(stack: LocalStack, ds: str) -> list[int]:
    parts = objects(stack, f"{PREFIX}/{ds}/extract/data/")
    keys = []
    for _, body in sorted(parts.items()):
        lines = gzip.decompress(body).decode().splitlines()
        keys += [int(line.split(",")[0]) for line in lines]
    return keys


def predictions(stack: LocalStack, ds: str):
    parts = {
        k: v
        for k, v in objects(stack, f"{PREFIX}/predictions/ds={ds}/").items()
        if k.endswith(".parquet")
    }
    assert parts, f"no predictions for {ds}"
    tables = [pq.read_table(io.BytesIO(body)) for _, body in sorted(parts.items())]
    return [row for table in tables for row in table.to_pylist()]


def states(stack: LocalStack, ds: str) -> dict[str, tuple[int, str]]:
    return task_states(stack, BATCH, ds)


def asset_events(stack: LocalStack, name: str) -> list[dict]:
    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = ? ORDER BY e.id",
            (name,),
        ).fetchall()
    return [json.loads(extra) for (extra,) in rows]


# --------------------------------------------------------------------------- the tests, in order


def test_none_mode_with_nothing_approved_fails_naming_the_group(stack, trained, tmp_path):
    ds = "1996-03-01"
    code, log = dags_test(stack, BATCH, ds, env=include_copy(tmp_path, mode("none")))
    assert code != 0
    assert states(stack, ds)["select_model"] == (1, "failed"), "a permanent error: no retry"
    assert f"No model version to use in group {GROUP}" in log or GROUP in log
    assert "latest_approved" in log
    assert "PendingManualApproval" in log, "the error lists what exists"
    assert transforms_for(stack, ds) == []


def test_auto_mode_scores_the_next_day_and_a_rerun_changes_nothing(stack, trained):
    ds = "1996-03-01"
    code, log = dags_test(stack, BATCH, ds)
    assert code == 0, log[-3000:]
    (version,) = versions(stack)
    assert version["ModelApprovalStatus"] == "Approved"
    assert "auc" in version["ApprovalDescription"] and "0.7" in version["ApprovalDescription"]
    rows = predictions(stack, ds)
    keys = extracted_keys(stack, ds)
    assert len(keys) > 100
    assert sorted(r["orderkey"] for r in rows) == sorted(keys), "every key exactly once"
    assert all(0 <= r["probability"] <= 1 for r in rows)
    assert all(r["predicted_label"] == int(r["probability"] >= 0.5) for r in rows)
    assert {r["model_package_arn"] for r in rows} == {trained}
    assert {str(r["run_date"]) for r in rows} == {ds}
    (event,) = asset_events(stack, "mlops.tpch_orders.predictions")
    assert event["ds"] == ds and event["rows"] == len(keys)
    assert event["model_package_arn"] == trained
    assert event["output_uri"].endswith(f"predictions/ds={ds}/")
    assert asset_events(stack, "mlops.tpch_orders.drift") == [], "unchanged data: no drift"
    report = json.loads(objects(stack, f"{PREFIX}/{ds}/drift/report.json").popitem()[1])
    assert report["level"] in ("ok", "warn")

    before, published = counts(stack), objects(stack, f"{PREFIX}/predictions/ds={ds}/")
    code, log = dags_test(stack, BATCH, ds)
    assert code == 0, log[-3000:]
    assert counts(stack) == before, "a re-run creates no model and no transform job"
    assert objects(stack, f"{PREFIX}/predictions/ds={ds}/") == published, "byte-identical"


def test_tripled_prices_are_drift_that_asks_for_retraining(stack, trained, tmp_path):
    ds = "1996-03-02"
    sql = (ROOT / "include/sql/tpch_orders/batch.sql").read_text()
    tripled = sql.replace("l.extendedprice", "(l.extendedprice * 3)")
    assert tripled != sql
    code, log = dags_test(stack, BATCH, ds, env=include_copy(tmp_path, {}, {"batch.sql": tripled}))
    assert code == 0, "drift never fails the batch unless the config says so"
    report = json.loads(objects(stack, f"{PREFIX}/{ds}/drift/report.json").popitem()[1])
    psi = report["features"]
    assert psi["total_extended_price"]["psi"] > 0.25
    assert psi["total_extended_price"]["level"] == "retrain"
    assert psi["lineitem_count"]["level"] == "ok"
    (drift,) = asset_events(stack, "mlops.tpch_orders.drift")
    assert drift["ds"] == ds and drift["drift_level"] == "retrain"
    assert "total_extended_price" in log and "retrain" in log, "the drift table is in the log"


def test_as_of_run_date_scores_each_date_with_the_model_of_its_time(stack, trained):
    summer = reregister(stack, trained, "1996-06-30", "Approved")
    conf = {"model_selection": "as_of_run_date"}
    expected = {"1996-03-05": trained, "1996-07-01": summer, "1997-01-02": summer}
    for ds, arn in expected.items():
        code, log = dags_test(stack, BATCH, ds, conf)
        assert code == 0, log[-3000:]
        assert {r["model_package_arn"] for r in predictions(stack, ds)} == {arn}, ds


def test_a_failed_transform_fails_with_sagemakers_reason(stack, trained):
    ds = "1996-03-06"
    stack.faults({"fail": {"tpch-ord-19960306-bt-*": "ClientError: injected: bad model input"}})
    try:
        code, log = dags_test(stack, BATCH, ds)
    finally:
        stack.faults(None)
    assert code != 0
    assert "ClientError: injected: bad model input" in log
    assert states(stack, ds)["transform.job"] == (1, "failed"), "a ClientError is permanent"
    assert states(stack, ds)["check"][1] == "upstream_failed"


def test_a_truncated_output_fails_the_row_check_with_counts(stack, trained):
    ds = "1996-03-01"  # scored by the auto-mode test: its transform is reused here
    s3 = stack.client("s3")
    (key,) = [k for k in objects(stack, f"{PREFIX}/{ds}/transform/") if k.endswith(".out")]
    lines = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read().decode().splitlines()
    dropped = lines[-1].split(",")[0]
    s3.put_object(Bucket=stack.bucket, Key=key, Body=("\n".join(lines[:-1]) + "\n").encode())
    # Pinned to the version that scored this date (a newer one is approved by now): the
    # completed transform job is reused, and its truncated output reaches the check.
    before = counts(stack)
    code, log = dags_test(
        stack, BATCH, ds, {"model_selection": "pinned", "pinned_version": trained}
    )
    assert counts(stack) == before
    assert code != 0
    assert f"has {len(lines) - 1} rows" in log and f"{len(lines)}" in log
    assert dropped in log, "the message names the missing key"
    assert states(stack, ds)["check"] == (1, "failed")


def start_dags_test(stack: LocalStack, ds: str, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", BATCH, ds,
             "--conf", json.dumps(FAST)],
            env={**stack.airflow_env(), **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_registry_mode_waits_until_the_version_is_approved_in_sagemaker(stack, trained, tmp_path):
    ds = "1996-08-02"
    pending = reregister(stack, trained, "1996-08-01", "PendingManualApproval")
    timeout = "    response_timeout_seconds: 86400   # airflow mode"
    fast_poke = {timeout: "    poke_interval_seconds: 5\n" + timeout}
    env = include_copy(tmp_path, mode("registry", **fast_poke))
    log = tmp_path / "dags-test.log"
    run = start_dags_test(stack, ds, env, log)
    try:
        wait_for(
            "the approval sensor to wait",
            lambda: states(stack, ds).get("approve.wait", (0, ""))[1] == "up_for_reschedule",
            300,
            run,
        )
        stack.client("sagemaker").update_model_package(
            ModelPackageArn=pending,
            ModelApprovalStatus="Approved",
            ApprovalDescription="approved in SageMaker Studio by the test",
        )
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        run.kill()
    assert {r["model_package_arn"] for r in predictions(stack, ds)} == {pending}


@pytest.mark.parametrize("answer", ["Approve", "Reject"])
def test_airflow_mode_asks_in_the_ui_and_records_the_answer(stack, trained, api, tmp_path, answer):
    base, token = api
    ds = {"Approve": "1996-09-02", "Reject": "1996-10-02"}[answer]
    pending = reregister(stack, trained, ds[:8] + "01", "PendingManualApproval")
    before = counts(stack)["transforms"]
    log = tmp_path / "dags-test.log"
    run = start_dags_test(stack, ds, include_copy(tmp_path, mode("airflow")), log)
    try:
        run_id = wait_for(
            "the approval to be asked",
            lambda: _awaiting(stack, ds),
            300,
            run,
        )
        url = (
            f"{base}/api/v2/dags/{BATCH}/dagRuns/{run_id}/taskInstances/approve.ask/-1/hitlDetails"
        )
        detail = rest(url, token=token)
        assert detail and f"version {pending.rsplit('/', 1)[1]}" in detail["body"].lower()
        answered = rest(url, "PATCH", {"chosen_options": [answer], "params_input": {}}, token)
        assert answered is not None, "the API refused the answer"
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        run.kill()
    described = stack.client("sagemaker").describe_model_package(ModelPackageName=pending)
    final = states(stack, ds)
    assert not [t for t, (_, s) in final.items() if s in ("failed", "upstream_failed")]
    if answer == "Approve":
        assert described["ModelApprovalStatus"] == "Approved"
        assert "Approved in Airflow by Anonymous" in described["ApprovalDescription"]
        assert {r["model_package_arn"] for r in predictions(stack, ds)} == {pending}
    else:
        assert described["ModelApprovalStatus"] == "Rejected"
        assert "Rejected in Airflow by Anonymous" in described["ApprovalDescription"]
        assert counts(stack)["transforms"] == before, "a rejected version starts no transform"
        assert final["transform.job"][1] == "skipped"


def _awaiting(stack: LocalStack, ds: str) -> str | None:
    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        row = db.execute(
            "SELECT ti.run_id, ti.state FROM task_instance ti JOIN dag_run r "
            "ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id WHERE ti.dag_id = ? "
            "AND ti.task_id = 'approve.ask' AND date(r.logical_date) = ?",
            (BATCH, ds),
        ).fetchone()
    return row[0] if row and row[1] in ("deferred", "awaiting_input") else None


def test_iam_policies_grant_exactly_what_training_and_batch_runs_called(stack, trained):
    """Last in the module, after a training run and batch runs in every approval mode: each
    recorded AWS call is allowed by its role's rendered policy, and every grant was used or is
    in ``iam.evaluate.NOT_EXERCISED_LOCALLY`` with its reason."""
    from iam import evaluate

    for role, policy, role_calls in policies_and_calls(recorded_calls(stack)):
        assert len(role_calls) > 20, f"too few {role} calls recorded to judge its policy"
        assert evaluate.denied(policy, role_calls) == [], f"{role} needs more"
        assert evaluate.unused(policy, role_calls, role) == [], f"{role} gets more"
