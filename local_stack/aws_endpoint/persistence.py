"""The local AWS endpoint's state on disk, so that a restart (or a crash) loses nothing.

Layout of ``<workdir>/state/``::

    meta.json                      moto version that wrote the pickles (checked on load)
    sagemaker.json                 the SageMaker runtime's stores (jobs, tuning jobs, models,
                                   model package groups and versions, endpoint configs,
                                   endpoints, transform jobs, tags)
    moto-s3.pickle, moto-logs.pickle, moto-cloudwatch.pickle
                                   moto's backends of those services (all accounts/regions)
    blobs/<sha256>                 the bytes of every S3 object (and multipart part), once

Design (why not something simpler or more general):

* **moto: pickle its backends, S3 bytes outside the pickle.** moto 5.2.5 keeps each service's
  state in ``moto.backends.get_backend(service)``, a ``{account: {region: backend}}`` dict of
  plain Python objects, and its S3 ``FakeKey`` already supports pickling (its bytes live in a
  ``SpooledTemporaryFile``; ``__getstate__`` reads them into the pickle). Pickling the backends
  keeps every detail moto has (versions, metadata, ACLs, multipart uploads, log streams and
  their sequence tokens, alarms) with no code per API. Only the bytes would make a snapshot
  cost grow with the data, so a pickler ``persistent_id`` hook replaces each ``FakeKey`` by its
  attributes plus the SHA-256 of its bytes, written once to ``blobs/`` (a ``FakeKey``'s bytes
  never change after construction; moto makes a new key for every write). Replaying requests
  through moto on start was the alternative: simpler to write, but the journal grows with every
  log line and every overwritten object, and replayed objects get new timestamps.
* **SageMaker: JSON of the runtime's stores.** Records are dicts of plain data plus a few
  private ``_`` entries holding live objects (threads' events, job control blocks, model server
  fleets); those are dropped and rebuilt on load (:func:`_rebuild`). The call recorder's log
  (``_Calls``) is deliberately not kept: it is one session's worth.
* **When:** a mutating request to S3 (any method but GET/HEAD) or a mutating SageMaker action
  (anything but ``Describe*``/``List*``/``Get*``/``Search``) saves that part *before* the
  response is sent, so whatever a client was told exists survives a SIGKILL. Everything else
  (job status changes made by the runtime's threads, CloudWatch Logs/metrics) is saved by a
  background thread within ``DEBOUNCE_SECONDS``. Each file is written to a temporary name and
  renamed over the old one (atomic on POSIX), so a kill never leaves a torn file; there is no
  ``fsync``: this survives a killed process, not a power cut.
* **Jobs that were running when the endpoint went away** (processing, training, tuning,
  transform jobs ``InProgress`` or ``Stopping``) are not resumed: on load they end ``Failed``
  with ``FailureReason: InternalServerError: ...``, which is what SageMaker reports when it
  loses a job on its side, and which the DAG's failure policy treats as transient (the task's
  retry starts a new job). Resuming would re-run a script whose first run may already have
  uploaded part of its outputs, which SageMaker never does. Endpoints that were serving are
  redeployed from their endpoint config: ``SystemUpdating`` until their model servers answer,
  then ``InService`` (SageMaker's own status for maintenance on its side).

The pickles are only ever read from the endpoint's own work folder (trusted local files).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import pickle
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import moto
from moto.backends import get_backend
from moto.s3.models import FakeKey

from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

MOTO_SERVICES = ("s3", "logs", "cloudwatch")
# The service name in a SigV4 credential scope -> moto's backend name.
SIGNING_TO_BACKEND = {"s3": "s3", "logs": "logs", "monitoring": "cloudwatch"}
DEBOUNCE_SECONDS = 0.5
_NOT_KEPT = frozenset({"_Calls"})  # api.CALLS: the call recorder's log is per session
_READ_ONLY_PREFIXES = ("Describe", "List", "Get", "Search")
_RUNNING = frozenset({"InProgress", "Stopping"})


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: readers (and a restart
    after a kill) see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def is_mutating_sagemaker_action(action: str) -> bool:
    """Whether a SageMaker action can change state (``Describe*``/``List*``/... cannot)."""
    return not action.startswith(_READ_ONLY_PREFIXES)


# --- moto ---------------------------------------------------------------------------------------
class _Pickler(pickle.Pickler):
    """Pickles moto backends with each S3 ``FakeKey``'s bytes replaced by a blob reference."""

    def __init__(self, file: io.BytesIO, blobs: Path) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._blobs = blobs

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not FakeKey:
            return None
        digest = obj.__dict__.get("_local_blob")
        if digest is None:
            value = obj.value
            digest = hashlib.sha256(value).hexdigest()
            blob = self._blobs / digest
            if not blob.exists():
                atomic_write(blob, value)
            obj.__dict__["_local_blob"] = digest  # the bytes of a FakeKey never change
        skip = ("_value_buffer", "lock", "_local_blob")
        return ("FakeKey", digest, {k: v for k, v in obj.__dict__.items() if k not in skip})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, blobs: Path, seen: set[str]) -> None:
        super().__init__(file)
        self._blobs = blobs
        self._seen = seen

    def persistent_load(self, pid: Any) -> Any:
        kind, digest, state = pid
        if kind != "FakeKey":
            raise pickle.UnpicklingError(f"unknown persistent id {kind}")
        key = FakeKey.__new__(FakeKey)
        key.__setstate__({**state, "value": (self._blobs / digest).read_bytes()})
        key.__dict__["_local_blob"] = digest
        self._seen.add(digest)
        return key


def _moto_snapshot(service: str, blobs: Path) -> bytes:
    backends = get_backend(service)  # type: ignore[call-overload]
    data = {account: dict(regions) for account, regions in backends.items()}
    buffer = io.BytesIO()
    _Pickler(buffer, blobs).dump(data)
    return buffer.getvalue()


def _moto_install(service: str, data: dict[str, dict[str, Any]]) -> None:
    backends = get_backend(service)  # type: ignore[call-overload]
    for account, regions in data.items():
        for region, backend in regions.items():
            # dict.__setitem__: AccountSpecificBackend.__getitem__ would build an empty backend.
            dict.__setitem__(backends[account], region, backend)


# --- SageMaker ----------------------------------------------------------------------------------
class _Dropped(Exception):
    """A value that is not plain data (a live object): not saved."""


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v) for k, v in value.items()}
    raise _Dropped(type(value).__name__)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$datetime"}:
            return datetime.fromisoformat(value["$datetime"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _encode_record(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        try:
            out[key] = _encode(value)
        except _Dropped:
            if not key.startswith("_"):  # an API-visible field must survive: a bug otherwise
                raise
    return out


def sagemaker_snapshot(runtime: Runtime) -> bytes:
    """The runtime's stores as JSON (live objects in private ``_`` entries left out)."""
    stores = runtime.export_stores(skip=_NOT_KEPT)
    with runtime.lock:  # records are shared with the job threads: encode under the lock
        encoded = {
            kind: {name: _encode_record(r) for name, r in records.items()}
            for kind, records in stores.items()
        }
    return json.dumps(encoded, sort_keys=True).encode()


def restore_sagemaker(runtime: Runtime, data: bytes) -> None:
    """Load the stores saved by :func:`sagemaker_snapshot` and rebuild what was dropped."""
    stores = _decode(json.loads(data))
    runtime.import_stores(stores)
    _rebuild(runtime)


def _lost_reason() -> str:
    return (
        "InternalServerError: the local AWS endpoint stopped while this job was running "
        f"(state reloaded {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}); the job did "
        "not finish. "
        "Start it again."
    )


def _rebuild(runtime: Runtime) -> None:
    """Give reloaded records their live parts; end jobs that were running as Failed."""
    from local_stack.sagemaker_runtime import endpoints, jobs, transform, tuning

    stamp = jobs.now()
    for kind, status_key, end_key in (
        (jobs.PROCESSING, "ProcessingJobStatus", "ProcessingEndTime"),
        (jobs.TRAINING, "TrainingJobStatus", "TrainingEndTime"),
    ):
        for name, record in runtime.store(kind).items():
            record["_control"] = jobs.JobControl(kind, name)
            record["_control"].done.set()
            if record[status_key] in _RUNNING:
                _fail(record, status_key, end_key, stamp)
                if kind == jobs.TRAINING:
                    record["SecondaryStatus"] = "Failed"
                    record.setdefault("SecondaryStatusTransitions", []).append(
                        {"Status": "Failed", "StartTime": stamp, "StatusMessage": _lost_reason()}
                    )
    _rebuild_tuning(runtime, tuning, stamp)
    for record in runtime.store(transform.TRANSFORM_JOBS).values():
        record["_stop"] = threading.Event()
        if record["TransformJobStatus"] in _RUNNING:
            _fail(record, "TransformJobStatus", "TransformEndTime", stamp)
    _redeploy_endpoints(runtime, endpoints)


def _fail(record: dict[str, Any], status_key: str, end_key: str, stamp: datetime) -> None:
    record[status_key] = "Failed"
    record["FailureReason"] = _lost_reason()
    record[end_key] = stamp
    record["LastModifiedTime"] = stamp


def _rebuild_tuning(runtime: Runtime, tuning: Any, stamp: datetime) -> None:
    from local_stack.sagemaker_runtime import jobs

    trainings = sorted(runtime.store(jobs.TRAINING).values(), key=lambda r: r["CreationTime"])
    for name, record in runtime.store(tuning.TUNING).items():
        ctl = tuning.TuningControl(name)
        ranges = record["HyperParameterTuningJobConfig"].get("ParameterRanges") or {}
        tuned = {r["Name"] for kind in ranges.values() for r in kind}
        for child in trainings:
            if child.get("TuningJobArn") == record["HyperParameterTuningJobArn"]:
                ctl.children.append(child)
                hps = child.get("HyperParameters") or {}
                ctl.tuned[child["TrainingJobName"]] = {k: v for k, v in hps.items() if k in tuned}
        ctl.done.set()
        record["_control"] = ctl
        if record["HyperParameterTuningJobStatus"] in _RUNNING:
            _fail(record, "HyperParameterTuningJobStatus", "HyperParameterTuningEndTime", stamp)


def _redeploy_endpoints(runtime: Runtime, endpoints: Any) -> None:
    configs = runtime.store(endpoints.ENDPOINT_CONFIGS)
    for name, record in list(runtime.store(endpoints.ENDPOINTS).items()):
        record.update(_active=None, _canary=None, _pending=None)
        record.setdefault("_generation", 1)
        if record["EndpointStatus"] in ("Failed", "OutOfService"):
            continue
        config = configs.get(record["EndpointConfigName"])
        if record["EndpointStatus"] == "Deleting" or config is None:
            runtime.store(endpoints.ENDPOINTS).pop(name)
            continue
        if record["EndpointStatus"] != "Creating":
            record["EndpointStatus"] = "SystemUpdating"
        record["_generation"] += 1
        _redeploy(runtime, endpoints, record, copy.deepcopy(config), record["_generation"])


def _redeploy(runtime: Runtime, endpoints: Any, record: dict, config: dict, gen: int) -> None:
    endpoints.deploy_first_fleet(runtime, record, config, gen)


# --- the saver ----------------------------------------------------------------------------------
class StatePersistence:
    """Saves and reloads the endpoint's state under ``<workdir>/state``.

    ``moto_lock`` must be held by whoever calls into moto (the endpoint's WSGI app): moto's
    dicts cannot be pickled while a request changes them."""

    def __init__(self, workdir: Path, runtime: Runtime) -> None:
        self.root = Path(workdir) / "state"
        self.blobs = self.root / "blobs"
        self.runtime = runtime
        self.moto_lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._dirty: set[str] = set()
        self._last_sagemaker: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.timings: dict[str, list[float]] = {}  # part -> save durations (s), for the report

    # --- load ---
    def load(self) -> bool:
        """Reload saved state, if any; return whether there was some."""
        if not (self.root / "meta.json").exists():
            return False
        meta = json.loads((self.root / "meta.json").read_text())
        if meta.get("moto") != moto.__version__:
            raise RuntimeError(
                f"The state in {self.root} was written with moto {meta.get('moto')}, this is "
                f"moto {moto.__version__}: start the endpoint with --clean (make clean)."
            )
        seen: set[str] = set()
        for service in MOTO_SERVICES:
            path = self.root / f"moto-{service}.pickle"
            if path.exists():
                data = _Unpickler(io.BytesIO(path.read_bytes()), self.blobs, seen).load()
                _moto_install(service, data)
        for blob in self.blobs.iterdir():  # objects deleted before the restart
            if blob.name not in seen and not blob.name.startswith("."):
                blob.unlink()
        path = self.root / "sagemaker.json"
        if path.exists():
            restore_sagemaker(self.runtime, path.read_bytes())
        log.info("reloaded the endpoint's state from %s", self.root)
        return True

    # --- save ---
    def start(self) -> None:
        """Write the metadata and run the debounced saver thread."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "meta.json", json.dumps({"moto": moto.__version__}).encode())
        self.save_all()
        self._thread = threading.Thread(target=self._loop, name="state-saver", daemon=True)
        self._thread.start()

    def mark_dirty(self, service: str | None) -> None:
        """A request may have changed ``service`` (a moto backend name; ``None``: all)."""
        with self._save_lock:
            self._dirty.update(MOTO_SERVICES if service is None else {service})

    def save_moto(self, service: str) -> None:
        """Save one moto service now."""
        started = time.perf_counter()
        with self._save_lock, self.moto_lock:
            self._dirty.discard(service)
            data = _moto_snapshot(service, self.blobs)
        atomic_write(self.root / f"moto-{service}.pickle", data)
        self.timings.setdefault(service, []).append(time.perf_counter() - started)

    def save_sagemaker(self) -> None:
        """Save the SageMaker stores now (skipped when nothing changed since the last save)."""
        started = time.perf_counter()
        with self._save_lock:
            data = sagemaker_snapshot(self.runtime)
            if data == self._last_sagemaker:
                return
            atomic_write(self.root / "sagemaker.json", data)
            self._last_sagemaker = data
        self.timings.setdefault("sagemaker", []).append(time.perf_counter() - started)

    def save_all(self) -> None:
        """Save every part (used at start and at a clean stop)."""
        for service in MOTO_SERVICES:
            self.save_moto(service)
        self.save_sagemaker()

    def stop(self) -> None:
        """Stop the saver thread after a last save (call before the runtime shuts down, so
        that running jobs are saved as running, not as stopped by the shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.save_all()

    def _loop(self) -> None:
        while not self._stop.wait(DEBOUNCE_SECONDS):
            with self._save_lock:
                dirty = sorted(self._dirty)
            try:
                for service in dirty:
                    self.save_moto(service)
                self.save_sagemaker()
            except Exception:  # keep saving later; a failed save must not end the thread
                log.exception("saving the endpoint's state failed")
