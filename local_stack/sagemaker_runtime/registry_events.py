"""The model registry's EventBridge events: "SageMaker Model Package State Change".

SageMaker sends this event to the account's default event bus when a versioned model package's
``ModelApprovalStatus`` changes, its creation included (AWS's example:
https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html,
section "Model package state change"): ``source`` ``aws.sagemaker``, ``resources`` the
package's ARN, ``account``/``region`` the package's, ``detail`` the package as
``DescribeModelPackage`` shows it (timestamps as ISO-8601 text, ``2021-02-24T17:00:14Z``).

Delivery goes to moto's EventBridge of the same local endpoint, so the rules created there
(``PutRule``/``PutTargets``) route it to their targets (an SQS queue, a log group, ...). It is
injected **in-process** into moto's events backend (``events_backends[account][region]
.put_events``), not sent with ``runtime.client("events")``: the runtime runs in the process of
the endpoint's moto server app (``local_stack/aws_endpoint/server.py``), and a signed
``PutEvents`` would be recorded as a call of the execution role (``recorder.py``) that the IAM
tests would hold against its policy; on AWS the service emits the event itself, with no
caller's permission. (Real EventBridge refuses a ``PutEvents`` with an ``aws.`` source.)
Delivery is synchronous: the message is in the queue when the SageMaker call answers.

A failure to emit never fails the SageMaker call: it is logged.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

SOURCE = "aws.sagemaker"
DETAIL_TYPE = "SageMaker Model Package State Change"
# moto's default target input (moto.events.utils.EventTemplateParser) leaves out "account",
# which every EventBridge event carries; the same template with it, set once before delivery.
_MOTO_TEMPLATE_WITH_ACCOUNT = (
    '{"version": "0", "id": "<id>", "detail-type": "<detail-type>", "source": "<source>", '
    '"account": "<account>", "time": <time>, "region": "<region>", "resources": <resources>, '
    '"detail": <detail>}'
)


def _as_event_value(value: Any) -> Any:
    """``value`` with every datetime as ISO-8601 UTC text to the second, as the events show."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return {k: _as_event_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_event_value(v) for v in value]
    return value


def event_entry(package: dict[str, Any], when: datetime) -> dict[str, Any]:
    """The ``PutEvents`` entry of a state change of ``package`` (its describe shape)."""
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPE,
        "Resources": [package["ModelPackageArn"]],
        "Detail": json.dumps(_as_event_value(package)),
        "Time": when.timestamp(),
    }


def _include_account_in_moto_targets() -> None:
    from moto.events.utils import EventTemplateParser

    if '"account"' not in EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE:
        EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE = _MOTO_TEMPLATE_WITH_ACCOUNT


def _deliver(runtime: Runtime, entry: dict[str, Any]) -> None:
    """Put ``entry`` on moto's default event bus of the runtime's account and region."""
    from moto.events.models import events_backends

    _include_account_in_moto_targets()
    results = events_backends[runtime.account_id][runtime.region].put_events([entry])
    for result in results:
        if "ErrorCode" in result:
            log.warning(
                "EventBridge refused the %s event of %s: %s %s",
                DETAIL_TYPE,
                entry["Resources"][0],
                result["ErrorCode"],
                result.get("ErrorMessage", ""),
            )


def emit_state_change(runtime: Runtime, package: dict[str, Any], when: datetime) -> None:
    """Emit the state change of ``package`` (a describe-shaped copy) at ``when``; log, never
    raise, when that fails."""
    try:
        _deliver(runtime, event_entry(package, when))
    except Exception:
        log.exception(
            "Could not emit the %s event of %s (the SageMaker call itself succeeded)",
            DETAIL_TYPE,
            package.get("ModelPackageArn"),
        )
