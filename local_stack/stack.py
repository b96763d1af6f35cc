"""Start and stop the local stack as background processes and point Airflow at it.

Used by ``make demo`` (``local_stack.demo``), ``make ui`` (``local_stack.ui``) and the
end-to-end tests. The stack is two processes on loopback ports:

* the Presto stand-in (``PRESTO_PORT``, default 18080): catalog ``tpch``, and catalog ``hive``
  (a Hive connector on the local S3, ``<home>/presto-tls/hive.properties``, with the schema
  ``mlops_scratch``) for the ``presto_unload`` extraction;
* the local AWS endpoint (``AWS_ENDPOINT_PORT``, default 4566): SageMaker from our runtime,
  S3/STS/CloudWatch/Logs from moto.

Airflow finds them only through connections set as environment variables
(``AIRFLOW_CONN_AWS_DEFAULT`` with ``endpoint_url``, ``AIRFLOW_CONN_PRESTO_DEFAULT``), with a
SQLite metadata database under ``.local/airflow``. The AWS credentials are dummies. Presto is
reached the way a real cluster with users is: HTTPS (the stand-in's self-signed certificate under
``.local/presto-tls/ca.pem``, given as the connection's ``verify`` extra) and basic
authentication as ``airflow`` with ``PRESTO_PASSWORD`` or, by default, a random password made
per start. The password travels in environment variables only (never on a command line);
Airflow masks connection passwords in task logs.

The AWS endpoint keeps its state (S3, SageMaker jobs, the model registry) in
``<home>/sagemaker`` across restarts; ``clean=True`` (``LOCAL_STACK_CLEAN=1``, ``make clean``)
starts it empty. ``home`` defaults to ``LOCAL_STACK_HOME`` or ``.local``. Every service runs in
its own process group, and ``stop()`` ends each group (SIGTERM, then SIGKILL after 15 s), so
no child process outlives the stack.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
DUMMY_KEY = "local"  # the local endpoint accepts any key; these are not secrets


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_until(check, what: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see its log")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def _members(leader: int) -> set[int]:
    """The processes started under ``leader``: its session and its descendants (Linux /proc;
    empty elsewhere). Airflow's task workers move into process groups of their own, so killing
    the leader's group alone misses them."""
    table: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), int(fields[4]))
    found = {pid for pid, (_, sid) in table.items() if sid == leader}
    todo = [leader]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    found.discard(leader)
    return found


def _signal_all(leader: int, members: set[int], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _end_group(proc: subprocess.Popen, sig: int, timeout: float = 15) -> None:
    """Send ``sig`` to the process group led by ``proc`` (started with a session of its own)
    and to every process of its session or below it, wait for the leader, then SIGKILL
    whatever is left (children that outlive a leader's clean exit, or a leader that did not
    exit in time)."""
    members = _members(proc.pid)
    _signal_all(proc.pid, members, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    _signal_all(proc.pid, members | _members(proc.pid), signal.SIGKILL)
    proc.wait()


@dataclass
class LocalStack:
    """The running stack: ports, folders and the environment Airflow needs to use it."""

    presto_port: int = int(os.environ.get("PRESTO_PORT", "18080"))
    aws_port: int = int(os.environ.get("AWS_ENDPOINT_PORT", "4566"))
    home: Path = field(
        default_factory=lambda: Path(os.environ.get("LOCAL_STACK_HOME") or ROOT / ".local")
    )
    bucket: str = "mlops-local"
    presto_schemas: str = "tiny"
    # The Hive catalog's scratch schemas (created at start) and the Parquet files one CREATE
    # TABLE AS writes (Presto's task.writer-count): several, so a sharded split gets a share each.
    hive_schemas: tuple[str, ...] = ("mlops_scratch",)
    presto_writer_count: int = 4
    presto_user: str = "airflow"
    presto_password: str = field(
        default_factory=lambda: os.environ.get("PRESTO_PASSWORD") or secrets.token_urlsafe(24),
        repr=False,
    )
    clean: bool = field(default_factory=lambda: os.environ.get("LOCAL_STACK_CLEAN") == "1")
    # The AWS endpoint's service clocks (CloudWatch periods, autoscaling): 0.05 makes a minute
    # three seconds, for tests and demos of scaling.
    time_scale: float = field(
        default_factory=lambda: float(os.environ.get("LOCAL_SAGEMAKER_TIME_SCALE") or 1.0)
    )
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _aws: subprocess.Popen | None = None

    @property
    def aws_url(self) -> str:
        """The local AWS endpoint URL (``endpoint_url`` of the Airflow AWS connection)."""
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def presto_ca_path(self) -> Path:
        """The stand-in's self-signed certificate (written when it starts)."""
        return self.home / "presto-tls" / "ca.pem"

    @property
    def _presto_visible_up_to_file(self) -> Path:
        # In the folder start() empties, so a date set in an earlier run never hides data.
        return self.presto_ca_path.parent / "visible-up-to"

    @property
    def hive_catalog_path(self) -> Path:
        """The stand-in's Hive catalog file (Presto's ``etc/catalog/hive.properties``)."""
        return self.presto_ca_path.parent / "hive.properties"

    def _write_hive_catalog(self) -> None:
        # The settings a real Presto needs for CREATE TABLE ... WITH (external_location) AS on
        # S3 (README, "Extraction without Airflow"): the S3 endpoint, path-style addressing,
        # credentials and non-managed writes.
        self.hive_catalog_path.parent.mkdir(parents=True, exist_ok=True)
        self.hive_catalog_path.write_text(
            "connector.name=hive-hadoop2\n"
            "hive.metastore=file\n"
            f"hive.metastore.catalog.dir={self.home / 'hive-metastore'}\n"
            f"hive.s3.endpoint={self.aws_url}\n"
            "hive.s3.path-style-access=true\n"
            f"hive.s3.aws-access-key={DUMMY_KEY}\n"
            f"hive.s3.aws-secret-key={DUMMY_KEY}\n"
            "hive.non-managed-table-writes-enabled=true\n",
            encoding="utf-8",
        )

    def presto_execute(self, sql: str) -> list[list[Any]]:
        """Run one statement on the stand-in as the stack's user; return its rows."""
        import prestodb

        connection = prestodb.dbapi.connect(
            host="127.0.0.1",
            port=self.presto_port,
            user=self.presto_user,
            http_scheme="https",
            auth=prestodb.auth.BasicAuthentication(self.presto_user, self.presto_password),
        )
        session = connection._http_session
        session.verify = str(self.presto_ca_path)
        session.trust_env = False  # or REQUESTS_CA_BUNDLE would override `verify`
        cursor = connection.cursor()
        cursor.execute(sql)
        return cursor.fetchall()

    def set_presto_visible_up_to(self, day: datetime.date | None) -> None:
        """Make the stand-in's TPC-H data look loaded only up to ``day`` (inclusive).

        Orders dated after ``day`` and their line items are invisible to every query from the
        next one on, as if not landed yet; ``None`` makes all data visible again (the state
        after ``start()``, which clears it).
        """
        path = self._presto_visible_up_to_file
        if day is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")
        partial.write_text(f"{day.isoformat()}\n", encoding="utf-8")
        os.replace(partial, path)  # atomic: the stand-in never reads a half-written date

    @property
    def airflow_home(self) -> Path:
        """AIRFLOW_HOME of the demo/UI (SQLite metadata DB, logs)."""
        return self.home / "airflow"

    def airflow_env(self) -> dict[str, str]:
        """Environment for Airflow processes: connections to the stack, the project's folders."""
        aws_conn = {
            "conn_type": "aws",
            "login": DUMMY_KEY,
            "password": DUMMY_KEY,
            "extra": {
                "endpoint_url": self.aws_url,
                "region_name": REGION,
                "config_kwargs": {"retries": {"mode": "standard", "max_attempts": 10}},
            },
        }
        presto_conn = {
            "conn_type": "presto",
            "host": "127.0.0.1",
            "port": self.presto_port,
            "login": self.presto_user,
            "password": self.presto_password,
            "schema": "tiny",
            # PrestoHook: `protocol` is the client's http_scheme; `verify` (a CA file path or a
            # boolean) is set on the client's requests session.
            "extra": {"catalog": "tpch", "protocol": "https", "verify": str(self.presto_ca_path)},
        }
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify`
        # (psf/requests issue 3829), which is where PrestoHook puts the connection's `verify`.
        dropped = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIRFLOW_CONN_") and k not in dropped
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
                "AIRFLOW_CONN_PRESTO_DEFAULT": json.dumps(presto_conn),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
                "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
                # `airflow standalone` starts its components as `airflow ...` from PATH.
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            }
        )
        return env

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on the local endpoint."""
        return boto3.client(
            service,
            endpoint_url=self.aws_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
        )

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log:
            return self.spawn(
                [sys.executable, "-m", *args],
                {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                stdout=log,
            )

    def spawn(self, argv: list[str], env: dict[str, str], stdout: Any = None) -> subprocess.Popen:
        """Start ``argv`` in a process group of its own that ``stop()`` ends with the stack."""
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        self._procs.append(proc)
        return proc

    @property
    def aws_workdir(self) -> Path:
        """The AWS endpoint's work folder: job folders and its saved state."""
        return self.home / "sagemaker"

    def start_aws(self, clean: bool = False) -> None:
        """Start the local AWS endpoint (on its saved state unless ``clean``) and wait for it."""
        args = ["local_stack.aws_endpoint", "--port", str(self.aws_port)]
        args += ["--workdir", str(self.aws_workdir), *(["--clean"] if clean else [])]
        args += ["--time-scale", str(self.time_scale)]
        self._aws = aws = self._spawn("aws-endpoint", args)
        _wait_until(
            lambda: (
                urllib.request.urlopen(f"{self.aws_url}/_local/health", timeout=2).status == 200
            ),
            "local AWS endpoint",
            60,
            aws,
        )

    def restart_aws(self, sig: int = signal.SIGTERM) -> None:
        """End the AWS endpoint with ``sig`` (SIGKILL: a crash) and start it again on its
        saved state."""
        assert self._aws is not None, "the stack is not started"
        _end_group(self._aws, sig)
        self._procs.remove(self._aws)
        self.start_aws()

    def start(self) -> LocalStack:
        """Start both services, wait until they answer, create the bucket."""
        for port, what in ((self.presto_port, "PRESTO_PORT"), (self.aws_port, "AWS_ENDPOINT_PORT")):
            if not _free(port):
                raise RuntimeError(f"port {port} is in use: set {what} to a free port")
        shutil.rmtree(self.presto_ca_path.parent, ignore_errors=True)
        self._write_hive_catalog()
        presto = self._spawn(
            "presto-standin",
            ["local_stack.presto_standin", "--port", str(self.presto_port),
             "--schemas", self.presto_schemas, "--eager", "tiny",
             "--tls", "--tls-dir", str(self.presto_ca_path.parent),
             "--visible-up-to-file", str(self._presto_visible_up_to_file),
             "--hive-catalog", str(self.hive_catalog_path),
             "--writer-count", str(self.presto_writer_count)],
            env={"PRESTO_STANDIN_USERS": f"{self.presto_user}:{self.presto_password}"},
        )  # fmt: skip
        self.start_aws(clean=self.clean)
        _wait_until(self._presto_answers, "Presto stand-in", 120, presto)
        for schema in self.hive_schemas:
            self.presto_execute(f"CREATE SCHEMA IF NOT EXISTS hive.{schema}")
        s3 = self.client("s3")
        if self.bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=self.bucket)  # kept from an earlier start otherwise
        return self

    def _presto_answers(self) -> bool:
        """True once the stand-in answers an authenticated HTTPS request (OSError before)."""
        context = ssl.create_default_context(cafile=self.presto_ca_path)
        token = base64.b64encode(f"{self.presto_user}:{self.presto_password}".encode()).decode()
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.presto_port}/v1/info",
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return response.status == 200

    def stop(self) -> None:
        """End every process group ``start``/``spawn`` started, newest first."""
        for proc in reversed(self._procs):
            _end_group(proc, signal.SIGTERM)
        self._procs.clear()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def faults(self, spec: dict | None) -> dict:
        """Arm faults on the local endpoint (``None`` clears them); returns what is armed."""
        request = urllib.request.Request(
            f"{self.aws_url}/_local/faults",
            data=json.dumps(spec or {}).encode(),
            method="POST" if spec else "DELETE",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def airflow(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 1800,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command against the stack; output is captured."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env={**self.airflow_env(), **(extra_env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def migrate_db(self) -> None:
        """Create/upgrade the SQLite metadata database under ``.local/airflow``."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
