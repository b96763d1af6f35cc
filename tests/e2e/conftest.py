"""The local stack each end-to-end module runs its DAGs against (one per module: a clean
registry and job list per module, shared by the module's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e_support import api_server, free_port, rest, wait_for

from local_stack.stack import LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """Presto stand-in + local AWS endpoint + a migrated SQLite metadata DB."""
    home = tmp_path_factory.mktemp("stack")
    with LocalStack(
        presto_port=free_port(), aws_port=free_port(), home=Path(home), clean=True
    ) as running:
        running.migrate_db()
        yield running


@pytest.fixture(scope="module")
def api(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory):
    """An API server on the runs' metadata DB: where the UI's approval answers go."""
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api-server.log"
    server = api_server(stack, port, log)
    base = f"http://localhost:{port}"
    try:
        wait_for("the API server", lambda: rest(f"{base}/api/v2/monitor/health"), 240, server)
        # With simple_auth_manager_all_admins, GET /auth/token gives an admin token (user
        # "Anonymous"), as the UI gets one without a login form.
        answer = wait_for("a token", lambda: rest(f"{base}/auth/token"), 30)
        yield base, answer["access_token"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
