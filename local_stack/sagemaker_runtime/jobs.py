"""Processing and training jobs of the local SageMaker runtime.

Actions: ``CreateProcessingJob``, ``DescribeProcessingJob``, ``ListProcessingJobs``,
``StopProcessingJob``, ``CreateTrainingJob``, ``DescribeTrainingJob``, ``ListTrainingJobs``,
``StopTrainingJob`` (hyperparameter tuning lives in ``tuning.py``, tags in ``tags.py``).

A job runs in a thread of the runtime: its instances download their S3 inputs into a stand-in
``/opt/ml`` folder (see ``containers.py``), run the script as a subprocess while holding one of
the runtime's container slots, and upload their outputs. Training runs the real
``sagemaker-training`` toolkit as the scikit-learn image does (via ``local_stack.toolkits``).
Status, secondary status, timestamps,
``FailureReason`` and the CloudWatch log streams follow what SageMaker shows. Describe of an
unknown job answers ``ValidationException: Requested resource not found.`` as SageMaker does
(the Airflow provider's name-collision check relies on exactly that).

Fault injection (``runtime.faults``): ``delay_for(job)`` sleeps before the job starts (a Stop
during the delay stops it); ``failure_for(job)`` fails the job with that reason *without running
the script* (nothing is downloaded or uploaded), after the delay.

Per-job timings for benchmarks (not part of the API): :func:`job_timings`, also logged at INFO
by ``local_stack.sagemaker_runtime.jobs`` when a job ends.
"""

from __future__ import annotations

import copy
import filecmp
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError as BotoClientError

from local_stack import images
from local_stack.sagemaker_runtime import isolation, s3io, tags
from local_stack.sagemaker_runtime.api import (
    SageMakerError,
    action,
    as_datetime,
    in_use,
    now,
    paginate,
    validate_name,
    validate_request,
    validation_error,
)
from local_stack.sagemaker_runtime.containers import (
    ContainerProcess,
    LogShipper,
    ProcessResult,
    command,
    image_path_env,
    local_path,
    opt_ml,
    rewrite_paths,
)
from local_stack.sagemaker_runtime.runtime import EXECUTION_ROLE_ACCESS_KEY_ID

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

PROCESSING = "ProcessingJob"
TRAINING = "TrainingJob"
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
MAX_REASON = 1024
DEFAULT_MAX_RUNTIME = 86400
_PROCESSING_PREFIX = "/opt/ml/processing/"


# --- shared job machinery ---------------------------------------------------------------------
@dataclass
class JobControl:
    """Internal state of a job that the API never shows (kept in ``record["_control"]``)."""

    kind: str
    name: str
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    processes: list[ContainerProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    on_done: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request_stop(self) -> None:
        """Stop the job: running script processes get SIGTERM, pending work is skipped."""
        self.stop.set()
        with self.lock:
            processes = list(self.processes)
        for process in processes:
            process.stop()


class JobFailed(Exception):
    """Ends a job run as ``Failed`` with ``reason`` (and optionally an exit message)."""

    def __init__(self, reason: str, exit_message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_message = exit_message


class JobStopped(Exception):
    """Ends a job run as ``Stopped``."""

    def __init__(self, secondary: str = "Stopped", message: str | None = None) -> None:
        super().__init__(secondary)
        self.secondary = secondary
        self.message = message


_KINDS = {
    PROCESSING: {
        "name": "ProcessingJobName",
        "arn": "ProcessingJobArn",
        "status": "ProcessingJobStatus",
        "start": "ProcessingStartTime",
        "end": "ProcessingEndTime",
        "resource": "processing-job",
        "label": "processing job",
        "log_group": "/aws/sagemaker/ProcessingJobs",
    },
    TRAINING: {
        "name": "TrainingJobName",
        "arn": "TrainingJobArn",
        "status": "TrainingJobStatus",
        "start": "TrainingStartTime",
        "end": "TrainingEndTime",
        "resource": "training-job",
        "label": "training job",
        "log_group": "/aws/sagemaker/TrainingJobs",
    },
}


def public(runtime: Runtime, record: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the API-visible fields of a record (internal ``_`` keys dropped)."""
    with runtime.lock:
        return copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})


def control(record: dict[str, Any]) -> JobControl:
    """The internal control block of a job record."""
    return record["_control"]


def get_job(runtime: Runtime, kind: str, name: str) -> dict[str, Any]:
    """The record of a job; ``ValidationException: Requested resource not found.`` if none."""
    with runtime.lock:
        record = runtime.store(kind).get(name)
    if record is None:
        raise validation_error("Requested resource not found.")
    return record


def _update(runtime: Runtime, record: dict[str, Any], **fields: Any) -> None:
    with runtime.lock:
        record.update(fields)
        record["LastModifiedTime"] = now()


def _truncate(text: str, limit: int = MAX_REASON, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "..." + text[-(limit - 3) :] if keep_end else text[: limit - 3] + "..."


def _register(runtime: Runtime, kind: str, record: dict[str, Any]) -> None:
    spec = _KINDS[kind]
    name = record[spec["name"]]
    with runtime.lock:
        store = runtime.store(kind)
        if name in store:
            label = spec["label"]
            raise in_use(
                f"{label[0].upper()}{label[1:]} names must be unique within an AWS account and "
                f"region, and a {label} with this name already exists ({record[spec['arn']]})"
            )
        store[name] = record


def _finish(
    runtime: Runtime,
    record: dict[str, Any],
    status: str,
    *,
    failure: str | None = None,
    exit_message: str | None = None,
    secondary: str | None = None,
    secondary_message: str | None = None,
) -> None:
    """Put a job into its terminal status and run the end-of-job bookkeeping."""
    ctl = control(record)
    spec = _KINDS[ctl.kind]
    ended = now()
    fields: dict[str, Any] = {spec["status"]: status, spec["end"]: ended}
    if failure:
        fields["FailureReason"] = _truncate(failure)
    if exit_message:
        fields["ExitMessage"] = _truncate(exit_message)
    with runtime.lock:  # one atomic change: a describe never sees half of the end state
        _update(runtime, record, **fields)
        if ctl.kind == TRAINING:
            _training_finished(runtime, record, status, secondary or status, secondary_message)
        ctl.timings["terminal"] = time.time()
    _log_timings(ctl)
    ctl.done.set()
    for callback in list(ctl.on_done):
        try:
            callback(record)
        except Exception:
            log.exception("on_done callback of %s failed", ctl.name)


def _log_timings(ctl: JobControl) -> None:
    t = ctl.timings
    if "script_started" in t and "script_finished" in t:
        log.info(
            "%s %s: submitted->script started %.3f s, script finished->terminal %.3f s",
            ctl.kind,
            ctl.name,
            t["script_started"] - t["submitted"],
            t["terminal"] - t["script_finished"],
        )


def job_timings(runtime: Runtime, kind: str | None = None) -> list[dict[str, Any]]:
    """Benchmark timings of every job (seconds, wall clock), newest last.

    ``SubmittedToScriptStarted``: Create* accepted -> first script process started;
    ``ScriptFinishedToTerminal``: last script process exited -> terminal status visible."""
    rows = []
    with runtime.lock:
        records = [
            (k, r)
            for k in (PROCESSING, TRAINING)
            if kind in (None, k)
            for r in runtime.store(k).values()
        ]
    for k, record in records:
        t = dict(control(record).timings)
        row: dict[str, Any] = {
            "Kind": k,
            "Name": record[_KINDS[k]["name"]],
            "Status": record[_KINDS[k]["status"]],
            "Timings": t,
        }
        if "script_started" in t:
            row["SubmittedToScriptStarted"] = t["script_started"] - t["submitted"]
        if "script_finished" in t and "terminal" in t:
            row["ScriptFinishedToTerminal"] = t["terminal"] - t["script_finished"]
        rows.append(row)
    rows.sort(key=lambda r: r["Timings"].get("submitted", 0))
    return rows


def _pre_run(runtime: Runtime, record: dict[str, Any]) -> None:
    """Injected delay and failure, and an early Stop; raises to end the run."""
    ctl = control(record)
    delay = runtime.faults.delay_for(ctl.name)
    if delay > 0 and _wait_stop(runtime, ctl, delay):
        raise JobStopped()
    if ctl.stop.is_set() or runtime.stopping.is_set():
        raise JobStopped()
    injected = runtime.faults.failure_for(ctl.name)
    if injected is not None:
        raise JobFailed(injected)


def _wait_stop(runtime: Runtime, ctl: JobControl, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if ctl.stop.wait(min(left, 0.1)) or runtime.stopping.is_set():
            return True
    return False


def _job_dir(runtime: Runtime, name: str) -> Path:
    path = runtime.workdir / "jobs" / name
    if path.exists():  # a namesake from an earlier session of a persistent work dir
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _image_python(image_uri: str) -> Path:
    """The interpreter of the job's image (``local_stack/images.py``); an image the runtime
    cannot run fails the job, as an image SageMaker cannot pull does."""
    try:
        return images.interpreter_for(image_uri)
    except images.UnknownImage as err:
        raise JobFailed(f"ClientError: {err}") from err


def _script_env(
    runtime: Runtime, root: Path, environment: dict[str, str], python: Path
) -> dict[str, str]:
    env = image_path_env(dict(os.environ), python)
    env.update(
        {
            "AWS_ENDPOINT_URL": runtime.endpoint_url,
            "AWS_ACCESS_KEY_ID": EXECUTION_ROLE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": runtime.region,
            "AWS_REGION": runtime.region,
            "SAGEMAKER_BASE_DIR": str(opt_ml(root)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    env.update({k: rewrite_paths(str(v), root) for k, v in (environment or {}).items()})
    return env


def _run_process(
    runtime: Runtime,
    record: dict[str, Any],
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    instance: int,
    timeout: float | None,
    on_line: Callable[[str, float], None] | None = None,
) -> ProcessResult:
    """Run one instance's script with its CloudWatch stream; records the timings."""
    ctl = control(record)
    spec = _KINDS[ctl.kind]
    stream = f"{ctl.name}/algo-{instance}-{int(time.time())}"
    shipper = LogShipper(runtime.client("logs"), spec["log_group"], stream)
    process = ContainerProcess(argv, env, cwd, shipper, on_line, (runtime.stopping,))
    with ctl.lock:
        ctl.processes.append(process)
    if ctl.stop.is_set():
        process.stop()
    try:
        result = process.run(timeout)
    finally:
        shipper.close()
        with ctl.lock:
            ctl.processes.remove(process)
    with ctl.lock:
        t = ctl.timings
        t["script_started"] = min(t.get("script_started", result.started_at), result.started_at)
        t["script_finished"] = max(t.get("script_finished", 0.0), result.finished_at)
    return result


def _algorithm_error(root: Path, result: ProcessResult, files: tuple[str, ...]) -> str:
    """``AlgorithmError: ...`` from the failure file, else the tail of the script's stderr."""
    for name in files:
        path = opt_ml(root) / "output" / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return _truncate(f"AlgorithmError: {text}")
    head = f"AlgorithmError: ExitCode {result.exit_code}; last lines of stderr: "
    lines = [line for line in (result.stderr_tail or result.output_tail) if line.strip()]
    tail = "\n".join(lines) or "(no output)"
    return head + _truncate(tail, MAX_REASON - len(head), keep_end=True)


def _exit_message(root: Path) -> str | None:
    path = opt_ml(root) / "output" / "message"
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    return None


def _max_runtime(record: dict[str, Any]) -> float | None:
    value = (record.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    return float(value) if value else None


def _remaining(record: dict[str, Any], started: float) -> float | None:
    limit = _max_runtime(record)
    return None if limit is None else max(0.0, limit - (time.time() - started))


def filter_and_page(
    records: list[dict[str, Any]],
    request: dict[str, Any],
    name_field: str,
    status_field: str,
    default_sort: str = "CreationTime",
    default_order: str = "Descending",
) -> tuple[list[dict[str, Any]], str | None]:
    """A List* page: NameContains (case-insensitive), StatusEquals, Creation/LastModified time
    bounds, SortBy (Name|CreationTime|Status) and SortOrder, then MaxResults/NextToken."""
    contains = (request.get("NameContains") or "").lower()
    status = request.get("StatusEquals")
    bounds = [
        ("CreationTimeAfter", "CreationTime", lambda v, b: v > b),
        ("CreationTimeBefore", "CreationTime", lambda v, b: v < b),
        ("LastModifiedTimeAfter", "LastModifiedTime", lambda v, b: v > b),
        ("LastModifiedTimeBefore", "LastModifiedTime", lambda v, b: v < b),
    ]
    selected = []
    for record in records:
        if contains and contains not in record[name_field].lower():
            continue
        if status and record[status_field] != status:
            continue
        if any(
            request.get(param) is not None and not cmp(record[fld], as_datetime(request[param]))
            for param, fld, cmp in bounds
        ):
            continue
        selected.append(record)
    sort_by = request.get("SortBy", default_sort)
    key_field = {"Name": name_field, "Status": status_field}.get(sort_by, "CreationTime")
    selected.sort(
        key=lambda r: r[key_field], reverse=request.get("SortOrder", default_order) == "Descending"
    )
    return paginate(selected, request)


def _listing(
    runtime: Runtime,
    kind: str,
    request: dict[str, Any],
    summary: Callable[[dict[str, Any]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], str | None]:
    spec = _KINDS[kind]
    with runtime.lock:
        records = [public(runtime, r) for r in runtime.store(kind).values()]
    page, token = filter_and_page(records, request, spec["name"], spec["status"])
    return [summary(r) for r in page], token


def stop_job(runtime: Runtime, kind: str, name: str) -> None:
    """Stop an InProgress job (Stopping, then Stopped); ValidationException otherwise."""
    record = get_job(runtime, kind, name)
    spec = _KINDS[kind]
    with runtime.lock:
        status = record[spec["status"]]
        if status != "InProgress":
            raise validation_error(
                f"The request was rejected because the {spec['label']} is in status {status}."
            )
        record[spec["status"]] = "Stopping"
        record["LastModifiedTime"] = now()
    if kind == TRAINING:
        _secondary(runtime, record, "Stopping", "Stopping the training job")
    control(record).request_stop()


def _check_s3_uri(uri: Any, where: str) -> None:
    if not isinstance(uri, str) or not re.match(r"^(https|s3)://([^/]+)/?(.*)$", uri):
        raise validation_error(f"Invalid S3 URI {uri!r} in {where}.")


def _run_job(runtime: Runtime, record: dict[str, Any], body: Callable[[], None]) -> None:
    """Run ``body`` and translate its outcome into the job's terminal status."""
    ctl = control(record)
    try:
        _pre_run(runtime, record)
        body()
    except JobStopped as stop:
        _finish(
            runtime,
            record,
            "Stopped",
            secondary=stop.secondary,
            secondary_message=stop.message,
            failure=stop.message if stop.secondary == "MaxRuntimeExceeded" else None,
        )
    except JobFailed as failed:
        _finish(runtime, record, "Failed", failure=failed.reason, exit_message=failed.exit_message)
    except s3io.S3TransferError as err:
        _finish(runtime, record, "Failed", failure=f"ClientError: {err}")
    except BotoClientError as err:  # e.g. an output bucket that does not exist
        _finish(runtime, record, "Failed", failure=f"ClientError: {err}")
    except Exception as err:
        log.exception("%s %s crashed", ctl.kind, ctl.name)
        _finish(
            runtime, record, "Failed", failure=f"InternalServerError: {type(err).__name__}: {err}"
        )


# --- processing jobs ---------------------------------------------------------------------------
def _validate_processing(request: dict[str, Any]) -> None:
    validate_request("CreateProcessingJob", request)
    validate_name(request["ProcessingJobName"], "ProcessingJobName")
    app = request["AppSpecification"]
    if not app.get("ContainerEntrypoint"):
        raise validation_error(
            "The local SageMaker runtime needs AppSpecification.ContainerEntrypoint "
            "(it has no images whose default entrypoint it could run)."
        )
    names = set()
    for item in request.get("ProcessingInputs", []):
        if item["InputName"] in names:
            raise validation_error(f"Duplicate InputName {item['InputName']} in ProcessingInputs.")
        names.add(item["InputName"])
        if "DatasetDefinition" in item or "S3Input" not in item:
            raise validation_error(
                f"Input {item['InputName']}: the local runtime supports S3Input only."
            )
        s3 = item["S3Input"]
        _check_s3_uri(s3["S3Uri"], f"input {item['InputName']}")
        if not str(s3.get("LocalPath", "")).startswith(_PROCESSING_PREFIX):
            raise validation_error(
                f"Input {item['InputName']}: LocalPath must begin with {_PROCESSING_PREFIX}."
            )
        if s3.get("S3InputMode", "File") != "File":
            raise validation_error("The local runtime supports S3InputMode File only.")
        if s3.get("S3CompressionType", "None") != "None":
            raise validation_error("The local runtime supports S3CompressionType None only.")
    names = set()
    for item in (request.get("ProcessingOutputConfig") or {}).get("Outputs", []):
        if item["OutputName"] in names:
            raise validation_error(f"Duplicate OutputName {item['OutputName']} in Outputs.")
        names.add(item["OutputName"])
        if "S3Output" not in item:
            raise validation_error(
                f"Output {item['OutputName']}: the local runtime supports S3Output only."
            )
        _check_s3_uri(item["S3Output"]["S3Uri"], f"output {item['OutputName']}")
        if not item["S3Output"]["LocalPath"].startswith(_PROCESSING_PREFIX):
            raise validation_error(
                f"Output {item['OutputName']}: LocalPath must begin with {_PROCESSING_PREFIX}."
            )
    count = request["ProcessingResources"]["ClusterConfig"].get("InstanceCount", 1)
    if not 1 <= count <= 100:
        raise validation_error("ProcessingResources.ClusterConfig.InstanceCount must be 1..100.")


@action("CreateProcessingJob")
def create_processing_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Validate, register and start a processing job."""
    _validate_processing(request)
    name = request["ProcessingJobName"]
    arn = runtime.arn("processing-job", name)
    created = now()
    inputs = copy.deepcopy(request.get("ProcessingInputs", []))
    for item in inputs:
        item.setdefault("AppManaged", False)
        s3 = item["S3Input"]
        s3.setdefault("S3InputMode", "File")
        s3.setdefault("S3DataDistributionType", "FullyReplicated")
        s3.setdefault("S3CompressionType", "None")
    record: dict[str, Any] = {
        "ProcessingInputs": inputs,
        "ProcessingJobName": name,
        "ProcessingResources": copy.deepcopy(request["ProcessingResources"]),
        "AppSpecification": copy.deepcopy(request["AppSpecification"]),
        "RoleArn": request["RoleArn"],
        "ProcessingJobArn": arn,
        "ProcessingJobStatus": "InProgress",
        "CreationTime": created,
        "LastModifiedTime": created,
        "_control": JobControl(PROCESSING, name, timings={"submitted": time.time()}),
        "_request": copy.deepcopy(request),
    }
    for optional in (
        "ProcessingOutputConfig",
        "StoppingCondition",
        "Environment",
        "NetworkConfig",
        "ExperimentConfig",
    ):
        if optional in request:
            record[optional] = copy.deepcopy(request[optional])
    for output in (record.get("ProcessingOutputConfig") or {}).get("Outputs", []):
        output.setdefault("AppManaged", False)
    _register(runtime, PROCESSING, record)
    tags.set_tags(runtime, arn, request.get("Tags"))
    runtime.run_async(
        name, lambda: _run_job(runtime, record, lambda: _processing_body(runtime, record))
    )
    return {"ProcessingJobArn": arn}


def _processing_body(runtime: Runtime, record: dict[str, Any]) -> None:
    ctl = control(record)
    s3 = runtime.client("s3")
    cluster = record["ProcessingResources"]["ClusterConfig"]
    count = int(cluster.get("InstanceCount", 1))
    python = _image_python(record["AppSpecification"]["ImageUri"])
    job_dir = _job_dir(runtime, ctl.name)
    resolved = {
        item["InputName"]: s3io.resolve_objects(
            s3, item["S3Input"]["S3Uri"], item["S3Input"]["S3DataType"]
        )
        for item in record["ProcessingInputs"]
    }
    roots = [job_dir if count == 1 else job_dir / f"instance-{i + 1}" for i in range(count)]
    results: list[ProcessResult | BaseException | None] = [None] * count

    def instance(index: int) -> None:
        try:
            results[index] = _processing_instance(
                runtime, record, s3, resolved, roots[index], (index, count), python
            )
        except BaseException as err:
            results[index] = err

    threads = [threading.Thread(target=instance, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
    if ctl.stop.is_set() or runtime.stopping.is_set():
        raise JobStopped()
    for index, outcome in enumerate(results):
        assert isinstance(outcome, ProcessResult)
        if outcome.timed_out:
            raise JobStopped(
                "MaxRuntimeExceeded",
                f"MaxRuntimeExceeded: the job ran longer than MaxRuntimeInSeconds "
                f"({_max_runtime(record):g} s)",
            )
        if not outcome.succeeded:
            reason = _algorithm_error(roots[index], outcome, ("message", "failure"))
            if count > 1:
                reason = reason.replace(
                    "AlgorithmError: ", f"AlgorithmError: (algo-{index + 1}) ", 1
                )
            raise JobFailed(reason, _exit_message(roots[index]))
    _upload_processing_outputs(s3, record, roots)
    _finish(runtime, record, "Completed", exit_message=_exit_message(roots[0]))


def _processing_instance(
    runtime: Runtime,
    record: dict[str, Any],
    s3: Any,
    resolved: dict[str, list[s3io.S3Object]],
    root: Path,
    instance: tuple[int, int],
    python: Path,
) -> ProcessResult:
    ctl = control(record)
    index, count = instance
    hosts = [f"algo-{i + 1}" for i in range(count)]
    cluster = record["ProcessingResources"]["ClusterConfig"]
    config_dir = opt_ml(root) / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (opt_ml(root) / "output").mkdir(parents=True, exist_ok=True)
    job_config = {**record["_request"], "ProcessingJobArn": record["ProcessingJobArn"]}
    job_config.pop("Tags", None)
    (config_dir / "processingjobconfig.json").write_text(json.dumps(job_config, indent=2))
    resource_config = {
        "current_host": hosts[index],
        "current_instance_type": cluster.get("InstanceType", "local"),
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": cluster.get("InstanceType", "local"),
                "hosts": hosts,
            }
        ],
        "network_interface_name": "eth0",
    }
    (config_dir / "resourceconfig.json").write_text(json.dumps(resource_config, indent=2))
    for item in (record.get("ProcessingOutputConfig") or {}).get("Outputs", []):
        local_path(item["S3Output"]["LocalPath"], root).mkdir(parents=True, exist_ok=True)
    with runtime.container_slot():
        if ctl.stop.is_set() or runtime.stopping.is_set():
            return ProcessResult(exit_code=None, stopped=True)
        with runtime.lock:
            record.setdefault("ProcessingStartTime", now())
        started = time.time()
        for item in record["ProcessingInputs"]:
            s3_input = item["S3Input"]
            share = s3io.shard(
                resolved[item["InputName"]], s3_input["S3DataDistributionType"], index, count
            )
            s3io.download(s3, share, local_path(s3_input["LocalPath"], root))
        app = record["AppSpecification"]
        argv = command(
            list(app["ContainerEntrypoint"]) + list(app.get("ContainerArguments", [])),
            root,
            python,
        )
        env = _script_env(runtime, root, record.get("Environment", {}), python)
        argv, env = isolation.isolate(record, argv, env)
        return _run_process(
            runtime, record, argv, env, root, index + 1, _remaining(record, started)
        )


def _upload_processing_outputs(s3: Any, record: dict[str, Any], roots: list[Path]) -> None:
    """Upload each output of every instance to its S3 prefix.

    With several instances all of them upload to the same prefix, as on SageMaker. Where two
    instances wrote the same relative path with different content, SageMaker would let the last
    upload win silently; the local runtime fails the job instead, naming the file."""
    for item in (record.get("ProcessingOutputConfig") or {}).get("Outputs", []):
        out = item["S3Output"]
        merged: dict[str, Path] = {}
        owner: dict[str, int] = {}
        for index, root in enumerate(roots):
            for rel, path in s3io.local_files(local_path(out["LocalPath"], root)).items():
                if rel in merged and not filecmp.cmp(merged[rel], path, shallow=False):
                    raise JobFailed(
                        f"ClientError: output {item['OutputName']}: instances algo-{owner[rel] + 1} "
                        f"and algo-{index + 1} both wrote {rel} with different content; on "
                        "SageMaker one would silently overwrite the other in S3. Write "
                        "instance-specific file names (current_host in "
                        "/opt/ml/config/resourceconfig.json)."
                    )
                merged.setdefault(rel, path)
                owner.setdefault(rel, index)
        if merged:
            s3io.upload_files(s3, merged, out["S3Uri"])


@action("DescribeProcessingJob")
def describe_processing_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """The job as SageMaker describes it."""
    validate_request("DescribeProcessingJob", request)
    return public(runtime, get_job(runtime, PROCESSING, request["ProcessingJobName"]))


@action("ListProcessingJobs")
def list_processing_jobs(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Job summaries with NameContains/StatusEquals/time filters, sorting and pagination."""
    validate_request("ListProcessingJobs", request)
    fields = (
        "ProcessingJobName",
        "ProcessingJobArn",
        "CreationTime",
        "ProcessingEndTime",
        "LastModifiedTime",
        "ProcessingJobStatus",
        "FailureReason",
        "ExitMessage",
    )
    page, token = _listing(
        runtime, PROCESSING, request, lambda r: {f: r[f] for f in fields if f in r}
    )
    return {"ProcessingJobSummaries": page, **({"NextToken": token} if token else {})}


@action("StopProcessingJob")
def stop_processing_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Stopping -> Stopped: the script gets SIGTERM (SIGKILL after a grace period)."""
    validate_request("StopProcessingJob", request)
    stop_job(runtime, PROCESSING, request["ProcessingJobName"])
    return {}


# --- training jobs -----------------------------------------------------------------------------
_SECONDARY_MESSAGES = {
    "Starting": "Starting the training job",
    "Downloading": "Downloading input data",
    "Training": "Training in progress.",
    "Uploading": "Uploading generated training model",
    "Completed": "Training job completed",
    "Failed": "Training job failed",
    "Stopping": "Stopping the training job",
    "Stopped": "Training job stopped",
    "MaxRuntimeExceeded": "Training job exceeded MaxRuntimeInSeconds and was stopped",
}


def _secondary(
    runtime: Runtime, record: dict[str, Any], status: str, message: str | None = None
) -> None:
    stamp = now()
    with runtime.lock:
        transitions = record.setdefault("SecondaryStatusTransitions", [])
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1]["EndTime"] = stamp
        entry = {
            "Status": status,
            "StartTime": stamp,
            "StatusMessage": message or _SECONDARY_MESSAGES.get(status, status),
        }
        if status in {"Completed", "Failed", "Stopped", "MaxRuntimeExceeded"}:
            entry["EndTime"] = stamp
        transitions.append(entry)
        record["SecondaryStatus"] = status
        record["LastModifiedTime"] = stamp


def _training_finished(
    runtime: Runtime, record: dict[str, Any], status: str, secondary: str, message: str | None
) -> None:
    ctl = control(record)
    with runtime.lock:
        start = record.get("TrainingStartTime")
        end = record.get("TrainingEndTime")
        if start is None:  # never started (injected failure, stop during the delay)
            record.pop("TrainingEndTime", None)
        elif end is not None:
            seconds = max(1, round((end - start).total_seconds()))
            record["TrainingTimeInSeconds"] = seconds
            record["BillableTimeInSeconds"] = seconds
        if ctl.metrics:
            order = [
                m["Name"] for m in record["AlgorithmSpecification"].get("MetricDefinitions", [])
            ]
            record["FinalMetricDataList"] = [
                {
                    "MetricName": name,
                    "Value": ctl.metrics[name][0],
                    "Timestamp": datetime.fromtimestamp(ctl.metrics[name][1], now().tzinfo),
                }
                for name in order
                if name in ctl.metrics
            ]
    if status == "Failed":
        message = message or record.get("FailureReason")
    _secondary(runtime, record, secondary, _truncate(message) if message else None)


def validate_training_request(
    request: dict[str, Any], operation: str = "CreateTrainingJob"
) -> None:
    """Checks of a CreateTrainingJob request beyond botocore's shape (shared with tuning)."""
    if operation:
        validate_request(operation, request)
        validate_name(request["TrainingJobName"], "TrainingJobName")
    algo = request.get("AlgorithmSpecification") or {}
    if not algo:
        raise validation_error("AlgorithmSpecification is required.")
    if algo.get("AlgorithmName") and not algo.get("TrainingImage"):
        raise validation_error(
            "The local runtime runs script-mode training images only (AlgorithmName "
            f"{algo['AlgorithmName']} is not supported); give TrainingImage."
        )
    if algo.get("TrainingInputMode", "File") == "Pipe":
        raise validation_error(
            "The local runtime supports TrainingInputMode File (and FastFile as File)."
        )
    for definition in algo.get("MetricDefinitions", []):
        try:
            re.compile(definition["Regex"])
        except re.error as err:
            raise validation_error(
                f"Metric definition {definition['Name']} has an invalid regex: {err}"
            ) from err
    channels = set()
    for channel in request.get("InputDataConfig", []):
        if channel["ChannelName"] in channels:
            raise validation_error(f"Duplicate ChannelName {channel['ChannelName']}.")
        channels.add(channel["ChannelName"])
        source = channel["DataSource"].get("S3DataSource")
        if not source:
            raise validation_error(
                f"Channel {channel['ChannelName']}: the local runtime supports S3DataSource only."
            )
        _check_s3_uri(source["S3Uri"], f"channel {channel['ChannelName']}")
        if channel.get("InputMode", algo.get("TrainingInputMode", "File")) == "Pipe":
            raise validation_error("The local runtime supports channel InputMode File only.")
        if channel.get("CompressionType", "None") != "None":
            raise validation_error("The local runtime supports channel CompressionType None only.")
    _check_s3_uri(request["OutputDataConfig"]["S3OutputPath"], "OutputDataConfig.S3OutputPath")
    resources = request.get("ResourceConfig") or {}
    if resources.get("InstanceGroups"):
        raise validation_error("The local runtime does not support ResourceConfig.InstanceGroups.")
    if int(resources.get("InstanceCount", 1)) != 1:
        raise validation_error(
            "The local runtime runs training on one instance: ResourceConfig.InstanceCount must be 1."
        )
    hps = request.get("HyperParameters") or {}
    if len(hps) > 100:
        raise validation_error("At most 100 hyperparameters are allowed.")
    if not algo.get("ContainerEntrypoint") and not (
        "sagemaker_program" in hps and "sagemaker_submit_directory" in hps
    ):
        raise validation_error(
            "The local runtime runs training the way the framework containers do: give the "
            "sagemaker_program and sagemaker_submit_directory hyperparameters, or "
            "AlgorithmSpecification.ContainerEntrypoint."
        )


@action("CreateTrainingJob")
def create_training_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Validate, register and start a training job."""
    validate_training_request(request)
    record = start_training_job(runtime, request)
    return {"TrainingJobArn": record["TrainingJobArn"]}


def start_training_job(
    runtime: Runtime,
    request: dict[str, Any],
    tuning_job_arn: str | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Register and start a (validated) training job; returns its record (used by tuning,
    which passes ``on_done``, called with the record once the job is terminal)."""
    name = request["TrainingJobName"]
    arn = runtime.arn("training-job", name)
    created = now()
    output_path = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    algo = copy.deepcopy(request["AlgorithmSpecification"])
    algo.setdefault("TrainingInputMode", "File")
    algo.setdefault("EnableSageMakerMetricsTimeSeries", False)
    channels = copy.deepcopy(request.get("InputDataConfig", []))
    for channel in channels:
        channel["DataSource"]["S3DataSource"].setdefault(
            "S3DataDistributionType", "FullyReplicated"
        )
        channel.setdefault("CompressionType", "None")
        channel.setdefault("RecordWrapperType", "None")
    stopping = copy.deepcopy(request.get("StoppingCondition") or {})
    stopping.setdefault("MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME)
    record: dict[str, Any] = {
        "TrainingJobName": name,
        "TrainingJobArn": arn,
        "ModelArtifacts": {"S3ModelArtifacts": f"{output_path}/{name}/output/model.tar.gz"},
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Starting",
        "HyperParameters": dict(request.get("HyperParameters") or {}),
        "AlgorithmSpecification": algo,
        "RoleArn": request["RoleArn"],
        "InputDataConfig": channels,
        "OutputDataConfig": copy.deepcopy(request["OutputDataConfig"]),
        "ResourceConfig": copy.deepcopy(request.get("ResourceConfig") or {"InstanceCount": 1}),
        "StoppingCondition": stopping,
        "CreationTime": created,
        "LastModifiedTime": created,
        "SecondaryStatusTransitions": [],
        "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation", False)),
        "EnableInterContainerTrafficEncryption": bool(
            request.get("EnableInterContainerTrafficEncryption", False)
        ),
        "EnableManagedSpotTraining": bool(request.get("EnableManagedSpotTraining", False)),
        "_control": JobControl(
            TRAINING, name, timings={"submitted": time.time()}, on_done=[on_done] if on_done else []
        ),
    }
    record["OutputDataConfig"].setdefault("CompressionType", "GZIP")
    if tuning_job_arn:
        record["TuningJobArn"] = tuning_job_arn
    for optional in (
        "Environment",
        "VpcConfig",
        "CheckpointConfig",
        "ExperimentConfig",
        "RetryStrategy",
    ):
        if optional in request:
            record[optional] = copy.deepcopy(request[optional])
    _register(runtime, TRAINING, record)
    _secondary(runtime, record, "Starting", "Launching requested ML instances")
    tags.set_tags(runtime, arn, request.get("Tags"))
    runtime.run_async(
        name, lambda: _run_job(runtime, record, lambda: _training_body(runtime, record))
    )
    return record


def _metric_parser(record: dict[str, Any]) -> Callable[[str, float], None] | None:
    ctl = control(record)
    definitions = [
        (d["Name"], re.compile(d["Regex"]))
        for d in record["AlgorithmSpecification"].get("MetricDefinitions", [])
    ]
    if not definitions:
        return None

    def on_line(line: str, stamp: float) -> None:
        for name, regex in definitions:
            match = regex.search(line)
            if not match:
                continue
            text = match.group(1) if regex.groups else match.group(0)
            try:
                value = float(text)
            except (TypeError, ValueError):
                continue
            with ctl.lock:
                ctl.metrics[name] = (value, stamp)

    return on_line


def _unquote(value: str) -> str:
    """Hyperparameter values may be JSON-encoded (the SageMaker SDK writes ``"\\"train.py\\""``)."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def _training_body(runtime: Runtime, record: dict[str, Any]) -> None:
    ctl = control(record)
    s3 = runtime.client("s3")
    python = _image_python(record["AlgorithmSpecification"].get("TrainingImage", ""))
    root = _job_dir(runtime, ctl.name)
    base = opt_ml(root)
    with runtime.container_slot():
        if ctl.stop.is_set() or runtime.stopping.is_set():
            raise JobStopped()
        started = time.time()
        with runtime.lock:
            record["TrainingStartTime"] = now()
        _secondary(runtime, record, "Downloading", "Downloading input data")
        for channel in record["InputDataConfig"]:
            source = channel["DataSource"]["S3DataSource"]
            objects = s3io.resolve_objects(s3, source["S3Uri"], source["S3DataType"])
            s3io.download(s3, objects, base / "input" / "data" / channel["ChannelName"])
        code_dir = None
        submit = _unquote(record["HyperParameters"].get("sagemaker_submit_directory", ""))
        if submit.startswith("/opt/ml/"):
            # A tarball in a channel (the ``code`` channel of network isolation): the toolkit
            # unpacks it, as in the container.
            code_dir = local_path(submit, root)
        elif submit and not isolation.enabled(record):
            # An isolated job's toolkit gets the URI and fails to download it, as on SageMaker.
            if not submit.startswith(("s3://", "https://")):
                raise JobFailed(
                    f"ClientError: sagemaker_submit_directory {submit} is not an S3 URI of a "
                    "tar.gz archive"
                )
            code_dir = root / "sourcedir"
            s3io.download_and_extract_tar(s3, submit, code_dir)
        argv, env, cwd, layout = _prepare_training(runtime, record, root, code_dir, python)
        argv, env = isolation.isolate(record, argv, env)
        if ctl.stop.is_set():
            raise JobStopped()
        _secondary(
            runtime, record, "Training", "Training image download completed. Training in progress."
        )
        result = _run_process(
            runtime, record, argv, env, cwd, 1, _remaining(record, started), _metric_parser(record)
        )
    stopped = ctl.stop.is_set() or runtime.stopping.is_set() or result.stopped
    if result.succeeded or stopped or result.timed_out:
        _secondary(runtime, record, "Uploading", "Uploading generated training model")
        _upload_training_outputs(s3, record, base)
    if result.timed_out:
        raise JobStopped(
            "MaxRuntimeExceeded",
            f"MaxRuntimeExceeded: Training job exceeded MaxRuntimeInSeconds "
            f"({_max_runtime(record):g} s)",
        )
    if stopped:
        raise JobStopped()
    if not result.succeeded:
        if layout is None:
            raise JobFailed(_algorithm_error(root, result, ("failure",)))
        from local_stack import toolkits

        outcome = toolkits.collect_training_result(
            layout, result.exit_code or 1, "\n".join(result.output_tail), result.timed_out
        )
        message = _with_error_message(outcome.failure_message or "", result.stderr_tail)
        raise JobFailed(_truncate(f"AlgorithmError: {message}"))
    _finish(runtime, record, "Completed")


_TOOLKIT_LOG = "sagemaker-training-toolkit"


def _with_error_message(failure: str, stderr_tail: list[str]) -> str:
    """Fill the toolkit's empty ``ErrorMessage ""`` with the script's last stderr lines, as
    the framework containers report it (they run the script with ``capture_error``)."""
    if 'ErrorMessage ""' not in failure:
        return failure
    lines: list[str] = []
    skip = 0
    for line in stderr_tail:
        if "Invoking script with the following command" in line:
            lines, skip = [], 1  # the script's own output starts after the command line
            continue
        if skip and line.strip():
            skip -= 1
            continue
        if "Reporting training FAILURE" in line:
            break
        if _TOOLKIT_LOG not in line and line.strip():
            lines.append(line.rstrip())
    if not lines:
        return failure
    tail = "\n".join(lines[-10:]).replace('"', "'")
    return failure.replace('ErrorMessage ""', f'ErrorMessage "{tail}"', 1)


def _channel_config(record: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        c["ChannelName"]: {
            "TrainingInputMode": "File",
            "S3DistributionType": c["DataSource"]["S3DataSource"]["S3DataDistributionType"],
            "RecordWrapperType": c.get("RecordWrapperType", "None"),
            **({"ContentType": c["ContentType"]} if "ContentType" in c else {}),
        }
        for c in record["InputDataConfig"]
    }


def _prepare_training(
    runtime: Runtime, record: dict[str, Any], root: Path, code_dir: Path | None, python: Path
) -> tuple[list[str], dict[str, str], Path, Any]:
    """Lay out ``/opt/ml`` and build the container's command: the ``sagemaker-training``
    toolkit (script mode, as the scikit-learn image runs it, via ``local_stack.toolkits``) or
    ``AlgorithmSpecification.ContainerEntrypoint``. Returns (argv, env, cwd, toolkit layout)."""
    algo = record["AlgorithmSpecification"]
    base = opt_ml(root)
    extra = {
        "AWS_ENDPOINT_URL": runtime.endpoint_url,
        "S3_ENDPOINT_URL": runtime.endpoint_url,
        "AWS_ACCESS_KEY_ID": EXECUTION_ROLE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": runtime.region,
        "AWS_REGION": runtime.region,
        "TRAINING_JOB_ARN": record["TrainingJobArn"],
    }
    extra.update(
        {k: rewrite_paths(str(v), root) for k, v in (record.get("Environment") or {}).items()}
    )
    instance_type = record["ResourceConfig"].get("InstanceType", "local")
    if algo.get("ContainerEntrypoint"):
        _write_training_config(record, base, instance_type)
        if code_dir is not None and code_dir.is_dir():
            shutil.copytree(code_dir, base / "code", dirs_exist_ok=True)
        env = _script_env(runtime, root, {}, python)
        env.update(extra)
        env["TRAINING_JOB_NAME"] = record["TrainingJobName"]
        argv = command(
            list(algo["ContainerEntrypoint"]) + list(algo.get("ContainerArguments", [])),
            root,
            python,
        )
        return argv, env, base, None

    from local_stack import toolkits

    channels = {
        c["ChannelName"]: base / "input" / "data" / c["ChannelName"]
        for c in record["InputDataConfig"]
    }
    try:
        layout = toolkits.prepare_training_dir(
            base,
            str(code_dir) if code_dir is not None else None,
            None,
            record["HyperParameters"],
            channels,
            job_name=record["TrainingJobName"],
            channel_config=_channel_config(record),
            instance_type=instance_type,
        )
    except (ValueError, OSError) as err:
        raise JobFailed(f"ClientError: {err}") from err
    env = toolkits.training_environment(
        layout, extra, record["TrainingJobName"], image_path_env(dict(os.environ), python)
    )
    return toolkits.training_command(python), env, layout.base_dir, layout


def _write_training_config(record: dict[str, Any], base: Path, instance_type: str) -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    for sub in ("model", "output/data", "code"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    hps = record["HyperParameters"]
    (config / "hyperparameters.json").write_text(json.dumps(hps, indent=2))
    (config / "inputdataconfig.json").write_text(json.dumps(_channel_config(record), indent=2))
    # "localhost", not "algo-1": the toolkit resolves every host name before it starts.
    resource = {
        "current_host": "localhost",
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": ["localhost"],
        "instance_groups": [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": instance_type,
                "hosts": ["localhost"],
            }
        ],
        "network_interface_name": "eth0",
    }
    (config / "resourceconfig.json").write_text(json.dumps(resource, indent=2))


def _upload_training_outputs(s3: Any, record: dict[str, Any], base: Path) -> None:
    from local_stack import toolkits

    output_path = record["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    prefix = f"{output_path}/{record['TrainingJobName']}/output"
    staging = base.parent.parent / "artifacts"
    model = toolkits.make_model_tarball(base / "model", staging / "model.tar.gz")
    s3io.upload_file(s3, model, f"{prefix}/model.tar.gz")
    if s3io.local_files(base / "output" / "data"):
        archive = toolkits.make_model_tarball(base / "output" / "data", staging / "output.tar.gz")
        s3io.upload_file(s3, archive, f"{prefix}/output.tar.gz")


@action("DescribeTrainingJob")
def describe_training_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """The job as SageMaker describes it (metrics appear in FinalMetricDataList at the end)."""
    validate_request("DescribeTrainingJob", request)
    return public(runtime, get_job(runtime, TRAINING, request["TrainingJobName"]))


def training_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A ``TrainingJobSummary``."""
    fields = (
        "TrainingJobName",
        "TrainingJobArn",
        "CreationTime",
        "TrainingEndTime",
        "LastModifiedTime",
        "TrainingJobStatus",
        "SecondaryStatus",
    )
    return {f: record[f] for f in fields if f in record}


@action("ListTrainingJobs")
def list_training_jobs(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Job summaries with NameContains/StatusEquals/time filters, sorting and pagination."""
    validate_request("ListTrainingJobs", request)
    page, token = _listing(runtime, TRAINING, request, training_summary)
    return {"TrainingJobSummaries": page, **({"NextToken": token} if token else {})}


@action("StopTrainingJob")
def stop_training_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """Stopping -> Stopped; the model saved so far is still uploaded, as SageMaker does."""
    validate_request("StopTrainingJob", request)
    stop_job(runtime, TRAINING, request["TrainingJobName"])
    return {}


__all__ = [
    "PROCESSING",
    "TERMINAL",
    "TRAINING",
    "JobControl",
    "SageMakerError",
    "control",
    "filter_and_page",
    "get_job",
    "job_timings",
    "public",
    "start_training_job",
    "stop_job",
    "training_summary",
    "validate_training_request",
]
