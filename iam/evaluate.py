"""Compare rendered policies with the calls the local AWS endpoint recorded.

``denied`` lists recorded calls no statement allows; ``unused`` lists the (statement, action)
grants no recorded call needed, except the actions of ``NOT_EXERCISED_LOCALLY``, which the
local stack cannot exercise (each with its reason). Together they hold a policy to exactly what
the DAGs call: a test fails when a DAG needs more than the policy grants, or the policy grants
more than anything uses.

Evaluation follows IAM's rules for identity policies with Allow statements only
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
a call is allowed when one statement matches its action (case-insensitive, ``*``/``?``
wildcards), its resource (case-sensitive wildcards) and every condition. Conditions support
``StringEquals``, ``StringLike`` and ``Bool``; a condition on a key the call does not carry
does not match, unless its operator ends in ``IfExists`` (as in IAM); any other operator raises,
so a policy cannot pass with a condition this module ignores.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# Grants the local stack cannot exercise, per role: action (or "<Sid>: <action>" for one
# statement's grant only) -> why. Reviewed with the policies.
NOT_EXERCISED_LOCALLY: dict[str, dict[str, str]] = {
    "airflow": {
        "sagemaker:StopProcessingJob": (
            "sent by the provider operators' on_kill when a running task is killed or marked "
            "failed; an `airflow dags test` run is never killed mid-job"
        ),
        "sagemaker:StopHyperParameterTuningJob": "as StopProcessingJob (on_kill of the tuning task)",
        "sagemaker:StopTransformJob": "as StopProcessingJob (on_kill of the transform task)",
        "sagemaker:ListTrainingJobsForHyperParameterTuningJob": (
            "called only when a tuning job failed, to tell script errors (permanent) from the "
            "rest; tests/e2e/test_failure_modes.py checks it is granted"
        ),
        "kms:GenerateDataKey": (
            "uploading the model repacked with its code (network isolation) under SSE-KMS with "
            "the config's kms_key_id: moto's S3 does not enforce SSE-KMS permissions"
        ),
        "kms:Decrypt": (
            "reading job outputs encrypted with the config's kms_key_id (evaluation.json, "
            "baseline.json): moto's S3 does not enforce SSE-KMS permissions"
        ),
        "sagemaker:UpdateEndpointWeightsAndCapacities": (
            "the caller of RegisterScalableTarget/PutScalingPolicy needs it on the variant's "
            "endpoint (Application Auto Scaling user guide, security_iam_id-based-policy-examples"
            ".html, 'Permissions required for API actions on target services and CloudWatch'); "
            "moto does not check it"
        ),
        "TargetTrackingAlarmsOfTheUseCasesVariants: cloudwatch:PutMetricAlarm": (
            "the alarms target tracking creates for the policy (TargetTracking-endpoint/...), "
            "which its caller needs per the same page; moto's PutScalingPolicy creates none"
        ),
        "TargetTrackingAlarmsOfTheUseCasesVariants: cloudwatch:DescribeAlarms": "as above",
        "TargetTrackingAlarmsOfTheUseCasesVariants: cloudwatch:DeleteAlarms": "as above",
        "iam:CreateServiceLinkedRole": (
            "Application Auto Scaling creates its SageMaker service-linked role on the first "
            "RegisterScalableTarget of an account; moto has no service-linked roles"
        ),
    },
    "execution-role": {
        "logs:DescribeLogStreams": (
            "SageMaker's log agent in the job's instance (documented execution-role "
            "permission); the local runtime ships logs without it"
        ),
        "cloudwatch:PutMetricData": (
            "SageMaker publishes job and algorithm metrics with the role; the local runtime "
            "keeps metrics in its own store"
        ),
        "ecr:GetAuthorizationToken": "image pull: the local runtime runs step code in a venv",
        "ecr:BatchCheckLayerAvailability": "image pull, as above",
        "ecr:GetDownloadUrlForLayer": "image pull, as above",
        "ecr:BatchGetImage": "image pull, as above",
        "kms:Encrypt": "output encryption with kms_key_id: moto does not call KMS for SSE-KMS",
        "kms:Decrypt": "as kms:Encrypt",
        "kms:GenerateDataKey": "as kms:Encrypt",
        "kms:CreateGrant": "EBS volume encryption with volume_kms_key_id: no volumes locally",
        **{
            f"ec2:{action}": "VPC network interfaces of the job: the local runtime has no VPC"
            for action in (
                "CreateNetworkInterface",
                "CreateNetworkInterfacePermission",
                "DeleteNetworkInterface",
                "DeleteNetworkInterfacePermission",
                "DescribeNetworkInterfaces",
                "DescribeVpcs",
                "DescribeDhcpOptions",
                "DescribeSubnets",
                "DescribeSecurityGroups",
            )
        },
    },
}


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _like(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for qualified, tests in condition.items():
        operator = qualified.removesuffix("IfExists")
        for key, expected in tests.items():
            if key not in context:
                if operator == qualified:
                    return False
                continue
            value = context[key]
            wanted = _as_list(expected)
            if operator == "StringEquals":
                ok = value in wanted
            elif operator == "StringLike":
                ok = any(_like(p, value) for p in wanted)
            elif operator == "Bool":
                ok = value.lower() in [w.lower() for w in wanted]
            else:
                raise ValueError(f"condition operator {operator} is not supported here")
            if not ok:
                return False
    return True


def statement_allows(statement: Mapping[str, Any], call: Mapping[str, Any], action: str) -> bool:
    """Whether ``statement`` grants ``action`` (one of its Action entries) to ``call``."""
    if statement.get("Effect") != "Allow":
        return False
    if not _like(action, call["action"], case_sensitive=False):
        return False
    if not any(_like(r, call["resource"]) for r in _as_list(statement["Resource"])):
        return False
    return _condition_holds(statement.get("Condition", {}), call.get("context", {}))


def allows(policy: Mapping[str, Any], call: Mapping[str, Any]) -> bool:
    """Whether any statement of ``policy`` allows the recorded ``call``."""
    return any(
        statement_allows(statement, call, action)
        for statement in policy["Statement"]
        for action in _as_list(statement["Action"])
    )


def denied(policy: Mapping[str, Any], calls: Iterable[Mapping[str, Any]]) -> list[str]:
    """``"<action> on <resource> (<context>)"`` for each distinct call the policy denies."""
    out = {
        f"{c['action']} on {c['resource']} {dict(c.get('context') or {})}"
        for c in calls
        if not allows(policy, c)
    }
    return sorted(out)


def unused(policy: Mapping[str, Any], calls: Iterable[Mapping[str, Any]], role: str) -> list[str]:
    """``"<Sid>: <action>"`` for each grant no call used, minus ``NOT_EXERCISED_LOCALLY``
    (entries naming the action, or the statement's grant)."""
    calls = list(calls)
    exempt = NOT_EXERCISED_LOCALLY.get(role, {})
    out = []
    for statement in policy["Statement"]:
        for action in _as_list(statement["Action"]):
            used = any(statement_allows(statement, c, action) for c in calls)
            grant = f"{statement.get('Sid', '?')}: {action}"
            if not used and action not in exempt and grant not in exempt:
                out.append(grant)
    return out
