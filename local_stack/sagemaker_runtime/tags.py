"""Tags of any SageMaker resource: ``AddTags``, ``ListTags``, ``DeleteTags`` by ARN.

Create* handlers call :func:`set_tags` with the request's ``Tags`` (even when empty, which
records that the ARN exists) and :func:`forget` on deletion. Tag calls for an ARN never
registered are accepted too (a module that does not register its ARNs still gets tags), as long
as the ARN is a SageMaker ARN of this runtime's region and account.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime.api import action, paginate, validate_request, validation_error

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

_STORE = "Tags"  # ARN -> {key: value}
_MAX_TAGS = 50


def set_tags(runtime: Runtime, arn: str, tags: list[dict[str, str]] | None) -> None:
    """Record a new resource's tags (replacing any left from a deleted namesake)."""
    _check(tags or [])
    with runtime.lock:
        runtime.store(_STORE)[arn] = {t["Key"]: t["Value"] for t in tags or []}


def get_tags(runtime: Runtime, arn: str) -> list[dict[str, str]]:
    """The tags of ``arn`` in the API's ``[{"Key": ..., "Value": ...}]`` shape."""
    with runtime.lock:
        return [{"Key": k, "Value": v} for k, v in runtime.store(_STORE).get(arn, {}).items()]


def forget(runtime: Runtime, arn: str) -> None:
    """Drop the tags of a deleted resource."""
    with runtime.lock:
        runtime.store(_STORE).pop(arn, None)


def _check(tags: list[dict[str, str]]) -> None:
    if len(tags) > _MAX_TAGS:
        raise validation_error(f"Too many tags: at most {_MAX_TAGS} tags per resource.")
    for tag in tags:
        if not isinstance(tag, dict) or "Key" not in tag or "Value" not in tag:
            raise validation_error("Each tag needs a Key and a Value.")
        if tag["Key"].lower().startswith("aws:"):
            raise validation_error(f"Tag keys starting with 'aws:' are reserved: {tag['Key']}")


def _check_arn(runtime: Runtime, arn: str) -> None:
    pattern = rf"^arn:aws[a-z-]*:sagemaker:{re.escape(runtime.region)}:{runtime.account_id}:.+"
    if not re.match(pattern, arn or ""):
        raise validation_error(f"Invalid ResourceArn {arn}.")


@action("AddTags")
def add_tags(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Add or overwrite tags of a resource; answers with the tags given."""
    validate_request("AddTags", request)
    arn = request["ResourceArn"]
    _check_arn(runtime, arn)
    with runtime.lock:
        current = runtime.store(_STORE).setdefault(arn, {})
        merged = {**current, **{t["Key"]: t["Value"] for t in request["Tags"]}}
        _check([{"Key": k, "Value": v} for k, v in merged.items()])
        current.update(merged)
    return {"Tags": request["Tags"]}


@action("ListTags")
def list_tags(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """The tags of a resource, paginated."""
    validate_request("ListTags", request)
    _check_arn(runtime, request["ResourceArn"])
    page, token = paginate(get_tags(runtime, request["ResourceArn"]), request, 50, 10_000)
    return {"Tags": page, **({"NextToken": token} if token else {})}


@action("DeleteTags")
def delete_tags(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Remove tags by key (unknown keys are ignored, as AWS does)."""
    validate_request("DeleteTags", request)
    _check_arn(runtime, request["ResourceArn"])
    with runtime.lock:
        current = runtime.store(_STORE).get(request["ResourceArn"], {})
        for key in request["TagKeys"]:
            current.pop(key, None)
    return {}
