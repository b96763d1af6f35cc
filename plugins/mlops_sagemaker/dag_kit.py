"""What every pipeline DAG of a use case shares, written once.

The training and batch-inference builders (and the endpoint builder after them) take a
:class:`PipelineKit` and get from it: the DAG itself (ranged cron timetable, default args with the
failure policy's exponential backoff, the StrictUndefined template environment with the
use case's ``source`` and ``window_start`` macros, the shared Params), the opening steps
``check_run_date`` → ``wait_for_data`` → ``extract``, code staging, and the job-wait settings of
the SageMaker operators. Nothing here touches the network at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from airflow.sdk import DAG, Asset, Param, get_current_context, task

from mlops_sagemaker import tasks
from mlops_sagemaker.config import BatchInference, Training, UseCase
from mlops_sagemaker.failures import apply_policy
from mlops_sagemaker.notifications import notifiers
from mlops_sagemaker.operators import CHECK_INTERVAL_PARAM, DataArrivalSensor, PrestoToS3Operator
from mlops_sagemaker.payloads import ASSET_EVENT_KEY
from mlops_sagemaker.timetables import RangedCronDataIntervalTimetable

# Airflow checks a Param's schema against its JSON Schema metaschema every time it reads the
# Param (about twice per task and Param when the DAG processor serializes a DAG: the largest
# part of the parse time a use case adds). The draft-07 metaschema is checked about 2.5x faster than the
# default 2020-12 one, and what our Params use (type, enum, minimum, maximum, title) means the
# same in both.
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def param(default: Any, description: str | None = None, **schema: Any) -> Param:
    """A DAG Param whose JSON schema (``schema``: type, enum, title, ...) declares draft-07."""
    return Param(default, description, **{"$schema": JSON_SCHEMA_DIALECT, **schema})


@dataclass(frozen=True)
class Opening:
    """The first tasks of a pipeline: the run-date check, the sensor and the extraction."""

    check: Any
    wait_for_data: Any
    extract: Any


@dataclass(frozen=True)
class PipelineKit:
    """One pipeline (``training`` or ``batch_inference``) of one use case."""

    config: UseCase
    pipeline: str
    include_dir: Path

    @property
    def section(self) -> Training | BatchInference:
        """The config section of this pipeline."""
        section = getattr(self.config, self.pipeline)
        if section is None:
            raise ValueError(f"use case {self.config.use_case} has no {self.pipeline} section")
        return section

    @property
    def dag_id(self) -> str:
        """``mlops_<use_case>_<pipeline>``."""
        return f"mlops_{self.config.use_case}_{self.pipeline}"

    @property
    def step_code_dir(self) -> Path:
        """The step scripts shipped to SageMaker."""
        return self.include_dir / "step_code"

    def window_start(self, data_interval_end: datetime) -> str:
        """First day of the pipeline's query window (``lookback_days`` before the interval end)."""
        lookback = timedelta(days=self.section.lookback_days)
        return (data_interval_end.date() - lookback).isoformat()

    def job_kwargs(self, slots: int = 1) -> dict[str, Any]:
        """Keyword arguments of the idempotent SageMaker job operators: how they wait, and the
        use case's pool, of which the job takes ``slots`` (a tuning job: its parallel jobs)."""
        settings = self.config.sagemaker
        return {
            "aws_conn_id": self.config.connections.aws,
            "check_interval": settings.check_interval_seconds,
            "max_ingestion_time": settings.max_job_wait_seconds,
            "deferrable": settings.deferrable,
            "pool": self.config.pool_name,
            "pool_slots": slots,
        }

    def dag(self, *, description: str, doc_md: str, params: dict[str, Param]) -> DAG:
        """The pipeline's DAG with the shared schedule, templates, Params and default args."""
        config, schedule = self.config, self.section.schedule
        return DAG(
            dag_id=self.dag_id,
            description=description,
            doc_md=doc_md,
            # The date range lives on the timetable, not the DAG (see timetables.py): a manual
            # run outside it then fails in check_run_date instead of "succeeding" with no task.
            schedule=(
                RangedCronDataIntervalTimetable(
                    schedule.cron, "UTC", schedule.start_date, schedule.end_date
                )
                if schedule.cron
                else None
            ),
            start_date=None,
            catchup=schedule.catchup,
            max_active_runs=schedule.max_active_runs,
            tags=["mlops", config.use_case, self.pipeline],
            template_searchpath=[str(self.include_dir / "sql" / config.sql_dir)],
            template_undefined=jinja2.StrictUndefined,
            user_defined_macros={
                "source": {"catalog": config.source.catalog, "schema": config.source.schema_},
                "window_start": self.window_start,
            },
            params={**params, CHECK_INTERVAL_PARAM: self._check_interval_param()},
            default_args=default_args(
                config,
                schedule.retries,
                schedule.retry_delay_seconds,
                schedule.max_retry_delay_seconds,
            ),
        )

    def _check_interval_param(self) -> Param:
        return param(
            self.config.sagemaker.check_interval_seconds,
            type="integer",
            minimum=1,
            maximum=3600,
            title="SageMaker poll interval (s)",
            description="How often to poll SageMaker jobs in this run.",
        )

    def opening(self, *, file_format: str = "parquet") -> Opening:
        """``check_run_date`` → ``wait_for_data`` → ``extract`` (call inside the DAG).

        Training's extraction follows ``extract.mode``; batch inference's always streams (its
        transform reads gzip CSV, which Presto's Hive writer does not produce as needed)."""
        config, section = self.config, self.section
        unload = None
        if config.extract.mode == "presto_unload" and self.pipeline == "training":
            unload = (config.extract.unload.catalog, config.extract.unload.schema_)
        check = check_run_date_task(config, self.pipeline)
        wait_for_data = DataArrivalSensor(
            task_id="wait_for_data",
            conn_id=config.connections.presto,
            sql=section.data_arrival_query,
            mode="reschedule",
            poke_interval=config.source.sensor.poke_interval_seconds,
            timeout=config.source.sensor.timeout_seconds,
            fail_on_empty=True,
            doc_md="True once the run date's data is in Presto.",
        )
        extract = PrestoToS3Operator(
            task_id="extract",
            sql=section.query,
            s3_bucket=config.storage.bucket,
            s3_prefix=(
                f"{config.storage.prefix}/{config.use_case}/{self.pipeline}/{{{{ ds }}}}/extract"
            ),
            presto_conn_id=config.connections.presto,
            aws_conn_id=config.connections.aws,
            chunk_rows=config.source.extract_chunk_rows,
            file_format=file_format,
            unload=unload,
            context_label=(
                "order dates {{ window_start(data_interval_end) }} .. "
                "{{ data_interval_end | ds }} (exclusive)"
            ),
        )
        check >> wait_for_data >> extract
        return Opening(check, wait_for_data, extract)

    def stage_code(self) -> Any:
        """A task uploading the content-addressed step code (returns ``StagedCode`` as XCom)."""
        config, step_code_dir = self.config, self.step_code_dir

        @task(task_id="stage_code")
        @apply_policy
        def stage_code() -> dict[str, str]:
            """Upload the content-addressed step code; resolve the container image."""
            return tasks.stage_code(config, step_code_dir, config.connections.aws).as_xcom()

        return stage_code()


def default_args(config: UseCase, retries: int, delay: int, max_delay: int) -> dict[str, Any]:
    """Default args of every pipeline DAG: owner, the retries of transient failures and the
    use case's failure notifications (``notifications.py``: after the last try only)."""
    args: dict[str, Any] = {
        "owner": config.owner,
        "retries": retries,
        "retry_delay": timedelta(seconds=delay),
        # Only transient failures reach a retry (failures.py): back off exponentially.
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=max_delay),
    }
    if on_failure := notifiers(config, "failure"):
        args["on_failure_callback"] = on_failure
    return args


def approved_versions_asset(config: UseCase) -> Asset:
    """The Asset updated when one of our DAGs approves a model version (the endpoint DAG runs
    on it); extra: ``model_package_arn``, ``version``, ``approved_by``."""
    return Asset(
        name=f"mlops.{config.use_case}.approved_versions",
        uri=f"sagemaker://model-package-group/{config.model_package_group}/approved",
        group="mlops",
    )


def announce_task(asset: Asset, source: str, task_id: str = "announce") -> Any:
    """A task adding ``asset``'s event with the extra the task ``source`` pushed to XCom under
    ``ASSET_EVENT_KEY``; skipped when ``source`` pushed none (a re-run that found its version,
    an approval that did not approve, drift below the retrain level), so it emits nothing then.

    Why not an ``AssetAlias`` outlet on ``source``: Airflow 3.3.2's execution API links an alias
    to its asset with a check-then-insert (``AssetManager._add_asset_alias_association``). When
    two runs emit through the same alias for the first time at the same moment (a backfill with
    ``max_active_runs`` > 1), the second insert violates ``asset_alias_asset_pkey`` and the API
    server sets that task ``failed``, with no retry. A static Asset outlet has no such insert
    (its run queue uses ``ON CONFLICT DO NOTHING``)."""

    @task(task_id=task_id, outlets=[asset], retries=0)
    def announce() -> dict:
        """Add the event ``source`` asked for, or skip."""
        from airflow.sdk.exceptions import AirflowSkipException

        context = get_current_context()
        extra = context["ti"].xcom_pull(task_ids=source, key=ASSET_EVENT_KEY)
        if extra is None:
            raise AirflowSkipException(f"{source} made nothing new: no {asset.name} event")
        context["outlet_events"][asset].extra = extra
        return extra

    return announce()


def check_run_date_task(config: UseCase, pipeline: str) -> Any:
    """A task failing loudly when the run's logical date is outside the pipeline's range."""

    @task(task_id="check_run_date", retries=0)
    @apply_policy
    def check_run_date() -> str:
        """Fail (no retries) unless the run date is within the schedule's start/end dates."""
        context = get_current_context()
        return tasks.check_run_date(config, pipeline, context["logical_date"])

    return check_run_date().operator


__all__ = [
    "Opening",
    "PipelineKit",
    "announce_task",
    "approved_versions_asset",
    "check_run_date_task",
    "default_args",
    "param",
]
