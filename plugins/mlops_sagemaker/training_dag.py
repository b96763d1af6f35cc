"""Build the training DAG of one use case from its validated config.

Presto sensor → streaming extraction to S3 → SageMaker Processing (split) → hyperparameter tuning
→ SageMaker Processing (evaluate) → quality gate → SageMaker Model Registry, with every request
built by ``sagemaker_requests`` at run time and sent by the Amazon provider's operators.
Nothing here touches the network at parse time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from airflow.sdk import DAG, Asset, AssetAlias, Param, get_current_context, task

from mlops_sagemaker import tasks
from mlops_sagemaker.config import UseCase
from mlops_sagemaker.failures import apply_policy
from mlops_sagemaker.operators import (
    CHECK_INTERVAL_PARAM,
    DataArrivalSensor,
    IdempotentProcessingOperator,
    IdempotentRegisterModelVersionOperator,
    IdempotentTuningOperator,
    PrestoToS3Operator,
)
from mlops_sagemaker.timetables import RangedCronDataIntervalTimetable


def model_versions_asset(config: UseCase) -> Asset:
    """The Asset updated each time the training DAG registers a model version."""
    return Asset(
        name=f"mlops.{config.use_case}.model_versions",
        uri=f"sagemaker://model-package-group/{config.registry.model_package_group}",
        group="mlops",
    )


def new_model_version_alias(config: UseCase) -> AssetAlias:
    """The alias ``register`` adds the model-versions Asset event to, only for a new version."""
    return AssetAlias(name=f"mlops.{config.use_case}.new_model_version", group="mlops")


def _doc(config: UseCase) -> str:
    t = config.tuning
    return f"""\
### Training: `{config.use_case}`

{config.description}

**Label** (`{config.dataset.label_column}`): {config.dataset.label_description}

| step | what happens |
|---|---|
| `wait_for_data` | waits (reschedule mode) until `{config.sql_dir}/{config.source.data_arrival_query}` is true for the run date |
| `extract` | streams `{config.sql_dir}/{config.source.training_query}` ({config.source.lookback_days}-day window ending at the data interval end) from Presto to `s3://{config.storage.bucket}/{config.storage.prefix}/{config.use_case}/training/<ds>/extract/` |
| `split` | SageMaker Processing runs `preprocess.py`: validation, deterministic hash split, training baseline |
| `tune` | SageMaker {t.strategy} tuning of a RandomForest, {t.max_jobs} jobs ({t.max_parallel_jobs} in parallel), objective `{t.objective.metric_name}` ({t.objective.type}) |
| `evaluate` | SageMaker Processing runs `evaluate.py` on the best model and the test split |
| `quality_gate` | fails unless test `{config.evaluation.metric}` ≥ {config.evaluation.threshold} (Param `evaluation_threshold` overrides per run) |
| `register` | new version in model package group `{config.registry.model_package_group}` with status `{config.registry.approval_status}` |

Clearing any task is safe: jobs whose inputs did not change are reused, not re-run, and a run date
registers at most one version per model. Owner: {config.owner}.
"""


def build_training_dag(config: UseCase, include_dir: Path) -> DAG:
    """The daily training DAG for ``config``; ``include_dir`` holds ``sql/`` and ``step_code/``."""
    aws, presto = config.connections.aws, config.connections.presto
    settings = config.sagemaker
    schedule = config.schedule
    lookback = timedelta(days=config.source.lookback_days)
    step_code_dir = include_dir / "step_code"

    def window_start(data_interval_end: datetime) -> str:
        return (data_interval_end.date() - lookback).isoformat()

    job_wait = {
        "aws_conn_id": aws,
        "check_interval": settings.check_interval_seconds,
        "max_ingestion_time": settings.max_job_wait_seconds,
        "deferrable": settings.deferrable,
    }

    with DAG(
        dag_id=f"mlops_{config.use_case}_training",
        description=f"Retrain, evaluate and register the {config.use_case} model",
        doc_md=_doc(config),
        # The date range lives on the timetable, not the DAG (see timetables.py): a manual run
        # outside it then fails in check_run_date instead of "succeeding" with no task run.
        schedule=RangedCronDataIntervalTimetable(
            schedule.cron, "UTC", schedule.start_date, schedule.end_date
        ),
        start_date=None,
        catchup=schedule.catchup,
        max_active_runs=schedule.max_active_runs,
        tags=["mlops", config.use_case, "training"],
        template_searchpath=[str(include_dir / "sql" / config.sql_dir)],
        template_undefined=jinja2.StrictUndefined,
        user_defined_macros={
            "source": {"catalog": config.source.catalog, "schema": config.source.schema_},
            "window_start": window_start,
        },
        params={
            "evaluation_threshold": Param(
                config.evaluation.threshold,
                type="number",
                minimum=0,
                maximum=1,
                title="Evaluation threshold",
                description=f"Minimum test {config.evaluation.metric} to register the model.",
            ),
            CHECK_INTERVAL_PARAM: Param(
                settings.check_interval_seconds,
                type="integer",
                minimum=1,
                maximum=3600,
                title="SageMaker poll interval (s)",
                description="How often to poll SageMaker jobs in this run.",
            ),
        },
        default_args={
            "owner": config.owner,
            "retries": schedule.retries,
            "retry_delay": timedelta(seconds=schedule.retry_delay_seconds),
            # Only transient failures reach a retry (failures.py): back off exponentially.
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(seconds=schedule.max_retry_delay_seconds),
        },
    ) as dag:
        check = check_run_date_task(config)
        wait_for_data = DataArrivalSensor(
            task_id="wait_for_data",
            conn_id=presto,
            sql=config.source.data_arrival_query,
            mode="reschedule",
            poke_interval=config.source.sensor.poke_interval_seconds,
            timeout=config.source.sensor.timeout_seconds,
            fail_on_empty=True,
            doc_md="True once the run date's data is in Presto.",
        )
        extract = PrestoToS3Operator(
            task_id="extract",
            sql=config.source.training_query,
            s3_bucket=config.storage.bucket,
            s3_prefix=f"{config.storage.prefix}/{config.use_case}/training/{{{{ ds }}}}/extract",
            presto_conn_id=presto,
            aws_conn_id=aws,
            chunk_rows=config.source.extract_chunk_rows,
            context_label=(
                "order dates {{ window_start(data_interval_end) }} .. "
                "{{ data_interval_end | ds }} (exclusive)"
            ),
        )

        @task
        @apply_policy
        def stage_code() -> dict[str, str]:
            """Upload the content-addressed step code; resolve the container image."""
            return tasks.stage_code(config, step_code_dir, aws)

        @task
        @apply_policy
        def plan_split(staged: dict, manifest: dict) -> dict:
            """Build the split processing job request."""
            return tasks.plan_split(config, tasks.run_info(get_current_context()), staged, manifest)

        @task
        @apply_policy
        def plan_tuning(staged: dict, split_result: dict) -> dict:
            """Build the tuning job request from the split's outputs."""
            run = tasks.run_info(get_current_context())
            return tasks.plan_tuning(config, run, staged, split_result)

        @task
        @apply_policy
        def best_model(tuning_result: dict) -> dict:
            """Name, objective and artifact of the tuning job's best training job."""
            from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

            hook = SageMakerHook(aws_conn_id=aws)
            return tasks.best_model(tuning_result, hook.describe_training_job)

        @task
        @apply_policy
        def plan_evaluation(staged: dict, split_result: dict, model: dict) -> dict:
            """Build the evaluation processing job request."""
            run = tasks.run_info(get_current_context())
            return tasks.plan_evaluation(config, run, staged, split_result, model)

        @task(retries=0)
        @apply_policy
        def quality_gate(evaluation_result: dict) -> dict:
            """Fail (without retries) unless the model reaches the threshold."""
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            uri = tasks.evaluation_uri(evaluation_result)
            evaluation = json.loads(S3Hook(aws_conn_id=aws).read_key(uri))
            params = get_current_context()["params"]
            summary = tasks.quality_gate(config, evaluation, params.get("evaluation_threshold"))
            return {**summary, "evaluation_uri": uri}

        @task
        @apply_policy
        def plan_registration(
            staged: dict, model: dict, gate: dict, manifest: dict, split_result: dict
        ) -> dict:
            """Build the model-version registration (request, metadata, metrics)."""
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            baseline_uri = tasks.processing_outputs(split_result)["baseline"]
            baseline = json.loads(S3Hook(aws_conn_id=aws).read_key(baseline_uri + "baseline.json"))
            run = tasks.run_info(get_current_context())
            return tasks.plan_registration(
                config,
                run,
                staged,
                model,
                gate,
                manifest,
                baseline.get("rows_per_split", {}),
            )

        staged = stage_code()
        split_plan = plan_split(staged, extract.output)
        split = IdempotentProcessingOperator(task_id="split", config=split_plan, **job_wait)
        tune = IdempotentTuningOperator(
            task_id="tune", config=plan_tuning(staged, split.output), **job_wait
        )
        model = best_model(tune.output)
        evaluate = IdempotentProcessingOperator(
            task_id="evaluate",
            config=plan_evaluation(staged, split.output, model),
            **job_wait,
        )
        gate = quality_gate(evaluate.output)
        registration = plan_registration(staged, model, gate, extract.output, split.output)
        IdempotentRegisterModelVersionOperator(
            task_id="register",
            aws_conn_id=aws,
            image_uri=registration["image_uri"],
            model_url=registration["model_url"],
            package_group_name=registration["package_group_name"],
            package_desc=registration["package_desc"],
            extras=registration["extras"],
            package_group=registration["package_group"],
            outlets=[new_model_version_alias(config)],
            new_version_asset=model_versions_asset(config),
        )
        check >> wait_for_data >> extract
        check >> staged

    return dag


def check_run_date_task(config: UseCase) -> Any:
    """A task failing loudly when the run's logical date is outside the configured range."""

    @task(task_id="check_run_date", retries=0)
    @apply_policy
    def check_run_date() -> str:
        """Fail (no retries) unless the run date is within schedule.start_date/end_date."""
        context = get_current_context()
        return tasks.check_run_date(config, context["logical_date"])

    return check_run_date().operator


__all__ = ["build_training_dag", "check_run_date_task", "model_versions_asset"]
