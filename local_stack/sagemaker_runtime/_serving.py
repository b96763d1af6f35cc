"""Model servers of the local SageMaker runtime: the "instances" behind endpoints and batch
transform jobs.

A :class:`ModelServer` is one process running ``_serving_worker.serve_model``: the model's
``inference.py`` loaded through the ``sagemaker-inference`` toolkit, answering ``/ping`` and
``/invocations`` on a loopback port, like a SageMaker serving container. Processes are forked
from a fork server that has already imported the scientific stack, so a server starts in a
fraction of a second and different models never share a Python process. There is one fork
server per image: it runs on the interpreter of the image's virtualenv
(``local_stack/images.py``), so the model runs on the image's Python and packages. A model whose
container ``Image`` the runtime does not know fails to start with a message naming the known
images.

:func:`prepare_model` turns a model's container (``ModelDataUrl``, ``SAGEMAKER_PROGRAM``,
``SAGEMAKER_SUBMIT_DIRECTORY``) into local folders, cached per S3 object version.

Every server of a runtime is stopped by ``Runtime.shutdown()``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import itertools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local_stack import images
from local_stack.sagemaker_runtime import isolation, s3io
from local_stack.sagemaker_runtime._serving_worker import SINGLE_THREADED
from local_stack.sagemaker_runtime.containers import LogShipper, image_path_env

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_STARTUP_TIMEOUT = 300.0
DEFAULT_INVOCATION_TIMEOUT = 60.0
_TAIL_LINES = 60

_servers: weakref.WeakKeyDictionary[Runtime, set[ModelServer]] = weakref.WeakKeyDictionary()
_prepare_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)


class ServingError(Exception):
    """A model could not be prepared or served; the message is a FailureReason."""


class ServerGone(ServingError):
    """The server is stopping or has stopped."""


class _Zygote:
    """The fork server process (``<image python> -m ..._serving_worker``) of one image, started
    on first use and shared by every runtime of this Python process; it exits with the
    process."""

    def __init__(self, python: Path) -> None:
        self.python = python
        self._start_lock = threading.Lock()  # held briefly, to (re)start the process
        self._io_lock = threading.Lock()  # held for one request/answer exchange
        self._process: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)

    def warm_up(self) -> None:
        """Start the zygote without waiting for it (it takes a few seconds to import)."""
        self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        with self._start_lock:
            if self._process is not None and self._process.poll() is None:
                return self._process
            env = {**image_path_env(dict(os.environ), self.python), **SINGLE_THREADED}
            root = str(Path(__file__).resolve().parents[2])
            # Only the repository root (for local_stack.toolkits and the worker), never the
            # host's packages: the model sees the image's libraries.
            env["PYTHONPATH"] = root
            self._process = subprocess.Popen(
                [str(self.python), "-m", "local_stack.sagemaker_runtime._serving_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                cwd=root,
                bufsize=0,
            )
            return self._process

    def fork(self, spec: dict[str, Any], timeout: float = 120.0) -> int:
        """Start a model server process; returns its pid."""
        with self._io_lock:
            process = self._ensure_started()
            assert process.stdin is not None and process.stdout is not None
            request_id = next(self._ids)
            deadline = time.monotonic() + timeout
            try:
                process.stdin.write(json.dumps({"id": request_id, "spec": spec}).encode() + b"\n")
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
                        process.kill()  # a stuck fork server is restarted by the next call
                        raise ServingError("the model server fork process did not answer")
                    line = process.stdout.readline()
                    if not line:
                        raise ServingError("the model server fork process exited")
                    answer = json.loads(line)
                    if answer.get("id") == request_id:
                        break
            except (OSError, ValueError) as err:
                raise ServingError(f"could not start a model server: {err}") from err
        if "error" in answer:
            raise ServingError(f"could not start a model server: {answer['error']}")
        return int(answer["pid"])


_zygotes: dict[Path, _Zygote] = {}
_zygotes_lock = threading.Lock()


def _zygote(image: str) -> _Zygote:
    """The fork server of ``image``; :class:`ServingError` for an image the runtime cannot run."""
    try:
        python = images.interpreter_for(image)
    except (images.UnknownImage, images.ImageNotBuilt) as err:
        raise ServingError(str(err)) from err
    with _zygotes_lock:
        if python not in _zygotes:
            _zygotes[python] = _Zygote(python)
        return _zygotes[python]


def warm_up(image: str | None = None) -> None:
    """Start the image's fork server (default: the newest image's, the config's default) now so
    that its first model server starts quickly; an unknown image is reported when a server
    starts, not here."""
    if image is None:
        image = "sagemaker-scikit-learn:" + list(images.load_images())[-1]
    with contextlib.suppress(ServingError):
        _zygote(image).warm_up()


# --- model files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedModel:
    """A model's files on this machine and how to load it."""

    model_dir: Path
    code_dir: Path
    program: str
    env: dict[str, str]
    image: str


def _etag(s3: Any, uri: str) -> str:
    bucket, key = s3io.parse_s3_uri(uri)
    try:
        return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except Exception as err:
        raise ServingError(f"Could not find model data at {uri}: {err}") from err


def prepare_model(runtime: Runtime, container: dict[str, Any]) -> PreparedModel:
    """Download and unpack a model's ``model.tar.gz`` and source dir (cached)."""
    env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
    program = env.get("SAGEMAKER_PROGRAM") or "inference.py"
    data_url = container.get("ModelDataUrl")
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if submit.startswith("s3://") and isolation.enabled(container):
        # The serving container downloads it itself, which isolation forbids; the SDK repacks
        # the code into model.tar.gz under code/ instead (``SKLearnModel.prepare_container_def``).
        raise ServingError(
            f"SAGEMAKER_SUBMIT_DIRECTORY {submit} cannot be downloaded by a model with "
            "EnableNetworkIsolation: put the code into model.tar.gz under code/ and set "
            "SAGEMAKER_SUBMIT_DIRECTORY to /opt/ml/model/code"
        )
    s3 = runtime.client("s3")
    fingerprint = [data_url or "", submit]
    if data_url:
        fingerprint.append(_etag(s3, data_url))
    if submit.startswith("s3://"):
        fingerprint.append(_etag(s3, submit))
    key = hashlib.sha256("\n".join(fingerprint).encode()).hexdigest()[:20]
    root = runtime.workdir / "serving" / "models" / key
    model_dir, source_dir = root / "model", root / "code"
    with _prepare_locks[str(root)]:
        if not (root / ".ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            model_dir.mkdir(parents=True)
            try:
                if data_url:
                    s3io.download_and_extract_tar(s3, data_url, model_dir)
                if submit.startswith("s3://"):
                    s3io.download_and_extract_tar(s3, submit, source_dir)
            except s3io.S3TransferError as err:
                shutil.rmtree(root, ignore_errors=True)
                raise ServingError(str(err)) from err
            (root / ".ready").touch()
    if submit.startswith("s3://"):
        code_dir = source_dir
    elif submit.startswith("/opt/ml/model"):
        # The SDK repacks the code into model.tar.gz under code/ and points here.
        code_dir = model_dir / submit[len("/opt/ml/model") :].lstrip("/")
    elif submit and Path(submit).is_dir():
        code_dir = Path(submit)
    else:
        code_dir = model_dir / "code" if (model_dir / "code").is_dir() else model_dir
    return PreparedModel(model_dir, code_dir, program, env, container.get("Image", ""))


# --- servers -----------------------------------------------------------------------------------
def _register(runtime: Runtime, server: ModelServer) -> None:
    with runtime.lock:
        servers = _servers.get(runtime)
        if servers is None:
            servers = _servers[runtime] = set()
            runtime.on_shutdown(lambda: stop_all(runtime))
        servers.add(server)


def _unregister(runtime: Runtime, server: ModelServer) -> None:
    with runtime.lock:
        _servers.get(runtime, set()).discard(server)


def stop_all(runtime: Runtime) -> None:
    """Stop every model server of ``runtime`` (its shutdown hook)."""
    with runtime.lock:
        servers = list(_servers.get(runtime, ()))
    for server in servers:
        server.stop(drain_timeout=0)


class ModelServer:
    """One serving process of a model ("an instance of a production variant")."""

    def __init__(
        self,
        runtime: Runtime,
        model: PreparedModel,
        name: str,
        log_group: str | None = None,
        log_stream: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.model = model
        self.name = name
        self.port: int | None = None
        self.pid: int | None = None
        self._finished = False
        self._lock = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
        self.log_path = runtime.workdir / "serving" / "logs" / f"{safe}-{time.time_ns()}.log"
        self._shipper = (
            LogShipper(runtime.client("logs"), log_group, log_stream)
            if log_group and log_stream
            else None
        )
        self._tailer: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        """Start the process and wait until the model is loaded; raises :class:`ServingError`
        with the load error otherwise."""
        if self.runtime.stopping.is_set():
            if self._shipper is not None:
                self._shipper.close()
            raise ServerGone("the runtime is shutting down")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        ready = Path(f"{self.log_path}.ready")
        self._tailer = threading.Thread(target=self._tail_log, name=f"log-{self.name}", daemon=True)
        self._tailer.start()
        _register(self.runtime, self)
        spec = {
            "model_dir": str(self.model.model_dir),
            "code_dir": str(self.model.code_dir),
            "program": self.model.program,
            "env": self.model.env,
            "log_path": str(self.log_path),
        }
        try:
            pid = _zygote(self.model.image).fork(spec)
        except ServingError:
            self.stop(drain_timeout=0)
            raise
        with self._lock:
            self.pid = pid
            stopping = self._stopping
        if stopping:
            self.stop(drain_timeout=0)
            raise ServerGone(f"model server {self.name} was stopped while starting")
        deadline = time.monotonic() + timeout
        message: dict[str, Any] | None = None
        while time.monotonic() < deadline and not self._stopping:
            if ready.exists():
                message = json.loads(ready.read_text(encoding="utf-8"))
                break
            if not _pid_alive(pid):
                break
            time.sleep(0.05)
        if message and "port" in message:
            self.port = int(message["port"])
            return
        if message:
            error = message.get("error", "unknown error")
        elif self._stopping:
            error = "stopped while starting"
        elif _pid_alive(pid):
            error = f"the model was not loaded within {timeout:.0f} seconds"
        else:
            error = "the serving process exited while loading the model"
        self.stop(drain_timeout=0)
        raise ServingError(error)

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking requests, wait for those in flight (up to ``drain_timeout``), stop the
        process."""
        with self._lock:
            self._stopping = True
            deadline = time.monotonic() + drain_timeout
            while self._in_flight and time.monotonic() < deadline:
                self._lock.wait(0.05)
            if self._finished:
                return
            self._finished = True
            pid = self.pid
        if pid is not None:
            _kill(pid)
        _unregister(self.runtime, self)
        if self._tailer is not None and self._tailer is not threading.current_thread():
            self._tailer.join(2)
        if self._shipper is not None:
            self._shipper.close()

    @property
    def alive(self) -> bool:
        with self._lock:
            return not self._stopping and self.pid is not None and _pid_alive(self.pid)

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines the model wrote."""
        return list(self._tail)[-lines:]

    # --- requests ----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """How many requests the server is answering now."""
        with self._lock:
            return self._in_flight

    def try_acquire(self) -> bool:
        """Reserve the server for one request (``False`` when it is stopping)."""
        with self._lock:
            if self._stopping or self.port is None:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()

    @contextlib.contextmanager
    def reserved(self) -> Iterator[None]:
        if not self.try_acquire():
            raise ServerGone(f"model server {self.name} is stopping")
        try:
            yield
        finally:
            self.release()

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        timeout: float = DEFAULT_INVOCATION_TIMEOUT,
    ) -> tuple[int, str, bytes]:
        """POST ``/invocations``; returns (status, content type, body). The caller holds a
        reservation (:meth:`reserved` / :meth:`try_acquire`)."""
        if self.port is None:
            raise ServerGone(f"model server {self.name} is not running")
        headers = {"Content-Type": content_type or "application/json"}
        if accept:
            headers["Accept"] = accept
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return (
                response.status,
                response.getheader("Content-Type") or "application/octet-stream",
                data,
            )
        except TimeoutError as err:
            raise ServingError(f"The model did not answer within {timeout:.0f} seconds.") from err
        except (OSError, http.client.HTTPException) as err:
            raise ServingError(f"The model server is not reachable: {err}") from err
        finally:
            conn.close()

    # --- logs --------------------------------------------------------------------------------
    def _tail_log(self) -> None:
        try:
            handle = self.log_path.open("r", encoding="utf-8", errors="replace")
        except OSError:
            return
        with handle:
            while True:
                line = handle.readline()
                if line:
                    text = line.rstrip("\n")
                    self._tail.append(text)
                    if self._shipper is not None:
                        self._shipper.emit(text)
                    continue
                with self._lock:
                    finished = self._finished
                if finished:
                    return
                time.sleep(0.1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int, grace: float = 2.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def cpu_bound() -> int:
    """How many model processes may usefully run in parallel on this machine."""
    return max(1, os.cpu_count() or 1)
