"""Use-case configuration: one YAML file per use case, validated when the DAG file is parsed.

A typo, a missing field or a wrong type fails the DAG import with a ``ConfigError`` naming the
file and the field (``include/config/tpch_orders.yaml: tuning.max_jobs: ...``). Every model
forbids unknown keys so that a misspelt optional field is an error, not a silently ignored line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# SageMaker's name rule: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}; our short names are lower-case.
_SHORT_NAME = r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
# Presto identifiers pasted into SQL: plain, unquoted identifiers only.
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_S3_PREFIX = r"^[A-Za-z0-9!_.*'()-]+(?:/[A-Za-z0-9!_.*'()-]+)*$"

# libyaml's safe loader (same tags and types as yaml.SafeLoader) reads a config about ten times
# faster than the pure-Python one: every DAG file reads every use case's file at each parse.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The SageMaker scikit-learn framework versions the step code is tested on, oldest first; the
# same table builds the local stack's image venvs (local_stack/images.py).
SKLEARN_FRAMEWORK_VERSIONS = tuple(
    tomllib.loads(Path(__file__).with_name("sklearn_images.toml").read_text("utf-8"))["images"]
)

# Longest name suffix naming.job_name adds: "-YYYYMMDD-hpo-ffffff-z".
NAME_SUFFIX_LENGTH = 22
TUNING_NAME_LIMIT = 32


class ConfigError(ValueError):
    """A use-case config file is invalid; the message names the file and the fields."""


class _Strict(BaseModel):
    # defer_build: a model's validator is built when first used, not at import. Parsing only
    # validates UseCase (its schema holds the nested models'), so the nested models' own
    # validators are never built: a DAG file imports this module at every parse.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


Identifier = Annotated[str, Field(pattern=_IDENTIFIER)]


class Connections(_Strict):
    """Airflow connection ids: credentials live only there (or in the secrets backend)."""

    presto: str = "presto_default"
    aws: str = "aws_default"


class SensorSettings(_Strict):
    """How long and how often the data-arrival sensor waits (reschedule mode frees the slot)."""

    poke_interval_seconds: int = Field(300, ge=5)
    timeout_seconds: int = Field(6 * 3600, ge=60)


class Source(_Strict):
    """Where the data is in Presto, how extraction streams it, how the sensor waits (shared)."""

    catalog: Identifier
    schema_: Identifier = Field(alias="schema")
    sql_dir: str | None = Field(None, description="folder under include/sql; default: use case")
    extract_chunk_rows: int = Field(50_000, ge=100, le=5_000_000)
    sensor: SensorSettings = SensorSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class UnloadSettings(_Strict):
    """``presto_unload``: the Hive-connector catalog and schema of the scratch table Presto
    writes the result through (the schema must exist; README "Extraction without Airflow"),
    and how many instances the split reads the files on (``ShardedByS3Key``)."""

    catalog: Identifier = "hive"
    schema_: Identifier = Field("mlops_scratch", alias="schema")
    split_instance_count: int = Field(2, ge=1, le=100)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Extract(_Strict):
    """How training's extraction reaches S3: ``streaming`` (through the Airflow worker, in
    chunks) or ``presto_unload`` (Presto writes Parquet to S3 itself). Batch inference always
    streams: its transform needs gzip CSV parts."""

    mode: Literal["streaming", "presto_unload"] = "streaming"
    unload: UnloadSettings = UnloadSettings()


class Split(_Strict):
    """Deterministic split fractions (test gets the rest) and the hash salt."""

    train: float = Field(gt=0, lt=1)
    validation: float = Field(gt=0, lt=1)
    salt: str = ""

    @model_validator(mode="after")
    def _leaves_a_test_split(self) -> Split:
        if self.train + self.validation >= 1:
            raise ValueError("train + validation must be < 1 so that the test split is not empty")
        return self


class Dataset(_Strict):
    """Columns of the extracted table: row key, label and features (shared by every pipeline)."""

    key_column: Identifier
    label_column: Identifier
    label_description: str = Field(min_length=1)
    feature_columns: list[Identifier] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_columns(self) -> Dataset:
        if len(set(self.feature_columns)) != len(self.feature_columns):
            raise ValueError("feature_columns has duplicates")
        clash = {self.key_column, self.label_column} & set(self.feature_columns)
        if clash:
            raise ValueError(f"key/label column also listed as a feature: {sorted(clash)}")
        if self.key_column == self.label_column:
            raise ValueError("key_column and label_column must differ")
        return self


class Storage(_Strict):
    """S3 bucket and prefix: s3://<bucket>/<prefix>/<use_case>/<pipeline>/<ds>/<step>/..."""

    bucket: str = Field(pattern=_BUCKET)
    prefix: str = Field(pattern=_S3_PREFIX)


class JobResources(_Strict):
    """Instances and limits of one kind of SageMaker job."""

    instance_type: str = Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int = Field(1, ge=1, le=100)
    volume_size_gb: int = Field(30, ge=1, le=16384)
    max_runtime_seconds: int = Field(3600, ge=60, le=5 * 24 * 3600)


class Vpc(_Strict):
    """VPC placement of the jobs; both lists empty means no VPC config."""

    subnets: list[str] = []
    security_group_ids: list[str] = []

    @model_validator(mode="after")
    def _both_or_neither(self) -> Vpc:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("set both subnets and security_group_ids, or neither")
        return self


class Network(_Strict):
    """Isolation and encryption settings; empty/false means off."""

    enable_network_isolation: bool = False
    enable_inter_container_traffic_encryption: bool = False
    vpc: Vpc = Vpc()
    kms_key_id: str = Field("", description="KMS key for job outputs in S3; empty: S3 default")
    volume_kms_key_id: str = Field("", description="KMS key for job volumes; empty: default")


class JobPool(_Strict):
    """The Airflow pool bounding how many SageMaker jobs of the use case run at once, across
    all its runs and DAGs (a tuning job takes ``max_parallel_jobs`` slots).

    Create it with ``include_deferred``: deferred job tasks (waiting in the triggerer) must
    keep their slots, or the bound does not hold (``airflow pools set --include-deferred``;
    ``local_stack.airflow_services`` creates it from this config)."""

    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,256}$", description="default: mlops_<use_case>"
    )
    slots: int = Field(4, ge=1, le=1024)


class SageMakerSettings(_Strict):
    """Settings shared by every SageMaker job of the use case."""

    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    sklearn_framework_version: str = SKLEARN_FRAMEWORK_VERSIONS[-1]
    image_uri: str | None = Field(None, description="override of the scikit-learn image URI")
    python_version: str = "py3"
    processing: JobResources
    training: JobResources
    network: Network = Network()
    tags: dict[str, str] = {}
    check_interval_seconds: int = Field(30, ge=1)
    max_job_wait_seconds: int = Field(4 * 3600, ge=60)
    deferrable: bool = Field(
        True, description="wait for jobs in the triggerer instead of holding a worker slot"
    )
    pool: JobPool = JobPool()

    @field_validator("sklearn_framework_version")
    @classmethod
    def _supported_framework(cls, version: str) -> str:
        if version not in SKLEARN_FRAMEWORK_VERSIONS:
            raise ValueError(
                f"{version!r} is not a supported SageMaker scikit-learn framework version; "
                f"supported: {', '.join(SKLEARN_FRAMEWORK_VERSIONS)} (sklearn_images.toml)"
            )
        return version

    @field_validator("processing")
    @classmethod
    def _single_processing_instance(cls, processing: JobResources) -> JobResources:
        # preprocess.py needs every row to check key uniqueness and write one baseline, and
        # evaluate.py scores one test split: more instances would each see a shard only.
        if processing.instance_count != 1:
            raise ValueError("instance_count must be 1: split and evaluation need all rows")
        return processing

    @field_validator("tags")
    @classmethod
    def _tag_limits(cls, tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if not 1 <= len(key) <= 128 or len(value) > 256 or key.lower().startswith("aws:"):
                raise ValueError(f"invalid tag {key!r}: keys 1-128 chars, not aws:, values ≤ 256")
        return tags


class _Range(_Strict):
    """Shared by the numeric ranges: scaling and the min <= max check."""

    scaling: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = "Auto"

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.min > self.max:  # type: ignore[attr-defined]
            raise ValueError(f"min {self.min} > max {self.max}")  # type: ignore[attr-defined]
        return self


class IntegerRange(_Range):
    """An integer hyperparameter range (inclusive)."""

    min: int
    max: int


class ContinuousRange(_Range):
    """A continuous hyperparameter range (inclusive)."""

    min: float
    max: float


class Objective(_Strict):
    """The tuning objective and the regex that reads it from train.py's output."""

    metric_name: str = Field(pattern=r"^[A-Za-z0-9_:./-]+$")
    type: Literal["Maximize", "Minimize"] = "Maximize"
    regex: str

    @field_validator("regex")
    @classmethod
    def _one_group(cls, regex: str) -> str:
        if re.compile(regex).groups != 1:
            raise ValueError("the metric regex must have exactly one capture group")
        return regex


class Tuning(_Strict):
    """Hyperparameter tuning of the RandomForest."""

    strategy: Literal["Bayesian", "Random"] = "Bayesian"
    objective: Objective
    max_jobs: int = Field(ge=1, le=500)
    max_parallel_jobs: int = Field(ge=1, le=100)
    integer_ranges: dict[Identifier, IntegerRange] = {}
    continuous_ranges: dict[Identifier, ContinuousRange] = {}
    categorical_ranges: dict[Identifier, list[str]] = {}
    static_hyperparameters: dict[Identifier, str | int | float] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Tuning:
        names = [*self.integer_ranges, *self.continuous_ranges, *self.categorical_ranges]
        if not names:
            raise ValueError("at least one hyperparameter range is needed")
        if len(set(names)) != len(names):
            raise ValueError("a hyperparameter appears in two ranges")
        clash = set(names) & set(self.static_hyperparameters)
        if clash:
            raise ValueError(f"hyperparameters both tuned and static: {sorted(clash)}")
        for name, values in self.categorical_ranges.items():
            if not values or len(set(values)) != len(values):
                raise ValueError(f"categorical range {name} needs distinct values")
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError("max_parallel_jobs cannot exceed max_jobs")
        return self


class Evaluation(_Strict):
    """The quality gate: the model is registered only if metric >= threshold."""

    metric: Literal["auc", "accuracy", "precision", "recall", "f1"] = "auc"
    threshold: float = Field(ge=0, le=1)


class Registry(_Strict):
    """Where and how new model versions are registered."""

    model_package_group: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    description: str = ""
    approval_status: Literal["PendingManualApproval", "Approved", "Rejected"] = (
        "PendingManualApproval"
    )
    inference_instance_types: list[str] = Field(["ml.m5.large"], min_length=1)
    transform_instance_types: list[str] = Field(["ml.m5.large"], min_length=1)


class Schedule(_Strict):
    """When a pipeline's DAG runs, and how its tasks retry transient failures."""

    cron: str | None = Field(
        "@daily", description="null: no time-based runs (e.g. training on Assets only)"
    )
    start_date: date
    end_date: date | None = None
    catchup: bool = False
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: int = Field(300, ge=0)
    # Transient failures back off exponentially (delay x 2 per retry) up to this cap.
    max_retry_delay_seconds: int = Field(3600, ge=1, le=24 * 3600)
    max_active_runs: int = Field(1, ge=1, le=32)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is None:
            return None
        # The same parser Airflow's CronDataIntervalTimetable uses (croniter via CronMixin), so a
        # bad expression fails here naming schedule.cron instead of deep in Airflow.
        from airflow.utils.dates import cron_presets
        from croniter import CroniterBadCronError, CroniterBadDateError, croniter

        expression = cron_presets.get(cron, cron)
        try:
            fields = croniter(expression).expanded
        except (CroniterBadCronError, CroniterBadDateError, ValueError) as err:
            raise ValueError(f"invalid cron expression {cron!r}: {err}") from None
        if len(fields) > 5:
            raise ValueError(f"cron expression {cron!r} has more than 5 fields (no seconds)")
        return cron

    @model_validator(mode="after")
    def _ordered_dates(self) -> Schedule:
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self


class PipelineQueries(_Strict):
    """The SQL files of one pipeline (under the use case's ``include/sql`` folder) and its
    window: the query reads ``lookback_days`` ending at the run's data interval end."""

    query: str
    data_arrival_query: str = "data_arrival.sql"
    lookback_days: int = Field(ge=1, le=3660)


class UpstreamAsset(_Strict):
    """An Asset another DAG updates (e.g. the ETL DAG loading the training table): by ``name``
    alone (``Asset.ref``: the producing DAG defines it), or with its ``uri`` to define it here."""

    name: str = Field(min_length=1, max_length=1500)
    uri: str | None = Field(None, min_length=1, max_length=1500)


class RetrainOn(_Strict):
    """Data-driven retraining: the ``mlops_<use_case>_retrain`` DAG runs when any of these is
    updated and starts a training run for the event's run date (``retrain_dag.py``)."""

    assets: list[UpstreamAsset] = []
    drift: bool = Field(False, description="also on batch inference's drift Asset")


class Training(PipelineQueries):
    """The training pipeline: its schedule, query, split, tuning, evaluation and registry."""

    schedule: Schedule
    retrain_on: RetrainOn = RetrainOn()
    query: str = "training.sql"
    split: Split
    tuning: Tuning
    evaluation: Evaluation
    registry: Registry

    @model_validator(mode="after")
    def _hyperparameters_known(self) -> Training:
        reserved = {"feature_columns", "label_column", "key_column"}
        tuned = {
            *self.tuning.integer_ranges,
            *self.tuning.continuous_ranges,
            *self.tuning.categorical_ranges,
            *self.tuning.static_hyperparameters,
        }
        if reserved & tuned:
            raise ValueError(
                f"hyperparameters set by the package itself: {sorted(reserved & tuned)}"
            )
        return self


class ModelSelection(_Strict):
    """Which registered version scores a run (the run's Param ``model_selection`` overrides)."""

    package_group: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
        description="default: training.registry.model_package_group",
    )
    selection: Literal["latest_approved", "as_of_run_date", "pinned"] = "latest_approved"
    pinned_version: str | None = Field(
        None, description="version number or model package ARN; required for selection: pinned"
    )

    @model_validator(mode="after")
    def _pinned_needs_version(self) -> ModelSelection:
        if self.selection == "pinned" and not self.pinned_version:
            raise ValueError("selection 'pinned' needs pinned_version (a number or an ARN)")
        return self


class Gate(_Strict):
    """A minimum registered test metric (default: the training section's evaluation gate)."""

    metric: Literal["auc", "accuracy", "precision", "recall", "f1"] = "auc"
    threshold: float = Field(ge=0, le=1)


class Approval(_Strict):
    """How a ``PendingManualApproval`` version becomes usable for batch scoring.

    ``none``: only already ``Approved`` versions are used; ``auto``: the newest pending version
    is approved when its registered metric passes the gate; ``airflow``: a person approves it in
    the Airflow UI; ``registry``: the run waits until someone approves it in SageMaker."""

    mode: Literal["none", "auto", "airflow", "registry"] = "none"
    gate: Gate | None = Field(None, description="auto mode; default: training.evaluation")
    response_timeout_seconds: int = Field(24 * 3600, ge=60, description="airflow mode")
    assigned_users: list[str] = Field([], description="airflow mode: who may answer")
    poke_interval_seconds: int = Field(300, ge=5, description="registry mode")
    timeout_seconds: int = Field(7 * 24 * 3600, ge=60, description="registry mode")


class TransformResources(_Strict):
    """Instances and request limits of the batch transform job."""

    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int = Field(1, ge=1, le=100)
    max_payload_mb: int = Field(6, ge=1, le=100)
    max_concurrent_transforms: int = Field(1, ge=1, le=100)
    invocations_timeout_seconds: int = Field(600, ge=1, le=3600)
    invocations_max_retries: int = Field(1, ge=0, le=3)

    @model_validator(mode="after")
    def _payload_limit(self) -> TransformResources:
        # CreateTransformJob's documented limit (botocore docs of MaxPayloadInMB).
        if self.max_concurrent_transforms * self.max_payload_mb > 100:
            raise ValueError("max_concurrent_transforms x max_payload_mb must not exceed 100 MB")
        return self


class DriftSettings(_Strict):
    """Population stability index thresholds of the batch's features against training."""

    warn: float = Field(0.1, gt=0)
    retrain: float = Field(0.25, gt=0)
    fail_on_retrain: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> DriftSettings:
        if self.warn > self.retrain:
            raise ValueError(f"warn {self.warn} > retrain {self.retrain}")
        return self


class BatchInference(PipelineQueries):
    """The batch-inference pipeline: schedule, query, model choice, approval, transform, drift."""

    schedule: Schedule
    query: str = "batch.sql"
    lookback_days: int = Field(1, ge=1, le=3660)
    model: ModelSelection = ModelSelection()
    approval: Approval = Approval()
    transform: TransformResources = TransformResources()
    drift: DriftSettings = DriftSettings()


class TrafficShift(_Strict):
    """How an ``UpdateEndpoint`` moves traffic to the new fleet (``BlueGreenUpdatePolicy``).

    ``ALL_AT_ONCE`` shifts everything, then bakes ``wait_interval_seconds``; ``CANARY`` sends
    ``size_percent`` of the capacity first, bakes, then the rest; ``LINEAR`` shifts in steps of
    ``size_percent``, baking after each. Limits are the service model's (botocore
    ``TrafficRoutingConfig``, ``BlueGreenUpdatePolicy``)."""

    type: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "ALL_AT_ONCE"
    size_percent: int = Field(10, ge=1, le=99, description="CANARY / LINEAR step")
    wait_interval_seconds: int = Field(300, ge=0, le=3600)
    termination_wait_seconds: int = Field(300, ge=0, le=3600)
    max_execution_timeout_seconds: int = Field(3600, ge=600, le=28800)


class Autoscaling(_Strict):
    """Application Auto Scaling of a classic endpoint's variant: a scalable target on
    ``sagemaker:variant:DesiredInstanceCount`` and target tracking on
    ``SageMakerVariantInvocationsPerInstance`` (invocations per instance per minute)."""

    min_instances: int = Field(1, ge=1, le=100)
    max_instances: int = Field(1, ge=1, le=100)
    target_invocations_per_instance: float = Field(100.0, gt=0)
    scale_in_cooldown_seconds: int = Field(300, ge=0, le=3600)
    scale_out_cooldown_seconds: int = Field(60, ge=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances {self.min_instances} > max_instances {self.max_instances}"
            )
        return self


class Stage(_Strict):
    """One endpoint the approved model is deployed to, in order (staging, then production)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,15}$")
    endpoint_name: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
        description="default: <short_name>-<name>",
    )
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    autoscaling: Autoscaling = Autoscaling()
    deployment: TrafficShift = TrafficShift()
    requires_approval: bool = Field(
        False, description="a person approves in the Airflow UI before this stage is deployed"
    )


class RollbackAlarms(_Strict):
    """CloudWatch alarms on the endpoint's variant that roll a deployment back while it bakes
    (``AutoRollbackConfiguration``): 5XX errors and model latency (p99)."""

    enabled: bool = True
    errors_5xx_threshold: int = Field(1, ge=1, description="Invocation5XXErrors per period")
    model_latency_p99_ms: int = Field(1000, ge=1)
    period_seconds: int = Field(60, ge=10, le=3600)
    evaluation_periods: int = Field(1, ge=1, le=10)


class DataCapture(_Strict):
    """Endpoint data capture (request and response bodies as JSON lines in S3)."""

    enabled: bool = False
    sampling_percentage: int = Field(100, ge=0, le=100)


class SmokeTest(_Strict):
    """After each deployment: invoke the endpoint with rows of the version's test split and
    compare the probabilities with what its evaluation computed."""

    rows: int = Field(20, ge=1, le=50)
    tolerance: float = Field(1e-9, ge=0, le=1e-3)


class EndpointApproval(_Strict):
    """The human-in-the-loop approval of a stage with ``requires_approval``."""

    response_timeout_seconds: int = Field(24 * 3600, ge=60)
    assigned_users: list[str] = []


class Notifications(_Strict):
    """Where the use case's events go (``notifications.py``): an SNS topic and/or an SQS
    queue, for the ``events`` listed."""

    sns_topic_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:.+$")
    sqs_queue_url: str | None = Field(None, pattern=r"^https?://[^/]+/\d{12}/[A-Za-z0-9_-]+")
    events: list[Literal["failure", "new_version", "deployment"]] = Field(
        ["failure", "new_version", "deployment"], min_length=1
    )

    @model_validator(mode="after")
    def _a_target(self) -> Notifications:
        if not (self.sns_topic_arn or self.sqs_queue_url):
            raise ValueError("set sns_topic_arn and/or sqs_queue_url (or drop the section)")
        return self


def _default_stages() -> list[Stage]:
    return [Stage(name="staging"), Stage(name="production", requires_approval=True)]


class EndpointSection(_Strict):
    """The real-time endpoint pipeline: which version, which stages, guardrails, cleanup."""

    model: ModelSelection = ModelSelection()
    approval_events_queue_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="SQS queue fed by the registry's approval events (approval_events setup)",
    )
    stages: list[Stage] = Field(default_factory=_default_stages, min_length=1, max_length=5)
    alarms: RollbackAlarms = RollbackAlarms()
    data_capture: DataCapture = DataCapture()
    smoke_test: SmokeTest = SmokeTest()
    approval: EndpointApproval = EndpointApproval()
    keep_unused: int = Field(3, ge=1, le=100, description="unused configs/models kept")
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: int = Field(60, ge=0)
    poll_interval_seconds: int = Field(30, ge=1, le=3600)
    max_wait_seconds: int = Field(4 * 3600, ge=60)

    @model_validator(mode="after")
    def _distinct_stages(self) -> EndpointSection:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be distinct: {names}")
        endpoints = [s.endpoint_name for s in self.stages if s.endpoint_name]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"endpoint names must be distinct: {endpoints}")
        if self.model.selection == "as_of_run_date":
            raise ValueError(
                "model.selection as_of_run_date has no run date here: use latest_approved or pinned"
            )
        return self


# Fields of the training-only layout and where they live now (checked before validation so an
# old file gets one clear message instead of a list of "Extra inputs" errors).
MOVED_FIELDS = {
    "schedule": "training.schedule",
    "tuning": "training.tuning",
    "evaluation": "training.evaluation",
    "registry": "training.registry",
    "dataset.split": "training.split",
    "source.training_query": "training.query",
    "source.data_arrival_query": "training.data_arrival_query",
    "source.lookback_days": "training.lookback_days",
}


def moved_fields(raw: dict) -> list[str]:
    """``old -> new`` for every field of ``raw`` that the old (training-only) layout had."""
    found = []
    for old, new in MOVED_FIELDS.items():
        parent, _, leaf = old.rpartition(".")
        container = raw.get(parent) if parent else raw
        if isinstance(container, dict) and leaf in container:
            found.append(f"{old} -> {new}")
    return found


class UseCase(_Strict):
    """One use case: shared settings plus one optional section per pipeline.

    A pipeline's DAG exists when its section does (``training``, ``batch_inference``)."""

    use_case: Identifier
    short_name: str = Field(pattern=_SHORT_NAME, max_length=TUNING_NAME_LIMIT - NAME_SUFFIX_LENGTH)
    description: str = Field(min_length=1)
    owner: str = "data-engineering"
    connections: Connections = Connections()
    source: Source
    extract: Extract = Extract()
    dataset: Dataset
    storage: Storage
    sagemaker: SageMakerSettings
    training: Training | None = None
    batch_inference: BatchInference | None = None
    endpoint: EndpointSection | None = None
    notifications: Notifications | None = None

    @property
    def sql_dir(self) -> str:
        """Folder under ``include/sql`` holding this use case's SQL files."""
        return self.source.sql_dir or self.use_case

    @property
    def model_package_group(self) -> str:
        """The model package group batch inference reads (and training registers into)."""
        for section in (self.batch_inference, self.endpoint):
            if section is not None and section.model.package_group:
                return section.model.package_group
        if self.training is None:
            raise ValueError("no model package group: set <section>.model.package_group")
        return self.training.registry.model_package_group

    @property
    def pool_name(self) -> str:
        """The Airflow pool of the use case's SageMaker job tasks."""
        return self.sagemaker.pool.name or f"mlops_{self.use_case}"

    def need_training(self) -> Training:
        """The training section; ``ConfigError`` when the use case has none."""
        if self.training is None:
            raise ConfigError(f"use case {self.use_case} has no training section")
        return self.training

    def need_batch(self) -> BatchInference:
        """The batch_inference section; ``ConfigError`` when the use case has none."""
        if self.batch_inference is None:
            raise ConfigError(f"use case {self.use_case} has no batch_inference section")
        return self.batch_inference

    def need_endpoint(self) -> EndpointSection:
        """The endpoint section; ``ConfigError`` when the use case has none."""
        if self.endpoint is None:
            raise ConfigError(f"use case {self.use_case} has no endpoint section")
        return self.endpoint

    def endpoint_name(self, stage: Stage) -> str:
        """The stage's endpoint: ``endpoint_name`` or ``<short_name>-<stage>``."""
        return stage.endpoint_name or f"{self.short_name}-{stage.name}"

    def approval_gate(self) -> Gate:
        """The gate ``auto`` approval applies: ``approval.gate`` or training's evaluation."""
        batch = self.need_batch()
        if batch.approval.gate is not None:
            return batch.approval.gate
        evaluation = self.need_training().evaluation
        return Gate(metric=evaluation.metric, threshold=evaluation.threshold)

    @model_validator(mode="after")
    def _sections(self) -> UseCase:
        if self.training is None and self.batch_inference is None and self.endpoint is None:
            raise ValueError("no pipeline section: add training, batch_inference and/or endpoint")
        endpoint = self.endpoint
        if endpoint is not None and self.training is None and not endpoint.model.package_group:
            raise ValueError("endpoint.model.package_group is required without training")
        for stage in endpoint.stages if endpoint else []:
            # The IAM policies scope endpoints to <short_name>-* (iam/airflow-endpoint-policy.json).
            if stage.endpoint_name and not stage.endpoint_name.startswith(f"{self.short_name}-"):
                raise ValueError(
                    f"endpoint.stages {stage.name}: endpoint_name {stage.endpoint_name!r} must "
                    f"start with {self.short_name}- (short_name)"
                )
        training, slots = self.training, self.sagemaker.pool.slots
        if training is not None and training.tuning.max_parallel_jobs > slots:
            # A task needing more slots than its pool has is never scheduled.
            raise ValueError(
                f"training.tuning.max_parallel_jobs ({training.tuning.max_parallel_jobs}) "
                f"exceeds sagemaker.pool.slots ({slots}): the tuning task could never start"
            )
        batch = self.batch_inference
        if batch is not None and self.training is None:
            if not batch.model.package_group:
                raise ValueError("batch_inference.model.package_group is required without training")
            if batch.approval.mode == "auto" and batch.approval.gate is None:
                raise ValueError("batch_inference.approval.gate is required without training")
        return self


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid use-case config ({err.error_count()} error(s))"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<top level>"
        lines.append(f"  - {where}: {item['msg']}")
    return "\n".join(lines)


def load_use_case(path: Path) -> UseCase:
    """Read and validate one use-case YAML; raise ``ConfigError`` naming the file and fields."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    moved = moved_fields(raw)
    if moved:
        raise ConfigError(
            f"{path}: this file uses the old training-only layout; move each field into its "
            "pipeline section (README: 'Adding a use case'):\n"
            + "\n".join(f"  - {line}" for line in moved)
        )
    try:
        config = UseCase.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(path, err)) from None
    if config.use_case != path.stem:
        raise ConfigError(f"{path}: use_case {config.use_case!r} must match the file name")
    return config


CONFIG_SUFFIXES = (".yaml", ".yml")


def config_files(config_dir: Path) -> list[Path]:
    """Every use-case file (``*.yaml`` and ``*.yml``) in ``config_dir``, sorted by name."""
    return sorted(p for p in Path(config_dir).iterdir() if p.suffix in CONFIG_SUFFIXES)


@dataclass(frozen=True)
class LoadResult:
    """Valid use cases, and an error per file that is not (one bad file hides nothing else)."""

    use_cases: list[UseCase]
    errors: dict[Path, str]


def load_all(config_dir: Path) -> LoadResult:
    """Load every use-case file; collect each file's error instead of stopping at the first.

    Two valid files with the same ``short_name`` (which would collide in SageMaker names) are
    both reported as errors: neither gets a DAG until one is renamed."""
    use_cases: dict[Path, UseCase] = {}
    errors: dict[Path, str] = {}
    for path in config_files(config_dir):
        try:
            use_cases[path] = load_use_case(path)
        except ConfigError as err:
            errors[path] = str(err)
    by_short: dict[str, list[Path]] = {}
    for path, config in use_cases.items():
        by_short.setdefault(config.short_name, []).append(path)
    for short_name, paths in by_short.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            for path in paths:
                errors[path] = (
                    f"{path}: short_name {short_name!r} is used by several files: {names}"
                )
                del use_cases[path]
    return LoadResult(list(use_cases.values()), errors)


def load_use_cases(config_dir: Path) -> list[UseCase]:
    """Every use-case file in ``config_dir``, validated; raise ``ConfigError`` listing every
    invalid file (for tools and tests; the DAG file uses :func:`load_all`)."""
    result = load_all(config_dir)
    if result.errors:
        raise ConfigError("\n".join(result.errors.values()))
    return result.use_cases
