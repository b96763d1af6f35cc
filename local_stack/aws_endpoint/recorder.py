"""Record every request the local AWS endpoint receives as the IAM action it needs.

Each request becomes one ``{"principal", "service", "action", "resource", "operation"}``
record, so a test can compare what the DAGs really call with the IAM policies in ``iam/``:

* ``action`` is the IAM action (``s3:GetObject``), ``operation`` the API operation
  (``HeadObject``) and ``resource`` the ARN IAM would evaluate, or ``*`` for actions without
  resource-level permissions (``List*``, ``sts:GetCallerIdentity``, ...).
* ``context`` holds the request's values of the condition keys the policies use
  (``s3:prefix`` of a list; ``iam:PassedToService`` and ``sagemaker:TaggingAction`` below).
* A SageMaker ``Create*`` also needs, per the authorization reference's "dependent actions",
  ``iam:PassRole`` on its ``RoleArn`` (passed to ``sagemaker.amazonaws.com``) and, when it
  carries ``Tags``, ``sagemaker:AddTags`` on the new resource: both are recorded as calls of
  their own with ``implied_by`` naming the operation.
* ``principal`` says whose credentials signed it: ``execution-role`` for the SageMaker
  runtime's own clients and job processes (access key ``EXECUTION_ROLE_ACCESS_KEY_ID``, what
  SageMaker does with the job's ``RoleArn``), ``sagemaker-service`` for what the service does
  as itself (endpoint metrics, autoscaling: ``SERVICE_ACCESS_KEY_ID``), ``airflow`` for the Amazon provider's hooks
  (their User-Agent carries ``Airflow/<version> AmPP/<provider version>``:
  ``AwsGenericHook._generate_user_agent_extra_field`` in apache-airflow-providers-amazon), and
  ``other`` for the rest (tests and tools inspecting the stack).

S3's REST operations map to IAM actions as the S3 API reference says for each operation
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html: "you must have the
``s3:GetObject`` permission"; ``API_ListObjectsV2.html`` and ``API_HeadBucket.html``:
``s3:ListBucket``; the multipart operations: ``s3:PutObject``, see
https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions).
Only path-style addressing is parsed (what botocore uses with an IP ``endpoint_url``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import unescape

from local_stack.sagemaker_runtime.runtime import (
    EXECUTION_ROLE_ACCESS_KEY_ID,
    SERVICE_ACCESS_KEY_ID,
)

_CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/aws4_request")
_QUERY_CREDENTIAL = re.compile(r"X-Amz-Credential=([^/&]+)/[^/]+/[^/]+/([^/&]+)/aws4_request")
_MAX_PARSED_BODY = 1 << 20  # JSON/query bodies are small; S3 bodies are never read
_INVOKE = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations$")

# (method, has key, sub-resource) -> (operation, IAM action). The sub-resource is the first of
# _S3_SUBRESOURCES present in the query string, "" when none is.
_S3_SUBRESOURCES = ("uploads", "uploadId", "delete", "location", "list-type", "tagging")
_S3_OPERATIONS: dict[tuple[str, bool, str], tuple[str, str]] = {
    ("GET", False, ""): ("ListObjects", "s3:ListBucket"),
    ("GET", False, "list-type"): ("ListObjectsV2", "s3:ListBucket"),
    ("GET", False, "location"): ("GetBucketLocation", "s3:GetBucketLocation"),
    ("HEAD", False, ""): ("HeadBucket", "s3:ListBucket"),
    ("PUT", False, ""): ("CreateBucket", "s3:CreateBucket"),
    ("POST", False, "delete"): ("DeleteObjects", "s3:DeleteObject"),
    ("GET", True, ""): ("GetObject", "s3:GetObject"),
    ("HEAD", True, ""): ("HeadObject", "s3:GetObject"),
    ("PUT", True, ""): ("PutObject", "s3:PutObject"),
    ("DELETE", True, ""): ("DeleteObject", "s3:DeleteObject"),
    ("POST", True, "uploads"): ("CreateMultipartUpload", "s3:PutObject"),
    ("PUT", True, "uploadId"): ("UploadPart", "s3:PutObject"),
    ("POST", True, "uploadId"): ("CompleteMultipartUpload", "s3:PutObject"),
    ("DELETE", True, "uploadId"): ("AbortMultipartUpload", "s3:AbortMultipartUpload"),
    ("GET", True, "uploadId"): ("ListParts", "s3:ListMultipartUploadParts"),
    ("GET", True, "tagging"): ("GetObjectTagging", "s3:GetObjectTagging"),
    ("PUT", True, "tagging"): ("PutObjectTagging", "s3:PutObjectTagging"),
}

# SageMaker actions with resource-level permissions: action -> (ARN resource type, request
# member naming it). From the SageMaker service authorization reference ("Actions defined by
# Amazon SageMaker", https://docs.aws.amazon.com/service-authorization/latest/reference/
# list_amazonsagemaker.html); any action not listed is recorded with resource "*".
_SAGEMAKER_RESOURCES: dict[str, tuple[str, str]] = {
    "CreateProcessingJob": ("processing-job", "ProcessingJobName"),
    "DescribeProcessingJob": ("processing-job", "ProcessingJobName"),
    "StopProcessingJob": ("processing-job", "ProcessingJobName"),
    "CreateTrainingJob": ("training-job", "TrainingJobName"),
    "DescribeTrainingJob": ("training-job", "TrainingJobName"),
    "StopTrainingJob": ("training-job", "TrainingJobName"),
    "CreateHyperParameterTuningJob": ("hyper-parameter-tuning-job", "HyperParameterTuningJobName"),
    "DescribeHyperParameterTuningJob": (
        "hyper-parameter-tuning-job",
        "HyperParameterTuningJobName",
    ),
    "StopHyperParameterTuningJob": ("hyper-parameter-tuning-job", "HyperParameterTuningJobName"),
    "ListTrainingJobsForHyperParameterTuningJob": (
        "hyper-parameter-tuning-job",
        "HyperParameterTuningJobName",
    ),
    "CreateModelPackageGroup": ("model-package-group", "ModelPackageGroupName"),
    "DescribeModelPackageGroup": ("model-package-group", "ModelPackageGroupName"),
    "DeleteModelPackageGroup": ("model-package-group", "ModelPackageGroupName"),
    "CreateModelPackage": ("model-package-group", "ModelPackageGroupName"),
    "DescribeModelPackage": ("model-package", "ModelPackageName"),
    "UpdateModelPackage": ("model-package", "ModelPackageArn"),
    "DeleteModelPackage": ("model-package", "ModelPackageName"),
    "CreateModel": ("model", "ModelName"),
    "DescribeModel": ("model", "ModelName"),
    "CreateTransformJob": ("transform-job", "TransformJobName"),
    "DescribeTransformJob": ("transform-job", "TransformJobName"),
    "StopTransformJob": ("transform-job", "TransformJobName"),
    "CreateEndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "DescribeEndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "CreateEndpoint": ("endpoint", "EndpointName"),
    "DescribeEndpoint": ("endpoint", "EndpointName"),
    "UpdateEndpoint": ("endpoint", "EndpointName"),
    "InvokeEndpoint": ("endpoint", "EndpointName"),
    "DeleteEndpoint": ("endpoint", "EndpointName"),
    "DeleteEndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "DeleteModel": ("model", "ModelName"),
}

# Application Auto Scaling actions authorized on the ``scalable-target`` resource type
# (service authorization reference, "Actions defined by Application Auto Scaling":
# https://docs.aws.amazon.com/service-authorization/latest/reference/
# list_applicationautoscaling.html); the Describe* actions have no resource-level permissions.
_SCALABLE_TARGET_ACTIONS = (
    "RegisterScalableTarget",
    "DeregisterScalableTarget",
    "PutScalingPolicy",
    "DeleteScalingPolicy",
)


def sagemaker_arn(where: str, resource_type: str, name: str) -> str:
    """The ARN IAM evaluates for a SageMaker resource in ``where`` (``<region>:<account>``);
    names are lower-cased in ARNs, an ARN given as the name is taken as it is."""
    if name.startswith("arn:"):
        return name
    return f"arn:aws:sagemaker:{where}:{resource_type}/{name.lower()}"


def _principal(access_key: str | None, user_agent: str) -> str:
    if access_key == EXECUTION_ROLE_ACCESS_KEY_ID:
        return "execution-role"
    if access_key == SERVICE_ACCESS_KEY_ID:
        return "sagemaker-service"
    if "Airflow/" in user_agent and "AmPP/" in user_agent:
        return "airflow"
    return "other"


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, put back into ``wsgi.input`` for the application that answers."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0 or length > _MAX_PARSED_BODY:
        return b""
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _s3_call(environ: dict[str, Any]) -> tuple[str, str, str]:
    """(operation, IAM action, resource ARN) of a path-style S3 request."""
    method = environ.get("REQUEST_METHOD", "GET")
    path = unquote(environ.get("PATH_INFO", "/")).lstrip("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    bucket, _, key = path.partition("/")
    if not bucket:
        return "ListBuckets", "s3:ListAllMyBuckets", "*"
    sub = next((s for s in _S3_SUBRESOURCES if s in query), "")
    if method == "PUT" and key and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        return "CopyObject", "s3:PutObject", f"arn:aws:s3:::{bucket}/{key}"
    operation, action = _S3_OPERATIONS.get(
        (method, bool(key), sub), (f"{method} {sub or '-'}", f"s3:Unmapped:{method}:{sub or '-'}")
    )
    resource = f"arn:aws:s3:::{bucket}/{key}" if key else f"arn:aws:s3:::{bucket}"
    return operation, action, resource


_QUEUE_URL = re.compile(r"^https?://[^/]+/(?P<account>\d{12})/(?P<name>[\w-]{1,80})$")
_RPC_V2 = re.compile(r"^/service/[^/]+/operation/(?P<operation>\w+)$")


def _cbor(body: bytes) -> dict[str, Any]:
    """A Smithy RPC v2 CBOR body (CloudWatch's protocol in this botocore), decoded with
    botocore's own CBOR reader."""
    from botocore.parsers import RpcV2CBORParser

    parser = RpcV2CBORParser()
    try:
        value = parser.parse_data_item(parser.get_peekable_stream_from_bytes(body))
    except Exception:  # a body we cannot read is recorded without parameters
        return {}
    return value if isinstance(value, dict) else {}


def _json_or_query(environ: dict[str, Any], body: bytes) -> tuple[str, dict[str, Any]]:
    """(operation, parameters) of a JSON (``X-Amz-Target``), RPC v2 CBOR or query request."""
    rpc = _RPC_V2.match(environ.get("PATH_INFO", ""))
    if rpc:
        return rpc.group("operation"), _cbor(body) if body else {}
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return target.rsplit(".", 1)[-1], params if isinstance(params, dict) else {}
    fields = parse_qs(environ.get("QUERY_STRING", ""))
    if b"=" in body:
        fields.update(parse_qs(body.decode("utf-8", "replace")))
    params = {k: v[0] for k, v in fields.items()}
    return params.get("Action", "Unknown"), params


def _resource(service: str, operation: str, params: dict[str, Any], path: str, where: str) -> str:
    if service == "sagemaker":
        match = _INVOKE.match(path)
        if match:
            return sagemaker_arn(where, "endpoint", unquote(match.group("name")))
        rule = _SAGEMAKER_RESOURCES.get(operation)
        if rule and isinstance(params.get(rule[1]), str):
            return sagemaker_arn(where, rule[0], params[rule[1]])
        return "*"
    if service == "application-autoscaling" and operation in _SCALABLE_TARGET_ACTIONS:
        return _scalable_target_arn(params, where)
    if service == "monitoring" and isinstance(params.get("AlarmName"), str):
        return f"arn:aws:cloudwatch:{where}:alarm:{params['AlarmName']}"
    if service == "sns" and operation == "Publish":
        target = params.get("TopicArn") or params.get("TargetArn")
        return target if isinstance(target, str) else "*"
    if service == "sqs" and isinstance(params.get("QueueUrl"), str):
        queue = _QUEUE_URL.match(params["QueueUrl"])
        if queue:
            region = where.split(":", 1)[0]
            return f"arn:aws:sqs:{region}:{queue.group('account')}:{queue.group('name')}"
        return "*"
    if service == "logs" and params.get("logGroupName"):
        arn = f"arn:aws:logs:{where}:log-group:{params['logGroupName']}"
        stream = params.get("logStreamName")
        return f"{arn}:log-stream:{stream}" if stream else f"{arn}:log-stream:"
    return "*"


def _scalable_target_arn(params: dict[str, Any], where: str) -> str:
    """A scalable target's ARN. AWS gives each target an opaque id (``scalable-target/<id>``),
    so a policy can only name them all; a digest of the target stands in for that id."""
    target = "|".join(
        str(params.get(k, "")) for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")
    )
    digest = hashlib.sha256(target.encode()).hexdigest()[:32]
    return f"arn:aws:application-autoscaling:{where}:scalable-target/{digest}"


# CloudWatch actions authorized once per alarm they name (service authorization reference:
# DeleteAlarms / DescribeAlarms on the ``alarm`` resource type).
_PER_ALARM = ("DeleteAlarms", "DescribeAlarms")


def _per_alarm(call: dict[str, Any], params: dict[str, Any], where: str) -> list[dict[str, Any]]:
    names = params.get("AlarmNames")
    if call["service"] != "monitoring" or call["operation"] not in _PER_ALARM or not names:
        return [call]
    return [{**call, "resource": f"arn:aws:cloudwatch:{where}:alarm:{n}"} for n in names]


def _implied(call: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The dependent actions of a SageMaker create (see the module docstring), and
    ``cloudwatch:TagResource`` of a PutMetricAlarm with tags (CloudWatch API reference)."""
    operation = call["operation"]
    if call["service"] == "monitoring" and operation == "PutMetricAlarm" and params.get("Tags"):
        return [{**call, "action": "cloudwatch:TagResource", "implied_by": operation}]
    if call["service"] != "sagemaker" or not operation.startswith("Create"):
        return []
    implied = []
    role = params.get("RoleArn") or params.get("ExecutionRoleArn")  # CreateModel: the latter
    if isinstance(role, str):
        context = {"iam:PassedToService": "sagemaker.amazonaws.com"}
        implied.append({"action": "iam:PassRole", "resource": role, "context": context})
    if params.get("Tags"):
        context = {"sagemaker:TaggingAction": operation}
        implied.append(
            {"action": "sagemaker:AddTags", "resource": call["resource"], "context": context}
        )
    base = {k: call[k] for k in ("principal", "service")}
    return [{**base, "operation": operation, "implied_by": operation, **i} for i in implied]


def describe(environ: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The records of one request to the endpoint of ``where`` (``<region>:<account>``): the
    call and its dependent actions; none when it is unsigned. Reads a small body and puts it
    back for the application that answers."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = _CREDENTIAL.search(auth)
    if match is None:  # presigned URL
        query = environ.get("QUERY_STRING", "").replace("%2F", "/").replace("%2f", "/")
        match = _QUERY_CREDENTIAL.search(query)
    if match is None:
        return []
    access_key, service = match.groups()
    principal = _principal(access_key, environ.get("HTTP_USER_AGENT", ""))
    path = environ.get("PATH_INFO", "")
    params: dict[str, Any] = {}
    context: dict[str, str] = {}
    if service == "s3":
        operation, action, resource = _s3_call(environ)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if action == "s3:ListBucket" and "prefix" in query:  # absent from HeadBucket
            context["s3:prefix"] = query["prefix"][0]
        if operation == "DeleteObjects":  # authorized as s3:DeleteObject on every key
            keys = re.findall(rb"<Key>([^<]*)</Key>", _read_body(environ))
            base = {"principal": principal, "service": service, "action": action}
            return [
                {
                    **base,
                    "operation": operation,
                    "resource": f"{resource}/{unescape(k.decode())}",
                    "context": {},
                }
                for k in keys
            ]
    else:
        operation, params = _json_or_query(environ, _read_body(environ))
        if service == "sagemaker" and _INVOKE.match(path):
            operation = "InvokeEndpoint"
        action = f"{service}:{operation}"
        resource = _resource(service, operation, params, path, where)
    call = {
        "principal": principal,
        "service": service,
        "action": action.replace("monitoring:", "cloudwatch:", 1),
        "operation": operation,
        "resource": resource,
        "context": context,
    }
    return [*_per_alarm(call, params, where), *_implied(call, params)]


class CallRecorder:
    """Thread-safe log of :func:`describe` records, oldest first."""

    def __init__(self, region: str, account_id: str) -> None:
        self._where = f"{region}:{account_id}"
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []

    def record(self, environ: dict[str, Any]) -> None:
        """Record one WSGI request (no-op for unsigned ones)."""
        calls = describe(environ, self._where)
        with self._lock:
            self._calls.extend(calls)

    def calls(self, principal: str | None = None) -> list[dict[str, Any]]:
        """A copy of the records, optionally of one principal only."""
        with self._lock:
            return [dict(c) for c in self._calls if principal in (None, c["principal"])]

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._calls.clear()
