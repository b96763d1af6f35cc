"""The DAGs under a production-shaped Airflow: API server, scheduler, DAG processor, triggerer,
``LocalExecutor`` and PostgreSQL (``local_stack.airflow_services``), as ``make ui`` runs them.

A 5-date backfill of training then batch inference (``airflow backfill create``) must give each
date its own S3 prefix and model version, score each date with the version ``as_of_run_date``
picks, keep to ``max_active_runs`` and to the use case's pool (3 slots here: one tuning job
takes 2, so two tunings never overlap), and re-running the finished backfills with
``--reprocess-behavior completed`` (its last two dates) must start no SageMaker job. Tests
share the module's stack and run in file order.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
from e2e_support import free_port, include_copy, rest, versions

from local_stack.airflow_services import AirflowServices
from local_stack.stack import LocalStack

TRAIN = "mlops_tpch_orders_training"
BATCH = "mlops_tpch_orders_batch_inference"
GROUP = "tpch-orders-late-delivery"
DATES = ["1996-03-01", "1996-03-02", "1996-03-03", "1996-03-04", "1996-03-05"]
POOL_SLOTS, MAX_ACTIVE_RUNS = 3, 2
FAST = {"sagemaker_check_interval_seconds": 5}
RETRAIN = "mlops_tpch_orders_retrain"
UPSTREAM = "etl.tpch.orders"
RETRAIN_ON = f"  retrain_on:\n    assets: [{{name: {UPSTREAM}, uri: 's3://etl/tpch/orders/'}}]\n"
SECTIONS = "# One section per pipeline; a pipeline's DAG exists when its section does.\n"
TIMINGS: dict[str, Any] = {}


def _schedule(query: str) -> tuple[str, str]:
    # A short retry delay: Airflow 3.3.2's scheduler can fail a deferred task whose trigger
    # fires before it drained the executor's success event of the deferral (apache/airflow
    # #67287, #72716; local jobs end in seconds); the retry then finds the completed job.
    tail = "    catchup: false\n    retries: 2\n    retry_delay_seconds: "
    return (
        f"{tail}300\n  query: {query}",
        f"{tail}10\n    max_active_runs: {MAX_ACTIVE_RUNS}\n  query: {query}",
    )


@dataclass
class Prod:
    stack: LocalStack
    airflow: AirflowServices
    token: str
    targets: Targets

    def get(self, path: str) -> dict:
        answer = rest(f"{self.airflow.base_url}/api/v2/{path}", token=self.token)
        assert answer is not None, f"GET {path} failed"
        return answer


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory):
    home = Path(tmp_path_factory.mktemp("prod"))
    stack = LocalStack(presto_port=free_port(), aws_port=free_port(), home=home, clean=True)
    with contextlib.ExitStack() as running:
        running.enter_context(stack)
        queues = notification_targets(stack)
        env = include_copy(
            home,
            dict(
                [
                    _schedule("training.sql"),
                    _schedule("batch.sql"),
                    ("    slots: 4 ", f"    slots: {POOL_SLOTS} "),
                    # Pokes far enough apart that a rescheduled sensor is not requeued before
                    # the scheduler drained its last exit (the race in _schedule's comment).
                    ("    poke_interval_seconds: 300\n", "    poke_interval_seconds: 20\n"),
                    (SECTIONS, f"{queues.config}{SECTIONS}"),
                    ("  query: training.sql\n", f"  query: training.sql\n{RETRAIN_ON}"),
                ]
            ),
        )
        extra = {
            **env,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
        pgdata = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="mlops-pg-")))
        airflow = running.enter_context(
            AirflowServices(stack, port=free_port(), extra_env=extra, pgdata=pgdata)
        )
        token = rest(f"{airflow.base_url}/auth/token")["access_token"]
        for dag_id in (TRAIN, BATCH, RETRAIN):
            url = f"{airflow.base_url}/api/v2/dags/{dag_id}"
            _until(f"{dag_id} parsed", lambda u=url: rest(u, token=token), 240)
            assert rest(url, "PATCH", {"is_paused": False}, token)["is_paused"] is False
        yield Prod(stack, airflow, token, queues)


@dataclass
class Targets:
    """The notification targets: an SNS topic (with a queue subscribed to read it) and a queue."""

    stack: LocalStack
    topic_arn: str
    topic_reader_url: str
    queue_url: str

    @property
    def config(self) -> str:
        return (
            f"notifications:\n  sns_topic_arn: {self.topic_arn}\n"
            f"  sqs_queue_url: {self.queue_url}\n\n"
        )

    def drain(self, url: str) -> list[dict]:
        """Every message waiting in the queue ``url`` (read and deleted)."""
        sqs, found = self.stack.client("sqs"), []
        while batch := sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages"):
            for message in batch:
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found


def notification_targets(stack: LocalStack) -> Targets:
    sns, sqs = stack.client("sns"), stack.client("sqs")
    topic = sns.create_topic(Name="mlops-events")["TopicArn"]
    reader = sqs.create_queue(QueueName="mlops-events-via-sns")["QueueUrl"]
    reader_arn = sqs.get_queue_attributes(QueueUrl=reader, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=reader_arn["Attributes"]["QueueArn"])
    queue = sqs.create_queue(QueueName="mlops-events")["QueueUrl"]
    return Targets(stack, topic, reader, queue)


def _until(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def backfill(
    prod: Prod, dag_id: str, conf: dict, reprocess: str = "none", dates: list[str] = DATES
) -> list[dict]:
    """``airflow backfill create`` over ``dates``; wait until it completes; its runs."""
    prod.airflow.airflow(
        "backfill", "create", "--dag-id", dag_id, "--from-date", dates[0], "--to-date",
        dates[-1], "--max-active-runs", str(MAX_ACTIVE_RUNS), "--reprocess-behavior", reprocess,
        "--dag-run-conf", json.dumps(conf),
    )  # fmt: skip

    def finished() -> dict | None:
        backfills = prod.get(f"backfills?dag_id={dag_id}")["backfills"]
        newest = max(backfills, key=lambda b: b["id"])
        return newest if newest["completed_at"] else None

    done = _until(f"the {dag_id} backfill", finished, 1500)
    runs = prod.get(f"dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
    ours = [r for r in runs if r["run_type"] == "backfill"]
    failed = {r["logical_date"][:10]: failed_tasks(prod, dag_id, r) for r in ours}
    assert all(r["state"] == "success" for r in ours), f"backfill {done['id']}: {failed}"
    retried = [
        f"{r['logical_date'][:10]} {t['task_id']}"
        for r in ours
        for t in prod.get(f"dags/{dag_id}/dagRuns/{r['dag_run_id']}/taskInstances")[
            "task_instances"
        ]
        if t["try_number"] > 1
    ]
    if reprocess == "none":  # a reprocessed run's tasks are cleared: their try number grows
        TIMINGS.setdefault("retried", []).extend(retried)
    return ours


def failed_tasks(prod: Prod, dag_id: str, run: dict) -> dict[str, str]:
    """``task_id -> state`` of the run's tasks that did not succeed; a failed task's state is
    followed by the error lines of its last attempt's log (the root cause, in the assertion)."""
    instances = prod.get(f"dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")
    found = {}
    for t in instances["task_instances"]:
        if t["state"] == "success":
            continue
        found[t["task_id"]] = f"{t['state']} (try {t['try_number']})"
        if t["state"] == "failed":
            folder = prod.stack.airflow_home / "logs" / f"dag_id={dag_id}"
            logs = sorted(folder.glob(f"run_id={run['dag_run_id']}/task_id={t['task_id']}/*.log"))
            lines = logs[-1].read_text(errors="replace").splitlines() if logs else []
            errors = [line for line in lines if '"error"' in line or "Error" in line]
            found[t["task_id"]] += ": " + " | ".join((errors or lines)[-6:])[-3000:]
    return found


def _times(record: dict, start: str, end: str) -> tuple[datetime, datetime] | None:
    return (record[start], record[end]) if record.get(start) and record.get(end) else None


def job_intervals(stack: LocalStack) -> dict[str, tuple[datetime, datetime]]:
    """Every processing, training and transform job of the stack: its start and end."""
    sm, found = stack.client("sagemaker"), {}
    kinds = (
        ("list_processing_jobs", "ProcessingJobSummaries", "ProcessingJobName",
         "describe_processing_job", "ProcessingStartTime", "ProcessingEndTime"),
        ("list_training_jobs", "TrainingJobSummaries", "TrainingJobName",
         "describe_training_job", "TrainingStartTime", "TrainingEndTime"),
        ("list_transform_jobs", "TransformJobSummaries", "TransformJobName",
         "describe_transform_job", "TransformStartTime", "TransformEndTime"),
    )  # fmt: skip
    for lister, member, key, describer, start, end in kinds:
        for page in sm.get_paginator(lister).paginate():
            for summary in page[member]:
                name = summary[key]
                found[name] = _times(getattr(sm, describer)(**{key: name}), start, end)
    return found


def peak(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = best = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        level += step
        best = max(best, level)
    return best


def run_intervals(runs: list[dict]) -> list[tuple[datetime, datetime]]:
    return [
        (datetime.fromisoformat(r["start_date"]), datetime.fromisoformat(r["end_date"]))
        for r in runs
    ]


def test_a_training_backfill_gives_every_date_its_own_prefix_and_version(prod: Prod) -> None:
    started = time.monotonic()
    runs = backfill(prod, TRAIN, FAST)
    TIMINGS["training"] = time.monotonic() - started
    assert sorted(r["logical_date"][:10] for r in runs) == DATES
    assert peak(run_intervals(runs)) <= MAX_ACTIVE_RUNS
    by_date = {v["CustomerMetadataProperties"]["run_date"]: v for v in versions(prod.stack, GROUP)}
    assert sorted(by_date) == DATES, "one version per date"
    s3 = prod.stack.client("s3")
    for ds in DATES:
        key = f"mlops/tpch_orders/training/{ds}/extract/manifest.json"
        assert s3.head_object(Bucket=prod.stack.bucket, Key=key)["ContentLength"] > 0
        assert by_date[ds]["ModelApprovalStatus"] == "PendingManualApproval"


def test_each_new_version_is_notified_with_its_arn_run_date_and_link(prod: Prod) -> None:
    arns = {
        v["CustomerMetadataProperties"]["run_date"]: v["ModelPackageArn"]
        for v in versions(prod.stack, GROUP)
    }
    direct = prod.targets.drain(prod.targets.queue_url)
    envelopes = prod.targets.drain(prod.targets.topic_reader_url)
    new = sorted((m for m in direct if m["event"] == "new_version"), key=lambda m: m["run_date"])
    assert [(m["run_date"], m["model_package_arn"]) for m in new] == sorted(arns.items())
    for message in new:
        assert (message["dag_id"], message["task_id"]) == (TRAIN, "register.version")
        run_link = f"{prod.airflow.base_url}/dags/{TRAIN}/runs/{quote(message['run_id'])}"
        assert message["url"].startswith(f"{run_link}/tasks/register.version")
        assert message["run_id"].startswith("backfill__")
    assert {e["Subject"] for e in envelopes} == {"[mlops] tpch_orders: new version"}
    assert sorted(json.loads(e["Message"])["model_package_arn"] for e in envelopes) == sorted(
        arns.values()
    ), "the topic got the same messages"


def test_a_failed_run_is_notified_with_the_task_and_the_reason(prod: Prod) -> None:
    url = f"{prod.airflow.base_url}/api/v2/dags/{TRAIN}/dagRuns"
    run = rest(url, "POST", {"logical_date": "1990-06-01T00:00:00Z"}, prod.token)
    assert run is not None, "the run was not created"
    got: list[dict] = []

    def failure() -> dict | None:
        got.extend(prod.targets.drain(prod.targets.queue_url))
        return next((m for m in got if m["event"] == "failure"), None)

    message = _until("the failure notification", failure, 240)
    assert (message["task_id"], message["run_date"]) == ("check_run_date", "1990-06-01")
    assert message["run_id"] == run["dag_run_id"]
    assert message["reason"].startswith("Run date 1990-06-01 is outside the configured range")
    assert "/tasks/check_run_date" in message["url"]


def test_a_batch_backfill_scores_each_date_with_its_as_of_version(prod: Prod) -> None:
    started = time.monotonic()
    runs = backfill(prod, BATCH, {**FAST, "model_selection": "as_of_run_date"})
    TIMINGS["batch"] = time.monotonic() - started
    assert sorted(r["logical_date"][:10] for r in runs) == DATES
    by_date = {
        v["CustomerMetadataProperties"]["run_date"]: v["ModelPackageArn"]
        for v in versions(prod.stack, GROUP)
    }
    s3 = prod.stack.client("s3")
    for ds in DATES:
        prefix = f"mlops/tpch_orders/batch_inference/predictions/ds={ds}/"
        keys = [
            o["Key"]
            for o in s3.list_objects_v2(Bucket=prod.stack.bucket, Prefix=prefix)["Contents"]
            if o["Key"].endswith(".parquet")
        ]
        tables = [
            pq.read_table(io.BytesIO(s3.get_object(Bucket=prod.stack.bucket, Key=k)["Body"].read()))
            for k in keys
        ]
        used = {arn for t in tables for arn in t.column("model_package_arn").to_pylist()}
        assert used == {by_date[ds]}, f"{ds} scored with the version trained for {ds}"


def test_the_pool_bounds_the_sagemaker_jobs_running_at_once(prod: Prod) -> None:
    intervals = job_intervals(prod.stack)
    assert all(intervals.values()), "every job has finished"
    most = peak(list(intervals.values()))
    TIMINGS["peak_jobs"] = most
    assert 2 <= most <= POOL_SLOTS, f"peak {most} SageMaker jobs at once (pool {POOL_SLOTS})"


def test_reprocessing_the_finished_backfills_starts_no_sagemaker_job(prod: Prod) -> None:
    before = set(job_intervals(prod.stack))
    versions_before = len(versions(prod.stack, GROUP))
    # A reprocessed run clears and re-runs every task under the scheduler: the last two dates
    # (one round at --max-active-runs 2) show it as well as all five, in the suite's long pole.
    recent = DATES[-MAX_ACTIVE_RUNS:]
    backfill(prod, TRAIN, FAST, reprocess="completed", dates=recent)
    batch_conf = {**FAST, "model_selection": "as_of_run_date"}
    backfill(prod, BATCH, batch_conf, reprocess="completed", dates=recent)
    assert set(job_intervals(prod.stack)) == before, "no new SageMaker job"
    assert len(versions(prod.stack, GROUP)) == versions_before, "no new model version"
    notified = prod.targets.drain(prod.targets.queue_url)
    assert [m for m in notified if m["event"] == "new_version"] == [], "nothing new to announce"
    print(f"backfill wall times and peak jobs: {TIMINGS}")


def test_an_upstream_asset_event_starts_one_dated_training_run(prod: Prod) -> None:
    """The ETL DAG's Asset event (here posted through the REST API, as its outlet would) runs
    the retrain DAG, which starts the training run for the event's run date; a second event
    for the same date starts nothing."""
    ds = "1996-04-01"
    (asset,) = prod.get(f"assets?name_pattern={UPSTREAM}")["assets"]
    event = {"asset_id": asset["id"], "extra": {"run_date": ds}}
    base = prod.airflow.base_url

    def dispatched(count: int):
        def check() -> list[dict] | None:
            runs = prod.get(f"dags/{RETRAIN}/dagRuns")["dag_runs"]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            return done if len(done) >= count else None

        return check

    assert rest(f"{base}/api/v2/assets/events", "POST", event, prod.token) is not None
    (first,) = _until("the retrain run", dispatched(1), 240)
    assert (first["state"], first["run_type"]) == ("success", "asset_triggered")
    run = f"dags/{TRAIN}/dagRuns/retrain__{ds}"
    _until("the triggered training run", lambda: prod.get(run)["state"] in ("success", "failed"),
           600)  # fmt: skip
    triggered = prod.get(run)
    assert triggered["logical_date"].startswith(ds)
    # The interval a manual run for ds has (it ends at ds), not one ending today.
    assert triggered["data_interval_end"].startswith(ds), triggered["data_interval_end"]
    assert prod.get(run)["state"] == "success", failed_tasks(prod, TRAIN, prod.get(run))
    dates = [v["CustomerMetadataProperties"]["run_date"] for v in versions(prod.stack, GROUP)]
    assert dates.count(ds) == 1
    assert rest(f"{base}/api/v2/assets/events", "POST", event, prod.token) is not None
    second = max(_until("the second retrain run", dispatched(2), 240), key=lambda r: r["run_after"])
    trains = prod.get(f"dags/{RETRAIN}/dagRuns/{second['dag_run_id']}/taskInstances/train")
    assert trains["state"] == "skipped", "the date already has its training run"


def test_the_sensor_holds_the_run_until_the_days_data_lands(prod: Prod) -> None:
    """The day's orders are not visible yet: the sensor reschedules (one try, no worker held);
    once they land it releases the run."""
    # A manual run for ds covers the day before it (its interval ends at ds): that day's
    # orders are what the sensor waits for.
    ds, day = "1996-06-10", date(1996, 6, 9)
    prod.stack.set_presto_visible_up_to(day - timedelta(days=1))
    run = rest(
        f"{prod.airflow.base_url}/api/v2/dags/{TRAIN}/dagRuns",
        "POST",
        {"logical_date": f"{ds}T00:00:00Z", "conf": FAST},
        prod.token,
    )
    sensor = f"dags/{TRAIN}/dagRuns/{run['dag_run_id']}/taskInstances/wait_for_data"
    seen: list[str] = []

    def state(wanted: str):
        def check() -> bool:
            seen.append(prod.get(sensor)["state"])
            return seen[-1] == wanted

        return check

    _until("the sensor to reschedule", state("up_for_reschedule"), 180)
    time.sleep(25)  # one more poke, still nothing
    assert prod.get(sensor)["state"] == "up_for_reschedule"
    prod.stack.set_presto_visible_up_to(day)
    _until("the sensor to release the run", state("success"), 120)
    instance = prod.get(sensor)
    assert instance["try_number"] == 1, "rescheduling is not retrying"
    assert "failed" not in seen
