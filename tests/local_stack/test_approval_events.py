"""Approvals made outside Airflow: the registry's EventBridge events through a real rule and SQS
queue on the local AWS endpoint (SageMaker runtime + moto), read by the Amazon provider's real
``SqsSensorTrigger`` and parsed back by ``mlops_sagemaker.approval_events``."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest

from local_stack.sagemaker_runtime import registry_events
from mlops_sagemaker.approval_events import (
    DETAIL_TYPE,
    SOURCE,
    approved_versions,
    ensure_approval_events,
    rule_name,
    rule_pattern,
)

ACCOUNT = "123456789012"  # the runtime's (and moto's default) account
AWS_REGION = "us-east-1"  # the aws_client fixture's
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1"
MUTATING = {"CreateQueue", "SetQueueAttributes", "TagQueue", "PutRule", "PutTargets"}


@pytest.fixture
def clients(aws_client) -> dict[str, Any]:
    return {s: aws_client(s) for s in ("sagemaker", "events", "sqs")}


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def setup(clients) -> dict[str, str]:
    """A fresh group and its approval rule + queue (the endpoint is shared by the session)."""
    short, group = _unique("ae"), _unique("approvals-group")
    clients["sagemaker"].create_model_package_group(ModelPackageGroupName=group)
    url = ensure_approval_events(
        clients["events"], clients["sqs"], short_name=short, group=group, tags={"team": "ml"}
    )
    return {"short_name": short, "group": group, "queue_url": url}


def _register(sm: Any, group: str, status: str = "PendingManualApproval") -> str:
    return sm.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://b/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )["ModelPackageArn"]


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message in the queue now (received and deleted)."""
    out: list[dict[str, Any]] = []
    while True:
        page = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = page.get("Messages", [])
        if not messages:
            return out
        out += messages
        for m in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_setup_is_idempotent(clients, setup, local_aws) -> None:
    events, sqs = clients["events"], clients["sqs"]
    name = rule_name(setup["short_name"])
    local_aws.recorder.clear()
    again = ensure_approval_events(
        events, sqs, short_name=setup["short_name"], group=setup["group"], tags={"team": "ml"}
    )
    second_run = {c["operation"] for c in local_aws.recorder.calls()}
    assert again == setup["queue_url"]
    assert second_run and not second_run & MUTATING, f"the second run changed {second_run}"
    rules = events.list_rules(NamePrefix=name)["Rules"]
    assert [r["Name"] for r in rules] == [name]
    assert json.loads(rules[0]["EventPattern"]) == rule_pattern(setup["group"])
    queue = sqs.get_queue_attributes(QueueUrl=again, AttributeNames=["All"])["Attributes"]
    targets = events.list_targets_by_rule(Rule=name)["Targets"]
    assert [t["Arn"] for t in targets] == [queue["QueueArn"]]
    statements = json.loads(queue["Policy"])["Statement"]
    assert len(statements) == 1
    assert statements[0]["Principal"] == {"Service": "events.amazonaws.com"}
    assert statements[0]["Condition"] == {"ArnEquals": {"aws:SourceArn": rules[0]["Arn"]}}
    assert sqs.list_queue_tags(QueueUrl=again)["Tags"] == {"team": "ml"}


def test_approving_a_version_puts_one_eventbridge_message(clients, setup) -> None:
    sm, sqs = clients["sagemaker"], clients["sqs"]
    arn = _register(sm, setup["group"])
    assert _drain(sqs, setup["queue_url"]) == [], "a pending version is no approval"
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    messages = _drain(sqs, setup["queue_url"])
    assert len(messages) == 1
    event = json.loads(messages[0]["Body"])
    assert (event["source"], event["detail-type"]) == (SOURCE, DETAIL_TYPE)
    assert (event["account"], event["region"], event["resources"]) == (ACCOUNT, AWS_REGION, [arn])
    described = sm.describe_model_package(ModelPackageName=arn)
    detail = event["detail"]
    assert detail["ModelPackageGroupName"] == setup["group"]
    assert (detail["ModelPackageArn"], detail["ModelApprovalStatus"]) == (arn, "Approved")
    assert detail["ModelPackageVersion"] == described["ModelPackageVersion"] == 1
    assert detail["CreationTime"] == described["CreationTime"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert detail["InferenceSpecification"] == described["InferenceSpecification"]


def test_rejections_and_other_groups_send_nothing(clients, setup) -> None:
    sm, sqs = clients["sagemaker"], clients["sqs"]
    rejected = _register(sm, setup["group"])
    sm.update_model_package(ModelPackageArn=rejected, ModelApprovalStatus="Rejected")
    other = _unique("other-group")
    sm.create_model_package_group(ModelPackageGroupName=other)
    sm.update_model_package(ModelPackageArn=_register(sm, other), ModelApprovalStatus="Approved")
    _register(sm, other, status="Approved")
    # Setting the status it already has is no change; a version created Approved is one.
    approved = _register(sm, setup["group"], status="Approved")
    sm.update_model_package(ModelPackageArn=approved, ModelApprovalStatus="Approved")
    bodies = [json.loads(m["Body"]) for m in _drain(sqs, setup["queue_url"])]
    assert [b["detail"]["ModelPackageArn"] for b in bodies] == [approved]


def test_emission_failures_never_fail_the_sagemaker_call(clients, setup, monkeypatch, caplog):
    def broken(*args: object) -> None:
        raise RuntimeError("event bus down")

    monkeypatch.setattr(registry_events, "_deliver", broken)
    arn = _register(clients["sagemaker"], setup["group"])
    with caplog.at_level(logging.ERROR, logger=registry_events.__name__):
        clients["sagemaker"].update_model_package(
            ModelPackageArn=arn, ModelApprovalStatus="Approved"
        )
    status = clients["sagemaker"].describe_model_package(ModelPackageName=arn)
    assert status["ModelApprovalStatus"] == "Approved"
    assert f"Could not emit the {DETAIL_TYPE} event of {arn}" in caplog.text
    assert "event bus down" in caplog.text


async def _first_event(trigger: Any, timeout: float) -> Any:
    runs = trigger.run()
    try:
        return await asyncio.wait_for(anext(runs), timeout)
    finally:
        await runs.aclose()


def test_sqs_sensor_trigger_yields_the_approval(clients, setup, airflow_aws_connection) -> None:
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

    sm, sqs = clients["sagemaker"], clients["sqs"]
    arn = _register(sm, setup["group"])
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    trigger = SqsSensorTrigger(
        sqs_queue=setup["queue_url"], aws_conn_id="aws_default", waiter_delay=1
    )
    event = asyncio.run(_first_event(trigger, timeout=60))
    assert event.payload["status"] == "success"
    [message] = event.payload["message_batch"]
    assert json.loads(message["Body"])["detail"]["ModelPackageArn"] == arn
    assert _drain(sqs, setup["queue_url"]) == [], "the trigger deletes what it received"
    # What AssetWatcher records as the Asset event's extra (airflow.models.trigger.submit_event)
    extra = json.loads(json.dumps({"from_trigger": True, "payload": event.payload}))
    assert approved_versions([extra]) == [arn]
    assert approved_versions([extra], group=setup["group"]) == [arn]
    assert approved_versions([extra], group="another-group") == []
