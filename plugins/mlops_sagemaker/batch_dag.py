"""Build the batch-inference DAG of one use case from its validated config.

wait → extract (gzip CSV: key, features) → select model → approve → model → transform
(SageMaker batch transform joining each prediction to its key) → check (every key once, counts,
probabilities; then Parquet predictions under ``predictions/ds=YYYY-MM-DD/``) → drift (PSI of the
batch against the version's training baseline). Shared pieces come from ``dag_kit``; task
bodies are in ``batch_tasks``. Nothing here touches the network at parse time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, TaskGroup, get_current_context, task

from mlops_sagemaker import batch_tasks, tasks
from mlops_sagemaker.config import UseCase
from mlops_sagemaker.dag_kit import PipelineKit, announce_task, approved_versions_asset, param
from mlops_sagemaker.failures import apply_policy
from mlops_sagemaker.operators import IdempotentTransformOperator
from mlops_sagemaker.payloads import ASSET_EVENT_KEY, ExtractManifest

log = logging.getLogger(__name__)
SELECTION_PARAM = "model_selection"
PINNED_PARAM = "pinned_version"


def predictions_asset(config: UseCase) -> Asset:
    """The Asset updated by every successful batch run (extra: ds, rows, model, output URI)."""
    return Asset(
        name=f"mlops.{config.use_case}.predictions",
        uri=batch_tasks.predictions_root(config),
        group="mlops",
    )


def drift_asset(config: UseCase) -> Asset:
    """The Asset a batch run updates when a feature's PSI reaches ``drift.retrain``; the
    training DAG can be scheduled on it."""
    storage = config.storage
    return Asset(
        name=f"mlops.{config.use_case}.drift",
        uri=f"s3://{storage.bucket}/{storage.prefix}/{config.use_case}/batch_inference/drift/",
        group="mlops",
    )


def _doc(config: UseCase) -> str:
    batch = config.need_batch()
    return f"""\
### Batch inference: `{config.use_case}`

{config.description}

| step | what happens |
|---|---|
| `wait_for_data` | waits (reschedule mode) until `{config.sql_dir}/{batch.data_arrival_query}` is true |
| `extract` | streams `{config.sql_dir}/{batch.query}` ({batch.lookback_days}-day window) to S3 as gzip CSV parts: key, then the features |
| `select_model` | `{batch.model.selection}` version of `{config.model_package_group}` (Params `{SELECTION_PARAM}` / `{PINNED_PARAM}` override per run) |
| `approve` | approval mode `{batch.approval.mode}`; `announce` adds the approved-versions Asset event when this run approved a version, else is skipped |
| `model` | SageMaker model of the version (content-addressed name, reused) |
| `transform` (`plan`, `job`) | SageMaker batch transform; each prediction is joined to its row's key |
| `check` | every input key exactly once, row counts equal, probabilities in [0, 1]; then Parquet predictions in `{batch_tasks.predictions_root(config)}ds=<ds>/` |
| `drift` (`measure`, `announce`) | population stability index per feature against the version's training baseline (warn ≥ {batch.drift.warn}, retrain ≥ {batch.drift.retrain}); `announce` adds the drift Asset event at the retrain level, else is skipped |

Clearing any task is safe: the model and the transform job are reused and the predictions of a
date are rewritten byte for byte. Owner: {config.owner}.
"""


def _params(config: UseCase) -> dict[str, Param]:
    model = config.need_batch().model
    return {
        SELECTION_PARAM: param(
            model.selection,
            enum=["latest_approved", "as_of_run_date", "pinned"],
            title="Model selection",
            description="Which Approved version scores this run.",
        ),
        # Nullable: the trigger form marks a plain string Param required and keeps Trigger
        # disabled while it is empty.
        PINNED_PARAM: param(
            model.pinned_version,
            type=["null", "string"],
            title="Pinned version",
            description="Version number or model package ARN (selection: pinned).",
        ),
    }


def build_batch_inference_dag(config: UseCase, include_dir: Path) -> DAG:
    """The batch-inference DAG for ``config``; ``include_dir`` holds ``sql/``."""
    kit = PipelineKit(config, "batch_inference", include_dir)
    with kit.dag(
        description=f"Score the {config.use_case} rows of each run date with an approved model",
        doc_md=_doc(config),
        params=_params(config),
    ) as dag:
        manifest = kit.opening(file_format="csv.gz").extract.output
        choice = _select_model(config, manifest)
        with TaskGroup("approve", tooltip=f"Approval ({config.need_batch().approval.mode})"):
            version = _approval(config, choice)
        model_name = _model(config, version)
        with TaskGroup("transform", tooltip="SageMaker batch transform"):
            plan = _plan_transform(config, model_name, manifest)
            transform = IdempotentTransformOperator(task_id="job", config=plan, **kit.job_kwargs())
        summary = _check(config, manifest, transform.output, version)
        with TaskGroup("drift", tooltip="Feature drift against the training baseline"):
            _drift(config, manifest, version, summary)
    return dag


def _select_model(config: UseCase, manifest: Any) -> Any:
    @task(task_id="select_model")
    @apply_policy
    def select_model(manifest: dict) -> dict:
        """Pick the version per the selection (and the pending candidate, if approvals apply)."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlops_sagemaker.model_registry import select_model

        batch_tasks.check_input_columns(config, ExtractManifest.from_xcom(manifest))
        context = get_current_context()
        params = context["params"]
        choice = select_model(
            SageMakerHook(aws_conn_id=config.connections.aws).conn,
            group=config.model_package_group,
            selection=params[SELECTION_PARAM],
            ds=context["ds"],
            pinned=params.get(PINNED_PARAM) or None,
            consider_pending=config.need_batch().approval.mode != "none",
        )
        log.info("Model choice: %s", choice)
        return choice.as_xcom()

    return select_model(manifest)


def _approval(config: UseCase, choice: Any) -> Any:
    """The approval step of the configured mode, then ``version`` (the version to use)."""
    mode = config.need_batch().approval.mode
    if mode == "auto":
        gate = _auto_approve(config, choice)
    elif mode == "airflow":
        gate = _ask_in_airflow(config)
    elif mode == "registry":
        gate = _wait_in_registry(config)
    else:
        gate = None
    version = _version_to_use(config, choice)
    if gate is not None:
        # The sensor and the HITL operator read the choice from XCom: order them explicitly.
        choice >> gate >> version
    if mode in ("auto", "airflow"):
        source = getattr(gate, "operator", gate).task_id  # an XComArg of @task, or an operator
        gate >> announce_task(approved_versions_asset(config), source=source)
    return version


def _auto_approve(config: UseCase, choice: Any) -> Any:
    @task(task_id="auto")
    @apply_policy
    def auto(choice: dict) -> str:
        """Approve the pending candidate if its registered metric passes the gate; an approval
        asks ``announce`` for the approved-versions Asset event (the endpoint DAG deploys on it)."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlops_sagemaker.model_registry import APPROVED, ModelChoice, describe_version

        conn = SageMakerHook(aws_conn_id=config.connections.aws).conn
        context = get_current_context()
        candidate = ModelChoice.from_xcom(choice)
        decision = batch_tasks.approve_automatically(conn, config, candidate, context["run_id"])
        log.info("Auto approval: %s", decision)
        if candidate.pending is not None:
            now = describe_version(conn, candidate.pending.arn)
            if now.status == APPROVED:
                extra = {"model_package_arn": now.arn, "version": now.version, "by": "auto"}
                context["ti"].xcom_push(key=ASSET_EVENT_KEY, value=extra)
        return decision

    return auto(choice)


def _ask_in_airflow(config: UseCase) -> Any:
    from mlops_sagemaker.model_registry import RegistryApprovalOperator

    approval, gate = config.need_batch().approval, config.approval_gate()
    return RegistryApprovalOperator(
        task_id="ask",
        aws_conn_id=config.connections.aws,
        choice_task_id="select_model",
        metric=gate.metric,
        threshold=gate.threshold,
        subject=f"Approve a new {config.use_case} model version?",
        response_timeout=timedelta(seconds=approval.response_timeout_seconds),
        assigned_users=[{"id": u, "name": u} for u in approval.assigned_users] or None,
    )


def _wait_in_registry(config: UseCase) -> Any:
    from mlops_sagemaker.model_registry import ModelApprovalSensor

    approval = config.need_batch().approval
    return ModelApprovalSensor(
        task_id="wait",
        aws_conn_id=config.connections.aws,
        model_package_arn=(
            "{{ (ti.xcom_pull(task_ids='select_model')['pending'] or {}).get('arn', '') }}"
        ),
        mode="reschedule",
        poke_interval=approval.poke_interval_seconds,
        timeout=approval.timeout_seconds,
    )


def _version_to_use(config: UseCase, choice: Any) -> Any:
    @task(task_id="version")
    @apply_policy
    def version(choice: dict) -> dict:
        """The version to score with: the candidate if now Approved, else the approved one."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlops_sagemaker.model_registry import ModelChoice

        conn = SageMakerHook(aws_conn_id=config.connections.aws).conn
        chosen = batch_tasks.version_to_use(conn, ModelChoice.from_xcom(choice))
        log.info("Scoring with %s (version %s, %s)", chosen.arn, chosen.version, chosen.status)
        return chosen.as_xcom()

    return version(choice)


def _model(config: UseCase, version: Any) -> Any:
    @task(task_id="model")
    @apply_policy
    def model(version: dict) -> str:
        """Create the SageMaker model of the version unless it exists (content-addressed)."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlops_sagemaker.model_registry import ModelVersion
        from mlops_sagemaker.operators import ensure_model

        request = batch_tasks.plan_model(config, ModelVersion.from_xcom(version))
        conn = SageMakerHook(aws_conn_id=config.connections.aws).conn
        created = ensure_model(conn, request)
        name = request["ModelName"]
        log.info("%s model %s", "Created" if created else "Reusing existing", name)
        return name

    return model(version)


def _plan_transform(config: UseCase, model_name: Any, manifest: Any) -> Any:
    @task(task_id="plan")
    @apply_policy
    def plan(model_name: str, manifest: dict) -> dict:
        """Build the batch transform request over the run's extracted parts."""
        run = tasks.run_info(get_current_context())
        extracted = ExtractManifest.from_xcom(manifest)
        return batch_tasks.plan_transform(config, run, model_name, extracted)

    return plan(model_name, manifest)


def _check(config: UseCase, manifest: Any, transform_result: Any, version: Any) -> Any:
    @task(task_id="check", retries=0)
    @apply_policy
    def check(manifest: dict, transform_result: dict, version: dict) -> dict:
        """Check the transform output against the input keys; publish Parquet predictions."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from mlops_sagemaker.model_registry import ModelVersion
        from mlops_sagemaker.predictions import check_and_publish

        ds = get_current_context()["ds"]
        summary = check_and_publish(
            S3Hook(aws_conn_id=config.connections.aws).get_conn(),
            manifest=manifest,
            transform_output_uri=transform_result["Transform"]["TransformOutput"]["S3OutputPath"],
            predictions_uri=f"{batch_tasks.predictions_root(config)}ds={ds}/",
            model_package_arn=ModelVersion.from_xcom(version).arn,
            ds=ds,
            key_column=config.dataset.key_column,
        )
        log.info("Checks passed: %s", summary)
        return summary.as_xcom()

    return check(manifest, transform_result, version)


def _drift(config: UseCase, manifest: Any, version: Any, summary: Any) -> Any:
    predictions = predictions_asset(config)

    @task(task_id="measure", outlets=[predictions])
    @apply_policy
    def drift(manifest: dict, version: dict, summary: dict) -> dict:
        """PSI per feature against the training baseline; the predictions' Asset event."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from mlops_sagemaker.drift import DriftDetected
        from mlops_sagemaker.model_registry import ModelVersion

        context = get_current_context()
        chosen = ModelVersion.from_xcom(version)
        s3 = S3Hook(aws_conn_id=config.connections.aws).get_conn()
        extracted = ExtractManifest.from_xcom(manifest)
        outcome, report = batch_tasks.measure_drift(s3, config, context["ds"], chosen, extracted)
        log.info("Drift against %s:\n%s", chosen.baseline_uri, report.table() if report else "")
        if outcome.note:
            log.warning("%s", outcome.note)
        extra = {**summary, "run_date": context["ds"], "drift_level": outcome.level}
        extra["drift_report_uri"] = outcome.report_uri
        extra["drift_warnings"] = list(outcome.warnings)
        context["outlet_events"][predictions].extra = extra
        if outcome.level == "retrain":
            context["ti"].xcom_push(key=ASSET_EVENT_KEY, value=extra)
            if config.need_batch().drift.fail_on_retrain:
                raise DriftDetected(
                    f"Feature drift over the retrain threshold: {outcome.psi} (report "
                    f"{outcome.report_uri}); drift.fail_on_retrain is set"
                )
        return outcome.as_xcom()

    measured = drift(manifest, version, summary)
    measured >> announce_task(drift_asset(config), source=measured.operator.task_id)
    return measured


__all__ = ["build_batch_inference_dag", "drift_asset", "predictions_asset"]
