"""``make demo``: the whole loop on the local stack — train for a date, approve (``auto``),
batch-score the next date, deploy the approved version to the staging endpoint — then a short
summary of each and a few real-time predictions with their latency.

Starts the Presto stand-in and the local AWS endpoint, creates the bucket, points Airflow's
connections at them (SQLite metadata DB under ``.local/airflow``), runs the real training DAG for
a TPC-H run date and the real batch-inference DAG for the day after with ``airflow dags test``,
prints what they produced and stops the stack. Environment: ``DEMO_DATE`` (default 1996-02-29),
``PRESTO_PORT``, ``AWS_ENDPOINT_PORT``, ``LOCAL_STACK_CLEAN=1`` to forget the AWS endpoint's
saved state first (by default a second demo for the same date finds and reuses the first one's
jobs, model version and transform job).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import date, timedelta

from local_stack.stack import ROOT, LocalStack
from local_stack.summary import batch_summary, training_summary

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


def _print_batch(summary: dict) -> None:
    print("\n=== batch inference ===")
    print(f"run date:          {summary['run_date']}")
    extracted, published = summary.get("extracted") or {}, summary.get("predictions") or {}
    print(f"rows extracted:    {extracted.get('row_count')}")
    version = summary.get("model_version") or {}
    print(
        f"model version:     {version.get('version')} ({version.get('status')}, trained for "
        f"{version.get('trained_for')}): {version.get('arn')}"
    )
    print(f"approval:          {version.get('approval')}")
    print(
        f"checks:            passed: {published.get('rows')} predictions, every key once, "
        "probabilities in [0, 1]"
        if published
        else "checks:            no predictions published"
    )
    drift = summary.get("drift") or {}
    print(f"drift (PSI):       worst level {drift.get('level', 'not measured')}")
    for name, feature in drift.get("features", {}).items():
        print(f"  {name:<24} {feature['psi']:>8.4f}  {feature['level']}")
    print(f"predictions:       {summary['predictions_uri']}")


def _print_endpoint(stack: LocalStack, endpoint: str, group: str, rows: int = 5) -> None:
    """A few real-time predictions of the deployed version's test rows, with their latency."""
    sm, runtime = stack.client("sagemaker"), stack.client("sagemaker-runtime")
    described = sm.describe_endpoint(EndpointName=endpoint)
    config = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    package = sm.describe_model_package(
        ModelPackageName=model["PrimaryContainer"]["ModelPackageName"]
    )
    uri = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    sample = json.loads(body)["test_sample"]
    print("\n=== real-time endpoint ===")
    print(
        f"endpoint:          {endpoint} ({described['EndpointStatus']}, {described['EndpointConfigName']})"
    )
    print(f"model version:     {package['ModelPackageVersion']} of {group}")
    print(f"{'orderkey':>10} {'probability':>20} {'evaluation said':>20} {'latency':>10}")
    for i, row in enumerate(sample["rows"][:rows]):
        started = time.perf_counter()
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="text/csv", Accept="text/csv",
            Body=",".join(map(repr, row)) + "\n",
        )  # fmt: skip
        elapsed = (time.perf_counter() - started) * 1000
        probability = float(answer["Body"].read().decode().split(",")[1])
        keys = sample.get("keys") or []
        print(
            f"{keys[i] if i < len(keys) else i:>10} {probability:>20.12f} "
            f"{sample['probabilities'][i]:>20.12f} {elapsed:>8.1f}ms"
        )


def _run(
    stack: LocalStack, dag_id: str, ds: str, conf: dict | None = None
) -> tuple[int, float, str]:
    log_path = stack.home / "logs" / f"{dag_id}-{ds}.log"
    print(f"Running {dag_id} for {ds} with `airflow dags test` (log: {log_path}) ...", flush=True)
    started = time.monotonic()
    result = stack.airflow(
        "dags", "test", dag_id, ds,
        "--conf", json.dumps(conf or {"sagemaker_check_interval_seconds": 1}),
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    log_path.write_text(output)
    return result.returncode, time.monotonic() - started, output


def _failed(what: str, output: str) -> int:
    print(f"The {what} run failed; last lines of its log:", file=sys.stderr)
    print("\n".join(output.splitlines()[-40:]), file=sys.stderr)
    return 1


def main() -> int:
    """Run the demo; return the process exit code."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from mlops_sagemaker.config import load_use_case

    config = load_use_case(ROOT / "include" / "config" / f"{USE_CASE}.yaml")
    training = config.need_training()
    ds = os.environ.get("DEMO_DATE", "1996-02-29")
    batch_ds = (date.fromisoformat(ds) + timedelta(days=1)).isoformat()
    stack = LocalStack(bucket=config.storage.bucket)
    print(
        f"Starting the local stack: Presto stand-in on 127.0.0.1:{stack.presto_port}, "
        f"local AWS endpoint on {stack.aws_url} (logs in {stack.home / 'logs'})",
        flush=True,
    )
    started = time.monotonic()
    with stack:
        stack.migrate_db()
        code, elapsed, output = _run(stack, f"mlops_{USE_CASE}_training", ds)
        summary = training_summary(
            stack, USE_CASE, training.registry.model_package_group, ds, config.storage.prefix
        )
        _print_summary(summary, gate_threshold=training.evaluation.threshold)
        print(f"\nTraining run finished in {elapsed:.0f}s with exit code {code}\n")
        if code != 0 or not summary["registered_versions"]:
            return _failed("training", output)
        code, elapsed, output = _run(stack, f"mlops_{USE_CASE}_batch_inference", batch_ds)
        scored = batch_summary(stack, USE_CASE, batch_ds, config.storage.prefix)
        _print_batch(scored)
        print(f"\nBatch run finished in {elapsed:.0f}s with exit code {code}")
        if code != 0 or not scored.get("predictions"):
            return _failed("batch-inference", output)
        staging = config.need_endpoint().stages[0]
        code, elapsed, output = _run(
            stack, f"mlops_{USE_CASE}_endpoint", batch_ds, {"through_stage": staging.name}
        )
        if code != 0:
            return _failed("endpoint", output)
        _print_endpoint(stack, config.endpoint_name(staging), config.model_package_group)
        print(f"\nEndpoint run (through {staging.name}) finished in {elapsed:.0f}s")
    print(f"Local stack stopped. Demo took {time.monotonic() - started:.0f}s in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
