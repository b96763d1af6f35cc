"""Operators we add on top of the Amazon provider, and why.

* ``IdempotentProcessingOperator`` / ``IdempotentTuningOperator``: the provider's processing
  operator either fails on an existing name or starts a timestamped copy, and its tuning operator
  has no exists check at all, so a cleared task would fail or re-run a finished job. These
  subclasses look up the attempts of the request's name (see ``naming``): a ``Completed`` job is
  reused, an ``InProgress`` one is waited for, and only a failed/stopped one leads to a new
  attempt. Everything else (request sending, waiting, failure messages) is the provider's.
* ``IdempotentTransformOperator``: the same for ``SageMakerTransformOperator`` (which fails or
  starts a timestamped copy on an existing name); it takes the bare CreateTransformJob request,
  the model being created beforehand by ``ensure_model``: CreateModel unless the model, whose
  name is content-addressed (``inference_requests.model_request``), already exists.
* ``IdempotentRegisterModelVersionOperator``: the provider's operator always creates a version;
  this one first finds the version this run date + model already registered, takes ``extras``
  as a templated field (so the full request can come from XCom) and emits an Asset event.
* ``EndpointDeployedSensor``: the provider's endpoint sensor and waiter take a deployment that
  SageMaker rolled back for success; this one fails it, naming the config still served.
* ``PrestoToS3Operator``: ``SqlToS3Operator`` loads the whole result into pandas; this one
  streams chunks (``extract.extract_to_s3``) or has Presto write the files itself
  (``unload.unload_to_s3``) and renders its SQL file like any Airflow template.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerProcessingOperator,
    SageMakerRegisterModelVersionOperator,
    SageMakerTransformOperator,
    SageMakerTuningOperator,
    serialize,
)
from airflow.providers.common.sql.sensors.sql import SqlSensor
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from mlops_sagemaker.failures import JobFailed, Kind, failure_policy
from mlops_sagemaker.naming import MAX_NAME, MAX_TUNING_NAME, attempt_name, attempt_of
from mlops_sagemaker.payloads import ASSET_EVENT_KEY

TERMINAL_OK = "Completed"
RUNNING = {"InProgress", "Stopping"}
CHECK_INTERVAL_PARAM = "sagemaker_check_interval_seconds"
# FailureReason prefixes SageMaker uses for errors of the script or the request: retrying the
# same job cannot help, so the task fails at once instead of burning its retries.
NON_RETRYABLE_FAILURES = ("AlgorithmError", "ClientError")


def _paginate(call: Callable[..., dict], key: str, **kwargs: Any) -> Iterator[dict]:
    token: str | None = None
    while True:
        page = call(**kwargs, **({"NextToken": token} if token else {}))
        yield from page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return


def resolve_attempt(
    first_name: str,
    summaries: Iterator[dict],
    name_key: str,
    status_key: str,
    limit: int,
) -> tuple[str, str | None]:
    """Choose the job name to use for a request whose first-attempt name is ``first_name``.

    Returns ``(name, status)``: the status of an existing job to reuse (``Completed``) or to wait
    for (``InProgress``/``Stopping``), or ``None`` when a new job must be created under ``name``.
    """
    base = first_name[:-2]
    attempts: dict[int, str] = {}
    for summary in summaries:
        attempt = attempt_of(base, summary[name_key])
        if attempt is not None:
            attempts[attempt] = summary[status_key]
    for wanted in (TERMINAL_OK, *sorted(RUNNING)):
        matching = [a for a, status in attempts.items() if status == wanted]
        if matching:
            return attempt_name(base, max(matching), limit), wanted
    return attempt_name(base, max(attempts, default=0) + 1, limit), None


def require_completed(kind: str, name: str, described: dict, status_key: str) -> None:
    """Raise ``JobFailed`` unless the job ``Completed``: the provider's wait also returns on
    ``Stopped`` (e.g. MaxRuntimeInSeconds exceeded), whose outputs must not feed the next step.

    A ``Failed`` job whose FailureReason is a script or request error is permanent (the same job
    would fail again); any other ending is transient (the task's retries apply)."""
    status = described.get(status_key)
    if status == TERMINAL_OK:
        return
    reason = described.get("FailureReason") or described.get("ExitMessage") or "no reason given"
    permanent = status == "Failed" and reason.startswith(NON_RETRYABLE_FAILURES)
    raise JobFailed(
        f"SageMaker {kind} job {name} ended {status}: {reason}",
        kind=Kind.PERMANENT if permanent else Kind.TRANSIENT,
    )


@dataclass(frozen=True)
class _JobKind:
    """How to list, describe and name one kind of SageMaker job."""

    label: str
    name_key: str
    status_key: str
    list_method: str
    list_key: str
    describe_method: str
    limit: int


_PROCESSING = _JobKind(
    "processing",
    "ProcessingJobName",
    "ProcessingJobStatus",
    "list_processing_jobs",
    "ProcessingJobSummaries",
    "describe_processing_job",
    MAX_NAME,
)
_TUNING = _JobKind(
    "tuning",
    "HyperParameterTuningJobName",
    "HyperParameterTuningJobStatus",
    "list_hyper_parameter_tuning_jobs",
    "HyperParameterTuningJobSummaries",
    "describe_tuning_job",
    MAX_TUNING_NAME,
)

_TRANSFORM = _JobKind(
    "transform",
    "TransformJobName",
    "TransformJobStatus",
    "list_transform_jobs",
    "TransformJobSummaries",
    "describe_transform_job",
    MAX_NAME,
)


class _IdempotentJob:
    """Reuse / wait / next-attempt logic shared by the processing, tuning and transform
    operators.

    With ``deferrable=True`` a new job is waited for by the provider's ``SageMakerTrigger`` in
    the triggerer (no worker slot held for hours); ``execute_complete`` then applies the same
    final checks as the blocking path.
    """

    kind: _JobKind
    check_interval: int
    max_ingestion_time: int | None
    deferrable: bool

    def _run_idempotently(self, context: Any, create: Callable[[], Any]) -> dict:
        """Resolve the job name, create or wait as needed; return the final describe output."""
        kind = self.kind
        # Lets a run override how often jobs are polled (Param sagemaker_check_interval_seconds).
        interval = (context.get("params") or {}).get(CHECK_INTERVAL_PARAM)
        if interval:
            self.check_interval = int(interval)
        if self.deferrable and self.max_ingestion_time:
            # The trigger gives up after max_attempts x check_interval: cover the whole wait.
            self.max_attempts = math.ceil(self.max_ingestion_time / self.check_interval)
        first = self.config[kind.name_key]
        summaries = _paginate(
            getattr(self.hook.conn, kind.list_method), kind.list_key, NameContains=first[:-2]
        )
        name, status = resolve_attempt(first, summaries, kind.name_key, kind.status_key, kind.limit)
        self.config[kind.name_key] = name
        describe = getattr(self.hook, kind.describe_method)
        if status == TERMINAL_OK:
            self.log.info(
                "%s job %s already completed for this input; reusing it", kind.label, name
            )
        elif status is None:
            self.log.info("Starting %s job %s", kind.label, name)
            self._checked(name, create)  # defers here when deferrable
        else:
            self.log.info("%s job %s is already running; waiting for it", kind.label, name)
            self._checked(
                name,
                lambda: self.hook.check_status(
                    name, kind.status_key, describe, self.check_interval, self.max_ingestion_time
                ),
            )
        return self._final(name)

    def _resume(self, context: Any, event: dict | None, complete: Callable[[], Any]) -> dict:
        """After deferral: the provider's event check, then the same final checks."""
        name = (event or {}).get("job_name") or self.config[self.kind.name_key]
        self._checked(name, complete)
        return self._final(name)

    def _checked(self, name: str, run: Callable[[], Any]) -> None:
        try:
            run()
        except TaskDeferred:
            raise
        except Exception:
            # Prefer the job's own FailureReason (and its retry policy) to the wait's error. When
            # the job does not exist (its create call failed, e.g. throttled), the original error
            # is the root cause: never replace it with the follow-on "not found".
            described = self._describe_or_none(name)
            if described is not None:
                self._require_completed(name, described)
            raise

    def _describe_or_none(self, name: str) -> dict | None:
        try:
            return getattr(self.hook, self.kind.describe_method)(name)
        except Exception:
            return None

    def _final(self, name: str) -> dict:
        described = getattr(self.hook, self.kind.describe_method)(name)
        self._require_completed(name, described)
        return described

    def _require_completed(self, name: str, described: dict) -> None:
        require_completed(self.kind.label, name, described, self.kind.status_key)


@failure_policy
class IdempotentProcessingOperator(_IdempotentJob, SageMakerProcessingOperator):
    """``SageMakerProcessingOperator`` that reuses or resumes this request's job on re-runs."""

    kind = _PROCESSING

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("action_if_job_exists", "fail")
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict:
        """Reuse a completed job, wait for a running one, or start the next attempt."""
        create = lambda: super(IdempotentProcessingOperator, self).execute(context)  # noqa: E731
        return {"Processing": serialize(self._run_idempotently(context, create))}

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict:
        """Resume after the trigger fired: check the job really completed."""
        parent = super().execute_complete
        described = self._resume(context, event, lambda: parent(context, event))
        return {"Processing": serialize(described)}


def permanent_training_failures(conn: Any, tuning_job: str) -> str | None:
    """A summary when every failed training job of ``tuning_job`` failed with a script or
    request error (so a new tuning job would fail the same way); ``None`` otherwise."""
    failed = list(
        _paginate(
            conn.list_training_jobs_for_hyper_parameter_tuning_job,
            "TrainingJobSummaries",
            HyperParameterTuningJobName=tuning_job,
            StatusEquals="Failed",
        )
    )
    reasons = [(s["TrainingJobName"], s.get("FailureReason") or "") for s in failed]
    if not reasons or not all(r.startswith(NON_RETRYABLE_FAILURES) for _, r in reasons):
        return None
    first_name, first_reason = reasons[0]
    return (
        f"All {len(reasons)} failed training job(s) failed with a script or request error; "
        f"first: {first_name}: {first_reason}"
    )


def _tuning_result(described: dict) -> dict:
    # A tuning job can complete with every training job failed: no model to go on with.
    if not described.get("BestTrainingJob"):
        raise AirflowFailException(
            f"Tuning job {described['HyperParameterTuningJobName']} finished without a best "
            f"training job (status counters: {described.get('TrainingJobStatusCounters')})"
        )
    return {"Tuning": serialize(described)}


@failure_policy
class IdempotentTuningOperator(_IdempotentJob, SageMakerTuningOperator):
    """``SageMakerTuningOperator`` that reuses or resumes this request's tuning job on re-runs.

    A tuning job whose training jobs all failed with script or request errors is a permanent
    failure: SageMaker's own reason for the tuning job does not say so (on AWS it reads "No
    training job succeeded after N attempts..."), so the failed training jobs are looked at."""

    kind = _TUNING

    def _require_completed(self, name: str, described: dict) -> None:
        try:
            super()._require_completed(name, described)
        except JobFailed as err:
            if described.get(self.kind.status_key) == "Failed" and err.kind is Kind.TRANSIENT:
                cause = permanent_training_failures(self.hook.conn, name)
                if cause:
                    raise JobFailed(f"{err}. {cause}", kind=Kind.PERMANENT) from err
            raise

    def execute(self, context: Any) -> dict:
        """Reuse a completed tuning job, wait for a running one, or start the next attempt."""
        create = lambda: super(IdempotentTuningOperator, self).execute(context)  # noqa: E731
        return _tuning_result(self._run_idempotently(context, create))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict:
        """Resume after the trigger fired: check the job really completed."""
        parent = super().execute_complete
        return _tuning_result(self._resume(context, event, lambda: parent(context, event)))


def _error_is(err: Any, code: str, message_prefix: str) -> bool:
    error = err.response.get("Error", {})
    return error.get("Code") == code and str(error.get("Message", "")).startswith(message_prefix)


def ensure_model(conn: Any, request: dict[str, Any]) -> bool:
    """Create the model of ``request`` (CreateModel) unless a model of that name exists; True
    when this call created it.

    The name is content-addressed (``inference_requests.model_request``): an existing model of
    that name is this model, created by an earlier run date or try. SageMaker answers a
    ``ValidationException`` both for a missing model (``Could not find model "<arn>".``) and for
    many bad requests (``Could not find model data at s3://...``), so only that exact wording
    counts as "missing"; a create racing another task's gets ``Cannot create already existing
    model "<arn>".`` (matched as the SageMaker Python SDK's ``Session.create_model`` does)."""
    name = request["ModelName"]
    try:
        conn.describe_model(ModelName=name)
        return False
    except conn.exceptions.ClientError as err:
        if not _error_is(err, "ValidationException", 'Could not find model "'):
            raise
    try:
        conn.create_model(**request)
    except conn.exceptions.ClientError as err:
        if _error_is(err, "ValidationException", "Cannot create already existing model"):
            return False
        raise
    return True


@failure_policy
class IdempotentTransformOperator(_IdempotentJob, SageMakerTransformOperator):
    """``SageMakerTransformOperator`` that reuses or resumes this request's transform job on
    re-runs.

    ``config`` is the bare CreateTransformJob request (``inference_requests.transform_request``,
    no ``Model`` key): the model exists already (``ensure_model``). A job that does not end
    ``Completed`` fails the task with SageMaker's FailureReason (``require_completed``)."""

    kind = _TRANSFORM

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("action_if_job_exists", "fail")
        kwargs.setdefault("check_if_model_exists", False)
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict:
        """Reuse a completed job, wait for a running one, or start the next attempt."""
        create = lambda: super(IdempotentTransformOperator, self).execute(context)  # noqa: E731
        return {"Transform": serialize(self._run_idempotently(context, create))}

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict:
        """Resume after the trigger fired: check the job really completed."""
        parent = super().execute_complete
        described = self._resume(context, event, lambda: parent(context, event))
        return {"Transform": serialize(described)}


def find_registered_version(conn: Any, group: str, registration_key: str) -> str | None:
    """ARN of the version in ``group`` registered with ``registration_key``, if any."""
    try:
        conn.describe_model_package_group(ModelPackageGroupName=group)
    except conn.exceptions.ClientError as err:
        if err.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return None
        raise
    summaries = _paginate(
        conn.list_model_packages,
        "ModelPackageSummaryList",
        ModelPackageGroupName=group,
        SortBy="CreationTime",
        SortOrder="Descending",
    )
    for summary in summaries:
        if f"[{registration_key}]" not in summary.get("ModelPackageDescription", ""):
            continue
        described = conn.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        props = described.get("CustomerMetadataProperties", {})
        if props.get("registration_key") == registration_key:
            return summary["ModelPackageArn"]
    return None


def ensure_model_package_group(conn: Any, request: dict[str, Any]) -> bool:
    """Create the model package group of ``request`` (CreateModelPackageGroup, with its tags)
    unless it exists; True when this call created it.

    The provider's operator creates a missing group without tags, and a versioned package cannot
    carry tags itself (botocore's docs of CreateModelPackage.Tags), so the group is created here
    first. "Already exists" is matched the way the provider's ``create_model_package_group``
    matches it; an existing group keeps the tags it has."""
    try:
        conn.create_model_package_group(**request)
    except conn.exceptions.ClientError as err:
        error = err.response["Error"]
        if error["Code"] == "ValidationException" and error["Message"].startswith(
            "Model Package Group already exists"
        ):
            return False
        raise
    return True


@failure_policy
class IdempotentRegisterModelVersionOperator(SageMakerRegisterModelVersionOperator):
    """Registers one model version per run date and model.

    Only a try that registered the version pushes its Asset event's extra (XCom
    ``asset_event``) for the ``announce`` task after it (``dag_kit.announce_task``), so a re-run
    that finds its version emits nothing (a static Asset outlet here would emit on every
    successful try)."""

    template_fields: Sequence[str] = (
        *SageMakerRegisterModelVersionOperator.template_fields,
        "extras",
        "package_group",
    )

    def __init__(
        self,
        *,
        package_group: dict[str, Any] | None = None,
        on_new_version: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Notifiers (notifications.py) called once the version exists, with its ARN in the
        # context as ``model_package_arn``; a re-run that finds the version calls none.
        self.on_new_version = on_new_version or []
        # CreateModelPackageGroup request (with the tags); ``None`` leaves it to the provider.
        self.package_group = package_group

    def execute(self, context: Any) -> str:
        """Return the existing version's ARN, or register a new one (and push its event)."""
        key = self.extras["CustomerMetadataProperties"]["registration_key"]
        arn = find_registered_version(self.hook.conn, self.package_group_name, key)
        if arn:
            self.log.info(
                "Model version %s already registered for this run; reusing it (no new Asset event)",
                arn,
            )
            return arn
        if self.package_group and ensure_model_package_group(self.hook.conn, self.package_group):
            self.log.info("Created model package group %s", self.package_group_name)
        arn = super().execute(context)
        self.log.info("Registered model version %s", arn)
        described = self.hook.conn.describe_model_package(ModelPackageName=arn)
        extra = {
            "model_package_arn": arn,
            "model_package_group": self.package_group_name,
            "approval_status": described["ModelApprovalStatus"],
            "run_date": self.extras["CustomerMetadataProperties"].get("run_date", ""),
        }
        context["ti"].xcom_push(key=ASSET_EVENT_KEY, value=extra)
        self._notify_new_version(context, arn)
        return arn

    def _notify_new_version(self, context: Any, arn: str) -> None:
        for notifier in self.on_new_version:
            try:
                # A copy: rendering a notifier replaces its templates with their values.
                copy.copy(notifier)({**context, "model_package_arn": arn})
            except Exception as err:  # the version is registered: a lost message must not undo it
                self.log.warning("Could not send the new-version notification: %s", err)


@failure_policy
class DataArrivalSensor(SqlSensor):
    """``SqlSensor`` under the failure policy: a SQL or auth error in the data-arrival query fails
    at once instead of being poked and retried until the sensor's timeout."""


@failure_policy
class PrestoToS3Operator(BaseOperator):
    """Run a templated Presto SQL file and stream its result to S3 as Parquet (or, for batch
    transform input, gzip CSV) parts; with ``unload`` (a Hive catalog and schema) Presto writes
    Parquet files to S3 itself instead (``extract.mode: presto_unload``).

    The SQL is rendered by Airflow (``template_ext`` ``.sql``, the DAG's StrictUndefined), so the
    exact query of each run shows in the UI's Rendered Template tab.
    """

    template_fields: Sequence[str] = ("sql", "s3_prefix", "context_label")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#d8e9f9"

    def __init__(
        self,
        *,
        sql: str,
        s3_bucket: str,
        s3_prefix: str,
        presto_conn_id: str,
        aws_conn_id: str,
        chunk_rows: int,
        file_format: str = "parquet",
        context_label: str = "",
        unload: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if unload is not None and file_format != "parquet":
            raise ValueError("Presto writes Parquet only: unload needs file_format parquet")
        self.file_format = file_format
        self.unload = unload
        self.sql = sql
        self.s3_bucket = s3_bucket
        self.s3_prefix = s3_prefix
        self.presto_conn_id = presto_conn_id
        self.aws_conn_id = aws_conn_id
        self.chunk_rows = chunk_rows
        self.context_label = context_label

    def execute(self, context: Any) -> dict:
        """Write the query result to S3; return the manifest (row count, schema, parts)."""
        if self.unload is not None:
            from mlops_sagemaker.unload import unload_to_s3

            catalog, schema = self.unload
            return unload_to_s3(
                sql=self.sql,
                presto_conn_id=self.presto_conn_id,
                aws_conn_id=self.aws_conn_id,
                bucket=self.s3_bucket,
                prefix=self.s3_prefix,
                catalog=catalog,
                schema=schema,
                context_label=self.context_label,
            )
        from mlops_sagemaker.extract import extract_to_s3

        return extract_to_s3(
            sql=self.sql,
            presto_conn_id=self.presto_conn_id,
            aws_conn_id=self.aws_conn_id,
            bucket=self.s3_bucket,
            prefix=self.s3_prefix,
            chunk_rows=self.chunk_rows,
            file_format=self.file_format,
            context_label=self.context_label,
        )


@failure_policy
class EndpointDeployedSensor(BaseSensorOperator):
    """Waits (reschedule mode: no worker slot between pokes) until an endpoint serves the
    requested endpoint config.

    The provider's ``SageMakerEndpointSensor`` and its waiter report an update that SageMaker
    rolled back (``InService`` on the *old* ``EndpointConfigName``) and ``UpdateRollbackFailed``
    as success; here both fail the task with SageMaker's ``FailureReason`` and the config the
    endpoint still serves (``endpoint_tasks.deployed``)."""

    template_fields: Sequence[str] = ("endpoint_name", "endpoint_config_name")
    ui_color = "#ead8f9"

    def __init__(
        self, *, aws_conn_id: str, endpoint_name: str, endpoint_config_name: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.endpoint_name = endpoint_name
        self.endpoint_config_name = endpoint_config_name

    def poke(self, context: Any) -> bool:
        """True once the endpoint serves the config; raises when it failed or rolled back."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlops_sagemaker.endpoint_tasks import deployed, describe_endpoint

        conn = SageMakerHook(aws_conn_id=self.aws_conn_id).conn
        described = describe_endpoint(conn, self.endpoint_name)
        done = deployed(described, self.endpoint_name, self.endpoint_config_name)
        if not done and described is not None:
            pending = described.get("PendingDeploymentSummary") or {}
            stage = [v.get("VariantStatus") for v in pending.get("ProductionVariants", [])]
            self.log.info("%s is %s %s", self.endpoint_name, described["EndpointStatus"], stage)
        return done


THROUGH_STAGE_PARAM = "through_stage"


def skip_beyond_stage(stage_names: list[str], stage: str, params: Any) -> None:
    """Raise ``AirflowSkipException`` when ``stage`` comes after the run's ``through_stage``."""
    from airflow.sdk.exceptions import AirflowSkipException

    through = params.get(THROUGH_STAGE_PARAM) or stage_names[-1]
    if through in stage_names and stage_names.index(stage) > stage_names.index(through):
        raise AirflowSkipException(f"this run deploys through {through} only (Param)")


class StageApprovalOperator(ApprovalOperator):
    """The standard provider's ``ApprovalOperator`` for one endpoint stage: it asks only when
    the run deploys that stage (Param ``through_stage``); otherwise the stage is skipped."""

    def __init__(self, *, stage_names: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_names = stage_names

    def execute(self, context: Any) -> Any:
        """Skip beyond ``through_stage``; else ask (the parent defers until answered)."""
        skip_beyond_stage(self.stage_names, self.task_id.split(".")[0], context["params"])
        return super().execute(context)
