"""Failure modes of the real training DAG (``airflow dags test``) against the local stack.

Each case shows the failure policy end to end: a permanent error fails its task on the first try
(the shipped config has 2 retries, 300 s apart, so a retry would show as a second try and minutes
of waiting), a transient one uses the retries, and the final message leads with the root cause.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from e2e_support import include_copy, policies_and_calls, recorded_calls, task_states
from test_training_dag import DAG_ID, run_dag

from local_stack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]


def tries(stack: LocalStack, ds: str) -> dict[str, tuple[int, str]]:
    """``task_id -> (try_number, state)`` of the training run for ``ds``."""
    return task_states(stack, DAG_ID, ds)


def shipped_sql() -> str:
    return (ROOT / "include/sql/tpch_orders/training.sql").read_text()


def test_script_error_in_every_training_job_fails_tuning_once(stack) -> None:
    ds = "1994-03-03"
    stack.faults({"fail": {"tpch-ord-19940303-hpo-*-0??-*": "AlgorithmError: injected: bad"}})
    started = time.monotonic()
    try:
        code, log = run_dag(stack, ds)
    finally:
        stack.faults(None)
    elapsed = time.monotonic() - started
    assert code != 0
    sm = stack.client("sagemaker")
    tuning = [
        s["HyperParameterTuningJobName"]
        for s in sm.list_hyper_parameter_tuning_jobs(NameContains="tpch-ord-19940303")[
            "HyperParameterTuningJobSummaries"
        ]
    ]
    assert len(tuning) == 1, f"the tune task was retried: {tuning}"
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning[0]
    )["TrainingJobSummaries"]
    training = sm.list_training_jobs(NameContains="tpch-ord-19940303")["TrainingJobSummaries"]
    assert len(training) == len(children) >= 1
    assert all(c["TrainingJobStatus"] == "Failed" for c in children)
    assert tries(stack, ds)["tune.job"] == (1, "failed")
    assert "failed with a script or request error" in log
    assert "[permanent: sagemaker-job]" in log
    print(f"tuning jobs 1, training jobs {len(training)}, failed run after {elapsed:.0f} s")


def test_undefined_template_name_fails_extract_at_once(stack, tmp_path) -> None:
    ds = "1994-04-04"
    sql = shipped_sql().replace("{{ source.schema }}", "{{ source.shema }}")
    env = include_copy(tmp_path, sql={"training.sql": sql})
    code, log = run_dag(stack, ds, env=env)
    assert code != 0
    assert tries(stack, ds)["extract"] == (1, "failed")
    assert "[permanent: template]" in log
    assert "shema" in log


def test_presto_syntax_error_fails_extract_at_once(stack, tmp_path) -> None:
    ds = "1994-05-05"
    sql = shipped_sql()
    assert "GROUP BY " in sql
    env = include_copy(tmp_path, sql={"training.sql": sql.replace("GROUP BY ", "GROUP BY ,", 1)})
    code, log = run_dag(stack, ds, env=env)
    assert code != 0
    assert tries(stack, ds)["extract"] == (1, "failed")
    assert "SYNTAX_ERROR" in log and "[permanent: presto-user]" in log


def test_presto_bad_password_fails_the_sensor_at_once(stack) -> None:
    ds = "1994-06-06"
    conn = json.loads(stack.airflow_env()["AIRFLOW_CONN_PRESTO_DEFAULT"])
    assert conn.get("password"), "the local stack reaches Presto with a password"
    conn["password"] = "wrong-" + conn["password"]
    code, log = run_dag(stack, ds, env={"AIRFLOW_CONN_PRESTO_DEFAULT": json.dumps(conn)})
    assert code != 0
    assert tries(stack, ds)["wait_for_data"] == (1, "failed")
    assert "[permanent: auth]" in log
    assert conn["password"] not in log


BOTO_ATTEMPTS = 3  # botocore reports max_attempts retries after the first call: 4 calls


def test_throttling_past_boto_retries_is_transient_and_named(stack, tmp_path) -> None:
    ds = "1994-07-07"
    env = include_copy(
        tmp_path,
        {
            "    retries: 2\n    retry_delay_seconds: 300\n  query: training.sql": (
                "    retries: 1\n    retry_delay_seconds: 1\n  query: training.sql"
            )
        },
    )
    # Fewer boto attempts than the stack's 10: each try still exhausts them, without minutes of
    # client-side backoff.
    aws = json.loads(stack.airflow_env()["AIRFLOW_CONN_AWS_DEFAULT"])
    aws["extra"]["config_kwargs"]["retries"]["max_attempts"] = BOTO_ATTEMPTS
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(aws)
    stack.faults({"throttle": {"CreateProcessingJob": 1000}})
    try:
        code, log = run_dag(stack, ds, env=env)
    finally:
        stack.faults(None)
    assert code != 0
    assert tries(stack, ds)["split.job"] == (2, "failed"), "a transient failure uses the retries"
    final = [line for line in log.splitlines() if "throttled" in line]
    assert (
        final and f"SageMaker throttled CreateProcessingJob {BOTO_ATTEMPTS + 1} times" in final[-1]
    )
    assert "[transient: throttling]" in log
    assert "Requested resource not found" not in log


def test_run_date_outside_the_configured_range_fails_loudly(stack) -> None:
    code, log = run_dag(stack, "1999-06-01")
    assert code != 0
    assert "outside the configured range 1993-01-01 … 1998-08-02" in log
    states = tries(stack, "1999-06-01")
    assert states.pop("check_run_date") == (1, "failed")
    assert states and all(state == "upstream_failed" for _, state in states.values())


def test_iam_policies_grant_what_the_failure_paths_call(stack) -> None:
    """Last in the module: the calls made only on failure paths (e.g. listing a failed tuning
    job's training jobs) are granted by the rendered policies too."""
    from iam import evaluate

    calls = recorded_calls(stack)
    operations = {c["operation"] for c in calls}
    assert "ListTrainingJobsForHyperParameterTuningJob" in operations
    for role, policy, role_calls in policies_and_calls(calls):
        assert evaluate.denied(policy, role_calls) == [], f"{role} needs more"
