"""Action registry and AWS-shaped errors of the local SageMaker runtime.

Each SageMaker API action the runtime implements is a function registered with
``@action("CreateTrainingJob")`` taking ``(runtime, request_dict)`` and returning the response dict
(the JSON 1.1 protocol of botocore's ``sagemaker`` model). Anything not registered answers with an
AWS-shaped ``UnknownOperationException`` naming the action, never a silent success.

``dispatch`` records each call (``recorded_calls``, ``GET /_local/sagemaker/calls``) and checks
it against every rule of the service model (``validation``) before the handler runs, so a bad
request is refused with AWS's ``ValidationException`` wording before any resource is looked up.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import validation

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

Handler = Callable[["Runtime", dict[str, Any]], dict[str, Any]]

log = logging.getLogger(__name__)

ACTIONS: dict[str, Handler] = {}


class SageMakerError(Exception):
    """An error the runtime answers in AWS's JSON error shape (``__type`` + ``message``)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        """The JSON body botocore parses into ``ClientError``."""
        return json.dumps({"__type": self.code, "message": self.message}).encode()


def not_found(kind: str, name: str) -> SageMakerError:
    """``ResourceNotFound`` for Describe* of an unknown resource."""
    return SageMakerError("ResourceNotFound", f"{kind} {name} does not exist.")


def validation_error(message: str) -> SageMakerError:
    """``ValidationException``: what AWS answers for a bad request or a wrong state."""
    return SageMakerError("ValidationException", message)


def in_use(message: str) -> SageMakerError:
    """``ResourceInUse``: what AWS answers when a name already exists."""
    return SageMakerError("ResourceInUse", message)


def action(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the implementation of the SageMaker API action ``name``."""

    def register(fn: Handler) -> Handler:
        if name in ACTIONS:
            raise RuntimeError(f"SageMaker action {name} registered twice")
        ACTIONS[name] = fn
        return fn

    return register


def dispatch(runtime: Runtime, target: str, body: bytes) -> tuple[int, bytes]:
    """Run the action named by ``X-Amz-Target`` (``SageMaker.<Action>``) and encode the answer."""
    name = target.split(".", 1)[-1]
    entry: dict[str, Any] | None = None
    try:
        runtime.faults.before_call(name)
        handler = ACTIONS.get(name)
        if handler is None:
            raise SageMakerError(
                "UnknownOperationException",
                f"The local SageMaker runtime does not implement the action {name}.",
            )
        try:
            request = json.loads(body or b"{}")
        except ValueError as err:
            raise SageMakerError("SerializationException", f"Malformed JSON body: {err}") from err
        entry = _record(runtime, name, request)
        # Every rule of the service model, before any handler looks a resource up (as AWS).
        validate_request(name, request)
        response = handler(runtime, request)
    except SageMakerError as err:
        if entry is not None:
            entry.update(ErrorCode=err.code, ErrorMessage=err.message)
        return err.status, err.body()
    except Exception as err:  # a bug in a handler: answer like AWS instead of an HTML 500 page
        log.exception("SageMaker action %s failed", name)
        failure = SageMakerError("InternalFailure", f"{type(err).__name__}: {err}", status=500)
        return failure.status, failure.body()
    return 200, json.dumps(response, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    # botocore's JSON protocol reads timestamps as epoch seconds.
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"cannot encode {type(value).__name__}")


def now() -> datetime:
    """The current time, timezone-aware, for resource timestamps."""
    return datetime.now(UTC)


# --- request validation and pagination shared by the action modules --------------------------
def validate_request(operation: str, request: dict[str, Any]) -> None:
    """Check ``request`` against every rule of botocore's input shape of ``operation``
    (``validation.check``: required, types, lengths, patterns, enums, ranges); raise the
    ``ValidationException``/``SerializationException`` SageMaker answers, in AWS's wording.

    ``dispatch`` runs it for every action; handlers may call it again for in-process use."""
    try:
        validation.check(operation, request)
    except validation.RequestRejected as err:
        raise SageMakerError(err.code, err.message) from err


# --- the call recorder ---------------------------------------------------------------------
CALLS = "_Calls"


def _record(runtime: Runtime, name: str, request: dict[str, Any]) -> dict[str, Any]:
    """Append (action, request) to the runtime's in-memory call log; return the entry so the
    outcome can be added. Only calls from clients pass through ``dispatch`` (a tuning job's
    own training jobs do not), so the log is what the callers really sent."""
    entry = {"Action": name, "Request": copy.deepcopy(request), "Time": now().timestamp()}
    with runtime.lock:
        log_store = runtime.store(CALLS)
        log_store[f"{len(log_store):09d}"] = entry
    return entry


def recorded_calls(runtime: Runtime, action_name: str | None = None) -> list[dict[str, Any]]:
    """The SageMaker calls received so far, oldest first (optionally of one action): dicts
    with ``Action``, ``Request``, ``Time`` and, for a refused call, ``ErrorCode`` and
    ``ErrorMessage``."""
    with runtime.lock:
        entries = copy.deepcopy(list(runtime.store(CALLS).values()))
    return [e for e in entries if action_name in (None, e["Action"])]


def clear_calls(runtime: Runtime) -> None:
    """Forget the recorded calls."""
    with runtime.lock:
        runtime.store(CALLS).clear()


def validate_name(value: Any, field: str, max_length: int = 63) -> str:
    """Check a resource name against SageMaker's ``[a-zA-Z0-9](-*[a-zA-Z0-9]){0,N}`` rule."""
    pattern = rf"^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,{max_length - 1}}}$"
    if not isinstance(value, str) or not re.match(pattern, value):
        member = field[:1].lower() + field[1:]
        raise validation_error(
            f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {pattern[1:-1]}"
            + (f" and have length less than or equal to {max_length}" if value else "")
        )
    return value


def paginate(
    items: Sequence[Any], request: dict[str, Any], default_max: int = 10, max_max: int = 100
) -> tuple[list[Any], str | None]:
    """One page of ``items`` for ``MaxResults``/``NextToken``; returns (page, next token)."""
    max_results = request.get("MaxResults", default_max)
    if not isinstance(max_results, int) or not 1 <= max_results <= max_max:
        raise validation_error(
            f"1 validation error detected: Value '{max_results}' at 'maxResults' failed to "
            f"satisfy constraint: Member must have value between 1 and {max_max}"
        )
    start = 0
    token = request.get("NextToken")
    if token:
        try:
            start = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
        except (ValueError, KeyError, TypeError) as err:
            raise validation_error(f"Invalid pagination token {token}.") from err
    end = start + max_results
    next_token = None
    if end < len(items):
        next_token = base64.urlsafe_b64encode(json.dumps({"offset": end}).encode()).decode()
    return list(items[start:end]), next_token


def as_datetime(value: Any) -> datetime:
    """A request timestamp (epoch seconds from boto3's JSON protocol, or ISO text) as datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)
