"""The failure policy: every class of error is permanent or transient, and the message leads with
the root cause. Each row of the README's failure table has a case here (the end-to-end cases,
with real Presto/SageMaker errors, are in tests/e2e/test_failure_modes.py)."""

from __future__ import annotations

import botocore.exceptions
import jinja2
import prestodb.exceptions
import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from mlops_sagemaker.extract import EmptyExtractError
from mlops_sagemaker.failures import (
    JobFailed,
    Kind,
    TransientFailure,
    apply_policy,
    classify,
    enforce,
)
from mlops_sagemaker.tasks import QualityGateFailed


def client_error(code: str, operation: str, status: int = 400, retries: int = 0) -> Exception:
    """A botocore ClientError as botocore builds it from an AWS error response."""
    return botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} message"},
            "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries},
        },
        operation,
    )


def presto_error(error_type: str, name: str) -> Exception:
    error = {"errorType": error_type, "errorName": name, "message": f"{name} happened"}
    if error_type == "USER_ERROR":
        return prestodb.exceptions.PrestoUserError(error, "q1")
    return prestodb.exceptions.PrestoQueryError(error, "q1")


def job_failed(reason: str) -> Exception:
    """What the operators raise for a SageMaker job that ended Failed with ``reason``."""
    from mlops_sagemaker.operators import require_completed

    try:
        require_completed("training", "j", {"S": "Failed", "FailureReason": reason}, "S")
    except JobFailed as err:
        return err
    raise AssertionError("a failed job passed require_completed")


def undefined_name() -> Exception:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    try:
        env.from_string("SELECT {{ nope }}").render()
    except jinja2.UndefinedError as err:
        return err
    raise AssertionError("StrictUndefined did not raise")


PERMANENT = [
    ("script", job_failed("AlgorithmError: ExecuteUserScriptError: x"), "sagemaker"),
    ("job request", job_failed("ClientError: ModelDataUrl not found"), "sagemaker"),
    ("request", client_error("ValidationException", "CreateProcessingJob"), "request"),
    ("request", botocore.exceptions.ParamValidationError(report="bad"), "request"),
    ("template", undefined_name(), "template"),
    ("presto user", presto_error("USER_ERROR", "SYNTAX_ERROR"), "presto-user"),
    ("auth", client_error("AccessDeniedException", "CreateTrainingJob", 403), "auth"),
    ("auth", prestodb.exceptions.HttpError("error 401: Unauthorized"), "auth"),
    ("tls", requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), "auth"),
    ("config", ValueError("cannot use authentication with HTTP"), "config"),
    ("data", EmptyExtractError("no rows"), "data"),
    ("gate", QualityGateFailed("auc 0.5 < threshold 0.7"), "quality-gate"),
]
TRANSIENT = [
    ("throttling", client_error("ThrottlingException", "CreateProcessingJob", 400, 10), "throttl"),
    ("5xx", client_error("InternalServerError", "DescribeTrainingJob", 500), "service"),
    ("capacity", client_error("ResourceLimitExceeded", "CreateTrainingJob"), "service"),
    ("connection", requests.exceptions.ConnectionError("refused"), "connection"),
    (
        "connection",
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
        "connection",
    ),
    ("presto internal", presto_error("INTERNAL_ERROR", "GENERIC_INTERNAL_ERROR"), "presto-server"),
    ("presto resources", presto_error("INSUFFICIENT_RESOURCES", "EXCEEDED_MEMORY"), "presto"),
    ("presto 503", prestodb.exceptions.Http503Error("error 503"), "presto-server"),
    ("sagemaker capacity", job_failed("CapacityError: no ml.m5 capacity"), "sagemaker"),
    ("sagemaker internal", job_failed("InternalServerError: try again"), "sagemaker"),
]


@pytest.mark.parametrize(("row", "error", "category"), PERMANENT, ids=[r[0] for r in PERMANENT])
def test_permanent_errors_fail_at_once(row: str, error: Exception, category: str) -> None:
    verdict = classify(error)
    assert verdict.kind is Kind.PERMANENT, verdict
    assert verdict.category.startswith(category.split("-")[0])
    with pytest.raises(AirflowFailException) as raised:
        enforce(error)
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(("row", "error", "category"), TRANSIENT, ids=[r[0] for r in TRANSIENT])
def test_transient_errors_use_retries(row: str, error: Exception, category: str) -> None:
    verdict = classify(error)
    assert verdict.kind is Kind.TRANSIENT, verdict
    assert verdict.category.startswith(category.split("-")[0])
    with pytest.raises(TransientFailure) as raised:
        enforce(error)
    assert not isinstance(raised.value, AirflowFailException)


def test_throttling_message_counts_the_tries() -> None:
    verdict = classify(client_error("ThrottlingException", "CreateProcessingJob", 400, 10))
    assert verdict.message.startswith("SageMaker throttled CreateProcessingJob 11 times:")


def test_root_cause_wins_over_a_follow_on_error() -> None:
    """A Describe 'not found' raised while handling a throttled Create is not the cause."""

    @apply_policy
    def create_then_describe() -> None:
        try:
            raise client_error("ThrottlingException", "CreateProcessingJob", 400, 4)
        except botocore.exceptions.ClientError:
            raise client_error("ValidationException", "DescribeProcessingJob") from None

    # `from None` hides the context: the follow-on alone is a request error ...
    with pytest.raises(AirflowFailException):
        create_then_describe()

    @apply_policy
    def follow_on() -> None:
        try:
            raise client_error("ThrottlingException", "CreateProcessingJob", 400, 4)
        except botocore.exceptions.ClientError:
            raise client_error("ValidationException", "DescribeProcessingJob")  # noqa: B904

    # ... but raised during the handling of the throttle, the throttle is the root cause.
    with pytest.raises(TransientFailure, match=r"^SageMaker throttled CreateProcessingJob 5 times"):
        follow_on()


def test_our_own_errors_keep_their_message_and_kind() -> None:
    wrapped = JobFailed(
        "SageMaker tuning job t ended Failed: all script errors", kind=Kind.PERMANENT
    )
    try:
        try:
            raise client_error("InternalServerError", "DescribeTrainingJob", 500)
        except botocore.exceptions.ClientError as err:
            raise wrapped from err
    except JobFailed as err:
        verdict = classify(err)
    assert verdict.kind is Kind.PERMANENT
    assert verdict.message.startswith("SageMaker tuning job t ended Failed")


def test_control_flow_passes_through_untouched() -> None:
    deferred = TaskDeferred(trigger=None, method_name="execute_complete")  # type: ignore[arg-type]
    with pytest.raises(TaskDeferred) as raised:
        enforce(deferred)
    assert raised.value is deferred


def test_permanent_message_says_what_to_fix() -> None:
    with pytest.raises(AirflowFailException, match=r"SYNTAX_ERROR.*fix the SQL file"):
        enforce(presto_error("USER_ERROR", "SYNTAX_ERROR"))
    with pytest.raises(AirflowFailException, match="IAM policy"):
        enforce(client_error("AccessDeniedException", "CreateTrainingJob", 403))
