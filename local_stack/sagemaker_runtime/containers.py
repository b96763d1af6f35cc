"""Stand-in "containers": a job instance's ``/opt/ml`` folder, its script process and its logs.

A job instance gets a root folder ``<workdir>/jobs/<job>/[instance-N/]``; everything the real
container sees under ``/opt/ml`` lives in ``<root>/opt/ml``. Commands, arguments and environment
values naming ``/opt/ml/...`` are rewritten to that folder, and ``python``/``python3`` run as the
interpreter of the image's virtualenv (``local_stack/images.py``: the image's Python version and
packages), whose ``bin`` folder also comes first on the script's ``PATH``.

The script's stdout and stderr go, line by line, to CloudWatch Logs in the local endpoint (moto)
under ``<log group>/<job>/algo-<n>-<epoch>`` the way SageMaker names its streams, so the Airflow
provider's log tailing finds them with ``describe_log_streams(logStreamNamePrefix=job + "/")``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPT_ML = "/opt/ml"
_OPT_ML_RE = re.compile(r"(?<![\w.-])/opt/ml(?=/|$|[^\w.-])")
_PYTHON_RE = re.compile(r"^python(3(\.\d+)?)?$")
# Seconds a stopped script gets between SIGTERM and SIGKILL (SageMaker gives 120 s).
STOP_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.02
_TAIL_LINES = 40


def opt_ml(root: Path) -> Path:
    """The folder standing in for ``/opt/ml`` in an instance root."""
    return root / "opt" / "ml"


def rewrite_paths(value: str, root: Path) -> str:
    """Replace every ``/opt/ml`` path prefix in ``value`` with the instance's stand-in folder."""
    return _OPT_ML_RE.sub(lambda _m: str(opt_ml(root)), value)


def local_path(container_path: str, root: Path) -> Path:
    """Where a container path (``/opt/ml/processing/input``) lives on this machine."""
    if not container_path.startswith("/"):
        raise ValueError(f"{container_path} is not an absolute container path")
    if container_path == OPT_ML or container_path.startswith(OPT_ML + "/"):
        return Path(rewrite_paths(container_path, root))
    # Other absolute paths (allowed by the API) are kept under the root, too.
    return root / container_path.lstrip("/")


def command(argv: list[str], root: Path, python: Path) -> list[str]:
    """The local command for a container entrypoint + arguments; ``python`` is the image's."""
    out = [rewrite_paths(a, root) for a in argv]
    if out and _PYTHON_RE.match(os.path.basename(out[0])):
        out[0] = str(python)
    return out


def image_path_env(env: dict[str, str], python: Path) -> dict[str, str]:
    """``env`` with the image venv's ``bin`` first on ``PATH`` (a script that starts ``python``
    gets the image's) and no trace of the host's virtualenv."""
    result = {k: v for k, v in env.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    bin_dir = str(python.parent)
    result["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", os.defpath)) if p)
    result["VIRTUAL_ENV"] = str(python.parent.parent)
    return result


class LogShipper:
    """Sends lines to one CloudWatch Logs stream from a background thread (batched)."""

    def __init__(self, logs_client: Any, group: str, stream: str, interval: float = 0.5) -> None:
        self._logs = logs_client
        self.group = group
        self.stream = stream
        self._interval = interval
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ready = False
        self._thread = threading.Thread(target=self._loop, name=f"logs-{stream}", daemon=True)
        self._thread.start()

    def emit(self, message: str, timestamp_ms: int | None = None) -> None:
        """Queue one log event (CloudWatch rejects empty messages: those are dropped)."""
        if not message:
            return
        event = {"timestamp": timestamp_ms or int(time.time() * 1000), "message": message}
        with self._lock:
            self._pending.append(event)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the thread."""
        self._closed.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._closed.wait(self._interval):
            self._flush()
        self._flush()

    def _ensure_stream(self) -> None:
        if self._ready:
            return
        for create in (
            lambda: self._logs.create_log_group(logGroupName=self.group),
            lambda: self._logs.create_log_stream(
                logGroupName=self.group, logStreamName=self.stream
            ),
        ):
            with contextlib.suppress(self._logs.exceptions.ResourceAlreadyExistsException):
                create()
        self._ready = True

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        batch.sort(key=lambda e: e["timestamp"])
        try:
            self._ensure_stream()
            for start in range(0, len(batch), 5000):
                self._logs.put_log_events(
                    logGroupName=self.group,
                    logStreamName=self.stream,
                    logEvents=batch[start : start + 5000],
                )
        except Exception as err:  # logs are best effort; never fail the job for them
            print(f"local runtime: could not ship logs to {self.stream}: {err}", file=sys.stderr)


@dataclass
class ProcessResult:
    """How a script process ended."""

    exit_code: int | None
    stopped: bool = False
    timed_out: bool = False
    stderr_tail: list[str] = field(default_factory=list)
    output_tail: list[str] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def succeeded(self) -> bool:
        """Exited 0 and was neither stopped nor timed out."""
        return self.exit_code == 0 and not self.stopped and not self.timed_out


class ContainerProcess:
    """One script process of a job instance, stoppable from another thread."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        shipper: LogShipper | None = None,
        on_line: Callable[[str, float], None] | None = None,
        stop_events: tuple[threading.Event, ...] = (),
    ) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self._shipper = shipper
        self._on_line = on_line
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._stop_events = (self._stop, *stop_events)
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._output_tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._tail_lock = threading.Lock()

    def stop(self) -> None:
        """Ask the process to stop (SIGTERM, then SIGKILL after the grace period)."""
        self._stop.set()

    def run(self, timeout: float | None = None) -> ProcessResult:
        """Start the process, stream its output and wait for it (or for stop / timeout)."""
        result = ProcessResult(exit_code=None, started_at=time.time())
        if self._stop.is_set():
            result.stopped = True
            result.finished_at = time.time()
            return result
        try:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            result.exit_code = 127
            result.stderr_tail = [f"could not start {self.argv[0]}: {err}"]
            result.finished_at = time.time()
            return result
        readers = [
            threading.Thread(target=self._read, args=(self._proc.stdout, False), daemon=True),
            threading.Thread(target=self._read, args=(self._proc.stderr, True), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._proc.poll() is None:
            if any(event.is_set() for event in self._stop_events):
                result.stopped = True
                self._terminate()
                break
            if deadline is not None and time.monotonic() >= deadline:
                result.timed_out = True
                self._terminate()
                break
            time.sleep(_POLL_SECONDS)
        result.exit_code = self._proc.wait()
        result.finished_at = time.time()
        for reader in readers:
            reader.join(5)
        with self._tail_lock:
            result.stderr_tail = list(self._stderr_tail)
            result.output_tail = list(self._output_tail)
        return result

    def _terminate(self) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _read(self, pipe: Any, is_stderr: bool) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            now = time.time()
            with self._tail_lock:
                self._output_tail.append(line)
                if is_stderr:
                    self._stderr_tail.append(line)
            if self._shipper is not None:
                self._shipper.emit(line, int(now * 1000))
            if self._on_line is not None:
                self._on_line(line, now)
        pipe.close()
