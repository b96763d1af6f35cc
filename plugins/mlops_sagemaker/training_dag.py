"""Build the training DAG of one use case from its validated config.

Presto sensor → streaming extraction to S3 → SageMaker Processing (split) → hyperparameter tuning
→ SageMaker Processing (evaluate) → quality gate → SageMaker Model Registry, with every request
built by ``sagemaker_requests`` at run time and sent by the Amazon provider's operators.
Nothing here touches the network at parse time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, TaskGroup, get_current_context, task

from mlops_sagemaker import sagemaker_requests, tasks
from mlops_sagemaker.config import UseCase
from mlops_sagemaker.dag_kit import PipelineKit, announce_task, param
from mlops_sagemaker.failures import apply_policy
from mlops_sagemaker.notifications import notifiers
from mlops_sagemaker.operators import (
    IdempotentProcessingOperator,
    IdempotentRegisterModelVersionOperator,
    IdempotentTuningOperator,
)
from mlops_sagemaker.payloads import BestModel, ExtractManifest, GateResult, StagedCode


def model_versions_asset(config: UseCase) -> Asset:
    """The Asset updated each time the training DAG registers a model version."""
    return Asset(
        name=f"mlops.{config.use_case}.model_versions",
        uri=f"sagemaker://model-package-group/{config.model_package_group}",
        group="mlops",
    )


def _doc(config: UseCase) -> str:
    training = config.need_training()
    t, evaluation, registry = training.tuning, training.evaluation, training.registry
    return f"""\
### Training: `{config.use_case}`

{config.description}

**Label** (`{config.dataset.label_column}`): {config.dataset.label_description}

| step | what happens |
|---|---|
| `wait_for_data` | waits (reschedule mode) until `{config.sql_dir}/{training.data_arrival_query}` is true for the run date |
| `extract` | {"has Presto write (CREATE TABLE AS, extract.mode presto_unload)" if config.extract.mode == "presto_unload" else "streams"} `{config.sql_dir}/{training.query}` ({training.lookback_days}-day window ending at the data interval end) from Presto to `s3://{config.storage.bucket}/{config.storage.prefix}/{config.use_case}/training/<ds>/extract/` |
| `split` (`plan`, `job`[, `baseline_plan`, `baseline`]) | SageMaker Processing runs `preprocess.py`: validation, deterministic hash split, training baseline (presto_unload: the split on several instances, each a share of the files, then `baseline` over all rows) |
| `tune` (`plan`, `job`, `best_model`) | SageMaker {t.strategy} tuning of a RandomForest, {t.max_jobs} jobs ({t.max_parallel_jobs} in parallel), objective `{t.objective.metric_name}` ({t.objective.type}) |
| `evaluate` (`plan`, `job`) | SageMaker Processing runs `evaluate.py` on the best model and the test split |
| `quality_gate` | fails unless test `{evaluation.metric}` ≥ {evaluation.threshold} (Param `evaluation_threshold` overrides per run) |
| `register` (`plan`, `version`, `announce`) | new version in model package group `{registry.model_package_group}` with status `{registry.approval_status}`; `announce` adds its Asset event, skipped when a re-run found the version |

Clearing any task is safe: jobs whose inputs did not change are reused, not re-run, and a run date
registers at most one version per model. Owner: {config.owner}.
"""


def build_training_dag(config: UseCase, include_dir: Path) -> DAG:
    """The daily training DAG for ``config``; ``include_dir`` holds ``sql/`` and ``step_code/``.

    Each SageMaker step is a TaskGroup holding the task that plans its request and the job
    itself, so the graph reads wait → extract → split → tune → evaluate → gate → register."""
    kit = PipelineKit(config, "training", include_dir)
    evaluation = config.need_training().evaluation
    threshold = param(
        evaluation.threshold,
        type="number",
        minimum=0,
        maximum=1,
        title="Evaluation threshold",
        description=f"Minimum test {evaluation.metric} to register the model.",
    )
    with kit.dag(
        description=f"Retrain, evaluate and register the {config.use_case} model",
        doc_md=_doc(config),
        params={"evaluation_threshold": threshold},
    ) as dag:
        opening = kit.opening()
        staged = kit.stage_code()
        opening.check >> staged
        manifest = opening.extract.output
        with TaskGroup("split", tooltip="Split train/validation/test (SageMaker Processing)"):
            split = _processing_job(kit, _plan_split(config, staged, manifest))
            baseline = _sharded_baseline(kit, staged, split) or split
        with TaskGroup("tune", tooltip="Hyperparameter tuning (SageMaker)"):
            plan = _plan_tuning(config, staged, split.output)
            baseline >> plan  # a sharded split's all-row checks come before any training
            tune = IdempotentTuningOperator(
                task_id="job",
                config=plan,
                **kit.job_kwargs(config.need_training().tuning.max_parallel_jobs),
            )
            model = _best_model(config, tune.output)
        with TaskGroup("evaluate", tooltip="Evaluate the best model on the test split"):
            evaluate = _processing_job(kit, _plan_evaluation(config, staged, split.output, model))
        gate = _quality_gate(config, evaluate.output)
        with TaskGroup("register", tooltip="Register a model version (SageMaker Model Registry)"):
            version = _register(
                config, _plan_registration(config, staged, model, gate, manifest, baseline)
            )
            version >> announce_task(model_versions_asset(config), source=version.task_id)
    return dag


def _processing_job(
    kit: PipelineKit, plan: Any, task_id: str = "job"
) -> IdempotentProcessingOperator:
    return IdempotentProcessingOperator(task_id=task_id, config=plan, **kit.job_kwargs())


def _sharded_baseline(
    kit: PipelineKit, staged: Any, split: IdempotentProcessingOperator
) -> IdempotentProcessingOperator | None:
    """``presto_unload``: the split ran sharded, so one more job (``baseline_plan`` →
    ``baseline``) checks what needs every row and writes the one training baseline."""
    config = kit.config
    if sagemaker_requests.sharded_split_instances(config) is None:
        return None

    @task(task_id="baseline_plan")
    @apply_policy
    def plan_baseline(staged: dict, split_result: dict) -> dict:
        """Build the baseline processing job request over the split's outputs."""
        run = tasks.run_info(get_current_context())
        return tasks.plan_baseline(config, run, StagedCode.from_xcom(staged), split_result)

    return _processing_job(kit, plan_baseline(staged, split.output), task_id="baseline")


def _plan_split(config: UseCase, staged: Any, manifest: Any) -> Any:
    @task(task_id="plan")
    @apply_policy
    def plan_split(staged: dict, manifest: dict) -> dict:
        """Build the split processing job request."""
        run = tasks.run_info(get_current_context())
        staged_code, extracted = StagedCode.from_xcom(staged), ExtractManifest.from_xcom(manifest)
        return tasks.plan_split(config, run, staged_code, extracted)

    return plan_split(staged, manifest)


def _plan_tuning(config: UseCase, staged: Any, split_result: Any) -> Any:
    @task(task_id="plan")
    @apply_policy
    def plan_tuning(staged: dict, split_result: dict) -> dict:
        """Build the tuning job request from the split's outputs."""
        run = tasks.run_info(get_current_context())
        return tasks.plan_tuning(config, run, StagedCode.from_xcom(staged), split_result)

    return plan_tuning(staged, split_result)


def _best_model(config: UseCase, tuning_result: Any) -> Any:
    @task(task_id="best_model")
    @apply_policy
    def best_model(tuning_result: dict) -> dict:
        """Name, objective and artifact of the tuning job's best training job."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        hook = SageMakerHook(aws_conn_id=config.connections.aws)
        return tasks.best_model(tuning_result, hook.describe_training_job).as_xcom()

    return best_model(tuning_result)


def _plan_evaluation(config: UseCase, staged: Any, split_result: Any, model: Any) -> Any:
    @task(task_id="plan")
    @apply_policy
    def plan_evaluation(staged: dict, split_result: dict, model: dict) -> dict:
        """Build the evaluation processing job request."""
        run = tasks.run_info(get_current_context())
        return tasks.plan_evaluation(
            config, run, StagedCode.from_xcom(staged), split_result, BestModel.from_xcom(model)
        )

    return plan_evaluation(staged, split_result, model)


def _quality_gate(config: UseCase, evaluation_result: Any) -> Any:
    @task(task_id="quality_gate", retries=0)
    @apply_policy
    def quality_gate(evaluation_result: dict) -> dict:
        """Fail (without retries) unless the model reaches the threshold."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        uri = tasks.evaluation_uri(evaluation_result)
        evaluation = json.loads(S3Hook(aws_conn_id=config.connections.aws).read_key(uri))
        threshold = get_current_context()["params"].get("evaluation_threshold")
        return tasks.quality_gate(config, evaluation, threshold, uri).as_xcom()

    return quality_gate(evaluation_result)


def _plan_registration(
    config: UseCase, staged: Any, model: Any, gate: Any, manifest: Any, split: Any
) -> Any:
    @task(task_id="plan")
    @apply_policy
    def plan_registration(
        staged: dict, model: dict, gate: dict, manifest: dict, split_result: dict
    ) -> dict:
        """Build the model-version registration (request, metadata, metrics, drift baseline)."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        baseline_uri = tasks.processing_outputs(split_result)["baseline"] + "baseline.json"
        s3 = S3Hook(aws_conn_id=config.connections.aws)
        baseline = json.loads(s3.read_key(baseline_uri))
        return tasks.plan_registration(
            config,
            tasks.run_info(get_current_context()),
            StagedCode.from_xcom(staged),
            BestModel.from_xcom(model),
            GateResult.from_xcom(gate),
            ExtractManifest.from_xcom(manifest),
            baseline_uri,
            baseline.get("rows", {}),
            # Network isolation: the model is repacked with its code (model_artifact.py).
            s3_client=s3.get_conn(),
        )

    return plan_registration(staged, model, gate, manifest, split.output)


def _register(config: UseCase, registration: Any) -> IdempotentRegisterModelVersionOperator:
    return IdempotentRegisterModelVersionOperator(
        task_id="version",
        aws_conn_id=config.connections.aws,
        image_uri=registration["image_uri"],
        model_url=registration["model_url"],
        package_group_name=registration["package_group_name"],
        package_desc=registration["package_desc"],
        extras=registration["extras"],
        package_group=registration["package_group"],
        on_new_version=notifiers(config, "new_version"),
    )


__all__ = ["build_training_dag", "model_versions_asset"]
