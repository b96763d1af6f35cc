"""The pure parts of ``mlops_sagemaker.approval_events`` (pattern, names, queue policy, reading
the SQS watcher's Asset events) and its command line against a moto server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from mlops_sagemaker.approval_events import (
    DETAIL_TYPE,
    SOURCE,
    approved_versions,
    main,
    queue_name,
    queue_policy,
    rule_name,
    rule_pattern,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "include" / "config" / "tpch_orders.yaml"
GROUP = "tpch-orders-late-delivery"  # the shipped config's group
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:tpch-ord-approvals"
RULE_ARN = "arn:aws:events:us-east-1:123456789012:rule/tpch-ord-approvals"


def _arn(version: int, group: str = GROUP) -> str:
    return f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{group}/{version}"


def _event(version: int, status: str = "Approved", group: str = GROUP) -> dict[str, Any]:
    """An EventBridge event as SageMaker's documented example (trimmed) shapes it."""
    return {
        "version": "0",
        "id": f"id-{version}",
        "detail-type": DETAIL_TYPE,
        "source": SOURCE,
        "account": "123456789012",
        "time": "2021-02-24T17:00:14Z",
        "region": "us-east-1",
        "resources": [_arn(version, group)],
        "detail": {
            "ModelPackageGroupName": group,
            "ModelPackageVersion": version,
            "ModelPackageArn": _arn(version, group),
            "CreationTime": "2021-02-24T17:00:14Z",
            "ModelPackageStatus": "Completed",
            "ModelApprovalStatus": status,
        },
    }


def _message(body: Any) -> dict[str, Any]:
    text = body if isinstance(body, str) else json.dumps(body)
    return {"MessageId": "m", "ReceiptHandle": "r", "MD5OfBody": "x", "Body": text}


def _extra(*messages: dict[str, Any]) -> dict[str, Any]:
    """An Asset event's extra as AssetWatcher records an SqsSensorTrigger event."""
    payload = {"status": "success", "message_batch": list(messages)}
    return {"from_trigger": True, "payload": payload}


def test_rule_pattern_is_the_groups_approvals() -> None:
    assert rule_pattern("g1") == {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": ["g1"], "ModelApprovalStatus": ["Approved"]},
    }


def test_names_derive_from_the_short_name() -> None:
    assert queue_name("tpch-ord") == "tpch-ord-approvals" == QUEUE_ARN.rsplit(":", 1)[1]
    assert rule_name("tpch-ord") == "tpch-ord-approvals" == RULE_ARN.rsplit("/", 1)[1]


def test_queue_policy_lets_only_the_rule_send_and_keeps_other_statements() -> None:
    other = {"Sid": "Ops", "Effect": "Allow", "Principal": "*", "Action": "sqs:GetQueueUrl"}
    stale = {"Sid": "ApprovalEventsFromEventBridge", "Condition": {"ArnEquals": {}}}
    current = {"Version": "2012-10-17", "Id": "mine", "Statement": [other, stale]}
    policy = queue_policy(QUEUE_ARN, RULE_ARN, current)
    assert policy["Id"] == "mine" and policy["Statement"][0] == other
    ours = policy["Statement"][1]
    assert len(policy["Statement"]) == 2
    assert ours["Principal"] == {"Service": "events.amazonaws.com"}
    assert (ours["Action"], ours["Resource"]) == ("sqs:SendMessage", QUEUE_ARN)
    assert ours["Condition"] == {"ArnEquals": {"aws:SourceArn": RULE_ARN}}
    assert queue_policy(QUEUE_ARN, RULE_ARN, policy) == policy, "setting it again changes nothing"
    assert queue_policy(QUEUE_ARN, RULE_ARN)["Version"] == "2012-10-17"


def test_approved_versions_reads_the_sqs_watchers_extras() -> None:
    extras = [_extra(_message(_event(3)), _message(_event(4))), _extra(_message(_event(5)))]
    assert approved_versions(extras) == [_arn(3), _arn(4), _arn(5)]
    assert approved_versions(extras, group=GROUP) == [_arn(3), _arn(4), _arn(5)]


def test_approved_versions_skips_other_statuses_groups_and_repeats() -> None:
    extra = _extra(
        _message(_event(1, status="Rejected")),
        _message(_event(2, status="PendingManualApproval")),
        _message(_event(7, group="someone-elses-models")),
        _message(_event(3)),
        _message(_event(3)),  # SQS delivers at least once; SageMaker may send an event twice
    )
    assert approved_versions([extra], group=GROUP) == [_arn(3)]
    assert approved_versions([extra]) == [_arn(7, "someone-elses-models"), _arn(3)]


def test_approved_versions_logs_malformed_messages(caplog) -> None:
    other_event = {**_event(1), "detail-type": "SageMaker Endpoint State Change"}
    no_arn = _event(2)
    no_arn["detail"].pop("ModelPackageArn")
    extras = [
        _extra(_message("not json {"), _message(other_event), _message(no_arn), {"Body": None}),
        {"from_trigger": True, "payload": {"status": "success"}},
        {"from_trigger": True, "payload": "garbage"},
        _extra(_message(_event(9))),
    ]
    with caplog.at_level(logging.WARNING, logger="mlops_sagemaker.approval_events"):
        assert approved_versions(extras) == [_arn(9)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6, warnings
    assert sum("no SageMaker Model Package State Change event" in w for w in warnings) == 3
    assert sum("without a model package ARN" in w for w in warnings) == 1
    assert sum("without a message_batch" in w for w in warnings) == 2


def test_extras_of_other_asset_events_are_skipped_silently(caplog) -> None:
    ours = {"model_package_arn": _arn(1), "group": GROUP}  # approved_versions Asset of our DAGs
    with caplog.at_level(logging.DEBUG, logger="mlops_sagemaker.approval_events"):
        assert approved_versions([ours, {}, None]) == []
    assert caplog.records == []


def test_module_imports_no_airflow() -> None:
    code = "import sys, mlops_sagemaker.approval_events; print('airflow' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_cli_sets_up_the_queue_and_prints_the_config_line(s3_endpoint, capsys) -> None:
    argv = ["--config", str(CONFIG), "--region", "us-east-1", "--endpoint-url", s3_endpoint]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(argv) == 0
    second = capsys.readouterr().out.splitlines()
    url = first[0]
    assert url.endswith("/tpch-ord-approvals") and second[0] == url
    assert f"  approval_events_queue_url: {url}" in first
    kw = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    events = boto3.client("events", **kw)
    pattern = json.loads(events.describe_rule(Name="tpch-ord-approvals")["EventPattern"])
    assert pattern["detail"]["ModelPackageGroupName"] == [GROUP]
    assert len(events.list_targets_by_rule(Rule="tpch-ord-approvals")["Targets"]) == 1
    tags = boto3.client("sqs", **kw).list_queue_tags(QueueUrl=url).get("Tags", {})
    assert tags == {"project": "mlops-presto-sagemaker", "use-case": "tpch_orders"}


@pytest.mark.parametrize("content", ["use_case: [unclosed", None])
def test_cli_reports_a_bad_config_without_touching_aws(tmp_path, capsys, content) -> None:
    path = tmp_path / "broken.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["--config", str(path), "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.yaml" in err


def test_cli_classifies_aws_failures(capsys, monkeypatch) -> None:
    # Nothing listens on port 9: botocore's connection error, a transient failure.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries with backoff first
    argv = [
        "--config",
        str(CONFIG),
        "--region",
        "us-east-1",
        "--endpoint-url",
        "http://127.0.0.1:9",
    ]
    assert main(argv) == 1
    assert "[transient: connection]" in capsys.readouterr().err
