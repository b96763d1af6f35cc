"""Hyperparameter tuning jobs of the local SageMaker runtime.

Actions: ``CreateHyperParameterTuningJob``, ``DescribeHyperParameterTuningJob``,
``ListHyperParameterTuningJobs``, ``ListTrainingJobsForHyperParameterTuningJob``,
``StopHyperParameterTuningJob``.

A tuning job runs real training jobs (``jobs.start_training_job``) named
``<tuning job>-<NNN>-<8 hex>`` like SageMaker's, each with ``TuningJobArn`` set, the tuning job's
tags, and ``HyperParameters`` = ``StaticHyperParameters`` + the tuned values (as strings;
categorical values exactly as given) + ``_tuning_objective_metric`` (which the training toolkit
does not pass to the script). At most ``MaxParallelTrainingJobs`` run at once, and the runtime's
container slots bound that further. Counters, ``BestTrainingJob`` and the final status are
derived from the child jobs.

Strategies:

* ``Random``: every parameter drawn independently (uniform in the scaled space).
* ``Bayesian``: **not** SageMaker's Gaussian-process optimiser but a simple, documented
  exploit/explore scheme: the first ``max(2, MaxParallelTrainingJobs)`` configurations are random;
  after that each new one is random with probability 0.25 (explore) or else a perturbation of
  the best configuration so far (exploit): numeric values move by a Gaussian step in the scaled
  space (sigma 0.2, shrinking by 15 % per finished job down to 0.05), categorical values are
  kept with probability 0.75.
* ``Grid``: every combination of the categorical ranges (the only kind Grid allows), in order.

Configurations are distinct within a job as long as the space allows (up to 100 draws each).
``ScalingType`` ``Auto`` is treated as ``Linear``; ``Logarithmic`` needs a positive minimum;
``ReverseLogarithmic`` (continuous only) needs ``0 <= min < max < 1``. ``RandomSeed`` makes the
sequence reproducible.

Local rules that differ from SageMaker (documented in ``local_stack/README.md``): when the first
``max(3, MaxParallelTrainingJobs)`` finished training jobs all failed, no further job is launched
(a broken script fails fast); ``ResourceLimits.MaxRuntimeInSeconds``, early stopping, warm start
and ``ConvergenceDetected`` are accepted but not applied; ``TargetObjectiveMetricValue`` and
``BestObjectiveNotImproving`` stop launching new jobs. ``Hyperband`` and multiple
``TrainingJobDefinitions`` are rejected.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import random
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import jobs, tags
from local_stack.sagemaker_runtime.api import (
    SageMakerError,
    action,
    in_use,
    now,
    paginate,
    validate_name,
    validate_request,
    validation_error,
)

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

TUNING = "HyperParameterTuningJob"
_FAIL_FAST_MIN = 3
_EXPLORE_PROBABILITY = 0.25
_KEEP_CATEGORY_PROBABILITY = 0.75
_MAX_DRAWS = 100


# --- parameter ranges ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One tuned hyperparameter and how to draw/perturb its values."""

    name: str
    kind: str  # Integer | Continuous | Categorical
    low: float = 0.0
    high: float = 0.0
    scaling: str = "Linear"
    values: tuple[str, ...] = ()

    @property
    def _top(self) -> float:
        # Integers use the half-open range [low, high + 1) so that every value is as likely.
        return self.high + 1 if self.kind == "Integer" else self.high

    def from_unit(self, u: float) -> str:
        """The value at position ``u`` in [0, 1] of the scaled range, as SageMaker passes it."""
        u = min(1.0, max(0.0, u))
        if self.kind == "Categorical":
            return self.values[min(len(self.values) - 1, int(u * len(self.values)))]
        low, top = self.low, self._top
        if self.scaling == "Logarithmic":
            value = math.exp(math.log(low) + u * (math.log(top) - math.log(low)))
        elif self.scaling == "ReverseLogarithmic":
            first, last = math.log(1 - low), math.log(1 - top)
            value = 1 - math.exp(first - u * (first - last))
        else:
            value = low + u * (top - low)
        if self.kind == "Integer":
            return str(int(min(self.high, max(self.low, math.floor(value)))))
        return repr(float(min(self.high, max(self.low, value))))

    def to_unit(self, text: str) -> float:
        """Inverse of :meth:`from_unit` (the middle of an integer's or category's bucket)."""
        if self.kind == "Categorical":
            return (self.values.index(text) + 0.5) / len(self.values)
        low, top = self.low, self._top
        if top == low:
            return 0.5
        value = int(text) + 0.5 if self.kind == "Integer" else float(text)
        if self.scaling == "Logarithmic":
            return (math.log(value) - math.log(low)) / (math.log(top) - math.log(low))
        if self.scaling == "ReverseLogarithmic":
            first, last = math.log(1 - low), math.log(1 - top)
            return (first - math.log(1 - value)) / (first - last)
        return (value - low) / (top - low)

    def sample(self, rng: random.Random) -> str:
        """A random value (uniform in the scaled space; categorical: uniform choice)."""
        if self.kind == "Categorical":
            return rng.choice(self.values)
        return self.from_unit(rng.random())

    def perturb(self, text: str, sigma: float, rng: random.Random) -> str:
        """A neighbour of ``text`` (Bayesian exploit step)."""
        if self.kind == "Categorical":
            if len(self.values) == 1 or rng.random() < _KEEP_CATEGORY_PROBABILITY:
                return text
            return rng.choice([v for v in self.values if v != text])
        return self.from_unit(self.to_unit(text) + rng.gauss(0.0, sigma))


def _number(text: Any, what: str, integer: bool) -> float:
    try:
        return float(int(text)) if integer else float(text)
    except (TypeError, ValueError) as err:
        kind = "an integer" if integer else "a number"
        raise validation_error(f"{what} must be {kind}, got {text!r}.") from err


def parse_ranges(ranges: dict[str, Any]) -> list[Parameter]:
    """Validate ``ParameterRanges`` and turn them into :class:`Parameter` objects."""
    params: list[Parameter] = []
    if ranges.get("AutoParameters"):
        raise validation_error("The local runtime does not support AutoParameters.")
    for kind in ("Integer", "Continuous"):
        for item in ranges.get(f"{kind}ParameterRanges", []):
            name = item["Name"]
            low = _number(item["MinValue"], f"MinValue of {name}", kind == "Integer")
            high = _number(item["MaxValue"], f"MaxValue of {name}", kind == "Integer")
            if low > high:
                raise validation_error(
                    f"The MinValue of hyperparameter {name} must be less than or equal to its "
                    "MaxValue."
                )
            scaling = item.get("ScalingType", "Auto")
            scaling = "Linear" if scaling == "Auto" else scaling
            if scaling == "Logarithmic" and low <= 0:
                raise validation_error(
                    f"Logarithmic scaling of {name} needs a range of values greater than 0."
                )
            if scaling == "ReverseLogarithmic" and (kind == "Integer" or not 0 <= low < high < 1):
                raise validation_error(
                    f"ReverseLogarithmic scaling of {name} works only for continuous ranges "
                    "within 0 <= x < 1."
                )
            params.append(Parameter(name, kind, low, high, scaling))
    for item in ranges.get("CategoricalParameterRanges", []):
        values = tuple(item["Values"])
        if not values:
            raise validation_error(f"Categorical hyperparameter {item['Name']} has no values.")
        params.append(Parameter(item["Name"], "Categorical", values=values))
    names = [p.name for p in params]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise validation_error(f"Hyperparameters defined in more than one range: {duplicates}")
    return params


# --- strategies ----------------------------------------------------------------------------------
class Strategy:
    """Proposes the next configuration from the ones tried and the results so far."""

    def __init__(self, kind: str, params: list[Parameter], seed: int | None, parallel: int):
        self.kind = kind
        self.params = params
        self.rng = random.Random(seed)
        self.initial = max(2, parallel)
        self._grid = (
            iter(itertools.product(*(p.values for p in params))) if kind == "Grid" else None
        )

    def grid_size(self) -> int:
        """Number of Grid combinations."""
        return math.prod(len(p.values) for p in self.params)

    def propose(
        self,
        tried: list[dict[str, str]],
        results: list[tuple[dict[str, str], float]],
        maximize: bool,
    ) -> dict[str, str] | None:
        """The next configuration, or None when the Grid is exhausted."""
        if self._grid is not None:
            combo = next(self._grid, None)
            return (
                None
                if combo is None
                else dict(zip((p.name for p in self.params), combo, strict=True))
            )
        seen = {tuple(sorted(c.items())) for c in tried}
        candidate: dict[str, str] = {}
        for _ in range(_MAX_DRAWS):
            candidate = self._draw(tried, results, maximize)
            if tuple(sorted(candidate.items())) not in seen:
                break
        return candidate

    def _draw(
        self,
        tried: list[dict[str, str]],
        results: list[tuple[dict[str, str], float]],
        maximize: bool,
    ) -> dict[str, str]:
        exploit = (
            self.kind == "Bayesian"
            and results
            and len(tried) >= self.initial
            and self.rng.random() >= _EXPLORE_PROBABILITY
        )
        if not exploit:
            return {p.name: p.sample(self.rng) for p in self.params}
        best = (max if maximize else min)(results, key=lambda r: r[1])[0]
        sigma = max(0.05, 0.2 * 0.85 ** len(results))
        return {p.name: p.perturb(best[p.name], sigma, self.rng) for p in self.params}


# --- the tuning job --------------------------------------------------------------------------
@dataclass
class TuningControl:
    """Internal state of a tuning job (``record["_control"]``)."""

    name: str
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    children: list[dict[str, Any]] = field(default_factory=list)
    tuned: dict[str, dict[str, str]] = field(default_factory=dict)  # child name -> tuned HPs


def _validate(runtime: Runtime, request: dict[str, Any]) -> tuple[list[Parameter], dict[str, Any]]:
    validate_request("CreateHyperParameterTuningJob", request)
    validate_name(request["HyperParameterTuningJobName"], "HyperParameterTuningJobName", 32)
    config = request["HyperParameterTuningJobConfig"]
    if request.get("TrainingJobDefinitions"):
        raise validation_error(
            "The local runtime supports one TrainingJobDefinition, not TrainingJobDefinitions."
        )
    definition = request.get("TrainingJobDefinition")
    if not definition:
        raise validation_error("TrainingJobDefinition is required.")
    strategy = config["Strategy"]
    if strategy not in ("Random", "Bayesian", "Grid"):
        raise validation_error(f"The local runtime does not support the {strategy} strategy.")
    objective = config.get("HyperParameterTuningJobObjective")
    if not objective:
        raise validation_error(f"HyperParameterTuningJobObjective is required for {strategy}.")
    metrics = [m["Name"] for m in definition["AlgorithmSpecification"].get("MetricDefinitions", [])]
    if objective["MetricName"] not in metrics:
        raise validation_error(
            f"The objective metric {objective['MetricName']} is not defined in the "
            f"MetricDefinitions of the training job definition (defined: {metrics})."
        )
    params = parse_ranges(config.get("ParameterRanges") or {})
    if not params:
        raise validation_error("ParameterRanges must define at least one hyperparameter.")
    static = definition.get("StaticHyperParameters") or {}
    overlap = sorted(set(static) & {p.name for p in params})
    if overlap:
        raise validation_error(
            f"Hyperparameters {overlap} are both static and tuned; a hyperparameter can be one "
            "or the other."
        )
    if strategy == "Grid" and any(p.kind != "Categorical" for p in params):
        raise validation_error("The Grid strategy supports categorical parameter ranges only.")
    limits = config["ResourceLimits"]
    if limits["MaxParallelTrainingJobs"] < 1:
        raise validation_error("MaxParallelTrainingJobs must be at least 1.")
    if strategy != "Grid" and not limits.get("MaxNumberOfTrainingJobs"):
        raise validation_error("The local runtime needs ResourceLimits.MaxNumberOfTrainingJobs.")
    if config.get("TrainingJobEarlyStoppingType", "Off") not in ("Off", "Auto"):
        raise validation_error("TrainingJobEarlyStoppingType must be Off or Auto.")
    template = _child_request(runtime, request, "template-000-00000000", {})
    jobs.validate_training_request(template, operation="")
    return params, definition


def _child_request(
    runtime: Runtime, request: dict[str, Any], child_name: str, tuned: dict[str, str]
) -> dict[str, Any]:
    definition = request["TrainingJobDefinition"]
    objective = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    algo = {
        k: v
        for k, v in definition["AlgorithmSpecification"].items()
        if k in ("TrainingImage", "AlgorithmName", "TrainingInputMode", "MetricDefinitions")
    }
    resources = definition.get("ResourceConfig")
    if resources is None:
        hpt = definition.get("HyperParameterTuningResourceConfig") or {}
        resources = {
            k: hpt[k] for k in ("InstanceType", "InstanceCount", "VolumeSizeInGB") if k in hpt
        }
    child: dict[str, Any] = {
        "TrainingJobName": child_name,
        "AlgorithmSpecification": copy.deepcopy(algo),
        "RoleArn": definition["RoleArn"],
        "OutputDataConfig": copy.deepcopy(definition["OutputDataConfig"]),
        "ResourceConfig": copy.deepcopy(resources or {"InstanceCount": 1}),
        "StoppingCondition": copy.deepcopy(definition["StoppingCondition"]),
        "HyperParameters": {
            **(definition.get("StaticHyperParameters") or {}),
            **tuned,
            "_tuning_objective_metric": objective["MetricName"],
        },
        "InputDataConfig": copy.deepcopy(definition.get("InputDataConfig", [])),
        "Tags": copy.deepcopy(request.get("Tags", [])),
    }
    for optional in (
        "VpcConfig",
        "EnableNetworkIsolation",
        "EnableInterContainerTrafficEncryption",
        "EnableManagedSpotTraining",
        "CheckpointConfig",
        "RetryStrategy",
        "Environment",
    ):
        if optional in definition:
            child[optional] = copy.deepcopy(definition[optional])
    return child


@action("CreateHyperParameterTuningJob")
def create_tuning_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Validate, register and start a tuning job."""
    params, definition = _validate(runtime, request)
    name = request["HyperParameterTuningJobName"]
    arn = runtime.arn("hyper-parameter-tuning-job", name)
    created = now()
    config = copy.deepcopy(request["HyperParameterTuningJobConfig"])
    config.setdefault("TrainingJobEarlyStoppingType", "Off")
    record: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobArn": arn,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": copy.deepcopy(definition),
        "HyperParameterTuningJobStatus": "InProgress",
        "CreationTime": created,
        "LastModifiedTime": created,
        "_control": TuningControl(name),
        "_request": copy.deepcopy(request),
    }
    if "WarmStartConfig" in request:
        record["WarmStartConfig"] = copy.deepcopy(request["WarmStartConfig"])
    with runtime.lock:
        store = runtime.store(TUNING)
        if name in store:
            raise in_use(
                "Hyperparameter tuning job names must be unique within an AWS account and "
                f"region, and a hyperparameter tuning job with this name already exists ({arn})"
            )
        store[name] = record
    tags.set_tags(runtime, arn, request.get("Tags"))
    runtime.run_async(name, lambda: _run(runtime, record, params))
    return {"HyperParameterTuningJobArn": arn}


def _objective(child: dict[str, Any], metric: str) -> float | None:
    for item in child.get("FinalMetricDataList", []):
        if item.get("MetricName") == metric:
            return float(item["Value"])
    return None


def _run(runtime: Runtime, record: dict[str, Any], params: list[Parameter]) -> None:
    ctl: TuningControl = record["_control"]
    try:
        _loop(runtime, record, params)
    except Exception as err:  # a bug: fail the tuning job visibly, stop the children
        log.exception("tuning job %s crashed", ctl.name)
        _stop_children(runtime, ctl)
        _end(runtime, record, "Failed", f"InternalServerError: {type(err).__name__}: {err}")


def _loop(runtime: Runtime, record: dict[str, Any], params: list[Parameter]) -> None:
    ctl: TuningControl = record["_control"]
    request = record["_request"]
    config = request["HyperParameterTuningJobConfig"]
    objective = config["HyperParameterTuningJobObjective"]
    maximize = objective["Type"] == "Maximize"
    limits = config["ResourceLimits"]
    parallel = int(limits["MaxParallelTrainingJobs"])
    strategy = Strategy(config["Strategy"], params, config.get("RandomSeed"), parallel)
    max_jobs = int(limits.get("MaxNumberOfTrainingJobs") or strategy.grid_size())
    criteria = config.get("TuningJobCompletionCriteria") or {}
    target = criteria.get("TargetObjectiveMetricValue")
    patience = (criteria.get("BestObjectiveNotImproving") or {}).get(
        "MaxNumberOfTrainingJobsNotImproving"
    )
    tried: list[dict[str, str]] = []
    exhausted = False

    def wake(_child: dict[str, Any]) -> None:
        ctl.wake.set()

    while True:
        ctl.wake.clear()
        if ctl.stop.is_set() or runtime.stopping.is_set():
            break
        children = list(ctl.children)
        finished = [c for c in children if jobs.control(c).done.is_set()]
        running = len(children) - len(finished)
        results = [
            (ctl.tuned[c["TrainingJobName"]], value)
            for c in finished
            if c["TrainingJobStatus"] == "Completed"
            and (value := _objective(c, objective["MetricName"])) is not None
        ]
        can_launch = (
            not exhausted
            and len(children) < max_jobs
            and running < parallel
            and not _target_reached(results, target, maximize)
            and not _not_improving(finished, results, ctl, patience, maximize, objective)
            and not _fail_fast(finished, results, parallel)
        )
        if can_launch:
            tuned = strategy.propose(tried, results, maximize)
            if tuned is None:
                exhausted = True
                continue
            tried.append(tuned)
            child_name = f"{ctl.name}-{len(children) + 1:03d}-{secrets.token_hex(4)}"
            child_request = _child_request(runtime, request, child_name, tuned)
            with runtime.lock:
                ctl.tuned[child_name] = tuned
            child = jobs.start_training_job(
                runtime, child_request, record["HyperParameterTuningJobArn"], on_done=wake
            )
            with runtime.lock:
                ctl.children.append(child)
                record["LastModifiedTime"] = now()
            continue
        if running == 0:
            break
        ctl.wake.wait(1.0)

    if ctl.stop.is_set() or runtime.stopping.is_set():
        _stop_children(runtime, ctl)
        _end(runtime, record, "Stopped")
        return
    summaries = [_summary(runtime, record, c) for c in ctl.children]
    if any(s.get("ObjectiveStatus") == "Succeeded" for s in summaries):
        _end(runtime, record, "Completed")
        return
    _end(runtime, record, "Failed", _failure_reason(summaries, objective["MetricName"]))


def _target_reached(
    results: list[tuple[dict[str, str], float]], target: Any, maximize: bool
) -> bool:
    if target is None or not results:
        return False
    values = [v for _, v in results]
    return max(values) >= target if maximize else min(values) <= target


def _not_improving(
    finished: list[dict[str, Any]],
    results: list[tuple[dict[str, str], float]],
    ctl: TuningControl,
    patience: Any,
    maximize: bool,
    objective: dict[str, Any],
) -> bool:
    if not patience or not results:
        return False
    best: float | None = None
    since = 0
    for child in sorted(finished, key=lambda c: c.get("TrainingEndTime") or c["CreationTime"]):
        value = _objective(child, objective["MetricName"])
        if child["TrainingJobStatus"] != "Completed" or value is None:
            continue
        if best is None or (value > best if maximize else value < best):
            best, since = value, 0
        else:
            since += 1
    return since >= int(patience)


def _fail_fast(
    finished: list[dict[str, Any]], results: list[tuple[dict[str, str], float]], parallel: int
) -> bool:
    failed = [c for c in finished if c["TrainingJobStatus"] == "Failed"]
    return not results and len(failed) >= max(_FAIL_FAST_MIN, parallel)


def _failure_reason(summaries: list[dict[str, Any]], metric: str) -> str:
    failed = sorted(
        (s for s in summaries if s["TrainingJobStatus"] == "Failed"),
        key=lambda s: s["CreationTime"],
    )
    if failed:
        first = failed[0]
        reason = (
            f"All training jobs failed ({len(failed)} of {len(summaries)}). First failure: "
            f"training job {first['TrainingJobName']}: {first.get('FailureReason', '(no reason)')}"
        )
    elif summaries:
        reason = f"No training job reported the objective metric {metric}."
    else:
        reason = "No training job was started."
    return jobs._truncate(reason)


def _stop_children(runtime: Runtime, ctl: TuningControl) -> None:
    for child in list(ctl.children):
        with contextlib.suppress(SageMakerError):  # already terminal
            jobs.stop_job(runtime, jobs.TRAINING, child["TrainingJobName"])
    for child in list(ctl.children):
        jobs.control(child).done.wait(30)


def _end(runtime: Runtime, record: dict[str, Any], status: str, reason: str | None = None) -> None:
    ctl: TuningControl = record["_control"]
    with runtime.lock:
        record["HyperParameterTuningJobStatus"] = status
        record["HyperParameterTuningEndTime"] = now()
        record["LastModifiedTime"] = record["HyperParameterTuningEndTime"]
        runtime_seconds = (
            record["HyperParameterTuningEndTime"] - record["CreationTime"]
        ).total_seconds()
        record["ConsumedResources"] = {"RuntimeInSeconds": int(runtime_seconds)}
        if reason:
            record["FailureReason"] = reason
    ctl.done.set()


# --- views ---------------------------------------------------------------------------------------
def _summary(runtime: Runtime, record: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """A ``HyperParameterTrainingJobSummary`` of one child."""
    ctl: TuningControl = record["_control"]
    objective = record["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    view = jobs.public(runtime, child)
    status = view["TrainingJobStatus"]
    summary: dict[str, Any] = {
        "TrainingJobName": view["TrainingJobName"],
        "TrainingJobArn": view["TrainingJobArn"],
        "TuningJobName": record["HyperParameterTuningJobName"],
        "CreationTime": view["CreationTime"],
        "TrainingJobStatus": status,
        "TunedHyperParameters": dict(ctl.tuned[view["TrainingJobName"]]),
    }
    for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
        if key in view:
            summary[key] = view[key]
    value = _objective(view, objective["MetricName"])
    if status == "Completed" and value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": objective["Type"],
            "MetricName": objective["MetricName"],
            "Value": value,
        }
        summary["ObjectiveStatus"] = "Succeeded"
    elif status in ("InProgress", "Stopping"):
        summary["ObjectiveStatus"] = "Pending"
    else:
        summary["ObjectiveStatus"] = "Failed"
    return summary


def _counters(summaries: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    status = {
        "Completed": 0,
        "InProgress": 0,
        "RetryableError": 0,
        "NonRetryableError": 0,
        "Stopped": 0,
    }
    bucket = {
        "Completed": "Completed",
        "InProgress": "InProgress",
        "Stopping": "InProgress",
        "Failed": "NonRetryableError",
        "Stopped": "Stopped",
    }
    objective = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for summary in summaries:
        status[bucket.get(summary["TrainingJobStatus"], "InProgress")] += 1
        objective[summary["ObjectiveStatus"]] += 1
    return status, objective


def best_training_job(summaries: list[dict[str, Any]], maximize: bool) -> dict[str, Any] | None:
    """The summary with the best objective value among the succeeded ones."""
    scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
    if not scored:
        return None

    def value(s: dict[str, Any]) -> float:
        return s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]

    return max(scored, key=value) if maximize else min(scored, key=value)


def _get(runtime: Runtime, name: str) -> dict[str, Any]:
    with runtime.lock:
        record = runtime.store(TUNING).get(name)
    if record is None:
        raise SageMakerError(
            "ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}"
        )
    return record


def _view(runtime: Runtime, record: dict[str, Any]) -> dict[str, Any]:
    ctl: TuningControl = record["_control"]
    with runtime.lock:
        view = copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})
        children = list(ctl.children)
    summaries = [_summary(runtime, record, c) for c in children]
    view["TrainingJobStatusCounters"], view["ObjectiveStatusCounters"] = _counters(summaries)
    objective = view["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    best = best_training_job(summaries, objective["Type"] == "Maximize")
    if best is not None:
        view["BestTrainingJob"] = best
    return view


@action("DescribeHyperParameterTuningJob")
def describe_tuning_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """The tuning job with live counters and the best training job so far."""
    validate_request("DescribeHyperParameterTuningJob", request)
    return _view(runtime, _get(runtime, request["HyperParameterTuningJobName"]))


@action("ListHyperParameterTuningJobs")
def list_tuning_jobs(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Tuning job summaries (default order: by name, ascending, as SageMaker)."""
    validate_request("ListHyperParameterTuningJobs", request)
    with runtime.lock:
        records = list(runtime.store(TUNING).values())
    views = [_view(runtime, r) for r in records]
    page, token = jobs.filter_and_page(
        views,
        request,
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobStatus",
        default_sort="Name",
        default_order="Ascending",
    )
    fields = (
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobArn",
        "HyperParameterTuningJobStatus",
        "CreationTime",
        "HyperParameterTuningEndTime",
        "LastModifiedTime",
        "TrainingJobStatusCounters",
        "ObjectiveStatusCounters",
    )
    summaries = []
    for view in page:
        summary = {f: view[f] for f in fields if f in view}
        summary["Strategy"] = view["HyperParameterTuningJobConfig"]["Strategy"]
        summary["ResourceLimits"] = view["HyperParameterTuningJobConfig"]["ResourceLimits"]
        summaries.append(summary)
    return {
        "HyperParameterTuningJobSummaries": summaries,
        **({"NextToken": token} if token else {}),
    }


@action("ListTrainingJobsForHyperParameterTuningJob")
def list_training_jobs_for_tuning_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """The child training jobs; ``SortBy=FinalObjectiveMetricValue`` lists only the jobs that
    reported the objective metric, as SageMaker does."""
    validate_request("ListTrainingJobsForHyperParameterTuningJob", request)
    record = _get(runtime, request["HyperParameterTuningJobName"])
    ctl: TuningControl = record["_control"]
    with runtime.lock:
        children = list(ctl.children)
    summaries = [_summary(runtime, record, c) for c in children]
    if request.get("StatusEquals"):
        summaries = [s for s in summaries if s["TrainingJobStatus"] == request["StatusEquals"]]
    sort_by = request.get("SortBy", "Name")
    descending = request.get("SortOrder", "Ascending") == "Descending"
    if sort_by == "FinalObjectiveMetricValue":
        summaries = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
        summaries.sort(
            key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
            reverse=descending,
        )
    else:
        key = {"Name": "TrainingJobName", "Status": "TrainingJobStatus"}.get(
            sort_by, "CreationTime"
        )
        summaries.sort(key=lambda s: s[key], reverse=descending)
    page, token = paginate(summaries, request)
    return {"TrainingJobSummaries": page, **({"NextToken": token} if token else {})}


@action("StopHyperParameterTuningJob")
def stop_tuning_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Stopping -> Stopped: running training jobs are stopped, no new ones start."""
    validate_request("StopHyperParameterTuningJob", request)
    record = _get(runtime, request["HyperParameterTuningJobName"])
    ctl: TuningControl = record["_control"]
    with runtime.lock:
        status = record["HyperParameterTuningJobStatus"]
        if status != "InProgress":
            raise validation_error(
                f"The request was rejected because the hyperparameter tuning job is in status "
                f"{status}."
            )
        record["HyperParameterTuningJobStatus"] = "Stopping"
        record["LastModifiedTime"] = now()
    ctl.stop.set()
    ctl.wake.set()
    return {}


def tuning_done(runtime: Runtime, name: str) -> threading.Event:
    """An event set when the tuning job is terminal (for in-process callers and tests)."""
    return _get(runtime, name)["_control"].done
