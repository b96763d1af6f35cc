"""``make demo``: the training DAG end to end on the local stack, then a short summary.

Starts the Presto stand-in and the local AWS endpoint, creates the bucket, points Airflow's
connections at them (SQLite metadata DB under ``.local/airflow``), runs the real training DAG
for a TPC-H run date with ``airflow dags test``, prints what it produced and stops the stack.
Environment: ``DEMO_DATE`` (default 1996-02-29), ``PRESTO_PORT``, ``AWS_ENDPOINT_PORT``,
``LOCAL_STACK_CLEAN=1`` to forget the AWS endpoint's saved state first (by default a second
demo for the same date finds and reuses the first one's jobs and model version).
"""

from __future__ import annotations

import json
import os
import sys
import time

from local_stack.stack import ROOT, LocalStack
from local_stack.summary import training_summary

USE_CASE = "tpch_orders"


def _print_summary(summary: dict, gate_threshold: float) -> None:
    tuning = summary.get("tuning") or {}
    evaluation = summary.get("evaluation") or {}
    print("\n=== demo summary ===")
    print(f"run date:          {summary['run_date']}")
    print(f"rows extracted:    {summary['rows_extracted']}")
    if tuning:
        counters = tuning["training_jobs"]
        objective = tuning.get("best_objective") or {}
        print(f"tuning job:        {tuning['name']} ({tuning['status']})")
        print(f"training jobs:     {json.dumps(counters)}")
        print(
            f"best objective:    {objective.get('MetricName')} = {objective.get('Value')} "
            f"({tuning['best_training_job']}, {json.dumps(tuning['best_hyperparameters'])})"
        )
    if evaluation:
        auc = evaluation.get("auc")
        verdict = "passes" if auc is not None and auc >= gate_threshold else "fails"
        print(f"evaluation (test): {json.dumps(evaluation)}")
        print(f"quality gate:      auc {auc} vs threshold {gate_threshold}: {verdict}")
        print(f"baseline:          {json.dumps(summary.get('evaluation_baseline'))}")
    for version in summary["registered_versions"]:
        print(f"model package:     {version['arn']} ({version['status']})")
    if not summary["registered_versions"]:
        print("model package:     none registered for this run date")


def main() -> int:
    """Run the demo; return the process exit code."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from mlops_sagemaker.config import load_use_case

    config = load_use_case(ROOT / "include" / "config" / f"{USE_CASE}.yaml")
    dag_id = f"mlops_{USE_CASE}_training"
    ds = os.environ.get("DEMO_DATE", "1996-02-29")
    stack = LocalStack(bucket=config.storage.bucket)
    print(
        f"Starting the local stack: Presto stand-in on 127.0.0.1:{stack.presto_port}, "
        f"local AWS endpoint on {stack.aws_url} (logs in {stack.home / 'logs'})",
        flush=True,
    )
    with stack:
        stack.migrate_db()
        log_path = stack.home / "logs" / f"dags-test-{ds}.log"
        print(
            f"Running {dag_id} for {ds} with `airflow dags test` (log: {log_path}) ...", flush=True
        )
        started = time.monotonic()
        result = stack.airflow(
            "dags", "test", dag_id, ds,
            "--conf", json.dumps({"sagemaker_check_interval_seconds": 2}),
            check=False,
        )  # fmt: skip
        log_path.write_text(result.stdout + result.stderr)
        elapsed = time.monotonic() - started
        summary = training_summary(
            stack, USE_CASE, config.registry.model_package_group, ds, config.storage.prefix
        )
        _print_summary(summary, gate_threshold=config.evaluation.threshold)
        print(f"\nDAG run finished in {elapsed:.0f}s with exit code {result.returncode}")
        if result.returncode != 0 or not summary["registered_versions"]:
            print("The DAG run failed; last lines of its log:", file=sys.stderr)
            print("\n".join((result.stdout + result.stderr).splitlines()[-40:]), file=sys.stderr)
            return 1
    print("Local stack stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
