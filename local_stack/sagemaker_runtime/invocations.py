"""``InvokeEndpoint`` of the local endpoints (``POST /endpoints/<name>/invocations``).

A request goes to a variant chosen by weight (or ``X-Amzn-SageMaker-Target-Variant``), during a
blue/green update to the new fleet with the current traffic fraction, then to that variant's
least busy model-server process. The answer is the model's body, ``Content-Type`` and
``x-Amzn-Invoked-Production-Variant``; a model error is ``ModelError`` (424) with
``OriginalStatusCode``/``OriginalMessage``, an unknown endpoint a ``ValidationError``. Every
request the model answers is counted in ``endpoint_metrics`` and, when the config captures data,
sampled into ``data_capture``.
"""

from __future__ import annotations

import json
import random
import time
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from local_stack.sagemaker_runtime import _serving
from local_stack.sagemaker_runtime.data_capture import writer_of
from local_stack.sagemaker_runtime.deployments import ENDPOINTS
from local_stack.sagemaker_runtime.endpoint_metrics import metrics_of
from local_stack.sagemaker_runtime.fleets import LOG_GROUP_PREFIX, Fleet, UnknownVariant, Variant

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
SERVING_STATUSES = ("InService", "Updating", "RollingBack", "SystemUpdating")


class _InvokeError(Exception):
    def __init__(self, code: str, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("Message", code))
        self.code = code
        self.status = status
        self.body = body

    def response(self) -> Response:
        return Response(
            json.dumps(self.body),
            status=self.status,
            headers={"x-amzn-ErrorType": self.code},
            content_type="application/json",
        )


def _invoke_error(code: str, message: str, status: int) -> _InvokeError:
    return _InvokeError(code, status, {"__type": code, "Message": message, "message": message})


def invocation_response(runtime: Runtime, name: str, request: Request) -> Response:
    """Answer ``POST /endpoints/<name>/invocations`` (SageMaker Runtime ``InvokeEndpoint``)."""
    try:
        return _invoke(runtime, name, request)
    except _InvokeError as err:
        return err.response()


def _route(runtime: Runtime, name: str, target: str | None) -> tuple[Fleet, Variant]:
    """The fleet and variant that take a request (hold ``runtime.lock``)."""
    record = runtime.store(ENDPOINTS).get(name)
    if record is None:
        raise _invoke_error(
            "ValidationError", f"Endpoint {name} of account {runtime.account_id} not found.", 400
        )
    status = record["EndpointStatus"]
    fleet: Fleet | None = record.get("_active")
    if status not in SERVING_STATUSES or fleet is None:
        raise _invoke_error(
            "ValidationError",
            f"Endpoint {name} of account {runtime.account_id} is not in service (status {status}).",
            400,
        )
    canary = record.get("_canary")
    if canary is not None and random.random() < canary[1]:
        fleet = canary[0]
    try:
        return fleet, fleet.pick(target)
    except UnknownVariant as err:
        raise _invoke_error(
            "ValidationError", f"Variant {err} not found in the endpoint's config.", 400
        ) from err


def _invoke(runtime: Runtime, name: str, request: Request) -> Response:
    started = time.perf_counter()
    body = request.get_data()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise _invoke_error(
            "ValidationError", "Request payload size exceeds the limit of 6 MB.", 413
        )
    content_type = request.headers.get("Content-Type") or "application/json"
    accept = request.headers.get("Accept")
    with runtime.lock:
        fleet, variant = _route(
            runtime, name, request.headers.get("X-Amzn-SageMaker-Target-Variant")
        )
        server = variant.acquire()
        instances = variant.current_count
    if server is None:
        raise _invoke_error("ServiceUnavailable", "The model server is restarting; try again.", 503)
    metrics = metrics_of(runtime)
    model_started = time.perf_counter()
    try:
        answer_status, answer_type, answer = server.invoke(body, content_type, accept)
    except _serving.ServingError as err:
        metrics.record(name, variant.name, instances, 503, None, time.perf_counter() - started)
        raise _invoke_error("ServiceUnavailable", f"The model server failed: {err}", 503) from err
    finally:
        server.release()
    model_seconds = time.perf_counter() - model_started
    metrics.record(
        name, variant.name, instances, answer_status, model_seconds, time.perf_counter() - started
    )
    if answer_status >= 400:
        raise _model_error(runtime, name, answer_status, answer)
    writer_of(runtime).add(
        fleet.capture,
        (name, variant.name),
        (content_type, body),
        (answer_type, answer),
        request.headers.get("X-Amzn-SageMaker-Inference-Id"),
    )
    return Response(
        answer,
        status=200,
        headers={"x-Amzn-Invoked-Production-Variant": variant.name},
        content_type=answer_type,
    )


def _model_error(runtime: Runtime, name: str, status: int, answer: bytes) -> _InvokeError:
    original = answer.decode("utf-8", errors="replace")
    side = "client" if status < 500 else "server"
    group = f"{LOG_GROUP_PREFIX}/{name}"
    message = (
        f"Received {side} error ({status}) from primary with message "
        f'"{original.strip()[:1000]}". See CloudWatch log group {group} in account '
        f"{runtime.account_id} for more information."
    )
    return _InvokeError(
        "ModelError",
        424,
        {
            "__type": "ModelError",
            "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
            "Message": message,
            "message": message,
            "OriginalStatusCode": status,
            "OriginalMessage": original,
            "LogStreamArn": (
                f"arn:aws:logs:{runtime.region}:{runtime.account_id}:log-group:{group}"
            ),
        },
    )
