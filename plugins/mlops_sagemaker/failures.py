"""One failure policy for every task: each error is *permanent* or *transient*, decided here.

* **Permanent** — the same try would fail again: a script or request error, a SQL/template error,
  a Presto user error, an auth/TLS/config error, a data-validation error, the quality gate. The
  task fails at once (``AirflowFailException``, no retries) with a message that says what to fix.
* **Transient** — the world may change: throttling, 5xx, connection refused/reset, Presto
  ``INTERNAL_ERROR``/``INSUFFICIENT_RESOURCES``, SageMaker ``InternalServerError``/capacity. The
  task's retries apply (exponential backoff, see ``dag_defaults``).

The task's final message leads with the *root cause*: :func:`classify` walks the exception chain
(``raise ... from``/during handling) to the innermost error it recognises, so a follow-on error
(e.g. a ``DescribeProcessingJob`` "not found" after the create call was throttled) never hides
the real one. Operators apply the policy through :func:`failure_policy`, ``@task``
callables through :func:`apply_policy`; Airflow has no per-exception retry policy of its own.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from airflow.exceptions import AirflowException
from airflow.sdk.exceptions import AirflowFailException


class Kind(enum.Enum):
    """Whether retrying the same task can help."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"


@dataclass(frozen=True)
class Verdict:
    """The decision for one error: its kind, a category for the README table, the message."""

    kind: Kind
    category: str
    message: str


class TransientFailure(AirflowException):
    """Raised (from the original error) for a transient failure: the task's retries apply."""


class ClassifiedError(AirflowException):
    """An error of this package that knows its own kind (its message leads with the cause)."""

    kind: Kind = Kind.PERMANENT
    category: str = "error"

    def __init__(self, message: str, *, kind: Kind | None = None, category: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if category is not None:
            self.category = category


class JobFailed(ClassifiedError):
    """A SageMaker job ended without ``Completed``; the kind comes from its FailureReason."""

    category = "sagemaker-job"


# Exceptions that are control flow, not failures: never touched by the policy.
_PASS_THROUGH_NAMES = {
    "TaskDeferred",
    "AirflowSkipException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowFailException",
    "DownstreamTasksSkipped",
    "TaskAwaitingInput",
    "DagRunTriggerException",
    "AirflowTaskTerminated",
}
# botocore error codes (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html
# lists the throttling and transient codes the SDKs retry; auth codes from the AWS API references).
THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
}
TRANSIENT_CODES = {
    "InternalServerError",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ResourceLimitExceeded",  # quota of concurrent jobs/instances: frees up as jobs finish
    "CapacityError",
    "InsufficientInstanceCapacity",
}
AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "MissingAuthenticationToken",
}
# SageMaker FailureReason prefixes: the script or the request is wrong (never fixed by a retry);
# "CapacityError"/"InternalServerError" are SageMaker's own transient reasons.
PERMANENT_JOB_REASONS = ("AlgorithmError", "ClientError")
# Presto error types (presto-spi ErrorType): USER_ERROR is the query's fault.
TRANSIENT_PRESTO_TYPES = {"INTERNAL_ERROR", "INSUFFICIENT_RESOURCES", "EXTERNAL"}


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, then its cause/context, outermost first (cycles cut)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


def classify(err: BaseException) -> Verdict:
    """The verdict for ``err``: our own classified errors decide for themselves (their message
    already names the cause); otherwise the innermost recognised error in the chain decides."""
    for link in _chain(err):
        if isinstance(link, ClassifiedError):
            return Verdict(link.kind, link.category, str(link))
    for link in reversed(list(_chain(err))):
        verdict = _classify_one(link)
        if verdict is not None:
            return verdict
    return Verdict(Kind.TRANSIENT, "unclassified", f"{type(err).__name__}: {err}")


def _classify_one(err: BaseException) -> Verdict | None:
    for classifier in (_classify_aws, _classify_presto, _classify_http, _classify_local):
        verdict = classifier(err)
        if verdict is not None:
            return verdict
    return None


def _classify_aws(err: BaseException) -> Verdict | None:
    import botocore.exceptions as bex

    if isinstance(err, bex.ClientError):
        return _classify_client_error(err)
    if isinstance(err, bex.ParamValidationError):
        return Verdict(Kind.PERMANENT, "request", f"Invalid AWS request: {err}")
    if isinstance(err, bex.NoCredentialsError | bex.PartialCredentialsError | bex.ProfileNotFound):
        return Verdict(Kind.PERMANENT, "auth", f"AWS credentials: {err} (check the AWS connection)")
    if isinstance(err, bex.SSLError):
        return Verdict(Kind.PERMANENT, "auth", f"TLS error talking to AWS: {err}")
    if isinstance(err, bex.EndpointConnectionError | bex.ConnectionError | bex.ReadTimeoutError):
        return Verdict(Kind.TRANSIENT, "connection", f"Could not reach AWS: {err}")
    return None


def _classify_client_error(err: Any) -> Verdict:
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = error.get("Message", "")
    meta = err.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    operation = getattr(err, "operation_name", "an AWS call")
    if code in THROTTLING_CODES or status == 429:
        tries = int(meta.get("RetryAttempts") or 0) + 1
        return Verdict(
            Kind.TRANSIENT,
            "throttling",
            f"{_service_of(operation)} throttled {operation} {tries} times: {code}: {message}",
        )
    if code in TRANSIENT_CODES or status >= 500:
        return Verdict(Kind.TRANSIENT, "service", f"{operation} failed on the AWS side: {err}")
    if code in AUTH_CODES or status in (401, 403):
        return Verdict(
            Kind.PERMANENT,
            "auth",
            f"{operation} was refused ({code}): {message} — check the role's IAM policy "
            "(iam/ in this package) and the AWS connection",
        )
    return Verdict(Kind.PERMANENT, "request", f"{operation} rejected the request: {err}")


@functools.cache
def _sagemaker_operations() -> frozenset[str]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return frozenset(model.operation_names)


def _service_of(operation: str) -> str:
    return "SageMaker" if operation in _sagemaker_operations() else "AWS"


def _classify_presto(err: BaseException) -> Verdict | None:
    import prestodb.exceptions as pex

    if isinstance(err, pex.PrestoQueryError):
        text = f"Presto {err.error_type} {err.error_name}: {err.message}"
        if err.error_type in TRANSIENT_PRESTO_TYPES:
            return Verdict(Kind.TRANSIENT, "presto-server", text)
        return Verdict(Kind.PERMANENT, "presto-user", text + " — fix the SQL file")
    if isinstance(err, pex.Http503Error):
        return Verdict(Kind.TRANSIENT, "presto-server", f"Presto unavailable: {err}")
    if isinstance(err, pex.HttpError):
        text = str(err)
        if text.startswith(("error 401", "error 403")):
            return Verdict(Kind.PERMANENT, "auth", f"Presto refused the credentials: {text[:300]}")
        if text.startswith("error 5"):
            return Verdict(Kind.TRANSIENT, "presto-server", f"Presto server error: {text[:300]}")
        return Verdict(Kind.PERMANENT, "presto-user", f"Presto rejected the request: {text[:300]}")
    if isinstance(err, ValueError) and "authentication with HTTP" in str(err):
        return Verdict(
            Kind.PERMANENT,
            "config",
            "The Presto connection has a password but uses HTTP: set protocol https in its extra",
        )
    return None


def _classify_http(err: BaseException) -> Verdict | None:
    import requests.exceptions as rex

    if isinstance(err, rex.SSLError):
        return Verdict(
            Kind.PERMANENT,
            "auth",
            f"TLS handshake failed: {err} — check the connection's certificate settings "
            "(extra 'verify': CA bundle path)",
        )
    if isinstance(err, rex.ConnectionError | rex.Timeout):
        return Verdict(Kind.TRANSIENT, "connection", f"Could not reach the server: {err}")
    if isinstance(err, ConnectionError | TimeoutError):
        return Verdict(Kind.TRANSIENT, "connection", f"{type(err).__name__}: {err}")
    return None


def _classify_local(err: BaseException) -> Verdict | None:
    import jinja2
    import pydantic

    if isinstance(err, jinja2.TemplateError):
        name = getattr(err, "name", None) or ""
        where = f" in {name}" if name else ""
        return Verdict(
            Kind.PERMANENT, "template", f"Template error{where}: {type(err).__name__}: {err}"
        )
    if isinstance(err, pydantic.ValidationError):
        return Verdict(Kind.PERMANENT, "config", f"Invalid configuration: {err}")
    if type(err).__name__ == "HITLTimeoutError":
        # Nobody answered a human-in-the-loop request in time: asking again on a retry would
        # only hide that (the timeout is the config's approval.response_timeout_seconds).
        return Verdict(Kind.PERMANENT, "approval", f"No answer in time: {err}")
    return None


def is_control_flow(err: BaseException) -> bool:
    """True for Airflow's control-flow exceptions (deferral, skip, reschedule, fail)."""
    return any(cls.__name__ in _PASS_THROUGH_NAMES for cls in type(err).__mro__)


def enforce(err: BaseException) -> NoReturn:
    """Re-raise ``err`` under the policy: ``AirflowFailException`` (permanent) or
    ``TransientFailure`` (retries apply), chained to the original."""
    if is_control_flow(err):
        raise err
    verdict = classify(err)
    if verdict.kind is Kind.PERMANENT:
        raise AirflowFailException(f"{verdict.message} [permanent: {verdict.category}]") from err
    raise TransientFailure(f"{verdict.message} [transient: {verdict.category}]") from err


F = TypeVar("F", bound=Callable[..., Any])


def apply_policy(fn: F) -> F:
    """Decorate a task callable so that its errors follow the policy."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            enforce(err)

    return wrapper  # type: ignore[return-value]


_POLICY_METHODS = ("render_template_fields", "execute", "execute_complete", "poke")
C = TypeVar("C", bound=type)


def failure_policy(cls: C) -> C:
    """Class decorator for operators and sensors: ``execute``, ``execute_complete``, ``poke``
    and template rendering (where a StrictUndefined SQL error is raised) follow the policy.

    A decorator rather than a mixin so that it wraps the methods the class itself defines."""
    for name in _POLICY_METHODS:
        method = getattr(cls, name, None)
        if method is not None and not getattr(method, "_failure_policy", False):
            wrapped = apply_policy(method)
            wrapped._failure_policy = True  # type: ignore[attr-defined]
            setattr(cls, name, wrapped)
    return cls
