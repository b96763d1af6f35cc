"""A production-shaped Airflow on the local stack: API server, scheduler, DAG processor and
triggerer as separate processes, ``LocalExecutor`` running tasks in parallel, PostgreSQL as the
metadata database (``local_stack.postgres``). ``make ui`` and the scheduler tests run this;
``airflow dags test`` (SQLite, no scheduler) stays for quick single-run checks.

The shape is the docker-compose file's: every component gets the same JWT secret and API
secret key (made per start, passed in environment variables only), so the API server accepts
the tokens the scheduler signs for task workers; the Fernet key that encrypts connections in the
database is made once and kept in ``$AIRFLOW_HOME/fernet_key`` (mode 600). Before the components
start, the database is migrated and each use case's SageMaker pool (``sagemaker.pool``) is
created or resized, with ``include_deferred`` so that jobs waiting in the triggerer keep their
slots.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.postgres import Postgres
from local_stack.stack import ROOT, LocalStack, _end_group

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")


def _fernet_key(path: Path) -> str:
    if not path.exists():
        from cryptography.fernet import Fernet

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(Fernet.generate_key().decode())
    return path.read_text().strip()


def pools_file(include_dir: Path, target: Path) -> Path:
    """Write the ``airflow pools import`` file of the use cases under ``include_dir``."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from mlops_sagemaker.pools import pools

    target.write_text(json.dumps(pools(include_dir / "config"), indent=2))
    return target


@dataclass
class AirflowServices:
    """``with AirflowServices(stack, port) as airflow:`` the four components, healthy."""

    stack: LocalStack
    port: int = 8080
    extra_env: dict[str, str] = field(default_factory=dict)
    parallelism: int = 8
    # PostgreSQL's data folder (default <stack home>/postgres); tests put it outside pytest's
    # temporary root, whose permissions pytest resets to 0700 (the server runs as another
    # user when we are root).
    pgdata: Path | None = None
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _postgres: Postgres | None = None
    _secrets: dict[str, str] = field(
        default_factory=lambda: {
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        },
        repr=False,
    )

    @property
    def base_url(self) -> str:
        """Where the UI and the REST API answer."""
        return f"http://localhost:{self.port}"

    @property
    def logs(self) -> Path:
        """The components' logs (one file each)."""
        return self.stack.home / "logs" / "airflow"

    def env(self) -> dict[str, str]:
        """Environment of every component and of CLI commands against this Airflow."""
        assert self._postgres is not None, "start() first"
        home = self.stack.airflow_home
        return {
            **self.stack.airflow_env(),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self._postgres.url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(home / "fernet_key"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            # The task workers call the execution API here (default: localhost:8080).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            **self._secrets,
            **self.extra_env,
        }

    def airflow(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command against this Airflow's database (output captured)."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return done

    def start(self) -> AirflowServices:
        """Start PostgreSQL, migrate, create the pools, start the components; wait until the
        API server reports every component healthy."""
        self._postgres = Postgres(self.pgdata or self.stack.home / "postgres").start()
        self.stack.airflow_home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        include = Path(self.env().get("MLOPS_INCLUDE_DIR") or ROOT / "include")
        pools = pools_file(include, self.stack.airflow_home / "pools.json")
        self.airflow("pools", "import", str(pools))
        self.logs.mkdir(parents=True, exist_ok=True)
        for component in COMPONENTS:
            self._procs.append(self._spawn(component))
        self._wait_healthy(timeout=300)
        return self

    def _spawn(self, component: str) -> subprocess.Popen:
        with open(self.logs / f"{component}.log", "ab") as log:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), component],
                env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def _wait_healthy(self, timeout: float) -> None:
        deadline, health = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for proc, component in zip(self._procs, COMPONENTS, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"airflow {component} exited with code {proc.returncode}; "
                        f"see {self.logs / (component + '.log')}"
                    )
            try:
                with urllib.request.urlopen(
                    f"{self.base_url}/api/v2/monitor/health", timeout=5
                ) as answer:
                    health = json.load(answer)
            except OSError:
                health = None
            if health and all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            ):
                return
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f} s: {health}")

    def wait(self) -> int:
        """Block until a component exits; its exit code (the others keep running)."""
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    return proc.returncode
            time.sleep(1)

    def stop(self) -> None:
        """End the components (newest first), then PostgreSQL."""
        for proc in reversed(self._procs):
            _end_group(proc, 15)
        self._procs.clear()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None

    def __enter__(self) -> AirflowServices:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
