"""The local stack each end-to-end module runs its DAGs against (one per module: a clean
registry and job list per module, shared by the module's tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import free_port

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
