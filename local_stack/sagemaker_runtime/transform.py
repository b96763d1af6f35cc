"""Batch transform jobs of the local SageMaker runtime.

``CreateTransformJob`` / ``DescribeTransformJob`` / ``ListTransformJobs`` /
``StopTransformJob``. A job runs in a thread: ``InProgress`` -> ``Completed`` | ``Failed``
(with a ``FailureReason``) | ``Stopped``. It loads the model into model server processes
(``_serving.py``: the ``sagemaker-inference`` toolkit driving the model's ``inference.py``) and,
for every object under ``TransformInput.DataSource.S3DataSource.S3Uri``:

* splits it into records (``SplitType=Line``) or keeps it whole (``None``), after gunzip when
  ``CompressionType=Gzip``;
* applies ``DataProcessing.InputFilter`` per record (CSV rows are JSON arrays; see
  ``_jsonpath.py``);
* sends mini-batches (``BatchStrategy=MultiRecord``, up to ``MaxPayloadInMB``) or single
  records to the model with ``ContentType`` / ``TransformOutput.Accept``, up to
  ``MaxConcurrentTransforms`` requests at once (bounded by the machine's cores), retrying a
  failed request ``ModelClientConfig.InvocationsMaxRetries`` times;
* joins each output record to its input record (``JoinSource=Input``: CSV ``input,output``;
  JSON objects get ``SageMakerOutput``, other JSON values become
  ``{"SageMakerInput": ..., "SageMakerOutput": ...}``), applies ``OutputFilter``;
* writes ``<S3OutputPath>/<key relative to the input prefix>.out``, records separated by
  newlines with ``AssembleWith=Line``.

A request the model rejects fails the job with ``ClientError: ...`` carrying the model's
message. Faults armed for the job name (``runtime.faults``) fail or delay it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import gzip
import io
import json
import logging
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import _serving, s3io, tags
from local_stack.sagemaker_runtime._jsonpath import JsonPath, JsonPathError, compile_path
from local_stack.sagemaker_runtime.api import (
    action,
    in_use,
    now,
    validate_name,
    validate_request,
    validation_error,
)
from local_stack.sagemaker_runtime.registry import (
    filter_and_sort,
    get_model,
    page_response,
    public,
    serving_container,
)

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

TRANSFORM_JOBS = "TransformJob"
LOG_GROUP = "/aws/sagemaker/TransformJobs"
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_MAX_RETRIES = 3
DEFAULT_INVOCATION_TIMEOUT = 600
_REASON_LIMIT = 1024


class _JobFailed(Exception):
    """Ends the job as Failed; the message is the FailureReason."""


class _JobStopped(Exception):
    """Ends the job as Stopped."""


def _job_arn(runtime: Runtime, name: str) -> str:
    return runtime.arn("transform-job", name)


def _get_job(runtime: Runtime, name: str) -> dict[str, Any]:
    with runtime.lock:
        job = runtime.store(TRANSFORM_JOBS).get(name)
    if job is None:
        raise validation_error(f"Could not find requested job with name {name}")
    return job


# --- actions -----------------------------------------------------------------------------------
@action("CreateTransformJob")
def create_transform_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("CreateTransformJob", request)
    name = validate_name(request["TransformJobName"], "TransformJobName")
    get_model(runtime, request["ModelName"])
    _check_request(request)
    arn = _job_arn(runtime, name)
    created = now()
    job: dict[str, Any] = {
        "TransformJobName": name,
        "TransformJobArn": arn,
        "TransformJobStatus": "InProgress",
        "CreationTime": created,
        "LastModifiedTime": created,
        "_stop": threading.Event(),
        "_seq": time.monotonic_ns(),
    }
    for key in (
        "ModelName",
        "MaxConcurrentTransforms",
        "ModelClientConfig",
        "MaxPayloadInMB",
        "BatchStrategy",
        "Environment",
        "TransformInput",
        "TransformOutput",
        "DataCaptureConfig",
        "TransformResources",
        "DataProcessing",
        "ExperimentConfig",
    ):
        if key in request:
            job[key] = copy.deepcopy(request[key])
    with runtime.lock:
        store = runtime.store(TRANSFORM_JOBS)
        if name in store:
            raise in_use(
                "Job name must be unique within an AWS account and region, and a job with "
                f"this name already exists ({arn})"
            )
        store[name] = job
    tags.set_tags(runtime, arn, request.get("Tags"))
    runtime.run_async(name, lambda: _run(runtime, job))
    return {"TransformJobArn": arn}


def _check_request(request: dict[str, Any]) -> None:
    source = request["TransformInput"]["DataSource"].get("S3DataSource")
    if not source:
        raise validation_error("TransformInput.DataSource.S3DataSource is required.")
    if source.get("S3DataType", "S3Prefix") not in ("S3Prefix", "ManifestFile"):
        raise validation_error(
            f"S3DataType {source['S3DataType']} is not supported (S3Prefix, ManifestFile)."
        )
    transform_input = request["TransformInput"]
    split = transform_input.get("SplitType", "None")
    if split not in ("None", "Line"):
        raise validation_error(f"SplitType {split} is not supported by the local runtime.")
    if transform_input.get("CompressionType", "None") not in ("None", "Gzip"):
        raise validation_error("CompressionType must be None or Gzip.")
    if request.get("BatchStrategy", "MultiRecord") not in ("MultiRecord", "SingleRecord"):
        raise validation_error("BatchStrategy must be MultiRecord or SingleRecord.")
    if request["TransformOutput"].get("AssembleWith", "None") not in ("None", "Line"):
        raise validation_error("AssembleWith must be None or Line.")
    payload = request.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)
    if not 0 <= payload <= 100:
        raise validation_error("MaxPayloadInMB must be between 0 and 100.")
    processing = request.get("DataProcessing") or {}
    if processing.get("JoinSource", "None") not in ("None", "Input"):
        raise validation_error("JoinSource must be None or Input.")
    for field in ("InputFilter", "OutputFilter"):
        try:
            compile_path(processing.get(field, "$"))
        except JsonPathError as err:
            raise validation_error(f"DataProcessing.{field}: {err}") from err
    uses_processing = (
        processing.get("JoinSource") == "Input"
        or processing.get("InputFilter", "$") != "$"
        or processing.get("OutputFilter", "$") != "$"
    )
    if uses_processing and split != "Line" and _format(transform_input) == "csv":
        raise validation_error(
            "DataProcessing with text/csv input needs TransformInput.SplitType=Line."
        )


@action("DescribeTransformJob")
def describe_transform_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DescribeTransformJob", request)
    job = _get_job(runtime, request["TransformJobName"])
    with runtime.lock:
        answer = public(job)
    answer.pop("LastModifiedTime", None)  # not part of DescribeTransformJob's answer
    return answer


@action("ListTransformJobs")
def list_transform_jobs(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("ListTransformJobs", request)
    with runtime.lock:
        records = [dict(j) for j in runtime.store(TRANSFORM_JOBS).values()]
    items = filter_and_sort(
        records,
        request,
        "TransformJobName",
        "Descending",
        {"Name": "TransformJobName", "CreationTime": "_seq", "Status": "TransformJobStatus"},
        status_field="TransformJobStatus",
    )
    keys = (
        "TransformJobName",
        "TransformJobArn",
        "CreationTime",
        "TransformEndTime",
        "LastModifiedTime",
        "TransformJobStatus",
        "FailureReason",
    )
    summaries = [{k: r[k] for k in keys if k in r} for r in items]
    return page_response(summaries, request, "TransformJobSummaries")


@action("StopTransformJob")
def stop_transform_job(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("StopTransformJob", request)
    job = _get_job(runtime, request["TransformJobName"])
    with runtime.lock:
        status = job["TransformJobStatus"]
        if status == "InProgress":
            job["TransformJobStatus"] = "Stopping"
            job["LastModifiedTime"] = now()
            job["_stop"].set()
        elif status != "Stopping":
            raise validation_error(
                f"Transform job {job['TransformJobName']} is not in progress (status {status})."
            )
    return {}


# --- execution ---------------------------------------------------------------------------------
def _finish(runtime: Runtime, job: dict[str, Any], status: str, reason: str | None = None) -> None:
    with runtime.lock:
        job["TransformJobStatus"] = status
        finished = now()
        job["TransformEndTime"] = finished
        job["LastModifiedTime"] = finished
        job.setdefault("TransformStartTime", finished)
        if reason:
            job["FailureReason"] = reason[:_REASON_LIMIT]


def _check_stop(runtime: Runtime, job: dict[str, Any]) -> None:
    if job["_stop"].is_set() or runtime.stopping.is_set():
        raise _JobStopped()


def _run(runtime: Runtime, job: dict[str, Any]) -> None:
    name = job["TransformJobName"]
    try:
        deadline = time.monotonic() + runtime.faults.delay_for(name)
        while time.monotonic() < deadline:
            _check_stop(runtime, job)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        failure = runtime.faults.failure_for(name)
        if failure:
            raise _JobFailed(failure)
        _check_stop(runtime, job)
        with runtime.container_slot():
            with runtime.lock:
                job["TransformStartTime"] = now()
            _TransformRun(runtime, job).execute()
        _check_stop(runtime, job)
    except _JobStopped:
        _finish(runtime, job, "Stopped")
    except _JobFailed as err:
        _finish(runtime, job, "Failed", str(err))
    except Exception as err:
        log.exception("transform job %s failed", name)
        _finish(runtime, job, "Failed", f"InternalServerError: {type(err).__name__}: {err}")
    else:
        _finish(runtime, job, "Completed")


def _format(transform_input: dict[str, Any]) -> str:
    content_type = (transform_input.get("ContentType") or "").lower()
    if "csv" in content_type:
        return "csv"
    if "json" in content_type:
        return "json"
    return "text"


@dataclass
class _Record:
    raw: bytes  # the input record as read
    payload: bytes  # what the model gets (after InputFilter)


class _TransformRun:
    """One execution of a transform job."""

    def __init__(self, runtime: Runtime, job: dict[str, Any]) -> None:
        self.runtime = runtime
        self.job = job
        self.name = job["TransformJobName"]
        self.input = job["TransformInput"]
        self.output = job["TransformOutput"]
        self.format = _format(self.input)
        processing = job.get("DataProcessing") or {}
        self.input_filter: JsonPath = compile_path(processing.get("InputFilter", "$"))
        self.output_filter: JsonPath = compile_path(processing.get("OutputFilter", "$"))
        self.join = processing.get("JoinSource", "None") == "Input"
        self.split_lines = self.input.get("SplitType", "None") == "Line"
        self.single = job.get("BatchStrategy", "MultiRecord") == "SingleRecord"
        payload_mb = job.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)
        self.max_payload = payload_mb * 1024 * 1024 if payload_mb else None
        client_config = job.get("ModelClientConfig") or {}
        self.retries = int(client_config.get("InvocationsMaxRetries", DEFAULT_MAX_RETRIES))
        self.timeout = float(
            client_config.get("InvocationsTimeoutInSeconds", DEFAULT_INVOCATION_TIMEOUT)
        )
        self.accept = self.output.get("Accept")
        self.content_type = self.input.get("ContentType")
        self.assemble_lines = self.output.get("AssembleWith", "None") == "Line"
        self.per_record = self.join or not self.output_filter.is_identity
        self.s3 = runtime.client("s3")

    # --- driver ------------------------------------------------------------------------------
    def execute(self) -> None:
        try:
            container = serving_container(self.runtime, self.job["ModelName"])
        except Exception as err:
            raise _JobFailed(f"ClientError: {getattr(err, 'message', err)}") from err
        container["Environment"] = {
            **(container.get("Environment") or {}),
            **(self.job.get("Environment") or {}),
        }
        _serving.warm_up(container.get("Image", ""))
        source = self.input["DataSource"]["S3DataSource"]
        try:
            objects = s3io.resolve_objects(
                self.s3, source["S3Uri"], source.get("S3DataType", "S3Prefix")
            )
            model = _serving.prepare_model(self.runtime, container)
        except (s3io.S3TransferError, _serving.ServingError) as err:
            raise _JobFailed(f"ClientError: {err}") from err
        _check_stop(self.runtime, self.job)
        resources = self.job.get("TransformResources") or {}
        concurrency = max(1, int(self.job.get("MaxConcurrentTransforms") or 1))
        concurrency *= max(1, int(resources.get("InstanceCount", 1)))
        concurrency = min(concurrency, _serving.cpu_bound())
        servers = self._start_servers(model, concurrency)
        try:
            pool_servers: queue.Queue[_serving.ModelServer] = queue.Queue()
            for server in servers:
                pool_servers.put(server)
            with ThreadPoolExecutor(len(servers), thread_name_prefix=f"tf-{self.name}") as pool:
                for obj in objects:
                    _check_stop(self.runtime, self.job)
                    self._transform_object(obj, pool, pool_servers)
        finally:
            for server in servers:
                server.stop(drain_timeout=0)

    def _start_servers(self, model: _serving.PreparedModel, count: int) -> list[Any]:
        stamp = int(time.time())
        servers = [
            _serving.ModelServer(
                self.runtime,
                model,
                f"{self.name}-{index + 1}",
                LOG_GROUP,
                f"{self.name}/local-instance-{index + 1}-{stamp}",
            )
            for index in range(count)
        ]
        try:
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(lambda s: s.start(), servers))
        except _serving.ServingError as err:
            for server in servers:
                server.stop(drain_timeout=0)
            raise _JobFailed(f"ClientError: the model could not be loaded: {err}") from err
        return servers

    # --- one input object --------------------------------------------------------------------
    def _transform_object(
        self, obj: s3io.S3Object, pool: ThreadPoolExecutor, servers: queue.Queue[Any]
    ) -> None:
        uri = f"s3://{obj.bucket}/{obj.key}"
        try:
            data = self.s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
            if self.input.get("CompressionType") == "Gzip":
                data = gzip.decompress(data)
        except Exception as err:
            raise _JobFailed(f"ClientError: could not read {uri}: {err}") from err
        records = [self._record(raw, uri) for raw in self._split(data)]
        batches = self._batches(records, uri)

        def run(batch: list[_Record]) -> list[bytes]:
            _check_stop(self.runtime, self.job)
            server = servers.get()
            try:
                return self._invoke(server, batch, uri)
            finally:
                servers.put(server)

        outputs: list[list[bytes]] = list(pool.map(run, batches))
        body = self._assemble(batches, outputs, uri)
        self._upload(obj, body)

    def _split(self, data: bytes) -> list[bytes]:
        if not self.split_lines:
            return [data] if data.strip() else []
        lines = (line.rstrip(b"\r") for line in data.split(b"\n"))
        return [line for line in lines if line.strip()]

    def _record(self, raw: bytes, uri: str) -> _Record:
        if self.input_filter.is_identity:
            return _Record(raw, raw)
        try:
            if self.format == "csv":
                payload = _csv_line(self.input_filter.apply_row(_csv_fields(raw)))
            else:
                payload = _json_bytes(self.input_filter.apply(json.loads(raw)))
        except (JsonPathError, ValueError) as err:
            raise _JobFailed(
                f"ClientError: InputFilter could not be applied to a record of {uri}: {err}"
            ) from err
        return _Record(raw, payload)

    def _batches(self, records: list[_Record], uri: str) -> list[list[_Record]]:
        limit = self.max_payload
        for record in records:
            if limit is not None and len(record.payload) > limit:
                raise _JobFailed(
                    f"ClientError: a record of {uri} is larger than MaxPayloadInMB "
                    f"({self.job.get('MaxPayloadInMB', DEFAULT_MAX_PAYLOAD_MB)} MB)."
                )
        if self.single:
            return [[r] for r in records]
        batches: list[list[_Record]] = []
        current: list[_Record] = []
        size = 0
        for record in records:
            extra = len(record.payload) + (1 if current else 0)
            if current and limit is not None and size + extra > limit:
                batches.append(current)
                current, size = [], 0
                extra = len(record.payload)
            current.append(record)
            size += extra
        if current:
            batches.append(current)
        return batches

    def _invoke(self, server: Any, batch: list[_Record], uri: str) -> list[bytes]:
        body = b"\n".join(r.payload for r in batch)
        if self.split_lines and self.format == "csv":
            body += b"\n"
        attempts = self.retries + 1
        status, content_type, answer = 0, "", b""
        for attempt in range(attempts):
            _check_stop(self.runtime, self.job)
            try:
                with server.reserved():
                    status, content_type, answer = server.invoke(
                        body, self.content_type, self.accept, timeout=self.timeout
                    )
            except _serving.ServingError as err:
                if attempt + 1 == attempts:
                    raise _JobFailed(f"ClientError: {err}") from err
                continue
            if status == 200:
                break
        if status != 200:
            message = _model_message(answer)
            raise _JobFailed(
                f"ClientError: The model answered {status} to a request of {len(batch)} "
                f"record(s) from {uri}: {message}"
            )
        if not self.per_record:
            return [answer]
        return self._split_output(answer, content_type, len(batch), uri)

    def _split_output(self, answer: bytes, content_type: str, count: int, uri: str) -> list[bytes]:
        if count == 1:
            return [answer.rstrip(b"\r\n")]
        kind = (content_type or self.accept or "").lower()
        if "json" in kind and "jsonlines" not in kind and "x-ndjson" not in kind:
            with contextlib.suppress(ValueError):
                document = json.loads(answer)
                items = None
                if isinstance(document, list):
                    items = document
                elif isinstance(document, dict) and len(document) == 1:
                    (only,) = document.values()
                    items = only if isinstance(only, list) else None
                if items is not None and len(items) == count:
                    return [_json_bytes(item) for item in items]
        lines = [line.rstrip(b"\r") for line in answer.rstrip(b"\r\n").split(b"\n")]
        if len(lines) != count:
            raise _JobFailed(
                f"ClientError: the model returned {len(lines)} output record(s) for {count} "
                f"input record(s) of {uri}; they cannot be joined to the input records."
            )
        return lines

    # --- output ------------------------------------------------------------------------------
    def _assemble(
        self, batches: list[list[_Record]], outputs: list[list[bytes]], uri: str
    ) -> bytes:
        if not self.per_record:
            chunks = [out[0] for out in outputs]
            if self.assemble_lines:
                return b"".join(c if c.endswith(b"\n") else c + b"\n" for c in chunks if c)
            return b"".join(chunks)
        lines = []
        try:
            for batch, outs in zip(batches, outputs, strict=True):
                for record, out in zip(batch, outs, strict=True):
                    lines.append(self._joined(record, out))
        except (JsonPathError, ValueError) as err:
            raise _JobFailed(
                f"ClientError: OutputFilter could not be applied to a record of {uri}: {err}"
            ) from err
        return b"".join(line + b"\n" for line in lines)

    def _joined(self, record: _Record, output: bytes) -> bytes:
        if self.format == "csv" or self.format == "text":
            if not self.join:
                return _csv_line(self.output_filter.apply_row(_csv_fields(output)))
            if self.output_filter.is_identity:
                return record.raw + b"," + output
            row = _csv_fields(record.raw) + _csv_fields(output)
            return _csv_line(self.output_filter.apply_row(row))
        try:
            result: Any = json.loads(output)
        except ValueError:
            result = output.decode("utf-8", errors="replace")
        if self.join:
            source = json.loads(record.raw)
            if isinstance(source, dict):
                joined: Any = {**source, "SageMakerOutput": result}
            else:
                joined = {"SageMakerInput": source, "SageMakerOutput": result}
        else:
            joined = result
        return _json_bytes(self.output_filter.apply(joined))

    def _upload(self, obj: s3io.S3Object, body: bytes) -> None:
        bucket, prefix = s3io.parse_s3_uri(self.output["S3OutputPath"])
        _, input_prefix = s3io.parse_s3_uri(self.input["DataSource"]["S3DataSource"]["S3Uri"])
        if obj.key == input_prefix:
            relative = obj.key.rsplit("/", 1)[-1]
        else:
            base = input_prefix.rsplit("/", 1)[0] + "/" if "/" in input_prefix else ""
            relative = obj.key[len(base) :] if obj.key.startswith(base) else obj.relative_path
        key = f"{prefix.rstrip('/')}/{relative}.out" if prefix.strip("/") else f"{relative}.out"
        try:
            self.s3.put_object(Bucket=bucket, Key=key, Body=body)
        except Exception as err:
            raise _JobFailed(
                f"ClientError: could not write the output to s3://{bucket}/{key}: {err}"
            ) from err


# --- record helpers ----------------------------------------------------------------------------
# Bytes that make ``csv`` read or write a line differently from a plain split/join on commas.
_CSV_SPECIAL = re.compile(r'["\r\n\x00]')
_CSV_SPECIAL_BYTES = re.compile(rb'["\r\n\x00]')


def _csv_fields(raw: bytes) -> list[str]:
    """The cells of one CSV record. A quote-free line is split directly (a reader per record
    cost more than the model's predictions at sf1, ``bench/batch_transform_throughput.py``)."""
    if raw and not _CSV_SPECIAL_BYTES.search(raw):
        return raw.decode("utf-8").split(",")
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    except csv.Error as err:  # not a ValueError: the callers turn ValueErrors into ClientErrors
        raise ValueError(f"not a CSV record: {err}") from None
    if len(rows) != 1:
        raise ValueError("a CSV record must be exactly one line")
    return rows[0]


def _csv_line(fields: list[Any]) -> bytes:
    """One CSV record; cells that need no quoting are joined directly (see ``_csv_fields``)."""
    if len(fields) > 1 and all(type(f) is str for f in fields):
        line = ",".join(fields)
        if line.count(",") == len(fields) - 1 and not _CSV_SPECIAL.search(line):
            return line.encode("utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    writer.writerow(["" if f is None else f for f in fields])
    return buffer.getvalue().encode("utf-8")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def _model_message(answer: bytes) -> str:
    """The model's error message: the first non-empty line of its answer (the toolkit adds
    the traceback after it)."""
    text = answer.decode("utf-8", errors="replace").strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:600]
    return "(empty answer)"
