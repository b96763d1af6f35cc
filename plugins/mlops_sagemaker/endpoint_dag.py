"""Build the real-time endpoint DAGs of one use case from its validated config.

``mlops_<use_case>_endpoint`` runs when one of our DAGs approves a model version (Asset
``mlops.<use_case>.approved_versions``), when the registry's approval event arrives through SQS
(an ``AssetWatcher`` with the Amazon provider's ``SqsSensorTrigger``, when
``endpoint.approval_events_queue_url`` is set) or by hand (Param ``model_version``):

    version → model → per stage [approve?] plan → configure → deploy → wait → scale → smoke
    → cleanup

``mlops_<use_case>_endpoint_teardown`` (manual only) removes a stage's endpoint and scaling.
Task bodies live in ``endpoint_tasks`` / ``endpoint_checks``; nothing here touches the network
at parse time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, TaskGroup, get_current_context, task

from mlops_sagemaker.config import Stage, UseCase
from mlops_sagemaker.dag_kit import approved_versions_asset, default_args, param
from mlops_sagemaker.failures import apply_policy
from mlops_sagemaker.notifications import notifiers
from mlops_sagemaker.operators import THROUGH_STAGE_PARAM as THROUGH_PARAM
from mlops_sagemaker.operators import EndpointDeployedSensor

log = logging.getLogger(__name__)
VERSION_PARAM = "model_version"
STAGE_PARAM = "stage"


def skip_beyond(config: UseCase, stage: Stage, params: Any) -> None:
    """Skip ``stage`` (and so its downstream stages) when the run deploys only up to an
    earlier stage (Param ``through_stage``)."""
    from mlops_sagemaker.operators import skip_beyond_stage

    skip_beyond_stage([s.name for s in config.need_endpoint().stages], stage.name, params)


def registry_approvals_asset(config: UseCase) -> Asset:
    """The Asset fed by the registry's approval events through the configured SQS queue."""
    section = config.need_endpoint()
    watchers = []
    if section.approval_events_queue_url:
        from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

        trigger = SqsSensorTrigger(
            sqs_queue=section.approval_events_queue_url,
            aws_conn_id=config.connections.aws,
            waiter_delay=section.poll_interval_seconds,
        )
        watchers.append(AssetWatcher(name=f"{config.short_name}-approvals", trigger=trigger))
    return Asset(
        name=f"mlops.{config.use_case}.registry_approvals",
        uri=f"sagemaker://model-package-group/{config.model_package_group}/approval-events",
        group="mlops",
        watchers=watchers,
    )


def _schedule(config: UseCase) -> Any:
    approved = approved_versions_asset(config)
    if config.need_endpoint().approval_events_queue_url:
        return approved | registry_approvals_asset(config)
    return [approved]


def _doc(config: UseCase) -> str:
    section = config.need_endpoint()
    rows = "\n".join(
        f"| `{s.name}` | `{config.endpoint_name(s)}` | {s.instance_type} x "
        f"{s.autoscaling.min_instances}-{s.autoscaling.max_instances} | {s.deployment.type} | "
        f"{'approval in Airflow' if s.requires_approval else 'automatic'} |"
        for s in section.stages
    )
    return f"""\
### Real-time endpoint: `{config.use_case}`

Deploys an `Approved` version of `{config.model_package_group}` stage by stage. Runs when a
version is approved (Asset events) or by hand (Param `{VERSION_PARAM}`: a version number or ARN;
empty = {section.model.selection}).

| stage | endpoint | instances | traffic shift | gate |
|---|---|---|---|---|
{rows}

Per stage: `plan` (endpoint config, rollback alarms, scaling) → `configure` (content-addressed
endpoint config, CloudWatch alarms) → `deploy` (create / nothing when it already serves the
config / blue-green update) → `wait` (fails when SageMaker rolled the update back, naming the
config still served) → `scale` (Application Auto Scaling, target tracking on invocations per
instance) → `smoke` (the version's test rows must score as in its evaluation, else roll back).
`cleanup` deletes unused configs, alarms and models beyond the newest {section.keep_unused}.
Owner: {config.owner}.
"""


def _dag_kwargs(config: UseCase) -> dict[str, Any]:
    section = config.need_endpoint()
    return {
        "start_date": None,
        "catchup": False,
        "max_active_runs": 1,
        "template_searchpath": [],
        "default_args": default_args(config, section.retries, section.retry_delay_seconds, 3600),
    }


def build_endpoint_dag(config: UseCase, include_dir: Path) -> DAG:
    """The endpoint DAG for ``config`` (``include_dir`` is unused: no SQL, no step code)."""
    section = config.need_endpoint()
    with DAG(
        dag_id=f"mlops_{config.use_case}_endpoint",
        description=f"Deploy approved {config.use_case} models to real-time endpoints",
        doc_md=_doc(config),
        schedule=_schedule(config),
        tags=["mlops", config.use_case, "endpoint"],
        params={
            # Nullable, so that the trigger form lets it stay empty (see the batch DAG).
            VERSION_PARAM: param(
                None,
                type=["null", "string"],
                title="Model version",
                description="Version number or model package ARN; empty: the triggering "
                f"approval, else {section.model.selection}",
            ),
            THROUGH_PARAM: param(
                section.stages[-1].name,
                enum=[s.name for s in section.stages],
                title="Deploy through stage",
                description="Later stages are skipped in this run",
            ),
        },
        **_dag_kwargs(config),
    ) as dag:
        version = _version(config)
        model_name = _model(config, version)
        previous: Any = None
        smokes = []
        for stage in section.stages:
            with TaskGroup(stage.name, tooltip=f"Deploy to {config.endpoint_name(stage)}") as group:
                smokes.append(_stage(config, stage, model_name, version))
            if previous is not None:
                previous >> group
            previous = group
        _cleanup(config, smokes)
    return dag


def _stage(config: UseCase, stage: Stage, model_name: Any, version: Any) -> Any:
    """One stage's tasks (inside its TaskGroup); returns the smoke test."""
    section = config.need_endpoint()
    approval = _approval(config, stage, version) if stage.requires_approval else None
    plan = _plan(config, stage, model_name, version)
    if approval is not None:
        approval >> plan
    configured = _configure(config, plan)
    deployment = _deploy(config, plan)
    configured >> deployment
    wait = EndpointDeployedSensor(
        task_id="wait",
        aws_conn_id=config.connections.aws,
        endpoint_name=config.endpoint_name(stage),
        endpoint_config_name=f"{{{{ ti.xcom_pull(task_ids='{stage.name}.deploy')['requested_config'] }}}}",
        mode="reschedule",
        poke_interval=section.poll_interval_seconds,
        timeout=section.max_wait_seconds,
        retries=0,
    )
    scaled = _scale(config, plan)
    smoke = _smoke(config, plan, deployment, version)
    deployment >> wait >> scaled >> smoke
    return smoke


def _clients(config: UseCase) -> tuple[Any, Any, Any]:
    """SageMaker, Application Auto Scaling and CloudWatch clients of the AWS connection."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    aws = config.connections.aws
    return (
        SageMakerHook(aws_conn_id=aws).conn,
        AwsBaseHook(aws_conn_id=aws, client_type="application-autoscaling").get_conn(),
        AwsBaseHook(aws_conn_id=aws, client_type="cloudwatch").get_conn(),
    )


def _version(config: UseCase) -> Any:
    @task(task_id="version")
    @apply_policy
    def version() -> dict:
        """The Approved version to deploy (Param, triggering approval, or the selection)."""
        from mlops_sagemaker.approval_events import approved_versions
        from mlops_sagemaker.endpoint_tasks import resolve_version

        context = get_current_context()
        conn = _clients(config)[0]
        chosen = resolve_version(
            conn,
            config,
            str(context["params"].get(VERSION_PARAM) or ""),
            context.get("triggering_asset_events") or {},
            lambda extras: approved_versions(extras, group=config.model_package_group),
        )
        log.info("Deploying %s: %s (%s)", chosen.label(), chosen.arn, chosen.status)
        return chosen.as_xcom()

    return version()


def _model(config: UseCase, version: Any) -> Any:
    @task(task_id="model")
    @apply_policy
    def model(version: dict) -> str:
        """The version's SageMaker model (content-addressed, shared with batch inference)."""
        from mlops_sagemaker.batch_tasks import plan_model
        from mlops_sagemaker.model_registry import ModelVersion
        from mlops_sagemaker.operators import ensure_model

        request = plan_model(config, ModelVersion.from_xcom(version))
        created = ensure_model(_clients(config)[0], request)
        log.info("%s model %s", "Created" if created else "Reusing", request["ModelName"])
        return request["ModelName"]

    return model(version)


def _approval(config: UseCase, stage: Stage, version: Any) -> Any:
    from mlops_sagemaker.operators import StageApprovalOperator

    approval = config.need_endpoint().approval
    previous = [s for s in config.need_endpoint().stages if s.name != stage.name]
    checked = previous[0].name if previous else "the previous stage"
    return StageApprovalOperator(
        task_id="approve",
        stage_names=[s.name for s in config.need_endpoint().stages],
        subject=f"Deploy {config.use_case} to {config.endpoint_name(stage)}?",
        body=(
            "Version {{ ti.xcom_pull(task_ids='version')['version'] }} "
            "(`{{ ti.xcom_pull(task_ids='version')['arn'] }}`, run date "
            "{{ ti.xcom_pull(task_ids='version')['run_date'] }}) passed the checks of "
            f"`{checked}`. Approve deploys it to `{config.endpoint_name(stage)}` "
            f"({stage.instance_type}, {stage.deployment.type}); Reject leaves it untouched."
        ),
        response_timeout=timedelta(seconds=approval.response_timeout_seconds),
        assigned_users=[{"id": u, "name": u} for u in approval.assigned_users] or None,
        retries=0,
    )


def _plan(config: UseCase, stage: Stage, model_name: Any, version: Any) -> Any:
    @task(task_id="plan")
    @apply_policy
    def plan(model_name: str, version: dict) -> dict:
        """Every request of the stage: endpoint config, alarms, deployment, scaling."""
        from mlops_sagemaker.endpoint_tasks import plan_stage
        from mlops_sagemaker.model_registry import ModelVersion

        skip_beyond(config, stage, get_current_context()["params"])
        planned = plan_stage(config, stage, model_name, ModelVersion.from_xcom(version))
        log.info("Endpoint config %s for %s", planned.config_name, planned.endpoint_name)
        return planned.as_xcom()

    return plan(model_name, version)


def _configure(config: UseCase, plan: Any) -> Any:
    @task(task_id="configure")
    @apply_policy
    def configure(plan: dict) -> dict:
        """Create the endpoint config unless it exists; create or update its alarms."""
        from mlops_sagemaker.endpoint_tasks import StagePlan, ensure_endpoint_config, put_alarms

        planned = StagePlan.from_xcom(plan)
        conn, _, cloudwatch = _clients(config)
        created = ensure_endpoint_config(conn, planned.endpoint_config)
        log.info("%s endpoint config %s", "Created" if created else "Reusing", planned.config_name)
        alarms = put_alarms(cloudwatch, planned.alarms)
        log.info("Rollback alarms: %s", ", ".join(alarms) or "none (endpoint.alarms.enabled)")
        return {"endpoint_config": planned.config_name, "created": created, "alarms": alarms}

    return configure(plan)


def _deploy(config: UseCase, plan: Any) -> Any:
    @task(task_id="deploy")
    @apply_policy
    def deploy(plan: dict) -> dict:
        """Create the endpoint, update it blue/green, or leave it if it serves the config."""
        from mlops_sagemaker.endpoint_tasks import StagePlan, deploy

        planned = StagePlan.from_xcom(plan)
        conn, autoscaling, _ = _clients(config)
        done = deploy(conn, autoscaling, planned, planned.endpoint_config["Tags"])
        log.info(
            "%s: %s (was %s, now %s)",
            done.endpoint_name,
            done.action,
            done.previous_config,
            done.requested_config,
        )
        return done.as_xcom()

    return deploy(plan)


def _scale(config: UseCase, plan: Any) -> Any:
    @task(task_id="scale")
    @apply_policy
    def scale(plan: dict) -> dict:
        """Application Auto Scaling target + target-tracking policy (idempotent)."""
        from mlops_sagemaker.endpoint_tasks import StagePlan, apply_scaling

        applied = apply_scaling(_clients(config)[1], StagePlan.from_xcom(plan))
        log.info("Autoscaling %s", applied)
        return applied

    return scale(plan)


def _smoke(config: UseCase, plan: Any, deployment: Any, version: Any) -> Any:
    section = config.need_endpoint()

    @task(task_id="smoke", retries=0, on_success_callback=notifiers(config, "deployment") or None)
    @apply_policy
    def smoke(plan: dict, deployment: dict, version: dict) -> dict:
        """Score the version's test rows on the endpoint; roll back on any mismatch."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from mlops_sagemaker import endpoint_checks as checks
        from mlops_sagemaker.endpoint_tasks import Deployment, SmokeTestFailed, StagePlan
        from mlops_sagemaker.model_registry import ModelVersion

        planned, done = StagePlan.from_xcom(plan), Deployment.from_xcom(deployment)
        aws = config.connections.aws
        runtime = AwsBaseHook(aws_conn_id=aws, client_type="sagemaker-runtime").get_conn()
        settings = section.smoke_test
        try:
            sample = checks.smoke_sample(
                S3Hook(aws_conn_id=aws).read_key, ModelVersion.from_xcom(version), settings.rows
            )
            result = checks.smoke_test(runtime, planned.endpoint_name, sample, settings.tolerance)
        except SmokeTestFailed as err:
            conn, autoscaling, _ = _clients(config)
            outcome = checks.roll_back(
                conn,
                autoscaling,
                done,
                planned,
                poll=section.poll_interval_seconds,
                timeout=section.max_wait_seconds,
            )
            raise SmokeTestFailed(
                f"Smoke test of {planned.endpoint_name} failed: {err}; {outcome}"
            ) from err
        log.info(
            "Smoke test passed on %s: %d rows, max |diff| %.3g, latency p50 %.1f ms, p99 %.1f ms",
            result.endpoint_name,
            result.rows,
            result.max_abs_diff,
            result.p50_ms,
            result.p99_ms,
        )
        return result.as_xcom()

    return smoke(plan, deployment, version)


def _cleanup(config: UseCase, after: list[Any]) -> Any:
    section = config.need_endpoint()

    # Runs after a Reject too (skipped stages): only a failure keeps the old resources.
    @task(task_id="cleanup", trigger_rule="none_failed")
    @apply_policy
    def cleanup() -> dict:
        """Delete unused endpoint configs (and their alarms) and models beyond the newest K."""
        from mlops_sagemaker.endpoint_checks import cleanup

        conn, _, cloudwatch = _clients(config)
        deleted = cleanup(conn, cloudwatch, config.short_name, section.keep_unused)
        log.info("Deleted %s", deleted)
        return deleted

    done = cleanup()
    for smoke in after:
        smoke >> done
    return done


def build_teardown_dag(config: UseCase, include_dir: Path) -> DAG:
    """``mlops_<use_case>_endpoint_teardown``: remove one stage's endpoint and its scaling."""
    section = config.need_endpoint()
    stages = [s.name for s in section.stages]
    with DAG(
        dag_id=f"mlops_{config.use_case}_endpoint_teardown",
        description=f"Remove a {config.use_case} endpoint and its autoscaling",
        doc_md=f"Deletes the chosen stage's endpoint ({', '.join(stages)}), its scalable "
        "target and alarms. Safe to run again: a missing endpoint is not an error.",
        schedule=None,
        tags=["mlops", config.use_case, "endpoint"],
        params={STAGE_PARAM: param(stages[0], enum=stages, title="Stage")},
        **_dag_kwargs(config),
    ) as dag:

        @task(task_id="teardown")
        @apply_policy
        def teardown() -> dict:
            """Deregister scaling, delete the endpoint, delete its alarms."""
            from mlops_sagemaker.endpoint_checks import teardown

            name = get_current_context()["params"][STAGE_PARAM]
            stage = next(s for s in section.stages if s.name == name)
            conn, autoscaling, cloudwatch = _clients(config)
            removed = teardown(
                conn,
                autoscaling,
                cloudwatch,
                config.endpoint_name(stage),
                poll=section.poll_interval_seconds,
                timeout=section.max_wait_seconds,
            )
            log.info("Teardown: %s", removed)
            return removed

        teardown() >> _cleanup(config, [])
    return dag


__all__ = ["build_endpoint_dag", "build_teardown_dag", "registry_approvals_asset"]
