"""Data capture of the local endpoints: requests and responses as SageMaker's JSON lines in S3.

With an endpoint config's ``DataCaptureConfig.EnableCapture``, the runtime samples
``InitialSamplingPercentage`` percent of the requests and writes, like SageMaker
(https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture-endpoint.html,
"View Captured Data"), one JSON object per line::

    {"captureData": {"endpointInput":  {"observedContentType": "text/csv", "mode": "INPUT",
                                        "data": "...", "encoding": "CSV"},
                     "endpointOutput": {"observedContentType": "text/csv", "mode": "OUTPUT",
                                        "data": "...", "encoding": "CSV"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-12-06T19:30:00Z"},
     "eventVersion": "0"}

into ``<DestinationS3Uri>/<EndpointName>/<VariantName>/yyyy/mm/dd/hh/<mm-ss-mmm>-<uuid>.jsonl``.
``CaptureOptions`` pick the input, the output or both; a content type listed in
``CaptureContentTypeHeader.CsvContentTypes`` / ``JsonContentTypes`` is written as text with
encoding ``CSV`` / ``JSON``, anything else base64 (``BASE64``, SageMaker's default). An
``InferenceId`` of the request lands in ``eventMetadata.inferenceId``. Files are written once per
metrics period (60 s times the runtime's ``time_scale``), signed as the execution role (SageMaker
writes capture with the endpoint's role on AWS too).
"""

from __future__ import annotations

import base64
import json
import random
import threading
import uuid
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import s3io
from local_stack.sagemaker_runtime.endpoint_metrics import PERIOD_SECONDS

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

_writers: weakref.WeakKeyDictionary[Runtime, CaptureWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def _modes(capture: dict[str, Any]) -> set[str]:
    modes: set[str] = set()
    for option in capture.get("CaptureOptions") or [{"CaptureMode": "InputAndOutput"}]:
        mode = option.get("CaptureMode", "InputAndOutput")
        modes |= {"Input", "Output"} if mode == "InputAndOutput" else {mode}
    return modes


def _payload(capture: dict[str, Any], mode: str, content_type: str, body: bytes) -> dict[str, Any]:
    header = capture.get("CaptureContentTypeHeader") or {}
    base_type = content_type.split(";", 1)[0].strip()
    if base_type in header.get("CsvContentTypes", []):
        encoding, data = "CSV", body.decode("utf-8", errors="replace")
    elif base_type in header.get("JsonContentTypes", []):
        encoding, data = "JSON", body.decode("utf-8", errors="replace")
    else:
        encoding, data = "BASE64", base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def capture_record(
    capture: dict[str, Any],
    request: tuple[str, bytes],
    response: tuple[str, bytes],
    inference_id: str | None = None,
) -> dict[str, Any]:
    """One captured event; ``request`` and ``response`` are (content type, body)."""
    modes = _modes(capture)
    data: dict[str, Any] = {}
    if "Input" in modes:
        data["endpointInput"] = _payload(capture, "INPUT", *request)
    if "Output" in modes:
        data["endpointOutput"] = _payload(capture, "OUTPUT", *response)
    metadata = {
        "eventId": str(uuid.uuid4()),
        "inferenceTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    }
    if inference_id:
        metadata["inferenceId"] = inference_id
    return {"captureData": data, "eventMetadata": metadata, "eventVersion": "0"}


class CaptureWriter:
    """Buffers a runtime's captured events and writes them to S3 once per period."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._buffers: dict[tuple[str, str, str], list[str]] = {}
        runtime.every("data-capture", PERIOD_SECONDS * runtime.time_scale, self.flush)

    def add(
        self,
        capture: dict[str, Any] | None,
        where: tuple[str, str],
        request: tuple[str, bytes],
        response: tuple[str, bytes],
        inference_id: str | None = None,
    ) -> bool:
        """Sample and buffer one request of endpoint/variant ``where``; ``True`` if kept."""
        if not capture or not capture.get("EnableCapture", True):
            return False
        if random.uniform(0, 100) >= float(capture.get("InitialSamplingPercentage", 0)):
            return False
        line = json.dumps(capture_record(capture, request, response, inference_id))
        key = (capture["DestinationS3Uri"].rstrip("/"), *where)
        with self._lock:
            self._buffers.setdefault(key, []).append(line)
        return True

    def flush(self) -> None:
        """Write every buffered event (one object per endpoint variant)."""
        with self._lock:
            buffers, self._buffers = self._buffers, {}
        s3 = self.runtime.client("s3")
        stamp = datetime.now(UTC)
        for (destination, endpoint, variant), lines in buffers.items():
            bucket, prefix = s3io.parse_s3_uri(destination)
            name = f"{stamp:%M-%S}-{stamp.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            key = f"{prefix}/{endpoint}/{variant}/{stamp:%Y/%m/%d/%H}/{name}".lstrip("/")
            s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())


def writer_of(runtime: Runtime) -> CaptureWriter:
    """The runtime's capture writer (created, with its flusher, on first use)."""
    with _writers_lock:
        writer = _writers.get(runtime)
        if writer is None:
            writer = _writers[runtime] = CaptureWriter(runtime)
        return writer
