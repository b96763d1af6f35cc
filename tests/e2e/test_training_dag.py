"""The real training DAG, run by ``airflow dags test`` against the local stack.

Presto stand-in + local AWS endpoint (SageMaker runtime, moto) run as background processes;
Airflow reaches them only through its connections. Each test is a whole DAG run.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from pathlib import Path

from e2e_support import policies_and_calls, recorded_calls

from local_stack.stack import LocalStack
from local_stack.summary import training_summary

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "mlops_tpch_orders_training"
GROUP = "tpch-orders-late-delivery"
FAST = {"sagemaker_check_interval_seconds": 1}


def run_dag(stack: LocalStack, ds: str, conf: dict | None = None, env: dict | None = None):
    result = stack.airflow(
        "dags", "test", DAG_ID, ds, "--conf", json.dumps({**FAST, **(conf or {})}),
        check=False, extra_env=env,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def blocking_include(tmp_path: Path) -> dict[str, str]:
    """An include/ copy whose config waits for jobs in the worker (deferrable: false)."""
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include", include)
    config = include / "config" / "tpch_orders.yaml"
    text = config.read_text()
    assert "  deferrable: true" in text
    config.write_text(text.replace("  deferrable: true", "  deferrable: false"))
    return {"MLOPS_INCLUDE_DIR": str(include)}


# Calls the endpoint recorded before a restart (its recorder is per process), for the IAM test.
CALLS_BEFORE_RESTARTS: list[dict] = []


def job_counts(stack: LocalStack) -> dict[str, int]:
    sm = stack.client("sagemaker")
    return {
        "processing": len(sm.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]),
        "tuning": len(
            sm.list_hyper_parameter_tuning_jobs(MaxResults=100)["HyperParameterTuningJobSummaries"]
        ),
        "training": len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]),
    }


def asset_event_arns(stack: LocalStack) -> list[str]:
    """Model package ARNs carried by the model-versions Asset's events, oldest first."""
    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'mlops.tpch_orders.model_versions' ORDER BY e.id"
        ).fetchall()
    return [json.loads(extra)["model_package_arn"] for (extra,) in rows]


def test_run_registers_a_version_despite_throttling_and_rerun_duplicates_nothing(stack) -> None:
    ds = "1996-02-29"
    stack.faults(
        {"throttle": {"DescribeProcessingJob": 2, "ListProcessingJobs": 1, "CreateModelPackage": 1}}
    )
    code, log = run_dag(stack, ds)
    assert code == 0, log[-5000:]
    assert "running trigger in line" in log, "the shipped config waits in the triggerer"
    armed = stack.faults({"throttle": {}})
    assert all(left == 0 for left in armed["throttle"].values()), "throttles were not exercised"

    summary = training_summary(stack, "tpch_orders", GROUP, ds)
    assert summary["rows_extracted"] > 1000
    assert summary["tuning"]["status"] == "Completed"
    assert summary["tuning"]["training_jobs"]["Completed"] == 4
    assert summary["evaluation"]["auc"] >= 0.7
    (version,) = summary["registered_versions"]
    assert version["status"] == "PendingManualApproval"
    metadata = version["metadata"]
    assert metadata["run_date"] == ds
    assert metadata["tuning_job"] == summary["tuning"]["name"]
    assert int(metadata["rows_extracted"]) == summary["rows_extracted"]
    described = stack.client("sagemaker").describe_model_package(ModelPackageName=version["arn"])
    statistics = described["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert statistics.endswith(f"/training/{ds}/evaluation/evaluation.json")
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert asset_event_arns(stack) == [version["arn"]]

    # The local endpoint keeps its state: a crash (SIGKILL, no chance to save more) between the
    # runs loses nothing, as on AWS, where nothing is lost when a client restarts.
    before = job_counts(stack)
    CALLS_BEFORE_RESTARTS.extend(recorded_calls(stack))
    stack.restart_aws(signal.SIGKILL)
    assert job_counts(stack) == before, "the endpoint restart lost jobs"
    code, log = run_dag(stack, ds)
    assert code == 0, log[-5000:]
    assert job_counts(stack) == before, "a re-run started new SageMaker jobs"
    again = training_summary(stack, "tpch_orders", GROUP, ds)
    assert [v["arn"] for v in again["registered_versions"]] == [version["arn"]]
    assert "already completed for this input; reusing it" in log
    assert asset_event_arns(stack) == [version["arn"]], "a re-run emitted a second Asset event"


def test_gate_the_model_cannot_pass_fails_and_registers_nothing(stack, tmp_path) -> None:
    ds = "1995-07-14"
    # Also covers the blocking (non-deferrable) wait for every job.
    code, log = run_dag(stack, ds, {"evaluation_threshold": 0.99}, blocking_include(tmp_path))
    assert code != 0
    assert "running trigger in line" not in log
    assert "< threshold 0.99: model not registered" in log
    assert training_summary(stack, "tpch_orders", GROUP, ds)["registered_versions"] == []


def test_failed_sagemaker_job_fails_the_task_with_its_failure_reason(stack) -> None:
    ds = "1997-01-01"
    stack.faults({"fail": {"tpch-ord-19970101-prep-*": "ClientError: injected: disk full"}})
    try:
        code, log = run_dag(stack, ds)
    finally:
        stack.faults(None)
    assert code != 0
    assert "injected: disk full" in log
    assert training_summary(stack, "tpch_orders", GROUP, ds)["registered_versions"] == []


def test_iam_policies_allow_what_the_training_runs_called(stack) -> None:
    """Last in the module: every AWS call the runs above made (recorded by the local endpoint
    as IAM actions, ``GET /_local/calls``) is allowed by the rendered policy of its role. That
    every grant is used is checked where every pipeline runs (test_batch_inference.py)."""
    from iam import evaluate

    def recorded() -> list[dict]:
        return CALLS_BEFORE_RESTARTS + recorded_calls(stack)

    calls = recorded()
    if not any(c["operation"] == "DeleteObjects" for c in calls):  # run alone (-k): a run
        for _ in range(2):  # and its re-run, as the first test of the module does
            code, log = run_dag(stack, "1994-03-01")
            assert code == 0, log[-5000:]
        calls = recorded()
    for role, policy, role_calls in policies_and_calls(calls):
        assert len(role_calls) > 20, f"too few {role} calls recorded to judge its policy"
        assert evaluate.denied(policy, role_calls) == [], f"{role} needs more"
