"""Choosing and approving the model version a batch-inference run scores with.

Versions come from the SageMaker Model Registry (the training DAG registers them with
``run_date``, ``test_<metric>`` and ``gate_threshold`` in their ``CustomerMetadataProperties``,
the evaluation.json as ``ModelMetrics.ModelQuality`` and the training baseline as
``DriftCheckBaselines.ModelDataQuality``). Every call goes through a boto3 SageMaker client
(``SageMakerHook(aws_conn_id).conn``); AWS errors are left to the failure policy.

* :func:`select_model` picks the version for a run (``latest_approved``, ``as_of_run_date``,
  ``pinned``) and, for the approval modes, the newer ``PendingManualApproval`` candidate.
* :func:`auto_approve` approves a candidate whose registered metric passes a gate.
* :class:`RegistryApprovalOperator` asks a person in the Airflow UI (human in the loop) and
  writes the answer to the registry; :class:`ModelApprovalSensor` waits until someone approves
  the candidate in SageMaker instead.

No provider operator or sensor reads or changes a model package's approval, hence this module.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException
from botocore.exceptions import ClientError

from mlops_sagemaker.failures import ClassifiedError, failure_policy
from mlops_sagemaker.payloads import ASSET_EVENT_KEY

APPROVED = "Approved"
PENDING = "PendingManualApproval"
REJECTED = "Rejected"
SELECTIONS = ("latest_approved", "as_of_run_date", "pinned")
# Metrics shown in the approval body, in this order (evaluate.py's binary classification keys).
BODY_METRICS = ("auc", "accuracy", "precision", "recall", "f1")
MAX_APPROVAL_DESCRIPTION = 1024  # UpdateModelPackage.ApprovalDescription (botocore's model)
NEWEST_SHOWN = 5  # versions listed in a NoModelVersion message
# What SageMaker answers for an unknown group or package (find_registered_version matches both).
NOT_FOUND_CODES = ("ValidationException", "ResourceNotFound")


class NoModelVersion(ClassifiedError):
    """No registered version fits the run's selection (permanent: approve or register one)."""

    category = "model-selection"


class ModelRejected(ClassifiedError):
    """A person rejected the candidate and the approval task is set to fail on reject."""

    category = "model-selection"


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model package group, as the batch pipeline needs it (XCom-safe)."""

    arn: str
    group: str
    version: int
    status: str
    run_date: str | None
    metrics: dict[str, float]
    created: str
    evaluation_uri: str | None
    baseline_uri: str | None
    description: str

    @classmethod
    def from_description(cls, described: Mapping[str, Any]) -> ModelVersion:
        """Build from a ``DescribeModelPackage`` response."""
        props = described.get("CustomerMetadataProperties") or {}
        created = described.get("CreationTime")
        return cls(
            arn=described["ModelPackageArn"],
            group=described.get("ModelPackageGroupName", ""),
            version=int(described.get("ModelPackageVersion") or 0),
            status=described.get("ModelApprovalStatus", ""),
            run_date=props.get("run_date") or None,
            metrics=_registered_metrics(props),
            created=created.isoformat() if hasattr(created, "isoformat") else str(created or ""),
            evaluation_uri=_s3_uri(described, "ModelMetrics", "ModelQuality"),
            baseline_uri=_s3_uri(described, "DriftCheckBaselines", "ModelDataQuality"),
            description=described.get("ModelPackageDescription", ""),
        )

    def as_xcom(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what tasks pass on)."""
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> ModelVersion:
        """Rebuild from :meth:`as_xcom`'s dict."""
        return cls(**{**data, "metrics": dict(data.get("metrics") or {})})

    def label(self) -> str:
        """``version 3 (run date 1996-02-29)`` for messages."""
        return f"version {self.version} (run date {self.run_date or 'unknown'})"


def _registered_metrics(props: Mapping[str, str]) -> dict[str, float]:
    """``test_<metric>`` metadata as ``{metric: value}``; values that are not numbers are left
    out (metadata is free text, a person may have edited it)."""
    metrics = {}
    for key, value in props.items():
        if key.startswith("test_"):
            try:
                metrics[key.removeprefix("test_")] = float(value)
            except ValueError:
                continue
    return metrics


def _s3_uri(described: Mapping[str, Any], section: str, kind: str) -> str | None:
    return (((described.get(section) or {}).get(kind) or {}).get("Statistics") or {}).get("S3Uri")


@dataclass(frozen=True)
class ModelChoice:
    """The selection's answer: the approved version (if any) and, for the approval modes, a
    newer ``PendingManualApproval`` candidate (if any). At least one of them is set."""

    selection: str
    approved: ModelVersion | None
    pending: ModelVersion | None

    @property
    def to_use(self) -> ModelVersion:
        """The version the run scores with once its approval step passed: the pending
        candidate when there is one, else the approved version."""
        chosen = self.pending or self.approved
        if chosen is None:  # select_model never builds such a choice
            raise NoModelVersion("the model choice holds no version")
        return chosen

    def as_xcom(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the selection task's return value)."""
        return {
            "selection": self.selection,
            "approved": self.approved.as_xcom() if self.approved else None,
            "pending": self.pending.as_xcom() if self.pending else None,
        }

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> ModelChoice:
        """Rebuild from :meth:`as_xcom`'s dict."""
        return cls(
            selection=data["selection"],
            approved=ModelVersion.from_xcom(data["approved"]) if data.get("approved") else None,
            pending=ModelVersion.from_xcom(data["pending"]) if data.get("pending") else None,
        )


# --------------------------------------------------------------------------- reading the registry


def _summaries(conn: Any, group: str, status: str | None = None) -> Iterator[dict[str, Any]]:
    """Version summaries of ``group``, newest first, fetched page by page as iterated."""
    request: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelPackageType": "Versioned",
        "SortBy": "CreationTime",
        "SortOrder": "Descending",
    }
    if status:
        request["ModelApprovalStatus"] = status
    for page in conn.get_paginator("list_model_packages").paginate(**request):
        yield from page.get("ModelPackageSummaryList", [])


def _describe(conn: Any, arn: str) -> ModelVersion:
    return ModelVersion.from_description(conn.describe_model_package(ModelPackageName=arn))


def describe_version(conn: Any, model_package: str | tuple[str, int]) -> ModelVersion:
    """The version named by its ARN, or by ``(group, version number)``.

    Raises :class:`NoModelVersion` when the group has no such version number."""
    if isinstance(model_package, str):
        return _describe(conn, model_package)
    group, number = model_package
    for summary in _summaries(conn, group):
        if int(summary.get("ModelPackageVersion") or 0) == int(number):
            return _describe(conn, summary["ModelPackageArn"])
    raise _no_version(conn, group, f"model package group {group!r} has no version {number}")


def _newest(
    conn: Any, group: str, status: str, *, as_of: str | None, newer_than: int = 0
) -> tuple[ModelVersion | None, int]:
    """The newest version with ``status`` whose number is above ``newer_than``, plus how many
    versions were passed over for having no run_date.

    Without ``as_of``, "newest" is the highest version number (numbers follow creation order
    within a group: no clock-precision ties) and one version is described. With ``as_of`` it is
    the version trained for the latest ``run_date <= as_of`` (ties: the highest number): a
    backfill registers versions out of date order, so creation order would pick a model
    trained on another period. That needs every candidate described."""
    undated = 0
    best: ModelVersion | None = None
    for summary in _summaries(conn, group, status):
        if int(summary.get("ModelPackageVersion") or 0) <= newer_than:
            break
        version = _describe(conn, summary["ModelPackageArn"])
        if as_of is None:
            return version, undated
        if version.run_date is None:
            undated += 1
        elif version.run_date <= as_of and (best is None or version.run_date > best.run_date):
            best = version  # versions come newest first: an equal run_date keeps the newer
    return best, undated


# --------------------------------------------------------------------------- selection


def select_model(
    conn: Any,
    *,
    group: str,
    selection: Literal["latest_approved", "as_of_run_date", "pinned"],
    ds: str,
    pinned: str | None = None,
    consider_pending: bool = False,
) -> ModelChoice:
    """Choose the version run ``ds`` scores with.

    * ``latest_approved``: the newest ``Approved`` version;
    * ``as_of_run_date``: the ``Approved`` version trained for the latest ``run_date <= ds``
      (the newest of those on a tie; versions without a ``run_date`` are ignored);
    * ``pinned``: ``pinned`` (a version number or a model package ARN of ``group``).

    With ``consider_pending`` (the approval modes) the choice also carries the newest
    ``PendingManualApproval`` version that obeys the same rule and is newer than the approved
    one (for ``pinned``: the pinned version itself when it is pending).

    Raises :class:`NoModelVersion` (naming the group, the selection and what the group holds)
    when neither an approved nor a pending version is found.
    """
    if selection == "pinned":
        return _select_pinned(conn, group, pinned, consider_pending)
    if selection not in SELECTIONS:
        raise NoModelVersion(f"unknown model selection {selection!r}; use one of {SELECTIONS}")
    as_of = ds if selection == "as_of_run_date" else None
    approved, undated = _newest(conn, group, APPROVED, as_of=as_of)
    pending = None
    if consider_pending:
        newer_than = approved.version if approved else 0
        pending, _ = _newest(conn, group, PENDING, as_of=as_of, newer_than=newer_than)
    if approved is None and pending is None:
        what = (
            f"no Approved version of model package group {group!r} has run_date <= {ds} "
            f"(selection as_of_run_date, run date {ds})"
            if as_of
            else f"model package group {group!r} has no Approved version "
            "(selection latest_approved)"
        )
        if undated:
            what += f"; {undated} Approved version(s) have no run_date metadata and were ignored"
        raise _no_version(conn, group, what, consider_pending=consider_pending)
    return ModelChoice(selection, approved, pending)


def _select_pinned(
    conn: Any, group: str, pinned: str | None, consider_pending: bool
) -> ModelChoice:
    """The pinned version as approved, as pending (approval modes only), or NoModelVersion."""
    value = (pinned or "").strip()
    if value.isdigit():
        version = describe_version(conn, (group, int(value)))
    elif value.startswith("arn:"):
        version = _describe_pinned_arn(conn, group, value)
    else:
        raise NoModelVersion(
            f"pinned model version {pinned!r} is neither a version number nor a model package "
            "ARN: set batch_inference.model.pinned_version to e.g. 3 or arn:aws:sagemaker:..."
        )
    if version.group.lower() != group.lower():
        raise NoModelVersion(
            f"pinned model version {value} belongs to model package group {version.group!r}, "
            f"not to {group!r}: pin a version of {group!r} or change the package group"
        )
    if version.status == APPROVED:
        return ModelChoice("pinned", version, None)
    if version.status == PENDING and consider_pending:
        return ModelChoice("pinned", None, version)
    raise _no_version(
        conn,
        group,
        f"pinned {version.label()} of model package group {group!r} is {version.status} "
        f"(selection pinned, pinned_version {value})",
        consider_pending=consider_pending,
    )


def _describe_pinned_arn(conn: Any, group: str, arn: str) -> ModelVersion:
    try:
        return _describe(conn, arn)
    except ClientError as err:
        # Only "no such package" becomes a selection error; anything else is the policy's.
        if err.response.get("Error", {}).get("Code") not in NOT_FOUND_CODES:
            raise
        message = err.response["Error"].get("Message", "")
        raise _no_version(
            conn, group, f"pinned model package {arn} was not found ({message})"
        ) from err


def _no_version(
    conn: Any, group: str, what: str, *, consider_pending: bool = False
) -> NoModelVersion:
    """A NoModelVersion leading with ``what``, then what the group holds and how to fix it;
    a missing group is the root cause instead."""
    try:
        conn.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in NOT_FOUND_CODES:
            raise
        return NoModelVersion(
            f"model package group {group!r} does not exist: the training DAG creates it on its "
            "first registration. Run the training DAG first, or set "
            "batch_inference.model.package_group to an existing group"
        )
    summaries = list(_summaries(conn, group))
    if not summaries:
        return NoModelVersion(
            f"{what}. The group has no versions yet: the training DAG registers one when a "
            "model passes its quality gate"
        )
    counts = Counter(s.get("ModelApprovalStatus", "?") for s in summaries)
    newest = [_describe(conn, s["ModelPackageArn"]) for s in summaries[:NEWEST_SHOWN]]
    listing = "; ".join(
        f"v{v.version} {v.status} run_date {v.run_date or '(none)'}" for v in newest
    )
    hint = "Approve a version in the SageMaker Model Registry or change the model selection"
    if counts.get(PENDING) and not consider_pending:
        hint += (
            " (PendingManualApproval versions are used only with an approval mode: "
            "batch_inference.approval.mode auto, airflow or registry)"
        )
    return NoModelVersion(
        f"{what}. The group has {len(summaries)} version(s): "
        f"{', '.join(f'{n} {status}' for status, n in sorted(counts.items()))}; newest: "
        f"{listing}. {hint}"
    )


# --------------------------------------------------------------------------- approval


def set_approval(
    conn: Any, arn: str, status: Literal["Approved", "Rejected"], description: str
) -> None:
    """Set a version's approval status with its reason (``ApprovalDescription``, cut to the
    API's 1024 characters)."""
    if status not in (APPROVED, REJECTED):
        raise ValueError(f"approval status must be {APPROVED} or {REJECTED}, not {status!r}")
    conn.update_model_package(
        ModelPackageArn=arn,
        ModelApprovalStatus=status,
        ApprovalDescription=_fit(description),
    )


def _fit(text: str) -> str:
    if len(text) <= MAX_APPROVAL_DESCRIPTION:
        return text
    return text[: MAX_APPROVAL_DESCRIPTION - 1] + "…"


def auto_approve(
    conn: Any, version: ModelVersion, *, metric: str, threshold: float, approver: str
) -> tuple[bool, str]:
    """Approve a ``PendingManualApproval`` version when its registered ``test_<metric>`` is at
    least ``threshold``; returns (approved, reason).

    The reason goes to the version's ``ApprovalDescription`` either way, so the registry shows
    why a version was approved or why it still waits for a person. Below the gate the version
    stays pending (a person may still approve it); a version that is not pending is left as it
    is (a person's decision is never overridden)."""
    if version.status != PENDING:
        return version.status == APPROVED, f"{version.label()} is already {version.status}"
    value = version.metrics.get(metric)
    if value is None:
        reason = (
            f"Not auto-approved by {approver}: {version.label()} has no registered "
            f"test_{metric}; left PendingManualApproval for a person to decide"
        )
        conn.update_model_package(ModelPackageArn=version.arn, ApprovalDescription=_fit(reason))
        return False, reason
    if value >= threshold:
        reason = (
            f"Auto-approved by {approver}: registered test {metric} {value:.6f} >= gate "
            f"threshold {threshold:.6f}"
        )
        set_approval(conn, version.arn, APPROVED, reason)
        return True, reason
    reason = (
        f"Not auto-approved by {approver}: registered test {metric} {value:.6f} < gate "
        f"threshold {threshold:.6f}; left PendingManualApproval for a person to decide"
    )
    conn.update_model_package(ModelPackageArn=version.arn, ApprovalDescription=_fit(reason))
    return False, reason


def _fmt(value: Any) -> str:
    return f"{float(value):.4f}" if isinstance(value, int | float) else "—"


def _evaluated(evaluation: Mapping[str, Any] | None, metric: str) -> float | None:
    entry = ((evaluation or {}).get("binary_classification_metrics") or {}).get(metric)
    value = entry.get("value") if isinstance(entry, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


def approval_body(
    candidate: ModelVersion,
    evaluation: Mapping[str, Any] | None,
    current: ModelVersion | None,
    *,
    metric: str,
    threshold: float,
) -> str:
    """Markdown for the Airflow approval form: the candidate, its test metrics against the
    majority-class baseline (from evaluation.json when given, else the registered metrics),
    the gate, and the comparison with the currently approved version."""
    baseline = (evaluation or {}).get("baseline") or {}
    current_head = f"approved v{current.version}" if current else "approved (none)"
    rows = [
        f"| metric | v{candidate.version} | majority-class baseline | {current_head} |",
        "|---|---|---|---|",
    ]
    names = [
        m
        for m in BODY_METRICS
        if m == metric or m in candidate.metrics or _evaluated(evaluation, m) is not None
    ]
    for name in names:
        value = _evaluated(evaluation, name)
        value = candidate.metrics.get(name) if value is None else value
        known = current.metrics.get(name) if current else None
        rows.append(f"| {name} | {_fmt(value)} | {_fmt(baseline.get(name))} | {_fmt(known)} |")
    lines = [
        f"### Model version {candidate.version} of `{candidate.group}`",
        "",
        f"- Run date: {candidate.run_date or 'unknown'}; registered {candidate.created}",
        f"- ARN: `{candidate.arn}`",
        f"- Description: {candidate.description or '—'}",
        f"- Evaluation: `{candidate.evaluation_uri or 'not registered'}`",
        "",
        *rows,
        "",
        _gate_line(candidate, metric, threshold),
        "",
        _comparison_line(candidate, current, metric),
    ]
    return "\n".join(lines)


def _gate_line(candidate: ModelVersion, metric: str, threshold: float) -> str:
    """The gate on the registered metric (what ``auto_approve`` and the training gate use)."""
    value = candidate.metrics.get(metric)
    if value is None:
        return f"**Gate**: no test {metric} is registered (threshold {threshold:.4f})."
    sign, verdict = (">=", "passes") if value >= threshold else ("<", "**fails**")
    return (
        f"**Gate**: registered test {metric} {value:.4f} {sign} threshold {threshold:.4f}: "
        f"{verdict}."
    )


def _comparison_line(candidate: ModelVersion, current: ModelVersion | None, metric: str) -> str:
    """Registered metric against registered metric: the approved version's evaluation.json is
    not read, so both sides come from the same source."""
    if current is None:
        return (
            "**Currently approved**: none. Approving makes this the first version used for scoring."
        )
    head = f"**Currently approved**: {current.label()}, `{current.arn}`"
    mine, theirs = candidate.metrics.get(metric), current.metrics.get(metric)
    if mine is None or theirs is None:
        return f"{head}; its test {metric} is not comparable (not registered for both)."
    return (
        f"{head}: registered test {metric} {theirs:.4f}; this version {mine:.4f} "
        f"({mine - theirs:+.4f}). Approving replaces it for scoring; rejecting skips this run."
    )


# --------------------------------------------------------------------------- Airflow tasks


@failure_policy
class ModelApprovalSensor(BaseSensorOperator):
    """Waits until a model version is ``Approved`` in the SageMaker Model Registry (approval mode
    ``registry``). ``Rejected`` skips the task, and with it the rest of the run, with the
    version's ``ApprovalDescription`` as the reason. Reschedules by default: the wait, possibly
    days, never holds a worker slot."""

    template_fields: Sequence[str] = ("model_package_arn",)

    def __init__(
        self,
        *,
        model_package_arn: str,
        aws_conn_id: str | None = "aws_default",
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, **kwargs)
        self.model_package_arn = model_package_arn
        self.aws_conn_id = aws_conn_id

    def poke(self, context: Any) -> bool:
        """True once approved (or with no candidate to wait for: an empty ARN, what a template
        renders when the choice has no pending version); False while pending; skip when
        rejected."""
        if not self.model_package_arn:
            self.log.info("No pending model version to wait for: the approved version is used")
            return True
        conn = SageMakerHook(aws_conn_id=self.aws_conn_id).conn
        described = conn.describe_model_package(ModelPackageName=self.model_package_arn)
        version = ModelVersion.from_description(described)
        if version.status == APPROVED:
            self.log.info("Model %s is Approved: %s", version.label(), version.arn)
            return True
        if version.status == REJECTED:
            reason = described.get("ApprovalDescription") or "no ApprovalDescription given"
            raise AirflowSkipException(
                f"Model {version.label()} ({version.arn}) was rejected in the model registry: "
                f"{reason}; the rest of this run is skipped"
            )
        self.log.info(
            "Model %s is %s; waiting for someone to approve it in the SageMaker Model Registry",
            version.label(),
            version.status,
        )
        return False


@failure_policy
class RegistryApprovalOperator(ApprovalOperator):
    """Asks a person in the Airflow UI to approve the pending candidate of a model choice, and
    writes the answer to the model registry (approval mode ``airflow``).

    ``choice_task_id``'s return value is a :meth:`ModelChoice.as_xcom` dict. Without a pending
    candidate nothing is asked and the approved version is used. Approve sets the version
    ``Approved``; Reject sets it ``Rejected`` and skips the downstream tasks (the parent's
    behaviour; with ``fail_on_reject`` the task fails with :class:`ModelRejected` instead).
    The return value (XCom) is ``{"decision", "model_package_arn", "version"}``: the ARN to
    score with, ``None`` when the candidate was rejected. An approval also pushes the
    approved-versions event's extra (XCom ``asset_event``) for the ``announce`` task after it."""

    def __init__(
        self,
        *,
        choice_task_id: str,
        metric: str,
        threshold: float,
        aws_conn_id: str | None = "aws_default",
        subject: str = "Approve a model version for batch scoring",
        **kwargs: Any,
    ) -> None:
        super().__init__(subject=subject, **kwargs)
        self.choice_task_id = choice_task_id
        self.metric = metric
        self.threshold = threshold
        self.aws_conn_id = aws_conn_id

    def _choice(self, context: Any) -> ModelChoice:
        data = context["ti"].xcom_pull(task_ids=self.choice_task_id)
        if not data:
            raise NoModelVersion(
                f"task {self.choice_task_id!r} returned no model choice to approve"
            )
        return ModelChoice.from_xcom(data)

    def execute(self, context: Any) -> dict[str, Any]:
        """Return the approved version when there is nothing to ask; else ask and wait."""
        choice = self._choice(context)
        candidate = choice.pending
        if candidate is None:
            self.log.info(
                "No pending version newer than approved %s: nothing to ask", choice.to_use.arn
            )
            return _decision("already_approved", choice.to_use)
        self.subject = f"Approve model {candidate.label()} of {candidate.group} for batch scoring?"
        self.body = approval_body(
            candidate,
            self._evaluation(candidate),
            choice.approved,
            metric=self.metric,
            threshold=self.threshold,
        )
        return super().execute(context)

    def _evaluation(self, candidate: ModelVersion) -> dict[str, Any] | None:
        if not candidate.evaluation_uri:
            return None
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return json.loads(S3Hook(aws_conn_id=self.aws_conn_id).read_key(candidate.evaluation_uri))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Write the person's answer to the registry, then follow the parent (skip on Reject)."""
        if "error" in event:  # timeout without defaults: the parent raises its error
            return super().execute_complete(context=context, event=event)
        chosen = event["chosen_options"]
        self.validate_chosen_options(chosen)
        candidate = self._choice(context).pending
        if candidate is None:  # execute asks only about a pending candidate
            raise NoModelVersion(f"task {self.choice_task_id!r} holds no pending version to decide")
        approve = chosen[0] == self.APPROVE
        status = APPROVED if approve else REJECTED
        who = _responder(event)
        set_approval(
            SageMakerHook(aws_conn_id=self.aws_conn_id).conn,
            candidate.arn,
            status,
            f"{status} in Airflow by {who} (DAG {context['ti'].dag_id}, run "
            f"{context['ti'].run_id}, task {context['ti'].task_id})",
        )
        self.log.info("Model %s set %s in the registry (%s)", candidate.label(), status, who)
        decision = _decision(status.lower(), replace(candidate, status=status))
        if approve:
            extra = {"model_package_arn": candidate.arn, "version": candidate.version, "by": who}
            context["ti"].xcom_push(key=ASSET_EVENT_KEY, value=extra)
        if not approve:
            # The parent skips downstream by raising, so its return value never reaches XCom:
            # push the decision first.
            context["ti"].xcom_push(key="return_value", value=decision)
            if self.fail_on_reject:
                raise ModelRejected(
                    f"model {candidate.label()} ({candidate.arn}) was rejected in Airflow by "
                    f"{who}; the task fails because fail_on_reject is set"
                )
        super().execute_complete(context=context, event=event)
        return decision


def _responder(event: Mapping[str, Any]) -> str:
    """Who answered and when, for the ApprovalDescription."""
    user = event.get("responded_by_user")
    when = event.get("responded_at")
    on = f" on {when.isoformat()}" if hasattr(when, "isoformat") else ""
    if not user:
        return f"the task's default answer after the response timeout{on}"
    name, ident = user.get("name"), user.get("id")
    return f"{name} ({ident}){on}" if name and name != ident else f"{ident or name}{on}"


def _decision(decision: str, version: ModelVersion) -> dict[str, Any]:
    """The approval task's return value: the ARN to score with (None when rejected)."""
    return {
        "decision": decision,
        "model_package_arn": None if decision == "rejected" else version.arn,
        "version": version.as_xcom(),
    }
