"""Model versions approved outside Airflow (Studio, console, API) as Airflow Asset events.

SageMaker sends "SageMaker Model Package State Change" to the account's default EventBridge
bus whenever a version's ``ModelApprovalStatus`` changes. :func:`ensure_approval_events` sets
up, idempotently, the path from there to the endpoint DAG:

    EventBridge rule <short_name>-approvals (the group's Approved changes only)
      → SQS queue <short_name>-approvals (its policy lets only that rule send)
      → AssetWatcher(SqsSensorTrigger) in the triggerer → Asset event → endpoint DAG

:func:`approved_versions` reads the approved ARNs back out of those Asset events' ``extra``.
Command line (prints the queue URL and the config line that enables the watcher)::

    PYTHONPATH=plugins python -m mlops_sagemaker.approval_events \\
        --config include/config/tpch_orders.yaml --region eu-west-1

No Airflow import at module level: the DAG files import this lazily, the CLI runs without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE = "aws.sagemaker"
DETAIL_TYPE = "SageMaker Model Package State Change"
APPROVED = "Approved"
TARGET_ID = "approval-queue"
POLICY_SID = "ApprovalEventsFromEventBridge"
# Approvals wait up to SQS's maximum retention (14 days) for a triggerer that is down.
QUEUE_ATTRIBUTES = {"MessageRetentionPeriod": "1209600"}
_NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_PACKAGE_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package/\S+/\d+$")


# --------------------------------------------------------------------------- pure builders


def rule_pattern(group: str) -> dict[str, Any]:
    """The EventBridge pattern of the approvals of ``group``'s versions."""
    return {
        "source": [SOURCE],
        "detail-type": [DETAIL_TYPE],
        "detail": {"ModelPackageGroupName": [group], "ModelApprovalStatus": [APPROVED]},
    }


def rule_name(short_name: str) -> str:
    """The EventBridge rule of a use case: ``<short_name>-approvals``."""
    return f"{short_name}-approvals"


def queue_name(short_name: str) -> str:
    """The SQS queue of a use case: ``<short_name>-approvals``."""
    return f"{short_name}-approvals"


def queue_policy(
    queue_arn: str, rule_arn: str, current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``current`` (a queue policy, or none) with our statement set: EventBridge may send to
    ``queue_arn`` on behalf of ``rule_arn`` only. Other statements are kept as they are."""
    statement = {
        "Sid": POLICY_SID,
        "Effect": "Allow",
        "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
    }
    base = dict(current or {"Version": "2012-10-17", "Id": f"{queue_arn}/policy"})
    others = [s for s in base.get("Statement", []) if s.get("Sid") != POLICY_SID]
    return {**base, "Statement": [*others, statement]}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


# --------------------------------------------------------------------------- idempotent setup


def _error_codes(err: Exception) -> set[str]:
    error = getattr(err, "response", {}).get("Error", {})
    return {str(error.get("Code", "")), str(error.get("QueryErrorCode", ""))}


def _ensure_queue(sqs: Any, name: str, tags: Mapping[str, str]) -> str:
    """The queue's URL; creates it (with ``tags``) when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as err:
        if not _error_codes(err) & _NO_QUEUE:
            raise
    extra = {"tags": dict(tags)} if tags else {}
    log.info("Creating the SQS queue %s", name)
    return sqs.create_queue(QueueName=name, Attributes=QUEUE_ATTRIBUTES, **extra)["QueueUrl"]


def _ensure_rule(events: Any, name: str, group: str, tags: Mapping[str, str]) -> str:
    """The rule's ARN; creates it, or puts the pattern back when it differs or is disabled."""
    from botocore.exceptions import ClientError

    pattern = rule_pattern(group)
    try:
        rule = events.describe_rule(Name=name)
    except ClientError as err:
        if "ResourceNotFoundException" not in _error_codes(err):
            raise
        rule = None
    current = json.loads(rule.get("EventPattern") or "{}") if rule is not None else None
    if rule is not None and rule.get("State") == "ENABLED" and current == pattern:
        return rule["Arn"]
    log.info("%s the EventBridge rule %s", "Updating" if rule else "Creating", name)
    request: dict[str, Any] = {
        "Name": name,
        "EventPattern": json.dumps(pattern),
        "State": "ENABLED",
        "Description": f"Approved versions of {group} for Airflow (mlops_sagemaker)",
    }
    if rule is None and tags:  # PutRule ignores tags when it updates a rule
        request["Tags"] = _tag_list(tags)
    return events.put_rule(**request)["RuleArn"]


def _ensure_queue_policy(sqs: Any, queue_url: str, queue_arn: str, rule_arn: str) -> None:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["Policy"])
    text = attributes.get("Attributes", {}).get("Policy")
    current = json.loads(text) if text else None
    wanted = queue_policy(queue_arn, rule_arn, current)
    if wanted != current:
        log.info("Setting the policy of %s (EventBridge rule %s may send)", queue_url, rule_arn)
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(wanted)})


def _ensure_target(events: Any, rule: str, queue_arn: str) -> None:
    targets: list[dict[str, Any]] = []
    request: dict[str, Any] = {"Rule": rule}
    while True:
        page = events.list_targets_by_rule(**request)
        targets += page.get("Targets", [])
        if not page.get("NextToken"):
            break
        request["NextToken"] = page["NextToken"]
    if any(t.get("Arn") == queue_arn for t in targets):
        return
    log.info("Adding the queue %s as a target of the rule %s", queue_arn, rule)
    answer = events.put_targets(Rule=rule, Targets=[{"Id": TARGET_ID, "Arn": queue_arn}])
    if answer.get("FailedEntryCount"):
        from mlops_sagemaker.failures import ClassifiedError

        failed = answer.get("FailedEntries", [{}])[0]
        raise ClassifiedError(
            f"EventBridge refused the target {queue_arn} of rule {rule}: "
            f"{failed.get('ErrorCode')}: {failed.get('ErrorMessage')}",
            category="request",
        )


def ensure_approval_events(
    events_client: Any,
    sqs_client: Any,
    *,
    short_name: str,
    group: str,
    tags: Mapping[str, str],
) -> str:
    """Create what is missing of queue, queue policy, rule and target for ``group``'s
    approvals, leave what is there (a second run calls no mutating API); the queue URL."""
    queue_url = _ensure_queue(sqs_client, queue_name(short_name), tags)
    attributes = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    queue_arn = attributes["Attributes"]["QueueArn"]
    rule_arn = _ensure_rule(events_client, rule_name(short_name), group, tags)
    # The policy before the target: EventBridge's first delivery must already be allowed.
    _ensure_queue_policy(sqs_client, queue_url, queue_arn, rule_arn)
    _ensure_target(events_client, rule_name(short_name), queue_arn)
    return queue_url


# --------------------------------------------------------------------------- reading events


def _message_batch(extra: Any) -> list[Any]:
    """The SQS messages of one Asset event's ``extra``; [] for events of other origins."""
    if not isinstance(extra, Mapping) or "payload" not in extra:
        return []  # not from an AssetWatcher (e.g. our own approved_versions Asset events)
    payload = extra["payload"]
    batch = payload.get("message_batch") if isinstance(payload, Mapping) else None
    if not isinstance(batch, list):
        log.warning("Ignoring a trigger payload without a message_batch list: %.300r", payload)
        return []
    return batch


def _state_change(message: Any) -> Mapping[str, Any] | None:
    """The EventBridge event in an SQS message's ``Body``, or None (logged) if it is not one."""
    body = message.get("Body") if isinstance(message, Mapping) else None
    try:
        event = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        event = None
    if (
        not isinstance(event, Mapping)
        or event.get("source") != SOURCE
        or event.get("detail-type") != DETAIL_TYPE
        or not isinstance(event.get("detail"), Mapping)
    ):
        log.warning("Ignoring an SQS message that is no %s event: %.300r", DETAIL_TYPE, message)
        return None
    return event["detail"]


def _approved_arn(detail: Mapping[str, Any], group: str | None) -> str | None:
    arn = detail.get("ModelPackageArn")
    if detail.get("ModelApprovalStatus") != APPROVED:
        log.info("Ignoring %s: status %s", arn, detail.get("ModelApprovalStatus"))
        return None
    if group is not None and detail.get("ModelPackageGroupName") != group:
        log.info("Ignoring %s: group %s, not %s", arn, detail.get("ModelPackageGroupName"), group)
        return None
    if not isinstance(arn, str) or not _PACKAGE_ARN.match(arn):
        log.warning("Ignoring an approval event without a model package ARN: %.300r", detail)
        return None
    return arn


def approved_versions(
    asset_events_extra_list: Iterable[Any], *, group: str | None = None
) -> list[str]:
    """The model package ARNs approved in the SQS messages of these Asset events' extras
    (``{"from_trigger": True, "payload": {"status": "success", "message_batch": [<SQS
    message with the EventBridge JSON in "Body">, ...]}}``, as ``AssetWatcher`` records what
    ``SqsSensorTrigger`` yields), first-seen order, each once. Other statuses, other groups
    (with ``group``) and malformed messages are skipped and logged; extras without a
    ``payload`` (Asset events of other origins) are skipped silently."""
    arns: list[str] = []
    for extra in asset_events_extra_list:
        for message in _message_batch(extra):
            detail = _state_change(message)
            arn = _approved_arn(detail, group) if detail is not None else None
            if arn is not None and arn not in arns:
                arns.append(arn)
    return arns


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_sagemaker.approval_events",
        description="Create (or find) the EventBridge rule and SQS queue that turn the model "
        "registry's approvals into Asset events for the endpoint DAG.",
    )
    parser.add_argument("--config", type=Path, required=True, help="a use-case YAML")
    parser.add_argument("--region", help="default: the AWS SDK's (AWS_DEFAULT_REGION, profile)")
    parser.add_argument("--endpoint-url", help="e.g. the local stack's http://127.0.0.1:4566")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the setup for one use case; print the queue URL and the config line to paste."""
    import boto3

    from mlops_sagemaker.config import ConfigError, load_use_case

    args = _parser().parse_args(argv)
    try:
        config = load_use_case(args.config)
    except (ConfigError, OSError) as err:  # an invalid or unreadable config file
        print(f"error: {err} [permanent: config]", file=sys.stderr)
        return 1
    try:
        session = boto3.session.Session(region_name=args.region)
        if not session.region_name:
            print("error: no AWS region: pass --region or set AWS_DEFAULT_REGION", file=sys.stderr)
            return 2
        clients = [session.client(s, endpoint_url=args.endpoint_url) for s in ("events", "sqs")]
        url = ensure_approval_events(
            *clients,
            short_name=config.short_name,
            group=config.model_package_group,
            tags=config.sagemaker.tags,
        )
    except Exception as err:
        return _report_failure(err)
    print(url)
    print(f"# in {args.config}, section endpoint:\n  approval_events_queue_url: {url}")
    if config.endpoint is None:
        print(f"# {args.config} has no endpoint section yet: add one for the DAG to use the queue")
    return 0


def _report_failure(err: Exception) -> int:
    """Print ``err`` as the failure policy classifies it; exit status 1."""
    from mlops_sagemaker.failures import classify

    verdict = classify(err)
    print(f"error: {verdict.message} [{verdict.kind.value}: {verdict.category}]", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
