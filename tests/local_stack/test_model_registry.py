"""Model selection and approval (``mlops_sagemaker.model_registry``) against the local AWS
endpoint's Model Registry, through real boto3 (and Airflow's SageMaker/S3 hooks for the sensor
and the approval operator)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from airflow.providers.standard.operators import hitl
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowSkipException, DownstreamTasksSkipped, TaskAwaitingInput

from mlops_sagemaker.failures import classify
from mlops_sagemaker.model_registry import (
    ModelApprovalSensor,
    ModelChoice,
    ModelVersion,
    NoModelVersion,
    RegistryApprovalOperator,
    approval_body,
    auto_approve,
    describe_version,
    select_model,
    set_approval,
)

REGION = "us-east-1"  # the aws_client fixture's region
BUCKET = "model-registry-tests"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1"
_names = itertools.count(1)


@pytest.fixture
def sm(aws_client):
    return aws_client("sagemaker")


@pytest.fixture
def group(sm) -> str:
    """A fresh, empty model package group (the endpoint is shared by the session)."""
    name = f"registry-test-{next(_names)}-{uuid.uuid4().hex[:6]}"
    sm.create_model_package_group(ModelPackageGroupName=name)
    return name


def register(
    sm: Any,
    group: str,
    status: str,
    run_date: str | None,
    auc: float | None = 0.75,
    evaluation_uri: str = "s3://fake-bucket/eval/evaluation.json",
) -> str:
    """Register a version the way the training DAG does (fake S3 URIs: nothing reads them)."""
    props = {"use_case": "test", "gate_threshold": "0.7", "registration_key": uuid.uuid4().hex}
    if run_date:
        props["run_date"] = run_date
    if auc is not None:
        props["test_auc"] = f"{auc:.6f}"
    return sm.create_model_package(
        ModelPackageGroupName=group,
        ModelPackageDescription=f"test | run {run_date}",
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://fake-bucket/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        ModelMetrics={
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}
            }
        },
        DriftCheckBaselines={
            "ModelDataQuality": {
                "Statistics": {
                    "ContentType": "application/json",
                    "S3Uri": "s3://fake-bucket/baseline/baseline.json",
                }
            }
        },
        CustomerMetadataProperties=props,
    )["ModelPackageArn"]


def status_of(sm: Any, arn: str) -> tuple[str, str]:
    described = sm.describe_model_package(ModelPackageName=arn)
    return described["ModelApprovalStatus"], described.get("ApprovalDescription", "")


def select(sm: Any, group: str, selection: str, ds: str = "1996-06-01", **kw: Any) -> ModelChoice:
    return select_model(sm, group=group, selection=selection, ds=ds, **kw)


def arns(choice: ModelChoice) -> tuple[str | None, str | None]:
    return (
        choice.approved.arn if choice.approved else None,
        choice.pending.arn if choice.pending else None,
    )


# --------------------------------------------------------------------------- describe


def test_describe_version_reads_metadata_metrics_and_uris(sm, group):
    arn = register(sm, group, "Approved", "1996-02-29", auc=0.781234)

    version = describe_version(sm, arn)

    assert version == describe_version(sm, (group, 1))
    assert (version.arn, version.group, version.version) == (arn, group, 1)
    assert (version.status, version.run_date) == ("Approved", "1996-02-29")
    assert version.metrics == {"auc": pytest.approx(0.781234)}
    assert version.evaluation_uri == "s3://fake-bucket/eval/evaluation.json"
    assert version.baseline_uri == "s3://fake-bucket/baseline/baseline.json"
    assert dt.datetime.fromisoformat(version.created).tzinfo is not None
    assert ModelVersion.from_xcom(json.loads(json.dumps(version.as_xcom()))) == version


# --------------------------------------------------------------------------- selection


def test_latest_approved_with_and_without_pending(sm, group):
    register(sm, group, "Approved", "1996-01-31")
    v2 = register(sm, group, "Approved", "1996-02-29")
    register(sm, group, "Rejected", "1996-03-15")
    v4 = register(sm, group, "PendingManualApproval", "1996-03-31")

    assert arns(select(sm, group, "latest_approved")) == (v2, None)
    choice = select(sm, group, "latest_approved", consider_pending=True)
    assert arns(choice) == (v2, v4)
    assert choice.to_use.arn == v4
    again = ModelChoice.from_xcom(json.loads(json.dumps(choice.as_xcom())))
    assert again == choice


def test_pending_older_than_the_approved_version_is_not_a_candidate(sm, group):
    register(sm, group, "PendingManualApproval", "1996-01-31")
    v2 = register(sm, group, "Approved", "1996-02-29")

    choice = select(sm, group, "latest_approved", consider_pending=True)

    assert arns(choice) == (v2, None)
    assert choice.to_use.arn == v2


def test_pending_alone_is_used_only_with_consider_pending(sm, group):
    v1 = register(sm, group, "PendingManualApproval", "1996-01-31")

    assert arns(select(sm, group, "latest_approved", consider_pending=True)) == (None, v1)
    with pytest.raises(NoModelVersion) as err:
        select(sm, group, "latest_approved")
    message = str(err.value)
    assert message.startswith(f"model package group '{group}' has no Approved version")
    assert "1 version(s): 1 PendingManualApproval" in message
    assert "v1 PendingManualApproval run_date 1996-01-31" in message
    assert "batch_inference.approval.mode" in message


def test_as_of_run_date_picks_the_version_of_each_date(sm, group):
    v1 = register(sm, group, "Approved", "1996-01-31")
    v2 = register(sm, group, "Approved", "1996-02-29")
    register(sm, group, "Approved", None)  # newest, but without run_date: ignored
    v4 = register(sm, group, "PendingManualApproval", "1996-03-31")

    assert select(sm, group, "as_of_run_date", ds="1996-02-15").approved.arn == v1
    assert select(sm, group, "as_of_run_date", ds="1996-02-29").approved.arn == v2
    assert select(sm, group, "as_of_run_date", ds="1996-03-10").approved.arn == v2
    # The pending candidate obeys the same rule: its run date must not be after ds.
    assert arns(select(sm, group, "as_of_run_date", ds="1996-03-10", consider_pending=True)) == (
        v2,
        None,
    )
    assert arns(select(sm, group, "as_of_run_date", ds="1996-04-01", consider_pending=True)) == (
        v2,
        v4,
    )
    with pytest.raises(NoModelVersion) as err:
        select(sm, group, "as_of_run_date", ds="1996-01-01")
    message = str(err.value)
    assert message.startswith(
        f"no Approved version of model package group '{group}' has run_date <= 1996-01-01"
    )
    assert "1 Approved version(s) have no run_date metadata and were ignored" in message
    assert "3 Approved, 1 PendingManualApproval" in message
    assert "v3 Approved run_date (none)" in message


def test_as_of_run_date_follows_run_dates_not_registration_order(sm, group):
    """A backfill run backwards registers 1996-02 after 1996-03: each date still gets the model
    trained for the latest run date on or before it."""
    march = register(sm, group, "Approved", "1996-03-31")
    february = register(sm, group, "Approved", "1996-02-29")
    assert select(sm, group, "as_of_run_date", ds="1996-04-15").approved.arn == march
    assert select(sm, group, "as_of_run_date", ds="1996-03-15").approved.arn == february


def test_pinned_by_number_and_by_arn(sm, group, aws_client):
    v1 = register(sm, group, "Approved", "1996-01-31")
    v2 = register(sm, group, "PendingManualApproval", "1996-02-29")
    v3 = register(sm, group, "Rejected", "1996-03-31")

    assert arns(select(sm, group, "pinned", pinned="1")) == (v1, None)
    assert arns(select(sm, group, "pinned", pinned=v1)) == (v1, None)
    assert arns(select(sm, group, "pinned", pinned="2", consider_pending=True)) == (None, v2)
    with pytest.raises(NoModelVersion, match=r"pinned version 2 \(run date 1996-02-29\).*is "):
        select(sm, group, "pinned", pinned=v2)
    with pytest.raises(NoModelVersion, match="is Rejected"):
        select(sm, group, "pinned", pinned=v3, consider_pending=True)
    with pytest.raises(NoModelVersion, match=f"'{group}' has no version 9"):
        select(sm, group, "pinned", pinned="9")
    with pytest.raises(NoModelVersion, match="was not found"):
        select(sm, group, "pinned", pinned=v1.rsplit("/", 1)[0] + "/99")
    with pytest.raises(NoModelVersion, match="neither a version number nor"):
        select(sm, group, "pinned", pinned="latest")


def test_pinned_arn_of_another_group_is_refused(sm, group):
    other = f"{group}-other"
    sm.create_model_package_group(ModelPackageGroupName=other)
    foreign = register(sm, other, "Approved", "1996-01-31")

    with pytest.raises(NoModelVersion, match=f"belongs to model package group '{other}'"):
        select(sm, group, "pinned", pinned=foreign)


def test_missing_and_empty_groups_say_so(sm, group):
    with pytest.raises(NoModelVersion) as missing:
        select(sm, "no-such-group", "latest_approved")
    assert str(missing.value).startswith("model package group 'no-such-group' does not exist")
    assert "training DAG creates it on its first registration" in str(missing.value)
    verdict = classify(missing.value)
    assert (verdict.kind.value, verdict.category) == ("permanent", "model-selection")

    with pytest.raises(NoModelVersion, match="The group has no versions yet"):
        select(sm, group, "latest_approved", consider_pending=True)


def test_selection_pages_through_versions_and_describes_only_what_it_needs(sm, group, local_aws):
    first = register(sm, group, "Approved", "1996-01-01")
    for day in range(2, 14):  # more than the list call's default page of 10
        register(sm, group, "Approved", f"1996-01-{day:02d}")

    def operations(run: Callable[[], ModelChoice]) -> tuple[ModelChoice, list[str]]:
        recorded = len(local_aws.recorder.calls())
        choice = run()
        return choice, [c["operation"] for c in local_aws.recorder.calls()[recorded:]]

    newest, calls = operations(lambda: select(sm, group, "latest_approved"))
    assert (newest.approved.version, calls) == (13, ["ListModelPackages", "DescribeModelPackage"])

    oldest, calls = operations(lambda: select(sm, group, "as_of_run_date", ds="1996-01-01"))
    assert oldest.approved.arn == first
    assert calls.count("ListModelPackages") == 2  # the oldest is on the second page
    assert calls.count("DescribeModelPackage") == 13


# --------------------------------------------------------------------------- approval


def test_auto_approve_passes_the_gate_and_records_why(sm, group):
    arn = register(sm, group, "PendingManualApproval", "1996-02-29", auc=0.78)
    version = describe_version(sm, arn)

    approved, reason = auto_approve(sm, version, metric="auc", threshold=0.7, approver="dag x")

    assert approved is True
    assert (
        reason == "Auto-approved by dag x: registered test auc 0.780000 >= gate threshold 0.700000"
    )
    assert status_of(sm, arn) == ("Approved", reason)


def test_auto_approve_below_the_gate_leaves_the_version_pending(sm, group):
    arn = register(sm, group, "PendingManualApproval", "1996-02-29", auc=0.65)
    no_metric = register(sm, group, "PendingManualApproval", "1996-03-31", auc=None)

    approved, reason = auto_approve(
        sm, describe_version(sm, arn), metric="auc", threshold=0.7, approver="dag x"
    )
    assert approved is False
    assert "test auc 0.650000 < gate threshold 0.700000" in reason
    assert status_of(sm, arn) == ("PendingManualApproval", reason)

    approved, reason = auto_approve(
        sm, describe_version(sm, no_metric), metric="auc", threshold=0.7, approver="dag x"
    )
    assert approved is False
    assert "has no registered test_auc" in reason
    assert status_of(sm, no_metric) == ("PendingManualApproval", reason)


def test_auto_approve_never_overrides_a_person(sm, group):
    arn = register(sm, group, "Rejected", "1996-02-29", auc=0.99)

    approved, _ = auto_approve(
        sm, describe_version(sm, arn), metric="auc", threshold=0.7, approver="dag x"
    )

    assert approved is False
    assert status_of(sm, arn)[0] == "Rejected"


def test_set_approval_fits_the_description_into_the_api_limit(sm, group):
    arn = register(sm, group, "PendingManualApproval", "1996-02-29")

    set_approval(sm, arn, "Rejected", "x" * 2000)

    status, description = status_of(sm, arn)
    assert status == "Rejected"
    assert len(description) == 1024
    assert description.endswith("…")
    with pytest.raises(ValueError, match="must be Approved or Rejected"):
        set_approval(sm, arn, "PendingManualApproval", "no")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registry-mode wait


def test_model_approval_sensor_pokes(sm, group, airflow_aws_connection):
    arn = register(sm, group, "PendingManualApproval", "1996-02-29")
    sensor = ModelApprovalSensor(task_id="wait_for_approval", model_package_arn=arn)
    assert sensor.mode == "reschedule"

    assert sensor.poke({}) is False
    set_approval(sm, arn, "Approved", "looks good")
    assert sensor.poke({}) is True
    set_approval(sm, arn, "Rejected", "drifted features, retrain first")
    with pytest.raises(AirflowSkipException, match="drifted features, retrain first"):
        sensor.poke({})
    nothing_pending = ModelApprovalSensor(task_id="wait_for_none", model_package_arn="")
    assert nothing_pending.poke({}) is True


# --------------------------------------------------------------------------- Airflow-mode approval


class FakeTaskInstance:
    """The few task-instance members the approval operator and its parent use."""

    dag_id, run_id, task_id, map_index = "batch_dag", "scheduled__1996-03-01", "approve", -1

    def __init__(self, choice: dict[str, Any]) -> None:
        self.id = uuid.uuid4()
        self.choice = choice
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str) -> Any:
        assert task_ids == "choose_model"
        return self.choice

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = json.loads(json.dumps(value))  # must be JSON, like a real XCom


def approval_task() -> RegistryApprovalOperator:
    with DAG("approval_test", schedule=None):
        operator = RegistryApprovalOperator(
            task_id="approve", choice_task_id="choose_model", metric="auc", threshold=0.7
        )
        operator >> EmptyOperator(task_id="score")
    return operator


def answer(option: str) -> dict[str, Any]:
    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": dt.datetime(1996, 3, 1, 9, 30, tzinfo=dt.UTC),
        "responded_by_user": {"id": "alice", "name": "Alice"},
        "timedout": False,
    }


def test_approval_without_candidate_asks_nothing(sm, group, airflow_aws_connection):
    arn = register(sm, group, "Approved", "1996-02-29")
    ti = FakeTaskInstance(select(sm, group, "latest_approved", consider_pending=True).as_xcom())

    result = approval_task().execute({"ti": ti})

    assert result["decision"] == "already_approved"
    assert result["model_package_arn"] == arn


def test_approval_asks_with_the_evaluation_in_the_body(
    sm, group, airflow_aws_connection, aws_client, monkeypatch
):
    evaluation = {
        "binary_classification_metrics": {"auc": {"value": 0.8123, "standard_deviation": "NaN"}},
        "baseline": {"majority_class": 0, "accuracy": 0.62, "auc": 0.5},
    }
    s3 = aws_client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    key = f"{group}/evaluation.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(evaluation))
    register(sm, group, "Approved", "1996-01-31", auc=0.77)
    register(sm, group, "PendingManualApproval", "1996-02-29", 0.81, f"s3://{BUCKET}/{key}")
    written: dict[str, Any] = {}
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: written.update(kw))
    ti = FakeTaskInstance(select(sm, group, "latest_approved", consider_pending=True).as_xcom())

    with pytest.raises(TaskAwaitingInput):
        approval_task().execute({"ti": ti, "task_instance": ti})

    assert (
        written["subject"]
        == f"Approve model version 2 (run date 1996-02-29) of {group} for batch scoring?"
    )
    assert "| auc | 0.8123 | 0.5000 | 0.7700 |" in written["body"]
    assert "registered test auc 0.7700; this version 0.8100 (+0.0400)" in written["body"]
    assert written["options"] == ["Approve", "Reject"]


@pytest.mark.parametrize(("option", "status"), [("Approve", "Approved"), ("Reject", "Rejected")])
def test_approval_answer_goes_to_the_registry(sm, group, airflow_aws_connection, option, status):
    register(sm, group, "Approved", "1996-01-31")
    candidate = register(sm, group, "PendingManualApproval", "1996-02-29")
    ti = FakeTaskInstance(select(sm, group, "latest_approved", consider_pending=True).as_xcom())
    operator = approval_task()
    run: Callable[[], Any] = lambda: operator.execute_complete(  # noqa: E731
        {"ti": ti, "task": operator}, answer(option)
    )

    if option == "Approve":
        result = run()
    else:
        with pytest.raises(DownstreamTasksSkipped) as skipped:
            run()
        assert skipped.value.tasks == ["score"]
        result = ti.pushed["return_value"]

    assert status_of(sm, candidate) == (
        status,
        f"{status} in Airflow by Alice (alice) on 1996-03-01T09:30:00+00:00 "
        "(DAG batch_dag, run scheduled__1996-03-01, task approve)",
    )
    assert result["decision"] == status.lower()
    assert (result["version"]["arn"], result["version"]["status"]) == (candidate, status)
    assert result["model_package_arn"] == (candidate if option == "Approve" else None)


# --------------------------------------------------------------------------- pure parts

EVALUATION = {
    "binary_classification_metrics": {
        "auc": {"value": 0.8123, "standard_deviation": "NaN"},
        "accuracy": {"value": 0.71, "standard_deviation": "NaN"},
        "f1": {"value": 0.52, "standard_deviation": "NaN"},
    },
    "baseline": {"majority_class": 0, "accuracy": 0.62, "f1": 0.0, "auc": 0.5},
}


def made_up(number: int, status: str, auc: float | None, run_date: str = "1996-02-29"):
    return ModelVersion(
        arn=f"arn:aws:sagemaker:us-east-1:123456789012:model-package/g/{number}",
        group="g",
        version=number,
        status=status,
        run_date=run_date,
        metrics={} if auc is None else {"auc": auc},
        created="1996-03-01T00:00:00+00:00",
        evaluation_uri="s3://bucket/evaluation.json",
        baseline_uri=None,
        description=f"use case | run {run_date}",
    )


def test_from_description_keeps_numeric_test_metrics_only():
    described = {
        "ModelPackageArn": "arn:aws:sagemaker:us-east-1:1:model-package/g/7",
        "ModelPackageGroupName": "g",
        "ModelPackageVersion": 7,
        "ModelApprovalStatus": "Approved",
        "CreationTime": dt.datetime(1996, 3, 1, tzinfo=dt.UTC),
        "CustomerMetadataProperties": {
            "test_auc": "0.781234",
            "test_f1": "n/a (edited by hand)",
            "rows_test": "1200",
            "gate_threshold": "0.7",
        },
    }

    parsed = ModelVersion.from_description(described)

    assert parsed.metrics == {"auc": pytest.approx(0.781234)}
    assert (parsed.run_date, parsed.evaluation_uri, parsed.baseline_uri) == (None, None, None)
    assert parsed.created == "1996-03-01T00:00:00+00:00"


def test_choice_to_use_prefers_the_pending_candidate():
    approved, pending = made_up(2, "Approved", 0.77), made_up(4, "PendingManualApproval", 0.81)

    assert ModelChoice("latest_approved", approved, pending).to_use == pending
    assert ModelChoice("latest_approved", approved, None).to_use == approved
    with pytest.raises(NoModelVersion):
        _ = ModelChoice("latest_approved", None, None).to_use


def test_approval_body_compares_with_baseline_gate_and_approved_version():
    body = approval_body(
        made_up(4, "PendingManualApproval", 0.8123),
        EVALUATION,
        made_up(2, "Approved", 0.77, "1996-01-31"),
        metric="auc",
        threshold=0.7,
    )

    assert body.startswith("### Model version 4 of `g`\n")
    assert "- Run date: 1996-02-29; registered 1996-03-01T00:00:00+00:00" in body
    assert "| metric | v4 | majority-class baseline | approved v2 |" in body
    assert "| auc | 0.8123 | 0.5000 | 0.7700 |" in body
    assert "| accuracy | 0.7100 | 0.6200 | — |" in body
    assert "| f1 | 0.5200 | 0.0000 | — |" in body
    assert "precision" not in body  # not in this evaluation.json
    assert "**Gate**: registered test auc 0.8123 >= threshold 0.7000: passes." in body
    assert "version 2 (run date 1996-01-31)" in body
    assert "registered test auc 0.7700; this version 0.8123 (+0.0423)" in body


def test_approval_body_without_evaluation_or_approved_version():
    body = approval_body(
        made_up(1, "PendingManualApproval", 0.66), None, None, metric="auc", threshold=0.7
    )

    assert "| auc | 0.6600 | — | — |" in body
    assert "**Gate**: registered test auc 0.6600 < threshold 0.7000: **fails**." in body
    assert "**Currently approved**: none. Approving makes this the first version" in body

    unregistered = approval_body(
        made_up(1, "PendingManualApproval", None), None, made_up(2, "Approved", 0.7),
        metric="auc", threshold=0.7,
    )  # fmt: skip
    assert "**Gate**: no test auc is registered (threshold 0.7000)." in unregistered
    assert "not comparable (not registered for both)" in unregistered


# --------------------------------------------------------------------------- batch approval steps


def test_auto_mode_below_the_gate_keeps_the_approved_version_scoring(sm, group):
    """``approve.auto`` then ``approve.version`` (batch_tasks) with the shipped gate (auc 0.7):
    a pending version below it stays pending, with the reason, and the approved one scores."""
    from pathlib import Path

    from mlops_sagemaker.batch_tasks import approve_automatically, version_to_use
    from mlops_sagemaker.config import load_use_case

    config = load_use_case(Path(__file__).resolve().parents[2] / "include/config/tpch_orders.yaml")
    approved = register(sm, group, "Approved", "1996-01-31", auc=0.75)
    weak = register(sm, group, "PendingManualApproval", "1996-02-29", auc=0.61)
    choice = select(sm, group, "latest_approved", consider_pending=True)
    assert arns(choice) == (approved, weak)

    decision = approve_automatically(sm, config, choice, "run-1")
    assert decision.startswith("version 2 left pending")
    described = sm.describe_model_package(ModelPackageName=weak)
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert "0.61" in described["ApprovalDescription"]
    assert version_to_use(sm, choice).arn == approved

    alone = ModelChoice("latest_approved", None, choice.pending)
    with pytest.raises(NoModelVersion, match="version 2, is PendingManualApproval"):
        version_to_use(sm, alone)


def test_auto_mode_passing_the_gate_scores_with_the_new_version(sm, group):
    from pathlib import Path

    from mlops_sagemaker.batch_tasks import approve_automatically, version_to_use
    from mlops_sagemaker.config import load_use_case

    config = load_use_case(Path(__file__).resolve().parents[2] / "include/config/tpch_orders.yaml")
    register(sm, group, "Approved", "1996-01-31", auc=0.75)
    strong = register(sm, group, "PendingManualApproval", "1996-02-29", auc=0.81)
    choice = select(sm, group, "latest_approved", consider_pending=True)
    assert approve_automatically(sm, config, choice, "run-2").startswith("version 2 approved")
    chosen = version_to_use(sm, choice)
    assert (chosen.arn, chosen.status) == (strong, "Approved")
