"""``mlops_<use_case>_retrain``: data-driven retraining (config ``training.retrain_on``).

Runs when any upstream Asset of ``retrain_on.assets`` (e.g. the ETL DAG loading the training
table) or, with ``retrain_on.drift``, batch inference's drift Asset is updated, and starts one
dated training run (``run_id`` ``retrain__<date>``) for the event's run date.

Why a dispatcher DAG rather than scheduling the training DAG on the Assets (``AssetOrTimeSchedule``)
directly: Airflow 3 creates asset-triggered runs without a logical date or data interval
(``SchedulerJobRunner._create_dag_runs_asset_triggered`` passes ``logical_date=None``,
``data_interval=None``), while every training name, S3 prefix and SQL window is per run date
(``ds``). The dispatcher turns each event into an ordinary dated run, so the training DAG keeps
its cron (``schedule.cron``; ``null`` leaves only the data-driven runs) and stays idempotent per
date: a second event for a date that already has its run starts nothing.

The run date of an event is its ``extra["run_date"]`` (ISO date; our drift events carry it, and
an upstream DAG can set it on its outlet event) or else the UTC date of the event. With several
events queued, the latest date wins.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, AssetAny, get_current_context, task

from mlops_sagemaker.config import UseCase
from mlops_sagemaker.dag_kit import default_args


class DatedTriggerDagRunOperator(TriggerDagRunOperator):
    """``TriggerDagRunOperator`` whose ``run_after`` is templated too.

    Airflow infers a triggered run's data interval from its ``run_after``, not its logical date
    (``airflow.api.common.trigger_dag``: ``infer_manual_data_interval(run_after=...)``), and the
    provider's operator (standard 1.21.0) sends ``run_after`` only when given, as a plain value:
    a run for 1996-04-01 triggered today would read today's data. Setting ``run_after`` to the
    run date gives the run the interval a manual run for that date has."""

    template_fields = (*TriggerDagRunOperator.template_fields, "run_after")


def upstream_assets(config: UseCase) -> list[Any]:
    """The Assets (or references to them by name) the retrain DAG is scheduled on."""
    retrain = config.need_training().retrain_on
    found: list[Any] = [
        Asset(name=a.name, uri=a.uri) if a.uri else Asset.ref(name=a.name) for a in retrain.assets
    ]
    if retrain.drift:
        from mlops_sagemaker.batch_dag import drift_asset

        found.append(drift_asset(config))
    return found


def event_run_date(extra: dict[str, Any], timestamp: Any) -> str:
    """An event's run date: ``extra["run_date"]`` if it is an ISO date, else its UTC date."""
    given = extra.get("run_date")
    if isinstance(given, str):
        return date.fromisoformat(given[:10]).isoformat()
    return timestamp.date().isoformat()


def build_retrain_dag(config: UseCase) -> DAG:
    """The dispatcher DAG of a use case whose ``training.retrain_on`` is not empty."""
    training = config.need_training()
    training_dag_id = f"mlops_{config.use_case}_training"
    with DAG(
        dag_id=f"mlops_{config.use_case}_retrain",
        description=f"Start {training_dag_id} when its upstream data (or drift) is updated",
        doc_md=__doc__,
        schedule=AssetAny(*upstream_assets(config)),
        start_date=None,
        catchup=False,
        max_active_runs=1,
        tags=["mlops", config.use_case, "training"],
        default_args=default_args(config, training.schedule.retries, 60, 3600),
    ) as dag:

        @task(task_id="run_date")
        def run_date() -> str:
            """The run date the triggering events ask training for (the latest of them)."""
            events = get_current_context()["triggering_asset_events"]
            dates = [
                event_run_date(dict(event.extra or {}), event.timestamp)
                for queue in events.values()
                for event in queue
            ]
            if not dates:
                raise ValueError("no triggering Asset event: this DAG runs on its Assets only")
            return max(dates)

        day = run_date()
        pulled = "{{ ti.xcom_pull(task_ids='run_date') }}"
        trigger = DatedTriggerDagRunOperator(
            task_id="train",
            trigger_dag_id=training_dag_id,
            trigger_run_id=f"retrain__{pulled}",
            logical_date=pulled,
            run_after=pulled,
            skip_when_already_exists=True,
            # The triggered run applies the training DAG's own failure policy and retries.
            retries=0,
        )
        day >> trigger
    return dag


__all__ = ["DatedTriggerDagRunOperator", "build_retrain_dag", "event_run_date", "upstream_assets"]
